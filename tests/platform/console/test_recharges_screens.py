"""The recharges screens over httpx against the real app: one recharge (a resubmitted form replays), the bulk
preview -> confirm -> result flow (applied once however often it is confirmed), the batch history and its rows,
and what each role may do there."""

from __future__ import annotations

import re
import time
from typing import Any

import pytest
from sqlalchemy.orm import Session

from facemint.tenants.orm import Tenant
from facemint.users.orm import Role, User
from tests.factories import create_tenant, create_user
from tests.platform.console.conftest import ConsoleUser, MakeConsoleUser
from tests.platform.console.console_helpers import console_post, htmx_get, idempotency_key_of, next_page_url
from tests.platform.recharge_helpers import (
    audit_events,
    balance_of,
    count,
    csv_body,
    fund_pool,
    recharge_transactions,
    seed_users,
)

THRESHOLD = 100_000  # the default approval_threshold_amount


def form_key(viewer: ConsoleUser) -> str:
    page = viewer.client.get("/admin/recharges")
    assert page.status_code == 200, page.text
    return idempotency_key_of(page.text)


def recharge(viewer: ConsoleUser, key: str, **fields: Any) -> Any:
    data = {"target_kind": "email", "reason": "console test", "idempotency_key": key, **fields}
    return console_post(viewer.client, "/admin/recharges", viewer.csrf, data)


def upload(
    viewer: ConsoleUser, csv: str, *, mode: str = "partial", reason: str = "bulk test", tenant_id: int | None = None
) -> Any:
    data: dict[str, Any] = {"mode": mode, "reason": reason, "csrf_token": viewer.csrf}
    if tenant_id is not None:
        data["tenant_id"] = str(tenant_id)
    return viewer.client.post(
        "/admin/recharges/bulk/preview",
        data=data,
        files={"file": ("bonus.csv", csv.encode(), "text/csv")},
        follow_redirects=False,
    )


def preview_id_of(response: Any) -> str:
    assert response.status_code == 303, response.text
    match = re.fullmatch(r"/admin/recharges/bulk/([A-Za-z0-9_-]+)", response.headers["location"])
    assert match, response.headers["location"]
    return match.group(1)


def confirm(viewer: ConsoleUser, preview_id: str) -> Any:
    return console_post(viewer.client, f"/admin/recharges/bulk/{preview_id}/confirm", viewer.csrf)


def wait_for_run(viewer: ConsoleUser, preview_id: str, *, seen: list[str] | None = None, timeout: float = 60) -> str:
    """Poll the run fragment as htmx does until the run is done; returns the final fragment."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        fragment = htmx_get(viewer.client, f"/admin/recharges/bulk/{preview_id}/run")
        assert fragment.status_code == 200, fragment.text
        phase = re.search(r'data-phase="([a-z]+)"', fragment.text)
        assert phase
        if seen is not None:
            seen.append(phase.group(1))
        if phase.group(1) in ("committed", "held", "failed"):
            assert "hx-trigger" not in fragment.text, "a finished run stops polling"
            return str(fragment.text)
        assert 'hx-trigger="every 500ms"' in fragment.text
        assert "<progress" in fragment.text
        time.sleep(0.05)
    raise AssertionError("the bulk recharge did not finish")


class TestSingleRecharge:
    def test_a_recharge_applies_and_the_same_form_sent_again_replays(
        self, console_user: MakeConsoleUser, session: Session
    ) -> None:
        operator = console_user(Role.operator)
        member = create_user(session)
        key = form_key(operator)
        first = recharge(operator, key, target=member.email, amount="250", reference="ref-1")
        assert first.status_code == 201, first.text
        assert 'data-outcome="applied"' in first.text
        again = recharge(operator, key, target=member.email, amount="250", reference="ref-1")
        assert again.status_code == 200, again.text
        assert 'data-outcome="replayed"' in again.text
        assert balance_of(session, member.account_id) == 250
        assert recharge_transactions(session) == 1
        [event] = audit_events(session, "recharge.create")
        assert event.actor_user_id == operator.user.id
        # Each answer draws a fresh form: the next recharge is a new one.
        assert idempotency_key_of(again.text) != key

    def test_the_same_key_with_another_body_is_refused(self, console_user: MakeConsoleUser, session: Session) -> None:
        operator = console_user(Role.operator)
        member = create_user(session)
        key = form_key(operator)
        assert recharge(operator, key, target=member.email, amount="5").status_code == 201
        refused = recharge(operator, key, target=member.email, amount="6")
        assert refused.status_code == 409
        assert 'data-code="idempotency_key_reused"' in refused.text
        assert balance_of(session, member.account_id) == 5

    def test_the_ceiling_and_the_schema_are_the_apis(self, console_user: MakeConsoleUser, session: Session) -> None:
        operator = console_user(Role.operator)
        member = create_user(session)
        above = recharge(operator, form_key(operator), target=member.email, amount="10000001")
        assert above.status_code == 422
        assert 'data-code="amount_above_ceiling"' in above.text
        for amount in ("0", "-3", "1.5", "ten"):
            bad = recharge(operator, form_key(operator), target=member.email, amount=amount)
            assert bad.status_code == 422, amount
        assert balance_of(session, member.account_id) == 0

    def test_a_large_recharge_is_held_with_a_link_to_its_approval(
        self, console_user: MakeConsoleUser, session: Session
    ) -> None:
        operator = console_user(Role.operator)
        member = create_user(session)
        held = recharge(
            operator, form_key(operator), target=str(member.id), target_kind="user_id", amount=str(THRESHOLD + 1)
        )
        assert held.status_code == 202, held.text
        assert 'data-outcome="held"' in held.text
        approval_id = re.search(r'href="/admin/approvals/(\d+)"', held.text)
        assert approval_id
        assert balance_of(session, member.account_id) == 0
        assert operator.client.get(f"/admin/approvals/{approval_id.group(1)}").status_code == 200

    def test_staff_fill_a_tenant_pool_and_a_tenant_admin_spends_its_own(
        self, console_user: MakeConsoleUser, session: Session
    ) -> None:
        tenant = create_tenant(session)
        operator = console_user(Role.operator)
        pooled = recharge(operator, form_key(operator), target=str(tenant.id), target_kind="tenant_id", amount="40")
        assert pooled.status_code == 201, pooled.text
        assert balance_of(session, tenant.pool_account_id) == 40
        admin = console_user(Role.tenant_admin, tenant=tenant)
        assert 'value="tenant_id"' not in admin.client.get("/admin/recharges").text
        member = create_user(session, tenant=tenant)
        spent = recharge(admin, form_key(admin), target=member.email, amount="15")
        assert spent.status_code == 201, spent.text
        assert balance_of(session, tenant.pool_account_id) == 25
        # A pool is staff's to fill, and another tenant's user does not exist for this admin.
        forged = recharge(admin, form_key(admin), target=str(tenant.id), target_kind="tenant_id", amount="1")
        assert forged.status_code == 403
        outsider = create_user(session)
        assert recharge(admin, form_key(admin), target=outsider.email, amount="1").status_code == 404
        assert balance_of(session, outsider.account_id) == 0


class TestRoles:
    def test_finance_reads_recharges_without_forms_and_its_posts_are_refused(
        self, console_user: MakeConsoleUser, session: Session
    ) -> None:
        finance = console_user(Role.finance)
        member = create_user(session)
        page = finance.client.get("/admin/recharges")
        assert page.status_code == 200
        assert 'action="/admin/recharges"' not in page.text
        assert "/admin/recharges/bulk/preview" not in page.text
        forged = recharge(finance, "forged-key", target=member.email, amount="5")
        assert forged.status_code == 403
        assert 'data-code="insufficient_scope"' in forged.text
        forged_bulk = upload(finance, csv_body("email,amount", f"{member.email},5"))
        assert forged_bulk.status_code == 403
        assert balance_of(session, member.account_id) == 0
        assert finance.client.get("/admin/recharges/batches").status_code == 200


class TestBulk:
    def test_preview_then_confirm_applies_once_however_often_it_is_confirmed(
        self, console_user: MakeConsoleUser, session: Session
    ) -> None:
        operator = console_user(Role.operator)
        tenant = create_tenant(session)
        a1, a2 = create_user(session, tenant=tenant), create_user(session, tenant=tenant)
        csv = csv_body(
            "email,amount,reference",
            f"{a1.email},100,r1",
            "nobody@example.test,5,",
            f"{a2.email},0,",
            f"{a2.email},30,r4",
        )
        preview_id = preview_id_of(upload(operator, csv, mode="partial"))
        page = operator.client.get(f"/admin/recharges/bulk/{preview_id}")
        assert page.status_code == 200
        assert 'data-rows="4" data-applicable="2" data-total="130" data-failed="2"' in page.text
        assert '<tr data-row="2" data-code="unknown_user">' in page.text
        assert '<tr data-row="3" data-code="invalid_amount">' in page.text
        assert 'id="confirm"' in page.text
        assert recharge_transactions(session) == 0, "a preview applies nothing"
        failures = operator.client.get(f"/admin/recharges/bulk/{preview_id}/failures.csv")
        assert failures.status_code == 200
        assert failures.text.splitlines()[1:] == [
            "2,unknown_user,no such user,nobody@example.test,",
            f"3,invalid_amount,amount must be a positive integer number of tokens,{a2.email},",
        ]

        first, second = confirm(operator, preview_id), confirm(operator, preview_id)  # a double click
        for response in (first, second):
            assert response.status_code == 303
            assert response.headers["location"] == f"/admin/recharges/bulk/{preview_id}/run"
        final = wait_for_run(operator, preview_id)
        assert 'data-outcome="applied"' in final
        assert 'data-applied="2"' in final
        # Back to the preview and confirmed again: the same key, so the stored batch answers.
        again = operator.client.get(f"/admin/recharges/bulk/{preview_id}")
        assert 'id="confirm"' not in again.text
        assert f"/admin/recharges/bulk/{preview_id}/run" in again.text
        assert confirm(operator, preview_id).status_code == 303
        assert 'data-outcome="applied"' in wait_for_run(operator, preview_id)
        assert [balance_of(session, a1.account_id), balance_of(session, a2.account_id)] == [100, 30]
        assert count(session, "recharge_batches") == 1
        assert recharge_transactions(session) == 1
        [event] = audit_events(session, "recharge.batch")
        assert event.actor_user_id == operator.user.id

    def test_an_atomic_batch_with_failures_offers_no_confirm_and_a_forged_one_is_refused(
        self, console_user: MakeConsoleUser, session: Session
    ) -> None:
        operator = console_user(Role.operator)
        member = create_user(session)
        preview_id = preview_id_of(
            upload(operator, csv_body("email,amount", f"{member.email},5", "ghost@example.test,5"), mode="atomic")
        )
        page = operator.client.get(f"/admin/recharges/bulk/{preview_id}")
        assert 'data-code="batch_rejected"' in page.text
        assert '<tr data-row="2" data-code="unknown_user">' in page.text
        assert 'id="confirm"' not in page.text
        forged = confirm(operator, preview_id)
        assert forged.status_code == 422
        assert 'data-code="batch_rejected"' in forged.text
        assert balance_of(session, member.account_id) == 0

    def test_a_preview_is_its_makers_only(self, console_user: MakeConsoleUser, session: Session) -> None:
        maker, other = console_user(Role.operator), console_user(Role.operator)
        member = create_user(session)
        preview_id = preview_id_of(upload(maker, csv_body("email,amount", f"{member.email},5")))
        for response in (
            other.client.get(f"/admin/recharges/bulk/{preview_id}"),
            confirm(other, preview_id),
            other.client.get(f"/admin/recharges/bulk/{preview_id}/run"),
            maker.client.get("/admin/recharges/bulk/no-such-preview"),
        ):
            assert response.status_code == 404
            assert 'data-code="preview_not_found"' in response.text
        assert balance_of(session, member.account_id) == 0

    def test_a_whole_file_error_is_the_apis(self, console_user: MakeConsoleUser) -> None:
        operator = console_user(Role.operator)
        bad_header = upload(operator, "mail,tokens\nx@example.test,5\n")
        assert bad_header.status_code == 400
        assert 'data-code="invalid_csv_header"' in bad_header.text
        no_reason = upload(operator, csv_body("email,amount", "x@example.test,5"), reason=" ")
        assert 'data-code="reason_required"' in no_reason.text

    def test_a_tenant_pool_covers_it_or_not(self, console_user: MakeConsoleUser, session: Session) -> None:
        tenant = create_tenant(session)
        fund_pool(session, tenant, 50)
        admin = console_user(Role.tenant_admin, tenant=tenant)
        member = create_user(session, tenant=tenant)
        short = preview_id_of(upload(admin, csv_body("email,amount", f"{member.email},60", "ghost@example.test,1")))
        page = admin.client.get(f"/admin/recharges/bulk/{short}")
        assert 'data-covers="no"' in page.text
        assert 'data-total="60"' in page.text, "the rows are still staged and shown"
        assert '<tr data-row="2" data-code="unknown_user">' in page.text
        assert 'id="confirm"' not in page.text
        covered = preview_id_of(upload(admin, csv_body("email,amount", f"{member.email},50")))
        page = admin.client.get(f"/admin/recharges/bulk/{covered}")
        assert 'data-covers="yes"' in page.text
        assert confirm(admin, covered).status_code == 303
        assert 'data-outcome="applied"' in wait_for_run(admin, covered)
        assert balance_of(session, member.account_id) == 50
        assert balance_of(session, tenant.pool_account_id) == 0

    def test_a_batch_over_the_threshold_is_held_and_links_its_approval(
        self, console_user: MakeConsoleUser, session: Session
    ) -> None:
        operator = console_user(Role.operator)
        member = create_user(session)
        preview_id = preview_id_of(upload(operator, csv_body("user_id,amount", f"{member.id},{THRESHOLD + 1}")))
        assert "needs approval" in operator.client.get(f"/admin/recharges/bulk/{preview_id}").text
        assert confirm(operator, preview_id).status_code == 303
        final = wait_for_run(operator, preview_id)
        assert 'data-outcome="held"' in final
        assert re.search(r'href="/admin/approvals/\d+"', final)
        assert balance_of(session, member.account_id) == 0
        assert count(session, "recharge_approvals") == 1
        # Confirmed again: the same approval, not a second one.
        assert confirm(operator, preview_id).status_code == 303
        wait_for_run(operator, preview_id)
        assert count(session, "recharge_approvals") == 1


def _batch(console: ConsoleUser, users: list[User], *, tenant: Tenant | None = None) -> int:
    csv = csv_body("user_id,amount,reference", *(f"{u.id},{i + 1},ref-{i + 1}" for i, u in enumerate(users)))
    preview_id = preview_id_of(upload(console, csv, tenant_id=tenant.id if tenant else None))
    assert confirm(console, preview_id).status_code == 303
    final = wait_for_run(console, preview_id)
    batch_id = re.search(r'href="/admin/recharges/batches/(\d+)"', final)
    assert batch_id, final
    return int(batch_id.group(1))


class TestHistory:
    def test_history_lists_batches_and_a_batch_shows_its_rows_a_page_at_a_time(
        self, console_user: MakeConsoleUser, session: Session
    ) -> None:
        operator = console_user(Role.operator)
        tenant = create_tenant(session)
        users = [create_user(session, tenant=tenant, password=None) for _ in range(3)]
        batch_id = _batch(operator, users, tenant=tenant)
        listing = operator.client.get("/admin/recharges/batches")
        assert f'href="/admin/recharges/batches/{batch_id}"' in listing.text
        first = operator.client.get(f"/admin/recharges/batches/{batch_id}", params={"limit": 2})
        assert first.status_code == 200
        assert users[0].email in first.text
        assert users[1].email in first.text
        assert users[2].email not in first.text
        next_url = next_page_url(first.text)
        assert next_url
        second = operator.client.get(next_url)
        assert users[2].email in second.text
        assert users[0].email not in second.text

    def test_a_tenant_admin_sees_only_its_own_batches(self, console_user: MakeConsoleUser, session: Session) -> None:
        operator = console_user(Role.operator)
        mine, theirs = create_tenant(session), create_tenant(session)
        my_batch = _batch(operator, [create_user(session, tenant=mine, password=None)], tenant=mine)
        their_batch = _batch(operator, [create_user(session, tenant=theirs, password=None)], tenant=theirs)
        admin = console_user(Role.tenant_admin, tenant=mine)
        listing = admin.client.get("/admin/recharges/batches")
        assert f"/admin/recharges/batches/{my_batch}" in listing.text
        assert f"/admin/recharges/batches/{their_batch}" not in listing.text
        assert admin.client.get(f"/admin/recharges/batches/{my_batch}").status_code == 200
        other = admin.client.get(f"/admin/recharges/batches/{their_batch}")
        assert other.status_code == 404
        assert 'data-code="batch_not_found"' in other.text
        assert admin.client.get(f"/admin/recharges/batches?tenant_id={theirs.id}").status_code == 404


@pytest.mark.slow
def test_a_100000_row_file_shows_its_progress_and_applies_once(console_user: MakeConsoleUser, session: Session) -> None:
    tenant = create_tenant(session)
    users = seed_users(session, tenant, 100_000, "console")
    operator = console_user(Role.operator)
    csv = csv_body("user_id,amount", *(f"{user_id},1" for user_id, _, _ in users))
    preview_id = preview_id_of(upload(operator, csv, tenant_id=tenant.id))
    page = operator.client.get(f"/admin/recharges/bulk/{preview_id}")
    assert 'data-rows="100000" data-applicable="100000" data-total="100000" data-failed="0"' in page.text
    started = time.monotonic()
    response = confirm(operator, preview_id)
    confirm_seconds = time.monotonic() - started
    assert response.status_code == 303
    assert confirm_seconds < 2, "confirming does not wait for the batch"
    assert confirm(operator, preview_id).status_code == 303  # a double click, while it runs
    seen: list[str] = []
    final = wait_for_run(operator, preview_id, seen=seen, timeout=120)
    assert 'data-outcome="applied"' in final
    assert any(phase not in ("committed",) for phase in seen), f"progress was shown while it ran: {seen}"
    assert recharge_transactions(session) == 1
    assert count(session, "recharge_batches") == 1
    assert balance_of(session, users[0][2]) == 1
    assert balance_of(session, users[-1][2]) == 1
