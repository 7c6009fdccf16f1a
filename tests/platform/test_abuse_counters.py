"""Every abuse rule's trigger and false-positive bound, on the counters themselves (`facemint.abuse.counters`):
real Redis, the rules made through the service in Postgres and mirrored, time given explicitly so windows and
baselines can be walked through without waiting. The submit and worker paths that call these are in
tests/jobs/test_abuse_submit.py and tests/jobs/test_abuse_faces.py."""

from __future__ import annotations

import random
from typing import Any

import pytest
from redis import Redis
from sqlalchemy.orm import Session

from facemint.abuse import counters
from facemint.abuse.counters import Triggered
from facemint.abuse.orm import RuleAction, RuleKind
from facemint.tenants.orm import Tenant
from tests.factories import add_abuse_rule, create_tenant, create_user

# An instant at the start of a 60 s window, of a 600 s window and of an hour: windows are aligned to the epoch.
T0 = 1_800_000_000.0 - 1_800_000_000.0 % 3600


@pytest.fixture
def user(session: Session) -> Any:
    return create_user(session, tenant=create_tenant(session), password=None)


def loader(session: Session, tenant_id: int) -> counters.Loader:
    return lambda: counters.load_rule_set(session, tenant_id=tenant_id)


def submit(session: Session, redis: Redis, user: Any, now: float, tokens: int = 1) -> list[Triggered]:
    return counters.check_submit(
        redis,
        tenant_id=user.tenant_id,
        user_id=user.id,
        tokens=tokens,
        load=loader(session, user.tenant_id),
        now=now,
    )


def face(session: Session, redis: Redis, user: Any, now: float, bands: list[str], job: str) -> list[Triggered]:
    return counters.check_face(
        redis,
        tenant_id=user.tenant_id,
        user_id=user.id,
        job_public_id=job,
        bands=bands,
        load=loader(session, user.tenant_id),
        now=now,
    )


class TestJobsPerWindow:
    @pytest.fixture
    def rule(self, session: Session, redis_client: Redis, user: Any) -> Any:
        return add_abuse_rule(
            session,
            redis_client,
            tenant_id=user.tenant_id,
            kind=RuleKind.jobs_per_window,
            max_jobs=5,
            window_seconds=60,
        )

    def test_the_job_past_the_limit_triggers_once_per_window(
        self, session: Session, redis_client: Redis, user: Any, rule: Any
    ) -> None:
        start = T0 + 120
        assert all(submit(session, redis_client, user, start + i) == [] for i in range(5))
        sixth = submit(session, redis_client, user, start + 5)
        assert [(t.rule_id, t.kind, t.action, t.first) for t in sixth] == [(rule.id, "jobs_per_window", "freeze", True)]
        assert sixth[0].observed == {"count": 6, "limit": 5}
        assert (sixth[0].window_start, sixth[0].window_seconds) == (int(start), 60)
        # Still past the limit in the same window: reported again (a freeze refuses every one), but not as first.
        seventh = submit(session, redis_client, user, start + 6)
        assert [(t.first, t.observed["count"]) for t in seventh] == [(False, 7)]
        # The next window starts from zero.
        assert all(submit(session, redis_client, user, start + 60 + i) == [] for i in range(5))

    def test_steady_traffic_at_the_limit_never_triggers_across_window_boundaries(
        self, session: Session, redis_client: Redis, user: Any, rule: Any
    ) -> None:
        # Five jobs every 60 s, evenly spaced, at an offset that puts jobs on both sides of every boundary.
        times = [T0 + 7.5 + 12 * i for i in range(5 * 30)]
        assert [t for now in times for t in submit(session, redis_client, user, now)] == []

    def test_no_traffic_within_the_limit_in_every_span_ever_triggers(
        self, session: Session, redis_client: Redis, user: Any, rule: Any
    ) -> None:
        """The fixed window's false-positive bound: random arrivals, kept to at most 5 in any 60 s span (a sliding
        check), never trigger."""
        rng = random.Random(7)
        times: list[float] = []
        now = T0
        while len(times) < 300:
            now += rng.expovariate(1 / 6)
            if sum(1 for t in times if t > now - 60) < 5:
                times.append(now)
        assert [t for at in times for t in submit(session, redis_client, user, at)] == []

    def test_the_worst_case_a_fixed_window_lets_through(
        self, session: Session, redis_client: Redis, user: Any, rule: Any
    ) -> None:
        """The price of fixed windows, as docs/security.md states it: 2 x max_jobs within a span that straddles a
        boundary, without a trigger."""
        boundary = T0 + 60
        burst = [boundary - 0.5 + i * 0.01 for i in range(5)] + [boundary + i * 0.01 for i in range(5)]
        assert [t for at in burst for t in submit(session, redis_client, user, at)] == []

    def test_users_count_apart_and_a_new_generation_starts_from_zero(
        self, session: Session, redis_client: Redis, user: Any, rule: Any
    ) -> None:
        neighbour = create_user(session, tenant=session.get(Tenant, user.tenant_id), password=None)
        start = T0 + 180
        for i in range(5):
            assert submit(session, redis_client, user, start + i) == []
            assert submit(session, redis_client, neighbour, start + i) == []
        assert submit(session, redis_client, user, start + 5)
        counters.start_new_generation(redis_client, user_id=user.id)
        # The same window, counted afresh: five more go through, the sixth triggers as a first again.
        assert all(submit(session, redis_client, user, start + 10 + i) == [] for i in range(5))
        again = submit(session, redis_client, user, start + 20)
        assert [(t.first, t.generation) for t in again] == [(True, 1)]


class TestSpendRate:
    """`multiple` 3, a baseline over the previous 2 hours, 10-minute windows, a floor of 50 tokens."""

    @pytest.fixture
    def rule(self, session: Session, redis_client: Redis, user: Any) -> Any:
        return add_abuse_rule(
            session,
            redis_client,
            tenant_id=user.tenant_id,
            kind=RuleKind.spend_rate,
            action=RuleAction.flag,
            multiple=3.0,
            baseline_hours=2,
            window_seconds=600,
            min_tokens=50,
        )

    def steady(self, session: Session, redis: Redis, user: Any, *, start: float, until: float, every: float) -> list:
        """2 tokens every `every` seconds from `start` to `until`; what triggered."""
        triggered = []
        now = start
        while now < until:
            triggered += submit(session, redis, user, now, tokens=2)
            now += every
        return triggered

    def test_steady_spend_never_triggers_and_a_burst_above_the_multiple_does(
        self, session: Session, redis_client: Redis, user: Any, rule: Any
    ) -> None:
        # A new account starting mid-hour at 40 tokens a window (under the floor) while its history builds up ...
        assert self.steady(session, redis_client, user, start=T0 + 1800, until=T0 + 7200, every=30) == []
        # ... then steady at twice that, above the floor: the baseline (not the floor) keeps it quiet, for 6 hours
        # and across every hour and window boundary in them.
        assert self.steady(session, redis_client, user, start=T0 + 7200, until=T0 + 8 * 3600, every=15) == []
        # Then more than 3 x the rate: 2 tokens every 4 s (300 a window against 3 x 80).
        burst = T0 + 8 * 3600
        triggered = self.steady(session, redis_client, user, start=burst, until=burst + 600, every=4)
        first = triggered[0]
        assert (first.rule_id, first.action, first.first) == (rule.id, "flag", True)
        assert first.observed["tokens"] > 240
        assert (first.observed["baseline_tokens"], first.observed["baseline_hours"]) == (2 * 480, 2)
        assert first.observed["limit"] == pytest.approx(3 * 80)
        assert [t.first for t in triggered].count(True) == 1  # once in its window

    def test_the_floor_keeps_a_new_accounts_first_jobs_from_triggering(
        self, session: Session, redis_client: Redis, user: Any, rule: Any
    ) -> None:
        # No history at all: the baseline is zero, so only the floor stands between a first job and a trigger.
        start = T0 + 3600 + 5
        assert all(submit(session, redis_client, user, start + i, tokens=5) == [] for i in range(10))  # 50: at it
        past = submit(session, redis_client, user, start + 10, tokens=1)
        assert [(t.observed["tokens"], t.observed["limit"], t.observed["baseline_hours"]) for t in past] == [
            (51, 50, 0)
        ]

    def test_an_idle_account_that_bursts_is_caught_by_its_low_baseline(
        self, session: Session, redis_client: Redis, user: Any, rule: Any
    ) -> None:
        """Hours without spend are part of the baseline (as zero): coming back at many times the recent rate
        triggers as soon as the floor is passed."""
        assert self.steady(session, redis_client, user, start=T0, until=T0 + 3 * 3600, every=120) == []  # 10/window
        later = T0 + 4 * 3600 + 60  # an idle hour in the baseline now
        triggered = self.steady(session, redis_client, user, start=later, until=later + 60, every=1)
        assert triggered
        assert triggered[0].observed["tokens"] == 52
        assert triggered[0].observed["baseline_tokens"] == 60  # the one hour of the two that had spend


class TestSameFacePerWindow:
    @pytest.fixture
    def rule(self, session: Session, redis_client: Redis, user: Any) -> Any:
        return add_abuse_rule(
            session,
            redis_client,
            tenant_id=user.tenant_id,
            kind=RuleKind.same_face_per_window,
            max_jobs=2,
            window_seconds=600,
        )

    def test_a_face_sharing_any_band_is_counted_together_and_each_job_once(
        self, session: Session, redis_client: Redis, user: Any, rule: Any
    ) -> None:
        bands = [f"{i:05x}" for i in range(8)]
        start = T0 + 600
        assert face(session, redis_client, user, start, bands, "job_a") == []
        # A re-encoded copy: only one band in common is enough.
        copy = ["fffff"] * 7 + [bands[7]]
        assert face(session, redis_client, user, start + 1, copy, "job_b") == []
        # job_b run again (a retry) is still one job.
        assert face(session, redis_client, user, start + 2, copy, "job_b") == []
        third = face(session, redis_client, user, start + 3, bands, "job_c")
        assert [(t.kind, t.observed, t.first) for t in third] == [
            ("same_face_per_window", {"count": 3, "limit": 2}, True)
        ]

    def test_distinct_faces_do_not_add_up(self, session: Session, redis_client: Redis, user: Any, rule: Any) -> None:
        start = T0 + 1200
        results = [
            face(session, redis_client, user, start + n, [f"{n:03x}{i:02x}" for i in range(8)], f"job_{n}")
            for n in range(50)
        ]
        assert all(r == [] for r in results)

    def test_the_submit_path_does_not_count_faces(
        self, session: Session, redis_client: Redis, user: Any, rule: Any
    ) -> None:
        assert all(submit(session, redis_client, user, T0 + i) == [] for i in range(10))


class TestRulesCopy:
    def test_a_flushed_copy_is_reloaded_from_postgres(self, session: Session, redis_client: Redis, user: Any) -> None:
        rule = add_abuse_rule(
            session,
            redis_client,
            tenant_id=user.tenant_id,
            kind=RuleKind.jobs_per_window,
            max_jobs=1,
            window_seconds=60,
        )
        redis_client.flushdb()
        assert submit(session, redis_client, user, T0) == []
        assert [t.rule_id for t in submit(session, redis_client, user, T0 + 1)] == [rule.id]
        assert redis_client.ttl(counters.rules_key(user.tenant_id)) > 0

    def test_an_older_version_never_replaces_a_newer_one(
        self, session: Session, redis_client: Redis, user: Any
    ) -> None:
        add_abuse_rule(
            session,
            redis_client,
            tenant_id=user.tenant_id,
            kind=RuleKind.jobs_per_window,
            max_jobs=1,
            window_seconds=60,
        )
        current = counters.load_rule_set(session, tenant_id=user.tenant_id)
        stale = counters.RuleSet(version=current.version - 1, rules=())
        assert not counters.publish(redis_client, tenant_id=user.tenant_id, rule_set=stale)
        assert not counters.publish(redis_client, tenant_id=user.tenant_id, rule_set=current)  # the same: kept
        newer = counters.RuleSet(version=current.version + 1, rules=())
        assert counters.publish(redis_client, tenant_id=user.tenant_id, rule_set=newer)
        assert submit(session, redis_client, user, T0) == []
        assert submit(session, redis_client, user, T0 + 1) == []  # the newer (empty) set is what applies

    def test_a_tenant_without_rules_is_cached_as_such(self, session: Session, redis_client: Redis, user: Any) -> None:
        assert submit(session, redis_client, user, T0) == []
        assert redis_client.get(counters.rules_key(user.tenant_id)) == b'{"v":0,"rules":[]}'
