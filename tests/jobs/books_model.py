"""A plain-Python model of the books that `test_books_state_machine.py` drives through the real services: what
every tracked account should hold, which transactions exist (and which were reversed), which jobs, holds and
approvals are in which state, what the four-eyes policy should decide, and which credit lots each account has with
what left and held in them (the burn order, holds' allocations and captures, transfers and reversals mirroring
lots, expiry). It is written from the documented rules (docs/architecture.md), not from the code, so that it is an
independent oracle: the machine asserts that the product and the model agree after every step. The one thing it
takes from the product is each new lot's id (an identity, which the burn order's last tie-break uses), after
checking that the lots a posting wrote are the ones the model predicted."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

# The approval policy the machine runs with (small numbers, so every reason is reached within a few steps).
THRESHOLD_AMOUNT = 50
THRESHOLD_BATCH_TOTAL = 120
THRESHOLD_DAILY_TOTAL = 250
PAID_PRIORITY = 50  # a lot's priority unless one is given
NEVER = datetime.max.replace(tzinfo=UTC)  # no expiry burns last
ACTIVE_STATUSES = ("queued", "running")
TERMINAL_STATUSES = ("succeeded", "failed", "canceled")


@dataclass
class Account:
    balance: int = 0
    held: int = 0

    @property
    def available(self) -> int:
        return self.balance - self.held


@dataclass
class Lot:
    id: int  # the product's: lots written by one transaction are created together, so ids order them by creation
    account_id: int
    source: str
    priority: int
    expires_at: datetime | None
    amount: int
    remaining: int
    txn: int
    held: int = 0

    @property
    def free(self) -> int:
        return self.remaining - self.held

    @property
    def order(self) -> tuple[int, datetime, int]:
        """The burn order: priority, soonest expiry (none last), oldest. Transactions run one after another here,
        so the oldest is the lowest id."""
        return (self.priority, self.expires_at or NEVER, self.id)

    @property
    def due(self) -> bool:
        return self.expires_at is not None and self.expires_at <= datetime.now(UTC)


@dataclass(frozen=True)
class Terms:
    """A credit's requested lot terms (None: the default)."""

    priority: int | None = None
    expires_at: datetime | None = None
    source: str | None = None


# What the product says a transaction's credits wrote: (id, account, source, priority, expires_at, amount).
LotRow = tuple[int, int, str, int, datetime | None, int]
PLAIN_SOURCE = {"recharge": "recharge", "adjustment": "adjustment", "reversal": "reversal"}


def _sooner(a: datetime | None, b: datetime | None) -> datetime | None:
    return min((d for d in (a, b) if d is not None), default=None)


@dataclass
class Txn:
    id: int
    kind: str  # recharge, adjustment, capture, reversal
    legs: dict[int, int]  # account id -> signed amount, system accounts included
    reversed: bool = False

    @property
    def amount(self) -> int:
        return sum(v for v in self.legs.values() if v > 0)


@dataclass
class Job:
    public_id: str
    id: int
    user: str
    tenant: str
    account_id: int
    hold_id: int
    tokens: int
    units: int
    key: str
    max_attempts: int
    status: str = "queued"
    attempts: int = 0
    cancel_requested: bool = False
    past_deadline: bool = False
    hold_status: str = "held"
    video: bool = False  # a cancel mid-run charges a video the seconds it processed; an image, nothing

    @property
    def active(self) -> bool:
        return self.status in ACTIVE_STATUSES


@dataclass
class Hold:
    """A hold reserved straight on the ledger (not a job's): the only kind whose expiry falls inside a run."""

    id: int
    account_id: int
    amount: int
    due: bool
    status: str = "held"
    captured: int | None = None


@dataclass
class Approval:
    id: int
    kind: str  # single, batch, adjustment, reversal
    requester: str
    amount: int
    reason: str  # why it was held
    due: bool  # requested with a zero TTL: expired from the next transaction on
    legs: dict[int, int] = field(default_factory=dict)  # what applying posts (not for reversals)
    rows: list[tuple[int, int, Terms]] | None = None  # a batch's credits in row order
    terms: Terms | None = None  # a single recharge's lot terms
    reverses: int | None = None  # reversals: the transaction
    status: str = "pending"


class Books:
    def __init__(
        self,
        *,
        tracked: list[int],
        issuance: int,
        adjustments: int,
        usage: int,
        expired: int,
        written_lots: Callable[[int], list[LotRow]],
    ) -> None:
        self.accounts = {account_id: Account() for account_id in tracked}
        self.issuance, self.adjustments, self.usage, self.expired = issuance, adjustments, usage, expired
        # sums of the system accounts' entries
        self.system = {issuance: 0, adjustments: 0, usage: 0, expired: 0}
        self.written_lots = written_lots
        self.lots: dict[int, Lot] = {}
        self.allocations: dict[int, list[tuple[Lot, int]]] = {}  # hold id -> what it took from which lot
        self.consumed: dict[int, dict[int, int]] = {}  # transaction id -> lot id -> tokens burned
        self.txns: dict[int, Txn] = {}
        self.jobs: dict[str, Job] = {}
        self.holds: dict[int, Hold] = {}
        self.approvals: dict[int, Approval] = {}
        # What each requester applied without review (the policy's rolling 24 hours: a run takes seconds).
        self.unreviewed: dict[str, int] = defaultdict(int)

    # --- money ---------------------------------------------------------------------------------------------

    def covers(self, legs: dict[int, int]) -> bool:
        """Every tracked account a posting debits keeps available >= 0."""
        return all(self.accounts[a].available + v >= 0 for a, v in legs.items() if v < 0 and a in self.accounts)

    def post(
        self,
        txn_id: int,
        kind: str,
        legs: dict[int, int],
        *,
        terms: Terms | None = None,
        reverses: int | None = None,
        rows: Sequence[tuple[int, int, Terms]] | None = None,
    ) -> Txn:
        """A posting and its lots: debits burn in the burn order (a reversal's original lots first), credits land
        in lots (`_credit_lots`). `rows`: a batch's credits in row order, each with its terms."""
        txn = self._journal(txn_id, kind, legs)
        tracked = {a: v for a, v in legs.items() if a in self.accounts}
        line: list[tuple[int, int, int, datetime | None]] = []  # the debits' pieces: start, tokens, priority, expiry
        consumed: dict[int, int] = {}
        for account in sorted(a for a, v in tracked.items() if v < 0):
            for lot, take in self._burn(account, -tracked[account], first=reverses):
                line.append((sum(n for _, n, _, _ in line), take, lot.priority, lot.expires_at))
                consumed[lot.id] = take
        self.consumed[txn_id] = consumed
        self._register(txn_id, self._credit_lots(kind, tracked, line, terms or Terms(), reverses, rows))
        return txn

    def _journal(self, txn_id: int, kind: str, legs: dict[int, int]) -> Txn:
        assert txn_id not in self.txns, f"transaction {txn_id} posted twice"
        assert sum(legs.values()) == 0, legs
        assert self.covers(legs), f"the model let {kind} {legs} overdraw an account"
        for account_id, amount in legs.items():
            if account_id in self.accounts:
                self.accounts[account_id].balance += amount
            else:
                self.system[account_id] += amount
        txn = Txn(txn_id, kind, {a: v for a, v in legs.items() if v != 0})
        self.txns[txn_id] = txn
        return txn

    @staticmethod
    def reversing(txn: Txn) -> dict[int, int]:
        return {a: -v for a, v in txn.legs.items()}

    def reverse(self, txn_id: int, original: Txn) -> Txn:
        assert not original.reversed
        original.reversed = True
        return self.post(txn_id, "reversal", self.reversing(original), reverses=original.id)

    def reversal_refusal(self, original: Txn) -> str | None:
        """Why reversing `original` now is refused: the error's class name, or None."""
        if original.kind in ("reversal", "expiry"):
            return "NotReversible"
        if original.reversed:
            return "AlreadyReversed"
        if not self.covers(self.reversing(original)):
            return "InsufficientTokens"
        return None

    # --- four eyes -----------------------------------------------------------------------------------------

    def hold_reason(self, requester: str, amount: int, largest: int | None = None) -> str | None:
        """Why the policy holds a request by `requester` moving `amount` (a batch: its total, and its largest
        row), or None when it applies now."""
        if amount <= 0:
            return None
        if (amount if largest is None else largest) > THRESHOLD_AMOUNT:
            return "amount"
        if largest is not None and amount > THRESHOLD_BATCH_TOTAL:
            return "batch_total"
        if self.unreviewed[requester] + amount > THRESHOLD_DAILY_TOTAL:
            return "daily_total"
        return None

    def due_pending(self) -> list[Approval]:
        return [a for a in self.approvals.values() if a.status == "pending" and a.due]

    # --- holds ---------------------------------------------------------------------------------------------

    def reserve(self, account_id: int, amount: int, hold_id: int) -> None:
        """The hold takes its tokens from the account's lots in the burn order."""
        account = self.accounts[account_id]
        assert account.available >= amount
        account.held += amount
        taken, left = [], amount
        for lot in self._in_order(account_id):
            take = min(lot.free, left)
            if take == 0:
                break
            lot.held += take
            left -= take
            taken.append((lot, take))
        assert left == 0, "the model's lots do not cover a hold its balance allowed"
        self.allocations[hold_id] = taken

    def unreserve(self, account_id: int, amount: int, hold_id: int) -> None:
        self.accounts[account_id].held -= amount
        for lot, take in self.allocations.pop(hold_id):
            lot.held -= take

    def capture(self, txn_id: int, account_id: int, held: int, captured: int, hold_id: int) -> Txn:
        """The captured tokens burn the hold's allocations in the burn order; the rest goes back to the lots."""
        self.accounts[account_id].held -= held
        consumed, left = {}, captured
        for lot, take in sorted(self.allocations.pop(hold_id), key=lambda allocation: allocation[0].order):
            burned = min(take, left)
            left -= burned
            lot.held -= take
            lot.remaining -= burned
            if burned:
                consumed[lot.id] = burned
        self.consumed[txn_id] = consumed
        return self._journal(txn_id, "capture", {account_id: -captured, self.usage: captured})

    # --- lots ----------------------------------------------------------------------------------------------

    def _in_order(self, account_id: int, first: int | None = None) -> list[Lot]:
        """The account's lots with free tokens, in the burn order; a reversal's original lots (`first`) first."""
        lots = [lot for lot in self.lots.values() if lot.account_id == account_id and lot.free > 0]
        return sorted(lots, key=lambda lot: (first is None or lot.txn != first, lot.order))

    def _burn(self, account_id: int, need: int, *, first: int | None) -> list[tuple[Lot, int]]:
        pieces = []
        for lot in self._in_order(account_id, first):
            take = min(lot.free, need)
            if take == 0:
                break
            lot.remaining -= take
            need -= take
            pieces.append((lot, take))
        assert need == 0, "the model's lots do not cover a debit its balance allowed"
        return pieces

    def _credit_lots(
        self,
        kind: str,
        tracked: dict[int, int],
        line: list[tuple[int, int, int, datetime | None]],
        terms: Terms,
        reverses: int | None,
        rows: Sequence[tuple[int, int, Terms]] | None,
    ) -> list[tuple[int, str, int, datetime | None, int]]:
        """The lots a posting's tracked credits land in: (account, source, priority, expiry, tokens)."""
        lots: list[tuple[int, str, int, datetime | None, int]] = []
        if rows is not None and not line:  # a batch from issuance: a lot per row, with the row's terms
            return [
                (account, "recharge", PAID_PRIORITY if t.priority is None else t.priority, t.expires_at, amount)
                for account, amount, t in rows
            ]
        if rows is None:
            rows = [(account, tracked[account], terms) for account in sorted(a for a, v in tracked.items() if v > 0)]
        start = 0
        for account, amount, row_terms in rows:
            if reverses is not None:
                # A reversal gives back what its original burned on this account, lot by lot.
                burned = [
                    (self.lots[lot_id], n)
                    for lot_id, n in self.consumed.get(reverses, {}).items()
                    if self.lots[lot_id].account_id == account
                ]
                pieces = [(lot.priority, lot.expires_at, n) for lot, n in burned]
                source = "reversal"
            else:
                # A credit along the debits' line mirrors the pieces it lines up with.
                pieces = [
                    (
                        p if row_terms.priority is None else row_terms.priority,
                        _sooner(row_terms.expires_at, e),
                        min(start + amount, s + n) - max(start, s),
                    )
                    for s, n, p, e in line
                    if s < start + amount and start < s + n
                ]
                source = "transfer"
            merged: dict[tuple[int, datetime | None], int] = defaultdict(int)
            for priority, expires_at, n in pieces:
                merged[(priority, expires_at)] += n
            lots += [(account, source, p, e, n) for (p, e), n in merged.items()]
            rest = amount - sum(merged.values())
            if rest:
                lots.append(
                    (
                        account,
                        row_terms.source or PLAIN_SOURCE[kind],
                        PAID_PRIORITY if row_terms.priority is None else row_terms.priority,
                        row_terms.expires_at,
                        rest,
                    )
                )
            start += amount
        return lots

    def _register(self, txn_id: int, predicted: list[tuple[int, str, int, datetime | None, int]]) -> None:
        """The lots the product wrote for `txn_id` are the predicted ones; they join the model under their ids."""
        written = self.written_lots(txn_id)

        def key(lot: tuple[int, str, int, datetime | None, int]) -> tuple[int, str, int, datetime, int]:
            account, source, priority, expires_at, amount = lot
            return (account, source, priority, expires_at or NEVER, amount)

        assert sorted(map(key, predicted)) == sorted(key(row[1:]) for row in written), (predicted, written)
        for lot_id, account, source, priority, expires_at, amount in written:
            self.lots[lot_id] = Lot(lot_id, account, source, priority, expires_at, amount, amount, txn_id)

    def due_expiries(self) -> dict[int, int]:
        """What the sweep expires now: per account, what its lots past their expiry do not hold."""
        due: dict[int, int] = defaultdict(int)
        for lot in self.lots.values():
            if lot.due and lot.free > 0:
                due[lot.account_id] += lot.free
        return dict(due)

    def expire(self, txn_id: int, account_id: int, amount: int) -> Txn:
        consumed = {lot.id: lot.free for lot in self.lots.values() if lot.account_id == account_id and lot.due}
        consumed = {lot_id: n for lot_id, n in consumed.items() if n > 0}
        assert sum(consumed.values()) == amount
        for lot_id, n in consumed.items():
            self.lots[lot_id].remaining -= n
        self.consumed[txn_id] = consumed
        return self._journal(txn_id, "expiry", {account_id: -amount, self.expired: amount})

    # --- jobs ----------------------------------------------------------------------------------------------

    def active_jobs(self, tenant: str) -> int:
        return sum(1 for j in self.jobs.values() if j.tenant == tenant and j.active)

    def finish_uncharged(self, job: Job, status: str) -> None:
        assert job.active
        job.status = status
        job.hold_status = "released"
        self.unreserve(job.account_id, job.tokens, job.hold_id)

    def claimable(self, job: Job) -> bool:
        return (
            job.status == "queued"
            and job.attempts < job.max_attempts
            and not job.past_deadline
            and not job.cancel_requested
        )

    def retryable(self, job: Job) -> bool:
        return job.attempts < job.max_attempts and not job.past_deadline and not job.cancel_requested

    # --- totals --------------------------------------------------------------------------------------------

    def totals(self) -> dict[str, int]:
        return {
            "issued": -self.system[self.issuance],
            "adjusted": -self.system[self.adjustments],
            "consumed": self.system[self.usage],
            "expired": self.system[self.expired],
            "outstanding": sum(a.balance for a in self.accounts.values()),
            "held": sum(a.held for a in self.accounts.values()),
        }
