from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response
from sqlalchemy import text

from facemint.problems import problem_response

router = APIRouter(tags=["health"])


@router.get("/healthz")
def healthz() -> dict[str, str]:
    """The API process is up (no dependencies checked)."""
    return {"status": "ok"}


@router.get("/readyz", response_model=None, responses={503: {"description": "Postgres or Redis does not answer"}})
def readyz(request: Request) -> dict[str, object] | Response:
    """Ready only when Postgres and Redis both answer."""
    checks: dict[str, str] = {}
    try:
        with request.app.state.engine.connect() as connection:
            connection.execute(text("SELECT 1"))
        checks["postgres"] = "ok"
    except Exception as exc:  # any failure means not ready; the reason is reported, not raised
        checks["postgres"] = f"error: {type(exc).__name__}"
    try:
        request.app.state.redis.ping()
        checks["redis"] = "ok"
    except Exception as exc:
        checks["redis"] = f"error: {type(exc).__name__}"
    if all(v == "ok" for v in checks.values()):
        return {"status": "ready", "checks": checks}
    return problem_response(
        request,
        status=503,
        code="not_ready",
        title="Not ready",
        detail=", ".join(f"{k} {v}" for k, v in checks.items() if v != "ok"),
        extra={"checks": checks},
        headers={"Retry-After": "5"},
    )
