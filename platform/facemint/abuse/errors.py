from __future__ import annotations

from facemint.errors import Conflict, Forbidden, NotFound, ServiceUnavailable, Unprocessable


class AbuseRuleNotFound(NotFound):
    code = "abuse_rule_not_found"
    title = "Abuse rule not found"


class AbuseTriggerNotFound(NotFound):
    code = "abuse_trigger_not_found"
    title = "Abuse trigger not found"


class InvalidAbuseRule(Unprocessable):
    code = "invalid_abuse_rule"
    title = "Invalid abuse rule"


class TriggerAlreadyResolved(Conflict):
    code = "abuse_trigger_resolved"
    title = "Abuse trigger already resolved"


class AccountFrozen(Forbidden):
    """An abuse rule froze the caller's account at this submit: nothing was recorded or held. The user's later
    requests answer `user_frozen` until someone unfreezes it."""

    code = "account_frozen"
    title = "Account frozen"


class AbuseChecksUnavailable(ServiceUnavailable):
    code = "abuse_checks_unavailable"
    title = "Abuse checks unavailable"
