"""Credit lots in the finance views: expiry transactions in the ledger log (with the lots each entry wrote or
burned), the daily report's expired column and identity, and the liability split by when tokens expire."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from typing import Any

from fastapi.testclient import TestClient
from sqlalchemy import Engine, text
from sqlalchemy.orm import Session

from billing.ledger import holds as ledger_holds
from billing.ledger import lots
from billing.ledger import service as ledger
from billing.ledger.orm import LotSource
from facemint.users.orm import Role
from tests.factories import create_tenant, create_user
from tests.platform.conftest import MakeCaller

FINANCE = "/admin/v1/finance"
NOW = datetime.now(UTC)


def _grant(session: Session, account: int, amount: int, expires_at: datetime | None, tenant: int | None) -> int:
    posting = ledger.credit(
        session,
        account_id=account,
        amount=amount,
        source=LotSource.grant,
        priority=10 if expires_at else 50,
        expires_at=expires_at,
        idempotency_key=f"fin-lots-{account}-{amount}",
        request_hash=b"grant",
        tenant_id=tenant,
        actor="test",
    )
    session.commit()
    return posting.transaction_id


def _get(client: TestClient, headers: dict[str, str], path: str, **params: Any) -> Any:
    response = client.get(f"{FINANCE}{path}", params=params, headers=headers)
    assert response.status_code == 200, response.text
    return response.json()


def test_an_expiry_shows_in_the_ledger_log_and_the_daily_report(
    client: TestClient, session: Session, make_caller: MakeCaller, owner_engine: Engine
) -> None:
    tenant = create_tenant(session)
    user = create_user(session, tenant=tenant)
    finance = make_caller(Role.finance).headers
    grant = _grant(session, user.account_id, 30, NOW + timedelta(days=2), tenant.id)
    _grant(session, user.account_id, 5, None, tenant.id)
    hold = ledger_holds.reserve(session, account_id=user.account_id, amount=12, reference="fin-lots", ttl_seconds=60)
    ledger_holds.capture(session, hold_id=hold.hold_id, amount=10)
    session.commit()
    (lot,) = lots.lots_of_transaction(session, transaction_id=grant)
    with owner_engine.begin() as conn:
        conn.execute(
            text("UPDATE credit_lots SET expires_at = now() - interval '1 second' WHERE id = :id"), {"id": lot.lot_id}
        )
    (expiry,) = lots.expire_due_lots(session)
    session.commit()
    assert expiry.amount == 20

    rows = _get(client, finance, "/ledger", user_id=user.id, limit=50)["items"]
    by_kind = {r["kind"]: r for r in rows if r["kind"] != "recharge"}
    assert by_kind["expiry"]["amount"] == -20
    assert by_kind["expiry"]["lots"] == [
        {"lot_id": lot.lot_id, "tokens": -20, "priority": 10, "expires_at": by_kind["expiry"]["lots"][0]["expires_at"]}
    ]
    assert by_kind["capture"]["lots"][0]["lot_id"] == lot.lot_id
    assert by_kind["capture"]["lots"][0]["tokens"] == -10
    credited = [r for r in rows if r["kind"] == "recharge" and r["transaction_id"] == grant]
    assert [(x["lot_id"], x["tokens"]) for x in credited[0]["lots"]] == [(lot.lot_id, 30)]
    expiries = _get(client, finance, "/ledger", kind="expiry", limit=50)["items"]
    assert {(r["account_kind"], r["amount"]) for r in expiries} == {("user", -20), ("system", 20)}
    assert next(r for r in expiries if r["account_kind"] == "system")["lots"] is None

    today = datetime.now(UTC).date().isoformat()
    (day,) = _get(client, finance, "/reports/daily", tenant_id=tenant.id, **{"from": today, "to": today})["rows"]
    assert (day["recharged"], day["consumed"], day["expired"], day["closing"]) == (35, 10, 20, 5)
    assert day["opening"] + day["recharged"] - day["consumed"] + day["adjustments"] - day["expired"] == day["closing"]


def test_the_liability_splits_by_expiry_and_adds_up(
    client: TestClient, session: Session, make_caller: MakeCaller
) -> None:
    tenant = create_tenant(session)
    user = create_user(session, tenant=tenant)
    first = datetime(NOW.year + 1, 3, 5, 12, tzinfo=UTC)
    _grant(session, user.account_id, 7, first, tenant.id)
    _grant(session, user.account_id, 3, first + timedelta(days=10), tenant.id)
    _grant(session, user.account_id, 2, first + timedelta(days=40), tenant.id)
    _grant(session, tenant.pool_account_id, 100, None, tenant.id)
    ledger_holds.reserve(session, account_id=user.account_id, amount=4, reference="fin-lots-held", ttl_seconds=60)
    session.commit()
    finance = make_caller(Role.finance).headers
    report = _get(client, finance, "/reports/liability", tenant_id=tenant.id)
    months = [(e["expires_from"], e["expires_before"], e["balance"], e["held"]) for e in report["by_expiry"]]
    march, april, may = (date(first.year, m, 1).isoformat() for m in (3, 4, 5))
    assert months == [(None, None, 100, 0), (march, april, 10, 4), (april, may, 2, 0)]
    assert sum(e["balance"] for e in report["by_expiry"]) == report["total"]["balance"]
    assert sum(e["held"] for e in report["by_expiry"]) == report["total"]["held"]
    days = _get(client, finance, "/reports/liability", tenant_id=tenant.id, expiry_bucket="day")["by_expiry"]
    assert [(e["expires_from"], e["balance"]) for e in days[1:]] == [
        (first.date().isoformat(), 7),
        ((first + timedelta(days=10)).date().isoformat(), 3),
        ((first + timedelta(days=40)).date().isoformat(), 2),
    ]
    # A tenant admin sees its own tenant's split; a past instant has none.
    admin = make_caller(Role.tenant_admin, tenant).headers
    assert _get(client, admin, "/reports/liability")["by_expiry"] == report["by_expiry"]
    assert _get(client, finance, "/reports/liability", at=datetime.now(UTC).isoformat())["by_expiry"] is None
