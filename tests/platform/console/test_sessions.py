"""What the console's sessions and pages promise (docs/console.md, docs/security.md): idle and absolute timeouts, a
new id at each sign-in, the end of a session when the user's credentials change, cross-site posts refused, and the
headers every page carries."""

from __future__ import annotations

import hashlib
import json
import time

from fastapi.testclient import TestClient
from redis import Redis
from sqlalchemy.orm import Session

from facemint.console.sessions import COOKIE_NAME
from facemint.users.orm import Role
from tests.platform.console.conftest import MakeConsoleUser
from tests.platform.console.console_helpers import console_post, console_sign_in

SESSION_KEY = "facemint:console:session:{}"


def _key(client: TestClient) -> str:
    return SESSION_KEY.format(hashlib.sha256(client.cookies[COOKIE_NAME].encode()).hexdigest())


def _signed_in(client: TestClient) -> bool:
    return client.get("/admin/account", follow_redirects=False).status_code == 200


def test_every_page_is_uncached_unframed_and_runs_only_the_consoles_scripts(console_user: MakeConsoleUser) -> None:
    viewer = console_user(Role.operator)
    page = viewer.client.get("/admin/account")
    assert page.headers["cache-control"] == "no-store"
    assert page.headers["x-frame-options"] == "DENY"
    policy = page.headers["content-security-policy"]
    assert "script-src 'self'" in policy
    assert "frame-ancestors 'none'" in policy
    assert "<script>" not in page.text  # no inline script: the policy would refuse it


def test_a_cross_site_post_is_refused_even_with_the_token(console_user: MakeConsoleUser) -> None:
    viewer = console_user(Role.operator)
    forged = console_post(
        viewer.client,
        "/admin/account/timezone",
        viewer.csrf,
        {"timezone": "Asia/Tokyo"},
        headers={"Origin": "https://evil.example"},
    )
    assert forged.status_code == 403
    assert 'data-code="csrf_rejected"' in forged.text
    assert 'class="tz" title="Times are shown in this zone">UTC<' in viewer.client.get("/admin/account").text


def test_each_request_renews_the_idle_timeout_and_an_idle_session_ends(
    console_user: MakeConsoleUser, redis_client: Redis
) -> None:
    viewer = console_user(Role.operator)
    key = _key(viewer.client)
    redis_client.expire(key, 100)
    assert _signed_in(viewer.client)
    assert redis_client.ttl(key) > 100  # renewed to the idle timeout (1800 s)
    redis_client.pexpire(key, 50)  # as if idle until the last moment
    time.sleep(0.2)
    assert not _signed_in(viewer.client)


def test_a_session_ends_at_its_absolute_timeout_however_busy(
    console_user: MakeConsoleUser, redis_client: Redis
) -> None:
    viewer = console_user(Role.operator)
    key = _key(viewer.client)
    data = json.loads(redis_client.get(key))  # type: ignore[arg-type]
    data["created_at"] = time.time() - 12 * 3600 - 1
    redis_client.set(key, json.dumps(data), ex=1800)
    assert not _signed_in(viewer.client)
    assert redis_client.get(key) is None


def test_signing_in_again_issues_a_new_id_and_ends_the_old_one(console_user: MakeConsoleUser) -> None:
    viewer = console_user(Role.operator)
    old = viewer.client.cookies[COOKIE_NAME]
    console_sign_in(viewer.client, viewer.user.email)
    assert viewer.client.cookies[COOKIE_NAME] != old
    with TestClient(viewer.client.app) as stale:
        stale.cookies.set(COOKIE_NAME, old, path="/admin")
        assert not _signed_in(stale)


def test_freezing_the_user_ends_its_console_session(console_user: MakeConsoleUser, session: Session) -> None:
    viewer = console_user(Role.finance)
    admin = console_user(Role.platform_admin)
    assert _signed_in(viewer.client)
    frozen = console_post(admin.client, f"/admin/users/{viewer.user.id}/freeze", admin.csrf)
    assert frozen.status_code == 303
    assert not _signed_in(viewer.client)
