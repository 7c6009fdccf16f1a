"""Scale-out on one machine: 1, 2 and 4 API processes (`facemint serve`, each on its own port) and 1, 2 and 4 job
workers (`facemint worker`, demo models on the CPU) against one Postgres (embedded unless FACEMINT_DATABASE_URL is
set) and one Redis. For each combination a batch of jobs is submitted through the APIs (a closed loop spread over
them) and followed to settlement (submit -> worker -> capture); reported:

- settled jobs per second: the batch over the time from its first submit to its last `finished_at`;
- CPU per settled job of Postgres (the postmaster and every backend, read from /proc through psutil, less the
  benchmark's own polling backend and less what the idle workers' own polling, measured just before each batch
  and reported apart, cost over the same time), the API processes and the workers;
- from those two: the jobs per second one Postgres core settles, and how many GPU workers one core keeps up with
  at a given GPU swap rate (`--gpu-rate`, default 100 images per second per GPU), each worker costing that many
  jobs' Postgres CPU per second plus its idle polling.

    .venv/bin/python bench/scale.py [--jobs 200] [--apis 1,2,4] [--workers 1,2,4] [--gpu-rate 100] [--quick]

On a 2-core machine 4 API processes and 4 workers measure contention for the cores, not capacity: jobs per second
stop growing once the cores are busy. Postgres's CPU per settled job is the figure that carries over to a bigger
machine, and the GPU estimate rests on it alone."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

import common
import jobs
import procs
import psutil
from sqlalchemy import Engine, create_engine, text

from facemint.db import sqlalchemy_url
from inference.models import write_demo_models


def backend_cpu(db: Engine) -> tuple[psutil.Process | None, float]:
    """The polling connection's own backend (its CPU is the benchmark's, not the system's) and its CPU so far."""
    with db.connect() as conn:
        pid = conn.execute(text("SELECT pg_backend_pid()")).scalar_one()
    try:
        proc = psutil.Process(pid)
        t = proc.cpu_times()
        return proc, t.user + t.system
    except psutil.Error:
        return None, 0.0


def own_cpu(proc: psutil.Process | None) -> float:
    if proc is None:
        return 0.0
    try:
        t = proc.cpu_times()
        return t.user + t.system
    except psutil.Error:
        return 0.0


def idle_rate(postgres: psutil.Process | None, seconds: float) -> float:
    """Postgres's CPU (ms per second) with the workers idle: their sweeper, sealer and webhook polling."""
    if postgres is None:
        return float("nan")
    before = procs.tree_cpu(postgres)
    time.sleep(seconds)
    return (procs.tree_cpu(postgres) - before) * 1000 / seconds


def run_batch(
    db: Engine,
    postgres: psutil.Process | None,
    apis: list[tuple[str, psutil.Process]],
    workers: list[psutil.Process],
    keys: list[str],
    *,
    total: int,
    concurrency: int,
    background_ms_per_s: float,
) -> dict:
    """Submit `total` jobs over the APIs (round robin), wait until all are settled, and meter the window."""
    db.dispose()  # one fresh polling connection: its backend is the one left out of Postgres's figure
    poller, poller_before = backend_cpu(db)
    since = jobs.max_job_id(db)
    pg_before = procs.tree_cpu(postgres) if postgres is not None else float("nan")
    api_before = sum(procs.tree_cpu(p) for _, p in apis)
    worker_before = sum(own_cpu(w) for w in workers)
    started = time.monotonic()
    asyncio.run(submit_spread([base for base, _ in apis], keys, total=total, concurrency=concurrency))
    done = jobs.wait_all_done(db, since, total)
    waited = time.monotonic() - started
    pg = (procs.tree_cpu(postgres) if postgres is not None else float("nan")) - pg_before
    pg -= own_cpu(poller) - poller_before
    background = background_ms_per_s * waited / 1000
    api = sum(procs.tree_cpu(p) for _, p in apis) - api_before
    work = sum(own_cpu(w) for w in workers) - worker_before
    n = max(1, done["jobs"])
    return {
        "jobs": done["jobs"],
        "succeeded": done["succeeded"],
        "seconds": done["seconds"],
        "wall_seconds": round(waited, 2),
        "settled_per_second": round(done["jobs"] / done["seconds"], 1) if done["seconds"] else None,
        "cpu_ms_per_job": {
            # Less what the idle workers' polling cost over the same time (reported on its own).
            "postgres": round((pg - background) * 1000 / n, 3),
            "postgres_gross": round(pg * 1000 / n, 3),
            "api": round(api * 1000 / n, 3),
            "workers": round(work * 1000 / n, 2),
        },
        "load_1min": round(os.getloadavg()[0], 2),
    }


async def submit_spread(bases: list[str], keys: list[str], *, total: int, concurrency: int) -> None:
    """A closed loop of `concurrency` connections in all, each API getting its share of them."""
    import httpx

    latencies: list[float] = []
    codes: dict[int, int] = {}
    counter = iter(range(total))
    clients = [httpx.AsyncClient(base_url=base, timeout=60, trust_env=False) for base in bases]
    try:

        async def loop(client: httpx.AsyncClient) -> None:
            for n in counter:
                await jobs._one(client, keys[n % len(keys)], latencies, codes)

        await asyncio.gather(*(loop(clients[i % len(clients)]) for i in range(concurrency)))
    finally:
        for client in clients:
            await client.aclose()
    if codes.get(202) != total:
        raise RuntimeError(f"not every submit was accepted: {codes}")


def gpu_estimate(pg_ms_per_job: float, idle_ms_per_s_per_worker: float, gpu_rate: float) -> dict:
    """GPU workers one Postgres core keeps up with: each costs `gpu_rate` jobs' worth of Postgres CPU per second,
    plus its own polling (sweeper, sealer, webhook sender)."""
    per_worker = gpu_rate * pg_ms_per_job + idle_ms_per_s_per_worker
    return {
        "jobs_per_second_per_core": round(1000 / pg_ms_per_job) if pg_ms_per_job > 0 else None,
        "gpu_rate_jobs_per_second": gpu_rate,
        "ms_per_s_per_gpu_worker": round(per_worker, 1),
        "gpu_workers_per_core": round(1000 / per_worker, 1) if per_worker > 0 else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=200, help="jobs per combination")
    parser.add_argument("--apis", default="1,2,4")
    parser.add_argument("--workers", default="1,2,4")
    parser.add_argument("--concurrency", type=int, default=8, help="submit connections in all")
    parser.add_argument("--gpu-rate", type=float, default=100.0, help="swaps per second one GPU worker does")
    parser.add_argument("--idle-seconds", type=float, default=5.0, help="idle window before each batch")
    parser.add_argument("--quick", action="store_true", help="1+1, 2+2 and 4+4 only, 30 jobs each")
    parser.add_argument("--time-limit", type=int, default=1200)
    parser.add_argument("--json", type=Path, default=common.ROOT / "bench" / "out" / "scale.json")
    args = parser.parse_args()
    common.bounded(args.time_limit)
    api_counts = [int(n) for n in args.apis.split(",")]
    worker_counts = [int(n) for n in args.workers.split(",")]
    if args.quick:
        combos = [(n, n) for n in (1, 2, 4)]
        args.jobs, args.idle_seconds = 30, 1.5
    else:
        combos = [(a, w) for w in worker_counts for a in api_counts]
    print(procs.load(), f"; {os.cpu_count()} cores", flush=True)
    tmp = Path(tempfile.mkdtemp(prefix="fm-bench-scale-"))
    models = tmp / "models"
    write_demo_models(models)
    report: dict = {"load": procs.load(), "cores": os.cpu_count(), "results": []}
    with common.servers("scale") as srv, ExitStack() as stack:
        report["environment"] = common.describe(srv)
        _, keys = jobs.seed(srv, members=50)
        db = create_engine(sqlalchemy_url(srv.database_url), pool_size=1)
        postgres = procs.postgres_root(db)
        env = {"FACEMINT_DATA_DIR": str(tmp / "data"), "FACEMINT_PREFER_WAIT_MAX_SECONDS": "0"}
        apis = [stack.enter_context(procs.api_process(srv, **env)) for _ in range(max(a for a, _ in combos))]
        workers: list = []
        stack.callback(lambda: jobs.stop(workers))
        for n_apis, n_workers in combos:
            if len(workers) < n_workers:
                workers += jobs.start_workers(srv, tmp / "data", models, n_workers - len(workers))
            while len(workers) > n_workers:
                jobs.stop([workers.pop()])
            jobs.wait_ready(db, n_workers, srv.redis_url)
            time.sleep(1)  # the workers' own start-up work (sweeps, listener) settles first
            worker_procs = [psutil.Process(w.pid) for w in workers]
            background = idle_rate(postgres, args.idle_seconds)
            result = run_batch(
                db,
                postgres,
                apis[:n_apis],
                worker_procs,
                keys,
                total=args.jobs,
                concurrency=args.concurrency,
                background_ms_per_s=background,
            )
            result |= {
                "apis": n_apis,
                "workers": n_workers,
                "postgres_idle_ms_per_s": round(background, 2),
                "postgres_idle_ms_per_s_per_worker": round(background / n_workers, 2),
            }
            report["results"].append(result)
            cpu = result["cpu_ms_per_job"]
            print(
                f"{n_apis} API, {n_workers} worker(s): {result['settled_per_second']} settled jobs/s"
                f" ({result['jobs']} jobs, {result['succeeded']} succeeded, {result['seconds']} s);"
                f" CPU ms per job: Postgres {cpu['postgres']:.2f} ({cpu['postgres_gross']:.2f} before taking off"
                f" {result['postgres_idle_ms_per_s']:.1f} ms/s of idle polling), API {cpu['api']:.2f},"
                f" workers {cpu['workers']:.1f} (load {result['load_1min']})",
                flush=True,
            )
        db.dispose()
    pg = sorted(r["cpu_ms_per_job"]["postgres"] for r in report["results"])
    idle = sorted(r["postgres_idle_ms_per_s_per_worker"] for r in report["results"])
    median_pg, median_idle = pg[len(pg) // 2], idle[len(idle) // 2]
    report["postgres_cpu_ms_per_job_median"] = median_pg
    report["postgres_idle_ms_per_s_per_worker_median"] = median_idle
    report["gpu_estimate"] = est = gpu_estimate(median_pg, median_idle, args.gpu_rate)
    print(
        f"\nPostgres CPU per settled job (median over the combinations): {median_pg:.2f} ms; idle polling"
        f" {median_idle:.2f} ms per second per worker. One Postgres core settles ~{est['jobs_per_second_per_core']}"
        f" jobs/s; a GPU worker at {args.gpu_rate:g} swaps/s costs Postgres {est['ms_per_s_per_gpu_worker']:.0f} ms"
        f" per second -> ~{est['gpu_workers_per_core']} GPU workers per Postgres core.\n"
        f"({os.cpu_count()} cores here: with more processes than cores the jobs per second measure contention; the"
        " CPU per job is what carries over.)",
        flush=True,
    )
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2, default=str))


if __name__ == "__main__":
    main()
