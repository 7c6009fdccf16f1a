from facemint.errors import NotFound, Unprocessable


class BalanceAlertNotFound(NotFound):
    code = "balance_alert_not_found"
    title = "No low-balance alert"


class AlertWithoutTenant(Unprocessable):
    """A platform staff account belongs to no tenant, so no events URL could ever receive its alert."""

    code = "balance_alert_without_tenant"
    title = "Account belongs to no tenant"
