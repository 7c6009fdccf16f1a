"""Who may see and touch a job: only the user who submitted it. Anyone else (a colleague, their tenant admin,
another tenant, staff) gets the same 404 as for a job that does not exist, and changes nothing; scopes gate each
endpoint with 403."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.engine import Engine as DbEngine
from sqlalchemy.orm import Session

from facemint.auth.scopes import Scope
from facemint.config import Settings
from facemint.tenants.orm import Tenant
from facemint.users.orm import Role, User
from tests.factories import bearer, issue_key
from tests.jobs.conftest import Payer, balance, counts, hold_row, job_row, problem, submit


def accepted(client: TestClient, payer: Payer) -> str:
    response = submit(client, payer)
    assert response.status_code == 202, response.text
    job_id: str = response.json()["id"]
    return job_id


def touch_everything(client: TestClient, headers: dict[str, str], job_id: str) -> list[Any]:
    return [
        client.get(f"/v1/jobs/{job_id}", headers=headers),
        client.get(f"/v1/jobs/{job_id}/result", headers=headers),
        client.get(f"/v1/jobs/{job_id}/webhooks", headers=headers),
        client.post(f"/v1/jobs/{job_id}/cancel", headers=headers),
        client.delete(f"/v1/jobs/{job_id}", headers=headers),
    ]


@pytest.fixture
def owner_jobs(
    job_client: TestClient, make_payer: Callable[..., Payer], drain: Callable[..., None]
) -> tuple[Payer, str, str]:
    """A payer with one finished job (a result on disk) and one queued job."""
    owner = make_payer(5)
    finished = accepted(job_client, owner)
    drain()
    queued = accepted(job_client, owner)
    return owner, finished, queued


@pytest.mark.parametrize("who", ["same-tenant member", "same-tenant admin", "other tenant", "staff"])
def test_anyone_else_gets_404_everywhere_and_changes_nothing(
    who: str,
    owner_jobs: tuple[Payer, str, str],
    job_client: TestClient,
    make_payer: Callable[..., Payer],
    session: Session,
    staff_headers: dict[str, str],
    engine: DbEngine,
    job_settings: Settings,
) -> None:
    owner, finished, queued = owner_jobs
    tenant = session.get_one(Tenant, owner.tenant_id)
    headers = {
        "same-tenant member": lambda: make_payer(5, tenant=tenant).headers,
        "same-tenant admin": lambda: make_payer(5, tenant=tenant, role=Role.tenant_admin).headers,
        "other tenant": lambda: make_payer(5).headers,
        "staff": lambda: staff_headers,
    }[who]()
    missing = problem(job_client.get("/v1/jobs/job_000000000000000000000000", headers=headers), 404, "job_not_found")
    for job_id in (finished, queued):
        for response in touch_everything(job_client, headers, job_id):
            body = problem(response, 404, "job_not_found")
            assert body["detail"] == missing["detail"]  # no oracle: the same answer as a job that does not exist
        listed = job_client.get("/v1/jobs", headers=headers).json()["items"]
        assert job_id not in {j["id"] for j in listed}

    # Nothing moved: the queued job is still queued and held, the finished one still has its files.
    assert (job_row(engine, queued).status, job_row(engine, queued).cancel_requested_at) == ("queued", None)
    assert hold_row(engine, job_row(engine, queued).hold_id).status == "held"
    assert job_row(engine, finished).files_deleted_at is None
    assert balance(engine, owner.account_id) == (4, 1)
    result = job_client.get(f"/v1/jobs/{finished}/result", headers=owner.headers)
    assert result.status_code == 200
    assert result.content.startswith(b"\x89PNG")
    assert job_client.get(f"/v1/jobs/{queued}", headers=owner.headers).status_code == 200


def test_usage_is_the_callers_own(
    owner_jobs: tuple[Payer, str, str], job_client: TestClient, make_payer: Callable[..., Payer], session: Session
) -> None:
    owner, _, _ = owner_jobs
    colleague = make_payer(5, tenant=session.get_one(Tenant, owner.tenant_id))
    assert job_client.get("/v1/usage", headers=owner.headers).json()["total_tokens"] == 1
    assert job_client.get("/v1/usage", headers=colleague.headers).json()["total_tokens"] == 0


def scoped_headers(session: Session, settings: Settings, payer: Payer, scopes: set[Scope]) -> dict[str, str]:
    user = session.get_one(User, payer.user_id)
    return bearer(issue_key(session, settings, user, scopes=sorted(scopes)))


ALL_V1 = {Scope.swaps_write, Scope.jobs_read, Scope.jobs_write, Scope.usage_read, Scope.balance_read}


def test_a_key_without_swaps_write_cannot_submit(
    job_client: TestClient,
    make_payer: Callable[..., Payer],
    session: Session,
    engine: DbEngine,
    job_settings: Settings,
) -> None:
    payer = make_payer(5)
    headers = scoped_headers(session, job_settings, payer, ALL_V1 - {Scope.swaps_write})
    reader = Payer(payer.user_id, payer.tenant_id, payer.account_id, headers["Authorization"].split(" ", 1)[1])
    problem(submit(job_client, reader), 403, "insufficient_scope")
    assert counts(engine, payer.user_id) == (0, 0)
    assert balance(engine, payer.account_id) == (5, 0)
    assert not (job_settings.resolved_storage_dir / "inputs").exists() or not any(
        (job_settings.resolved_storage_dir / "inputs").rglob("*")
    )


@pytest.mark.parametrize(
    ("missing", "method", "path"),
    [
        (Scope.jobs_read, "GET", "/v1/jobs/{id}"),
        (Scope.jobs_read, "GET", "/v1/jobs"),
        (Scope.jobs_read, "GET", "/v1/jobs/{id}/result"),
        (Scope.jobs_read, "GET", "/v1/jobs/{id}/webhooks"),
        (Scope.jobs_write, "POST", "/v1/jobs/{id}/cancel"),
        (Scope.jobs_write, "DELETE", "/v1/jobs/{id}"),
        (Scope.usage_read, "GET", "/v1/usage"),
    ],
)
def test_each_job_endpoint_needs_its_scope(
    missing: Scope,
    method: str,
    path: str,
    owner_jobs: tuple[Payer, str, str],
    job_client: TestClient,
    session: Session,
    engine: DbEngine,
    job_settings: Settings,
) -> None:
    owner, finished, queued = owner_jobs
    headers = scoped_headers(session, job_settings, owner, ALL_V1 - {missing})
    job_id = queued if "cancel" in path else finished
    problem(job_client.request(method, path.format(id=job_id), headers=headers), 403, "insufficient_scope")
    assert job_row(engine, queued).status == "queued"
    assert job_row(engine, finished).files_deleted_at is None
    # The owner's full key still works.
    assert job_client.get(f"/v1/jobs/{job_id}", headers=owner.headers).status_code == 200


def test_no_credentials_is_401(owner_jobs: tuple[Payer, str, str], job_client: TestClient) -> None:
    _, finished, _ = owner_jobs
    problem(job_client.get(f"/v1/jobs/{finished}"), 401)
    problem(job_client.get(f"/v1/jobs/{finished}/result"), 401)
    response = job_client.post(
        "/v1/swaps",
        headers={"Idempotency-Key": "anonymous"},
        files={"source": ("s.png", b"x", "image/png"), "target": ("t.png", b"x", "image/png")},
    )
    problem(response, 401)


@pytest.mark.parametrize(
    ("query", "status"),
    [
        ("created_after=2000-01-01T17:08:56-20:45", 200),  # an offset Postgres refuses, converted to UTC first
        ("created_after=2000-01-01T17:08:56%2B23:59", 200),
        ("created_before=0001-01-01T00:00:00%2B05:00", 422),  # before year 1 once in UTC
        ("created_after=9999-12-31T23:59:59-05:00", 422),  # after year 9999 once in UTC
        ("created_after=2000-13-01T00:00:00Z", 422),
    ],
)
def test_job_list_times_outside_what_postgres_takes_answer_422_not_500(
    job_client: TestClient, make_payer: Callable[..., Payer], query: str, status: int
) -> None:
    payer = make_payer(1)
    response = job_client.get(f"/v1/jobs?{query}", headers=payer.headers)
    assert response.status_code == status, response.text
