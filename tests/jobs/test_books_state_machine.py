"""The books under random interleavings: a VOPR-lite (TigerBeetle's simulator, in Hypothesis' stateful testing).

A Hypothesis state machine drives the real services on the real test Postgres, each step one unit of work as a
request or a worker would run it: recharges (single and batch, some held for four-eyes approval), approvals,
rejections and their expiry, adjustments, reversals, job submits (and idempotent replays), worker claims,
heartbeats, completions, failures, retries, worker deaths (a claim never settled, then the stale sweep), cancels
(a video's stopping mid-run with the seconds it processed charged), deadlines passing and the deadline sweep,
ledger holds with their expiry, and credit lots: grants of every priority with and without an expiry, lots whose
time comes and the sweep that expires them. After every step it checks:

- the product's own reconciliation (`reconcile_all`: I1-I3 and the job/hold checks) reports nothing;
- I4: no hold is still held for a finished job (and `assert_no_hold_outlives_its_job` whenever no deadline was
  moved into the past: the sweeper here is a rule, so a passed deadline waits for it by design);
- every tracked account's balance and held amount, every credit lot's remaining and held tokens (and the lots
  each posting wrote), every job, hold and approval, and the totals (issued + adjusted = outstanding + consumed +
  expired) equal a plain-Python model of what the steps did (`books_model.Books`).

Expected refusals (402, 409, 403, ...) are outcomes like any other: the model says which one, and that nothing
changed. The machine is in three parts: `books_world` (the actors, plumbing and the checks after every step),
`books_money_rules` (recharges, batches, corrections, replays, approvals) and this module (jobs, the sweeper,
ledger holds). Bounded for CI (30 examples of up to 30 steps); FACEMINT_STATE_MACHINE_EXAMPLES and
FACEMINT_STATE_MACHINE_STEPS run it longer, FACEMINT_STATE_MACHINE_NO_SHRINK=1 skips shrinking a failure."""

from __future__ import annotations

import os
from typing import Any

from hypothesis import HealthCheck, Phase, event
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from hypothesis.stateful import precondition, rule, run_state_machine_as_test
from sqlalchemy import Engine, text
from sqlalchemy.orm import Session, sessionmaker

from billing.ledger import holds as ledger_holds
from billing.ledger import lots
from billing.ledger import service as ledger
from billing.ledger.orm import LotSource
from facemint.config import Settings
from facemint.jobs import queries, sweeps
from facemint.jobs import service as jobs
from facemint.jobs.orm import JobStatus
from tests.jobs.books_model import Hold, Job, Terms
from tests.jobs.books_money_rules import MoneyRules
from tests.jobs.books_world import (
    ACTIVE_CAP,
    EXPIRY_DAYS,
    JOB_DEADLINE_SECONDS,
    MAX_ATTEMPTS,
    PAYERS,
    TENANT_OF,
    WORKER,
)

EXAMPLES = int(os.environ.get("FACEMINT_STATE_MACHINE_EXAMPLES", "30"))
STEPS = int(os.environ.get("FACEMINT_STATE_MACHINE_STEPS", "30"))
# Shrinking a failure of a long run can take Hypothesis minutes; exploratory runs may skip it.
PHASES = [Phase.explicit, Phase.generate] if os.environ.get("FACEMINT_STATE_MACHINE_NO_SHRINK") else list(Phase)


class BooksMachine(MoneyRules):
    """The world (`books_world`), the money rules (`books_money_rules`), and here the jobs' and holds' rules."""

    # --- jobs ----------------------------------------------------------------------------------------------

    def _submit(self, payer: str, units: int, key: str, video: bool) -> tuple[Any, Exception | None]:
        actor = self.actors[payer]
        request = jobs.SubmitRequest(
            public_id=jobs.new_public_id(),
            tenant_id=self.tenant_ids[TENANT_OF[payer]],
            user_id=actor.user_id,
            api_key_id=None,
            account_id=actor.account_id,
            operations=("swap.image",),
            queue="state-machine",
            units=units,
            idempotency_key=key,
            request_hash=ledger.request_hash({"units": units, "video": video}),
            # Priced as an image job throughout (the model has one price): `media` is what the partial-cancel
            # transition looks at.
            options={"media": "video"} if video else {},
            input_location="inputs/state-machine",
            webhook_url=None,
            max_attempts=MAX_ATTEMPTS,
            deadline_seconds=JOB_DEADLINE_SECONDS,
            max_active_jobs=ACTIVE_CAP,
        )
        return self._run(lambda session: jobs.submit(session, request=request))

    @rule(payer=st.sampled_from(PAYERS), units=st.integers(1, 12), video=st.booleans())
    def submit(self, payer: str, units: int, video: bool) -> None:
        key = self._key("job")
        outcome, error = self._submit(payer, units, key, video)
        books = self.books
        tokens = self.price * units
        account = self._account(payer)
        if books.accounts[account].available < tokens:
            self._expect(error, "InsufficientTokens")
            return
        if books.active_jobs(TENANT_OF[payer]) >= ACTIVE_CAP:
            self._expect(error, "TooManyActiveJobs")
            return
        self._expect(error, None)
        row = outcome.job
        assert (outcome.replayed, row.status, row.tokens_held) == (False, "queued", tokens)
        books.reserve(account, tokens, row.hold_id)
        assert outcome.available == books.accounts[account].available
        event("job submitted")
        books.jobs[row.public_id] = Job(
            row.public_id,
            row.id,
            payer,
            TENANT_OF[payer],
            account,
            row.hold_id,
            tokens,
            units,
            key,
            MAX_ATTEMPTS,
            video=video,
        )

    def _job(self, data: st.DataObject) -> Job:
        # In submit order: public ids are random, and the draws must not depend on them.
        return self.books.jobs[data.draw(st.sampled_from(list(self.books.jobs)))]

    @precondition(lambda self: self.books.jobs)
    @rule(data=st.data(), same=st.booleans())
    def replay_submit(self, data: st.DataObject, same: bool) -> None:
        job = self._job(data)
        outcome, error = self._submit(job.user, job.units if same else job.units + 1, job.key, job.video)
        if not same:
            self._expect(error, "IdempotencyKeyReused")
            return
        self._expect(error, None)
        assert (outcome.replayed, outcome.job.public_id, outcome.job.status) == (True, job.public_id, job.status)

    @precondition(lambda self: self.books.jobs)
    @rule(data=st.data())
    def claim(self, data: st.DataObject) -> None:
        self._claim(self._job(data))

    @precondition(lambda self: self.books.jobs)
    @rule(data=st.data(), stale=st.booleans())
    def heartbeat(self, data: st.DataObject, stale: bool) -> None:
        job = self._job(data)
        attempt = self._attempt(job, stale)
        beat, error = self._run(lambda s: jobs.heartbeat(s, job_id=job.id, attempt=attempt))
        self._expect(error, None)
        ours = self._owns(job, attempt)
        assert beat == (ours, ours and job.cancel_requested), (job, beat)

    @precondition(lambda self: self.books.jobs)
    @rule(data=st.data(), stale=st.booleans())
    def complete(self, data: st.DataObject, stale: bool) -> None:
        job = self._job(data)
        self._complete(job, self._attempt(job, stale))

    @precondition(lambda self: self.books.jobs)
    @rule(data=st.data(), stale=st.booleans(), status=st.sampled_from([JobStatus.failed, JobStatus.canceled]))
    def fail(self, data: st.DataObject, stale: bool, status: JobStatus) -> None:
        """An input error (or a cancel the worker saw): failed or canceled, released, never charged."""
        job = self._job(data)
        self._fail(job, self._attempt(job, stale), status)

    @precondition(lambda self: self.books.jobs)
    @rule(data=st.data(), stale=st.booleans())
    def retry(self, data: st.DataObject, stale: bool) -> None:
        """An infrastructure error: queued again within the attempt budget and deadline, else failed."""
        job = self._job(data)
        self._retry(job, self._attempt(job, stale))

    @precondition(lambda self: self.books.jobs)
    @rule(data=st.data(), ending=st.sampled_from(["complete", "fail", "retry", "dies"]))
    def worker_runs(self, data: st.DataObject, ending: str) -> None:
        """A worker claims a job and ends its attempt at once (two units of work), or dies holding it."""
        job = self._job(data)
        if not self._claim(job):
            return
        if ending == "complete":
            self._complete(job, job.attempts)
        elif ending == "fail":
            self._fail(job, job.attempts, JobStatus.failed)
        elif ending == "retry":
            self._retry(job, job.attempts)

    @precondition(lambda self: any(j.status == "queued" and j.video for j in self.books.jobs.values()))
    @rule(data=st.data(), seconds=st.integers(1, 14))
    def video_canceled_partway(self, data: st.DataObject, seconds: int) -> None:
        """A worker claims a queued video, its caller cancels it, and the worker stops after `seconds` of it
        (three units of work)."""
        queued = [p for p, j in self.books.jobs.items() if j.status == "queued" and j.video]
        job = self.books.jobs[data.draw(st.sampled_from(queued))]
        if not self._claim(job):
            return
        self._cancel(job)
        self._cancel_partway(job, job.attempts, seconds)

    def _attempt(self, job: Job, stale: bool) -> int:
        """The attempt a worker settles: the current one, or (a worker taken for dead, back) the one before."""
        return job.attempts - 1 if stale else job.attempts

    def _owns(self, job: Job, attempt: int) -> bool:
        return job.status == "running" and job.attempts == attempt

    def _claim(self, job: Job) -> bool:
        row, error = self._run(lambda s: jobs.claim(s, public_id=job.public_id, worker_id=WORKER))
        self._expect(error, None)
        if not self.books.claimable(job):
            assert row is None, (job, row)
            return False
        assert row is not None, job
        assert row.status == "running"
        job.status, job.attempts = "running", job.attempts + 1
        assert row.attempts == job.attempts
        event(f"job claimed (attempt {job.attempts})")
        return True

    def _complete(self, job: Job, attempt: int) -> None:
        def call(s: Session) -> Any:
            row = jobs.complete(
                s,
                job_id=job.id,
                attempt=attempt,
                result_location=f"results/{job.public_id}-a{attempt}.png",
                content_type="image/png",
                size_bytes=1,
                timings_ms={},
                result_ttl_seconds=3600,
            )
            capture = s.execute(
                text("SELECT id FROM ledger_transactions WHERE hold_id = :hold AND kind = 'capture'"),
                {"hold": job.hold_id},
            ).scalar_one_or_none()
            return row, capture

        outcome, error = self._run(call)
        self._expect(error, None)
        row, capture = outcome
        if not (self._owns(job, attempt) and not job.cancel_requested):
            assert row is None, (job, row)
            assert (capture is None) == (job.hold_status != "captured")
            return
        assert row is not None, job
        assert (row.status, row.tokens_captured) == ("succeeded", job.tokens)
        job.status, job.hold_status = "succeeded", "captured"
        self.books.capture(capture, job.account_id, job.tokens, job.tokens, job.hold_id)
        event("job succeeded and charged")

    def _fail(self, job: Job, attempt: int, status: JobStatus) -> None:
        row, error = self._run(
            lambda s: jobs.fail(s, job_id=job.id, attempt=attempt, code="no_source_face", detail="x", status=status)
        )
        self._expect(error, None)
        if not self._owns(job, attempt):
            assert row is None, (job, row)
            return
        assert row is not None, job
        assert row.status == status.value
        self.books.finish_uncharged(job, status.value)
        event(f"job {status.value} by its worker")

    @precondition(lambda self: self.books.jobs)
    @rule(data=st.data(), stale=st.booleans(), seconds=st.integers(1, 14))
    def cancel_partway(self, data: st.DataObject, stale: bool, seconds: int) -> None:
        """A video's worker stopped by its cancel after `seconds` of processing: canceled, charged for those seconds
        (at most its units), the rest released. An image, a job not asked to cancel, or an attempt not running:
        nothing changes."""
        job = self._job(data)
        self._cancel_partway(job, self._attempt(job, stale), seconds)

    def _cancel_partway(self, job: Job, attempt: int, seconds: int) -> None:
        def call(s: Session) -> Any:
            row = jobs.cancel_with_partial_result(
                s,
                job_id=job.id,
                attempt=attempt,
                seconds=seconds,
                frames_done=min(seconds, job.units),  # a frame a second: the transition caps the seconds itself
                frames_total=job.units,
                result_location=f"results/{job.public_id}-a{attempt}.mp4",
                content_type="video/mp4",
                size_bytes=1,
                timings_ms={},
                result_ttl_seconds=3600,
            )
            capture = s.execute(
                text("SELECT id FROM ledger_transactions WHERE hold_id = :hold AND kind = 'capture'"),
                {"hold": job.hold_id},
            ).scalar_one_or_none()
            return row, capture

        outcome, error = self._run(call)
        self._expect(error, None)
        row, capture = outcome
        if not (self._owns(job, attempt) and job.cancel_requested and job.video):
            assert row is None, (job, row)
            assert (capture is None) == (job.hold_status != "captured")
            return
        charged = min(seconds, job.units) * self.price
        assert row is not None, job
        assert (row.status, row.tokens_captured) == ("canceled", charged)
        job.status, job.hold_status = "canceled", "captured"
        self.books.capture(capture, job.account_id, job.tokens, charged, job.hold_id)
        event("video canceled mid-run: the seconds processed charged")

    def _retry(self, job: Job, attempt: int) -> None:
        row, error = self._run(lambda s: jobs.retry(s, job_id=job.id, attempt=attempt, code="worker_error", detail="x"))
        self._expect(error, None)
        if not self._owns(job, attempt):
            assert row is None, (job, row)
            return
        if self.books.retryable(job):
            assert row is not None, job
            assert row.status == "queued"
            job.status = "queued"
            event("job retried")
        else:
            assert row is not None, job
            assert row.status == "failed"
            self.books.finish_uncharged(job, "failed")
            event("job failed: no attempts or time left")

    @precondition(lambda self: self.books.jobs)
    @rule(data=st.data())
    def cancel(self, data: st.DataObject) -> None:
        self._cancel(self._job(data))

    def _cancel(self, job: Job) -> None:
        def call(s: Session) -> Any:
            current = queries.get_by_id(s, job_id=job.id)
            assert current is not None
            return jobs.cancel(s, job=current)

        row, error = self._run(call)
        if job.status == "queued":
            self._expect(error, None)
            assert row.status == "canceled"
            self.books.finish_uncharged(job, "canceled")
            event("queued job canceled")
        elif job.status == "running":
            self._expect(error, None)
            assert row.status == "running"
            assert row.cancel_requested_at is not None
            job.cancel_requested = True
            event("running job: cancel requested")
        else:
            self._expect(error, "JobAlreadyFinished")

    @rule()
    def sweeper_tick(self) -> None:
        """One pass of the worker's sweeper, in its order (facemint.worker.sweeper.sweep_once), each step its own
        unit of work: stale jobs (none: 30 s without a heartbeat never passes here), deadlines, ledger holds,
        approvals. The first rule Hypothesis considers, so the most frequent: as in production, it runs often."""
        self._take_back_stale(30.0)
        self._sweep_deadlines()
        self._expire_holds()
        self._expire_lots()
        self._expire_approvals()

    @rule(stale_after=st.sampled_from([0.0, 3600.0]))
    def take_back_stale(self, stale_after: float) -> None:
        """The sweeper after worker deaths: with 0 s every running job's worker counts as dead."""
        self._take_back_stale(stale_after)

    def _take_back_stale(self, stale_after: float) -> None:
        outcome, error = self._run(lambda s: sweeps.take_back_stale(s, stale_after_seconds=stale_after))
        self._expect(error, None)
        requeued, finished = outcome
        expected_requeued, expected_finished = [], []
        if stale_after < 1:
            for job in self.books.jobs.values():
                if job.status != "running":
                    continue
                if self.books.retryable(job):
                    job.status = "queued"
                    expected_requeued.append(job.public_id)
                    event("worker lost: job requeued")
                else:
                    self.books.finish_uncharged(job, "canceled" if job.cancel_requested else "failed")
                    expected_finished.append(job.public_id)
        assert sorted(requeued) == sorted(expected_requeued)
        assert sorted(finished) == sorted(expected_finished)

    @precondition(lambda self: any(j.active for j in self.books.jobs.values()))
    @rule(data=st.data())
    def pass_deadline(self, data: st.DataObject) -> None:
        """Time passes for one job: its deadline is now behind it (an UPDATE: the clock is not the model's)."""
        job = self.books.jobs[data.draw(st.sampled_from([p for p, j in self.books.jobs.items() if j.active]))]
        moved, error = self._run(
            lambda s: s.execute(
                text(
                    "UPDATE jobs SET deadline_at = now() - interval '1 second' "
                    "WHERE id = :id AND status IN ('queued', 'running') RETURNING id"
                ),
                {"id": job.id},
            ).all()
        )
        self._expect(error, None)
        assert len(moved) == 1
        job.past_deadline = True

    def _sweep_deadlines(self) -> None:
        failed, error = self._run(lambda s: sweeps.fail_past_deadline(s))
        self._expect(error, None)
        expected = []
        for job in self.books.jobs.values():
            if job.active and job.past_deadline:
                self.books.finish_uncharged(job, "failed")
                expected.append(job.public_id)
                event("deadline passed: job failed and released")
        assert sorted(failed) == sorted(expected)
        # I4 with a sweeper that has just run: nothing past its deadline still holds tokens.
        assert not any(j.active and j.past_deadline for j in self.books.jobs.values())

    # --- ledger holds --------------------------------------------------------------------------------------

    @rule(payer=st.sampled_from(PAYERS), amount=st.integers(1, 40), due=st.booleans())
    def reserve(self, payer: str, amount: int, due: bool) -> None:
        """A hold straight on the ledger; `due`: its expiry is already here (the expiry sweep's work)."""
        account = self._account(payer)
        hold, error = self._run(
            lambda s: ledger_holds.reserve(
                s, account_id=account, amount=amount, reference=self._key("hold"), ttl_seconds=0 if due else 3600
            )
        )
        if self.books.accounts[account].available < amount:
            self._expect(error, "InsufficientTokens")
            return
        self._expect(error, None)
        self.books.reserve(account, amount, hold.hold_id)
        event("ledger hold reserved")
        self.books.holds[hold.hold_id] = Hold(hold.hold_id, account, amount, due)

    @precondition(lambda self: self.books.holds)
    @rule(data=st.data(), amount=st.none() | st.integers(1, 40))
    def capture(self, data: st.DataObject, amount: int | None) -> None:
        books = self.books
        hold = books.holds[data.draw(st.sampled_from(sorted(books.holds)))]

        def call(s: Session) -> Any:
            result = ledger_holds.capture(s, hold_id=hold.id, amount=amount)
            txn = s.execute(
                text("SELECT id FROM ledger_transactions WHERE hold_id = :id"), {"id": hold.id}
            ).scalar_one_or_none()
            return result, txn

        outcome, error = self._run(call)
        if hold.status == "held":
            if amount is not None and amount > hold.amount:
                self._expect(error, "InvalidAmount")
                return
            self._expect(error, None)
            result, txn = outcome
            captured = hold.amount if amount is None else amount
            assert (result.status, result.captured_amount, result.replayed) == ("captured", captured, False)
            books.capture(txn, hold.account_id, hold.amount, captured, hold.id)
            event("ledger hold captured")
            hold.status, hold.captured = "captured", captured
        elif hold.status == "captured" and amount in (None, hold.captured):
            self._expect(error, None)
            assert outcome[0].replayed
        else:
            self._expect(error, "HoldAlreadyResolved")

    @precondition(lambda self: self.books.holds)
    @rule(data=st.data())
    def release(self, data: st.DataObject) -> None:
        books = self.books
        hold = books.holds[data.draw(st.sampled_from(sorted(books.holds)))]
        result, error = self._run(lambda s: ledger_holds.release(s, hold_id=hold.id))
        if hold.status == "held":
            self._expect(error, None)
            assert (result.status, result.replayed) == ("released", False)
            books.unreserve(hold.account_id, hold.amount, hold.id)
            hold.status = "released"
        elif hold.status == "released":
            self._expect(error, None)
            assert result.replayed
        else:
            self._expect(error, "HoldAlreadyResolved")

    def _expire_holds(self) -> None:
        expired, error = self._run(lambda s: ledger_holds.expire_due_holds(s))
        self._expect(error, None)
        due = [h for h in self.books.holds.values() if h.status == "held" and h.due]
        assert sorted(expired) == sorted(h.id for h in due)
        for hold in due:
            self.books.unreserve(hold.account_id, hold.amount, hold.id)
            hold.status = "expired"
            event("ledger hold expired")

    # --- credit lots ---------------------------------------------------------------------------------------

    @rule(
        payer=st.sampled_from((*PAYERS, "pool")),
        amount=st.integers(1, 40),
        priority=st.sampled_from([0, 10, 50, 90]),
        days=EXPIRY_DAYS,
    )
    def grant(self, payer: str, amount: int, priority: int, days: int | None) -> None:
        """Tokens granted straight on the ledger (`billing.ledger.service.credit`), at a priority, maybe expiring."""
        account = self._account(payer)
        expires_at = self._expiry(days)
        posting, error = self._run(
            lambda s: ledger.credit(
                s,
                account_id=account,
                amount=amount,
                source=LotSource.grant,
                priority=priority,
                expires_at=expires_at,
                idempotency_key=self._key("grant"),
                request_hash=b"grant",
                tenant_id=None,
                actor="state machine",
            )
        )
        self._expect(error, None)
        self.books.post(
            posting.transaction_id,
            "recharge",
            {self.books.issuance: -amount, account: amount},
            terms=Terms(priority=priority, expires_at=expires_at, source="grant"),
        )
        event(f"granted at priority {priority}" + ("" if days is None else ", expiring"))

    @precondition(
        lambda self: any(lot.remaining and lot.expires_at and not lot.due for lot in self.books.lots.values())
    )
    @rule(data=st.data(), sweep=st.booleans())
    def lot_comes_due(self, data: st.DataObject, sweep: bool) -> None:
        """Time passes for one lot: its expiry is now behind it (an UPDATE: the clock is not the model's); `sweep`:
        the expiry sweep runs right after (else whenever `sweeper_tick` comes, the lot spendable meanwhile)."""
        waiting = sorted(lot.id for lot in self.books.lots.values() if lot.remaining and lot.expires_at and not lot.due)
        lot = self.books.lots[data.draw(st.sampled_from(waiting))]
        moved, error = self._run(
            lambda s: s.execute(
                text(
                    "UPDATE credit_lots SET expires_at = now() - interval '1 second' "
                    "WHERE id = :id RETURNING expires_at"
                ),
                {"id": lot.id},
            ).scalar_one()
        )
        self._expect(error, None)
        lot.expires_at = moved
        event("a lot's expiry passed" + (" (some of it held)" if lot.held else ""))
        if sweep:
            self._expire_lots()

    def _held_back(self, account_id: int) -> bool:
        return any(lot.due and lot.held for lot in self.books.lots.values() if lot.account_id == account_id)

    def _expire_lots(self) -> None:
        expiries, error = self._run(lambda s: lots.expire_due_lots(s))
        self._expect(error, None)
        assert {e.account_id: e.amount for e in expiries} == self.books.due_expiries()
        for expiry in expiries:
            self.books.expire(expiry.transaction_id, expiry.account_id, expiry.amount)
            event(
                "lots expired by the sweep" + (" (some tokens held back)" if self._held_back(expiry.account_id) else "")
            )


def test_books_agree_with_the_model_after_every_step(
    engine: Engine, owner_engine: Engine, redis_url: str, session_factory: sessionmaker[Session], settings: Settings
) -> None:
    machine = type(
        "Books",
        (BooksMachine,),
        {
            "engine": engine,
            "owner": owner_engine,
            "redis_url": redis_url,
            "sessions": session_factory,
            "ceiling": settings.recharge_max_amount,
        },
    )
    run_state_machine_as_test(
        machine,
        settings=hypothesis_settings(
            max_examples=EXAMPLES,
            stateful_step_count=STEPS,
            deadline=None,
            database=None,  # CI writes no .hypothesis/ directory
            derandomize=False,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
            phases=PHASES,
        ),
    )
