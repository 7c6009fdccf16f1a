"""The reports domain's errors (rendered by facemint.problems like every other)."""

from __future__ import annotations

from facemint.errors import Conflict, Forbidden


class PlatformWideReport(Forbidden):
    """Reconciliation and the sealed books span every tenant: tenant admins hold reports:read for their own
    finance views only."""

    code = "forbidden"


class SealerBusy(Conflict):
    """Another sealer (a worker's periodic one) holds the sealers' lock: a request does not queue behind it."""

    code = "sealer_busy"
    title = "Another sealer is at work"
