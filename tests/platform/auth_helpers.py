"""Helpers shared by the privilege, session and lockout tests: signing in, and reading problem responses."""

from __future__ import annotations

from typing import Any

from fastapi.testclient import TestClient

from tests.factories import PASSWORD, bearer


def login(client: TestClient, email: str, password: str = PASSWORD, **headers: str) -> Any:
    return client.post("/auth/token", json={"email": email, "password": password}, headers=headers)


def sign_in(client: TestClient, email: str, password: str = PASSWORD) -> dict[str, str]:
    """Authorization headers carrying a fresh access token."""
    response = login(client, email, password)
    assert response.status_code == 200, response.text
    return bearer(response.json()["access_token"])


def problem(response: Any, status: int, code: str | None = None) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    body = response.json()
    if code is not None:
        assert body["code"] == code, body
    return dict(body)


def works(client: TestClient, headers: dict[str, str]) -> bool:
    """Whether these credentials are accepted (the caller's own balance answers 200)."""
    return client.get("/v1/balance", headers=headers).status_code == 200
