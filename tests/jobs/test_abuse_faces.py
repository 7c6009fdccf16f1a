"""The same-face rule, where the source face's embedding first exists: in the worker, between the engine's embedding
of the source and the swap (`on_source_face`). Its hash (`facemint.abuse.faces`) on the demo engine's embeddings:
copies of one photo share a bucket, distinct faces do not. Then real jobs through the API and the in-process
worker: a freeze stops the job before its swap and releases the account's other queued jobs; a flag lets it run."""

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
from sqlalchemy import select
from sqlalchemy.engine import Engine as DbEngine
from sqlalchemy.orm import Session

from facemint.abuse import faces
from facemint.abuse.orm import AbuseTrigger, RuleAction, RuleKind
from facemint.users.orm import User
from inference.models.demo import draw_demo_face
from tests.factories import add_abuse_rule
from tests.jobs.conftest import SOURCE, TARGET, Payer, balance, job_row, submit
from tests.jobs.video_job_helpers import accepted_video, clip_bytes


class Embedded(Exception):
    """Stops a swap once the source face is embedded: the hook is all these tests need of it."""


def face_image(identity: int, *, size: int = 256, x: int = 64, y: int = 64, side: int = 128) -> np.ndarray:
    image = np.zeros((size, size, 3), dtype=np.uint8)
    draw_demo_face(image, x, y, side, identity=identity)
    return image


def encoded(image: np.ndarray, fmt: str = "PNG", **options: Any) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image[:, :, ::-1]).save(buffer, format=fmt, **options)
    return buffer.getvalue()


def copies(identity: int) -> list[bytes]:
    """One photo as it might be sent again: re-encoded at falling JPEG qualities, resized, re-framed, rescaled."""
    image = face_image(identity)
    resized = np.array(Image.fromarray(image).resize((320, 320)))
    shrunk = np.array(Image.fromarray(image).resize((200, 200)))
    return [
        encoded(image),
        *(encoded(image, "JPEG", quality=q) for q in (95, 85, 75, 60, 40)),
        encoded(resized),
        encoded(shrunk, "JPEG", quality=80),
        encoded(face_image(identity, size=300, x=90, y=70)),
        encoded(face_image(identity, side=140)),
    ]


def embedding(engine: Any, source: bytes) -> np.ndarray:
    seen: list[np.ndarray] = []

    def hook(vector: np.ndarray) -> None:
        seen.append(np.array(vector))
        raise Embedded

    with pytest.raises(Embedded):
        engine.swap(source, TARGET, on_source_face=hook)
    return seen[0]


class TestFaceHash:
    def test_copies_of_one_photo_share_a_band_and_distinct_faces_share_none(self, demo_engine: Any) -> None:
        for identity in range(40):
            bands = [faces.face_bands(embedding(demo_engine, source)) for source in copies(identity)]
            # Some band has the same value in every copy: they all count as one face.
            assert any(len({b[i] for b in bands}) == 1 for i in range(faces.BANDS)), identity
        distinct = [faces.face_bands(embedding(demo_engine, encoded(face_image(n)))) for n in range(100, 200)]
        for i in range(faces.BANDS):
            assert len({b[i] for b in distinct}) == len(distinct), f"two of 100 distinct faces share band {i}"

    def test_the_hash_is_fixed_and_ignores_the_embeddings_scale(self) -> None:
        vector = np.random.default_rng(3).standard_normal(512).astype(np.float32)
        bands = faces.face_bands(vector)
        assert bands == faces.face_bands(vector * 7.5)
        assert len(bands) == faces.BANDS
        assert all(len(b) == 6 for b in bands)
        with pytest.raises(ValueError):
            faces.face_bands(np.zeros(512, dtype=np.float32))


def same_face_rule(session: Session, redis: Redis, payer: Payer, action: RuleAction) -> Any:
    return add_abuse_rule(
        session,
        redis,
        tenant_id=payer.tenant_id,
        kind=RuleKind.same_face_per_window,
        action=action,
        max_jobs=2,
        window_seconds=3600,
    )


def accepted(client: TestClient, payer: Payer, source: bytes) -> str:
    response = submit(client, payer, source=source)
    assert response.status_code == 202, response.text
    job_id: str = response.json()["id"]
    return job_id


class TestInTheWorker:
    def test_a_freeze_stops_the_job_before_its_swap_and_releases_the_accounts_queued_jobs(
        self,
        job_client: TestClient,
        session: Session,
        redis_client: Redis,
        make_payer: Callable[..., Payer],
        engine: DbEngine,
        drain: Callable[..., None],
    ) -> None:
        payer = make_payer(10)
        rule = same_face_rule(session, redis_client, payer, RuleAction.freeze)
        # Three copies of one photo, then a different face: all queued before a worker runs.
        same = copies(7)
        ids = [accepted(job_client, payer, source) for source in (same[0], same[3], same[6])]
        other = accepted(job_client, payer, encoded(face_image(8)))
        drain()
        rows = [job_row(engine, job_id) for job_id in [*ids, other]]
        assert [(r.status, r.error_code) for r in rows] == [
            ("succeeded", None),
            ("succeeded", None),
            ("canceled", "account_frozen"),  # stopped before its swap
            ("canceled", "account_frozen"),  # released while queued, never claimed
        ]
        assert (rows[2].attempts, rows[2].result_location, rows[3].attempts) == (1, None, 0)
        assert balance(engine, payer.account_id) == (8, 0)  # two swaps charged, nothing held
        session.expire_all()
        assert session.get(User, payer.user_id).status == "frozen"  # type: ignore[union-attr]
        (trigger,) = session.scalars(select(AbuseTrigger).where(AbuseTrigger.user_id == payer.user_id)).all()
        assert (trigger.rule_id, trigger.kind, trigger.observed, trigger.job_public_id) == (
            rule.id,
            "same_face_per_window",
            {"count": 3, "limit": 2},
            ids[2],
        )

    def test_a_flag_is_recorded_and_the_job_runs(
        self,
        job_client: TestClient,
        session: Session,
        redis_client: Redis,
        make_payer: Callable[..., Payer],
        engine: DbEngine,
        drain: Callable[..., None],
    ) -> None:
        payer = make_payer(10)
        same_face_rule(session, redis_client, payer, RuleAction.flag)
        same = copies(9)
        ids = [accepted(job_client, payer, source) for source in same[:4]]
        drain()
        assert [job_row(engine, job_id).status for job_id in ids] == ["succeeded"] * 4
        recorded = session.scalars(select(AbuseTrigger).where(AbuseTrigger.user_id == payer.user_id)).all()
        assert [(t.action, t.job_public_id, t.observed["count"]) for t in recorded] == [("flag", ids[2], 3)]

    def test_distinct_faces_in_a_window_never_trigger(
        self,
        job_client: TestClient,
        session: Session,
        redis_client: Redis,
        make_payer: Callable[..., Payer],
        engine: DbEngine,
        drain: Callable[..., None],
    ) -> None:
        payer = make_payer(10)
        same_face_rule(session, redis_client, payer, RuleAction.freeze)
        ids = [accepted(job_client, payer, encoded(face_image(identity))) for identity in range(20, 26)]
        drain()
        assert [job_row(engine, job_id).status for job_id in ids] == ["succeeded"] * 6
        assert session.scalars(select(AbuseTrigger)).all() == []

    def test_a_video_is_checked_before_its_first_frame(
        self,
        job_client: TestClient,
        session: Session,
        redis_client: Redis,
        make_payer: Callable[..., Payer],
        engine: DbEngine,
        drain: Callable[..., None],
        tmp_path: Path,
    ) -> None:
        payer = make_payer(100)
        add_abuse_rule(
            session,
            redis_client,
            tenant_id=payer.tenant_id,
            kind=RuleKind.same_face_per_window,
            action=RuleAction.freeze,
            max_jobs=1,
            window_seconds=3600,
        )
        image_job = accepted(job_client, payer, SOURCE)
        video_job = accepted_video(job_client, payer, clip_bytes(tmp_path, seconds=1))  # the same source face
        drain()
        assert job_row(engine, image_job).status == "succeeded"
        row = job_row(engine, video_job)
        assert (row.status, row.error_code, row.frames_done, row.tokens_captured) == (
            "canceled",
            "account_frozen",
            None,
            None,
        )
