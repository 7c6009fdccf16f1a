"""A job's life through HTTP: run and captured once, failed on its input and released, canceled (queued or
running) and released, files deleted while the money trail stays, `Prefer: wait`, listing and usage."""

from __future__ import annotations

import io
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient
from PIL import Image
from redis import Redis
from sqlalchemy import text
from sqlalchemy.engine import Engine as DbEngine
from sqlalchemy.orm import Session

from billing.ledger import lots
from billing.ledger import service as ledger
from billing.ledger.orm import LotSource
from facemint.app import create_app
from facemint.config import Settings
from facemint.jobs import queue
from tests.jobs.conftest import (
    Payer,
    balance,
    blank_png,
    capture_count,
    execute,
    hold_row,
    job_row,
    problem,
    submit,
    wait_running,
    wait_terminal,
)


def get_job(client: TestClient, payer: Payer, job_id: str) -> dict[str, Any]:
    response = client.get(f"/v1/jobs/{job_id}", headers=payer.headers)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def accepted(client: TestClient, payer: Payer, **kwargs: Any) -> dict[str, Any]:
    response = submit(client, payer, **kwargs)
    assert response.status_code == 202, response.text
    body: dict[str, Any] = response.json()
    return body


def stored_files(settings: Settings, folder: str) -> list[str]:
    root = settings.resolved_storage_dir / folder
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()) if root.exists() else []


class TestSuccess:
    def test_runs_captures_once_and_serves_the_result(
        self,
        job_client: TestClient,
        make_payer: Callable[..., Payer],
        drain: Callable[..., None],
        engine: DbEngine,
        job_settings: Settings,
    ) -> None:
        payer = make_payer(5)
        job = accepted(job_client, payer)
        drain()
        done = get_job(job_client, payer, job["id"])
        assert done["status"] == "succeeded", done
        assert (done["tokens_held"], done["tokens_captured"], done["attempts"], done["error"]) == (1, 1, 1, None)
        assert done["result_url"] == f"/v1/jobs/{job['id']}/result"
        assert done["result_content_type"] == "image/png"
        assert done["started_at"] is not None
        assert done["finished_at"] >= done["started_at"]
        assert done["result_expires_at"] is not None
        assert set(done["timings_ms"]) >= {"decode", "detect", "swap", "encode"}

        row = job_row(engine, job["id"])
        hold = hold_row(engine, row.hold_id)
        assert (hold.status, hold.captured_amount) == ("captured", 1)
        assert capture_count(engine, row.hold_id) == 1
        assert balance(engine, payer.account_id) == (4, 0)
        # Inputs are deleted once processed.
        assert row.inputs_deleted_at is not None
        assert stored_files(job_settings, "inputs") == []

        result = job_client.get(done["result_url"], headers=payer.headers)
        assert result.status_code == 200
        assert result.headers["content-type"] == "image/png"
        assert result.headers["cache-control"] == "private, no-store"
        assert int(result.headers["content-length"]) == done["result_size_bytes"]
        image = Image.open(io.BytesIO(result.content))
        assert (image.format, image.size) == ("PNG", (256, 256))

    def test_a_duplicate_queue_entry_does_not_run_or_charge_again(
        self,
        job_client: TestClient,
        make_payer: Callable[..., Payer],
        drain: Callable[..., None],
        engine: DbEngine,
        redis_client: Redis,
        job_settings: Settings,
    ) -> None:
        payer = make_payer(5)
        job = accepted(job_client, payer)
        drain()
        first = job_row(engine, job["id"])
        # The queue delivers the job again (a lost acknowledgement, a sweeper's re-dispatch).
        queue.enqueue(redis_client, queue_name=job_settings.queue_name, public_id=job["id"], timeout_seconds=60)
        drain()
        again = job_row(engine, job["id"])
        assert (again.status, again.attempts, again.finished_at) == ("succeeded", 1, first.finished_at)
        assert capture_count(engine, again.hold_id) == 1
        assert balance(engine, payer.account_id) == (4, 0)

    def test_usage_counts_captured_tokens_by_day(
        self,
        job_client: TestClient,
        make_payer: Callable[..., Payer],
        drain: Callable[..., None],
    ) -> None:
        payer, other = make_payer(5), make_payer(5)
        accepted(job_client, payer)
        accepted(job_client, payer, target=blank_png())  # fails: not charged
        accepted(job_client, other)
        drain()
        usage = job_client.get("/v1/usage", headers=payer.headers)
        assert usage.status_code == 200, usage.text
        body = usage.json()
        today = datetime.now(UTC).date().isoformat()
        assert body["end"] == today
        assert body["total_tokens"] == 1
        assert body["items"] == [{"day": today, "operation": "swap.image", "jobs": 1, "tokens": 1}]
        # A range that ends before today has nothing.
        empty = job_client.get("/v1/usage", params={"start": "2020-01-01", "end": "2020-01-31"}, headers=payer.headers)
        assert empty.json()["items"] == []
        assert empty.json()["total_tokens"] == 0
        problem(
            job_client.get("/v1/usage", params={"start": "2021-01-02", "end": "2021-01-01"}, headers=payer.headers),
            422,
        )


class TestInputFailures:
    @pytest.mark.parametrize(
        ("kwargs", "code"),
        [({"target": blank_png()}, "no_target_face"), ({"source": blank_png()}, "no_source_face")],
        ids=["target", "source"],
    )
    def test_no_face_fails_and_releases(
        self,
        kwargs: dict[str, bytes],
        code: str,
        job_client: TestClient,
        make_payer: Callable[..., Payer],
        drain: Callable[..., None],
        engine: DbEngine,
        job_settings: Settings,
    ) -> None:
        payer = make_payer(5)
        job = accepted(job_client, payer, **kwargs)
        assert balance(engine, payer.account_id) == (5, 1)
        drain()
        done = get_job(job_client, payer, job["id"])
        assert done["status"] == "failed"
        assert done["error"]["code"] == code
        assert done["tokens_captured"] is None
        assert done["result_url"] is None
        assert done["attempts"] == 1  # an input error is not retried
        row = job_row(engine, job["id"])
        assert hold_row(engine, row.hold_id).status == "released"
        assert capture_count(engine, row.hold_id) == 0
        assert balance(engine, payer.account_id) == (5, 0)
        assert stored_files(job_settings, "inputs") == []
        problem(job_client.get(f"/v1/jobs/{job['id']}/result", headers=payer.headers), 410, "result_gone")


class TestCancel:
    def test_a_queued_job_is_canceled_released_and_never_run(
        self,
        job_client: TestClient,
        make_payer: Callable[..., Payer],
        drain: Callable[..., None],
        engine: DbEngine,
    ) -> None:
        payer = make_payer(5)
        job = accepted(job_client, payer)
        response = job_client.post(f"/v1/jobs/{job['id']}/cancel", headers=payer.headers)
        assert response.status_code == 200, response.text
        canceled = response.json()
        assert canceled["status"] == "canceled"
        assert canceled["error"]["code"] == "canceled"
        assert canceled["finished_at"] is not None
        row = job_row(engine, job["id"])
        assert hold_row(engine, row.hold_id).status == "released"
        assert balance(engine, payer.account_id) == (5, 0)

        drain()  # the queue entry is still there: the worker's claim refuses it
        after = job_row(engine, job["id"])
        assert (after.status, after.attempts, after.started_at) == ("canceled", 0, None)
        assert capture_count(engine, row.hold_id) == 0
        assert balance(engine, payer.account_id) == (5, 0)
        # Canceling again: it is already finished.
        problem(job_client.post(f"/v1/jobs/{job['id']}/cancel", headers=payer.headers), 409, "job_already_finished")

    @pytest.mark.parametrize("target", ["face", "blank"])
    def test_a_finished_job_cannot_be_canceled(
        self,
        target: str,
        job_client: TestClient,
        make_payer: Callable[..., Payer],
        drain: Callable[..., None],
        engine: DbEngine,
    ) -> None:
        payer = make_payer(5)
        job = accepted(job_client, payer, **({"target": blank_png()} if target == "blank" else {}))
        drain()
        before = job_row(engine, job["id"])
        assert before.status in ("succeeded", "failed")
        body = problem(job_client.post(f"/v1/jobs/{job['id']}/cancel", headers=payer.headers), 409)
        assert body["code"] == "job_already_finished"
        after = job_row(engine, job["id"])
        assert (after.status, after.tokens_captured, after.cancel_requested_at) == (
            before.status,
            before.tokens_captured,
            None,
        )
        assert balance(engine, payer.account_id) == ((4, 0) if target == "face" else (5, 0))

    def test_a_running_job_stops_and_is_not_charged(
        self,
        job_client: TestClient,
        make_payer: Callable[..., Payer],
        start_worker: Callable[..., Any],
        engine: DbEngine,
    ) -> None:
        payer = make_payer(5)
        start_worker(FACEMINT_DEBUG_JOB_DELAY_SECONDS="3")
        job = accepted(job_client, payer)
        wait_running(engine, job["id"], timeout=60)
        response = job_client.post(f"/v1/jobs/{job['id']}/cancel", headers=payer.headers)
        assert response.status_code == 200, response.text
        assert response.json()["status"] == "running"  # stopped at the next stage boundary, not now
        assert response.json()["cancel_requested_at"] is not None
        asked = time.monotonic()
        done = wait_terminal(engine, job["id"], timeout=15)
        stop_seconds = time.monotonic() - asked
        assert done.status == "canceled", done
        assert done.error_code == "canceled"
        assert done.tokens_captured is None
        assert done.result_location is None
        assert hold_row(engine, done.hold_id).status == "released"
        assert capture_count(engine, done.hold_id) == 0
        assert balance(engine, payer.account_id) == (5, 0)
        # The heartbeat (0.2 s) carries the cancel to the worker well before its 3 s pause ends.
        assert stop_seconds < 2.5, stop_seconds
        problem(job_client.get(f"/v1/jobs/{job['id']}/result", headers=payer.headers), 410, "result_gone")


class TestDelete:
    def test_deleting_a_finished_job_removes_files_and_keeps_the_money_trail(
        self,
        job_client: TestClient,
        make_payer: Callable[..., Payer],
        drain: Callable[..., None],
        engine: DbEngine,
        job_settings: Settings,
    ) -> None:
        payer = make_payer(5)
        job = accepted(job_client, payer)
        drain()
        assert len(stored_files(job_settings, "results")) == 1
        response = job_client.delete(f"/v1/jobs/{job['id']}", headers=payer.headers)
        assert response.status_code == 200, response.text
        deleted = response.json()
        assert deleted["files_deleted_at"] is not None
        assert deleted["result_url"] is None
        assert stored_files(job_settings, "results") == []
        assert stored_files(job_settings, "inputs") == []
        problem(job_client.get(f"/v1/jobs/{job['id']}/result", headers=payer.headers), 410, "result_gone")

        kept = get_job(job_client, payer, job["id"])
        assert (kept["status"], kept["tokens_captured"]) == ("succeeded", 1)
        row = job_row(engine, job["id"])
        assert capture_count(engine, row.hold_id) == 1
        assert balance(engine, payer.account_id) == (4, 0)
        # Deleting again changes nothing.
        again = job_client.delete(f"/v1/jobs/{job['id']}", headers=payer.headers)
        assert again.status_code == 200
        assert again.json()["files_deleted_at"] == deleted["files_deleted_at"]

    def test_a_queued_job_cannot_be_deleted(
        self, job_client: TestClient, make_payer: Callable[..., Payer], engine: DbEngine, job_settings: Settings
    ) -> None:
        payer = make_payer(5)
        job = accepted(job_client, payer)
        problem(job_client.delete(f"/v1/jobs/{job['id']}", headers=payer.headers), 409, "job_not_finished")
        problem(job_client.get(f"/v1/jobs/{job['id']}/result", headers=payer.headers), 409, "job_not_finished")
        row = job_row(engine, job["id"])
        assert (row.status, row.files_deleted_at) == ("queued", None)
        assert len(stored_files(job_settings, "inputs")) == 2


class TestFileExpiry:
    def test_an_expired_result_is_deleted_by_the_sweeper(
        self,
        job_client: TestClient,
        make_payer: Callable[..., Payer],
        drain: Callable[..., None],
        sweep: Callable[..., Any],
        engine: DbEngine,
        job_settings: Settings,
    ) -> None:
        payer = make_payer(5)
        job = accepted(job_client, payer)
        drain()
        assert len(stored_files(job_settings, "results")) == 1
        assert sweep().files_deleted == 0  # not expired yet
        assert len(stored_files(job_settings, "results")) == 1
        execute(engine, "UPDATE jobs SET result_expires_at = now() WHERE public_id = :id", id=job["id"])
        assert sweep().files_deleted == 1
        assert stored_files(job_settings, "results") == []
        problem(job_client.get(f"/v1/jobs/{job['id']}/result", headers=payer.headers), 410, "result_gone")
        kept = get_job(job_client, payer, job["id"])
        assert (kept["status"], kept["tokens_captured"], kept["result_url"]) == ("succeeded", 1, None)
        assert kept["files_deleted_at"] is not None
        assert capture_count(engine, job_row(engine, job["id"]).hold_id) == 1

    def test_inputs_of_a_canceled_job_are_deleted_by_the_sweeper(
        self,
        job_client: TestClient,
        make_payer: Callable[..., Payer],
        sweep: Callable[..., Any],
        engine: DbEngine,
        job_settings: Settings,
    ) -> None:
        payer = make_payer(5)
        job = accepted(job_client, payer)
        assert job_client.post(f"/v1/jobs/{job['id']}/cancel", headers=payer.headers).status_code == 200
        assert len(stored_files(job_settings, "inputs")) == 2
        sweep()
        assert stored_files(job_settings, "inputs") == []
        assert job_row(engine, job["id"]).inputs_deleted_at is not None


class TestPreferWait:
    def test_wait_returns_the_finished_job(
        self,
        job_client: TestClient,
        make_payer: Callable[..., Payer],
        start_worker: Callable[..., Any],
        engine: DbEngine,
    ) -> None:
        payer = make_payer(5)
        start_worker()
        # Warm-up: the first job also waits for the worker process to load its engine.
        first = submit(job_client, payer, headers={"Prefer": "wait=60"})
        assert first.status_code == 200, first.text
        started = time.monotonic()
        response = submit(job_client, payer, headers={"Prefer": "wait=10"})
        elapsed = time.monotonic() - started
        assert response.status_code == 200, response.text
        assert response.headers["Preference-Applied"] == "wait=10"
        body = response.json()
        assert (body["status"], body["tokens_captured"]) == ("succeeded", 1)
        assert body["result_url"] == f"/v1/jobs/{body['id']}/result"
        assert response.headers["X-Tokens-Held"] == "0"
        assert elapsed < 5, elapsed  # woken by the worker's notification, not by the timeout
        assert balance(engine, payer.account_id) == (3, 0)

    def test_wait_times_out_with_the_job_still_queued(
        self, job_settings: Settings, make_payer: Callable[..., Payer], engine: DbEngine
    ) -> None:
        payer = make_payer(5)
        settings = job_settings.model_copy(update={"prefer_wait_max_seconds": 1})
        with TestClient(create_app(settings)) as client:
            started = time.monotonic()
            response = submit(client, payer, headers={"Prefer": "respond-async, wait=30"})
            elapsed = time.monotonic() - started
        assert response.status_code == 202, response.text
        assert response.headers["Preference-Applied"] == "wait=1"  # capped at the configured ceiling
        assert response.json()["status"] == "queued"
        assert response.headers["X-Tokens-Held"] == "1"
        assert 0.9 <= elapsed < 5, elapsed
        assert balance(engine, payer.account_id) == (5, 1)


class TestList:
    def test_filters_and_cursor_pages(
        self,
        job_client: TestClient,
        make_payer: Callable[..., Payer],
    ) -> None:
        payer, other = make_payer(10), make_payer(10)
        ids = [accepted(job_client, payer)["id"] for _ in range(5)]
        accepted(job_client, other)
        for job_id in ids[:2]:
            assert job_client.post(f"/v1/jobs/{job_id}/cancel", headers=payer.headers).status_code == 200

        def listed(**params: Any) -> dict[str, Any]:
            response = job_client.get("/v1/jobs", params=params, headers=payer.headers)
            assert response.status_code == 200, response.text
            body: dict[str, Any] = response.json()
            return body

        everything = listed()
        assert [j["id"] for j in everything["items"]] == ids[::-1]  # newest first, only the caller's
        assert everything["next_cursor"] is None
        assert [j["id"] for j in listed(status="canceled")["items"]] == ids[:2][::-1]
        assert [j["id"] for j in listed(status="queued")["items"]] == ids[2:][::-1]
        assert listed(status="succeeded")["items"] == []
        assert listed(operation="swap.other")["items"] == []

        pages: list[str] = []
        cursor = None
        for _ in range(5):
            page = listed(limit=2, **({"cursor": cursor} if cursor else {}))
            pages.extend(j["id"] for j in page["items"])
            cursor = page["next_cursor"]
            if cursor is None:
                break
        assert pages == ids[::-1]
        queued_page = listed(status="queued", limit=2)
        assert [j["id"] for j in queued_page["items"]] == ids[3:][::-1]
        rest = listed(status="queued", limit=2, cursor=queued_page["next_cursor"])
        assert ([j["id"] for j in rest["items"]], rest["next_cursor"]) == ([ids[2]], None)

        problem(job_client.get("/v1/jobs", params={"status": "done"}, headers=payer.headers), 422)
        problem(
            job_client.get("/v1/jobs", params={"cursor": "not-a-cursor"}, headers=payer.headers), 422, "invalid_cursor"
        )


class TestCreditLots:
    def test_a_job_holds_its_expiring_grant_until_it_is_charged_and_the_sweep_expires_only_the_rest(
        self,
        job_client: TestClient,
        make_payer: Callable[..., Payer],
        drain: Callable[..., None],
        sweep: Callable[..., Any],
        engine: DbEngine,
        owner_engine: DbEngine,
        session: Session,
    ) -> None:
        payer = make_payer(2)  # paid tokens: priority 50, never expire
        grant = ledger.credit(
            session,
            account_id=payer.account_id,
            amount=3,
            source=LotSource.grant,
            priority=10,
            expires_at=datetime.now(UTC) + timedelta(days=1),
            idempotency_key="test-grant",
            request_hash=b"grant",
            tenant_id=payer.tenant_id,
            actor="test",
        )
        session.commit()
        (lot,) = lots.lots_of_transaction(session, transaction_id=grant.transaction_id)
        job = accepted(job_client, payer)  # one token, held from the grant (it burns first)
        with owner_engine.begin() as conn:  # the grant's time comes while the job waits
            conn.execute(text("UPDATE credit_lots SET expires_at = now() WHERE id = :id"), {"id": lot.lot_id})
        assert sweep().tokens_expired == 2
        assert balance(engine, payer.account_id) == (3, 1)
        drain()
        assert job_row(engine, job["id"]).status == "succeeded"
        assert balance(engine, payer.account_id) == (2, 0)  # the held grant token was charged, the paid ones kept
        assert sweep().tokens_expired == 0
        remaining = {r.remaining for r in lots.account_lots(session, account_ids=[payer.account_id])[payer.account_id]}
        assert remaining == {2}
