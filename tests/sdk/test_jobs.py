"""Swaps through the SDK on a live API with a real `facemint worker` (demo models): uploads from bytes, paths and
file objects, `run` (the server's `Prefer: wait`), `wait` (polling), downloads, a failed job, a replayed submit,
and the async client. The money is checked in the ledger: held at submit, captured once or released."""

from __future__ import annotations

import asyncio
import io
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from sqlalchemy.engine import Engine

from facemint.users.orm import Role
from facemint_client import AsyncFacemint, Facemint, JobFailed
from tests.jobs.conftest import SOURCE, TARGET, blank_png
from tests.sdk.conftest import MakePerson, balance

ClientFor = Callable[..., Facemint]
PNG = b"\x89PNG\r\n\x1a\n"

pytestmark = [pytest.mark.usefixtures("worker"), pytest.mark.slow]


def test_run_waits_on_the_server_and_charges_once(
    client_for: ClientFor, make_person: MakePerson, engine: Engine
) -> None:
    member = make_person(Role.member, tokens=5)
    sent: list[httpx.Request] = []
    with httpx.Client(event_hooks={"request": [sent.append]}) as http:
        own = client_for(member, http_client=http)
        job = own.jobs.run(SOURCE, TARGET, output_format="png", timeout=120)
        # One request: the server held its answer until the job finished (`Prefer: wait`), so nothing polled.
        assert [(r.method, r.url.path, r.headers.get("prefer")) for r in sent] == [("POST", "/v1/swaps", "wait=120")]
        result = own.jobs.download(job.id)
    assert job.status == "succeeded"
    assert job.tokens_captured == 1
    assert job.result_url == f"/v1/jobs/{job.id}/result"
    assert balance(engine, member.account_id) == (4, 0)
    assert result.startswith(PNG)
    assert len(result) == job.result_size_bytes


def test_submit_from_a_path_and_a_file_object_then_wait_and_download_to_a_file(
    client_for: ClientFor, make_person: MakePerson, tmp_path: Path
) -> None:
    own = client_for(make_person(Role.member, tokens=5))
    source = tmp_path / "face.png"
    source.write_bytes(SOURCE)
    submitted = own.jobs.submit(source, io.BytesIO(TARGET))
    assert submitted.status in ("queued", "running", "succeeded")
    job = own.jobs.wait(submitted.id, timeout=120, poll_interval=0.1)
    assert job.status == "succeeded"
    written = own.jobs.download_to(job.id, tmp_path / "out.png")
    assert written.read_bytes().startswith(PNG)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["face.png", "out.png"]  # no partial file left
    assert [j.id for j in own.jobs.list(status="succeeded")] == [job.id]


def test_a_failed_job_raises_with_its_code_and_costs_nothing(
    client_for: ClientFor, make_person: MakePerson, engine: Engine
) -> None:
    member = make_person(Role.member, tokens=3)
    own = client_for(member)
    with pytest.raises(JobFailed) as raised:
        own.jobs.run(blank_png(), TARGET, timeout=120)
    assert raised.value.code == "no_source_face"
    assert raised.value.job.status == "failed"
    assert raised.value.job.tokens_captured is None
    assert balance(engine, member.account_id) == (3, 0)


def test_a_replayed_submit_returns_the_first_job_and_holds_once(
    client_for: ClientFor, make_person: MakePerson, engine: Engine
) -> None:
    member = make_person(Role.member, tokens=2)
    own = client_for(member)
    first = own.jobs.submit(SOURCE, TARGET, idempotency_key="swap-1")
    again = own.jobs.submit(SOURCE, TARGET, idempotency_key="swap-1")
    assert again.id == first.id
    own.jobs.wait(first.id, timeout=120, poll_interval=0.1)
    assert balance(engine, member.account_id) == (1, 0)
    assert [j.id for j in own.jobs.list()] == [first.id]


def test_the_async_client_runs_a_swap_and_downloads_it(
    async_client_for: Callable[..., AsyncFacemint], make_person: MakePerson, engine: Engine
) -> None:
    member = make_person(Role.member, tokens=5)

    async def scenario() -> tuple[str, bytes, bool]:
        async with async_client_for(member) as own:
            submitted = await own.jobs.submit(SOURCE, TARGET, output_format="jpeg")
            job = await own.jobs.wait(submitted.id, timeout=120, poll_interval=0.1)
            listed = [j.id async for j in own.jobs.list()]
            return job.status, await own.jobs.download(job.id), listed == [job.id]

    status, result, listed = asyncio.run(scenario())
    assert status == "succeeded"
    assert result.startswith(b"\xff\xd8")  # JPEG
    assert listed
    assert balance(engine, member.account_id) == (4, 0)
