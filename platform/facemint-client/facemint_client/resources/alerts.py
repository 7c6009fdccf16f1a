"""Low-balance alerts: a user's and a tenant pool's under `/admin/v1` (`client.admin.balance_alerts`); the
caller's own is `client.account.alert()` (built from the same calls).

Setting and removing an alert only set a state (no tokens move, no key is taken): both are retried like reads,
since applying one twice leaves the same alert. Removing an alert that is not there answers 204 too."""

from __future__ import annotations

from facemint_client._core import Call, parse_json
from facemint_client._resource import M, Resource, endpoint
from facemint_client.models import BalanceAlert


def get_alert(path: str) -> Call[BalanceAlert]:
    # 404 `balance_alert_not_found` when none is set.
    return Call(method="GET", path=path, parse=parse_json(BalanceAlert))


def set_alert(path: str, threshold: int, hysteresis: int | None) -> Call[BalanceAlert]:
    body: dict[str, int] = {"threshold": threshold}
    if hysteresis is not None:
        body["hysteresis"] = hysteresis
    return Call(method="PUT", path=path, json=body, parse=parse_json(BalanceAlert), replay_safe=True)


def remove_alert(path: str) -> Call[None]:
    return Call(method="DELETE", path=path, parse=lambda response: None, replay_safe=True)


class BalanceAlerts(Resource[M]):
    """Alerts on users' accounts and tenants' pools: the tenant's events URL gets `balance.low` when the account's
    available tokens drop below `threshold`, and again only after they are back at `threshold + hysteresis`
    (default: a tenth of the threshold, at least 1)."""

    @endpoint("GET /admin/v1/users/{user_id}/balance/alert")
    def user(self, user_id: int) -> Call[BalanceAlert]:
        """The user's alert (`NotFound`, code `balance_alert_not_found`, when none is set)."""
        return get_alert(f"/admin/v1/users/{user_id}/balance/alert")

    @endpoint("PUT /admin/v1/users/{user_id}/balance/alert")
    def set_user(self, user_id: int, threshold: int, *, hysteresis: int | None = None) -> Call[BalanceAlert]:
        """Set (or replace) the user's alert."""
        return set_alert(f"/admin/v1/users/{user_id}/balance/alert", threshold, hysteresis)

    @endpoint("DELETE /admin/v1/users/{user_id}/balance/alert")
    def remove_user(self, user_id: int) -> Call[None]:
        return remove_alert(f"/admin/v1/users/{user_id}/balance/alert")

    @endpoint("GET /admin/v1/tenants/{tenant_id}/pool/alert")
    def pool(self, tenant_id: int) -> Call[BalanceAlert]:
        """The tenant pool's alert (`NotFound` when none is set)."""
        return get_alert(f"/admin/v1/tenants/{tenant_id}/pool/alert")

    @endpoint("PUT /admin/v1/tenants/{tenant_id}/pool/alert")
    def set_pool(self, tenant_id: int, threshold: int, *, hysteresis: int | None = None) -> Call[BalanceAlert]:
        return set_alert(f"/admin/v1/tenants/{tenant_id}/pool/alert", threshold, hysteresis)

    @endpoint("DELETE /admin/v1/tenants/{tenant_id}/pool/alert")
    def remove_pool(self, tenant_id: int) -> Call[None]:
        return remove_alert(f"/admin/v1/tenants/{tenant_id}/pool/alert")
