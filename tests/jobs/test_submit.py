"""POST /v1/swaps: what an accepted submit answers and records, what a refused one leaves behind (nothing),
idempotent replays, input validation, and the server-side price book."""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from redis import Redis
from sqlalchemy.engine import Engine as DbEngine

from facemint.app import create_app
from facemint.config import Settings
from facemint.users.orm import Role
from tests.jobs.conftest import (
    SOURCE,
    TARGET,
    Payer,
    balance,
    counts,
    face_png,
    hold_row,
    job_row,
    problem,
    submit,
)


def noise_png(size: int) -> bytes:
    """A PNG that does not compress: about 3 bytes per pixel."""
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (size, size, 3), dtype=np.uint8)).save(buffer, "PNG")
    return buffer.getvalue()


def stored_inputs(settings: Settings) -> list[Path]:
    root = settings.resolved_storage_dir / "inputs"
    return sorted(p for p in root.rglob("*") if p.is_file()) if root.exists() else []


def queued_ids(redis: Redis, settings: Settings) -> list[str]:
    return [i.decode() for i in redis.lrange(f"rq:queue:{settings.queue_name}", 0, -1)]


def assert_nothing_recorded(engine: DbEngine, payer: Payer, settings: Settings, funded: int) -> None:
    assert counts(engine, payer.user_id) == (0, 0)
    assert balance(engine, payer.account_id) == (funded, 0)
    assert stored_inputs(settings) == []


class TestAccepted:
    def test_202_with_headers_location_hold_and_queue_entry(
        self,
        job_client: TestClient,
        make_payer: Callable[..., Payer],
        engine: DbEngine,
        redis_client: Redis,
        job_settings: Settings,
    ) -> None:
        payer = make_payer(5)
        response = submit(job_client, payer, data={"faces": "largest", "output_format": "jpeg", "quality": "80"})
        assert response.status_code == 202, response.text
        job = response.json()
        assert response.headers["X-Tokens-Held"] == "1"
        assert response.headers["X-Balance-Available"] == "4"
        assert response.headers["Location"] == f"/v1/jobs/{job['id']}"
        assert "Idempotent-Replayed" not in response.headers
        assert job["status"] == "queued"
        assert (job["tokens_held"], job["tokens_captured"], job["price_version"], job["tokens_per_unit"]) == (
            1,
            None,
            1,
            1,
        )
        assert job["options"]["output_format"] == "jpeg"
        assert job["result_url"] is None
        # The Location answers the same job.
        assert job_client.get(response.headers["Location"], headers=payer.headers).json() == job

        row = job_row(engine, job["id"])
        assert row.dispatched_at is not None
        assert row.attempts == 0
        assert (hold_row(engine, row.hold_id).status, hold_row(engine, row.hold_id).amount) == ("held", 1)
        assert balance(engine, payer.account_id) == (5, 1)
        assert queued_ids(redis_client, job_settings) == [job["id"]]
        assert len(stored_inputs(job_settings)) == 2  # source and target, nothing else

    def test_the_last_token_can_be_spent(
        self, job_client: TestClient, make_payer: Callable[..., Payer], engine: DbEngine
    ) -> None:
        payer = make_payer(1)
        response = submit(job_client, payer)
        assert response.status_code == 202, response.text
        assert response.headers["X-Balance-Available"] == "0"
        assert balance(engine, payer.account_id) == (1, 1)


class TestRefused:
    def test_402_says_what_is_needed_and_records_nothing(
        self,
        job_client: TestClient,
        make_payer: Callable[..., Payer],
        engine: DbEngine,
        redis_client: Redis,
        job_settings: Settings,
    ) -> None:
        broke = make_payer(0)
        body = problem(submit(job_client, broke), 402, "insufficient_tokens")
        assert (body["needed"], body["available"]) == (1, 0)
        assert_nothing_recorded(engine, broke, job_settings, 0)
        assert queued_ids(redis_client, job_settings) == []

    def test_402_after_the_balance_is_held(
        self,
        job_client: TestClient,
        make_payer: Callable[..., Payer],
        engine: DbEngine,
        redis_client: Redis,
        job_settings: Settings,
    ) -> None:
        payer = make_payer(1)
        first = submit(job_client, payer)
        assert first.status_code == 202
        body = problem(submit(job_client, payer), 402, "insufficient_tokens")
        assert (body["needed"], body["available"]) == (1, 0)
        assert counts(engine, payer.user_id) == (1, 1)
        assert balance(engine, payer.account_id) == (1, 1)
        assert queued_ids(redis_client, job_settings) == [first.json()["id"]]

    def test_frozen_user_is_403(
        self,
        job_client: TestClient,
        make_payer: Callable[..., Payer],
        staff_headers: dict[str, str],
        engine: DbEngine,
        job_settings: Settings,
    ) -> None:
        payer = make_payer(3)
        frozen = job_client.post(f"/admin/v1/users/{payer.user_id}/freeze", headers=staff_headers)
        assert frozen.status_code == 200, frozen.text
        problem(submit(job_client, payer), 403, "user_frozen")
        assert_nothing_recorded(engine, payer, job_settings, 3)

    def test_suspended_tenant_is_403(
        self,
        job_client: TestClient,
        make_payer: Callable[..., Payer],
        staff_headers: dict[str, str],
        engine: DbEngine,
        job_settings: Settings,
    ) -> None:
        payer = make_payer(3)
        suspended = job_client.post(f"/admin/v1/tenants/{payer.tenant_id}/suspend", headers=staff_headers)
        assert suspended.status_code == 200, suspended.text
        problem(submit(job_client, payer), 403, "tenant_suspended")
        assert_nothing_recorded(engine, payer, job_settings, 3)

    def test_missing_idempotency_key_is_400(
        self, job_client: TestClient, make_payer: Callable[..., Payer], engine: DbEngine, job_settings: Settings
    ) -> None:
        payer = make_payer(3)
        response = job_client.post(
            "/v1/swaps",
            headers=payer.headers,
            files={"source": ("s.png", SOURCE, "image/png"), "target": ("t.png", TARGET, "image/png")},
        )
        problem(response, 400, "idempotency_key_required")
        problem(submit(job_client, payer, key="k" * 256), 400, "invalid_idempotency_key")
        assert_nothing_recorded(engine, payer, job_settings, 3)

    def test_staff_cannot_submit(self, job_client: TestClient, staff_headers: dict[str, str]) -> None:
        """Platform staff have no token account: refused before anything is stored."""
        response = job_client.post(
            "/v1/swaps",
            headers={**staff_headers, "Idempotency-Key": "staff-1"},
            files={"source": ("s.png", SOURCE, "image/png"), "target": ("t.png", TARGET, "image/png")},
        )
        problem(response, 422, "invalid_swap_request")


class TestIdempotency:
    def test_same_key_same_body_replays_the_job(
        self,
        job_client: TestClient,
        make_payer: Callable[..., Payer],
        engine: DbEngine,
        redis_client: Redis,
        job_settings: Settings,
    ) -> None:
        payer = make_payer(5)
        first = submit(job_client, payer, key="k-1", data={"faces": "all"})
        assert first.status_code == 202, first.text
        again = submit(job_client, payer, key="k-1", data={"faces": "all"})
        assert again.status_code == 200, again.text
        assert again.headers["Idempotent-Replayed"] == "true"
        assert again.json()["id"] == first.json()["id"]
        assert again.headers["Location"] == first.headers["Location"]
        assert again.headers["X-Tokens-Held"] == "1"
        assert counts(engine, payer.user_id) == (1, 1)
        assert balance(engine, payer.account_id) == (5, 1)
        assert queued_ids(redis_client, job_settings) == [first.json()["id"]]
        assert len(stored_inputs(job_settings)) == 2  # the replay's uploads were not kept

    def test_the_key_is_per_user(
        self, job_client: TestClient, make_payer: Callable[..., Payer], engine: DbEngine
    ) -> None:
        alice, bob = make_payer(2), make_payer(2)
        a = submit(job_client, alice, key="shared")
        b = submit(job_client, bob, key="shared")
        assert (a.status_code, b.status_code) == (202, 202)
        assert a.json()["id"] != b.json()["id"]
        assert counts(engine, alice.user_id) == (1, 1)
        assert counts(engine, bob.user_id) == (1, 1)

    @pytest.mark.parametrize(
        "changed",
        [
            {"target": face_png(3)},
            {"source": face_png(4)},
            {"data": {"faces": "all"}},
            {"data": {"output_format": "webp"}},
            {"data": {"webhook_url": "http://127.0.0.1:9/hook"}},
        ],
        ids=["target", "source", "faces", "format", "webhook"],
    )
    def test_same_key_different_body_is_409(
        self,
        changed: dict[str, Any],
        job_client: TestClient,
        make_payer: Callable[..., Payer],
        engine: DbEngine,
        job_settings: Settings,
    ) -> None:
        payer = make_payer(5)
        first = submit(job_client, payer, key="k-2")
        assert first.status_code == 202, first.text
        problem(submit(job_client, payer, key="k-2", **changed), 409, "idempotency_key_reused")
        assert counts(engine, payer.user_id) == (1, 1)
        assert balance(engine, payer.account_id) == (5, 1)
        assert len(stored_inputs(job_settings)) == 2


INVALID = [
    ({"source": b"hello, not an image"}, 415, "unsupported_image_format"),
    ({"target": b"GIF89a" + b"\x00" * 64}, 415, "unsupported_image_format"),
    ({"source": b""}, 422, "invalid_image"),
    ({"data": {"faces": "bogus"}}, 422, "invalid_face_selection"),
    ({"data": {"faces": "index:"}}, 422, "invalid_face_selection"),
    ({"data": {"faces": "reference"}}, 422, None),  # reference mode without a reference image
    ({"data": {"output_format": "gif"}}, 422, "invalid_output_format"),
    ({"data": {"output_format": "bmp"}}, 422, "invalid_output_format"),
    ({"data": {"threshold": "2"}}, 422, "validation_error"),
    ({"data": {"quality": "0"}}, 422, "validation_error"),
    ({"data": {"webhook_url": "http://169.254.169.254/latest/meta-data"}}, 422, "invalid_webhook_url"),
    ({"data": {"webhook_url": "http://10.0.0.1/hook"}}, 422, "invalid_webhook_url"),
    ({"data": {"webhook_url": "http://[::1]:8080/hook"}}, 422, "invalid_webhook_url"),
    ({"data": {"webhook_url": "file:///etc/passwd"}}, 422, "invalid_webhook_url"),
    ({"headers": {"Prefer": "wait=soon"}}, 400, "invalid_prefer_header"),
]


@pytest.mark.parametrize(("change", "status", "code"), INVALID, ids=[f"{c[2]}-{i}" for i, c in enumerate(INVALID)])
def test_invalid_input_is_a_problem_and_holds_nothing(
    change: dict[str, Any],
    status: int,
    code: str | None,
    job_client: TestClient,
    make_payer: Callable[..., Payer],
    engine: DbEngine,
    job_settings: Settings,
) -> None:
    payer = make_payer(3)
    problem(submit(job_client, payer, **change), status, code)
    assert_nothing_recorded(engine, payer, job_settings, 3)


def test_missing_target_is_422(
    job_client: TestClient, make_payer: Callable[..., Payer], engine: DbEngine, job_settings: Settings
) -> None:
    payer = make_payer(3)
    response = job_client.post(
        "/v1/swaps",
        headers={**payer.headers, "Idempotency-Key": "no-target"},
        files={"source": ("s.png", SOURCE, "image/png")},
    )
    body = problem(response, 422, "invalid_swap_request")
    assert "target" in body["detail"]
    assert_nothing_recorded(engine, payer, job_settings, 3)


def test_reference_without_reference_mode_is_422(
    job_client: TestClient, make_payer: Callable[..., Payer], engine: DbEngine, job_settings: Settings
) -> None:
    payer = make_payer(3)
    response = job_client.post(
        "/v1/swaps",
        headers={**payer.headers, "Idempotency-Key": "stray-reference"},
        files={
            "source": ("s.png", SOURCE, "image/png"),
            "target": ("t.png", TARGET, "image/png"),
            "reference": ("r.png", SOURCE, "image/png"),
        },
    )
    problem(response, 422, "invalid_swap_request")
    assert_nothing_recorded(engine, payer, job_settings, 3)


def test_reference_mode_with_a_reference_is_accepted(
    job_client: TestClient, make_payer: Callable[..., Payer], engine: DbEngine
) -> None:
    payer = make_payer(3)
    response = job_client.post(
        "/v1/swaps",
        headers={**payer.headers, "Idempotency-Key": "with-reference"},
        files={
            "source": ("s.png", SOURCE, "image/png"),
            "target": ("t.png", TARGET, "image/png"),
            "reference": ("r.png", TARGET, "image/png"),
        },
        data={"faces": "reference"},
    )
    assert response.status_code == 202, response.text
    assert response.json()["options"]["has_reference"] is True


class TestOversized:
    @pytest.fixture
    def small_client(self, job_settings: Settings) -> Any:
        settings = job_settings.model_copy(update={"max_image_bytes": 2048, "max_video_bytes": 4096})
        with TestClient(create_app(settings)) as client:
            yield client

    def test_an_oversized_image_is_413(
        self, small_client: TestClient, make_payer: Callable[..., Payer], engine: DbEngine, job_settings: Settings
    ) -> None:
        payer = make_payer(3)
        noisy = noise_png(64)
        assert 2048 < len(noisy) < 20_000
        body = problem(submit(small_client, payer, source=noisy), 413, "image_too_large")
        assert body["field"] == "source"
        assert_nothing_recorded(engine, payer, job_settings, 3)

    def test_an_oversized_request_is_413_from_its_length(
        self, small_client: TestClient, make_payer: Callable[..., Payer], engine: DbEngine, job_settings: Settings
    ) -> None:
        payer = make_payer(3)
        huge = SOURCE + b"\x00" * (200 * 1024)
        problem(submit(small_client, payer, source=huge), 413, "payload_too_large")
        assert_nothing_recorded(engine, payer, job_settings, 3)


class TestPriceBook:
    def test_a_new_price_applies_to_the_next_job_only(
        self,
        job_client: TestClient,
        make_payer: Callable[..., Payer],
        staff_headers: dict[str, str],
        engine: DbEngine,
        drain: Callable[..., None],
    ) -> None:
        payer = make_payer(10)
        before = submit(job_client, payer)
        assert before.status_code == 202
        created = job_client.post(
            "/admin/v1/prices", json={"operation": "swap.image", "tokens_per_unit": 3}, headers=staff_headers
        )
        assert created.status_code == 201, created.text
        assert (created.json()["version"], created.json()["tokens_per_unit"]) == (2, 3)
        current = job_client.get("/admin/v1/prices", params={"current": "true"}, headers=staff_headers).json()
        assert [(p["operation"], p["version"], p["tokens_per_unit"]) for p in current] == [
            ("enhance.image", 1, 1),
            ("enhance.video", 1, 5),
            ("swap.image", 2, 3),
            ("swap.video", 1, 10),
        ]

        after = submit(job_client, payer)
        assert after.status_code == 202, after.text
        assert after.headers["X-Tokens-Held"] == "3"
        assert after.headers["X-Balance-Available"] == "6"
        job = after.json()
        assert (job["tokens_held"], job["price_version"], job["tokens_per_unit"]) == (3, 2, 3)
        assert job_row(engine, job["id"]).price_version == 2
        assert balance(engine, payer.account_id) == (10, 4)

        drain()
        old = job_client.get(f"/v1/jobs/{before.json()['id']}", headers=payer.headers).json()
        new = job_client.get(f"/v1/jobs/{job['id']}", headers=payer.headers).json()
        assert (old["status"], old["tokens_captured"], old["price_version"]) == ("succeeded", 1, 1)
        assert (new["status"], new["tokens_captured"], new["price_version"]) == ("succeeded", 3, 2)
        assert balance(engine, payer.account_id) == (6, 0)

    def test_a_price_above_the_balance_is_402(
        self,
        job_client: TestClient,
        make_payer: Callable[..., Payer],
        staff_headers: dict[str, str],
        engine: DbEngine,
        job_settings: Settings,
    ) -> None:
        payer = make_payer(2)
        created = job_client.post(
            "/admin/v1/prices", json={"operation": "swap.image", "tokens_per_unit": 3}, headers=staff_headers
        )
        assert created.status_code == 201
        body = problem(submit(job_client, payer), 402, "insufficient_tokens")
        assert (body["needed"], body["available"]) == (3, 2)
        assert_nothing_recorded(engine, payer, job_settings, 2)

    @pytest.mark.parametrize("role", [Role.member, Role.tenant_admin])
    def test_tenant_users_cannot_set_prices(
        self, role: Role, job_client: TestClient, make_payer: Callable[..., Payer], staff_headers: dict[str, str]
    ) -> None:
        payer = make_payer(1, role=role)
        response = job_client.post(
            "/admin/v1/prices", json={"operation": "swap.image", "tokens_per_unit": 3}, headers=payer.headers
        )
        problem(response, 403)
        current = job_client.get("/admin/v1/prices", params={"current": "true"}, headers=staff_headers).json()
        assert [(p["version"], p["tokens_per_unit"]) for p in current if p["operation"] == "swap.image"] == [(1, 1)]

    def test_an_unknown_operation_cannot_be_priced(self, job_client: TestClient, staff_headers: dict[str, str]) -> None:
        response = job_client.post(
            "/admin/v1/prices", json={"operation": "swap.videoo", "tokens_per_unit": 3}, headers=staff_headers
        )
        assert response.status_code in (404, 422), response.text
        assert response.headers["content-type"] == "application/problem+json"


def test_a_plain_image_swap_hashes_as_before_videos_existed() -> None:
    """A client that retries across the deploy that added videos and processors, with the same Idempotency-Key,
    gets its replay: the request hash of a plain image swap is the one the earlier release computed."""
    import hashlib

    from billing.ledger.service import request_hash
    from facemint.jobs.submission import SwapSubmission

    files = {"source": SOURCE, "target": TARGET}
    before = {"faces": "largest", "threshold": 0.5, "has_reference": False, "output_format": "png", "quality": 90}
    now = SwapSubmission(
        public_id="job_0", files=files, options={**before, "processors": ["face_swapper"]}, webhook_url=None
    )
    earlier = request_hash(
        {
            "operation": "swap.image",
            "options": before,
            "webhook_url": None,
            "files": {name: hashlib.sha256(data).hexdigest() for name, data in sorted(files.items())},
        }
    )
    assert now.request_hash == earlier
    enhanced = SwapSubmission(
        public_id="job_0",
        files=files,
        options={**before, "processors": ["face_swapper", "face_enhancer"]},
        webhook_url=None,
    )
    assert enhanced.request_hash != earlier
