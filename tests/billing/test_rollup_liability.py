"""The liability at a past instant reads the journal's rollup (whole days, then the instant's day's whole quarters,
then the raw entries of its own quarter, then the unsealed tail) and the holds open at it through their own index:
line for line what the query over every entry and every hold returned, at instants on, just before and inside a
15-minute bucket, whether nothing, part or all of the journal is sealed."""

from __future__ import annotations

import itertools
import uuid
from datetime import UTC, date, datetime, timedelta

from sqlalchemy import Engine, text
from sqlalchemy.orm import Session

from billing.ledger import holds as ledger_holds
from billing.reports.reconcile import reconcile
from facemint.finance import reports as finance_reports
from tests.billing import rollup_reference as reference
from tests.billing.rollup_reference import Ledger


def _probes(instants: list[datetime]) -> list[datetime]:
    """Around each instant where transactions were placed: on it (entries made at it count), a microsecond
    before, inside its hold (made a minute before), and later in its own bucket or the next; and instants before
    and after everything."""
    probes = [datetime(2026, 9, 1, tzinfo=UTC), datetime(2027, 1, 1, tzinfo=UTC)]
    for at in instants[::3]:
        probes += [at, at - timedelta(microseconds=1), at - timedelta(seconds=30), at + timedelta(minutes=7)]
    return probes


def _open_hold(books: Ledger, account_id: int, *, made: datetime, resolved: datetime | None) -> None:
    """A hold made at `made`: left open, or released and recorded as expired at `resolved` (by the owner; the
    triggers refuse the service; `Ledger.spread` re-times only released holds) - even before it was made, as a
    transaction begun before the hold could record it."""
    reference = f"liability-{uuid.uuid4().hex}"
    hold = ledger_holds.reserve(books.session, account_id=account_id, amount=13, reference=reference, ttl_seconds=60)
    if resolved is not None:
        ledger_holds.release(books.session, hold_id=hold.hold_id)
    books.session.commit()
    with books.owner.begin() as conn:
        conn.execute(text("SET LOCAL session_replication_role = replica"))
        conn.execute(
            text(
                "UPDATE holds SET created_at = :made, resolved_at = coalesce(:resolved, resolved_at), "
                "status = CASE WHEN status = 'released' THEN 'expired' ELSE status END WHERE id = :id"
            ),
            {"made": made, "resolved": resolved, "id": hold.hold_id},
        )


def _assert_liability_matches(session: Session, tenant_ids: list[int], probes: list[datetime]) -> None:
    scopes = [(None, None), (tenant_ids[0], None), (None, tenant_ids[1]), (tenant_ids[0], tenant_ids[0])]
    for at, (tenant_scope, tenant_id) in itertools.product(probes, scopes):
        expected = reference.liability_at(session, at=at, tenant_scope=tenant_scope, tenant_id=tenant_id)
        got = finance_reports.liability(session, at=at, tenant_scope=tenant_scope, tenant_id=tenant_id)
        assert got == expected, (at, tenant_scope, tenant_id)
    session.rollback()


def test_liability_at_an_instant_equals_the_journal_sealed_or_not(session: Session, owner_engine: Engine) -> None:
    books = Ledger(session, owner_engine)
    books.spread(0, [datetime(2026, 9, 20, 7, 45, tzinfo=UTC)])
    marked = books.last_transaction()
    for _ in range(12):
        books.one_of_each()
    instants = reference.instants(date(2026, 10, 1), 30)
    books.spread(marked, instants)
    user = books.users[0]
    _open_hold(books, user, made=datetime(2026, 10, 3, 18, 20, tzinfo=UTC), resolved=None)
    _open_hold(books, user, made=datetime(2026, 10, 5, 9, 0, tzinfo=UTC), resolved=datetime(2026, 10, 9, tzinfo=UTC))
    _open_hold(books, user, made=datetime(2026, 10, 7, 9, 0, tzinfo=UTC), resolved=datetime(2026, 10, 7, tzinfo=UTC))
    tenant_ids = [t.id for t in books.tenants]
    probes = [*_probes(instants), datetime(2026, 10, 6, tzinfo=UTC), datetime(2026, 10, 7, 12, tzinfo=UTC)]
    # The probes see balances move and tokens held: the comparison is not between zeros.
    lines = [finance_reports.liability(session, at=at, tenant_scope=None, tenant_id=None) for at in probes]
    assert len({sum(line.balance for line in day) for day in lines}) > 10
    assert sum(1 for day in lines if any(line.held for line in day)) > 10
    # The open hold and the one released days later are both held then (the one "resolved before it was made" is
    # held at no instant: the probe at 12:00 that day).
    first_tenant = finance_reports.liability(
        session, at=datetime(2026, 10, 6, tzinfo=UTC), tenant_scope=books.tenants[0].id, tenant_id=None
    )
    assert next(line.held for line in first_tenant if line.kind == "user") >= 26
    session.rollback()

    # Nothing sealed: the tail is the whole journal.
    assert books.unsealed() > 100
    _assert_liability_matches(session, tenant_ids, probes)
    # A prefix sealed in (xid, id) order, cutting through a transaction; then all of it.
    assert books.seal(max_rows=77, max_batches=2) == 154
    _assert_liability_matches(session, tenant_ids, probes)
    books.seal()
    assert books.unsealed() == 0
    _assert_liability_matches(session, tenant_ids, probes)
    # New entries after the seal head, in the same days: the tail again, inside sealed buckets.
    marked = books.last_transaction()
    for _ in range(3):
        books.one_of_each()
    books.spread(marked, reference.instants(date(2026, 10, 4), 10))
    assert books.unsealed() > 0
    _assert_liability_matches(session, tenant_ids, probes)
    books.seal()
    _assert_liability_matches(session, tenant_ids, probes)
    assert reconcile(session).balanced
