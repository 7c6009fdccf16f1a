from __future__ import annotations

from billing.errors import BillingError


class GrantAlreadyAwarded(BillingError):
    """A recurring grant's credit met an account already credited for the same grant and period (two runners
    raced): the database refused it and nothing of it was written."""

    status_code = 409
    code = "grant_already_awarded"
    title = "Grant already awarded for this period"
