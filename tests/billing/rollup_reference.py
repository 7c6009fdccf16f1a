"""The dashboard's, the finance daily report's and the liability's queries as they were before the journal's rollup
(commit efe8e80 and the first dashboard), straight over the ledger entries and holds: the reference the
rollup-backed reports must match number for number. Frozen on purpose: they are the old code, not copies of the
current code (a test comparing the code with itself would prove nothing), so do not update them when the reports
change. Also `Ledger`, the journal both comparison tests build, and the instants they spread it over."""

from __future__ import annotations

import itertools
import uuid
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

from sqlalchemy import Engine, text
from sqlalchemy.orm import Session

from billing.ledger import holds as ledger_holds
from billing.ledger import service as ledger
from billing.ledger.orm import AccountKind, TransactionKind
from billing.reports.rollup import UNSEALED
from billing.sealing import service as sealing
from facemint.finance.reports import DailyRow, LiabilityLine
from facemint.reports.dashboard import DAYS, TOP_TENANTS
from facemint.reports.schemas import DayTokens, TenantConsumption
from facemint.tenancy import sql_conditions
from facemint.users.orm import Role
from tests.factories import create_tenant, create_user

DASHBOARD_DAILY_SQL = """
SELECT (t.created_at AT TIME ZONE :zone)::date AS day,
       coalesce(sum(e.amount) FILTER (WHERE t.kind = 'recharge'), 0) AS recharged,
       coalesce(-sum(e.amount) FILTER (WHERE t.kind = 'capture'), 0) AS consumed
FROM ledger_transactions t
JOIN ledger_entries e ON e.transaction_id = t.id
JOIN ledger_accounts a ON a.id = e.account_id
WHERE t.created_at >= :start AND t.kind IN ('recharge', 'capture') AND a.balance_tracked{scope}
GROUP BY 1
"""

DASHBOARD_TOP_TENANTS_SQL = """
SELECT a.tenant_id, tn.name, -sum(e.amount) AS consumed
FROM ledger_transactions t
JOIN ledger_entries e ON e.transaction_id = t.id
JOIN ledger_accounts a ON a.id = e.account_id
JOIN tenants tn ON tn.id = a.tenant_id
WHERE t.created_at >= :start AND t.kind = 'capture' AND a.balance_tracked
GROUP BY 1, 2 ORDER BY 3 DESC, 1 LIMIT :n
"""

FINANCE_DAILY_SQL = """
WITH acct AS (
    SELECT id, coalesce(tenant_id, 0) AS tenant_id FROM ledger_accounts a WHERE a.balance_tracked {scope}
),
opening AS (
    SELECT a.tenant_id, sum(e.amount) AS amount
    FROM ledger_entries e JOIN acct a ON a.id = e.account_id
    WHERE e.created_at < %(start)s GROUP BY a.tenant_id
),
moves AS (
    SELECT a.tenant_id, (e.created_at AT TIME ZONE 'UTC')::date AS day,
           coalesce(sum(e.amount) FILTER (WHERE t.kind = 'recharge'), 0) AS recharged,
           coalesce(-sum(e.amount) FILTER (WHERE t.kind = 'capture'), 0) AS consumed,
           coalesce(sum(e.amount) FILTER (WHERE t.kind IN ('adjustment', 'reversal')), 0) AS adjustments,
           coalesce(-sum(e.amount) FILTER (WHERE t.kind = 'expiry'), 0) AS expired
    FROM ledger_entries e JOIN acct a ON a.id = e.account_id JOIN ledger_transactions t ON t.id = e.transaction_id
    WHERE e.created_at >= %(start)s AND e.created_at < %(end)s
    GROUP BY 1, 2
),
released AS (
    SELECT a.tenant_id, (h.resolved_at AT TIME ZONE 'UTC')::date AS day,
           sum(h.amount - coalesce(h.captured_amount, 0)) AS released
    FROM holds h JOIN acct a ON a.id = h.account_id
    WHERE h.status <> 'held' AND h.resolved_at >= %(start)s AND h.resolved_at < %(end)s
    GROUP BY 1, 2
),
tenants AS (
    SELECT tenant_id FROM opening UNION SELECT tenant_id FROM moves UNION SELECT tenant_id FROM released
),
grid AS (
    SELECT tn.tenant_id, d::date AS day
    FROM tenants tn CROSS JOIN generate_series(%(first)s::date, %(last)s::date, interval '1 day') AS d
),
daily AS (
    SELECT g.tenant_id, g.day, coalesce(o.amount, 0) AS opening_before,
           coalesce(m.recharged, 0) AS recharged, coalesce(m.consumed, 0) AS consumed,
           coalesce(r.released, 0) AS released, coalesce(m.adjustments, 0) AS adjustments,
           coalesce(m.expired, 0) AS expired
    FROM grid g
    LEFT JOIN opening o ON o.tenant_id = g.tenant_id
    LEFT JOIN moves m ON m.tenant_id = g.tenant_id AND m.day = g.day
    LEFT JOIN released r ON r.tenant_id = g.tenant_id AND r.day = g.day
)
SELECT tenant_id, day, recharged, consumed, released, adjustments, expired,
       opening_before + coalesce(sum(recharged - consumed + adjustments - expired) OVER (
           PARTITION BY tenant_id ORDER BY day ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING), 0) AS opening
FROM daily ORDER BY tenant_id, day
"""


LIABILITY_AT_SQL = """
WITH acct AS (SELECT a.id, coalesce(a.tenant_id, 0) AS tenant_id, a.kind FROM ledger_accounts a
              WHERE a.balance_tracked {scope}),
bal AS (SELECT e.account_id, sum(e.amount) AS amount FROM ledger_entries e JOIN acct ON acct.id = e.account_id
        WHERE e.created_at <= %(at)s GROUP BY 1),
held AS (SELECT h.account_id, sum(h.amount) AS amount FROM holds h JOIN acct ON acct.id = h.account_id
         WHERE h.created_at <= %(at)s AND (h.resolved_at IS NULL OR h.resolved_at > %(at)s) GROUP BY 1)
SELECT acct.tenant_id, acct.kind, coalesce(sum(bal.amount), 0) AS balance, coalesce(sum(held.amount), 0) AS held
FROM acct LEFT JOIN bal ON bal.account_id = acct.id LEFT JOIN held ON held.account_id = acct.id
GROUP BY 1, 2 ORDER BY 1, 2
"""


def dashboard_days_and_top(
    session: Session, *, tenant_scope: int | None, tz: ZoneInfo, now: datetime
) -> tuple[list[DayTokens], list[TenantConsumption]]:
    """The dashboard's 30 days and top tenants, from the entries (as `facemint.reports.dashboard._charts` was)."""
    today = now.astimezone(tz).date()
    days = [today - timedelta(days=DAYS - 1 - i) for i in range(DAYS)]
    day_start = {d: datetime.combine(d, time(), tzinfo=tz).astimezone(UTC) for d in days}
    scope = "" if tenant_scope is None else " AND a.tenant_id = :tenant_scope"
    params: dict[str, object] = {"zone": tz.key, "start": day_start[days[0]], "tenant_scope": tenant_scope}
    rows = session.execute(text(DASHBOARD_DAILY_SQL.format(scope=scope)), params)
    by_day: dict[date, tuple[int, int]] = {r.day: (int(r.recharged), int(r.consumed)) for r in rows}
    day_points = [
        DayTokens(day=d, start=day_start[d], recharged=by_day.get(d, (0, 0))[0], consumed=by_day.get(d, (0, 0))[1])
        for d in days
    ]
    top: list[TenantConsumption] = []
    if tenant_scope is None:
        top = [
            TenantConsumption(tenant_id=r.tenant_id, name=r.name, consumed=int(r.consumed))
            for r in session.execute(text(DASHBOARD_TOP_TENANTS_SQL), {"start": day_start[days[0]], "n": TOP_TENANTS})
        ]
    return day_points, top


def finance_daily(
    session: Session, *, first: date, last: date, tenant_scope: int | None, tenant_id: int | None
) -> list[DailyRow]:
    """The finance daily report from the entries (as `facemint.finance.reports.daily_report` was)."""
    parts, params = sql_conditions("a.tenant_id", tenant_scope=tenant_scope, tenant_id=tenant_id)
    scope = " ".join(f"AND {part}" for part in parts)
    start = datetime.combine(first, datetime.min.time(), tzinfo=UTC)
    end = datetime.combine(last + timedelta(days=1), datetime.min.time(), tzinfo=UTC)
    params.update(start=start, end=end, first=first, last=last)
    rows = session.connection().exec_driver_sql(FINANCE_DAILY_SQL.format(scope=scope), params).mappings()
    return [
        DailyRow(
            tenant_id=row["tenant_id"] or None,
            day=row["day"],
            opening=int(row["opening"]),
            recharged=int(row["recharged"]),
            consumed=int(row["consumed"]),
            released=int(row["released"]),
            adjustments=int(row["adjustments"]),
            expired=int(row["expired"]),
            closing=int(row["opening"] + row["recharged"] - row["consumed"] + row["adjustments"] - row["expired"]),
        )
        for row in rows
    ]


def liability_at(
    session: Session, *, at: datetime, tenant_scope: int | None, tenant_id: int | None
) -> list[LiabilityLine]:
    """The liability at an instant from every entry up to it and every hold open at it (as
    `facemint.finance.reports.liability` was)."""
    parts, params = sql_conditions("a.tenant_id", tenant_scope=tenant_scope, tenant_id=tenant_id)
    params["at"] = at
    sql = LIABILITY_AT_SQL.format(scope="".join(f" AND {part}" for part in parts))
    return [
        LiabilityLine(
            tenant_id=row["tenant_id"] or None,
            kind="pool" if row["kind"] == "tenant_pool" else "user",
            balance=int(row["balance"]),
            held=int(row["held"]),
        )
        for row in session.connection().exec_driver_sql(sql, params).mappings()
    ]


# Instants each day where some zone's day begins or ends, and just before them (in UTC).
_MARKS = (
    time(0, 0),
    time(23, 59, 59, 999999),
    time(18, 29, 59, 999999),
    time(18, 30),  # Kolkata's midnight
    time(18, 15),  # Kathmandu's
    time(3, 59, 59, 999999),
    time(4, 0),  # New York's in summer time
    time(5, 0),  # and in winter
    time(13, 30),  # Lord Howe's
    time(11, 15),  # Chatham's in winter (+12:45)
    time(9, 41, 7),
)


def instants(first: date, days: int) -> list[datetime]:
    return [
        datetime.combine(first + timedelta(days=d), mark, tzinfo=UTC)
        for d in range(0, days, 2)
        for mark in _MARKS[d % 3 :: 2]
    ]


def _unique_key() -> str:
    return f"rollup-test-{uuid.uuid4().hex}"


class Ledger:
    """Tenants with users and pools, a staff account without a tenant, and every kind of transaction; each
    transaction then moved (by the owner: the service cannot) to an instant of its own."""

    def __init__(self, session: Session, owner: Engine) -> None:
        self.session, self.owner = session, owner
        self.tenants = [create_tenant(session, name=f"rollup-{i}-{uuid.uuid4().hex[:6]}") for i in range(3)]
        self.users = [create_user(session, tenant=t).account_id for t in self.tenants for _ in range(2)]
        self.staff = create_user(session, role=Role.platform_admin).account_id
        self.pools = [t.pool_account_id for t in self.tenants]
        self.issuance = ledger.system_account_id(session, kind=AccountKind.issuance)
        self.adjustments = ledger.system_account_id(session, kind=AccountKind.adjustments)
        self.small_recharges: list[int] = []
        self.counter = itertools.count(1)
        # Enough on every account for the small movements that follow.
        for account in [*self.users, *self.pools, self.staff]:
            self._recharge(self.issuance, account, 1_000_000)

    def _recharge(self, source: int, account: int, amount: int) -> int:
        posting = ledger.transfer(
            self.session,
            kind=TransactionKind.recharge,
            from_account_id=source,
            to_account_id=account,
            amount=amount,
            idempotency_key=_unique_key(),
            request_hash=b"t",
            tenant_id=None,
            actor="test",
        )
        self.session.commit()
        return posting.transaction_id

    def one_of_each(self) -> None:
        """A recharge, a pool handing tokens to a user, captures (partial and whole), a released hold, an
        adjustment each way and a reversal."""
        n = next(self.counter)
        user, other = self.users[n % len(self.users)], self.users[(n + 3) % len(self.users)]
        pool, pool_user = self.pools[n % 3], self.users[2 * (n % 3)]
        self.small_recharges.append(self._recharge(self.issuance, user, 10 + n))
        self._recharge(pool, pool_user, 7 + n)
        self._recharge(self.issuance, self.staff, 3 + n)
        for account, amount, captured in ((user, 60, 20 + n), (other, 30, None), (self.staff, 9, 4)):
            hold = ledger_holds.reserve(
                self.session, account_id=account, amount=amount, reference=_unique_key(), ttl_seconds=60
            )
            ledger_holds.capture(self.session, hold_id=hold.hold_id, amount=captured)
            self.session.commit()
        hold = ledger_holds.reserve(self.session, account_id=other, amount=11, reference=_unique_key(), ttl_seconds=60)
        ledger_holds.release(self.session, hold_id=hold.hold_id)
        self.session.commit()
        for legs in (((self.adjustments, -(5 + n)), (user, 5 + n)), ((other, -2), (self.adjustments, 2))):
            ledger.post(
                self.session,
                kind=TransactionKind.adjustment,
                legs=list(legs),
                idempotency_key=_unique_key(),
                request_hash=b"t",
                tenant_id=None,
                actor="test",
                reason="test",
            )
            self.session.commit()
        ledger.reverse(
            self.session,
            transaction_id=self.small_recharges.pop(0),
            idempotency_key=_unique_key(),
            request_hash=b"t",
            actor="test",
            reason="test",
        )
        self.session.commit()

    def spread(self, after_id: int, instants: list[datetime]) -> None:
        """Move the transactions after `after_id` (and their entries and holds) to `instants`, in turn."""
        with self.owner.begin() as conn:
            conn.execute(text("SET LOCAL session_replication_role = replica"))
            ids = conn.execute(
                text("SELECT id FROM ledger_transactions WHERE id > :after ORDER BY id"), {"after": after_id}
            ).scalars()
            for transaction_id, at in zip(ids, itertools.cycle(instants), strict=False):
                params = {"id": transaction_id, "at": at}
                conn.execute(text("UPDATE ledger_transactions SET created_at = :at WHERE id = :id"), params)
                conn.execute(text("UPDATE ledger_entries SET created_at = :at WHERE transaction_id = :id"), params)
                conn.execute(
                    text(
                        "UPDATE holds h SET created_at = :at - interval '1 minute', resolved_at = :at "
                        "FROM ledger_transactions t WHERE t.id = :id AND h.id = t.hold_id"
                    ),
                    params,
                )
            # Released holds have no transaction: each takes the instant of the capture made just before it.
            conn.execute(
                text(
                    """
                    UPDATE holds h SET created_at = p.created_at, resolved_at = p.resolved_at + interval '7 hours'
                    FROM holds p WHERE h.status = 'released' AND p.id = h.id - 1
                    """
                )
            )

    def last_transaction(self) -> int:
        return int(self.session.execute(text("SELECT coalesce(max(id), 0) FROM ledger_transactions")).scalar_one())

    def seal(self, *, max_rows: int = 50_000, max_batches: int = 1_000) -> int:
        results = sealing.seal_all(
            self.session, max_rows=max_rows, max_batches=max_batches, streams=("ledger_entries",)
        )
        self.session.commit()
        return sum(r.n_rows for r in results)

    def unsealed(self) -> int:
        return int(self.session.execute(text(f"SELECT count(*) FROM ledger_entries e WHERE {UNSEALED}")).scalar_one())
