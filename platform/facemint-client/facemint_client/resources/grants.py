"""`/admin/v1/grants`: recurring credit grants and the periods the workers granted.

A grant that mints tokens (`funding="platform"`: every plan grant, and a tenant's grant staff fund) is made only
once a second operator approves it: `create` answers the pending `Approval` (kind `grant`) instead of the
`Grant`, as does an `update` that lets such a grant mint more (a larger amount, enabled again, its label changed
or cleared, an earlier start, a later or no end); a pool-funded grant is held likewise where the approval
thresholds would hold one period of it. Approve it with `client.admin.approvals.approve(approval.id)` (another
operator); the approval's `grant_id` then names the grant.

Neither call takes an Idempotency-Key, and sending either again holds (or makes) another: a 500 or a lost answer
is raised as it is, never retried. Look (`list`, `approvals.list(kind="grant", status="pending")`) before sending
it again."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from facemint_client._core import NOT_GIVEN, Call, NotGiven, given, parse_json
from facemint_client._resource import Listing, M, Resource, endpoint, listing, paged
from facemint_client.admin_models import Approval, Grant, GrantPeriod
from facemint_client.resources.money import held_or

Scope = Literal["plan", "tenant"]
Period = Literal["day", "week", "month"]
Funding = Literal["platform", "tenant_pool"]


def _set(**values: Any) -> dict[str, Any]:
    """The members given a value (None: left out, the server's default or the grant's current value stays)."""
    return given(**{name: value for name, value in values.items() if value is not None})


class Grants(Resource[M]):
    @endpoint("POST /admin/v1/grants")
    def create(
        self,
        name: str,
        *,
        scope: Scope,
        amount: int,
        period: Period,
        funding: Funding,
        plan: str | None = None,
        tenant_id: int | None = None,
        label: str | None = None,
        priority: int | None = None,
        enabled: bool | None = None,
        starts_at: datetime | None = None,
        ends_at: datetime | None = None,
    ) -> Call[Grant | Approval]:
        """`amount` tokens each UTC `period` to every eligible account, in lots of `priority` (0 to 100, lower
        spent first; default 10) expiring at the period's end. `scope="plan"` names `plan` (platform-funded, staff
        only); `scope="tenant"` names `tenant_id` (a tenant admin's own when left out) and optionally `label` (only
        users carrying it). Returns the `Grant`, or the `Approval` it waits on."""
        body = _set(
            name=name,
            scope=scope,
            plan=plan,
            tenant_id=tenant_id,
            label=label,
            amount=amount,
            period=period,
            priority=priority,
            funding=funding,
            enabled=enabled,
            starts_at=starts_at,
            ends_at=ends_at,
        )
        # No Idempotency-Key (the API takes none): not replay-safe, so a lost answer is raised, never re-sent.
        return Call(method="POST", path="/admin/v1/grants", json=body, parse=held_or(Grant))

    @endpoint("GET /admin/v1/grants/{grant_id}")
    def get(self, grant_id: int) -> Call[Grant]:
        return Call(method="GET", path=f"/admin/v1/grants/{grant_id}", parse=parse_json(Grant))

    @endpoint("PATCH /admin/v1/grants/{grant_id}")
    def update(
        self,
        grant_id: int,
        *,
        name: str | None = None,
        amount: int | None = None,
        priority: int | None = None,
        enabled: bool | None = None,
        starts_at: datetime | None = None,
        label: str | None | NotGiven = NOT_GIVEN,
        ends_at: datetime | None | NotGiven = NOT_GIVEN,
    ) -> Call[Grant | Approval]:
        """Change a grant from its next run (scope, plan, tenant, period and funding never change). Arguments left
        out stay; `label=None` selects every user of the tenant, `ends_at=None` removes the end. Returns the
        changed `Grant`, or the `Approval` a change that lets it mint more waits on (the grant runs on its current
        terms until then)."""
        body = _set(name=name, amount=amount, priority=priority, enabled=enabled, starts_at=starts_at)
        body |= given(label=label, ends_at=ends_at)
        # Not replay-safe: a change that is held holds another approval each time it is sent.
        return Call(
            method="PATCH",
            path=f"/admin/v1/grants/{grant_id}",
            json=body,
            parse=held_or(Grant),
            replay_safe=False,
        )

    @paged("GET /admin/v1/grants")
    def list(
        self,
        *,
        tenant_id: int | None = None,
        scope: Scope | None = None,
        enabled: bool | None = None,
        limit: int | None = None,
    ) -> Listing[Grant]:
        """Grants, newest first (a tenant role sees its tenant's; plan grants are staff's)."""
        return listing("/admin/v1/grants", Grant, limit=limit, tenant_id=tenant_id, scope=scope, enabled=enabled)

    @paged("GET /admin/v1/grants/{grant_id}/periods")
    def periods(self, grant_id: int, *, limit: int | None = None) -> Listing[GrantPeriod]:
        """The periods the workers granted (or found the pool short for), newest first."""
        return listing(f"/admin/v1/grants/{grant_id}/periods", GrantPeriod, limit=limit)
