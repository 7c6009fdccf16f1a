"""The world of the books state machine (`test_books_state_machine.py`): two tenants, two platform operators, a
tenant admin and three payers, created fresh for each example through the services, plus the plumbing every rule
uses (one unit of work per step, expected refusals) and the checks run after every step."""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any, ClassVar

from hypothesis import event
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant
from sqlalchemy import Engine, text
from sqlalchemy.orm import Session, sessionmaker

from billing.errors import BillingError
from billing.ledger import lots
from billing.ledger import service as ledger
from billing.ledger.orm import AccountKind
from billing.pricing import service as pricing
from facemint.approvals.service import Held, Policy
from facemint.auth.principal import Principal
from facemint.auth.scopes import scopes_for_role
from facemint.context import RequestContext
from facemint.db import snapshot_session, unit_of_work
from facemint.errors import FacemintError
from facemint.reports.service import reconcile_all
from facemint.users.orm import Role
from tests.conftest import _empty
from tests.factories import create_tenant, create_user
from tests.invariants import assert_no_hold_outlives_its_job
from tests.jobs.books_model import (
    THRESHOLD_AMOUNT,
    THRESHOLD_BATCH_TOTAL,
    THRESHOLD_DAILY_TOTAL,
    Approval,
    Books,
    LotRow,
    Terms,
)

OPERATORS = ("op_a", "op_b")  # platform staff: request and approve
REQUESTERS = ("op_a", "op_b", "ta")  # ta: tenant T's admin, hands out T's pool (no approving scope)
PAYERS = ("u1", "u2", "v1")  # u1, u2 in tenant T; v1 in tenant T2
TENANT_OF = {"ta": "T", "u1": "T", "u2": "T", "v1": "T2"}
RECIPIENTS = (*PAYERS, "pool")  # "pool": tenant T's pool (staff only)
BATCH_TARGETS = (*PAYERS, "nobody")
NOBODY = 999_999_999  # a user id no row has
AMOUNTS = st.integers(1, 80)  # around THRESHOLD_AMOUNT, so some are held
# Credited tokens' lot terms: a priority (None: the default 50) and an expiry in whole days after GRANTED_AT (fixed
# per run, so a draw is the same example whatever the clock; None: never).
PRIORITIES = st.sampled_from([None, 0, 10, 90])
EXPIRY_DAYS = st.sampled_from([None, 1, 2, 30])
GRANTED_AT = datetime.now(UTC).replace(microsecond=0)
MAX_ATTEMPTS = 2
ACTIVE_CAP = 3  # queued plus running jobs per tenant
JOB_DEADLINE_SECONDS = 900
WORKER = "state-machine-worker"
POLICY = Policy(
    threshold_amount=THRESHOLD_AMOUNT,
    threshold_batch_total=THRESHOLD_BATCH_TOTAL,
    threshold_daily_total=THRESHOLD_DAILY_TOTAL,
    ttl_seconds=3600,
)
EXPIRING_POLICY = dataclasses.replace(POLICY, ttl_seconds=0)  # due from the next transaction on


@dataclasses.dataclass(frozen=True)
class Actor:
    user_id: int
    account_id: int
    context: RequestContext


# A request's unit of work, under a policy and with a reason (another reason: another request, same key).
Action = Callable[..., Callable[[Session], Any]]


@dataclasses.dataclass(frozen=True)
class Request:
    """An accepted recharge, batch, adjustment or reversal, to send again under its Idempotency-Key."""

    kind: str
    action: Action
    stored: tuple[str, int | None]  # ("posted", transaction id: None for a batch that credited nobody) or
    # ("held", approval id)


class BooksWorld(RuleBasedStateMachine):
    # Bound by the test function (pytest fixtures).
    engine: ClassVar[Engine]
    owner: ClassVar[Engine]
    redis_url: ClassVar[str]
    sessions: ClassVar[sessionmaker[Session]]
    ceiling: ClassVar[int]

    def __init__(self) -> None:
        super().__init__()
        _empty(self.owner, self.redis_url)  # each example starts from empty books
        self.serial = itertools.count(1)
        with self.sessions() as session:
            tenants = {"T": create_tenant(session), "T2": create_tenant(session)}
            users = {
                "op_a": create_user(session, role=Role.operator, password=None),
                "op_b": create_user(session, role=Role.operator, password=None),
                "ta": create_user(session, tenant=tenants["T"], role=Role.tenant_admin, password=None),
                "u1": create_user(session, tenant=tenants["T"], password=None),
                "u2": create_user(session, tenant=tenants["T"], password=None),
                "v1": create_user(session, tenant=tenants["T2"], password=None),
            }
            self.price = pricing.current_price(session, operation="swap.image").tokens_per_unit
            system = {
                kind: ledger.system_account_id(session, kind=kind)
                for kind in (
                    AccountKind.issuance,
                    AccountKind.adjustments,
                    AccountKind.usage_revenue,
                    AccountKind.expired,
                )
            }
        self.tenant_ids = {name: t.id for name, t in tenants.items()}
        self.pool = tenants["T"].pool_account_id
        self.actors = {
            name: Actor(
                user_id=u.id,
                account_id=u.account_id,
                context=RequestContext(
                    principal=Principal(
                        user_id=u.id,
                        email=u.email,
                        role=Role(u.role),
                        tenant_id=u.tenant_id,
                        account_id=u.account_id,
                        plan="platform" if u.tenant_id is None else "free",
                        scopes=scopes_for_role(Role(u.role)),
                    ),
                    request_id="state-machine",
                    ip="127.0.0.1",
                ),
            )
            for name, u in users.items()
        }
        self.books = Books(
            tracked=[a.account_id for a in self.actors.values()] + [t.pool_account_id for t in tenants.values()],
            issuance=system[AccountKind.issuance],
            adjustments=system[AccountKind.adjustments],
            usage=system[AccountKind.usage_revenue],
            expired=system[AccountKind.expired],
            written_lots=self._written_lots,
        )
        self.requests: list[Request] = []
        self.approval_txn: dict[int, int] = {}  # approval id -> the transaction approving it posted

    def teardown(self) -> None:
        _empty(self.owner, self.redis_url)

    # --- plumbing ------------------------------------------------------------------------------------------

    def _key(self, what: str) -> str:
        return f"sm-{what}-{next(self.serial)}"

    def _run(self, action: Callable[[Session], Any]) -> tuple[Any, Exception | None]:
        """One unit of work, as a request or a worker runs it: committed, or rolled back by a refusal."""
        try:
            with unit_of_work(self.sessions) as session:
                return action(session), None
        except (FacemintError, BillingError) as exc:
            return None, exc

    @staticmethod
    def _expect(error: Exception | None, refusal: str | None) -> None:
        if refusal is None:
            if error is not None:
                raise AssertionError(f"the model expected success, the product refused: {error!r}") from error
            return
        assert error is not None, f"the model expected {refusal}, the product went ahead"
        assert type(error).__name__ == refusal, f"the model expected {refusal}, the product said {error!r}"
        event(f"refused: {refusal}")

    def _written_lots(self, transaction_id: int) -> list[LotRow]:
        """The lots a committed transaction's credits wrote, as the model compares them."""
        with self.sessions() as session:
            return [
                (lot.lot_id, lot.account_id, lot.source, lot.priority, lot.expires_at, lot.amount)
                for lot in lots.lots_of_transaction(session, transaction_id=transaction_id)
            ]

    @staticmethod
    def _expiry(days: int | None) -> datetime | None:
        return None if days is None else GRANTED_AT + timedelta(days=days)

    def _account(self, who: str) -> int:
        return self.pool if who == "pool" else self.actors[who].account_id

    def _source(self, requester: str) -> int:
        return self.pool if requester == "ta" else self.books.issuance

    def _pool_refuses(self, requester: str, amount: int) -> bool:
        return requester == "ta" and self.books.accounts[self.pool].available < amount

    def _record_approval(
        self,
        held: Held,
        *,
        kind: str,
        requester: str,
        amount: int,
        reason: str,
        expiring: bool,
        legs: dict[int, int] | None = None,
        reverses: int | None = None,
        rows: list[tuple[int, int, Terms]] | None = None,
        terms: Terms | None = None,
    ) -> int:
        approval = held.approval
        assert not held.replayed
        event(f"held: {kind} ({reason})")
        assert (approval.kind, approval.status) == (kind, "pending")
        assert approval.total_amount == amount
        assert approval.payload["held_because"] == reason, (approval.payload["held_because"], reason)
        self.books.approvals[approval.id] = Approval(
            approval.id,
            kind,
            requester,
            amount,
            reason,
            due=expiring,
            legs=legs or {},
            reverses=reverses,
            rows=rows,
            terms=terms,
        )
        return approval.id

    # --- after every step ----------------------------------------------------------------------------------

    @invariant()
    def books_agree(self) -> None:
        books = self.books
        with snapshot_session(self.engine) as s:
            report = reconcile_all(s)
            assert report.balanced, "ledger invariants broken: " + "; ".join(
                f"{d.check} ids={d.ids[:10]} details={d.details[:10]}" for d in report.discrepancies
            )
            # Conservation, against the model too: issued + adjusted - consumed - expired = the sum of balances.
            model = books.totals()
            assert {k: report.totals[k] for k in model} == model, (report.totals, model)
            assert model["issued"] + model["adjusted"] - model["consumed"] - model["expired"] == model["outstanding"]
            # I4: a finished job holds nothing. The deadline half needs a sweeper that ran since the deadline
            # passed, which here is a rule (`sweeper_tick`, which asserts it).
            stuck = s.execute(
                text(
                    "SELECT j.public_id FROM jobs j JOIN holds h ON h.id = j.hold_id "
                    "WHERE h.status = 'held' AND j.status IN ('succeeded', 'failed', 'canceled')"
                )
            ).all()
            assert stuck == [], stuck
            if not any(j.active and j.past_deadline for j in books.jobs.values()):
                assert_no_hold_outlives_its_job(s.connection())
            accounts = {
                r.id: (r.balance, r.held)
                for r in s.execute(text("SELECT id, balance, held FROM ledger_accounts WHERE balance_tracked"))
            }
            assert accounts == {a: (m.balance, m.held) for a, m in books.accounts.items()}
            # Every lot, spent ones too: what it has left and holds, and its expiry (moved by `lot_comes_due`).
            stored_lots = {
                r.id: (r.account_id, r.remaining, r.held, r.expires_at)
                for r in s.execute(text("SELECT id, account_id, remaining, held, expires_at FROM credit_lots"))
            }
            assert stored_lots == {
                lot.id: (lot.account_id, lot.remaining, lot.held, lot.expires_at) for lot in books.lots.values()
            }
            stored_jobs = {
                r.public_id: (r.status, r.attempts, r.cancel, r.hold_status)
                for r in s.execute(
                    text(
                        "SELECT j.public_id, j.status, j.attempts, j.cancel_requested_at IS NOT NULL AS cancel, "
                        "h.status AS hold_status FROM jobs j JOIN holds h ON h.id = j.hold_id"
                    )
                )
            }
            assert stored_jobs == {
                p: (j.status, j.attempts, j.cancel_requested, j.hold_status) for p, j in books.jobs.items()
            }
            stored_holds = {
                r.id: (r.status, r.captured_amount)
                for r in s.execute(text("SELECT id, status, captured_amount FROM holds WHERE reference LIKE 'sm-%'"))
            }
            assert stored_holds == {h.id: (h.status, h.captured) for h in books.holds.values()}
            stored_approvals = {r.id: r.status for r in s.execute(text("SELECT id, status FROM recharge_approvals"))}
            assert stored_approvals == {a.id: a.status for a in books.approvals.values()}
            reversed_ids = set(
                s.execute(
                    text("SELECT reverses_transaction_id FROM ledger_transactions WHERE reverses_transaction_id > 0")
                ).scalars()
            )
            assert reversed_ids == {t.id for t in books.txns.values() if t.reversed}
