"""Targets 1 and 3: a CSV batch recharge end to end through the HTTP API (a separate `facemint serve`
process), beside the same rows applied row by row in one transaction (billing.ledger.service.transfer per row,
one commit); and the peak RSS of the API process while it applies the batch.

    .venv/bin/python bench/batch_recharge.py [--sizes 10000,100000] [--runs 3] [--baseline-runs 1]

Targets: 100,000 rows in <= 4 s and >= 10x faster than row by row; API peak RSS < 500 MB."""

from __future__ import annotations

import argparse
import json
import statistics
import time
import uuid
from pathlib import Path

import common
import httpx
import procs
from sqlalchemy.orm import Session

from billing.ledger import service as ledger
from billing.ledger.orm import AccountKind, TransactionKind
from billing.reports.reconcile import reconcile
from facemint.db import make_engine, make_sessionmaker

PREFIX = "m"


def amount_of(i: int, salt: int) -> int:
    return 1 + (i * 7 + salt) % 100


def csv_body(n: int, salt: int) -> bytes:
    lines = ["email,amount", *(f"{PREFIX}{i}@bench.test,{amount_of(i, salt)}" for i in range(1, n + 1))]
    return ("\n".join(lines) + "\n").encode()


def http_batch(client: httpx.Client, base: str, key: str, body: bytes, n: int) -> tuple[float, dict]:
    headers = {"Authorization": f"Bearer {key}", "Idempotency-Key": uuid.uuid4().hex, "Content-Type": "text/csv"}
    started = time.perf_counter()
    response = client.post(
        f"{base}/admin/v1/recharges/batch", params={"mode": "atomic", "reason": "bench"}, headers=headers, content=body
    )
    elapsed = time.perf_counter() - started
    if response.status_code != 201:
        raise RuntimeError(f"batch answered {response.status_code}: {response.text[:500]}")
    result = response.json()
    if result["applied"] != n or result["failed"]:
        raise RuntimeError(f"batch applied {result['applied']} of {n}, failed {result['failed'][:3]}")
    return elapsed, result


def row_by_row(session: Session, account_ids: list[int], salt: int, tag: str) -> float:
    """The baseline: the same rows, one ledger transfer each, in one transaction committed once. It is handed
    resolved account ids (no parsing, no email lookup), so it is a lower bound of row-by-row cost."""
    issuance = ledger.system_account_id(session, kind=AccountKind.issuance)
    started = time.perf_counter()
    for i, account_id in enumerate(account_ids, start=1):
        ledger.transfer(
            session,
            kind=TransactionKind.recharge,
            from_account_id=issuance,
            to_account_id=account_id,
            amount=amount_of(i, salt),
            idempotency_key=f"bench-rbr-{tag}-{i}",
            request_hash=b"bench-row-by-row",
            tenant_id=None,
            actor="bench",
            reason="bench",
        )
    session.commit()
    elapsed = time.perf_counter() - started
    common.flush_stats(session)
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="10000,100000")
    parser.add_argument("--runs", type=int, default=3, help="HTTP batches per size")
    parser.add_argument("--baseline-runs", type=int, default=1, help="row-by-row runs per size")
    parser.add_argument(
        "--baseline-full-limit",
        type=float,
        default=60.0,
        help="run the row-by-row baseline for a size only if the smallest measured size extrapolates to at most "
        "this many seconds; otherwise extrapolate linearly from it",
    )
    parser.add_argument("--time-limit", type=int, default=1200)
    parser.add_argument("--out", type=Path, default=common.ROOT / "bench" / "out" / "batch_recharge.json")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    common.bounded(args.time_limit)
    report: dict = {"sizes": {}}

    with common.servers("batch") as srv:
        report["environment"] = common.describe(srv)
        print(report["environment"])
        engine = make_engine(srv.database_url, pool_size=2)
        factory = make_sessionmaker(engine)
        started = time.perf_counter()
        with factory() as session:
            _, account_ids = common.seed_members(session, n=max(sizes), prefix=PREFIX)
            session.commit()
            key = common.admin_key(session, srv.settings())
        print(f"seeded {len(account_ids)} members set-based in {time.perf_counter() - started:.2f} s")
        pg = procs.postgres_root(engine)

        with procs.api_process(srv, FACEMINT_BATCH_MAX_BYTES=str(64 * procs.MB)) as (base, proc):
            client = httpx.Client(timeout=120, trust_env=False)
            http_batch(client, base, key, csv_body(100, 0), 100)  # warm-up: imports, pool, caches
            idle = procs.tree_rss(proc)
            print(f"API process {proc.pid} idle RSS after warm-up: {idle / procs.MB:.1f} MB")
            salt = 1
            for n in sizes:
                body = csv_body(n, salt)
                times, peaks = [], []
                cpus = []
                for run in range(args.runs):
                    with procs.RssSampler(proc) as rss, procs.CpuMeter(api=proc, postgres=pg) as cpu:
                        elapsed, result = http_batch(client, base, key, body, n)
                    times.append(elapsed)
                    peaks.append(rss.peak)
                    cpus.append(cpu.used)
                    print(
                        f"HTTP batch {n:>7} rows run {run + 1}: {elapsed:.3f} s ({n / elapsed:,.0f} rows/s), "
                        f"body {len(body) / procs.MB:.1f} MB, API RSS {rss.start / procs.MB:.0f} -> peak "
                        f"{rss.peak / procs.MB:.1f} MB; CPU "
                        + ", ".join(f"{k} {v:.2f} s" for k, v in cpu.used.items())
                        + f"; {procs.load()}"
                    )
                report["sizes"][n] = {
                    "http_s": times,
                    "http_best_s": min(times),
                    "http_median_s": statistics.median(times),
                    "api_peak_rss_mb": max(peaks) / procs.MB,
                    "api_idle_rss_mb": idle / procs.MB,
                    "body_mb": len(body) / procs.MB,
                    "cpu_s": cpus,
                }
            client.close()

        # Row-by-row baseline (no HTTP, no parsing: a lower bound of what row by row costs).
        measured: dict[int, list[float]] = {}
        for n in sizes:
            smallest = min(measured, default=None)
            estimate = statistics.median(measured[smallest]) * n / smallest if smallest else 0.0
            if estimate > args.baseline_full_limit:
                print(
                    f"row-by-row {n} rows: not run; extrapolated linearly from {smallest} rows: {estimate:.1f} s "
                    f"(over the {args.baseline_full_limit:.0f} s limit)"
                )
                report["sizes"][n].update(baseline_s=[estimate], baseline_extrapolated=True)
                continue
            runs = []
            for run in range(args.baseline_runs):
                before = common.entry_scans(engine)
                with factory() as session:
                    elapsed = row_by_row(session, account_ids[:n], salt, f"{n}-{run}")
                seq, tuples, idx = (b - a for a, b in zip(before, common.entry_scans(engine), strict=True))
                runs.append(elapsed)
                print(
                    f"row-by-row {n:>7} rows run {run + 1}: {elapsed:.3f} s ({n / elapsed:,.0f} rows/s); "
                    f"ledger_entries seq scans {seq} ({tuples:,} rows read), index scans {idx}"
                )
            measured[n] = runs
            report["sizes"][n].update(baseline_s=runs, baseline_extrapolated=False)

        started = time.perf_counter()
        with factory() as session:
            balanced = reconcile(session).balanced
        print(f"ledger reconciliation after the benchmark: balanced={balanced} ({time.perf_counter() - started:.1f} s)")
        report["reconciled"] = balanced
        engine.dispose()

    print("\n=== summary ===")
    for n, r in report["sizes"].items():
        base = statistics.median(r["baseline_s"])
        r["ratio_median"] = base / r["http_median_s"]
        how = "extrapolated" if r["baseline_extrapolated"] else "measured"
        print(
            f"{n:>7} rows: HTTP best {r['http_best_s']:.3f} s, median {r['http_median_s']:.3f} s; "
            f"row by row {base:.3f} s ({how}); ratio {r['ratio_median']:.1f}x; "
            f"API peak RSS {r['api_peak_rss_mb']:.1f} MB"
        )
    big = report["sizes"].get(100_000)
    if big:
        checks = [
            ("100k batch end to end <= 4 s (median)", big["http_median_s"] <= 4.0),
            (">= 10x faster than row by row", big["ratio_median"] >= 10),
            ("API peak RSS < 500 MB", big["api_peak_rss_mb"] < 500),
        ]
        for label, ok in checks:
            print(f"  [{'met' if ok else 'MISSED'}] {label}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(f"results written to {args.out}")


if __name__ == "__main__":
    main()
