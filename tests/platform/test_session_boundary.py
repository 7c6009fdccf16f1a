"""The request boundary commits before the response is sent: a commit that fails is the client's error."""

from __future__ import annotations

from fastapi.testclient import TestClient
from sqlalchemy import text

from facemint.app import create_app
from facemint.config import Settings
from facemint.deps import SessionDep


def test_a_failed_commit_is_never_reported_as_success(settings: Settings) -> None:
    app = create_app(settings)

    @app.post("/test-only/deferred-failure")
    def write_that_fails_at_commit(session: SessionDep) -> dict[str, bool]:
        # A deferred foreign key passes the statement and fails only at COMMIT.
        session.execute(text("CREATE TEMP TABLE parent (id int PRIMARY KEY) ON COMMIT DROP"))
        session.execute(
            text(
                "CREATE TEMP TABLE child (parent_id int REFERENCES parent DEFERRABLE INITIALLY DEFERRED) ON COMMIT DROP"
            )
        )
        session.execute(text("INSERT INTO child VALUES (1)"))
        return {"written": True}

    with TestClient(app, raise_server_exceptions=False) as client:
        response = client.post("/test-only/deferred-failure")
    assert response.status_code == 500
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["code"] == "internal_error"
    assert "Traceback" not in response.text
