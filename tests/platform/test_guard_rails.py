"""Guard rails: one problem format for every error, no stack traces, rate limits shared by every API process
(through Redis), and health and readiness probes."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import ExitStack
from typing import Any

import pytest
from fastapi.testclient import TestClient
from redis import Redis
from sqlalchemy.orm import Session
from starlette.requests import Request

from facemint.app import create_app
from facemint.config import Settings
from facemint.errors import RateLimited
from facemint.ratelimit import RateLimiter
from facemint.users.orm import Role
from tests.conftest import make_settings
from tests.factories import PASSWORD, bearer, create_tenant, create_user, issue_key
from tests.platform.conftest import Caller, MakeCaller

PROBLEM_FIELDS = {"type", "title", "status", "detail", "code"}
GARBAGE_KEY = "fmk_" + "x" * 51


def assert_problem(response: Any, status: int, code: str | None = None) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    body = response.json()
    assert body.keys() >= PROBLEM_FIELDS, body
    assert body["status"] == status
    assert body["type"].endswith("/" + body["code"])
    assert isinstance(body["title"], str)
    assert isinstance(body["detail"], str)
    if code is not None:
        assert body["code"] == code, body
    return body


class TestProblemFormat:
    @pytest.fixture
    def member(self, make_caller: MakeCaller) -> Caller:
        return make_caller(Role.member)

    @pytest.mark.parametrize(
        ("method", "path", "kwargs", "status", "code"),
        [
            ("GET", "/v1/balance", {}, 401, "unauthorized"),
            ("GET", "/nope", {}, 404, "not_found"),
            ("GET", "/v1/nope", {}, 404, "not_found"),
            ("GET", "/admin/v1/nope", {}, 404, "not_found"),
            ("DELETE", "/v1/balance", {}, 405, "method_not_allowed"),
            ("POST", "/auth/token", {"json": {"email": "a"}}, 422, "validation_error"),
            ("POST", "/auth/token", {"json": ["not", "an", "object"]}, 422, "validation_error"),
            (
                "POST",
                "/auth/token",
                {"content": b'{"email": "a@b.co", "password": ', "headers": {"content-type": "application/json"}},
                422,
                "validation_error",
            ),
            (
                "POST",
                "/auth/token",
                {"content": b'{"email": "a@b.co", "password": "x"}', "headers": {"content-type": "text/plain"}},
                422,
                "validation_error",
            ),
            ("POST", "/auth/token", {"json": {"email": "nobody@x.test", "password": "x"}}, 401, "unauthorized"),
        ],
    )
    def test_anonymous_errors(
        self, client: TestClient, method: str, path: str, kwargs: dict[str, Any], status: int, code: str
    ) -> None:
        body = assert_problem(client.request(method, path, **kwargs), status, code)
        assert body["instance"] == path
        assert body["request_id"]
        if code == "validation_error":
            assert body["errors"]
            for error in body["errors"]:
                assert {"location", "message", "type"} <= error.keys()
                assert error["location"][0] == "body"

    def test_authenticated_errors(self, client: TestClient, make_caller: MakeCaller, member: Caller) -> None:
        h = make_caller(Role.platform_admin).headers
        assert_problem(client.get("/admin/v1/users", headers=member.headers), 403, "insufficient_scope")
        assert_problem(client.get("/admin/v1/users/999999", headers=h), 404, "user_not_found")
        client.post("/admin/v1/tenants", json={"name": "taken"}, headers=h)
        assert_problem(client.post("/admin/v1/tenants", json={"name": "taken"}, headers=h), 409, "tenant_exists")
        assert_problem(client.post("/admin/v1/adjustments", json={}, headers=h), 400, "idempotency_key_required")
        assert_problem(client.get("/admin/v1/users/not-a-number", headers=h), 422, "validation_error")
        assert_problem(client.get("/admin/v1/users", params={"limit": -1}, headers=h), 422, "validation_error")

    def test_validation_errors_list_every_field(self, client: TestClient, make_caller: MakeCaller) -> None:
        staff = make_caller(Role.platform_admin).headers
        body = {"email": "not-an-email", "role": "emperor", "password": "short", "extra": 1}
        problem = assert_problem(client.post("/admin/v1/users", json=body, headers=staff), 422, "validation_error")
        locations = {tuple(e["location"]) for e in problem["errors"]}
        assert {("body", "email"), ("body", "role"), ("body", "password"), ("body", "extra")} <= locations
        malformed = client.post(
            "/admin/v1/tenants", content=b'{"name": "x",}', headers={**staff, "content-type": "application/json"}
        )
        assert_problem(malformed, 422, "validation_error")

    def test_no_stack_trace_in_500s(self, settings: Settings) -> None:
        app = create_app(settings)

        @app.get("/test-only/explode")
        def explode() -> None:
            raise RuntimeError("secret-detail password=hunter2 at /srv/facemint/internal.py")

        with TestClient(app, raise_server_exceptions=False) as client:
            response = client.get("/test-only/explode", headers={"X-Request-ID": "trace-me"})
        body = assert_problem(response, 500, "internal_error")
        assert body["request_id"] == "trace-me"
        assert response.headers["x-request-id"] == "trace-me"
        for leak in ("Traceback", "RuntimeError", "hunter2", "secret-detail", ".py", 'File "'):
            assert leak not in response.text


@pytest.fixture
def limited_settings(database_url: str, redis_url: str) -> Settings:
    return make_settings(
        database_url,
        redis_url,
        plan_limits={"free": {"key": "3/minute", "tenant": "5/minute"}},
        anonymous_limit_per_ip="3/minute",
    )


@pytest.fixture
def two_instances(limited_settings: Settings) -> Iterator[tuple[TestClient, TestClient]]:
    """Two API processes' worth of app: separate engines, pools and limiters; one Redis."""
    with ExitStack() as stack:
        first = stack.enter_context(TestClient(create_app(limited_settings)))
        second = stack.enter_context(TestClient(create_app(limited_settings)))
        assert first.app is not second.app
        yield first, second


def assert_rate_headers(response: Any, limit: int, remaining: int) -> None:
    assert int(response.headers["x-ratelimit-limit"]) == limit
    assert int(response.headers["x-ratelimit-remaining"]) == remaining
    reset = int(response.headers["x-ratelimit-reset"])
    assert time.time() - 1 <= reset <= time.time() + 61


def assert_limited(response: Any) -> dict[str, Any]:
    body = assert_problem(response, 429, "rate_limited")
    retry_after = int(response.headers["retry-after"])
    assert 1 <= retry_after <= 60
    assert body["retry_after"] == retry_after
    return body


class TestRateLimits:
    def test_key_limit_is_shared_across_instances(
        self, two_instances: tuple[TestClient, TestClient], limited_settings: Settings, session: Session
    ) -> None:
        user = create_user(session, role=Role.member)
        key = bearer(issue_key(session, limited_settings, user))
        first, second = two_instances
        for i, client in enumerate((first, second, first)):
            response = client.get("/v1/balance", headers=key)
            assert response.status_code == 200, response.text
            assert_rate_headers(response, limit=3, remaining=2 - i)
        for client in (second, first):
            limited = client.get("/v1/balance", headers=key)
            assert_limited(limited)
            assert_rate_headers(limited, limit=3, remaining=0)

    def test_tenant_limit_spans_the_tenants_keys(
        self, two_instances: tuple[TestClient, TestClient], limited_settings: Settings, session: Session
    ) -> None:
        tenant = create_tenant(session)
        key_1 = bearer(issue_key(session, limited_settings, create_user(session, tenant=tenant)))
        key_2 = bearer(issue_key(session, limited_settings, create_user(session, tenant=tenant)))
        outsider = bearer(issue_key(session, limited_settings, create_user(session, role=Role.member)))
        first, second = two_instances
        for _ in range(3):
            assert first.get("/v1/balance", headers=key_1).status_code == 200
        for _ in range(2):
            assert second.get("/v1/balance", headers=key_2).status_code == 200
        # key_2 has used 2 of its 3, but the tenant has used all 5.
        limited = first.get("/v1/balance", headers=key_2)
        assert_limited(limited)
        assert int(limited.headers["x-ratelimit-limit"]) == 5
        assert second.get("/v1/balance", headers=outsider).status_code == 200

    def test_one_round_trip_counts_every_bucket_in_the_windows_limits_reads(self, limited_settings: Settings) -> None:
        """`hit` counts all of a request's buckets in one Redis call, in the same keys and fixed windows as the
        `limits` library, so `ensure_open` and `count` (failed sign-ins) see the same counts."""
        limiter = RateLimiter(limited_settings, redis_url=limited_settings.redis_url or "")
        request = Request({"type": "http", "headers": [], "state": {}})
        for n in range(2):
            limiter.hit(request, [("bucket-a", "2/minute"), ("bucket-b", "5/minute")])
            state = request.state.rate_limit
            assert (state.limit, state.remaining) == (2, 1 - n)  # the tightest bucket
            assert 0 < state.reset_at - time.time() <= 60
        with pytest.raises(RateLimited):
            limiter.ensure_open("bucket-a", "2/minute", reason="spent")
        limiter.ensure_open("bucket-b", "5/minute", reason="not spent")
        limiter.count("bucket-b", "5/minute")
        with pytest.raises(RateLimited):
            limiter.hit(request, [("bucket-b", "5/minute"), ("bucket-a", "2/minute")])
        assert request.state.rate_limit.limit == 2  # the exhausted bucket names the refusal

    def test_unauthenticated_requests_are_limited_per_ip(
        self, two_instances: tuple[TestClient, TestClient], limited_settings: Settings, session: Session
    ) -> None:
        first, second = two_instances
        garbage = [bearer(GARBAGE_KEY), bearer("not-a-jwt"), {}]
        for client, headers in zip((first, second, first), garbage, strict=True):
            assert_problem(client.get("/v1/balance", headers=headers), 401, "unauthorized")
        # A made-up X-Forwarded-For from an untrusted peer does not open a new bucket.
        for client, forwarded in ((second, "203.0.113.1"), (first, "203.0.113.2")):
            response = client.get("/v1/balance", headers={**bearer(GARBAGE_KEY), "X-Forwarded-For": forwarded})
            assert_limited(response)
        # Another address is unaffected.
        with TestClient(first.app, client=("198.51.100.20", 40000)) as elsewhere:
            assert_problem(elsewhere.get("/v1/balance", headers=bearer(GARBAGE_KEY)), 401, "unauthorized")

    def test_buckets_never_hold_a_plaintext_key_or_email(
        self, client: TestClient, session: Session, settings: Settings, redis_client: Redis
    ) -> None:
        user = create_user(session, role=Role.member)
        key = issue_key(session, settings, user)
        public_id = key[len("fmk_") :].split("_", 1)[0]
        secret = key[len("fmk_") + len(public_id) + 1 :]
        assert client.get("/v1/balance", headers=bearer(key)).status_code == 200
        assert client.get("/v1/balance", headers=bearer(GARBAGE_KEY)).status_code == 401
        assert client.post("/auth/token", json={"email": user.email, "password": PASSWORD}).status_code == 200
        # Only a failed sign-in counts against the account.
        assert client.post("/auth/token", json={"email": user.email, "password": "wrong-password"}).status_code == 401
        names = [name.decode() for name in redis_client.scan_iter("*")]
        assert any(f"key:{public_id}" in name for name in names), names  # the key's bucket is there, by public id
        assert any("login-account:" in name for name in names), names
        for name in names:
            for plaintext in (key, secret, secret[:12], secret[-12:], GARBAGE_KEY, user.email):
                assert plaintext not in name, name


class TestHealth:
    def test_healthz(self, client: TestClient) -> None:
        response = client.get("/healthz")
        assert response.status_code == 200
        assert response.json() == {"status": "ok"}

    def test_readyz_when_both_are_up(self, client: TestClient) -> None:
        response = client.get("/readyz")
        assert response.status_code == 200
        assert response.json() == {"status": "ready", "checks": {"postgres": "ok", "redis": "ok"}}

    def test_readyz_is_503_when_redis_is_unreachable(self, database_url: str, make_caller: MakeCaller) -> None:
        member = make_caller(Role.member)
        settings = make_settings(database_url, "redis://127.0.0.1:1/0")
        with TestClient(create_app(settings)) as client:
            assert client.get("/healthz").status_code == 200
            response = client.get("/readyz")
            body = assert_problem(response, 503, "not_ready")
            assert body["checks"]["postgres"] == "ok"
            assert body["checks"]["redis"].startswith("error")
            assert int(response.headers["retry-after"]) >= 1
            # Without Redis nothing runs unlimited: authenticated requests are refused, not waved through.
            refused = client.get("/v1/balance", headers=member.headers)
            assert_problem(refused, 503, "service_unavailable")
            assert int(refused.headers["retry-after"]) >= 1
