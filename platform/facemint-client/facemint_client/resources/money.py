"""`/admin/v1` money: recharges (single and batch, JSON rows or a CSV file), four-eyes approvals, balances,
adjustments and reversals.

Every call here that moves tokens carries an Idempotency-Key, made here unless given, and sends the same key on
every retry: the server replays the first outcome (`replayed` is then True) and never applies it twice. A call
held for a second operator answers an `Approval` (202) instead of its result; the same call again, with the same
key, answers the approval while it is pending and the applied result once approved."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any, Literal

from facemint_client._convert import from_json
from facemint_client._core import ApiResponse, Call, given, parse_json, replayed
from facemint_client._resource import Listing, M, Resource, endpoint, listing, paged
from facemint_client._uploads import FileInput, Upload
from facemint_client.admin_models import (
    AccountBalance,
    Approval,
    ApprovalDetail,
    BatchDetail,
    BatchResult,
    BatchRow,
    BatchSummary,
    Posting,
    Recharge,
)
from facemint_client.errors import APIError


def held_or(cls: type[Any]) -> Any:
    """Parse a 202 as the `Approval` it is, anything else as `cls` (with `replayed` from the response header, when
    `cls` has one)."""

    def parse(response: ApiResponse) -> Any:
        body = response.json()
        if response.status == 202:
            return from_json(Approval, body)
        if "replayed" in cls.__dataclass_fields__:
            body = {**body, "replayed": bool(body.get("replayed")) or replayed(response)}
        return from_json(cls, body)

    return parse


def _fields(**values: Any) -> dict[str, Any]:
    """A JSON body's members given a value (None left out), datetimes in ISO 8601."""
    return given(**{name: value for name, value in values.items() if value is not None})


class Recharges(Resource[M]):
    @endpoint("POST /admin/v1/recharges")
    def create(
        self,
        amount: int,
        *,
        reason: str,
        user_id: int | None = None,
        email: str | None = None,
        tenant_id: int | None = None,
        reference: str | None = None,
        priority: int | None = None,
        expires_at: datetime | None = None,
        idempotency_key: str | None = None,
    ) -> Call[Recharge | Approval]:
        """Credit one user (`user_id` or `email`) or, platform staff only, a tenant's pool (`tenant_id`). The
        tokens land in one credit lot: `priority` 0 to 100, lower spent first (default 50, a paid recharge's), and
        `expires_at` (with a time zone, in the future; default never). Tokens a tenant admin hands on from the pool
        keep the pool's expiry when it is sooner."""
        body = _fields(
            amount=amount,
            reason=reason,
            user_id=user_id,
            email=email,
            tenant_id=tenant_id,
            reference=reference,
            priority=priority,
            expires_at=expires_at,
        )
        return Call(
            method="POST",
            path="/admin/v1/recharges",
            json=body,
            parse=held_or(Recharge),
            idempotent=True,
            idempotency_key=idempotency_key,
        )

    @endpoint("POST /admin/v1/recharges/batch")
    def batch(
        self,
        items: Sequence[Mapping[str, Any]] | None = None,
        *,
        csv: FileInput | None = None,
        reason: str,
        mode: Literal["atomic", "partial"] = "atomic",
        dry_run: bool = False,
        tenant_id: int | None = None,
        idempotency_key: str | None = None,
    ) -> Call[BatchResult | Approval]:
        """Recharge many users in one ledger transaction: `items` (`{"email" or "user_id", "amount",
        "reference"?, "priority"?, "expires_at"?}`, a datetime or an ISO 8601 string) or `csv` (a path, bytes or
        binary file: header `email,amount` or `user_id,amount`, then any of `reference`, `priority`, `expires_at`
        in any order). Each row's tokens land in a lot of its own terms; a bad priority or expiry fails that row
        (`invalid_priority`, `invalid_expiry`; `expiry_passed` when an approved batch is applied after it).
        `atomic` applies every row or none (422 `BatchRejected` lists the failures); `partial` applies the valid
        rows and lists the others in `failed`."""
        if (items is None) == (csv is None):
            raise ValueError("give either items or csv")
        if csv is not None:
            content, content_type = Upload.of(csv, field="csv").read(), "text/csv"
        else:
            content = json.dumps({"items": [given(**item) for item in items or ()]}).encode()
            content_type = "application/json"
        params = {"mode": mode, "dry_run": "true" if dry_run else "false", "reason": reason}
        if tenant_id is not None:
            params["tenant_id"] = str(tenant_id)
        return Call(
            method="POST",
            path="/admin/v1/recharges/batch",
            params=params,
            content=content,
            headers={"Content-Type": content_type},
            parse=held_or(BatchResult),
            idempotent=True,
            idempotency_key=idempotency_key,
        )

    @endpoint("GET /admin/v1/recharges/batches/{batch_id}")
    def get_batch(self, batch_id: int) -> Call[BatchDetail]:
        """An applied batch with its stored result (the failed rows included)."""
        return Call(method="GET", path=f"/admin/v1/recharges/batches/{batch_id}", parse=parse_json(BatchDetail))

    @paged("GET /admin/v1/recharges/batches")
    def batches(self, *, tenant_id: int | None = None, limit: int | None = None) -> Listing[BatchSummary]:
        """Applied batches, newest first."""
        return listing("/admin/v1/recharges/batches", BatchSummary, limit=limit, tenant_id=tenant_id)

    @paged("GET /admin/v1/recharges/batches/{batch_id}/rows")
    def batch_rows(self, batch_id: int, *, limit: int | None = None) -> Listing[BatchRow]:
        """The rows a batch credited, in file order."""
        return listing(f"/admin/v1/recharges/batches/{batch_id}/rows", BatchRow, limit=limit)


class Approvals(Resource[M]):
    @endpoint("GET /admin/v1/recharge-approvals/{approval_id}")
    def get(self, approval_id: int) -> Call[ApprovalDetail]:
        """One approval, with what approving it would apply."""
        return _get_approval(approval_id)

    @endpoint(
        "POST /admin/v1/recharge-approvals/{approval_id}/approve",
        "GET /admin/v1/recharge-approvals/{approval_id}",
    )
    def approve(self, approval_id: int, *, note: str | None = None) -> Call[Approval]:
        """Approve (another operator's request): it is applied then, exactly once."""
        return _decide(approval_id, "approve", "approved", note)

    @endpoint(
        "POST /admin/v1/recharge-approvals/{approval_id}/reject",
        "GET /admin/v1/recharge-approvals/{approval_id}",
    )
    def reject(self, approval_id: int, *, note: str | None = None) -> Call[Approval]:
        """Reject (or, the requester, withdraw) a pending request: nothing is applied."""
        return _decide(approval_id, "reject", "rejected", note)

    @paged("GET /admin/v1/recharge-approvals")
    def list(
        self,
        *,
        status: str | None = None,
        kind: str | None = None,
        tenant_id: int | None = None,
        limit: int | None = None,
    ) -> Listing[Approval]:
        """Held requests, newest first; `kind`: single, batch, adjustment, reversal or grant."""
        return listing(
            "/admin/v1/recharge-approvals", Approval, limit=limit, status=status, kind=kind, tenant_id=tenant_id
        )


def _get_approval(approval_id: int) -> Call[ApprovalDetail]:
    return Call(method="GET", path=f"/admin/v1/recharge-approvals/{approval_id}", parse=parse_json(ApprovalDetail))


def _decide(approval_id: int, action: str, outcome: str, note: str | None) -> Call[Approval]:
    # A decision takes no Idempotency-Key: the server decides an approval once. Sending it again after a lost
    # answer is safe, and if that retry meets `approval_not_pending`, the approval is read: the decision this
    # call made (its outcome matches) is returned instead of the refusal.
    def recover(error: APIError) -> Call[Approval] | None:
        if error.code != "approval_not_pending":
            return None

        def parse(response: ApiResponse) -> Approval:
            approval = from_json(ApprovalDetail, response.json())
            if approval.status != outcome:
                raise error
            return approval

        return Call(method="GET", path=f"/admin/v1/recharge-approvals/{approval_id}", parse=parse)

    return Call(
        method="POST",
        path=f"/admin/v1/recharge-approvals/{approval_id}/{action}",
        json=_fields(note=note),
        parse=parse_json(Approval),
        replay_safe=True,
        recover=recover,
    )


class Balances(Resource[M]):
    @endpoint("GET /admin/v1/tenants/{tenant_id}/pool")
    def pool(self, tenant_id: int) -> Call[AccountBalance]:
        """A tenant pool's balance, with its lots and next expiry."""
        return Call(method="GET", path=f"/admin/v1/tenants/{tenant_id}/pool", parse=parse_json(AccountBalance))

    @endpoint("POST /admin/v1/adjustments")
    def adjust(
        self, user_id: int, amount: int, *, reason: str, idempotency_key: str | None = None
    ) -> Call[Posting | Approval]:
        """A signed correction of a user's balance (positive credits, negative debits)."""
        return Call(
            method="POST",
            path="/admin/v1/adjustments",
            json={"user_id": user_id, "amount": amount, "reason": reason},
            parse=held_or(Posting),
            idempotent=True,
            idempotency_key=idempotency_key,
        )

    @endpoint("POST /admin/v1/transactions/{transaction_id}/reversal")
    def reverse(
        self, transaction_id: int, *, reason: str, idempotency_key: str | None = None
    ) -> Call[Posting | Approval]:
        """Post the exact opposite of a ledger transaction."""
        return Call(
            method="POST",
            path=f"/admin/v1/transactions/{transaction_id}/reversal",
            json={"reason": reason},
            parse=held_or(Posting),
            idempotent=True,
            idempotency_key=idempotency_key,
        )

    @paged("GET /admin/v1/balances")
    def list(
        self, *, tenant_id: int | None = None, user_id: int | None = None, limit: int | None = None
    ) -> Listing[AccountBalance]:
        """Users' balances, each with its lots and next expiry."""
        return listing("/admin/v1/balances", AccountBalance, limit=limit, tenant_id=tenant_id, user_id=user_id)
