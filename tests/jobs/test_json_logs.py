"""`log_format=json`: one JSON object per line, each naming the request (request id, then tenant and user once the
caller is authenticated) or the job (job id, attempt, tenant, user) it was logged for, on every thread that works
for it. The lines are the real ones: SQLAlchemy's statement log, at INFO, on the request's and job's threads."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from fastapi.testclient import TestClient

from facemint.cli.main import uvicorn_log_config
from facemint.config import Settings
from facemint.worker import runner
from tests.jobs.conftest import JsonLines, Payer, submit


def _for_request(lines: list[dict[str, Any]], request_id: str) -> list[dict[str, Any]]:
    return [line for line in lines if line.get("request_id") == request_id]


def test_a_requests_lines_carry_its_request_id_and_after_authentication_its_tenant_and_user(
    json_lines: JsonLines, job_client: TestClient, make_payer: Callable[..., Payer]
) -> None:
    payer = make_payer()
    response = job_client.get("/v1/jobs?limit=5", headers=payer.headers)
    assert response.status_code == 200, response.text
    request_id = response.headers["x-request-id"]

    lines = _for_request(json_lines(), request_id)
    assert lines, "the request logged no line with its id"
    for line in lines:
        assert {"timestamp", "level", "logger", "message"} <= line.keys()
        assert line["timestamp"].endswith("+00:00")
    authenticated = [line for line in lines if "tenant_id" in line]
    assert authenticated, "no line after authentication names the caller"
    assert {(line["tenant_id"], line["user_id"]) for line in authenticated} == {(payer.tenant_id, payer.user_id)}
    assert all(isinstance(line["api_key_id"], int) for line in authenticated)  # called with an API key
    # The statements after authentication (the endpoint's own) are logged under the caller.
    assert any("FROM jobs" in line["message"] for line in authenticated)


def test_concurrent_requests_never_mix_their_ids(
    json_lines: JsonLines, job_client: TestClient, make_payer: Callable[..., Payer]
) -> None:
    payers = [make_payer(), make_payer()]
    assert payers[0].tenant_id != payers[1].tenant_id

    def call(index: int) -> tuple[str, Payer]:
        payer = payers[index % 2]
        request_id = f"mix-{index}-{uuid.uuid4().hex[:8]}"
        response = job_client.get("/v1/jobs?limit=5", headers={**payer.headers, "X-Request-ID": request_id})
        assert response.status_code == 200, response.text
        assert response.headers["x-request-id"] == request_id
        return request_id, payer

    with ThreadPoolExecutor(max_workers=8) as pool:
        calls = list(pool.map(call, range(24)))

    lines = json_lines()
    for request_id, payer in calls:
        mine = _for_request(lines, request_id)
        assert any("tenant_id" in line for line in mine), request_id
        assert {(line["tenant_id"], line["user_id"]) for line in mine if "tenant_id" in line} == {
            (payer.tenant_id, payer.user_id)
        }


def test_a_jobs_lines_carry_its_job_id_attempt_tenant_and_user_on_its_heartbeat_thread_too(
    json_lines: JsonLines,
    job_settings: Settings,
    job_client: TestClient,
    make_payer: Callable[..., Payer],
    demo_engine: Any,
) -> None:
    payer = make_payer()
    submitted = submit(job_client, payer)
    assert submitted.status_code == 202, submitted.text
    job_id = submitted.json()["id"]
    # A pause at the first stage boundary: heartbeats (every 0.2 s) beat while the job runs.
    settings = job_settings.model_copy(update={"debug_job_delay_seconds": 0.8})
    runner.run_worker(settings, queues=[settings.queue_name], burst=True, engine=demo_engine)
    assert job_client.get(f"/v1/jobs/{job_id}", headers=payer.headers).json()["status"] == "succeeded"

    lines = [line for line in json_lines() if line.get("job_id") == job_id]
    claimed = [line for line in lines if "attempt" in line]
    assert claimed, "no line after the claim"
    assert {(line["attempt"], line["tenant_id"], line["user_id"]) for line in claimed} == {
        (1, payer.tenant_id, payer.user_id)
    }
    assert any("UPDATE jobs SET heartbeat_at" in line["message"] for line in claimed), "no heartbeat line"
    assert all("request_id" not in line for line in lines)


def _log_from_a_process(log_format: str) -> str:
    """What `configure` (the worker's set-up) prints for an info line inside a request, then a logged exception."""
    script = f"""
import logging
from facemint import log_setup
log_setup.configure({log_format!r})
with log_setup.log_scope(request_id="req-1"):
    log_setup.bind(tenant_id=7, user_id=9)
    logging.getLogger("facemint.demo").info("hello %s", "world")
    try:
        raise ValueError("boom")
    except ValueError:
        logging.getLogger("facemint.demo").exception("failed")
logging.getLogger("facemint.demo").info("outside")
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True)
    return done.stderr


def test_json_format_is_one_object_per_line_with_the_exception_text() -> None:
    lines = [json.loads(line) for line in _log_from_a_process("json").splitlines()]
    assert [line["message"] for line in lines] == ["hello world", "failed", "outside"]
    hello, failed, outside = lines
    assert hello["level"] == "INFO"
    assert hello["logger"] == "facemint.demo"
    assert (hello["request_id"], hello["tenant_id"], hello["user_id"]) == ("req-1", 7, 9)
    assert failed["level"] == "ERROR"
    assert "ValueError: boom" in failed["exception"]
    assert "request_id" not in outside
    assert "exception" not in hello


def test_text_format_is_unchanged_by_default() -> None:
    assert Settings.model_fields["log_format"].default == "text"
    output = _log_from_a_process("text").splitlines()
    assert output[0].endswith(" INFO facemint.demo hello world")
    assert not output[0].startswith("{")
    assert "req-1" not in "".join(output)
    text_config = uvicorn_log_config()
    assert "root" not in text_config
    assert "JsonFormatter" not in json.dumps(text_config)
    json_config = uvicorn_log_config("json")
    assert json_config["formatters"]["access"] == {"()": "facemint.log_setup.JsonFormatter"}
    assert json_config["loggers"]["uvicorn.access"]["filters"] == ["path_only"]  # the query string still dropped


def test_uvicorns_access_line_in_json_carries_the_request_id_without_the_query_string() -> None:
    """The set-up `serve` and `up` give uvicorn, on a real server: the access line is logged as the response starts,
    inside the request."""
    script = """
import logging, socket, threading, time, urllib.request
import uvicorn
from fastapi import FastAPI
from facemint.cli.main import uvicorn_log_config
from facemint.middleware import RequestIdMiddleware

app = FastAPI()

@app.get("/probe")
def probe() -> dict:
    logging.getLogger("facemint.probe").warning("handled")
    return {}

app.add_middleware(RequestIdMiddleware)
with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_config=uvicorn_log_config("json")))
thread = threading.Thread(target=server.run)
thread.start()
while not server.started:
    time.sleep(0.05)
request = urllib.request.Request(f"http://127.0.0.1:{port}/probe?q=private", headers={"X-Request-ID": "req-acc"})
urllib.request.urlopen(request, timeout=10).read()
server.should_exit = True
thread.join()
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True)
    lines = [json.loads(line) for line in (done.stdout + done.stderr).splitlines()]
    access = [line for line in lines if line["logger"] == "uvicorn.access"]
    assert len(access) == 1
    assert access[0]["request_id"] == "req-acc"
    assert "/probe" in access[0]["message"]
    assert "private" not in access[0]["message"]
    handled = [line for line in lines if line["logger"] == "facemint.probe"]
    assert [line["request_id"] for line in handled] == ["req-acc"]
