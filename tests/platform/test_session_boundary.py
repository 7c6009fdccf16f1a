"""The request boundary commits before the response is sent: a commit that fails is the client's error. An endpoint
may run the boundary's commit at the end of its own thread-pool work instead (the submit), with the same outcomes."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import text
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from facemint.app import create_app
from facemint.auth.principal import Principal
from facemint.config import Settings
from facemint.db import after_commit, after_rollback, before_commit
from facemint.deps import SessionDep, authenticate_released, commit_in_this_thread
from facemint.errors import Conflict
from facemint.users.orm import Role
from tests.factories import bearer, create_user, issue_key


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


def _refuse() -> None:
    raise Conflict("refused right before the commit")


def _hooked_route(app: FastAPI, path: str, ran: list[str], *, refuse: bool = False, fail_commit: bool = False) -> None:
    """A route doing its work and the boundary's commit in one thread hop (`commit_in_this_thread`), as the
    submit does, with an after-commit and an after-rollback step that say when they ran."""

    @app.post(path)
    async def route(session: SessionDep) -> dict[str, bool]:
        def work() -> None:
            session.execute(text("SELECT 1"))
            if fail_commit:
                session.execute(text("CREATE TEMP TABLE p (id int PRIMARY KEY) ON COMMIT DROP"))
                session.execute(
                    text("CREATE TEMP TABLE c (p int REFERENCES p DEFERRABLE INITIALLY DEFERRED) ON COMMIT DROP")
                )
                session.execute(text("INSERT INTO c VALUES (1)"))
            after_commit(session, lambda: ran.append("after commit"))
            after_rollback(session, lambda: ran.append("after rollback"))
            if refuse:
                before_commit(session, _refuse)
            commit_in_this_thread(session)
            ran.append(f"committed, in transaction: {session.in_transaction()}")

        await run_in_threadpool(work)
        return {"ok": True}


class TestCommitInThisThread:
    def test_the_after_commit_steps_run_once_and_the_boundary_has_nothing_left(self, settings: Settings) -> None:
        app, ran = create_app(settings), []
        _hooked_route(app, "/test-only/commit-here", ran)
        with TestClient(app) as client:
            assert client.post("/test-only/commit-here").status_code == 200
        assert ran == ["after commit", "committed, in transaction: False"]

    def test_a_refusing_check_rolls_back_and_runs_the_rollback_steps(self, settings: Settings) -> None:
        app, ran = create_app(settings), []
        _hooked_route(app, "/test-only/refused-here", ran, refuse=True)
        with TestClient(app) as client:
            assert client.post("/test-only/refused-here").status_code == 409
        assert ran == ["after rollback"]

    def test_a_failed_commit_runs_neither_kind_of_step(self, settings: Settings) -> None:
        """Its outcome is unknown: undoing anything could undo committed work, and nothing may follow a commit
        that may not have happened."""
        app, ran = create_app(settings), []
        _hooked_route(app, "/test-only/failed-here", ran, fail_commit=True)
        with TestClient(app, raise_server_exceptions=False) as client:
            response = client.post("/test-only/failed-here")
        assert response.status_code == 500
        assert ran == []


def test_a_released_caller_holds_no_connection_or_transaction(settings: Settings, session: Session) -> None:
    """`authenticate_released` (the submit's): what the route does next, reading an upload, holds nothing."""
    app = create_app(settings)
    key = issue_key(session, settings, create_user(session, role=Role.member))

    @app.get("/test-only/released")
    def released(session: SessionDep, principal: Annotated[Principal, Depends(authenticate_released)]) -> dict:
        return {
            "user": principal.user_id,
            "in_transaction": session.in_transaction(),
            "checked_out": app.state.engine.pool.checkedout(),
        }

    with TestClient(app) as client:
        body = client.get("/test-only/released", headers=bearer(key)).json()
        refused = client.get("/test-only/released", headers=bearer(key[:-4] + "xxxx"))
    assert body == {"user": body["user"], "in_transaction": False, "checked_out": 0}
    assert refused.status_code == 401
