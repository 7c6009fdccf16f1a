"""Scopes (`<resource>:read|write`) and what each role may hold. An API key's scopes are a subset of its
user's role scopes, checked when the key is created and again on every request."""

from __future__ import annotations

from enum import StrEnum

from facemint.users.orm import Role


class Scope(StrEnum):
    tenants_read = "tenants:read"
    tenants_write = "tenants:write"
    users_read = "users:read"
    users_write = "users:write"
    api_keys_read = "api-keys:read"
    api_keys_write = "api-keys:write"
    recharges_read = "recharges:read"
    recharges_write = "recharges:write"
    recharges_approve = "recharges:approve"  # four-eyes: approve or reject another operator's large recharge
    ledger_adjust = "ledger:adjust"
    # Record a reconciliation run (the dashboard's "last reconciliation"). Reading one is `reports:read`; finance
    # reads and never writes, so it does not hold this.
    reconciliation_run = "reconciliation:run"
    balances_read = "balances:read"
    # Set or remove the low-balance alerts of users and tenant pools (within the caller's tenant scope); reading
    # them is `balances:read`.
    balance_alerts_write = "balance-alerts:write"
    audit_read = "audit:read"
    reports_read = "reports:read"
    prices_read = "prices:read"
    prices_write = "prices:write"
    # Recurring credit grants (facemint.grants): plan and platform-funded grants are staff's even with the scope.
    grants_read = "grants:read"
    grants_write = "grants:write"
    webhooks_write = "webhooks:write"  # rotate the tenant's webhook signing secret
    # The tenant's integrations (Zendesk): connector settings, assets, rules and the tickets handled. Reading shows
    # no credential (fingerprints only); writing sets them.
    integrations_read = "integrations:read"
    integrations_write = "integrations:write"
    # /admin/v1/jobs: every job within the caller's tenant scope (not only its own, as /v1's jobs:read).
    jobs_admin_read = "jobs:admin-read"
    jobs_admin_write = "jobs:admin-write"  # cancel another user's job
    # A job's result image is the customer's content: seen by those who run the service and the tenant's own
    # admin, not by finance's read-everything role.
    jobs_admin_results = "jobs:admin-results"
    # A tenant's abuse rules and the triggers they raised (read), and changing rules or resolving triggers (write).
    abuse_read = "abuse:read"
    abuse_write = "abuse:write"
    # /v1: the caller's own account.
    balance_read = "balance:read"
    balance_alert_write = "balance-alert:write"  # set or remove the caller's own low-balance alert (never money)
    ledger_read = "ledger:read"
    swaps_write = "swaps:write"
    jobs_read = "jobs:read"
    jobs_write = "jobs:write"  # cancel and delete the caller's own jobs
    usage_read = "usage:read"


_V1 = {
    Scope.balance_read,
    Scope.balance_alert_write,
    Scope.ledger_read,
    Scope.swaps_write,
    Scope.jobs_read,
    Scope.jobs_write,
    Scope.usage_read,
}
_READ_ALL = {
    Scope.tenants_read,
    Scope.users_read,
    Scope.api_keys_read,
    Scope.recharges_read,
    Scope.balances_read,
    Scope.audit_read,
    Scope.reports_read,
    Scope.prices_read,
    Scope.jobs_admin_read,
    Scope.integrations_read,
    Scope.abuse_read,
    Scope.grants_read,
}

ROLE_SCOPES: dict[Role, frozenset[Scope]] = {
    Role.platform_admin: frozenset(Scope),
    Role.operator: frozenset(Scope),
    # Finance reads everything and writes nothing: not even swaps of its own.
    Role.finance: frozenset(_READ_ALL | {Scope.balance_read, Scope.ledger_read}),
    Role.tenant_admin: frozenset(
        {
            Scope.tenants_read,
            Scope.users_read,
            Scope.users_write,
            Scope.api_keys_read,
            Scope.api_keys_write,
            Scope.recharges_read,
            Scope.recharges_write,
            Scope.balances_read,
            Scope.balance_alerts_write,
            Scope.audit_read,
            Scope.prices_read,
            Scope.reports_read,  # the finance views, limited to its own tenant
            Scope.webhooks_write,
            Scope.integrations_read,
            Scope.integrations_write,
            Scope.jobs_admin_read,
            Scope.jobs_admin_write,
            Scope.jobs_admin_results,
            Scope.abuse_read,
            Scope.abuse_write,
            Scope.grants_read,
            Scope.grants_write,  # its own tenant's pool-funded grants
        }
        | _V1
    ),
    Role.member: frozenset(_V1),
}


def scopes_for_role(role: str) -> frozenset[Scope]:
    return ROLE_SCOPES[Role(role)]
