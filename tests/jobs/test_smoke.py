from __future__ import annotations

from typing import Any

from sqlalchemy.engine import Engine as DbEngine

from tests.jobs.conftest import balance, submit


def test_submit_then_worker_captures(job_client: Any, make_payer: Any, drain: Any, engine: DbEngine) -> None:
    payer = make_payer(5)
    response = submit(job_client, payer)
    assert response.status_code == 202, response.text
    job = response.json()
    assert job["status"] == "queued"
    assert response.headers["X-Tokens-Held"] == "1"
    assert response.headers["X-Balance-Available"] == "4"
    assert balance(engine, payer.account_id) == (5, 1)
    drain()
    done = job_client.get(f"/v1/jobs/{job['id']}", headers=payer.headers).json()
    assert done["status"] == "succeeded", done
    assert done["tokens_captured"] == 1
    assert balance(engine, payer.account_id) == (4, 0)
    result = job_client.get(f"/v1/jobs/{job['id']}/result", headers=payer.headers)
    assert result.status_code == 200
    assert result.content.startswith(b"\x89PNG")
