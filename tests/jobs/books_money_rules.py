"""The books state machine's money rules: recharges (single and batch), operator corrections (adjustments and
reversals), idempotent replays of all four, and four-eyes approvals (approve, reject, expiry). Each rule predicts
its outcome from the model (`books_model.Books`), runs the service in one unit of work, and asserts they agree."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from hypothesis import event
from hypothesis import strategies as st
from hypothesis.stateful import initialize, precondition, rule
from sqlalchemy.orm import Session

from facemint.approvals import approving
from facemint.approvals import service as approvals
from facemint.approvals.errors import ApprovalExpired
from facemint.approvals.service import Held, Policy
from facemint.balances import service as balances
from facemint.balances.schemas import AdjustmentCreate, ReversalCreate
from facemint.recharges import batch as batches
from facemint.recharges import service as recharges
from facemint.recharges.parsing import parse_csv
from facemint.recharges.schemas import RechargeCreate
from tests.jobs.books_model import THRESHOLD_AMOUNT, Approval, Terms
from tests.jobs.books_world import (
    AMOUNTS,
    BATCH_TARGETS,
    EXPIRING_POLICY,
    EXPIRY_DAYS,
    NOBODY,
    OPERATORS,
    PAYERS,
    POLICY,
    PRIORITIES,
    RECIPIENTS,
    REQUESTERS,
    TENANT_OF,
    Action,
    BooksWorld,
    Request,
)


class MoneyRules(BooksWorld):
    """Tokens in, corrected, held for approval and replayed."""

    # --- recharges -----------------------------------------------------------------------------------------

    @initialize(amounts=st.lists(st.integers(10, THRESHOLD_AMOUNT), min_size=4, max_size=4))
    def fund(self, amounts: list[int]) -> None:
        """Start with some tokens on the payers and T's pool (small recharges: applied at once)."""
        for recipient, amount in zip(RECIPIENTS, amounts, strict=True):
            self.recharge("op_b", recipient, amount, expiring=False, priority=None, days=None)

    @rule(
        requester=st.sampled_from(REQUESTERS),
        recipient=st.sampled_from(RECIPIENTS),
        amount=AMOUNTS,
        expiring=st.booleans(),
        priority=PRIORITIES,
        days=EXPIRY_DAYS,
    )
    def recharge(
        self, requester: str, recipient: str, amount: int, expiring: bool, priority: int | None, days: int | None
    ) -> None:
        """`expiring`: an approval it needs expires at once; `priority` and `days`: the credited lot's terms."""
        key = self._key("recharge")
        context = self.actors[requester].context
        target = (
            {"tenant_id": self.tenant_ids["T"]} if recipient == "pool" else {"user_id": self.actors[recipient].user_id}
        )
        terms = Terms(priority=priority, expires_at=self._expiry(days))

        def action(policy: Policy, reason: str = "state machine") -> Callable[[Session], Any]:
            data = RechargeCreate(
                **target, amount=amount, reason=reason, priority=terms.priority, expires_at=terms.expires_at
            )
            return lambda s: recharges.submit_recharge(
                s, context=context, data=data, idempotency_key=key, policy=policy
            )

        outcome, error = self._run(action(EXPIRING_POLICY if expiring else POLICY))
        if requester == "ta" and recipient == "pool":
            refusal: str | None = "Forbidden"  # filling a pool creates tokens: staff only
        elif requester == "ta" and TENANT_OF[recipient] != "T":
            refusal = "UserNotFound"  # another tenant's user does not exist for a tenant admin
        elif self._pool_refuses(requester, amount):
            refusal = "InsufficientTokens"  # held or not: a pool never promises more than it has
        else:
            refusal = None
        self._expect(error, refusal)
        if refusal is not None:
            return
        books = self.books
        legs = {self._source(requester): -amount, self._account(recipient): amount}
        reason = books.hold_reason(requester, amount)
        if reason is not None:
            assert isinstance(outcome, Held), outcome
            approval_id = self._record_approval(
                outcome,
                kind="single",
                requester=requester,
                amount=amount,
                reason=reason,
                expiring=expiring,
                legs=legs,
                terms=terms,
            )
            self._remember("recharge", action, ("held", approval_id))
            return
        assert isinstance(outcome, recharges.RechargeOutcome), outcome
        assert not outcome.replayed
        books.post(outcome.transaction_id, "recharge", legs, terms=terms)
        books.unreviewed[requester] += amount
        assert outcome.balance == books.accounts[self._account(recipient)].balance
        self._remember("recharge", action, ("posted", outcome.transaction_id))
        event("recharge posted")

    @rule(
        requester=st.sampled_from(REQUESTERS),
        rows=st.lists(
            st.tuples(st.sampled_from(BATCH_TARGETS), AMOUNTS, PRIORITIES, EXPIRY_DAYS), min_size=1, max_size=4
        ),
        atomic=st.booleans(),
        expiring=st.booleans(),
    )
    def batch(
        self, requester: str, rows: list[tuple[str, int, int | None, int | None]], atomic: bool, expiring: bool
    ) -> None:
        """A CSV batch whose rows name their lots' priority and expiry (empty: the default)."""
        body = "user_id,amount,priority,expires_at\n" + "".join(
            f"{NOBODY if who == 'nobody' else self.actors[who].user_id},{amount},"
            f"{'' if priority is None else priority},{'' if days is None else self._expiry(days).isoformat()}\n"
            for who, amount, priority, days in rows
        )
        parsed = parse_csv(body.encode(), max_rows=100, ceiling=self.ceiling)
        key = self._key("batch")
        context = self.actors[requester].context

        def action(policy: Policy, reason: str = "state machine batch") -> Callable[[Session], Any]:
            request = batches.BatchRequest(
                mode="atomic" if atomic else "partial",
                dry_run=False,
                reason=reason,
                tenant_id=None,
                idempotency_key=key,
                content_kind="text/csv",
                body=body.encode(),
            )
            return lambda s: batches.submit_batch(s, context=context, request=request, parsed=parsed, policy=policy)

        outcome, error = self._run(action(EXPIRING_POLICY if expiring else POLICY))
        # The model's resolution: unknown users and (for a tenant admin) other tenants' users fail; a user's
        # later rows are duplicates.
        credited: dict[int, int] = {}
        row_terms: dict[int, Terms] = {}
        failed = 0
        for who, amount, priority, days in rows:
            hidden = who == "nobody" or (requester == "ta" and TENANT_OF[who] != "T")
            if hidden or self._account(who) in credited:
                failed += 1
            else:
                credited[self._account(who)] = amount
                row_terms[self._account(who)] = Terms(priority=priority, expires_at=self._expiry(days))
        total = sum(credited.values())
        books = self.books
        if failed and atomic:
            self._expect(error, "BatchRejected")
            return
        if self._pool_refuses(requester, total):
            self._expect(error, "InsufficientTokens")
            return
        self._expect(error, None)
        legs = {self._source(requester): -total, **credited}
        batch_rows = [(account, amount, row_terms[account]) for account, amount in credited.items()]
        reason = books.hold_reason(requester, total, largest=max(credited.values(), default=0))
        if reason is not None:
            assert outcome.held is not None, outcome
            approval_id = self._record_approval(
                outcome.held,
                kind="batch",
                requester=requester,
                amount=total,
                reason=reason,
                expiring=expiring,
                legs=legs,
                rows=batch_rows,
            )
            self._remember("batch", action, ("held", approval_id))
            return
        assert (outcome.held, outcome.created) == (None, True), outcome
        result = outcome.result
        assert (result["applied"], result["total_amount"], len(result["failed"])) == (len(credited), total, failed)
        if total:
            books.post(result["transaction_id"], "recharge", legs, rows=batch_rows)
            event("batch posted")
        else:
            assert result["transaction_id"] is None  # nothing to credit: a batch row, no transaction
        books.unreviewed[requester] += total
        self._remember("batch", action, ("posted", result["transaction_id"]))

    # --- operator corrections ------------------------------------------------------------------------------

    @rule(
        operator=st.sampled_from(OPERATORS),
        user=st.sampled_from(PAYERS),
        amount=st.integers(-80, 80).filter(bool),
        expiring=st.booleans(),
    )
    def adjust(self, operator: str, user: str, amount: int, expiring: bool) -> None:
        context = self.actors[operator].context
        key = self._key("adjust")

        def action(policy: Policy, reason: str = "state machine") -> Callable[[Session], Any]:
            data = AdjustmentCreate(user_id=self.actors[user].user_id, amount=amount, reason=reason)
            return lambda s: balances.adjust(s, context=context, data=data, idempotency_key=key, policy=policy)

        outcome, error = self._run(action(EXPIRING_POLICY if expiring else POLICY))
        books = self.books
        account = self._account(user)
        legs = {account: amount, books.adjustments: -amount}
        if amount < 0 and books.accounts[account].available < -amount:
            self._expect(error, "InsufficientTokens")  # held or not: nobody approves a debit that cannot apply
            return
        self._expect(error, None)
        reason = books.hold_reason(operator, abs(amount))
        if reason is not None:
            approval_id = self._record_approval(
                outcome,
                kind="adjustment",
                requester=operator,
                amount=abs(amount),
                reason=reason,
                expiring=expiring,
                legs=legs,
            )
            self._remember("adjustment", action, ("held", approval_id))
            return
        assert not isinstance(outcome, Held), outcome
        assert not outcome.replayed
        books.post(outcome.transaction_id, "adjustment", legs)
        books.unreviewed[operator] += abs(amount)
        self._remember("adjustment", action, ("posted", outcome.transaction_id))
        event("adjustment posted")

    @precondition(lambda self: self.books.txns)
    @rule(operator=st.sampled_from(OPERATORS), data=st.data(), expiring=st.booleans())
    def reverse(self, operator: str, data: st.DataObject, expiring: bool) -> None:
        books = self.books
        txn_id = data.draw(st.sampled_from(sorted(books.txns)))
        original = books.txns[txn_id]
        context = self.actors[operator].context
        key = self._key("reverse")

        def action(policy: Policy, reason: str = "state machine") -> Callable[[Session], Any]:
            data = ReversalCreate(reason=reason)
            return lambda s: balances.reverse(
                s, context=context, transaction_id=txn_id, data=data, idempotency_key=key, policy=policy
            )

        outcome, error = self._run(action(EXPIRING_POLICY if expiring else POLICY))
        refusal = books.reversal_refusal(original)
        if refusal in ("NotReversible", "AlreadyReversed"):
            self._expect(error, refusal)
            return
        reason = books.hold_reason(operator, original.amount)
        if reason is not None:
            self._expect(error, None)  # held whatever the balances: they are checked when it is approved
            approval_id = self._record_approval(
                outcome,
                kind="reversal",
                requester=operator,
                amount=original.amount,
                reason=reason,
                expiring=expiring,
                reverses=txn_id,
            )
            self._remember("reversal", action, ("held", approval_id))
            return
        self._expect(error, refusal)
        if refusal is None:
            assert not isinstance(outcome, Held), outcome
            assert not outcome.replayed
            books.reverse(outcome.transaction_id, original)
            books.unreviewed[operator] += original.amount
            self._remember("reversal", action, ("posted", outcome.transaction_id))
            event(f"reversal of a {original.kind} posted")

    # --- idempotency ---------------------------------------------------------------------------------------

    def _remember(self, kind: str, action: Action, stored: tuple[str, int | None]) -> None:
        self.requests.append(Request(kind, action, stored))

    @precondition(lambda self: self.requests)
    @rule(data=st.data(), same=st.booleans())
    def replay(self, data: st.DataObject, same: bool) -> None:
        """An accepted request (applied or held) again under its Idempotency-Key: the same request replays what
        it got (or, once its approval was decided, what approving applied), another one is refused."""
        request = data.draw(st.sampled_from(self.requests))
        if not same:
            _, error = self._run(request.action(POLICY, "another reason"))
            self._expect(error, "IdempotencyConflict")
            return
        outcome, error = self._run(request.action(POLICY))
        self._expect(error, None)
        what, ref = request.stored
        if what == "held":
            assert ref is not None
            approval = self.books.approvals[ref]
            if approval.status == "pending" and approval.due:
                approval.status = "expired"  # a replay expires a due approval on the spot
                event("approval expired on a replay")
            if approval.status != "approved":
                held = outcome.held if request.kind == "batch" else outcome
                assert isinstance(held, Held), outcome
                assert (held.replayed, held.approval.id, held.approval.status) == (True, ref, approval.status)
                event(f"replayed: held {request.kind}")
                return
            ref = self.approval_txn[ref]
        if request.kind == "batch":
            assert (outcome.held, outcome.created) == (None, False), outcome
            assert outcome.result["transaction_id"] == ref
        else:
            assert not isinstance(outcome, Held), outcome
            assert (outcome.replayed, outcome.transaction_id) == (True, ref)
        event(f"replayed: {request.kind}")

    # --- four eyes -----------------------------------------------------------------------------------------

    @precondition(lambda self: self.books.approvals)
    @rule(approver=st.sampled_from(OPERATORS), data=st.data())
    def approve(self, approver: str, data: st.DataObject) -> None:
        books = self.books
        approval = books.approvals[data.draw(st.sampled_from(sorted(books.approvals)))]
        context = self.actors[approver].context

        def call(s: Session) -> Any:
            try:
                return approving.approve(s, context=context, approval_id=approval.id, note=None)
            except ApprovalExpired as exc:
                return exc  # answered, not raised: the expiry is recorded and committed (as the endpoint does)

        outcome, error = self._run(call)
        if approver == approval.requester:
            self._expect(error, "SelfApproval")
            return
        if self._expired(approval, outcome, error):
            return
        if approval.status != "pending":
            self._expect(error, "ApprovalNotPending")
            return
        if approval.kind == "reversal":
            assert approval.reverses is not None
            original = books.txns[approval.reverses]
            refusal = books.reversal_refusal(original)
        else:
            refusal = None if books.covers(approval.legs) else "InsufficientTokens"
        self._expect(error, refusal)  # a refused approval stays pending, nothing applied
        if refusal is not None:
            return
        assert outcome.status == "approved", outcome
        assert outcome.transaction_id is not None
        if approval.kind == "reversal":
            books.reverse(outcome.transaction_id, original)
        else:
            books.post(
                outcome.transaction_id,
                _txn_kind(approval.kind),
                approval.legs,
                terms=approval.terms,
                rows=approval.rows,
            )
        approval.status = "approved"
        event(f"approved: {approval.kind}")
        self.approval_txn[approval.id] = outcome.transaction_id

    @precondition(lambda self: self.books.approvals)
    @rule(decider=st.sampled_from(OPERATORS), data=st.data())
    def reject(self, decider: str, data: st.DataObject) -> None:
        """Another operator rejects, or the requester withdraws: nothing is applied."""
        books = self.books
        approval = books.approvals[data.draw(st.sampled_from(sorted(books.approvals)))]
        context = self.actors[decider].context

        def call(s: Session) -> Any:
            try:
                return approvals.reject(s, context=context, approval_id=approval.id, note="no")
            except ApprovalExpired as exc:
                return exc

        outcome, error = self._run(call)
        if self._expired(approval, outcome, error):
            return
        if approval.status != "pending":
            self._expect(error, "ApprovalNotPending")
            return
        self._expect(error, None)
        assert outcome.status == "rejected", outcome
        approval.status = "rejected"

    @staticmethod
    def _expired(approval: Approval, outcome: Any, error: Exception | None) -> bool:
        """An approval that expired (or is due, and is expired on the spot) answers `ApprovalExpired`."""
        if not (approval.status == "expired" or (approval.status == "pending" and approval.due)):
            return False
        BooksWorld._expect(error, None)
        assert isinstance(outcome, ApprovalExpired), outcome
        approval.status = "expired"
        event("approval expired on a decision")
        return True

    def _expire_approvals(self) -> None:
        expired, error = self._run(lambda s: approvals.expire_due(s))
        self._expect(error, None)
        due = self.books.due_pending()
        assert expired == len(due)
        for approval in due:
            approval.status = "expired"
            event("approval expired by the sweep")


def _txn_kind(approval_kind: str) -> str:
    return "adjustment" if approval_kind == "adjustment" else "recharge"
