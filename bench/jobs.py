"""Issue 4 targets, on real processes: the API (`facemint serve`), `facemint worker` processes with demo models,
Postgres and Redis (embedded unless FACEMINT_DATABASE_URL / FACEMINT_REDIS_URL are set).

1. submit throughput: authenticated, rate-limited `POST /v1/swaps` through HTTP, closed loop (target >= 300/s);
2. latency at a steady 100 requests/s, open loop (target p99 <= 100 ms);
3. commit to worker start: `jobs.started_at - jobs.dispatched_at` (both clock_timestamp(): the queue entry is
   made right after the commit) at a steady rate with one warm worker running (target p50 <= 20 ms, p99 reported);
4. end to end: jobs per second from submit to succeeded with demo models, 1 and 2 worker processes.

    .venv/bin/python bench/jobs.py [--seconds 10] [--concurrency 32] [--api-workers 1] [--json out.json]

The load generator runs on the same machine (its CPU use is reported: on 2 cores it competes with the API)."""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import common
import httpx
import numpy as np
import procs
import psutil
from PIL import Image
from sqlalchemy import create_engine, text
from sqlalchemy.orm import Session

from facemint.api_keys import service as key_service
from facemint.api_keys.schemas import ApiKeyCreate
from facemint.auth.scopes import Scope
from facemint.db import sqlalchemy_url
from inference.models import write_demo_models
from inference.models.demo import draw_demo_face


def face_png(identity: int) -> bytes:
    image = np.zeros((256, 256, 3), dtype=np.uint8)
    draw_demo_face(image, 64, 64, 128, identity=identity)
    buffer = io.BytesIO()
    Image.fromarray(image[:, :, ::-1]).save(buffer, format="PNG")
    return buffer.getvalue()


SOURCE, TARGET = face_png(1), face_png(2)
BOUNDARY = "facemint-bench-boundary"


def multipart_body() -> bytes:
    """Encoded once: per-request multipart encoding in the load generator would cost more CPU than the API's
    own work (measured: the generator was the bottleneck on 2 cores)."""
    parts = []
    for name, data in (("source", SOURCE), ("target", TARGET)):
        parts.append(
            f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="{name}"; filename="{name}.png"\r\n'
            "Content-Type: image/png\r\n\r\n".encode()
            + data
            + b"\r\n"
        )
    return b"".join(parts) + f"--{BOUNDARY}--\r\n".encode()


BODY = multipart_body()


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def seed(srv: common.Servers, *, members: int) -> list[str]:
    settings = srv.settings()
    engine = create_engine(sqlalchemy_url(srv.database_url))
    with Session(engine) as session:
        _, accounts = common.seed_members(session, n=members, prefix="jobs")
        common.fund_set_based(session, account_ids=accounts, amount=10_000_000, key="bench-jobs-fund")
        session.commit()
        user_ids = session.execute(
            text("SELECT id FROM users WHERE account_id = ANY(:ids) ORDER BY id"), {"ids": accounts}
        ).scalars()
        keys = []
        for user_id in user_ids:
            _, key = key_service.create(
                session,
                context=None,
                settings=settings,
                data=ApiKeyCreate(user_id=user_id, name="bench", scopes=[Scope.swaps_write, Scope.jobs_read]),
            )
            keys.append(key)
        session.commit()
    engine.dispose()
    return keys


async def _one(client: httpx.AsyncClient, key: str, latencies: list[float], codes: dict[int, int]) -> None:
    started = time.perf_counter()
    response = await client.post(
        "/v1/swaps",
        headers={
            "Authorization": f"Bearer {key}",
            "Idempotency-Key": os.urandom(12).hex(),
            "Content-Type": f"multipart/form-data; boundary={BOUNDARY}",
        },
        content=BODY,
    )
    latencies.append((time.perf_counter() - started) * 1000)
    codes[response.status_code] = codes.get(response.status_code, 0) + 1


async def closed_loop(base: str, keys: list[str], *, seconds: float, concurrency: int) -> dict:
    latencies: list[float] = []
    codes: dict[int, int] = {}
    stop = time.perf_counter() + seconds
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=base, limits=limits, timeout=30, trust_env=False) as client:

        async def loop(i: int) -> None:
            n = 0
            while time.perf_counter() < stop:
                await _one(client, keys[(i + n * concurrency) % len(keys)], latencies, codes)
                n += 1

        started = time.perf_counter()
        await asyncio.gather(*(loop(i) for i in range(concurrency)))
        elapsed = time.perf_counter() - started
    return {
        "requests": len(latencies),
        "per_second": round(len(latencies) / elapsed, 1),
        "codes": codes,
        "p50_ms": round(pct(latencies, 0.5), 1),
        "p99_ms": round(pct(latencies, 0.99), 1),
    }


async def open_loop(base: str, keys: list[str], *, rate: float, seconds: float) -> dict:
    latencies: list[float] = []
    codes: dict[int, int] = {}
    late = 0
    limits = httpx.Limits(max_connections=256, max_keepalive_connections=64)
    async with httpx.AsyncClient(base_url=base, limits=limits, timeout=30, trust_env=False) as client:
        tasks = []
        started = time.perf_counter()
        total = int(rate * seconds)
        for n in range(total):
            due = started + n / rate
            delay = due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            elif delay < -0.005:
                late += 1
            tasks.append(asyncio.create_task(_one(client, keys[n % len(keys)], latencies, codes)))
        await asyncio.gather(*tasks)
    return {
        "rate": rate,
        "requests": len(latencies),
        "codes": codes,
        "sent_late_over_5ms": late,
        "p50_ms": round(pct(latencies, 0.5), 1),
        "p90_ms": round(pct(latencies, 0.9), 1),
        "p99_ms": round(pct(latencies, 0.99), 1),
        "max_ms": round(max(latencies), 1),
    }


def cpu_meters(api: psutil.Process, db, redis_url: str) -> dict:  # type: ignore[no-untyped-def]
    """CPU seconds so far of: the API (all its processes), Postgres (postmaster and every backend), Redis, and
    this process alone (the load generator)."""
    from redis import Redis

    me = psutil.Process()
    pg = procs.postgres_root(db)
    redis_pid = Redis.from_url(redis_url).info("server").get("process_id")
    redis_proc = psutil.Process(int(redis_pid)) if redis_pid else None

    def own(proc: psutil.Process | None) -> float:
        if proc is None:
            return float("nan")
        t = proc.cpu_times()
        return t.user + t.system

    return {
        "api": lambda: procs.tree_cpu(api),
        "postgres": lambda: procs.tree_cpu(pg) if pg is not None else float("nan"),
        "redis": lambda: own(redis_proc),
        "load_generator": lambda: own(me),
    }


def start_workers(srv: common.Servers, data_dir: Path, models: Path, n: int) -> list[subprocess.Popen[bytes]]:
    env = {
        **os.environ,
        "FACEMINT_DATABASE_URL": srv.database_url,
        "FACEMINT_REDIS_URL": srv.redis_url,
        "FACEMINT_DATA_DIR": str(data_dir),
        "FACEMINT_MODELS_DIR": str(models),
        "FACEMINT_ENGINE_PROVIDER": "cpu",
        "FACEMINT_JWT_SECRET": common.JWT_SECRET,
        "FACEMINT_API_KEY_PEPPER": common.PEPPER,
    }
    exe = Path(sys.executable).parent / "facemint"
    return [
        subprocess.Popen([str(exe), "worker"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for _ in range(n)
    ]


def stop(workers: list[subprocess.Popen[bytes]]) -> None:
    for w in workers:
        w.terminate()
    for w in workers:
        try:
            w.wait(timeout=15)
        except subprocess.TimeoutExpired:
            w.kill()


def wait_ready(engine, workers: int, redis_url: str) -> None:  # type: ignore[no-untyped-def]
    """Workers register in Redis once the engine is loaded and RQ starts listening."""
    from redis import Redis
    from rq import Worker

    redis = Redis.from_url(redis_url)
    deadline = time.monotonic() + 120
    while len(Worker.all(connection=redis)) < workers:
        if time.monotonic() > deadline:
            raise RuntimeError("workers did not start")
        time.sleep(0.2)
    redis.close()


def queue_latency(engine, since_id: int) -> dict:  # type: ignore[no-untyped-def]
    with engine.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT extract(epoch FROM started_at - dispatched_at) * 1000 AS ms FROM jobs "
                "WHERE id > :since AND attempts = 1 AND started_at IS NOT NULL"
            ),
            {"since": since_id},
        ).scalars()
        values = [float(v) for v in rows]
    return {
        "jobs": len(values),
        "p50_ms": round(pct(values, 0.5), 2),
        "p90_ms": round(pct(values, 0.9), 2),
        "p99_ms": round(pct(values, 0.99), 2),
        "max_ms": round(max(values), 2) if values else None,
    }


def max_job_id(engine) -> int:  # type: ignore[no-untyped-def]
    with engine.connect() as conn:
        return int(conn.execute(text("SELECT coalesce(max(id), 0) FROM jobs")).scalar_one())


def wait_all_done(engine, since_id: int, expected: int, timeout: float = 600) -> dict:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while True:
        with engine.connect() as conn:
            row = conn.execute(
                text(
                    "SELECT count(*) FILTER (WHERE status IN ('succeeded','failed','canceled')) AS done, "
                    "count(*) FILTER (WHERE status = 'succeeded') AS ok, "
                    "extract(epoch FROM max(finished_at) - min(created_at)) AS span "
                    "FROM jobs WHERE id > :since"
                ),
                {"since": since_id},
            ).one()
        if row.done >= expected or time.monotonic() > deadline:
            return {"jobs": int(row.done), "succeeded": int(row.ok), "seconds": round(float(row.span or 0), 2)}
        time.sleep(0.2)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--api-workers", type=int, default=1)
    parser.add_argument("--members", type=int, default=50)
    parser.add_argument("--e2e-jobs", type=int, default=400)
    parser.add_argument("--handover-rate", type=float, default=3.0)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    common.bounded(1500)
    out: dict = {"load": procs.load()}
    tmp = Path(tempfile.mkdtemp(prefix="fm-bench-jobs-"))
    models = tmp / "models"
    write_demo_models(models)
    with common.servers("jobs") as srv:
        out["environment"] = common.describe(srv)
        keys = seed(srv, members=args.members)
        db = create_engine(sqlalchemy_url(srv.database_url))
        env = {"FACEMINT_DATA_DIR": str(tmp / "data"), "FACEMINT_PREFER_WAIT_MAX_SECONDS": "0"}
        with procs.api_process(srv, workers=args.api_workers, **env) as (base, api):
            asyncio.run(closed_loop(base, keys, seconds=2, concurrency=args.concurrency))  # warm-up
            meters = cpu_meters(api, db, srv.redis_url)
            before = {name: read() for name, read in meters.items()}
            out["submit_closed_loop"] = asyncio.run(
                closed_loop(base, keys, seconds=args.seconds, concurrency=args.concurrency)
            )
            n = out["submit_closed_loop"]["requests"]
            out["submit_closed_loop"]["cpu_ms_per_request"] = {
                name: round((read() - before[name]) * 1000 / n, 2) for name, read in meters.items()
            }
            print("submit, closed loop:", out["submit_closed_loop"], flush=True)
            out["submit_steady_100"] = asyncio.run(open_loop(base, keys, rate=100, seconds=args.seconds))
            print("submit, steady 100/s:", out["submit_steady_100"], flush=True)
            # Drop the backlog made so far: the next phases measure queueing with an empty queue.
            with db.begin() as conn:
                conn.execute(text("UPDATE jobs SET status = 'canceled', finished_at = now() WHERE status = 'queued'"))
            from redis import Redis

            Redis.from_url(srv.redis_url).flushdb()
            workers = start_workers(srv, tmp / "data", models, 1)
            try:
                wait_ready(db, 1, srv.redis_url)
                since = max_job_id(db)
                # A rate the worker keeps up with (a demo job takes ~50-100 ms here): this measures the hand-over
                # from commit to a waiting worker, not time spent queued behind other jobs.
                seconds = max(10.0, args.seconds)
                asyncio.run(open_loop(base, keys, rate=args.handover_rate, seconds=seconds))
                wait_all_done(db, since, int(args.handover_rate * seconds))
                out["commit_to_start"] = queue_latency(db, since)
                out["commit_to_start"]["rate"] = args.handover_rate
                print(
                    f"commit to worker start (1 idle warm worker, {args.handover_rate} jobs/s):",
                    out["commit_to_start"],
                    flush=True,
                )
                for n in (1, 2):
                    if n == 2:
                        workers += start_workers(srv, tmp / "data", models, 1)
                        wait_ready(db, 2, srv.redis_url)
                    since = max_job_id(db)
                    asyncio.run(closed_loop_count(base, keys, total=args.e2e_jobs, concurrency=16))
                    done = wait_all_done(db, since, args.e2e_jobs)
                    done["per_second"] = round(done["jobs"] / done["seconds"], 1) if done["seconds"] else None
                    out[f"end_to_end_{n}_workers"] = done
                    print(f"end to end, {n} worker(s):", done, flush=True)
            finally:
                stop(workers)
        db.dispose()
    if args.json:
        args.json.write_text(json.dumps(out, indent=2, default=str))


async def closed_loop_count(base: str, keys: list[str], *, total: int, concurrency: int) -> None:
    latencies: list[float] = []
    codes: dict[int, int] = {}
    counter = iter(range(total))
    async with httpx.AsyncClient(base_url=base, timeout=30, trust_env=False) as client:

        async def loop() -> None:
            for n in counter:
                await _one(client, keys[n % len(keys)], latencies, codes)

        await asyncio.gather(*(loop() for _ in range(concurrency)))
    assert codes.get(202) == total, codes


if __name__ == "__main__":
    main()
