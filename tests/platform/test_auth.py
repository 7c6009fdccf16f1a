"""POST /auth/token, login throttling, and the JWT matrix: every bad token is a 401 problem, never a 500."""

from __future__ import annotations

import base64
import json
import time
from typing import Any

import jwt
import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr
from sqlalchemy.orm import Session

from facemint.app import create_app
from facemint.config import Settings
from facemint.users.orm import Role
from tests.conftest import make_settings
from tests.factories import PASSWORD, bearer, create_tenant, create_user


def login(client: TestClient, email: str, password: str = PASSWORD) -> Any:
    return client.post("/auth/token", json={"email": email, "password": password})


def assert_problem(response: Any, status: int, code: str | None = None) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    body = response.json()
    assert {"type", "title", "status", "detail", "code"} <= body.keys()
    assert body["status"] == status
    if code is not None:
        assert body["code"] == code
    return body


def claims(settings: Settings, user_id: int, **overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    values: dict[str, Any] = {
        "sub": str(user_id),
        "iat": now,
        "exp": now + 600,
        "iss": settings.jwt_issuer,
        "aud": settings.jwt_audience,
        "cv": 1,  # a new user's credentials version
    }
    values.update(overrides)
    return {k: v for k, v in values.items() if v is not None}


def sign(payload: dict[str, Any], secret: str, *, kid: str = "k1", alg: str = "HS256") -> str:
    return jwt.encode(payload, secret, algorithm=alg, headers={"kid": kid})


def b64(data: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).decode().rstrip("=")


class TestLogin:
    def test_success_returns_a_bearer_token_that_works(self, client: TestClient, session: Session) -> None:
        user = create_user(session, role=Role.member)
        response = login(client, user.email)
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["token_type"] == "bearer"
        assert body["expires_in"] == 900
        assert body["access_token"]
        me = client.get("/v1/balance", headers=bearer(body["access_token"]))
        assert me.status_code == 200, me.text

    def test_email_is_case_insensitive(self, client: TestClient, session: Session) -> None:
        user = create_user(session, role=Role.member)
        assert login(client, "  " + user.email.upper()).status_code == 200

    def test_wrong_password_is_401(self, client: TestClient, session: Session) -> None:
        user = create_user(session, role=Role.member)
        body = assert_problem(login(client, user.email, "not-the-password"), 401, "unauthorized")
        assert "access_token" not in body

    def test_unknown_email_is_401_with_the_same_detail(self, client: TestClient, session: Session) -> None:
        user = create_user(session, role=Role.member)
        unknown = assert_problem(login(client, "nobody@example.test"), 401, "unauthorized")
        wrong = assert_problem(login(client, user.email, "not-the-password"), 401, "unauthorized")
        assert unknown["detail"] == wrong["detail"]

    def test_user_without_password_cannot_log_in(self, client: TestClient, session: Session) -> None:
        user = create_user(session, role=Role.member, password=None)
        assert_problem(login(client, user.email, PASSWORD), 401, "unauthorized")

    def test_frozen_user_is_403_user_frozen(self, client: TestClient, session: Session) -> None:
        user = create_user(session, role=Role.member)
        token = login(client, user.email).json()["access_token"]
        user.status = "frozen"
        session.commit()
        assert_problem(login(client, user.email), 403, "user_frozen")
        # A token issued before the freeze stops working too.
        assert_problem(client.get("/v1/balance", headers=bearer(token)), 403, "user_frozen")

    def test_frozen_user_with_wrong_password_learns_nothing(self, client: TestClient, session: Session) -> None:
        user = create_user(session, role=Role.member)
        user.status = "frozen"
        session.commit()
        assert_problem(login(client, user.email, "not-the-password"), 401, "unauthorized")

    def test_suspended_tenant_is_403_tenant_suspended(self, client: TestClient, session: Session) -> None:
        tenant = create_tenant(session)
        user = create_user(session, tenant=tenant, role=Role.tenant_admin)
        token = login(client, user.email).json()["access_token"]
        tenant.status = "suspended"
        session.commit()
        assert_problem(login(client, user.email), 403, "tenant_suspended")
        assert_problem(client.get("/v1/balance", headers=bearer(token)), 403, "tenant_suspended")

    def test_unknown_fields_are_refused(self, client: TestClient) -> None:
        response = client.post("/auth/token", json={"email": "a@b.co", "password": "x", "role": "platform_admin"})
        assert_problem(response, 422, "validation_error")


class TestLoginRateLimits:
    def test_per_account(self, session: Session, database_url: str, redis_url: str) -> None:
        settings = make_settings(database_url, redis_url, login_limit_per_account="3/minute")
        user = create_user(session, role=Role.member)
        other = create_user(session, role=Role.member)
        with TestClient(create_app(settings)) as client:
            for _ in range(3):
                assert login(client, user.email, "wrong-password").status_code == 401
            # The right password does not get through a spent account bucket, nor does another spelling.
            for email in (user.email, user.email.upper()):
                response = assert_problem(login(client, email), 429, "rate_limited")
                assert int(response["retry_after"]) >= 1
            blocked = login(client, user.email)
            assert int(blocked.headers["Retry-After"]) >= 1
            # Another account from the same address still logs in.
            assert login(client, other.email).status_code == 200

    def test_per_ip(self, session: Session, database_url: str, redis_url: str) -> None:
        settings = make_settings(database_url, redis_url, login_limit_per_ip="3/minute")
        users = [create_user(session, role=Role.member) for _ in range(2)]
        app = create_app(settings)
        with TestClient(app) as client, TestClient(app, client=("198.51.100.7", 40000)) as elsewhere:
            for i in range(3):
                assert login(client, f"guess{i}@example.test").status_code == 401
            for user in users:
                response = login(client, user.email)
                assert_problem(response, 429, "rate_limited")
                assert int(response.headers["Retry-After"]) >= 1
            assert login(elsewhere, users[0].email).status_code == 200


class TestJwtMatrix:
    """Each bad token answers 401 in the problem format, with WWW-Authenticate, and never a 500."""

    @pytest.fixture
    def user_id(self, session: Session) -> int:
        return create_user(session, role=Role.member).id

    def check_refused(self, client: TestClient, token: str) -> None:
        response = client.get("/v1/balance", headers=bearer(token))
        assert_problem(response, 401, "unauthorized")
        assert response.headers["www-authenticate"] == "Bearer"

    def test_a_well_formed_token_is_accepted(self, client: TestClient, settings: Settings, user_id: int) -> None:
        token = sign(claims(settings, user_id), settings.jwt_signing_secret)
        assert client.get("/v1/balance", headers=bearer(token)).status_code == 200

    def test_alg_none(self, client: TestClient, settings: Settings, user_id: int) -> None:
        for alg in ("none", "None", "NONE"):
            token = f"{b64({'alg': alg, 'typ': 'JWT', 'kid': 'k1'})}.{b64(claims(settings, user_id))}."
            self.check_refused(client, token)

    @pytest.mark.filterwarnings("ignore::jwt.warnings.InsecureKeyLengthWarning")
    def test_other_hmac_algorithms_with_the_right_secret(
        self, client: TestClient, settings: Settings, user_id: int
    ) -> None:
        for alg in ("HS384", "HS512"):
            self.check_refused(client, sign(claims(settings, user_id), settings.jwt_signing_secret, alg=alg))

    def test_wrong_key(self, client: TestClient, settings: Settings, user_id: int) -> None:
        self.check_refused(client, sign(claims(settings, user_id), "an-attacker-secret-0123456789abcdef0123"))

    def test_hs256_with_another_secret_and_a_forged_signature(
        self, client: TestClient, settings: Settings, user_id: int
    ) -> None:
        self.check_refused(client, sign(claims(settings, user_id), settings.jwt_signing_secret + "x"))
        genuine = sign(claims(settings, user_id), settings.jwt_signing_secret)
        header, _, signature = genuine.split(".")
        # The genuine signature on a payload that names another user.
        self.check_refused(client, f"{header}.{b64(claims(settings, user_id + 1))}.{signature}")

    def test_expired(self, client: TestClient, settings: Settings, user_id: int) -> None:
        now = int(time.time())
        token = sign(claims(settings, user_id, iat=now - 7200, exp=now - 3600), settings.jwt_signing_secret)
        self.check_refused(client, token)

    @pytest.mark.parametrize("claim", ["exp", "iat", "iss", "aud", "sub", "cv"])
    def test_missing_claim(self, client: TestClient, settings: Settings, user_id: int, claim: str) -> None:
        payload = claims(settings, user_id)
        del payload[claim]
        self.check_refused(client, sign(payload, settings.jwt_signing_secret))

    def test_wrong_audience(self, client: TestClient, settings: Settings, user_id: int) -> None:
        for aud in ("another-api", ["another-api"], ""):
            self.check_refused(client, sign(claims(settings, user_id, aud=aud), settings.jwt_signing_secret))

    def test_wrong_issuer(self, client: TestClient, settings: Settings, user_id: int) -> None:
        self.check_refused(client, sign(claims(settings, user_id, iss="evil"), settings.jwt_signing_secret))

    def test_iat_in_the_future(self, client: TestClient, settings: Settings, user_id: int) -> None:
        now = int(time.time())
        payload = claims(settings, user_id, iat=now + 3600, exp=now + 4000)
        self.check_refused(client, sign(payload, settings.jwt_signing_secret))

    def test_lifetime_longer_than_a_day(self, client: TestClient, settings: Settings, user_id: int) -> None:
        payload = claims(settings, user_id, exp=int(time.time()) + 10 * 86400)
        self.check_refused(client, sign(payload, settings.jwt_signing_secret))

    def test_unknown_kid(self, client: TestClient, settings: Settings, user_id: int) -> None:
        for kid in ("k9", "", "../../etc/passwd"):
            self.check_refused(client, sign(claims(settings, user_id), settings.jwt_signing_secret, kid=kid))
        header = {"alg": "HS256", "typ": "JWT"}  # no kid at all
        token = jwt.encode(claims(settings, user_id), settings.jwt_signing_secret, headers=header)
        self.check_refused(client, token)

    @pytest.mark.parametrize(
        "subject", ["0", "not-a-number", "-1", "99999999999999999999999", 42, ["1"]], ids=lambda s: repr(s)[:20]
    )
    def test_bad_subject(self, client: TestClient, settings: Settings, user_id: int, subject: object) -> None:
        self.check_refused(client, sign(claims(settings, user_id, sub=subject), settings.jwt_signing_secret))

    @pytest.mark.parametrize(
        "token",
        ["garbage", "a.b.c", "...", "eyJhbGciOiJIUzI1NiJ9", "eyJ.eyJ.sig", b64({"alg": "HS256"}) + ".e30.", "ø.ø.ø"],
    )
    def test_garbage(self, client: TestClient, token: str) -> None:
        header = f"Bearer {token}".encode("latin-1")  # bytes: httpx would refuse a non-ASCII str
        assert_problem(client.get("/v1/balance", headers={"Authorization": header}), 401, "unauthorized")

    def test_non_object_header_and_payload(self, client: TestClient, settings: Settings) -> None:
        for header, payload in (("[1]", "{}"), ('"x"', "{}"), ('{"alg":"HS256","kid":"k1"}', "[1, 2]")):
            enc = [base64.urlsafe_b64encode(p.encode()).decode().rstrip("=") for p in (header, payload)]
            self.check_refused(client, f"{enc[0]}.{enc[1]}.c2ln")

    def test_a_huge_token(self, client: TestClient, settings: Settings, user_id: int) -> None:
        payload = claims(settings, user_id, padding="x" * 1_000_000)
        self.check_refused(client, sign(payload, settings.jwt_signing_secret))
        self.check_refused(client, "A" * 1_000_000)

    def test_not_bearer(self, client: TestClient, settings: Settings, user_id: int) -> None:
        token = sign(claims(settings, user_id), settings.jwt_signing_secret)
        for header in (f"Basic {token}", token, "Bearer", "Bearer   "):
            assert_problem(client.get("/v1/balance", headers={"Authorization": header}), 401, "unauthorized")
        assert_problem(client.get("/v1/balance"), 401, "unauthorized")

    @pytest.mark.parametrize("version", [0, -1, 2, "1", 1.0, True, None, [1]], ids=repr)
    def test_bad_credentials_version(
        self, client: TestClient, settings: Settings, user_id: int, version: object
    ) -> None:
        payload = claims(settings, user_id)
        payload["cv"] = version  # 2: a version the user has not reached (the current one is 1)
        self.check_refused(client, sign(payload, settings.jwt_signing_secret))

    def test_unknown_user(self, client: TestClient, settings: Settings, user_id: int) -> None:
        self.check_refused(client, sign(claims(settings, user_id + 1000), settings.jwt_signing_secret))


class TestKeyRotation:
    def test_previous_key_still_verifies_and_new_tokens_use_the_new_key(
        self, session: Session, database_url: str, redis_url: str
    ) -> None:
        old_secret = "old-jwt-secret-0123456789abcdef0123456789"
        new_secret = "new-jwt-secret-0123456789abcdef0123456789"
        settings = make_settings(
            database_url,
            redis_url,
            jwt_secret=new_secret,
            jwt_kid="k2",
            jwt_previous_keys={"k1": SecretStr(old_secret)},
        )
        user = create_user(session, role=Role.member)
        with TestClient(create_app(settings)) as client:
            old_token = sign(claims(settings, user.id), old_secret, kid="k1")
            assert client.get("/v1/balance", headers=bearer(old_token)).status_code == 200
            # A kid only verifies with its own secret: the old secret under the new kid and vice versa fail.
            for secret, kid in ((old_secret, "k2"), (new_secret, "k1")):
                response = client.get("/v1/balance", headers=bearer(sign(claims(settings, user.id), secret, kid=kid)))
                assert_problem(response, 401, "unauthorized")
            issued = login(client, user.email).json()["access_token"]
            assert jwt.get_unverified_header(issued)["kid"] == "k2"
            assert client.get("/v1/balance", headers=bearer(issued)).status_code == 200

    def test_a_retired_key_no_longer_listed_is_refused(
        self, session: Session, database_url: str, redis_url: str
    ) -> None:
        old_secret = "old-jwt-secret-0123456789abcdef0123456789"
        settings = make_settings(database_url, redis_url, jwt_kid="k2")
        user = create_user(session, role=Role.member)
        with TestClient(create_app(settings)) as client:
            token = sign(claims(settings, user.id), old_secret, kid="k1")
            assert_problem(client.get("/v1/balance", headers=bearer(token)), 401, "unauthorized")
