"""`/admin/v1`: tenants (their webhook secret, events URL and account events), users, API keys, the price book and
the audit trail.

Creating a tenant, user, key or price carries no Idempotency-Key (the API takes none there), so such a call is
retried only when nothing reached the server; a state change (suspend, freeze, revoke, update) is retried like a
read, since applying it twice leaves the same state."""

from __future__ import annotations

import builtins
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from facemint_client._core import Call, parse_json, parse_list, query
from facemint_client._resource import Listing, M, Resource, endpoint, listing, paged
from facemint_client.admin_models import (
    AccountEvent,
    ApiKey,
    ApiKeyCreated,
    AuditEvent,
    EventsWebhook,
    Price,
    Tenant,
    User,
    WebhookSecret,
)


def _fields(**values: Any) -> dict[str, Any]:
    return {name: value for name, value in values.items() if value is not None}


class Tenants(Resource[M]):
    @endpoint("POST /admin/v1/tenants")
    def create(self, name: str, *, plan: str = "free") -> Call[Tenant]:
        """A tenant (`plan`: free, pro, enterprise), with its token pool."""
        return Call(
            method="POST", path="/admin/v1/tenants", json={"name": name, "plan": plan}, parse=parse_json(Tenant)
        )

    @endpoint("GET /admin/v1/tenants/{tenant_id}")
    def get(self, tenant_id: int) -> Call[Tenant]:
        return Call(method="GET", path=f"/admin/v1/tenants/{tenant_id}", parse=parse_json(Tenant))

    @endpoint("PATCH /admin/v1/tenants/{tenant_id}")
    def update(
        self, tenant_id: int, *, name: str | None = None, plan: str | None = None, status: str | None = None
    ) -> Call[Tenant]:
        return Call(
            method="PATCH",
            path=f"/admin/v1/tenants/{tenant_id}",
            json=_fields(name=name, plan=plan, status=status),
            parse=parse_json(Tenant),
            replay_safe=True,
        )

    @endpoint("POST /admin/v1/tenants/{tenant_id}/suspend")
    def suspend(self, tenant_id: int) -> Call[Tenant]:
        return Call(
            method="POST", path=f"/admin/v1/tenants/{tenant_id}/suspend", parse=parse_json(Tenant), replay_safe=True
        )

    @endpoint("POST /admin/v1/tenants/{tenant_id}/activate")
    def activate(self, tenant_id: int) -> Call[Tenant]:
        return Call(
            method="POST", path=f"/admin/v1/tenants/{tenant_id}/activate", parse=parse_json(Tenant), replay_safe=True
        )

    @endpoint("GET /admin/v1/tenants/{tenant_id}/webhook-secret")
    def webhook_secret(self, tenant_id: int) -> Call[str]:
        """The tenant's webhook signing secret (`whsec_...`), for `verify_webhook`."""
        return Call(
            method="GET",
            path=f"/admin/v1/tenants/{tenant_id}/webhook-secret",
            parse=lambda response: parse_json(WebhookSecret)(response).secret,
        )

    @endpoint("POST /admin/v1/tenants/{tenant_id}/webhook-secret/rotate")
    def rotate_webhook_secret(self, tenant_id: int) -> Call[str]:
        """A new signing secret; the old one stops signing at once."""
        return Call(
            method="POST",
            path=f"/admin/v1/tenants/{tenant_id}/webhook-secret/rotate",
            parse=lambda response: parse_json(WebhookSecret)(response).secret,
        )

    @endpoint("GET /admin/v1/tenants/{tenant_id}/events-webhook")
    def events_webhook(self, tenant_id: int) -> Call[EventsWebhook]:
        """Where the tenant's account events (`balance.low`, abuse) are sent."""
        return Call(method="GET", path=f"/admin/v1/tenants/{tenant_id}/events-webhook", parse=parse_json(EventsWebhook))

    @endpoint("PUT /admin/v1/tenants/{tenant_id}/events-webhook")
    def set_events_webhook(self, tenant_id: int, url: str | None) -> Call[EventsWebhook]:
        """Send the tenant's account events to `url` (checked like a job's webhook URL: 422 `invalid_webhook_url`),
        or, None, nowhere. Signed with the tenant's webhook secret, as job events are."""
        return Call(
            method="PUT",
            path=f"/admin/v1/tenants/{tenant_id}/events-webhook",
            json={"url": url},
            parse=parse_json(EventsWebhook),
            replay_safe=True,
        )

    @endpoint("GET /admin/v1/tenants/{tenant_id}/events")
    def events(self, tenant_id: int, *, limit: int | None = None) -> Call[builtins.list[AccountEvent]]:
        """The tenant's account events, newest first (`limit`: 1 to 500, default 100), each with its body and every
        delivery attempt. Not paginated."""
        return Call(
            method="GET",
            path=f"/admin/v1/tenants/{tenant_id}/events",
            params=query(limit=limit),
            parse=parse_list(AccountEvent),
        )

    @paged("GET /admin/v1/tenants")
    def list(
        self, *, status: str | None = None, plan: str | None = None, name: str | None = None, limit: int | None = None
    ) -> Listing[Tenant]:
        """Tenants, newest first (`name`: a substring)."""
        return listing("/admin/v1/tenants", Tenant, limit=limit, status=status, plan=plan, name=name)


class Users(Resource[M]):
    @endpoint("POST /admin/v1/users")
    def create(
        self,
        email: str,
        *,
        role: str = "member",
        tenant_id: int | None = None,
        name: str | None = None,
        password: str | None = None,
        labels: Sequence[str] | None = None,
    ) -> Call[User]:
        """A user with its account; `tenant_id` for `tenant_admin` and `member`, none for staff roles. `labels`
        (at most 16, e.g. "vip"; stored lower-cased) are what a tenant's recurring grants may select on."""
        body = _fields(
            email=email,
            role=role,
            tenant_id=tenant_id,
            name=name,
            password=password,
            labels=None if labels is None else list(labels),
        )
        return Call(method="POST", path="/admin/v1/users", json=body, parse=parse_json(User))

    @endpoint("GET /admin/v1/users/{user_id}")
    def get(self, user_id: int) -> Call[User]:
        return Call(method="GET", path=f"/admin/v1/users/{user_id}", parse=parse_json(User))

    @endpoint("PATCH /admin/v1/users/{user_id}")
    def update(
        self,
        user_id: int,
        *,
        name: str | None = None,
        role: str | None = None,
        password: str | None = None,
        labels: Sequence[str] | None = None,
    ) -> Call[User]:
        """Change what is given; `labels` replaces the user's whole set (`[]` removes every label)."""
        return Call(
            method="PATCH",
            path=f"/admin/v1/users/{user_id}",
            json=_fields(name=name, role=role, password=password, labels=None if labels is None else list(labels)),
            parse=parse_json(User),
            replay_safe=True,
        )

    @endpoint("POST /admin/v1/users/{user_id}/freeze")
    def freeze(self, user_id: int) -> Call[User]:
        return Call(method="POST", path=f"/admin/v1/users/{user_id}/freeze", parse=parse_json(User), replay_safe=True)

    @endpoint("POST /admin/v1/users/{user_id}/unfreeze")
    def unfreeze(self, user_id: int) -> Call[User]:
        return Call(method="POST", path=f"/admin/v1/users/{user_id}/unfreeze", parse=parse_json(User), replay_safe=True)

    @endpoint("POST /admin/v1/users/{user_id}/revoke-sessions")
    def revoke_sessions(self, user_id: int) -> Call[User]:
        """Every access token the user holds stops working (its API keys do not)."""
        return Call(
            method="POST", path=f"/admin/v1/users/{user_id}/revoke-sessions", parse=parse_json(User), replay_safe=True
        )

    @paged("GET /admin/v1/users")
    def list(
        self,
        *,
        tenant_id: int | None = None,
        role: str | None = None,
        status: str | None = None,
        email: str | None = None,
        email_prefix: str | None = None,
        user_id: int | None = None,
        label: str | None = None,
        limit: int | None = None,
    ) -> Listing[User]:
        """Users, newest first (`label`: those carrying it)."""
        return listing(
            "/admin/v1/users",
            User,
            limit=limit,
            tenant_id=tenant_id,
            role=role,
            status=status,
            email=email,
            email_prefix=email_prefix,
            user_id=user_id,
            label=label,
        )


class ApiKeys(Resource[M]):
    @endpoint("POST /admin/v1/api-keys")
    def create(
        self, user_id: int, *, name: str, scopes: Sequence[str], expires_at: datetime | None = None
    ) -> Call[ApiKeyCreated]:
        """A key for the user with these scopes; `.key` holds the key itself, shown this once."""
        body: dict[str, Any] = {"user_id": user_id, "name": name, "scopes": list(scopes)}
        if expires_at is not None:
            body["expires_at"] = expires_at.isoformat()
        return Call(method="POST", path="/admin/v1/api-keys", json=body, parse=parse_json(ApiKeyCreated))

    @endpoint("GET /admin/v1/api-keys/{key_id}")
    def get(self, key_id: int) -> Call[ApiKey]:
        return Call(method="GET", path=f"/admin/v1/api-keys/{key_id}", parse=parse_json(ApiKey))

    @endpoint("DELETE /admin/v1/api-keys/{key_id}")
    def revoke(self, key_id: int) -> Call[ApiKey]:
        return Call(method="DELETE", path=f"/admin/v1/api-keys/{key_id}", parse=parse_json(ApiKey), replay_safe=True)

    @paged("GET /admin/v1/api-keys")
    def list(
        self,
        *,
        tenant_id: int | None = None,
        user_id: int | None = None,
        include_revoked: bool | None = None,
        limit: int | None = None,
    ) -> Listing[ApiKey]:
        return listing(
            "/admin/v1/api-keys",
            ApiKey,
            limit=limit,
            tenant_id=tenant_id,
            user_id=user_id,
            include_revoked=include_revoked,
        )


class Prices(Resource[M]):
    @endpoint("POST /admin/v1/prices")
    def set(self, operation: str, tokens_per_unit: int, *, note: str | None = None) -> Call[Price]:
        """A new price version for `operation`; jobs submitted after it pay it."""
        body = _fields(operation=operation, tokens_per_unit=tokens_per_unit, note=note)
        return Call(method="POST", path="/admin/v1/prices", json=body, parse=parse_json(Price))

    @endpoint("GET /admin/v1/prices")
    def list(self, *, operation: str | None = None, current: bool | None = None) -> Call[builtins.list[Price]]:
        """Every version, newest first per operation (`current=True`: the price in force only). Not paginated."""
        return Call(
            method="GET",
            path="/admin/v1/prices",
            params=query(operation=operation, current=current),
            parse=parse_list(Price),
        )


class Audit(Resource[M]):
    @paged("GET /admin/v1/audit-events")
    def list(
        self,
        *,
        tenant_id: int | None = None,
        action: str | None = None,
        actor_user_id: int | None = None,
        target_type: str | None = None,
        target_id: str | None = None,
        start: datetime | None = None,
        end: datetime | None = None,
        limit: int | None = None,
    ) -> Listing[AuditEvent]:
        """The audit trail, newest first; `start` inclusive, `end` exclusive."""
        return listing(
            "/admin/v1/audit-events",
            AuditEvent,
            limit=limit,
            tenant_id=tenant_id,
            action=action,
            actor_user_id=actor_user_id,
            target_type=target_type,
            target_id=target_id,
            from_=start,
            to=end,
        )
