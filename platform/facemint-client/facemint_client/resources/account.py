"""`/auth` (access tokens, sign out everywhere) and the caller's own account under `/v1`: balance, ledger,
usage, and its low-balance alert."""

from __future__ import annotations

from datetime import date

from facemint_client._core import Call, parse_json, query
from facemint_client._resource import Listing, M, Resource, endpoint, listing, paged
from facemint_client.models import AccessToken, Balance, BalanceAlert, LedgerEntry, Usage
from facemint_client.resources import alerts


class Auth(Resource[M]):
    @endpoint("POST /auth/token")
    def token(self, email: str, password: str) -> Call[AccessToken]:
        """An access token (JWT) for a user's email and password: pass it as the client's `api_key`."""
        # Issuing a second token on a retry is harmless (both die together when the user's credentials change).
        return Call(
            method="POST",
            path="/auth/token",
            json={"email": email, "password": password},
            parse=parse_json(AccessToken),
            replay_safe=True,
        )

    @endpoint("POST /auth/revoke")
    def revoke(self) -> Call[None]:
        """Sign the caller's user out everywhere: every access token issued so far stops working (API keys
        do not)."""
        return Call(method="POST", path="/auth/revoke", parse=lambda response: None, replay_safe=True)


class Account(Resource[M]):
    @endpoint("GET /v1/balance")
    def balance(self) -> Call[Balance]:
        """The caller's tokens: `available` to spend, `held` by running jobs, `balance` in all."""
        return Call(method="GET", path="/v1/balance", parse=parse_json(Balance))

    @endpoint("GET /v1/usage")
    def usage(self, *, start: date | None = None, end: date | None = None) -> Call[Usage]:
        """Charges by UTC day and operation, `start` to `end` inclusive (default: the last 30 days)."""
        return Call(method="GET", path="/v1/usage", params=query(start=start, end=end), parse=parse_json(Usage))

    @paged("GET /v1/ledger")
    def ledger(self, *, limit: int | None = None) -> Listing[LedgerEntry]:
        """The caller's ledger entries, newest first."""
        return listing("/v1/ledger", LedgerEntry, limit=limit)

    @endpoint("GET /v1/balance/alert")
    def alert(self) -> Call[BalanceAlert]:
        """The caller's low-balance alert (`NotFound`, code `balance_alert_not_found`, when none is set)."""
        return alerts.get_alert("/v1/balance/alert")

    @endpoint("PUT /v1/balance/alert")
    def set_alert(self, threshold: int, *, hysteresis: int | None = None) -> Call[BalanceAlert]:
        """Alert the caller's tenant (its events URL, `balance.low`) once when the caller's available tokens drop
        below `threshold`; again only after they are back at `threshold + hysteresis` (default: a tenth of the
        threshold, at least 1). Replaces the alert set before, if any."""
        return alerts.set_alert("/v1/balance/alert", threshold, hysteresis)

    @endpoint("DELETE /v1/balance/alert")
    def remove_alert(self) -> Call[None]:
        """Remove the caller's alert (nothing set: nothing to do)."""
        return alerts.remove_alert("/v1/balance/alert")
