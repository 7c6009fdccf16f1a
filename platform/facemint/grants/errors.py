from __future__ import annotations

from facemint.errors import Conflict, NotFound, Unprocessable


class GrantNotFound(NotFound):
    code = "grant_not_found"
    title = "Grant not found"


class InvalidGrant(Unprocessable):
    code = "invalid_grant"
    title = "Invalid grant"


class GrantChanged(Conflict):
    """An approved change met a grant whose terms changed since it was asked for: approving it would set terms
    nobody saw together. Nothing is applied; the approval stays pending, to be rejected and asked again."""

    code = "grant_changed"
    title = "Grant changed since the request"
