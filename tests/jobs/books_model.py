"""A plain-Python model of the books that `test_books_state_machine.py` drives through the real services: what
every tracked account should hold, which transactions exist (and which were reversed), which jobs, holds and
approvals are in which state, and what the four-eyes policy should decide. It is written from the documented
rules (docs/architecture.md), not from the code, so that it is an independent oracle: the machine asserts that
the product and the model agree after every step."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

# The approval policy the machine runs with (small numbers, so every reason is reached within a few steps).
THRESHOLD_AMOUNT = 50
THRESHOLD_BATCH_TOTAL = 120
THRESHOLD_DAILY_TOTAL = 250
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
    reverses: int | None = None  # reversals: the transaction
    status: str = "pending"


class Books:
    def __init__(self, *, tracked: list[int], issuance: int, adjustments: int, usage: int) -> None:
        self.accounts = {account_id: Account() for account_id in tracked}
        self.issuance, self.adjustments, self.usage = issuance, adjustments, usage
        self.system = {issuance: 0, adjustments: 0, usage: 0}  # sums of the system accounts' entries
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

    def post(self, txn_id: int, kind: str, legs: dict[int, int]) -> Txn:
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
        return self.post(txn_id, "reversal", self.reversing(original))

    def reversal_refusal(self, original: Txn) -> str | None:
        """Why reversing `original` now is refused: the error's class name, or None."""
        if original.kind == "reversal":
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

    def reserve(self, account_id: int, amount: int) -> None:
        account = self.accounts[account_id]
        assert account.available >= amount
        account.held += amount

    def unreserve(self, account_id: int, amount: int) -> None:
        self.accounts[account_id].held -= amount

    def capture(self, txn_id: int, account_id: int, held: int, captured: int) -> Txn:
        self.unreserve(account_id, held)
        return self.post(txn_id, "capture", {account_id: -captured, self.usage: captured})

    # --- jobs ----------------------------------------------------------------------------------------------

    def active_jobs(self, tenant: str) -> int:
        return sum(1 for j in self.jobs.values() if j.tenant == tenant and j.active)

    def finish_uncharged(self, job: Job, status: str) -> None:
        assert job.active
        job.status = status
        job.hold_status = "released"
        self.unreserve(job.account_id, job.tokens)

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
            "outstanding": sum(a.balance for a in self.accounts.values()),
            "held": sum(a.held for a in self.accounts.values()),
        }
