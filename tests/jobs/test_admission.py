"""What a tenant may have in flight: queued plus running jobs per plan (429 beyond), and `Prefer: wait` requests
waiting at once (429 beyond). A wait holds no thread: the service keeps answering while many requests wait."""

from __future__ import annotations

import os
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy.engine import Engine as DbEngine

from facemint.app import create_app
from facemint.config import Settings
from tests.jobs.conftest import SOURCE, TARGET, Payer, balance, counts, serving, submit, wait_for

FILES = {"source": ("s.png", SOURCE, "image/png"), "target": ("t.png", TARGET, "image/png")}


def _settings(job_settings: Settings, **changes: object) -> Settings:
    return job_settings.model_copy(update=changes)


@pytest.fixture
def capped_client(job_settings: Settings) -> Iterator[TestClient]:
    app = create_app(_settings(job_settings, plan_max_active_jobs={"free": 2}))
    with TestClient(app) as client:
        yield client


class TestActiveJobsCap:
    def test_a_submit_past_the_plans_active_jobs_is_429_and_holds_nothing(
        self, capped_client: TestClient, make_payer: object, engine: DbEngine
    ) -> None:
        payer: Payer = make_payer(tokens=10)  # type: ignore[operator]
        first, second = submit(capped_client, payer), submit(capped_client, payer)
        assert (first.status_code, second.status_code) == (202, 202)
        third = submit(capped_client, payer)
        assert third.status_code == 429, third.text
        assert third.json()["code"] == "too_many_active_jobs"
        assert third.json()["limit"] == 2
        assert int(third.headers["Retry-After"]) >= 1
        assert counts(engine, payer.user_id) == (2, 2)
        assert balance(engine, payer.account_id) == (10, 2)  # only the two accepted jobs hold tokens

        canceled = capped_client.post(f"/v1/jobs/{first.json()['id']}/cancel", headers=payer.headers)
        assert canceled.json()["status"] == "canceled"
        assert submit(capped_client, payer).status_code == 202  # a place came free

    def test_the_cap_is_per_tenant_not_per_user(
        self, capped_client: TestClient, make_payer: object, engine: DbEngine
    ) -> None:
        first: Payer = make_payer(tokens=10)  # type: ignore[operator]
        colleague: Payer = make_payer(tokens=10, tenant=_tenant(engine, first.tenant_id))  # type: ignore[operator]
        stranger: Payer = make_payer(tokens=10)  # type: ignore[operator]
        assert [submit(capped_client, first).status_code for _ in range(2)] == [202, 202]
        assert submit(capped_client, colleague).status_code == 429
        assert submit(capped_client, stranger).status_code == 202

    def test_concurrent_submits_never_exceed_the_cap(
        self, job_settings: Settings, make_payer: object, engine: DbEngine
    ) -> None:
        payer: Payer = make_payer(tokens=50)  # type: ignore[operator]
        app = create_app(_settings(job_settings, plan_max_active_jobs={"free": 3}))
        with serving(app) as url, httpx.Client(base_url=url, timeout=60) as client:
            barrier = threading.Barrier(12)

            def one(_: int) -> int:
                barrier.wait(timeout=30)
                headers = {**payer.headers, "Idempotency-Key": os.urandom(8).hex()}
                return client.post("/v1/swaps", headers=headers, files=FILES).status_code

            with ThreadPoolExecutor(12) as pool:
                statuses = Counter(pool.map(one, range(12)))
        assert statuses == {202: 3, 429: 9}
        assert counts(engine, payer.user_id) == (3, 3)

    def test_near_a_large_cap_the_count_takes_the_lock_and_stops_at_the_cap(
        self, job_settings: Settings, make_payer: object, engine: DbEngine
    ) -> None:
        """Far below the cap the count decides alone; within ACTIVE_CAP_MARGIN of it, submits serialise."""
        from facemint.jobs.service import ACTIVE_CAP_MARGIN

        cap = ACTIVE_CAP_MARGIN + 8
        payer: Payer = make_payer(tokens=100)  # type: ignore[operator]
        app = create_app(_settings(job_settings, plan_max_active_jobs={"free": cap}))
        with serving(app) as url, httpx.Client(base_url=url, timeout=60) as client:

            def one(_: int) -> int:
                headers = {**payer.headers, "Idempotency-Key": os.urandom(8).hex()}
                return client.post("/v1/swaps", headers=headers, files=FILES).status_code

            assert [one(i) for i in range(cap - 5)] == [202] * (cap - 5)
            barrier = threading.Barrier(12)

            def racing(i: int) -> int:
                barrier.wait(timeout=30)
                return one(i)

            with ThreadPoolExecutor(12) as pool:
                statuses = Counter(pool.map(racing, range(12)))
        assert statuses == {202: 5, 429: 7}
        assert counts(engine, payer.user_id) == (cap, cap)


def _tenant(engine: DbEngine, tenant_id: int) -> object:
    from sqlalchemy.orm import Session

    from facemint.tenants.orm import Tenant

    with Session(engine) as session:
        return session.get(Tenant, tenant_id)


class TestPreferWait:
    def test_waiting_requests_hold_no_thread(self, job_settings: Settings, make_payer: object) -> None:
        """More requests wait at once than the thread pool has threads (40), and a sync route still answers at
        once: a wait that held a thread would starve it until the waits ran out."""
        payer: Payer = make_payer(tokens=60)  # type: ignore[operator]
        settings = _settings(job_settings, plan_max_active_jobs={"free": 100}, prefer_wait_max_per_tenant=100)
        waiters = 45
        with serving(create_app(settings)) as url:
            limits = httpx.Limits(max_connections=waiters + 5)
            with httpx.Client(base_url=url, timeout=60, limits=limits) as client:

                def wait_one(_: int) -> httpx.Response:
                    headers = {**payer.headers, "Idempotency-Key": os.urandom(8).hex(), "Prefer": "wait=8"}
                    return client.post("/v1/swaps", headers=headers, files=FILES)

                with ThreadPoolExecutor(waiters) as pool:
                    futures = [pool.submit(wait_one, i) for i in range(waiters)]
                    wait_for(lambda: _held(client, payer) >= waiters, timeout=30, interval=0.1)
                    started = time.monotonic()
                    health = client.get("/healthz")
                    balance_now = client.get("/v1/balance", headers=payer.headers)
                    answered_in = time.monotonic() - started
                    assert all(not f.done() for f in futures)  # every submit is still waiting
                    responses = [f.result() for f in futures]
        assert health.status_code == 200
        assert balance_now.status_code == 200
        assert answered_in < 2.0, f"sync routes took {answered_in:.2f} s while {waiters} requests waited"
        assert {r.status_code for r in responses} == {202}  # no worker ran: each wait ran out and said so
        assert all(r.headers["Preference-Applied"] == "wait=8" for r in responses)

    def test_a_tenant_past_its_wait_cap_is_refused_before_anything_is_held(
        self, job_settings: Settings, make_payer: object, engine: DbEngine
    ) -> None:
        payer: Payer = make_payer(tokens=10)  # type: ignore[operator]
        settings = _settings(job_settings, prefer_wait_max_per_tenant=2)
        with serving(create_app(settings)) as url, httpx.Client(base_url=url, timeout=60) as client:

            def wait_one(_: int) -> httpx.Response:
                headers = {**payer.headers, "Idempotency-Key": os.urandom(8).hex(), "Prefer": "wait=5"}
                return client.post("/v1/swaps", headers=headers, files=FILES)

            with ThreadPoolExecutor(2) as pool:
                waiting = [pool.submit(wait_one, i) for i in range(2)]
                wait_for(lambda: counts(engine, payer.user_id) == (2, 2), timeout=30, interval=0.05)
                refused = wait_one(3)
                assert refused.status_code == 429, refused.text
                assert refused.json()["code"] == "too_many_waits"
                assert counts(engine, payer.user_id) == (2, 2)  # the refused submit recorded and held nothing
                without_wait = client.post(
                    "/v1/swaps", headers={**payer.headers, "Idempotency-Key": os.urandom(8).hex()}, files=FILES
                )
                assert without_wait.status_code == 202  # only waiting is capped
                assert [f.result().status_code for f in waiting] == [202, 202]
            again = wait_one(4)  # the slots were given back
            assert again.status_code == 202

    def test_a_client_that_leaves_gives_its_wait_slot_back_at_once(
        self, job_settings: Settings, make_payer: object
    ) -> None:
        payer: Payer = make_payer(tokens=10)  # type: ignore[operator]
        settings = _settings(job_settings, prefer_wait_max_per_tenant=1)
        with serving(create_app(settings)) as url:
            headers = {**payer.headers, "Prefer": "wait=30"}
            with pytest.raises(httpx.ReadTimeout), httpx.Client(base_url=url, timeout=1.0) as impatient:
                impatient.post("/v1/swaps", headers={**headers, "Idempotency-Key": "leaves"}, files=FILES)
            with httpx.Client(base_url=url, timeout=60) as client:

                def next_wait_admitted() -> bool:
                    probe = client.post(
                        "/v1/swaps",
                        headers={**payer.headers, "Prefer": "wait=1", "Idempotency-Key": os.urandom(8).hex()},
                        files=FILES,
                    )
                    return probe.status_code == 202

                started = time.monotonic()
                wait_for(next_wait_admitted, timeout=10, interval=0.2)
        assert time.monotonic() - started < 5, "the slot stayed taken after its client left"


def _held(client: httpx.Client, payer: Payer) -> int:
    return int(client.get("/v1/balance", headers=payer.headers).json()["held"])
