"""The finance views' errors (rendered by facemint.errors like every other)."""

from __future__ import annotations

from facemint.errors import FacemintError, NotFound


class InvalidFilter(FacemintError):
    status_code = 422
    code = "invalid_filter"
    title = "Invalid filter"


class FilterTargetNotFound(NotFound):
    """A user, batch or job named in a filter that does not exist, or that the caller's tenant cannot see."""

    code = "filter_target_not_found"
