"""The approvals screens over httpx against the real app: the queue and its filters, a held request's rows, and
deciding it. Four eyes: the requester sees no buttons and its forged approval is refused, finance's too; with a
second factor enrolled, approving needs a current code."""

from __future__ import annotations

import re

import httpx
from sqlalchemy import text
from sqlalchemy.orm import Session

from facemint.config import Settings
from facemint.console import totp
from facemint.users.orm import Role, User
from tests.factories import create_tenant, create_user, fund
from tests.platform.console.conftest import ConsoleUser, MakeConsoleUser
from tests.platform.console.console_helpers import console_post
from tests.platform.console.test_recharges_screens import (
    THRESHOLD,
    confirm,
    form_key,
    preview_id_of,
    recharge,
    upload,
    wait_for_run,
)
from tests.platform.recharge_helpers import audit_events, balance_of, csv_body, recharge_transactions, staff


def hold(requester: ConsoleUser, member: User, amount: int = THRESHOLD + 1) -> int:
    """A recharge above the threshold, sent through the console form: the id of the approval holding it."""
    held = recharge(requester, form_key(requester), target=member.email, amount=str(amount))
    assert held.status_code == 202, held.text
    match = re.search(r'href="/admin/approvals/(\d+)"', held.text)
    assert match
    return int(match.group(1))


def approve(viewer: ConsoleUser, approval_id: int, **fields: str) -> httpx.Response:
    return console_post(viewer.client, f"/admin/approvals/{approval_id}/approve", viewer.csrf, fields)


def reject(viewer: ConsoleUser, approval_id: int, **fields: str) -> httpx.Response:
    return console_post(viewer.client, f"/admin/approvals/{approval_id}/reject", viewer.csrf, fields)


def buttons(viewer: ConsoleUser, approval_id: int) -> bool:
    page = viewer.client.get(f"/admin/approvals/{approval_id}")
    assert page.status_code == 200, page.text
    return 'id="approve-form"' in page.text or 'id="reject-form"' in page.text


class TestQueue:
    def test_the_queue_opens_on_what_waits_and_filters_by_status_and_kind(
        self, console_user: MakeConsoleUser, session: Session
    ) -> None:
        requester, approver = console_user(Role.operator), console_user(Role.operator)
        member = create_user(session)
        waiting, decided = hold(requester, member), hold(requester, member, THRESHOLD + 2)
        assert reject(approver, decided, note="typo").status_code == 303
        batch_preview = preview_id_of(upload(requester, csv_body("user_id,amount", f"{member.id},{THRESHOLD + 3}")))
        assert confirm(requester, batch_preview).status_code == 303
        held_batch = re.search(r'href="/admin/approvals/(\d+)"', wait_for_run(requester, batch_preview))
        assert held_batch
        batch_id = int(held_batch.group(1))

        def listed(**params: str) -> set[int]:
            page = approver.client.get("/admin/approvals", params=params)
            assert page.status_code == 200, page.text
            return {int(i) for i in re.findall(r'data-approval="(\d+)"', page.text)}

        assert listed() == {waiting, batch_id}
        assert listed(status="rejected") == {decided}
        assert listed(status="all") == {waiting, decided, batch_id}
        assert listed(status="all", kind="batch") == {batch_id}
        assert listed(kind="single") == {waiting}
        assert listed(status="all", limit="1") == {batch_id}, "newest first, a page at a time"

    def test_a_batch_approval_shows_its_rows(self, console_user: MakeConsoleUser, session: Session) -> None:
        requester, approver = console_user(Role.operator), console_user(Role.operator)
        members = [create_user(session) for _ in range(2)]
        csv = csv_body(
            "email,amount,reference", f"{members[0].email},{THRESHOLD + 1},big", f"{members[1].email},7,small"
        )
        preview_id = preview_id_of(upload(requester, csv))
        assert confirm(requester, preview_id).status_code == 303
        approval_id = int(re.search(r"/admin/approvals/(\d+)", wait_for_run(requester, preview_id)).group(1))  # type: ignore[union-attr]
        page = approver.client.get(f"/admin/approvals/{approval_id}")
        assert members[0].email in page.text
        assert members[1].email in page.text
        assert "small" in page.text
        assert approve(approver, approval_id).status_code == 303
        assert balance_of(session, members[0].account_id) == THRESHOLD + 1
        assert balance_of(session, members[1].account_id) == 7
        decided = approver.client.get(f"/admin/approvals/{approval_id}")
        batch = re.search(r'href="/admin/recharges/batches/(\d+)"', decided.text)
        assert batch, "an approved batch links the batch it applied"


class TestDeciding:
    def test_a_second_operator_approves_once_with_a_note(self, console_user: MakeConsoleUser, session: Session) -> None:
        requester, approver = console_user(Role.operator), console_user(Role.operator)
        member = create_user(session)
        approval_id = hold(requester, member)
        assert buttons(approver, approval_id)
        response = approve(approver, approval_id, note="checked with sales")
        assert response.status_code == 303
        assert response.headers["location"] == f"/admin/approvals/{approval_id}?decided=approved"
        page = approver.client.get(response.headers["location"])
        assert 'data-decided="approved"' in page.text
        assert "checked with sales" in page.text
        assert not buttons(approver, approval_id)
        again = approve(approver, approval_id)
        assert again.status_code == 409
        assert 'data-code="approval_not_pending"' in again.text
        assert balance_of(session, member.account_id) == THRESHOLD + 1
        assert recharge_transactions(session) == 1
        [event] = audit_events(session, "recharge.approval.approve")
        assert event.actor_user_id == approver.user.id
        assert event.after["note"] == "checked with sales"

    def test_the_requester_sees_no_buttons_and_its_forged_approval_is_refused(
        self, console_user: MakeConsoleUser, session: Session
    ) -> None:
        requester = console_user(Role.operator)
        member = create_user(session)
        approval_id = hold(requester, member)
        page = requester.client.get(f"/admin/approvals/{approval_id}")
        assert 'id="own-request"' in page.text
        assert not buttons(requester, approval_id)
        forged = approve(requester, approval_id)
        assert forged.status_code == 403
        assert 'data-code="self_approval"' in forged.text
        assert balance_of(session, member.account_id) == 0
        assert "pending" in requester.client.get(f"/admin/approvals/{approval_id}").text

    def test_finance_reads_the_queue_without_buttons_and_its_posts_are_refused(
        self, console_user: MakeConsoleUser, session: Session
    ) -> None:
        requester, finance = console_user(Role.operator), console_user(Role.finance)
        member = create_user(session)
        approval_id = hold(requester, member)
        assert f'data-approval="{approval_id}"' in finance.client.get("/admin/approvals").text
        assert not buttons(finance, approval_id)
        for forged in (approve(finance, approval_id), reject(finance, approval_id)):
            assert forged.status_code == 403
            assert 'data-code="insufficient_scope"' in forged.text
        assert balance_of(session, member.account_id) == 0

    def test_a_rejection_applies_nothing(self, console_user: MakeConsoleUser, session: Session) -> None:
        requester, approver = console_user(Role.operator), console_user(Role.operator)
        member = create_user(session)
        approval_id = hold(requester, member)
        response = reject(approver, approval_id, note="wrong user")
        assert response.status_code == 303
        page = approver.client.get(response.headers["location"])
        assert 'data-decided="rejected"' in page.text
        assert "wrong user" in page.text
        assert balance_of(session, member.account_id) == 0
        assert approve(approver, approval_id).status_code == 409

    def test_with_a_second_factor_approving_needs_a_current_code(
        self, console_user: MakeConsoleUser, session: Session
    ) -> None:
        requester, approver = console_user(Role.operator), console_user(Role.operator)
        enrolment = console_post(approver.client, "/admin/account/totp/start", approver.csrf)
        secret = re.search(r'class="secret">([A-Z2-7]+)<', enrolment.text).group(1)  # type: ignore[union-attr]
        enrolled = console_post(
            approver.client,
            "/admin/account/totp/confirm",
            approver.csrf,
            {"code": totp.code_at(secret, totp.current_counter())},
        )
        assert enrolled.status_code == 303
        member = create_user(session)
        approval_id = hold(requester, member)
        assert 'name="code"' in approver.client.get(f"/admin/approvals/{approval_id}").text
        missing = approve(approver, approval_id)
        assert missing.status_code == 422
        assert 'data-code="second_factor_required"' in missing.text
        wrong_code = totp.code_at(secret, totp.current_counter() + 5)
        wrong = approve(approver, approval_id, code=wrong_code)
        assert wrong.status_code == 401
        assert 'data-code="second_factor_invalid"' in wrong.text
        assert balance_of(session, member.account_id) == 0
        # The enrolment used this step's code: a code works once, so the next step's.
        ok = approve(approver, approval_id, code=totp.code_at(secret, totp.current_counter() + 1))
        assert ok.status_code == 303, ok.text
        assert balance_of(session, member.account_id) == THRESHOLD + 1


class TestTenants:
    def test_a_tenant_admin_reads_its_own_approvals_only_and_decides_none(
        self, console_user: MakeConsoleUser, session: Session
    ) -> None:
        mine, theirs = create_tenant(session), create_tenant(session)
        admin = console_user(Role.tenant_admin, tenant=mine)
        fund(session, account_id=mine.pool_account_id, amount=THRESHOLD * 2)
        own = hold(admin, create_user(session, tenant=mine))
        operator = console_user(Role.operator)
        other = hold(operator, create_user(session, tenant=theirs))
        queue = admin.client.get("/admin/approvals").text
        assert f'data-approval="{own}"' in queue
        assert f'data-approval="{other}"' not in queue
        assert not buttons(admin, own)
        refused = admin.client.get(f"/admin/approvals/{other}")
        assert refused.status_code == 404
        assert 'data-code="approval_not_found"' in refused.text
        assert approve(admin, own).status_code == 403
        # The operator approves the tenant admin's request: paid from the tenant's pool.
        assert approve(operator, own).status_code == 303
        assert balance_of(session, mine.pool_account_id) == THRESHOLD - 1


def test_held_adjustments_and_reversals_show_what_approving_applies(
    console_user: MakeConsoleUser, session: Session, settings: Settings
) -> None:
    """Held through the API (the console has no adjustment form): the queue and the detail show them too."""
    requester = staff(session, settings, Role.operator)
    approver = console_user(Role.operator)
    member = create_user(session)
    transaction_id = fund(session, account_id=member.account_id, amount=THRESHOLD + 5)
    api = approver.client
    adjustment = api.post(
        "/admin/v1/adjustments",
        json={"user_id": member.id, "amount": -(THRESHOLD + 1), "reason": "chargeback"},
        headers=requester.headers("adj-1"),
    )
    reversal = api.post(
        f"/admin/v1/transactions/{transaction_id}/reversal",
        json={"reason": "duplicate"},
        headers=requester.headers("rev-1"),
    )
    for response, shown in ((adjustment, "chargeback"), (reversal, f"reversal of transaction {transaction_id}")):
        assert response.status_code == 202, response.text
        page = approver.client.get(f"/admin/approvals/{response.json()['id']}")
        assert page.status_code == 200, page.text
        assert shown in page.text
        assert 'id="approve-form"' in page.text
    assert reject(approver, adjustment.json()["id"]).status_code == 303
    assert approve(approver, reversal.json()["id"]).status_code == 303
    assert balance_of(session, member.account_id) == 0


def test_held_grants_show_the_terms_approving_makes_or_changes(
    console_user: MakeConsoleUser, session: Session, settings: Settings
) -> None:
    """Held through the API (the console has no grants screen): the queue lists them under kind `grant`, and the
    detail shows the terms a new grant takes, or a change's terms before and after."""
    requester = staff(session, settings, Role.operator)
    approver = console_user(Role.operator)
    tenant = create_tenant(session)
    create_user(session, tenant=tenant)
    api = approver.client
    body = {"name": "weekly gift", "scope": "tenant", "tenant_id": tenant.id, "label": "vip", "amount": 7}
    new = api.post(
        "/admin/v1/grants", json=body | {"period": "week", "funding": "platform"}, headers=requester.headers()
    )
    assert new.status_code == 202, new.text
    page = approver.client.get(f"/admin/approvals/{new.json()['id']}")
    assert page.status_code == 200, page.text
    shown = re.sub(r"<[^>]+>", "", page.text)
    assert (
        f"A new recurring grant, platform-funded: 7 tokens a week to each user of tenant {tenant.id} labelled vip"
        in shown
    )
    assert 'id="grant-terms"' in page.text
    assert "Approve this grant?" in page.text
    assert approve(approver, new.json()["id"]).status_code == 303
    listed = approver.client.get("/admin/approvals", params={"status": "all", "kind": "grant"})
    assert f'data-approval="{new.json()["id"]}"' in listed.text

    (grant_id,) = session.execute(text("SELECT id FROM credit_grants")).scalars()
    change = api.patch(f"/admin/v1/grants/{grant_id}", json={"amount": 9}, headers=requester.headers())
    assert change.status_code == 202, change.text
    page = approver.client.get(f"/admin/approvals/{change.json()['id']}")
    assert f"A change to grant #{grant_id} (amount)" in page.text
    terms = re.search(r'id="grant-terms".*?</table>', page.text, re.S)
    assert terms
    assert re.search(r"<td>amount</td><td>7</td><td>9</td>", terms.group(0))
