"""The ledger side of recurring grants against real Postgres: UTC period boundaries, crediting a staged set as one
transaction with its awards and `grant` lots, and the database refusing a second credit of the same (grant,
period, account) whoever writes it: a later session, or two sessions at once, without the scheduler's lock."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta, timezone

import pytest
from sqlalchemy import text
from sqlalchemy.orm import Session, sessionmaker

from billing.grants import service as grant_ledger
from billing.grants.errors import GrantAlreadyAwarded
from billing.grants.schemas import GrantApplied, Period
from billing.ledger import lots
from billing.ledger import service as ledger
from billing.ledger.orm import AccountKind, LotSource
from tests.factories import create_tenant, create_user

GRANT = 7  # billing knows grants by id only
PERIOD_START = datetime(2026, 12, 5, tzinfo=UTC)


def _utc(*parts: int) -> datetime:
    return datetime(*parts, tzinfo=UTC)  # type: ignore[misc]


@pytest.mark.parametrize(
    ("period", "at", "bounds"),
    [
        (Period.day, _utc(2026, 3, 29, 23, 59, 59), (_utc(2026, 3, 29), _utc(2026, 3, 30))),
        (Period.day, _utc(2026, 3, 30), (_utc(2026, 3, 30), _utc(2026, 3, 31))),
        (Period.week, _utc(2026, 12, 5, 17), (_utc(2026, 11, 30), _utc(2026, 12, 7))),  # a Saturday: Monday's week
        (Period.week, _utc(2026, 11, 30), (_utc(2026, 11, 30), _utc(2026, 12, 7))),
        (Period.month, _utc(2026, 12, 31, 23), (_utc(2026, 12, 1), _utc(2027, 1, 1))),
        (Period.month, _utc(2028, 2, 29, 12), (_utc(2028, 2, 1), _utc(2028, 3, 1))),
    ],
)
def test_periods_are_utc_calendar_periods(period: Period, at: datetime, bounds: tuple[datetime, datetime]) -> None:
    assert period.bounds(at) == bounds


def test_an_instant_in_another_zone_falls_in_its_utc_period() -> None:
    paris_summer = timezone(timedelta(hours=2))
    assert Period.day.bounds(datetime(2026, 7, 1, 0, 30, tzinfo=paris_summer)) == (_utc(2026, 6, 30), _utc(2026, 7, 1))
    with pytest.raises(ValueError, match="aware"):
        Period.day.bounds(datetime(2026, 7, 1))  # noqa: DTZ001  (the refused case)


def _stage(session: Session, accounts: list[int], *, amount: int = 5, expires_at: datetime) -> None:
    grant_ledger.create_stage(session)
    session.execute(
        text(
            f"INSERT INTO {grant_ledger.STAGE_TABLE} (row_no, account_id, amount, priority, expires_at) "
            "SELECT n, account_id, :amount, 10, :expires FROM unnest(CAST(:accounts AS bigint[])) "
            "WITH ORDINALITY AS x(account_id, n)"
        ),
        {"accounts": accounts, "amount": amount, "expires": expires_at},
    )


def _apply(session: Session, accounts: list[int], *, expires_at: datetime) -> GrantApplied:
    _stage(session, accounts, expires_at=expires_at)
    return grant_ledger.apply_staged(
        session,
        grant_id=GRANT,
        period_start=PERIOD_START,
        source_account_id=ledger.system_account_id(session, kind=AccountKind.issuance),
        source_tracked=False,
        tenant_id=None,
        actor="test",
        reason="test grant",
    )


def _balances(session: Session, accounts: list[int]) -> list[int]:
    session.rollback()
    rows = session.execute(
        text("SELECT balance FROM ledger_accounts WHERE id = ANY(:ids) ORDER BY id"), {"ids": accounts}
    )
    return list(rows.scalars())


def test_a_staged_set_is_one_transaction_of_grant_lots_and_awards(session: Session) -> None:
    tenant = create_tenant(session)
    accounts = sorted(create_user(session, tenant=tenant, password=None).account_id for _ in range(3))
    expires = datetime.now(UTC) + timedelta(hours=3)
    applied = _apply(session, accounts, expires_at=expires)
    session.commit()
    assert (applied.accounts, applied.total, applied.short) == (3, 15, False)
    assert applied.transaction_id is not None
    written = lots.lots_of_transaction(session, transaction_id=applied.transaction_id)
    # One lot per account, in no particular order (the set-based insert keeps none).
    assert sorted((lot.account_id, lot.source, lot.priority, lot.amount, lot.expires_at) for lot in written) == [
        (account, LotSource.grant, 10, 5, expires) for account in accounts
    ]
    assert grant_ledger.awarded(session, grant_id=GRANT, period_start=PERIOD_START) == (3, 15)
    assert _balances(session, accounts) == [5, 5, 5]


def test_an_account_already_awarded_refuses_the_whole_set(session: Session) -> None:
    tenant = create_tenant(session)
    accounts = sorted(create_user(session, tenant=tenant, password=None).account_id for _ in range(3))
    expires = datetime.now(UTC) + timedelta(hours=3)
    _apply(session, accounts[1:], expires_at=expires)
    session.commit()
    # The same set again: the ledger's key (its first account) refuses it.
    with pytest.raises(GrantAlreadyAwarded):
        _apply(session, accounts[1:], expires_at=expires)
    session.rollback()
    # A set with a new first account gets past the ledger's key; the awards' primary key refuses it, whole.
    with pytest.raises(GrantAlreadyAwarded):
        _apply(session, accounts, expires_at=expires)
    session.rollback()
    assert _balances(session, accounts) == [0, 5, 5]
    assert grant_ledger.awarded(session, grant_id=GRANT, period_start=PERIOD_START) == (2, 10)


def test_two_sessions_crediting_the_same_accounts_at_once_credit_them_once(
    session: Session, session_factory: sessionmaker[Session]
) -> None:
    tenant = create_tenant(session)
    accounts = sorted(create_user(session, tenant=tenant, password=None).account_id for _ in range(4))
    expires = datetime.now(UTC) + timedelta(hours=3)
    both_staged = threading.Barrier(2)
    outcomes: list[str] = []

    def credit() -> None:
        with session_factory() as mine:
            _stage(mine, accounts, expires_at=expires)
            both_staged.wait()
            try:
                grant_ledger.apply_staged(
                    mine,
                    grant_id=GRANT,
                    period_start=PERIOD_START,
                    source_account_id=ledger.system_account_id(mine, kind=AccountKind.issuance),
                    source_tracked=False,
                    tenant_id=None,
                    actor="test",
                    reason="test grant",
                )
                mine.commit()
                outcomes.append("credited")
            except GrantAlreadyAwarded:
                mine.rollback()
                outcomes.append("refused")

    threads = [threading.Thread(target=credit) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert sorted(outcomes) == ["credited", "refused"]
    assert _balances(session, accounts) == [5, 5, 5, 5]
    assert grant_ledger.awarded(session, grant_id=GRANT, period_start=PERIOD_START) == (4, 20)
