"""Metered jobs on real processes: the API (`facemint serve`), `facemint worker` processes with demo models,
Postgres and Redis (embedded unless FACEMINT_DATABASE_URL / FACEMINT_REDIS_URL are set).

1. submits, closed loop: authenticated, rate-limited `POST /v1/swaps` through HTTP, `--concurrency` connections
   each sending its next request when the last is answered: throughput, and the CPU time per submit of the API
   process, Postgres (postmaster and every backend), Redis and the load generator. Targets: API <= 2 ms,
   Postgres <= 1 ms, the generator below the API;
2. submits at a fixed 150 requests/s, open loop (sent at fixed times whatever the latency): p50/p99 (target p99
   < 50 ms) and the CPU per submit again;
3. commit to worker start: `jobs.started_at - jobs.dispatched_at` (both clock_timestamp(): the queue entry is
   made right after the commit) at a steady rate with one warm worker running (target p50 <= 20 ms, p99 reported);
4. end to end: jobs per second from submit to succeeded with demo models, 1 and 2 worker processes.

    .venv/bin/python bench/jobs.py [--seconds 10] [--concurrency 32] [--rate 150] [--rounds 3]
        [--generator wrk|python] [--baseline-src DIR [--baseline-hide uvloop,httptools]] [--submits-only]
        [--json out.json]

The load generator is Debian's `wrk` (`make bench-tools` installs it) with `bench/wrk_submit.lua`; without it
the script says so and falls back to an asyncio httpx client in this process, which costs more CPU per request
than the API on a 2-core box. Before each measured window the backlog of queued jobs left by the last one is
canceled (no worker runs in phases 1 and 2, and a backlog of thousands is beyond any plan's cap on active jobs).

`--baseline-src DIR` measures phases 1 and 2 also against the API of another checkout (for example
`git worktree add /tmp/before <commit>`) on the same servers, interleaved with this checkout's round by round:
before and after in one run. `--baseline-hide` hides modules from the baseline's process (the C event loop and
HTTP parser, to measure a checkout from before they were dependencies as it ran).

`--abuse-rules` measures only what the abuse rules cost a submit: closed-loop windows with the tenant's rules on
and off (and the baseline checkout, before the rules existed, when given), interleaved round by round, then the
check's own cost per call without HTTP (docs/benchmarks.md, "The abuse rules' cost")."""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import common
import httpx
import loadgen
import numpy as np
import procs
import psutil
from PIL import Image
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.orm import Session

from facemint.api_keys import service as key_service
from facemint.api_keys.schemas import ApiKeyCreate
from facemint.auth.scopes import Scope
from facemint.db import sqlalchemy_url
from inference.models import write_demo_models
from inference.models.demo import draw_demo_face

# The targets for a submit (CPU time per request, whatever the machine's load).
TARGET_API_CPU_MS = 2.0
TARGET_POSTGRES_CPU_MS = 1.0
TARGET_P99_MS = 50.0


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


def seed(srv: common.Servers, *, members: int) -> tuple[int, list[str]]:
    """The members' tenant and one API key per member."""
    settings = srv.settings()
    engine = create_engine(sqlalchemy_url(srv.database_url))
    with Session(engine) as session:
        tenant_id, accounts = common.seed_members(session, n=members, prefix="jobs")
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
    return tenant_id, keys


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


def cpu_meters(api: psutil.Process, db: Engine, redis_url: str) -> dict:
    """Readers of the CPU seconds used so far by the API (all its processes), Postgres (postmaster and every
    backend, including those that exited) and Redis. The load generator's are reported by `loadgen`."""
    from redis import Redis

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


# --- phases 1 and 2: submits ----------------------------------------------------------------------------------


@dataclass
class Api:
    name: str  # "this" (this checkout) or "baseline" (--baseline-src)
    base: str
    proc: psutil.Process


def clear_backlog(db: Engine) -> None:
    """Cancel the queued jobs a window left (no worker runs in these phases), so each window starts alike."""
    with db.begin() as conn:
        conn.execute(text("UPDATE jobs SET status = 'canceled', finished_at = now() WHERE status = 'queued'"))
    with db.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(text("VACUUM ANALYZE jobs"))


def window(
    api: Api, db: Engine, redis_url: str, submits: loadgen.Submits, args: argparse.Namespace, rate: float
) -> dict:
    """One measured window against one API: closed loop (`rate` 0) or a fixed rate."""
    clear_backlog(db)
    meters = cpu_meters(api.proc, db, redis_url)
    before = {name: read() for name, read in meters.items()}
    connections = args.concurrency if rate == 0 else args.rate_connections
    result = loadgen.run_measured(
        api.base, submits, seconds=args.seconds, connections=connections, rate=rate, generator=args.generator
    )
    n = max(1, result["requests"])
    cpu = {name: round((read() - before[name]) * 1000 / n, 3) for name, read in meters.items()}
    cpu["load_generator"] = round(result.pop("generator_cpu_s") * 1000 / n, 3)
    result["cpu_ms_per_submit"] = cpu
    result["load_1min"] = round(os.getloadavg()[0], 2)
    return result


def median_of(windows: list[dict]) -> dict:
    """The median of each figure over the rounds (and every window kept under `windows`)."""
    cpu_keys = windows[0]["cpu_ms_per_submit"]
    return {
        "per_second": statistics.median(w["per_second"] for w in windows),
        "p50_ms": statistics.median(w["p50_ms"] for w in windows),
        "p99_ms": statistics.median(w["p99_ms"] for w in windows),
        "sent_late_over_5ms": max(w["sent_late_over_5ms"] for w in windows),
        "cpu_ms_per_submit": {
            k: round(statistics.median(w["cpu_ms_per_submit"][k] for w in windows), 3) for k in cpu_keys
        },
        "codes": {c: sum(w["codes"].get(c, 0) for w in windows) for c in {c for w in windows for c in w["codes"]}},
        "windows": windows,
    }


def submit_phases(apis: list[Api], db: Engine, redis_url: str, keys: list[str], args: argparse.Namespace) -> dict:
    """Phases 1 and 2 for each API, interleaved round by round (the order alternates), medians over the rounds."""
    submits = loadgen.Submits(BODY, BOUNDARY, keys)
    for api in apis:  # warm-up: connections, prepared statements, the interpreter's caches
        loadgen.run(api.base, submits, seconds=2, connections=args.concurrency, generator=args.generator)
    runs: dict[str, dict[str, list[dict]]] = {api.name: {"closed_loop": [], "fixed_rate": []} for api in apis}
    for r in range(args.rounds):
        for api in apis if r % 2 == 0 else apis[::-1]:
            for phase, rate in (("closed_loop", 0.0), ("fixed_rate", args.rate)):
                result = window(api, db, redis_url, submits, args, rate)
                runs[api.name][phase].append(result)
                brief = {k: result[k] for k in ("per_second", "p50_ms", "p99_ms", "sent_late_over_5ms", "codes")}
                print(
                    f"round {r + 1} {api.name:8s} {phase:11s} {brief} CPU ms/submit {result['cpu_ms_per_submit']}"
                    f" (load {result['load_1min']})",
                    flush=True,
                )
    return {name: {phase: median_of(ws) for phase, ws in phases.items()} for name, phases in runs.items()}


def verdict(ok: bool) -> str:
    return "met" if ok else "MISSED"


def print_summary(name: str, figures: dict, args: argparse.Namespace) -> None:
    closed, fixed = figures["closed_loop"], figures["fixed_rate"]
    print(f"\n{name}: medians of {args.rounds} round(s), {args.generator} load generator")
    for label, phase in ((f"closed loop, {args.concurrency} connections", closed), (f"fixed {args.rate:g}/s", fixed)):
        cpu = phase["cpu_ms_per_submit"]
        print(
            f"  {label:28s} {phase['per_second']:7.1f}/s  p50 {phase['p50_ms']:6.1f} ms  p99 {phase['p99_ms']:6.1f} ms"
            f"  CPU ms/submit: API {cpu['api']:.2f}, Postgres {cpu['postgres']:.2f}, Redis {cpu['redis']:.2f},"
            f" generator {cpu['load_generator']:.2f}"
        )
    cpu = closed["cpu_ms_per_submit"]
    rate_cpu = fixed["cpu_ms_per_submit"]
    print(
        f"  API CPU per submit <= {TARGET_API_CPU_MS:g} ms: {cpu['api']:.2f} closed loop, {rate_cpu['api']:.2f} at"
        f" {args.rate:g}/s: {verdict(max(cpu['api'], rate_cpu['api']) <= TARGET_API_CPU_MS)}"
    )
    print(
        f"  Postgres CPU per submit <= {TARGET_POSTGRES_CPU_MS:g} ms: {cpu['postgres']:.2f} closed loop,"
        f" {rate_cpu['postgres']:.2f} at {args.rate:g}/s:"
        f" {verdict(max(cpu['postgres'], rate_cpu['postgres']) <= TARGET_POSTGRES_CPU_MS)}"
    )
    print(
        f"  p99 < {TARGET_P99_MS:g} ms at {args.rate:g}/s: {fixed['p99_ms']:.1f} ms"
        f" ({fixed['sent_late_over_5ms']} sends late by > 5 ms): {verdict(fixed['p99_ms'] < TARGET_P99_MS)}"
    )
    print(
        f"  load generator below the API: {cpu['load_generator']:.2f} against {cpu['api']:.2f} ms per request:"
        f" {verdict(cpu['load_generator'] < cpu['api'])}"
    )
    print(f"  throughput, closed loop: {closed['per_second']:.1f} submits/s (reported)", flush=True)


def hidden_modules(names: list[str], where: Path) -> str:
    """A directory of stand-in packages that fail to import (put first on the baseline's PYTHONPATH)."""
    for name in names:
        (where / name).mkdir(parents=True, exist_ok=True)
        (where / name / "__init__.py").write_text(f"raise ImportError('{name} hidden from the baseline')\n")
    return str(where)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=10, help="each measured window")
    parser.add_argument("--concurrency", type=int, default=32, help="connections of the closed loop")
    parser.add_argument("--rate", type=float, default=150, help="requests per second of phase 2")
    parser.add_argument("--rate-connections", type=int, default=64, help="connections that keep to that rate")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--generator", choices=("wrk", "python"), default="wrk" if loadgen.wrk_path() else "python")
    parser.add_argument("--baseline-src", type=Path, help="another checkout whose API is measured alongside")
    parser.add_argument("--baseline-hide", default="", help="modules hidden from the baseline (comma-separated)")
    parser.add_argument("--submits-only", action="store_true", help="phases 1 and 2 only")
    parser.add_argument("--api-workers", type=int, default=1)
    parser.add_argument("--members", type=int, default=50)
    parser.add_argument("--e2e-jobs", type=int, default=400)
    parser.add_argument("--handover-rate", type=float, default=3.0)
    parser.add_argument(
        "--abuse-rules",
        action="store_true",
        help="only the abuse rules' cost: closed-loop submits with the tenant's rules on and off (and the baseline)",
    )
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    common.bounded(1500)
    if args.generator == "python":
        print(
            f"note: wrk is not installed ({loadgen.INSTALL_HINT}); the load generator is httpx in this process, which"
            " costs more CPU per request than the API and competes with it for the same cores",
            flush=True,
        )
    out: dict = {"load": procs.load(), "generator": args.generator}
    tmp = Path(tempfile.mkdtemp(prefix="fm-bench-jobs-"))
    models = tmp / "models"
    write_demo_models(models)
    with common.servers("jobs") as srv, ExitStack() as stack:
        out["environment"] = common.describe(srv)
        tenant_id, keys = seed(srv, members=args.members)
        db = create_engine(sqlalchemy_url(srv.database_url))
        env = {"FACEMINT_DATA_DIR": str(tmp / "data"), "FACEMINT_PREFER_WAIT_MAX_SECONDS": "0"}
        base, proc = stack.enter_context(procs.api_process(srv, workers=args.api_workers, **env))
        apis = [Api("this", base, proc)]
        if args.baseline_src:
            src = args.baseline_src.resolve()
            hide = [m for m in args.baseline_hide.split(",") if m]
            path = ([hidden_modules(hide, tmp / "hidden")] if hide else []) + [str(src / "platform"), str(src)]
            baseline_env = {**env, "FACEMINT_DATA_DIR": str(tmp / "baseline-data"), "PYTHONPATH": os.pathsep.join(path)}
            b_base, b_proc = stack.enter_context(procs.api_process(srv, workers=args.api_workers, **baseline_env))
            apis.append(Api("baseline", b_base, b_proc))
            out["baseline"] = {"src": str(src), "hidden": hide}
        if args.abuse_rules:
            out["abuse_rules"] = abuse_phases(apis, db, srv.redis_url, keys, args, tenant_id=tenant_id)
            db.dispose()
            if args.json:
                args.json.write_text(json.dumps(out, indent=2, default=str))
            return
        out["submits"] = submit_phases(apis, db, srv.redis_url, keys, args)
        for api in apis:
            print_summary(
                f"{api.name} ({args.baseline_src if api.name == 'baseline' else 'this checkout'})",
                out["submits"][api.name],
                args,
            )
        if not args.submits_only:
            handover_and_end_to_end(srv, db, base, keys, tmp, models, args, out)
        db.dispose()
    if args.json:
        args.json.write_text(json.dumps(out, indent=2, default=str))


# --- the abuse rules' cost on the submit path (--abuse-rules) ---------------------------------------------------

# Rules the benchmark's traffic never triggers (what is measured is counting and evaluating them on every submit):
# one of each kind; the same-face rule is the worker's and costs the submit nothing.
ABUSE_RULES = [
    {"kind": "jobs_per_window", "max_jobs": 1_000_000, "window_seconds": 60},
    {"kind": "spend_rate", "multiple": 1000.0, "baseline_hours": 24, "window_seconds": 600, "min_tokens": 10**12},
    {"kind": "same_face_per_window", "max_jobs": 1_000_000, "window_seconds": 3600},
]


def set_abuse_rules(db: Engine, redis_url: str, tenant_id: int, *, enabled: bool) -> None:
    """Turn the tenant's rules on or off as a change through the admin API would: a new version, mirrored."""
    from redis import Redis

    from facemint.abuse import counters
    from facemint.abuse.orm import AbuseRule

    with Session(db) as session:
        if not session.scalar(text("SELECT count(*) FROM abuse_rules WHERE tenant_id = :t"), {"t": tenant_id}):
            session.add_all(AbuseRule(tenant_id=tenant_id, action="flag", **rule) for rule in ABUSE_RULES)
        session.execute(
            text("UPDATE abuse_rules SET enabled = :on WHERE tenant_id = :t"), {"on": enabled, "t": tenant_id}
        )
        session.execute(
            text("UPDATE tenants SET abuse_rules_version = abuse_rules_version + 1 WHERE id = :t"), {"t": tenant_id}
        )
        session.commit()
        rule_set = counters.load_rule_set(session, tenant_id=tenant_id)
    redis = Redis.from_url(redis_url)
    assert counters.publish(redis, tenant_id=tenant_id, rule_set=rule_set)
    redis.close()


def abuse_call_cost(db: Engine, redis_url: str, tenant_id: int, *, calls: int = 3000) -> dict:
    """The abuse check's own cost, without HTTP: `check_submit` called in a loop, with the rules on and off. CPU of
    this process (the API's side of the call) and of Redis (the script), per call."""
    from redis import Redis

    from facemint.abuse import counters

    redis = Redis.from_url(redis_url)
    redis_cpu = cpu_meters(psutil.Process(), db, redis_url)["redis"]
    user_id = 10**9  # no seeded user: its counters are its own

    def never() -> counters.RuleSet:
        raise AssertionError("the rules are mirrored before each run")

    figures = {}
    for enabled in (False, True, False, True):
        set_abuse_rules(db, redis_url, tenant_id, enabled=enabled)
        cpu, wall, server = time.process_time(), time.perf_counter(), redis_cpu()
        for _ in range(calls):
            counters.check_submit(redis, tenant_id=tenant_id, user_id=user_id, tokens=1, load=never)
        name = "rules" if enabled else "no rules"
        figures.setdefault(name, []).append(
            {
                "client_cpu_us": round((time.process_time() - cpu) / calls * 1e6, 1),
                "wall_us": round((time.perf_counter() - wall) / calls * 1e6, 1),
                "redis_cpu_us": round((redis_cpu() - server) / calls * 1e6, 1),
            }
        )
    redis.close()
    return {name: {k: min(run[k] for run in runs) for k in runs[0]} for name, runs in figures.items()}


def abuse_phases(
    apis: list[Api], db: Engine, redis_url: str, keys: list[str], args: argparse.Namespace, *, tenant_id: int
) -> dict:
    """Closed-loop submit windows, interleaved round by round: this checkout with the tenant's three rules on, with
    none (every submit still runs the check, which finds an empty rule set), and the baseline checkout if given
    (the code before the abuse rules). Medians of the rounds, and the check's own cost per call."""
    submits = loadgen.Submits(BODY, BOUNDARY, keys)
    this = next(api for api in apis if api.name == "this")
    modes: list[tuple[str, Api, bool | None]] = [("rules", this, True), ("no rules", this, False)]
    modes += [("baseline", api, None) for api in apis if api.name == "baseline"]
    set_abuse_rules(db, redis_url, tenant_id, enabled=False)
    for api in apis:  # warm-up: connections, prepared statements, the interpreter's caches
        loadgen.run(api.base, submits, seconds=2, connections=args.concurrency, generator=args.generator)
    runs: dict[str, list[dict]] = {name: [] for name, _, _ in modes}
    for r in range(args.rounds):
        for name, api, enabled in modes if r % 2 == 0 else modes[::-1]:
            if enabled is not None:
                set_abuse_rules(db, redis_url, tenant_id, enabled=enabled)
            result = window(api, db, redis_url, submits, args, 0.0)
            runs[name].append(result)
            print(
                f"round {r + 1} {name:9s} {result['per_second']}/s {result['codes']} CPU ms/submit"
                f" {result['cpu_ms_per_submit']} (load {result['load_1min']})",
                flush=True,
            )
    figures: dict = {name: median_of(windows) for name, windows in runs.items()}
    figures["check_per_call"] = abuse_call_cost(db, redis_url, tenant_id)
    print(f"\nabuse rules, closed loop ({args.concurrency} connections), medians of {args.rounds} round(s):")
    for name in runs:
        cpu = figures[name]["cpu_ms_per_submit"]
        print(
            f"  {name:9s} {figures[name]['per_second']:7.1f}/s  CPU ms/submit: API {cpu['api']:.2f},"
            f" Postgres {cpu['postgres']:.2f}, Redis {cpu['redis']:.3f}"
        )
    print(f"  the check alone, per call (best of 2 x 3000 calls): {figures['check_per_call']}", flush=True)
    return figures


# --- phases 3 and 4: hand-over and end to end -----------------------------------------------------------------


def handover_and_end_to_end(
    srv: common.Servers,
    db: Engine,
    base: str,
    keys: list[str],
    tmp: Path,
    models: Path,
    args: argparse.Namespace,
    out: dict,
) -> None:
    clear_backlog(db)  # the next phases measure queueing with an empty queue
    from redis import Redis

    Redis.from_url(srv.redis_url).flushdb()
    workers = start_workers(srv, tmp / "data", models, 1)
    try:
        wait_ready(db, 1, srv.redis_url)
        since = max_job_id(db)
        # A rate the worker keeps up with (a demo job takes ~50-100 ms here): this measures the hand-over from
        # commit to a waiting worker, not time spent queued behind other jobs.
        seconds = max(10.0, args.seconds)
        asyncio.run(open_loop(base, keys, rate=args.handover_rate, seconds=seconds))
        wait_all_done(db, since, int(args.handover_rate * seconds))
        out["commit_to_start"] = queue_latency(db, since)
        out["commit_to_start"]["rate"] = args.handover_rate
        print(
            f"\ncommit to worker start (1 idle warm worker, {args.handover_rate} jobs/s):",
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
