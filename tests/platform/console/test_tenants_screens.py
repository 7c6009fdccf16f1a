"""The tenants screen over httpx against the real app: the list and its filters, creating a tenant, its plan,
suspending and activating, the pool's balance and the pool recharge (the same service, ceiling, idempotency and
four-eyes rules as POST /admin/v1/recharges), and who may see and do what."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from billing.ledger import service as ledger
from facemint.approvals.orm import RechargeApproval
from facemint.tenants.orm import Plan, Tenant
from facemint.users.orm import Role
from tests.factories import create_tenant, create_user, fund
from tests.platform.console.conftest import MakeConsoleUser
from tests.platform.console.console_helpers import console_post, htmx_get, idempotency_key_of, next_page_url, row_ids


def _listed_ids(html: str) -> list[int]:
    return row_ids(html, "data-tenant-id")


def _pool(session: Session, tenant: Tenant) -> int:
    session.expire_all()
    return ledger.get_balance(session, account_id=tenant.pool_account_id).balance


def test_an_operator_creates_a_tenant_and_finds_it_by_its_filters(
    console_user: MakeConsoleUser, session: Session
) -> None:
    operator = console_user(Role.operator)
    created = console_post(operator.client, "/admin/tenants", operator.csrf, {"name": " Acme Ltd ", "plan": "pro"})
    assert created.status_code == 303
    tenant = session.scalars(select(Tenant).where(Tenant.name == "Acme Ltd")).one()
    assert created.headers["location"] == f"/admin/tenants/{tenant.id}"
    assert tenant.plan == Plan.pro
    other = create_tenant(session, name="Beta GmbH")
    # The same refusal as the API for a taken name.
    taken = console_post(operator.client, "/admin/tenants", operator.csrf, {"name": "Acme Ltd"})
    assert taken.status_code == 409
    assert 'data-code="tenant_exists"' in taken.text

    client = operator.client
    assert _listed_ids(client.get("/admin/tenants").text)[:2] == [other.id, tenant.id]
    assert _listed_ids(client.get("/admin/tenants", params={"name": "acme"}).text) == [tenant.id]
    assert _listed_ids(client.get("/admin/tenants", params={"plan": "pro"}).text) == [tenant.id]
    assert _listed_ids(client.get("/admin/tenants", params={"status": "suspended"}).text) == []
    # The filter form's htmx request gets the same page (htmx selects #list from it).
    fragment = htmx_get(client, "/admin/tenants", params={"name": "beta"})
    assert fragment.status_code == 200
    assert _listed_ids(fragment.text) == [other.id]


def test_the_list_pages_with_a_keyset_cursor(console_user: MakeConsoleUser, session: Session) -> None:
    operator = console_user(Role.operator)
    made = [create_tenant(session, name=f"paged-{n}") for n in range(5)]
    seen: list[int] = []
    url: str | None = "/admin/tenants?name=paged-&limit=2"
    while url:
        page = operator.client.get(url)
        assert page.status_code == 200
        seen += _listed_ids(page.text)
        url = next_page_url(page.text)
    assert seen == [t.id for t in reversed(made)]


def test_plan_suspend_and_activate_go_through_the_tenant_service(
    console_user: MakeConsoleUser, session: Session
) -> None:
    operator = console_user(Role.operator)
    tenant = create_tenant(session)
    member = create_user(session, tenant=tenant)
    version = member.credentials_version
    base = f"/admin/tenants/{tenant.id}"
    assert console_post(operator.client, f"{base}/plan", operator.csrf, {"plan": "enterprise"}).status_code == 303
    bad = console_post(operator.client, f"{base}/plan", operator.csrf, {"plan": "gold"})
    assert bad.status_code == 422
    assert 'data-code="unprocessable"' in bad.text
    assert console_post(operator.client, f"{base}/suspend", operator.csrf).status_code == 303
    session.expire_all()
    assert (tenant.plan, tenant.status) == ("enterprise", "suspended")
    assert member.credentials_version == version + 1  # the suspension signed the tenant's users out
    page = operator.client.get(base).text
    assert "/activate" in page
    assert "/suspend" not in page
    assert console_post(operator.client, f"{base}/activate", operator.csrf).status_code == 303
    session.expire_all()
    assert tenant.status == "active"


def test_a_tenant_admin_sees_only_its_own_tenant(console_user: MakeConsoleUser, session: Session) -> None:
    mine, theirs = create_tenant(session), create_tenant(session)
    admin = console_user(Role.tenant_admin, tenant=mine)
    assert _listed_ids(admin.client.get("/admin/tenants").text) == [mine.id]
    page = admin.client.get(f"/admin/tenants/{mine.id}")
    assert page.status_code == 200
    # Neither writes to the tenant nor fills its pool (tenant admins hold neither tenants:write nor staff rights).
    assert "/plan" not in page.text
    assert "/suspend" not in page.text
    assert "pool-recharge" not in page.text
    assert 'id="pool-balance"' in page.text
    other = admin.client.get(f"/admin/tenants/{theirs.id}")
    assert other.status_code == 404
    assert 'data-code="tenant_not_found"' in other.text
    forged = console_post(admin.client, f"/admin/tenants/{theirs.id}/recharge", admin.csrf, {"amount": "5"})
    assert forged.status_code == 404  # it holds recharges:write, but another tenant is not there to reach
    assert _pool(session, theirs) == 0


def test_finance_sees_no_write_controls_and_a_forged_post_is_refused(
    console_user: MakeConsoleUser, session: Session
) -> None:
    finance = console_user(Role.finance)
    tenant = create_tenant(session)
    page = finance.client.get(f"/admin/tenants/{tenant.id}").text
    assert "/plan" not in page
    assert "/suspend" not in page
    assert "pool-recharge" not in page
    assert "New tenant" not in finance.client.get("/admin/tenants").text
    forged = console_post(finance.client, f"/admin/tenants/{tenant.id}/suspend", finance.csrf)
    assert forged.status_code == 403
    assert 'data-code="insufficient_scope"' in forged.text
    key = "console-forged"
    forged = console_post(
        finance.client,
        f"/admin/tenants/{tenant.id}/recharge",
        finance.csrf,
        {"amount": "5", "reason": "x", "idempotency_key": key},
    )
    assert forged.status_code == 403
    session.expire_all()
    assert tenant.status == "active"
    assert _pool(session, tenant) == 0


def test_the_pool_recharge_applies_once_however_often_the_form_is_sent(
    console_user: MakeConsoleUser, session: Session
) -> None:
    operator = console_user(Role.operator)
    tenant = create_tenant(session)
    fund(session, account_id=tenant.pool_account_id, amount=10)
    page = operator.client.get(f"/admin/tenants/{tenant.id}")
    assert 'id="pool-balance"><span class="num">10</span>' in page.text
    key = idempotency_key_of(page.text)
    assert key != idempotency_key_of(operator.client.get(f"/admin/tenants/{tenant.id}").text)
    form = {"amount": "1,500", "reason": "top-up", "reference": "inv-7", "idempotency_key": key}
    first = console_post(operator.client, f"/admin/tenants/{tenant.id}/recharge", operator.csrf, form)
    again = console_post(operator.client, f"/admin/tenants/{tenant.id}/recharge", operator.csrf, form)
    assert first.status_code == again.status_code == 303
    assert "replayed" not in first.headers["location"]
    assert "replayed=1" in again.headers["location"]
    assert _pool(session, tenant) == 1_510
    shown = operator.client.get(first.headers["location"]).text
    assert "Pool recharged: transaction" in shown
    assert '<span class="num">1,510</span>' in shown
    # The same key with another body is the API's conflict, not a second recharge.
    changed = console_post(
        operator.client, f"/admin/tenants/{tenant.id}/recharge", operator.csrf, {**form, "amount": "2"}
    )
    assert changed.status_code == 409
    assert _pool(session, tenant) == 1_510


def test_the_pool_recharge_keeps_the_endpoints_ceiling_and_four_eyes(
    console_user: MakeConsoleUser, session: Session
) -> None:
    operator = console_user(Role.operator)
    settings = operator.client.app.state.settings  # type: ignore[attr-defined]
    tenant = create_tenant(session)
    path = f"/admin/tenants/{tenant.id}/recharge"
    above = {"amount": str(settings.recharge_max_amount + 1), "reason": "r", "idempotency_key": "console-k1"}
    refused = console_post(operator.client, path, operator.csrf, above)
    assert refused.status_code == 422
    assert 'data-code="amount_above_ceiling"' in refused.text
    for amount in ("0", "-5", "1.5", "ten"):
        bad = console_post(operator.client, path, operator.csrf, {**above, "amount": amount})
        assert bad.status_code == 422, amount
    no_key = console_post(operator.client, path, operator.csrf, {**above, "amount": "5", "idempotency_key": ""})
    assert no_key.status_code == 400
    large = {"amount": str(settings.approval_threshold_amount + 1), "reason": "big", "idempotency_key": "console-k2"}
    held = console_post(operator.client, path, operator.csrf, large)
    assert held.status_code == 303
    approval = session.scalars(select(RechargeApproval)).one()
    assert held.headers["location"] == f"/admin/tenants/{tenant.id}?approval={approval.id}"
    shown = operator.client.get(held.headers["location"]).text
    assert "waiting for approval" in shown
    assert f'href="/admin/approvals/{approval.id}"' in shown
    # A resubmit answers with the same request: still one approval, nothing applied.
    assert console_post(operator.client, path, operator.csrf, large).headers["location"] == held.headers["location"]
    assert len(session.scalars(select(RechargeApproval)).all()) == 1
    assert _pool(session, tenant) == 0
