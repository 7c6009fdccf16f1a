"""The retry policy, timed against a scripted HTTP peer: Retry-After (seconds and HTTP dates) is waited for as
given, backoff doubles, the retry budget and the deadline are kept, an Idempotency-Key is made once per call and
sent on every retry, and only what cannot be applied twice is retried after a 5xx or a lost answer. The live
API's own refusals and restarts are in test_live_api.py."""

from __future__ import annotations

import asyncio
import email.utils
import time

import pytest

from facemint_client import (
    AbuseChecksUnavailable,
    AccountFrozen,
    APIConnectionError,
    AsyncFacemint,
    Conflict,
    Facemint,
    IdempotencyConflict,
    LedgerContention,
    NotFound,
    RateLimited,
    RetryPolicy,
    ServerError,
    ServiceUnavailable,
    UserFrozen,
)
from facemint_client._retry import parse_retry_after
from tests.sdk.scripted_peer import Answer, scripted_peer

RECHARGE = {
    "transaction_id": 9,
    "amount": 5,
    "replayed": False,
    "target": {"user_id": 1},
    "balance": 5,
    "held": 0,
    "available": 5,
}
TENANT = {
    "id": 3,
    "name": "t",
    "status": "active",
    "plan": "free",
    "created_at": "2026-12-05T10:00:00+00:00",
    "updated_at": "2026-12-05T10:00:00+00:00",
}
STAMP = "2026-12-05T10:00:00+00:00"
ALERT = {"account": "user", "user_id": 1, "tenant_id": 3, "threshold": 10, "hysteresis": 1, "rearm_at": 11}
RULE = {"id": 4, "tenant_id": 3, "kind": "jobs_per_window", "action": "freeze", "window_seconds": 60, "max_jobs": 2}
TRIGGER = {"id": 5, "tenant_id": 3, "rule_id": 4, "user_id": 1, "status": "resolved", "unfroze": True}
GRANT = {"id": 6, "name": "g", "scope": "tenant", "tenant_id": 3, "amount": 5, "period": "day", "enabled": True}
JOB = {"id": "job_1", "operation": "swap.image", "status": "queued", "created_at": STAMP}
# No jitter unless a test wants it: the schedule is then exact.
EXACT = RetryPolicy(max_retries=3, initial_delay=0.2, max_delay=10.0, jitter=0.0)


def client(url: str, retry: RetryPolicy = EXACT) -> Facemint:
    return Facemint("fmk_test", base_url=url, retry=retry)


def test_retry_after_in_seconds_is_waited_for_then_the_call_succeeds() -> None:
    with scripted_peer(Answer.problem(429, "rate_limited", **{"Retry-After": "1"})) as peer:
        balance = client(peer.url).account.balance()
    assert balance.available == 1
    assert len(peer.seen) == 2
    assert 1.0 <= peer.gaps()[0] < 1.8


def test_retry_after_as_an_http_date_is_waited_for() -> None:
    when = email.utils.formatdate(time.time() + 2, usegmt=True)  # whole seconds: 1 to 2 s from now
    with scripted_peer(Answer.problem(503, "service_unavailable", **{"Retry-After": when})) as peer:
        client(peer.url).account.balance()
    assert len(peer.seen) == 2
    assert 0.9 <= peer.gaps()[0] <= 2.4


def test_backoff_doubles_between_attempts_without_retry_after() -> None:
    with scripted_peer(*[Answer.problem(502, "bad_gateway")] * 3) as peer:
        client(peer.url).account.balance()
    assert len(peer.seen) == 4
    for gap, planned in zip(peer.gaps(), [0.2, 0.4, 0.8], strict=True):
        assert planned <= gap < planned * 1.5 + 0.1, peer.gaps()  # each about twice the one before


def test_jitter_shortens_each_wait_by_up_to_its_fraction() -> None:
    policy = RetryPolicy(initial_delay=0.5, max_delay=8.0, jitter=0.25)
    assert policy.backoff(0, rng=lambda: 0.0) == 0.5
    assert policy.backoff(0, rng=lambda: 1.0) == 0.375
    assert policy.backoff(3, rng=lambda: 0.0) == 4.0
    assert policy.backoff(10, rng=lambda: 0.0) == 8.0  # capped


def test_the_retry_budget_is_kept_then_the_last_error_raised() -> None:
    with (
        scripted_peer(*[Answer.problem(503, "database_unavailable", **{"Retry-After": "0"})] * 5) as peer,
        pytest.raises(ServiceUnavailable) as raised,
    ):
        client(peer.url, RetryPolicy(max_retries=2, initial_delay=0.01)).account.balance()
    assert len(peer.seen) == 3
    assert raised.value.code == "database_unavailable"
    assert raised.value.status == 503


def test_a_retry_after_longer_than_the_cap_is_raised_at_once() -> None:
    with (
        scripted_peer(Answer.problem(429, "too_many_active_jobs", **{"Retry-After": "120"})) as peer,
        pytest.raises(RateLimited) as raised,
    ):
        client(peer.url).account.balance()
    assert len(peer.seen) == 1
    assert raised.value.retry_after == 120
    assert raised.value.code == "too_many_active_jobs"


def test_the_deadline_bounds_the_whole_call() -> None:
    refusals = [Answer.problem(503, "service_unavailable", **{"Retry-After": "1"})] * 10
    with scripted_peer(*refusals) as peer:
        started = time.monotonic()
        with pytest.raises(ServiceUnavailable):
            client(peer.url, RetryPolicy(max_retries=10, deadline=2.5)).account.balance()
        elapsed = time.monotonic() - started
    # Attempts at 0, 1 and 2 s; waiting for a fourth would pass the deadline, so the third's refusal is raised.
    assert len(peer.seen) == 3
    assert 2.0 <= elapsed < 3.0


def test_one_idempotency_key_is_made_per_call_and_sent_on_every_retry() -> None:
    script = [Answer.problem(503, "database_unavailable"), Answer.problem(500, "internal_error"), Answer(201, RECHARGE)]
    with scripted_peer(*script) as peer:
        facemint = client(peer.url, RetryPolicy(initial_delay=0.01))
        facemint.admin.recharges.create(5, reason="r", user_id=1)
        facemint.admin.recharges.create(5, reason="r", user_id=1)
    keys = [seen.headers["idempotency-key"] for seen in peer.seen]
    assert len(keys) == 4
    assert keys[0] == keys[1] == keys[2] != keys[3]  # the retries reuse it; the next call makes its own
    assert keys[0].startswith("fmc_")


def test_a_key_the_caller_gives_is_sent_as_given() -> None:
    with scripted_peer(Answer.problem(500, "internal_error"), Answer(201, RECHARGE)) as peer:
        client(peer.url).admin.recharges.create(5, reason="r", user_id=1, idempotency_key="2026-11-refund-7")
    assert [seen.headers["idempotency-key"] for seen in peer.seen] == ["2026-11-refund-7"] * 2


def test_reads_carry_no_idempotency_key() -> None:
    with scripted_peer() as peer:
        client(peer.url).account.balance()
    assert "idempotency-key" not in peer.seen[0].headers
    assert peer.seen[0].headers["authorization"] == "Bearer fmk_test"


def test_an_idempotency_conflict_is_never_retried() -> None:
    with (
        scripted_peer(Answer.problem(409, "idempotency_key_reused")) as peer,
        pytest.raises(IdempotencyConflict) as raised,
    ):
        client(peer.url).admin.recharges.create(5, reason="r", user_id=1, idempotency_key="k1")
    assert len(peer.seen) == 1
    assert raised.value.idempotency_key == "k1"


def test_ledger_contention_is_retried_with_the_same_key() -> None:
    with scripted_peer(Answer.problem(409, "ledger_contention"), Answer(201, RECHARGE)) as peer:
        recharge = client(peer.url).admin.recharges.create(5, reason="r", user_id=1)
    assert recharge.transaction_id == 9
    assert len({seen.headers["idempotency-key"] for seen in peer.seen}) == 1
    assert len(peer.seen) == 2


def test_contention_past_the_budget_is_raised_as_such() -> None:
    with scripted_peer(*[Answer.problem(409, "ledger_contention")] * 3) as peer, pytest.raises(LedgerContention):
        client(peer.url, RetryPolicy(max_retries=2, initial_delay=0.01)).admin.recharges.create(
            5, reason="r", user_id=1
        )
    assert len(peer.seen) == 3


def test_an_unkeyed_create_is_not_retried_after_a_500_which_may_have_applied_it() -> None:
    with (
        scripted_peer(Answer.problem(500, "internal_error"), Answer(201, TENANT)) as peer,
        pytest.raises(ServerError) as raised,
    ):
        client(peer.url).admin.tenants.create("t")
    assert len(peer.seen) == 1
    assert raised.value.code == "internal_error"


def test_an_unkeyed_create_is_retried_when_the_server_started_nothing() -> None:
    script = [Answer.problem(429, "rate_limited", **{"Retry-After": "0"}), Answer.problem(503, "service_unavailable")]
    with scripted_peer(*script, Answer(201, TENANT)) as peer:
        tenant = client(peer.url).admin.tenants.create("t")
    assert tenant.id == 3
    assert len(peer.seen) == 3


def test_a_lost_answer_is_retried_only_where_a_replay_applies_nothing_twice() -> None:
    with scripted_peer(Answer(0, hang_up=True), Answer(201, RECHARGE)) as peer:
        client(peer.url).admin.recharges.create(5, reason="r", user_id=1)
    assert len(peer.seen) == 2  # keyed: replayed by the server
    with scripted_peer(Answer(0, hang_up=True), Answer(201, TENANT)) as peer, pytest.raises(APIConnectionError):
        client(peer.url).admin.tenants.create("t")
    assert len(peer.seen) == 1  # unkeyed: the tenant may exist now
    with scripted_peer(Answer(0, hang_up=True), Answer(200, TENANT)) as peer:
        assert client(peer.url).admin.tenants.suspend(3).id == 3
    assert len(peer.seen) == 2  # a state change: applying it twice leaves the same state


def test_setting_a_state_is_retried_after_a_500_and_an_unkeyed_rule_is_not_created_twice() -> None:
    with scripted_peer(Answer.problem(500, "internal_error"), Answer(200, ALERT)) as peer:
        assert client(peer.url).admin.balance_alerts.set_user(1, 10).threshold == 10
    assert [(seen.method, seen.path) for seen in peer.seen] == [("PUT", "/admin/v1/users/1/balance/alert")] * 2
    with scripted_peer(Answer(0, hang_up=True), Answer(201, RULE)) as peer, pytest.raises(APIConnectionError):
        client(peer.url).admin.abuse_rules.create(
            3, kind="jobs_per_window", action="freeze", window_seconds=60, max_jobs=2
        )
    assert len(peer.seen) == 1  # the rule may exist now: look before creating it again


def test_a_grant_create_or_change_whose_answer_was_lost_is_not_sent_again_and_a_read_is() -> None:
    # Neither takes an Idempotency-Key, and sending either again would make (or hold) another.
    with scripted_peer(Answer(0, hang_up=True), Answer(201, GRANT)) as peer, pytest.raises(APIConnectionError):
        client(peer.url).admin.grants.create("g", scope="tenant", amount=5, period="day", funding="tenant_pool")
    assert len(peer.seen) == 1
    assert "idempotency-key" not in peer.seen[0].headers
    with scripted_peer(Answer.problem(500, "internal_error"), Answer(200, GRANT)) as peer, pytest.raises(ServerError):
        client(peer.url).admin.grants.update(6, amount=7)
    assert len(peer.seen) == 1
    with scripted_peer(Answer(0, hang_up=True), Answer(200, GRANT)) as peer:
        assert client(peer.url).admin.grants.get(6).id == 6
    assert len(peer.seen) == 2


def test_a_delete_whose_answer_was_lost_is_done_when_its_retry_meets_not_found() -> None:
    with scripted_peer(Answer(0, hang_up=True), Answer.problem(404, "abuse_rule_not_found")) as peer:
        assert client(peer.url).admin.abuse_rules.delete(3, 4) is None
    assert [seen.method for seen in peer.seen] == ["DELETE", "DELETE"]
    with scripted_peer(Answer(0, hang_up=True), Answer.problem(404, "zendesk_asset_not_found")) as peer:
        assert client(peer.url).admin.zendesk.delete_asset(3, 4) is None
    # Without a lost answer, not found is the caller's to know.
    with scripted_peer(Answer.problem(404, "abuse_rule_not_found")) as peer, pytest.raises(NotFound):
        client(peer.url).admin.abuse_rules.delete(3, 4)
    assert len(peer.seen) == 1


def test_a_resolve_whose_answer_was_lost_reads_the_trigger_back() -> None:
    script = [Answer(0, hang_up=True), Answer.problem(409, "abuse_trigger_resolved"), Answer(200, TRIGGER)]
    with scripted_peer(*script) as peer:
        trigger = client(peer.url).admin.abuse_triggers.resolve(5, note="ok", unfreeze=True)
    assert (trigger.status, trigger.unfroze) == ("resolved", True)
    assert [(seen.method, seen.path) for seen in peer.seen] == [
        ("POST", "/admin/v1/abuse/triggers/5/resolve"),
        ("POST", "/admin/v1/abuse/triggers/5/resolve"),
        ("GET", "/admin/v1/abuse/triggers/5"),
    ]
    # Resolved, but not as this call asked (someone else closed it without unfreezing): the refusal stands.
    script = [
        Answer(0, hang_up=True),
        Answer.problem(409, "abuse_trigger_resolved"),
        Answer(200, {**TRIGGER, "unfroze": False}),
    ]
    with scripted_peer(*script) as peer, pytest.raises(Conflict) as raised:
        client(peer.url).admin.abuse_triggers.resolve(5, unfreeze=True)
    assert raised.value.code == "abuse_trigger_resolved"


def test_unavailable_abuse_checks_are_retried_under_the_same_key_and_a_freeze_is_not() -> None:
    unavailable = Answer.problem(503, "abuse_checks_unavailable", **{"Retry-After": "0"})
    with scripted_peer(unavailable, Answer(201, JOB)) as peer:
        assert client(peer.url).jobs.submit(b"source", b"target").id == "job_1"
    assert len(peer.seen) == 2
    assert len({seen.headers["idempotency-key"] for seen in peer.seen}) == 1
    with scripted_peer(*[unavailable] * 3) as peer, pytest.raises(AbuseChecksUnavailable):
        client(peer.url, RetryPolicy(max_retries=2, initial_delay=0.01)).jobs.submit(b"source", b"target")
    assert len(peer.seen) == 3
    with scripted_peer(Answer.problem(403, "account_frozen")) as peer, pytest.raises(AccountFrozen) as frozen:
        client(peer.url).jobs.submit(b"source", b"target")
    assert len(peer.seen) == 1
    assert isinstance(frozen.value, UserFrozen)


def test_an_unreachable_api_is_retried_then_reported() -> None:
    with scripted_peer() as peer:
        url = peer.url  # closed when the block ends: nothing listens there any more
    started = time.monotonic()
    with pytest.raises(APIConnectionError) as raised:
        client(url, RetryPolicy(max_retries=2, initial_delay=0.1, jitter=0.0)).account.balance()
    assert time.monotonic() - started >= 0.3  # 0.1 + 0.2 s of backoff: two retries
    assert "ConnectError" in str(raised.value)


def test_parse_retry_after() -> None:
    now = 1_800_000_000.0
    assert parse_retry_after("5") == 5.0
    assert parse_retry_after("0") == 0.0
    assert parse_retry_after(email.utils.formatdate(now + 30, usegmt=True), now=now) == 30.0
    assert parse_retry_after(email.utils.formatdate(now - 30, usegmt=True), now=now) == 0.0
    assert parse_retry_after("soon") is None
    assert parse_retry_after(None) is None


def test_the_async_client_follows_the_same_schedule_and_keys() -> None:
    script = [
        Answer.problem(429, "rate_limited", **{"Retry-After": "1"}),
        Answer.problem(502, "bad_gateway"),
        Answer(201, RECHARGE),
    ]

    async def scenario(url: str) -> int:
        async with AsyncFacemint("fmk_test", base_url=url, retry=EXACT) as facemint:
            recharge = await facemint.admin.recharges.create(5, reason="r", user_id=1)
            return recharge.transaction_id

    with scripted_peer(*script) as peer:
        assert asyncio.run(scenario(peer.url)) == 9
    assert len(peer.seen) == 3
    assert 1.0 <= peer.gaps()[0] < 1.8
    assert 0.4 <= peer.gaps()[1] < 0.8  # the second retry's backoff
    assert len({seen.headers["idempotency-key"] for seen in peer.seen}) == 1


def test_with_options_changes_the_policy_and_keeps_the_connections() -> None:
    with scripted_peer(*[Answer.problem(503, "database_unavailable")] * 3) as peer:
        base = client(peer.url)
        impatient = base.with_options(max_retries=0, api_key="fmk_other")
        with pytest.raises(ServiceUnavailable):
            impatient.account.balance()
    assert len(peer.seen) == 1
    assert peer.seen[0].headers["authorization"] == "Bearer fmk_other"
    assert impatient._http is base._http
    assert base.config.retry.max_retries == 3


def test_the_key_and_url_default_to_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    with scripted_peer() as peer:
        monkeypatch.setenv("FACEMINT_API_KEY", "fmk_from_env")
        monkeypatch.setenv("FACEMINT_API_URL", peer.url + "/")
        with Facemint() as facemint:
            facemint.account.balance()
    assert peer.seen[0].headers["authorization"] == "Bearer fmk_from_env"
    assert peer.seen[0].path == "/v1/balance"
