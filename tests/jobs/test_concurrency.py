"""Submits racing each other through a real HTTP server (uvicorn on loopback): the balance is never overspent,
and one Idempotency-Key makes one job and one hold however many requests carry it at once."""

from __future__ import annotations

import os
import threading
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
from redis import Redis
from sqlalchemy import text
from sqlalchemy.engine import Engine as DbEngine

from facemint.config import Settings
from tests.jobs.conftest import SOURCE, TARGET, Payer, balance, counts


def post_swaps(base_url: str, payer: Payer, keys: list[str]) -> list[httpx.Response]:
    """Send one submit per key, all released at the same instant from their own threads."""
    barrier = threading.Barrier(len(keys))
    limits = httpx.Limits(max_connections=len(keys), max_keepalive_connections=len(keys))
    with httpx.Client(base_url=base_url, timeout=60, limits=limits) as client:

        def one(key: str) -> httpx.Response:
            barrier.wait(timeout=30)
            return client.post(
                "/v1/swaps",
                headers={**payer.headers, "Idempotency-Key": key},
                files={"source": ("s.png", SOURCE, "image/png"), "target": ("t.png", TARGET, "image/png")},
            )

        with ThreadPoolExecutor(max_workers=len(keys)) as pool:
            return list(pool.map(one, keys))


class AvailablePoller:
    """Reads the account's available balance (balance - held) in a loop while the submits run."""

    def __init__(self, engine: DbEngine, account_id: int) -> None:
        self.engine = engine
        self.account_id = account_id
        self.seen: list[tuple[int, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with self.engine.connect() as conn:
            while not self._stop.is_set():
                row = conn.execute(
                    text("SELECT balance, held FROM ledger_accounts WHERE id = :id"), {"id": self.account_id}
                ).one()
                conn.rollback()
                self.seen.append((row.balance, row.held))

    def __enter__(self) -> AvailablePoller:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)


def queue_length(redis: Redis, settings: Settings) -> int:
    return int(redis.llen(f"rq:queue:{settings.queue_name}"))


def test_fifty_submits_for_ten_tokens_accept_exactly_ten(
    live_server: str,
    make_payer: Callable[..., Payer],
    engine: DbEngine,
    redis_client: Redis,
    job_settings: Settings,
) -> None:
    payer = make_payer(10)
    with AvailablePoller(engine, payer.account_id) as poller:
        responses = post_swaps(live_server, payer, [f"race-{i}" for i in range(50)])
    statuses = Counter(r.status_code for r in responses)
    assert statuses == {202: 10, 402: 40}, statuses
    for refused in (r for r in responses if r.status_code == 402):
        body = refused.json()
        assert body["code"] == "insufficient_tokens"
        assert body["needed"] == 1
        assert 0 <= body["available"] < 10
    accepted = [r for r in responses if r.status_code == 202]
    assert len({r.json()["id"] for r in accepted}) == 10
    assert sorted(int(r.headers["X-Balance-Available"]) for r in accepted) == list(range(10))

    assert balance(engine, payer.account_id) == (10, 10)
    assert counts(engine, payer.user_id) == (10, 10)
    assert queue_length(redis_client, job_settings) == 10
    assert poller.seen, "the poller read nothing"
    assert all(b - h >= 0 and 0 <= h <= 10 for b, h in poller.seen), min(b - h for b, h in poller.seen)


def test_one_key_sent_twenty_times_at_once_makes_one_job(
    live_server: str,
    make_payer: Callable[..., Payer],
    engine: DbEngine,
    redis_client: Redis,
    job_settings: Settings,
) -> None:
    # One token only: a duplicate must replay the first job, never answer 402 because the first one's hold
    # used the balance.
    payer = make_payer(1)
    key = "same-" + os.urandom(4).hex()
    responses = post_swaps(live_server, payer, [key] * 20)
    statuses = Counter(r.status_code for r in responses)
    assert statuses == {202: 1, 200: 19}, [(r.status_code, r.text[:200]) for r in responses]
    ids = {r.json()["id"] for r in responses}
    assert len(ids) == 1
    assert sum(r.headers.get("Idempotent-Replayed") == "true" for r in responses) == 19
    assert {r.headers["Location"] for r in responses} == {f"/v1/jobs/{ids.pop()}"}

    assert counts(engine, payer.user_id) == (1, 1)
    assert balance(engine, payer.account_id) == (1, 1)
    assert queue_length(redis_client, job_settings) == 1


def test_racing_keys_and_replays_together(live_server: str, make_payer: Callable[..., Payer], engine: DbEngine) -> None:
    """Five keys, each sent four times at once, for a payer who can afford three: three jobs, each of its four
    requests answered with that job; the other two keys are 402 every time."""
    payer = make_payer(3)
    keys = [f"mix-{i}" for i in range(5)] * 4
    responses = post_swaps(live_server, payer, keys)
    by_key: dict[str, list[Any]] = {}
    for key, response in zip(keys, responses, strict=True):
        by_key.setdefault(key, []).append(response)
    accepted = [k for k, rs in by_key.items() if any(r.status_code in (200, 202) for r in rs)]
    assert len(accepted) == 3, {k: [r.status_code for r in rs] for k, rs in by_key.items()}
    for key in accepted:
        assert sorted(r.status_code for r in by_key[key]) == [200, 200, 200, 202]
        assert len({r.json()["id"] for r in by_key[key]}) == 1
    for key in set(by_key) - set(accepted):
        assert {r.status_code for r in by_key[key]} == {402}
    assert counts(engine, payer.user_id) == (3, 3)
    assert balance(engine, payer.account_id) == (3, 3)
