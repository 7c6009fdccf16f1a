"""The SDK against a live `facemint serve` on the test Postgres and Redis: errors mapped from the API's real
problem documents, pagination over real rows, money calls that survive a lost answer and an API restart without
ever applying twice, CSV batches, four-eyes approvals, finance exports, and the async client."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from facemint.tenants.orm import Tenant
from facemint.users.orm import Role
from facemint_client import (
    AsyncFacemint,
    AuthenticationError,
    BatchRejected,
    Facemint,
    IdempotencyConflict,
    InsufficientScope,
    InsufficientTokens,
    NotFound,
    RetryPolicy,
    SelfApproval,
    ValidationError,
    WaitTimeout,
)
from facemint_client.admin_models import Approval, BatchResult, Recharge
from tests.factories import create_tenant
from tests.jobs.conftest import SOURCE, TARGET
from tests.sdk.conftest import MakePerson, balance, transactions
from tests.sdk.live import APPROVAL_THRESHOLD, LiveApi, LosingProxy

ClientFor = Callable[..., Facemint]


# --- errors, from the API's own problem documents ------------------------------------------------------------


def test_a_wrong_key_is_an_authentication_error(client_for: ClientFor) -> None:
    with pytest.raises(AuthenticationError) as raised:
        client_for("fmk_nope").account.balance()
    error = raised.value
    assert (error.status, error.code) == (401, "unauthorized")
    assert error.type == "https://docs.facemint.dev/problems/unauthorized"
    assert error.problem["status"] == 401
    assert error.request_id


def test_missing_objects_are_not_found(client_for: ClientFor, make_person: MakePerson) -> None:
    member = client_for(make_person(Role.member))
    staff = client_for(make_person(Role.operator))
    with pytest.raises(NotFound) as job:
        member.jobs.get("job_doesnotexist")
    with pytest.raises(NotFound) as tenant:
        staff.admin.tenants.get(2**40)
    assert (job.value.code, tenant.value.code) == ("job_not_found", "tenant_not_found")


def test_a_member_calling_an_admin_route_lacks_the_scope(client_for: ClientFor, make_person: MakePerson) -> None:
    with pytest.raises(InsufficientScope) as raised:
        client_for(make_person(Role.member)).admin.tenants.list().first_page()
    assert raised.value.status == 403
    assert raised.value.missing == ["tenants:read"]


def test_invalid_input_is_a_validation_error_with_its_fields(client_for: ClientFor, make_person: MakePerson) -> None:
    with pytest.raises(ValidationError) as raised:
        client_for(make_person(Role.operator)).admin.users.create("not-an-email", role="member")
    assert raised.value.status == 422
    assert any(error["location"][-1] == "email" for error in raised.value.errors)


def test_a_reused_key_with_another_request_is_an_idempotency_conflict_and_moves_nothing(
    client_for: ClientFor, make_person: MakePerson, engine: Engine
) -> None:
    member = make_person(Role.member)
    staff = client_for(make_person(Role.operator))
    staff.admin.recharges.create(5, reason="first", user_id=member.user.id, idempotency_key="conflict-1")
    with pytest.raises(IdempotencyConflict) as raised:
        staff.admin.recharges.create(6, reason="first", user_id=member.user.id, idempotency_key="conflict-1")
    assert (raised.value.status, raised.value.code) == (409, "idempotency_key_reused")
    assert balance(engine, member.account_id) == (5, 0)


def test_a_swap_beyond_the_balance_is_insufficient_tokens(client_for: ClientFor, make_person: MakePerson) -> None:
    with pytest.raises(InsufficientTokens) as raised:
        client_for(make_person(Role.member)).jobs.submit(SOURCE, TARGET)
    assert raised.value.status == 402
    assert (raised.value.needed, raised.value.available) == (1, 0)


def test_a_tenant_admin_spending_beyond_its_pool_is_insufficient_tokens(
    client_for: ClientFor, make_person: MakePerson, tenant: Tenant
) -> None:
    member = make_person(Role.member, tenant=tenant)
    admin = client_for(make_person(Role.tenant_admin, tenant=tenant))
    with pytest.raises(InsufficientTokens) as raised:
        admin.admin.recharges.create(50, reason="from the pool", user_id=member.user.id)
    assert raised.value.code == "insufficient_tokens"
    assert raised.value.available == 0


def test_an_atomic_batch_with_a_bad_row_is_rejected_with_every_failure(
    client_for: ClientFor, make_person: MakePerson
) -> None:
    member = make_person(Role.member)
    staff = client_for(make_person(Role.operator))
    rows = [{"user_id": member.user.id, "amount": 5}, {"email": "nobody@example.test", "amount": 5}]
    with pytest.raises(BatchRejected) as raised:
        staff.admin.recharges.batch(rows, reason="atomic")
    assert [(f["row"], f["code"]) for f in raised.value.failed] == [(2, "unknown_user")]


# --- pagination over real rows -------------------------------------------------------------------------------


def test_lists_are_iterated_across_pages_newest_first(
    client_for: ClientFor, make_person: MakePerson, session: Session
) -> None:
    made = [create_tenant(session, name=f"paged-{i}").id for i in range(7)]
    tenants = client_for(make_person(Role.operator)).admin.tenants
    pages = list(tenants.list(name="paged-", limit=3).pages())
    assert [len(page.items) for page in pages] == [3, 3, 1]
    assert pages[-1].next_cursor is None
    assert [t.id for t in tenants.list(name="paged-", limit=3)] == made[::-1]
    assert [t.id for t in tenants.list(name="paged-", limit=2).first_page().items] == made[:-3:-1]


def test_the_async_client_pages_and_reads_too(
    async_client_for: Callable[..., AsyncFacemint], make_person: MakePerson, session: Session
) -> None:
    made = [create_tenant(session, name=f"async-{i}").id for i in range(5)]
    member = make_person(Role.member, tokens=12)

    async def scenario() -> tuple[list[int], int]:
        async with async_client_for(make_person(Role.operator)) as staff, async_client_for(member) as own:
            seen = [t.id async for t in staff.admin.tenants.list(name="async-", limit=2)]
            return seen, (await own.account.balance()).available

    seen, available = asyncio.run(scenario())
    assert seen == made[::-1]
    assert available == 12


# --- money that moves once -----------------------------------------------------------------------------------


def test_a_recharge_whose_answer_is_lost_is_replayed_not_applied_twice(
    api: LiveApi, make_person: MakePerson, engine: Engine
) -> None:
    member = make_person(Role.member)
    proxy = LosingProxy(api.port)
    try:
        proxy.lose = 1
        with Facemint(make_person(Role.operator).key, base_url=proxy.url, retry=RetryPolicy(initial_delay=0.1)) as c:
            recharge = c.admin.recharges.create(40, reason="lost answer", user_id=member.user.id)
    finally:
        proxy.close()
    assert proxy.lost == 1
    assert isinstance(recharge, Recharge)
    assert recharge.replayed  # the retry was answered with what the first request applied
    assert balance(engine, member.account_id) == (40, 0)


@pytest.mark.slow
def test_calls_retry_across_an_api_restart_and_apply_once(
    api: LiveApi, make_person: MakePerson, engine: Engine
) -> None:
    member = make_person(Role.member)
    patient = RetryPolicy(max_retries=60, initial_delay=0.1, max_delay=0.5, deadline=90)
    with Facemint(make_person(Role.operator).key, base_url=api.url, retry=patient) as staff:
        staff.admin.recharges.create(10, reason="before", user_id=member.user.id)
        api.stop()
        assert not api.answers()
        starts = api.starts
        restart = threading.Thread(target=lambda: (time.sleep(1.0), api.start()))
        restart.start()
        began = time.monotonic()
        try:
            during = staff.admin.recharges.create(20, reason="during", user_id=member.user.id, idempotency_key="rs-1")
        finally:
            restart.join()
        assert time.monotonic() - began >= 1.0  # it was retried until the API came back
        assert api.starts == starts + 1
        after = staff.admin.recharges.create(20, reason="during", user_id=member.user.id, idempotency_key="rs-1")
        entries = list(staff.admin.finance.recharges(user_id=member.user.id))
    assert isinstance(during, Recharge)
    assert isinstance(after, Recharge)
    assert (during.replayed, after.replayed) == (False, True)
    assert during.transaction_id == after.transaction_id
    assert sorted(e.amount for e in entries) == [10, 20]
    assert balance(engine, member.account_id) == (30, 0)
    assert transactions(engine, kind="recharge", key="rs-1") == 1


def test_a_csv_batch_from_a_file_applies_once_and_lists_its_rows(
    client_for: ClientFor, make_person: MakePerson, engine: Engine, tmp_path: Path
) -> None:
    alice, bob = make_person(Role.member), make_person(Role.member)
    csv = tmp_path / "november.csv"
    csv.write_text(f"email,amount,reference\n{alice.user.email},30,inv-1\n{bob.user.email},12,inv-2\n")
    staff = client_for(make_person(Role.operator))
    first = staff.admin.recharges.batch(csv=csv, reason="november", mode="partial", idempotency_key="nov")
    again = staff.admin.recharges.batch(csv=csv.read_bytes(), reason="november", mode="partial", idempotency_key="nov")
    assert isinstance(first, BatchResult)
    assert isinstance(again, BatchResult)
    assert (first.applied, first.total_amount, first.replayed) == (2, 42, False)
    assert (again.batch_id, again.replayed) == (first.batch_id, True)
    assert first.batch_id is not None
    rows = list(staff.admin.recharges.batch_rows(first.batch_id, limit=1))
    assert [(r.row, r.email, r.amount) for r in rows] == [(1, alice.user.email, 30), (2, bob.user.email, 12)]
    assert (balance(engine, alice.account_id), balance(engine, bob.account_id)) == ((30, 0), (12, 0))


def test_a_large_recharge_waits_for_a_second_operator_then_applies_once(
    client_for: ClientFor, make_person: MakePerson, engine: Engine
) -> None:
    member = make_person(Role.member)
    requester, approver = client_for(make_person(Role.operator)), client_for(make_person(Role.operator))
    amount = APPROVAL_THRESHOLD + 500
    held = requester.admin.recharges.create(amount, reason="big", user_id=member.user.id, idempotency_key="big-1")
    assert isinstance(held, Approval)
    assert (held.status, held.total_amount) == ("pending", amount)
    assert balance(engine, member.account_id) == (0, 0)
    with pytest.raises(SelfApproval):
        requester.admin.approvals.approve(held.id)
    assert [a.id for a in approver.admin.approvals.list(status="pending")] == [held.id]
    decided = approver.admin.approvals.approve(held.id, note="checked")
    assert decided.status == "approved"
    applied = requester.admin.recharges.create(amount, reason="big", user_id=member.user.id, idempotency_key="big-1")
    assert isinstance(applied, Recharge)
    assert applied.amount == amount
    assert balance(engine, member.account_id) == (amount, 0)


def test_an_approval_whose_answer_is_lost_is_read_back_not_refused(
    api: LiveApi, client_for: ClientFor, make_person: MakePerson, engine: Engine
) -> None:
    member = make_person(Role.member)
    requester = client_for(make_person(Role.operator))
    held = requester.admin.recharges.create(APPROVAL_THRESHOLD + 1, reason="big", user_id=member.user.id)
    assert isinstance(held, Approval)
    proxy = LosingProxy(api.port)
    try:
        proxy.lose = 1
        with Facemint(make_person(Role.operator).key, base_url=proxy.url, retry=RetryPolicy(initial_delay=0.1)) as c:
            decided = c.admin.approvals.approve(held.id)
    finally:
        proxy.close()
    assert proxy.lost == 1
    assert decided.status == "approved"  # the retry met approval_not_pending and read the decision back
    assert balance(engine, member.account_id) == (APPROVAL_THRESHOLD + 1, 0)


def test_adjustments_and_reversals_are_keyed_too(
    client_for: ClientFor, make_person: MakePerson, engine: Engine
) -> None:
    member = make_person(Role.member, tokens=100)
    staff = client_for(make_person(Role.operator))
    adjusted = staff.admin.balances.adjust(member.user.id, -30, reason="correction", idempotency_key="adj-1")
    replayed = staff.admin.balances.adjust(member.user.id, -30, reason="correction", idempotency_key="adj-1")
    assert not isinstance(adjusted, Approval)
    assert not isinstance(replayed, Approval)
    assert (adjusted.replayed, replayed.replayed) == (False, True)
    reversal = staff.admin.balances.reverse(adjusted.transaction_id, reason="undo")
    assert not isinstance(reversal, Approval)
    assert reversal.kind == "reversal"
    assert balance(engine, member.account_id) == (100, 0)
    listed = list(staff.admin.balances.list(user_id=member.user.id))
    assert [(b.user_id, b.available) for b in listed] == [(member.user.id, 100)]


# --- reads an ops script makes -------------------------------------------------------------------------------


def test_finance_logs_and_an_export_with_its_trailer(
    client_for: ClientFor, make_person: MakePerson, tmp_path: Path
) -> None:
    member = make_person(Role.member)
    staff = client_for(make_person(Role.operator))
    for amount in (3, 4):
        staff.admin.recharges.create(amount, reason="log", user_id=member.user.id)
    assert [row.amount for row in staff.admin.finance.ledger(user_id=member.user.id)] == [4, 3]
    info = staff.admin.finance.export("recharges", tmp_path / "recharges.csv", user_id=member.user.id)
    lines = (tmp_path / "recharges.csv").read_text().splitlines()
    assert info.rows == 2
    assert lines[-1].startswith("# totals,rows=2")
    assert info.bytes == (tmp_path / "recharges.csv").stat().st_size
    report = staff.admin.finance.liability()
    assert report.users.balance >= 7


def test_a_wait_that_runs_out_raises_with_the_job_as_it_stands(
    client_for: ClientFor, make_person: MakePerson, engine: Engine
) -> None:
    # No worker runs in this module: the job stays queued.
    member = make_person(Role.member, tokens=5)
    own = client_for(member)
    job = own.jobs.submit(SOURCE, TARGET)
    with pytest.raises(WaitTimeout) as raised:
        own.jobs.wait(job.id, timeout=0.5, poll_interval=0.1)
    assert raised.value.job.status == "queued"
    assert balance(engine, member.account_id) == (5, 1)
    canceled = own.jobs.cancel(job.id)
    assert canceled.status == "canceled"
    assert balance(engine, member.account_id) == (5, 0)
