"""The requests the access matrix sends, each naming objects of an access world (tests.platform.access_world):
a `Builder` makes a cell's `Call` for a route, a side (own, other, peer) and a role."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from billing.pricing import service as pricing
from facemint.jobs.submission import SWAP_OPERATION
from facemint.users.orm import STAFF_ROLES, Role
from tests.factories import PASSWORD
from tests.platform.access_world import (
    OTHER,
    OWN,
    REASON,
    Side,
    World,
    WorldUser,
    png,
    zendesk_connector_body,
)

# --- requests naming a world's objects --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Call:
    """What a cell sends (its method is the route's)."""

    path: str
    params: dict[str, Any] | None = None
    json: Any = None
    content: bytes | None = None
    files: dict[str, Any] | None = None
    headers: dict[str, str] = field(default_factory=dict)


Builder = Callable[[World, str, Role], Call]


def fixed(path: str, **kwargs: Any) -> Builder:
    return lambda world, variant, role: Call(path, **kwargs)


def tenant_path(suffix: str = "", **kwargs: Any) -> Builder:
    return lambda world, variant, role: Call(f"/admin/v1/tenants/{world.side(variant).tenant.id}{suffix}", **kwargs)


def user_path(suffix: str = "", *, frozen: bool = False, **kwargs: Any) -> Builder:
    def build_call(world: World, variant: str, role: Role) -> Call:
        side = world.side(variant)
        user = side.frozen_subject if frozen else side.subject
        return Call(f"/admin/v1/users/{user.id}{suffix}", **kwargs)

    return build_call


def own_alert(world: World, variant: str, role: Role) -> Call:
    """/v1/balance/alert, with an alert set on the caller's account (staff belong to no tenant: they have none)."""
    if role not in STAFF_ROLES:
        world.own.alerted(world.caller(role))
    return Call("/v1/balance/alert")


def user_alert(world: World, variant: str, role: Role) -> Call:
    side = world.side(variant)
    return Call(f"/admin/v1/users/{side.alerted(side.subject)}/balance/alert")


def pool_alert(world: World, variant: str, role: Role) -> Call:
    return Call(f"/admin/v1/tenants/{world.side(variant).alerted_pool}/pool/alert")


def object_path(template: str, attribute: str, **kwargs: Any) -> Builder:
    """`template` with `{}` replaced by the side's `attribute` (an object id)."""
    return lambda world, variant, role: Call(template.format(getattr(world.side(variant), attribute)), **kwargs)


def tenant_filter(path: str) -> Builder:
    """A list: unfiltered for "own" (a tenant role sees only its own tenant), `tenant_id` for "other"."""
    return lambda world, variant, role: Call(
        path, params=None if variant == OWN else {"tenant_id": world.side(variant).tenant.id}
    )


def job_owner(world: World, variant: str, role: Role) -> WorldUser:
    """Whose job a cell names: the caller's own ("own"; staff own none, so a member's), another user's of the same
    tenant ("peer"), or the other tenant's member's ("other")."""
    if variant == OTHER:
        return world.other.member
    own = world.own
    if variant == OWN:
        return own.admin if role is Role.tenant_admin else own.member
    return own.admin if role is Role.member else own.member


def job_path(suffix: str = "", *, finished: bool = False) -> Builder:
    def build_call(world: World, variant: str, role: Role) -> Call:
        side = world.side(variant)
        return Call(f"/v1/jobs/{side.job_of(job_owner(world, variant, role), finished=finished)}{suffix}")

    return build_call


def admin_job_path(suffix: str = "") -> Builder:
    """/admin/v1/jobs/{id}: a queued job of the side's member (a tenant admin reads its whole tenant's jobs)."""

    def build_call(world: World, variant: str, role: Role) -> Call:
        side = world.side(variant)
        return Call(f"/admin/v1/jobs/{side.job_of(side.member)}{suffix}")

    return build_call


def body_for(path: str, make_body: Callable[[Side], Any], **kwargs: Any) -> Builder:
    return lambda world, variant, role: Call(path, json=make_body(world.side(variant)), **kwargs)


def sign_in(world: World, variant: str, role: Role) -> Call:
    return Call("/auth/token", json={"email": world.signer.email, "password": PASSWORD})


def swap(world: World, variant: str, role: Role) -> Call:
    image = png()
    return Call("/v1/swaps", files={"source": ("s.png", image, "image/png"), "target": ("t.png", image, "image/png")})


def batch(world: World, variant: str, role: Role) -> Call:
    side = world.side(variant)
    return Call(
        "/admin/v1/recharges/batch",
        params={"reason": REASON, "tenant_id": side.tenant.id},
        content=f"email,amount\n{side.subject.email},5\n".encode(),
        headers={"Content-Type": "text/csv"},
    )


def abuse_rule_path(suffix: str = "", **kwargs: Any) -> Builder:
    def build_call(world: World, variant: str, role: Role) -> Call:
        side = world.side(variant)
        return Call(f"/admin/v1/tenants/{side.tenant.id}/abuse-rules/{side.abuse_rule_id}{suffix}", **kwargs)

    return build_call


PLAN_GRANT_BODY = {
    "name": "plan grant",
    "scope": "plan",
    "plan": "free",
    "amount": 5,
    "period": "day",
    "funding": "platform",
}


def renamed_tenant(world: World, variant: str, role: Role) -> Call:
    return Call(f"/admin/v1/tenants/{world.side(variant).tenant.id}", json={"name": unique("renamed")})


def same_price(world: World, variant: str, role: Role) -> Call:
    """A new version of the swap price at the price in force: the book changes, no later cell's charge does."""
    price = pricing.current_price(world.session, operation=SWAP_OPERATION)
    return Call("/admin/v1/prices", json={"operation": SWAP_OPERATION, "tokens_per_unit": price.tokens_per_unit})


def zendesk_path(suffix: str = "", *, configured: bool = True, **kwargs: Any) -> Builder:
    """The side's /admin/v1/tenants/{id}/integrations/zendesk routes (its connector made first: `configured`)."""

    def build_call(world: World, variant: str, role: Role) -> Call:
        side = world.side(variant)
        if configured:
            _ = side.zendesk_connector
        return Call(f"/admin/v1/tenants/{side.tenant.id}/integrations/zendesk{suffix}", **kwargs)

    return build_call


def zendesk_connector(world: World, variant: str, role: Role) -> Call:
    side = world.side(variant)
    body = zendesk_connector_body(side).model_dump(mode="json")
    body |= {"api_token": "matrix-token", "signing_secret": "matrix-secret"}  # write-only: dumped masked
    return Call(f"/admin/v1/tenants/{side.tenant.id}/integrations/zendesk", json=body)


def zendesk_asset_upload(world: World, variant: str, role: Role) -> Call:
    side = world.side(variant)
    return Call(
        f"/admin/v1/tenants/{side.tenant.id}/integrations/zendesk/assets",
        params={"kind": "scene", "name": "matrix"},
        content=png(),
        headers={"Content-Type": "image/png"},
    )


def zendesk_asset(world: World, variant: str, role: Role) -> Call:
    side = world.side(variant)
    return Call(f"/admin/v1/tenants/{side.tenant.id}/integrations/zendesk/assets/{side.zendesk_asset_id}")


def zendesk_webhook(world: World, variant: str, role: Role) -> Call:
    """A ticket webhook for the side's connector, unsigned: whatever credentials come with it, 401."""
    side = world.side(variant)
    body = b'{"ticket": {"id": "1", "subject": "matrix"}}'
    return Call(
        f"/integrations/zendesk/{side.zendesk_connector}/webhook",
        content=body,
        headers={"Content-Type": "application/json"},
    )


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"
