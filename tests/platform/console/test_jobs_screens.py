"""The console's jobs screens over httpx: the list and its filters, a job's page (tokens, timings, webhook
attempts, thumbnail; a video's media and live progress), the thumbnail route and cancel, for each role as
/admin/v1/jobs answers it."""

from __future__ import annotations

import io
import re
from datetime import UTC, datetime, timedelta

from fastapi import FastAPI
from PIL import Image
from sqlalchemy import Engine, text
from sqlalchemy.orm import Session

from facemint.config import Settings
from facemint.errors import Unprocessable
from facemint.jobs import files
from facemint.jobs import service as jobs
from facemint.users.orm import Role
from tests.factories import create_tenant, create_user, fund
from tests.jobs.admin_job_factory import failed_webhook_attempt, queued_job, running_video_job, succeeded_job
from tests.jobs.conftest import balance
from tests.platform.console.conftest import MakeConsoleUser
from tests.platform.console.console_helpers import console_post, htmx_get, next_page_url

HOOK = "http://127.0.0.1:9/hook"
_JOB_ROW = re.compile(r'data-job="(job_[0-9a-f]+)"')


def listed(html: str) -> list[str]:
    return _JOB_ROW.findall(html)


def test_the_list_filters_on_the_server_and_pages_by_cursor(
    app: FastAPI, session: Session, settings: Settings, console_user: MakeConsoleUser
) -> None:
    tenant_a, tenant_b = create_tenant(session), create_tenant(session)
    alice = create_user(session, tenant=tenant_a)
    bob = create_user(session, tenant=tenant_b)
    for member in (alice, bob):
        fund(session, account_id=member.account_id, amount=50)
    old = queued_job(session, settings, alice)
    done = succeeded_job(session, settings, app.state.storage, bob)
    new = queued_job(session, settings, bob)
    session.execute(text("UPDATE jobs SET created_at = '2026-01-10T12:00:00Z' WHERE id = :id"), {"id": old.id})
    session.commit()
    operator = console_user(Role.operator).client

    page = operator.get("/admin/jobs")
    assert page.status_code == 200, page.text
    assert listed(page.text) == [new.public_id, done.public_id, old.public_id]
    assert listed(operator.get("/admin/jobs", params={"status": "succeeded"}).text) == [done.public_id]
    assert listed(operator.get("/admin/jobs", params={"tenant_id": tenant_a.id}).text) == [old.public_id]
    assert listed(operator.get("/admin/jobs", params={"user": bob.email, "status": "queued"}).text) == [new.public_id]
    assert listed(operator.get("/admin/jobs", params={"user": str(alice.id)}).text) == [old.public_id]
    assert listed(operator.get("/admin/jobs", params={"user": "nobody@example.test"}).text) == []
    # datetime-local in the viewer's zone (UTC by default): 12:00 UTC falls between 11:00 and 13:00.
    window = {"created_from": "2026-01-10T11:00", "created_to": "2026-01-10T13:00"}
    assert listed(operator.get("/admin/jobs", params=window).text) == [old.public_id]
    since = (datetime.now(UTC) - timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M")
    assert listed(operator.get("/admin/jobs", params={"created_from": since}).text) == [new.public_id, done.public_id]

    fragment = htmx_get(operator, "/admin/jobs", params={"status": "queued"})
    assert fragment.status_code == 200
    assert 'id="list"' in fragment.text
    assert listed(fragment.text) == [new.public_id, old.public_id]

    bad = operator.get("/admin/jobs", params={"status": "exploded"})
    assert bad.status_code == 422
    assert f'data-code="{Unprocessable.code}"' in bad.text


def test_the_pager_walks_older_jobs(
    app: FastAPI, session: Session, settings: Settings, console_user: MakeConsoleUser, monkeypatch: object
) -> None:
    from facemint.console.views import jobs as jobs_view

    member = create_user(session)
    fund(session, account_id=member.account_id, amount=50)
    made = [queued_job(session, settings, member).public_id for _ in range(3)]
    monkeypatch.setattr(jobs_view, "PAGE_SIZE", 2)  # type: ignore[attr-defined]
    client = console_user(Role.finance).client
    first = client.get("/admin/jobs")
    assert listed(first.text) == made[::-1][:2]
    older = next_page_url(first.text)
    assert older, first.text
    assert older.startswith("/admin/jobs?cursor=")
    second = client.get(older)
    assert listed(second.text) == [made[0]]
    assert "End of list" in second.text


def test_a_jobs_page_shows_tokens_timings_webhook_attempts_and_a_thumbnail(
    app: FastAPI, session: Session, settings: Settings, console_user: MakeConsoleUser
) -> None:
    tenant = create_tenant(session)
    member = create_user(session, tenant=tenant)
    fund(session, account_id=member.account_id, amount=50)
    done = succeeded_job(session, settings, app.state.storage, member, webhook_url=HOOK)
    failed_webhook_attempt(session, settings, status=503)
    admin = console_user(Role.tenant_admin, tenant=tenant).client

    page = admin.get(f"/admin/jobs/{done.public_id}")
    assert page.status_code == 200, page.text
    held = re.search(r'data-field="held"><span class="num">([\d,]+)', page.text)
    captured = re.search(r'data-field="captured"><span class="num">([\d,]+)', page.text)
    assert held
    assert captured
    assert held.group(1) == captured.group(1) == str(done.tokens_held)
    assert "job.succeeded" in page.text
    assert "<td>503</td>" in page.text
    assert "detect" in page.text  # the engine's stages
    assert f'src="/admin/jobs/{done.public_id}/thumbnail"' in page.text
    assert "Cancel job" not in page.text  # finished

    thumbnail = admin.get(f"/admin/jobs/{done.public_id}/thumbnail")
    assert thumbnail.status_code == 200
    assert thumbnail.headers["content-type"] == "image/jpeg"
    with Image.open(io.BytesIO(thumbnail.content)) as image:
        assert max(image.size) == 256


def test_finance_reads_jobs_but_sees_no_result_and_no_cancel_and_its_forged_cancel_is_refused(
    app: FastAPI, session: Session, settings: Settings, engine: Engine, console_user: MakeConsoleUser
) -> None:
    member = create_user(session)
    fund(session, account_id=member.account_id, amount=50)
    done = succeeded_job(session, settings, app.state.storage, member)
    waiting = queued_job(session, settings, member)
    finance = console_user(Role.finance)

    page = finance.client.get(f"/admin/jobs/{done.public_id}")
    assert page.status_code == 200
    assert "/thumbnail" not in page.text
    assert "does not show customers" in page.text
    assert finance.client.get(f"/admin/jobs/{done.public_id}/thumbnail").status_code == 403
    queued_page = finance.client.get(f"/admin/jobs/{waiting.public_id}")
    assert "Cancel job" not in queued_page.text
    forged = console_post(finance.client, f"/admin/jobs/{waiting.public_id}/cancel", finance.csrf)
    assert forged.status_code == 403
    assert 'data-code="insufficient_scope"' in forged.text
    assert balance(engine, member.account_id) == (50 - done.tokens_held, waiting.tokens_held)
    status = session.execute(text("SELECT status FROM jobs WHERE id = :id"), {"id": waiting.id}).scalar_one()
    assert status == "queued"


def test_cancel_from_the_console_releases_the_tokens(
    app: FastAPI, session: Session, settings: Settings, engine: Engine, console_user: MakeConsoleUser
) -> None:
    member = create_user(session)
    fund(session, account_id=member.account_id, amount=50)
    job = queued_job(session, settings, member)
    operator = console_user(Role.operator)
    before = balance(engine, member.account_id)
    assert before[1] == job.tokens_held

    page = operator.client.get(f"/admin/jobs/{job.public_id}")
    assert "Cancel job" in page.text
    assert "data-confirm=" in page.text
    without_token = operator.client.post(f"/admin/jobs/{job.public_id}/cancel", follow_redirects=False)
    assert without_token.status_code == 403
    assert balance(engine, member.account_id) == before

    answer = console_post(operator.client, f"/admin/jobs/{job.public_id}/cancel", operator.csrf)
    assert answer.status_code == 303
    assert answer.headers["location"] == f"/admin/jobs/{job.public_id}?done=canceled"
    assert balance(engine, member.account_id) == (before[0], before[1] - job.tokens_held)
    after = operator.client.get(answer.headers["location"])
    assert f"Canceled: {job.tokens_held} tokens released" in after.text
    assert "badge-canceled" in after.text
    assert "Cancel job" not in after.text
    again = console_post(operator.client, f"/admin/jobs/{job.public_id}/cancel", operator.csrf)
    assert again.status_code == 409
    assert 'data-code="job_already_finished"' in again.text


def test_a_tenant_admin_reaching_for_another_tenants_job_gets_404(
    app: FastAPI, session: Session, settings: Settings, engine: Engine, console_user: MakeConsoleUser
) -> None:
    mine, theirs = create_tenant(session), create_tenant(session)
    stranger = create_user(session, tenant=theirs)
    fund(session, account_id=stranger.account_id, amount=50)
    done = succeeded_job(session, settings, app.state.storage, stranger)
    waiting = queued_job(session, settings, stranger)
    admin = console_user(Role.tenant_admin, tenant=mine)

    assert listed(admin.client.get("/admin/jobs").text) == []
    assert listed(admin.client.get("/admin/jobs", params={"user": stranger.email}).text) == []
    assert admin.client.get("/admin/jobs", params={"tenant_id": theirs.id}).status_code == 404
    for path in (f"/admin/jobs/{done.public_id}", f"/admin/jobs/{done.public_id}/thumbnail"):
        response = admin.client.get(path)
        assert response.status_code == 404
        assert "not_found" in response.text
    cancel = console_post(admin.client, f"/admin/jobs/{waiting.public_id}/cancel", admin.csrf)
    assert cancel.status_code == 404
    assert balance(engine, stranger.account_id)[1] == waiting.tokens_held


def test_a_video_jobs_page_shows_its_media_and_progress_polled_until_it_ends(
    app: FastAPI, session: Session, settings: Settings, engine: Engine, console_user: MakeConsoleUser
) -> None:
    member = create_user(session)
    fund(session, account_id=member.account_id, amount=50)
    job = running_video_job(session, settings, member)
    operator = console_user(Role.operator)
    waiting = operator.client.get(f"/admin/jobs/{job.public_id}")
    assert "Starting (attempt 1)" in waiting.text
    jobs.record_progress(session, job_id=job.id, attempt=1, frames_done=12, frames_total=30)
    session.commit()

    page = operator.client.get(f"/admin/jobs/{job.public_id}")
    assert page.status_code == 200, page.text
    assert 'data-field="billed-seconds">3 s' in page.text
    assert "192 × 144" in page.text
    assert "10 fps" in page.text
    assert "swap.video v1: 10 tokens per second" in page.text
    assert "12 of 30 frames (40.0%)" in page.text
    assert '<progress id="progress-bar" max="100" value="40.0">' in page.text
    assert 'hx-trigger="every 1s"' in page.text  # running: the page's live part is fetched again every second
    polled = htmx_get(operator.client, f"/admin/jobs/{job.public_id}")
    assert 'id="job"' in polled.text
    assert "12 of 30 frames" in polled.text
    listed_page = operator.client.get("/admin/jobs")
    assert "swap.video" in listed_page.text
    assert "40.0%" in listed_page.text

    asked = console_post(operator.client, f"/admin/jobs/{job.public_id}/cancel", operator.csrf)
    assert asked.headers["location"] == f"/admin/jobs/{job.public_id}?done=requested"
    assert (
        "the seconds already processed are kept as the result and charged"
        in operator.client.get(asked.headers["location"]).text
    )
    # The worker stops at its next batch with 18 of 30 frames done: 2 started seconds charged.
    stopped = jobs.cancel_with_partial_result(
        session,
        job_id=job.id,
        attempt=1,
        seconds=2,
        frames_done=18,
        frames_total=30,
        result_location=files.attempt_result_key(job.public_id, 1, "mp4"),
        content_type="video/mp4",
        size_bytes=1234,
        timings_ms={},
        result_ttl_seconds=3600,
    )
    assert stopped is not None
    session.commit()
    final = operator.client.get(f"/admin/jobs/{job.public_id}")
    assert "hx-trigger" not in final.text  # finished: the polling stops
    assert "badge-canceled" in final.text
    assert "18 of 30 frames (60.0%)" in final.text
    assert "Stopped by the cancel" in final.text
    captured = re.search(r'data-field="captured"><span class="num">([\d,]+)', final.text)
    released = re.search(r'data-field="released"><span class="num">([\d,]+)', final.text)
    assert captured
    assert released
    assert (captured.group(1), released.group(1)) == ("20", "10")
    assert "video/mp4" in final.text
    assert balance(engine, member.account_id) == (30, 0)
