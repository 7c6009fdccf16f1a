"""The jobs screens in a real browser: filter the list (htmx swaps it in place), open a finished job and see
its thumbnail drawn, cancel a queued job (confirming the prompt) and see its tokens released, watch a running
video's progress move without reloading the page."""

from __future__ import annotations

from playwright.sync_api import Dialog, Page, expect
from sqlalchemy import Engine
from sqlalchemy.orm import Session

from facemint.config import Settings
from facemint.jobs import service as jobs
from facemint.storage import LocalStorage
from facemint.users.orm import Role
from tests.factories import create_tenant, create_user, fund
from tests.jobs.admin_job_factory import queued_job, running_video_job, succeeded_job
from tests.jobs.conftest import balance
from tests.platform.console.browser.browser_helpers import sign_in
from tests.platform.console.browser.conftest import LiveServer


def test_filter_open_a_thumbnail_and_cancel_a_queued_job(
    page: Page, live_server: LiveServer, session: Session, settings: Settings, engine: Engine
) -> None:
    tenant = create_tenant(session)
    member = create_user(session, tenant=tenant)
    fund(session, account_id=member.account_id, amount=20)
    # The result goes where the live server reads it.
    done = succeeded_job(session, settings, LocalStorage(live_server.settings.resolved_storage_dir), member)
    waiting = queued_job(session, settings, member)
    operator = create_user(session, role=Role.operator)
    assert balance(engine, member.account_id) == (20 - done.tokens_held, waiting.tokens_held)

    sign_in(page, operator.email, path="/admin/jobs")
    rows = page.locator("#list tr[data-job]")
    expect(rows).to_have_count(2)
    page.get_by_label("Status").select_option("queued")
    page.get_by_role("button", name="Filter").click()
    expect(rows).to_have_count(1)
    expect(rows.first).to_have_attribute("data-job", waiting.public_id)
    assert "status=queued" in page.url  # hx-push-url: the filtered list has its own address

    page.get_by_label("Status").select_option("succeeded")
    page.get_by_role("button", name="Filter").click()
    # The queued filter also listed one row: wait for this filter's swap (htmx pushes its URL after it).
    page.wait_for_url("**status=succeeded**")
    expect(rows).to_have_count(1)
    rows.first.get_by_role("link").click()
    thumbnail = page.get_by_alt_text(f"Result of {done.public_id} (preview)")
    expect(thumbnail).to_be_visible()
    page.wait_for_function("img => img.complete && img.naturalWidth > 0", arg=thumbnail.element_handle())
    assert thumbnail.evaluate("img => [img.naturalWidth, img.naturalHeight]") == [256, 192]

    page.goto(f"/admin/jobs/{waiting.public_id}")
    expect(page.locator("[data-field=held]")).to_have_text(str(waiting.tokens_held))
    prompts: list[str] = []

    def accept(dialog: Dialog) -> None:
        prompts.append(dialog.message)
        dialog.accept()

    page.once("dialog", accept)
    page.get_by_role("button", name="Cancel job").click()
    expect(page.get_by_role("status")).to_contain_text(f"Canceled: {waiting.tokens_held} tokens released")
    assert prompts
    assert "held tokens go back" in prompts[0]
    expect(page.locator("h1 .badge")).to_have_text("canceled")
    expect(page.locator("[data-field=released]")).to_have_text(str(waiting.tokens_held))
    expect(page.get_by_role("button", name="Cancel job")).to_have_count(0)
    assert balance(engine, member.account_id) == (20 - done.tokens_held, 0)


def test_a_running_videos_progress_moves_without_a_reload(
    page: Page, live_server: LiveServer, session: Session, settings: Settings
) -> None:
    member = create_user(session)
    fund(session, account_id=member.account_id, amount=50)
    job = running_video_job(session, settings, member)
    jobs.record_progress(session, job_id=job.id, attempt=1, frames_done=6, frames_total=30)
    session.commit()
    operator = create_user(session, role=Role.operator)

    sign_in(page, operator.email, path=f"/admin/jobs/{job.public_id}")
    label = page.locator("[data-field=progress]")
    expect(label).to_have_text("6 of 30 frames (20.0%)")
    page.evaluate("window.notReloaded = true")
    jobs.record_progress(session, job_id=job.id, attempt=1, frames_done=24, frames_total=30)
    session.commit()
    expect(label).to_have_text("24 of 30 frames (80.0%)")  # htmx fetched the live part again
    expect(page.locator("#progress-bar")).to_have_attribute("value", "80.0")
    assert page.evaluate("window.notReloaded === true")
