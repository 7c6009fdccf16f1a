"""Reserve+capture cycles per second, against the database's own limit in the same run. A cycle is reserve,
commit, capture, commit, through billing.ledger.holds, with one session per thread from
facemint.db.make_sessionmaker(make_engine(...)). Threads run for a fixed duration over many funded accounts
(each cycle picks a random one) and, separately, all on one hot account. Each run of a scenario is followed by
the same scenario on the bare baseline (bench/holds_bare.py: two bare statements and two commits over psycopg2
on a minimal schema), and the ratio of the medians is printed.

    .venv/bin/python bench/holds.py [--threads 8] [--accounts 10000] [--seconds 10] [--runs 3]

Targets: at least 75% of the bare baseline over many accounts and on the hot account."""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import threading
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import common
import holds_bare
import procs
import psutil
from sqlalchemy import text
from sqlalchemy.orm import Session, sessionmaker

from billing.errors import LedgerContention
from billing.ledger import holds as ledger_holds
from billing.reports.reconcile import reconcile
from facemint.db import make_engine, make_sessionmaker


def worker(
    factory: sessionmaker[Session],
    accounts: list[int],
    tag: str,
    start: threading.Barrier,
    window: list[float],
    stop: threading.Event,
    out: dict,
    *,
    synchronous_commit: bool = True,
) -> None:
    rng = random.Random(tag)
    latencies: list[float] = []
    cycles = retries = i = 0
    with factory() as session:
        session.execute(text("SELECT 1"))  # connect before the clock starts
        session.commit()
        start.wait(timeout=60)
        while not stop.is_set():
            i += 1
            begun = time.perf_counter()
            try:
                hold = ledger_holds.reserve(
                    session,
                    account_id=rng.choice(accounts),
                    amount=1,
                    reference=f"{tag}-{i}",
                    ttl_seconds=600,
                    synchronous_commit=synchronous_commit,
                )
                session.commit()
                ledger_holds.capture(session, hold_id=hold.hold_id, synchronous_commit=synchronous_commit)
                session.commit()
            except LedgerContention:
                session.rollback()
                retries += 1
                continue
            ended = time.perf_counter()
            if window[0] <= ended <= window[1]:
                cycles += 1
                latencies.append(ended - begun)
        common.flush_stats(session)
    out.update(cycles=cycles, retries=retries, latencies=latencies)


Worker = Callable[[str, threading.Barrier, list[float], threading.Event, dict], None]


def run_scenario(
    factory: sessionmaker[Session], work: Worker, threads: int, seconds: float, tag: str, pg: object
) -> dict:
    """Threads start together and run a one-second warm-up; then the cycles that complete inside a window of
    `seconds` are counted. CPU used by this process (the clients) and by Postgres is metered over the window."""
    stop = threading.Event()
    start = threading.Barrier(threads + 1)
    window = [float("inf"), float("inf")]
    outs: list[dict] = [{} for _ in range(threads)]
    pool = [
        threading.Thread(target=work, args=(f"{tag}-t{n}", start, window, stop, outs[n]), daemon=True)
        for n in range(threads)
    ]
    try:
        for t in pool:
            t.start()
        start.wait(timeout=60)
        time.sleep(1.0)
        scans_before = common.entry_scans(factory.kw["bind"])
        with procs.CpuMeter(clients=psutil.Process(), postgres=pg) as cpu:  # type: ignore[arg-type]
            window[0] = time.perf_counter()
            time.sleep(seconds)
            window[1] = time.perf_counter()
    finally:
        stop.set()
        for t in pool:
            t.join(timeout=30)
    scans = [b - a for a, b in zip(scans_before, common.entry_scans(factory.kw["bind"]), strict=True)]
    measured = window[1] - window[0]
    latencies = sorted(x for o in outs for x in o["latencies"])
    cycles = sum(o["cycles"] for o in outs)
    cpu_ms = {name: 1000 * used / max(cycles, 1) for name, used in cpu.used.items()}
    return {
        "cpu_ms_per_cycle": cpu_ms,
        "cpu_bound_per_s": (os.cpu_count() or 1) * 1000 / sum(cpu_ms.values()),
        "load": os.getloadavg()[0],
        "cycles": cycles,
        "entry_seq_scans": scans[0],
        "entry_seq_tuples_per_scan": scans[1] / max(scans[0], 1),
        "entry_index_scans": scans[2],
        "retries": sum(o["retries"] for o in outs),
        "per_s": cycles / measured,
        "p50_ms": 1000 * latencies[len(latencies) // 2] if latencies else float("nan"),
        "p99_ms": 1000 * latencies[int(len(latencies) * 0.99)] if latencies else float("nan"),
    }


def _print_run(name: str, run: int, r: dict) -> None:
    print(
        f"{name}, run {run + 1}: {r['per_s']:,.0f} cycles/s ({r['cycles']} cycles, {r['retries']} "
        f"retries), cycle latency p50 {r['p50_ms']:.1f} ms p99 {r['p99_ms']:.1f} ms; CPU per cycle "
        + ", ".join(f"{k} {v:.2f} ms" for k, v in r["cpu_ms_per_cycle"].items())
        + f" (CPU-bound ceiling {r['cpu_bound_per_s']:,.0f}/s on {os.cpu_count()} cores); "
        f"ledger_entries seq scans {r['entry_seq_scans']} (~{r['entry_seq_tuples_per_scan']:,.0f} "
        f"rows each), index scans {r['entry_index_scans']}; load {r['load']:.1f}",
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--accounts", type=int, default=10_000)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--single-thread", action="store_true", help="also run 1 thread as a reference")
    parser.add_argument("--time-limit", type=int, default=900)
    parser.add_argument("--out", type=Path, default=common.ROOT / "bench" / "out" / "holds.json")
    args = parser.parse_args()
    common.bounded(args.time_limit)
    report: dict = {"threads": args.threads, "accounts": args.accounts, "seconds": args.seconds, "scenarios": {}}

    with common.servers("holds") as srv:
        report["environment"] = common.describe(srv)
        print(report["environment"])
        engine = make_engine(srv.database_url, pool_size=args.threads + 2)
        factory = make_sessionmaker(engine)
        with factory() as session:
            _, accounts = common.seed_members(session, n=args.accounts, prefix="h")
            common.fund_set_based(session, account_ids=accounts, amount=10**9, key="bench-holds-funding")
            session.commit()
        print(f"seeded and funded {len(accounts)} accounts set-based")
        pg = procs.postgres_root(engine)

        scenarios = [
            (f"{args.threads} threads, {len(accounts)} accounts", args.threads, accounts),
            (f"{args.threads} threads, 1 hot account", args.threads, accounts[:1]),
        ]
        if args.single_thread:
            scenarios.insert(0, (f"1 thread, {len(accounts)} accounts", 1, accounts))
        holds_bare.create(srv.database_url, accounts, 10**9)
        for name, threads, pool in scenarios:
            variants: dict[str, Worker] = {
                "": partial(worker, factory, pool),
                " [holds commit asynchronously]": partial(worker, factory, pool, synchronous_commit=False),
                " [bare baseline]": partial(holds_bare.worker, srv.database_url, pool),
            }
            results: dict[str, list[dict]] = {variant: [] for variant in variants}
            for run in range(args.runs):
                tag = f"{len(report['scenarios'])}-{run}"
                for variant, work in variants.items():
                    r = run_scenario(factory, work, threads, args.seconds, f"{tag}{len(variant)}", pg)
                    results[variant].append(r)
                    _print_run(name + variant, run, r)
            bare = statistics.median(b["per_s"] for b in results[" [bare baseline]"])
            for variant in list(variants)[:2]:
                median = statistics.median(r["per_s"] for r in results[variant])
                report["scenarios"][name + variant] = {
                    "runs": results[variant],
                    "best": max(r["per_s"] for r in results[variant]),
                    "median": median,
                    "bare_runs": results[" [bare baseline]"],
                    "bare_median": bare,
                    "ratio": median / bare,
                    "postgres_ms": statistics.median(r["cpu_ms_per_cycle"]["postgres"] for r in results[variant]),
                    "bare_postgres_ms": statistics.median(
                        b["cpu_ms_per_cycle"]["postgres"] for b in results[" [bare baseline]"]
                    ),
                }
        holds_bare.drop(srv.database_url)

        with factory() as session:
            open_holds = session.execute(text("SELECT count(*) FROM holds WHERE status = 'held'")).scalar_one()
            captured = session.execute(text("SELECT count(*) FROM holds WHERE status = 'captured'")).scalar_one()
            balanced = reconcile(session).balanced
        print(f"after: {captured} holds captured, {open_holds} open; ledger reconciliation balanced={balanced}")
        report["reconciled"] = balanced
        engine.dispose()

    print("\n=== summary (cycles/s, median of runs; bare = two bare statements and two commits, same run) ===")
    for name, s in report["scenarios"].items():
        print(
            f"{name}: {s['median']:,.0f} vs bare {s['bare_median']:,.0f} = {s['ratio']:.0%} (best {s['best']:,.0f}); "
            f"Postgres CPU per cycle {s['postgres_ms']:.2f} ms vs bare {s['bare_postgres_ms']:.2f} ms "
            f"(bare/ours {s['bare_postgres_ms'] / s['postgres_ms']:.0%})"
        )
    for name, s in report["scenarios"].items():
        if name.startswith(f"{args.threads} threads"):
            print(f"  [{'met' if s['ratio'] >= 0.75 else 'MISSED'}] >= 75% of the bare baseline: {name}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2, default=str))
    print(f"results written to {args.out}")


if __name__ == "__main__":
    main()
