"""The journal's rollup against real Postgres: the sealer adds exactly the rows it seals, in the same transaction,
so the rollup always equals the sealed prefix of the journal; reconciliation names a rollup row that does not."""

from __future__ import annotations

import importlib.util
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, text
from sqlalchemy.orm import Session

from billing.ledger import holds as ledger_holds
from billing.ledger.orm import TransactionKind
from billing.reports.reconcile import reconcile
from billing.sealing import service as sealing
from facemint.users.orm import Role
from tests.factories import create_tenant, create_user, fund

MIGRATION = Path(__file__).resolve().parents[2] / "migrations" / "versions" / "20261205_0007_console.py"


def _rollup(session: Session) -> list[tuple[Any, ...]]:
    return [
        tuple(r)
        for r in session.execute(
            text(
                "SELECT span, tenant_id, bucket, account_kind, transaction_kind, amount, entries FROM ledger_rollups "
                "ORDER BY span, tenant_id, bucket, account_kind, transaction_kind"
            )
        )
    ]


def _created(session: Session, transaction_id: int) -> datetime:
    at: datetime = session.execute(
        text("SELECT created_at FROM ledger_transactions WHERE id = :id"), {"id": transaction_id}
    ).scalar_one()
    return at.astimezone(UTC)


def _seal(session: Session, **kwargs: Any) -> int:
    results = sealing.seal_all(session, streams=("ledger_entries",), **{"max_rows": 50_000, **kwargs})
    session.commit()
    return sum(r.n_rows for r in results)


# One row of the rollup: the user's day.
_ONE = "span = '1 day' AND account_kind = 'user'"


def _mismatch(session: Session) -> list[Any]:
    report = reconcile(session)
    session.rollback()
    return [d for d in report.discrepancies if d.check == "rollup_mismatch"]


def test_the_sealer_adds_what_it_seals_and_nothing_else(session: Session) -> None:
    tenant = create_tenant(session)
    user = create_user(session, tenant=tenant)
    first = fund(session, account_id=user.account_id, amount=100)
    assert _rollup(session) == []  # the money path writes no rollup row

    assert _seal(session) == 2
    at = _created(session, first)
    quarter = at.replace(minute=at.minute - at.minute % 15, second=0, microsecond=0)
    day = at.replace(hour=0, minute=0, second=0, microsecond=0)
    recharge = TransactionKind.recharge.value
    # Per 15 minutes and tenant (0: none), per 15 minutes for every account (-1), per UTC day and tenant.
    assert _rollup(session) == [
        ("1 day", 0, day, "issuance", recharge, -100, 1),
        ("1 day", tenant.id, day, "user", recharge, 100, 1),
        ("15 minutes", -1, quarter, "issuance", recharge, -100, 1),
        ("15 minutes", -1, quarter, "user", recharge, 100, 1),
        ("15 minutes", 0, quarter, "issuance", recharge, -100, 1),
        ("15 minutes", tenant.id, quarter, "user", recharge, 100, 1),
    ]

    # Not sealed yet: not in the rollup. Sealed: added to the same rows where the keys are the same.
    fund(session, account_id=user.account_id, amount=150)
    hold = ledger_holds.reserve(session, account_id=user.account_id, amount=70, reference="rollup-hold", ttl_seconds=60)
    ledger_holds.capture(session, hold_id=hold.hold_id, amount=30)
    session.commit()
    assert [r[5] for r in _rollup(session)] == [-100, 100, -100, 100, -100, 100]
    assert _seal(session) == 4
    for span, tenants in (("1 day", {0, tenant.id}), ("15 minutes", {-1}), ("15 minutes", {0, tenant.id})):
        totals: dict[tuple[str, str], tuple[int, int]] = {}
        for row_span, tenant_id, _, account_kind, transaction_kind, amount, entries in _rollup(session):
            if row_span == span and tenant_id in tenants:
                n_amount, n_entries = totals.get((account_kind, transaction_kind), (0, 0))
                totals[(account_kind, transaction_kind)] = (n_amount + amount, n_entries + entries)
        assert totals == {
            ("issuance", "recharge"): (-250, 2),
            ("user", "recharge"): (250, 2),
            ("user", "capture"): (-30, 1),
            ("usage_revenue", "capture"): (30, 1),
        }, (span, tenants)
    assert _mismatch(session) == []


def test_batches_that_cut_through_transactions_still_add_up(session: Session) -> None:
    staff = create_user(session, role=Role.platform_admin)
    users = [create_user(session) for _ in range(3)]
    for i, account in enumerate([staff.account_id, *(u.account_id for u in users)] * 2):
        fund(session, account_id=account, amount=10 + i)
    # Batches of 3 rows: a transaction's two entries land in different batches.
    assert _seal(session, max_rows=3, max_batches=1) == 3
    # Each entry counts once in each of the three sets of rows.
    assert sum(r[6] for r in _rollup(session)) == 3 * 3
    assert _mismatch(session) == []
    assert _seal(session, max_rows=3) == 13
    rows = _rollup(session)
    assert sum(r[6] for r in rows) == 3 * 16
    assert sum(r[5] for r in rows) == 0
    staff_rows = {(r[0], r[5]) for r in rows if r[1] == 0 and r[3] == "user"}  # the staff account: no tenant
    assert staff_rows == {("1 day", 10 + 14), ("15 minutes", 10 + 14)}
    assert _mismatch(session) == []


@pytest.mark.no_invariants
@pytest.mark.parametrize(
    ("plant", "detail"),
    [
        (f"UPDATE ledger_rollups SET amount = amount + 1 WHERE {_ONE}", "rollup 101 in 1 entries"),
        (f"UPDATE ledger_rollups SET entries = 2 WHERE {_ONE}", "rollup 100 in 2 entries"),
        (f"DELETE FROM ledger_rollups WHERE {_ONE}", "rollup 0 in 0 entries"),
        (
            "INSERT INTO ledger_rollups SELECT span, tenant_id, bucket - interval '1 day', account_kind, "
            f"'capture', 5, 1 FROM ledger_rollups WHERE {_ONE}",
            "rollup 5 in 1 entries, journal 0 in 0",
        ),
    ],
)
def test_reconciliation_names_a_wrong_rollup_row(
    session: Session, owner_engine: Engine, plant: str, detail: str
) -> None:
    tenant = create_tenant(session)
    user = create_user(session, tenant=tenant)
    fund(session, account_id=user.account_id, amount=100)
    _seal(session)
    fund(session, account_id=user.account_id, amount=5)  # unsealed: outside the rollup, and rightly so
    assert _mismatch(session) == []
    with owner_engine.begin() as conn:
        conn.execute(text(plant))
    [found] = _mismatch(session)
    assert len(found.ids) == 1
    assert found.ids[0].startswith("1 day ")
    assert f"Z {tenant.id} user " in found.ids[0]
    assert found.details[0].startswith(detail)


def test_the_migration_rolls_up_what_was_sealed_before_it(session: Session, owner_engine: Engine) -> None:
    users = [create_user(session) for _ in range(2)]
    for account in (u.account_id for u in users):
        fund(session, account_id=account, amount=40)
    _seal(session)
    fund(session, account_id=users[0].account_id, amount=7)  # after the seal head: not rolled up
    expected = _rollup(session)
    assert len(expected) >= 8  # 3 per tenant or none, 2 for every account
    spec = importlib.util.spec_from_file_location("migration_0007", MIGRATION)
    assert spec is not None
    assert spec.loader is not None
    migration = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(migration)
    with owner_engine.begin() as conn:
        conn.execute(text("DELETE FROM ledger_rollups"))
        conn.execute(text(migration.ROLLUP_SEALED_SQL))
    session.rollback()
    assert _rollup(session) == expected
