"""The finance views' errors (rendered by facemint.problems like every other)."""

from __future__ import annotations

from facemint.errors import FacemintError, NotFound, RateLimited, ServiceUnavailable


class InvalidFilter(FacemintError):
    status_code = 422
    code = "invalid_filter"
    title = "Invalid filter"


class FilterTargetNotFound(NotFound):
    """A user, batch or job named in a filter that does not exist, or that the caller's tenant cannot see."""

    code = "filter_target_not_found"


class TooManyExports(RateLimited):
    code = "too_many_exports"
    title = "Too many concurrent exports"


class ExportTimeLimit(ServiceUnavailable):
    """The time limit ran out before the export's first byte (after it, the stream is cut without a trailer)."""

    code = "export_time_limit"
    title = "Export time limit reached"
