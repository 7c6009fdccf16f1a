from __future__ import annotations

from facemint.errors import NotFound, Unprocessable


class GrantNotFound(NotFound):
    code = "grant_not_found"
    title = "Grant not found"


class InvalidGrant(Unprocessable):
    code = "invalid_grant"
    title = "Invalid grant"
