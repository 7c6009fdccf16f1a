"""Finance exports and reconciliation at 1,000,000 ledger entries.

Seeds N ledger entries set-based (balanced recharge pairs: issuance -> one of the members' accounts, with a
consistent balance_after and account balances, so reconciliation passes), then:
- streams GET /admin/v1/finance/ledger/export as CSV and as JSONL from the API in its own process (`facemint
  serve`), reading the whole body, and reports rows/s and the API's RSS before and at its peak (sampled);
- times `reconcile_all` (the checks behind `facemint reconcile`) in one snapshot session.

    .venv/bin/python bench/exports.py [--entries 1000000] [--runs 2] [--json out.json]

Targets: >= 100,000 rows/s per format with flat memory; reconciliation <= 10 s."""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import time
from pathlib import Path

import common
import httpx
import procs
from sqlalchemy import text

from facemint.db import make_engine, make_sessionmaker, snapshot_session
from facemint.finance.exports import TRAILER_KEY, parse_csv_trailer
from facemint.reports.service import reconcile_all

MB = 1024 * 1024
SEED_BATCH = 100_000  # transactions (2 entries each) per statement

_SEED_SQL = text(
    """
    WITH accts AS (
        SELECT id, row_number() OVER (ORDER BY id) - 1 AS i, balance FROM ledger_accounts
        WHERE id = ANY(CAST(:accounts AS bigint[]))
    ),
    txn AS (
        INSERT INTO ledger_transactions (kind, idempotency_key, request_hash, amount, tenant_id, actor, reason,
                                         reference)
        SELECT 'recharge', 'bench-export-' || g, '\\x00'::bytea, 1 + g % 97, :tenant, 'bench',
               CASE WHEN g % 10 = 0 THEN '=bench formula ' || g ELSE 'bench seed' END, 'seed-' || g
        FROM generate_series(:first, :last) AS g
        RETURNING id, amount
    ),
    placed AS (
        SELECT txn.id, txn.amount, accts.id AS account_id, accts.balance
        FROM txn JOIN accts ON accts.i = txn.id % :n_accounts
    )
    INSERT INTO ledger_entries (transaction_id, account_id, amount, balance_after)
    SELECT id, account_id, amount, balance_after FROM (
        SELECT id, :issuance AS account_id, -amount AS amount, NULL::bigint AS balance_after, 0 AS side FROM placed
        UNION ALL
        SELECT id, account_id, amount,
               balance + sum(amount) OVER (PARTITION BY account_id ORDER BY id) AS balance_after, 1 AS side
        FROM placed
    ) AS e ORDER BY id, side
    """
)

_SYNC_BALANCES_SQL = text(
    """
    UPDATE ledger_accounts a SET balance = s.balance, version = a.version + 1
    FROM (SELECT account_id, sum(amount) AS balance FROM ledger_entries
          WHERE account_id = ANY(CAST(:accounts AS bigint[])) GROUP BY account_id) AS s
    WHERE a.id = s.account_id
    """
)


def seed(srv: common.Servers, *, entries: int, accounts: int) -> tuple[int, float]:
    engine = make_engine(srv.database_url, pool_size=1)
    started = time.perf_counter()
    with make_sessionmaker(engine)() as session:
        tenant, account_ids = common.seed_members(session, n=accounts, prefix="x")
        issuance = session.execute(
            text("SELECT id FROM ledger_accounts WHERE kind = 'issuance' AND NOT balance_tracked")
        ).scalar_one()
        session.commit()
        transactions = entries // 2
        for first in range(1, transactions + 1, SEED_BATCH):
            last = min(first + SEED_BATCH - 1, transactions)
            session.execute(
                _SEED_SQL,
                {
                    "accounts": account_ids,
                    "tenant": tenant,
                    "first": first,
                    "last": last,
                    "n_accounts": len(account_ids),
                    "issuance": issuance,
                },
            )
            session.execute(_SYNC_BALANCES_SQL, {"accounts": account_ids})
            session.commit()
            print(f"  seeded {2 * last:,} entries", flush=True)
        common.lots_as_migrated(session)
        session.execute(text("ANALYZE ledger_entries; ANALYZE ledger_transactions; ANALYZE ledger_accounts"))
        session.commit()
        count = session.execute(text("SELECT count(*) FROM ledger_entries")).scalar_one()
    engine.dispose()
    return int(count), time.perf_counter() - started


def stream_export(base: str, key: str, fmt: str, proc: procs.psutil.Process, client: str) -> dict:
    """Read a whole export over HTTP, keeping only its last bytes (the trailer). `client`: `curl` (C, leaves the
    CPU to the API and Postgres on a small machine) or `httpx` (Python)."""
    rss_before = procs.tree_rss(proc)
    size = 0
    tail = b""
    url = f"{base}/admin/v1/finance/ledger/export?format={fmt}"
    with procs.RssSampler(proc) as rss:
        begun = time.perf_counter()
        if client == "curl":
            reader = subprocess.Popen(
                ["curl", "-sS", "--fail", "--noproxy", "*", "-H", f"Authorization: Bearer {key}", url],
                stdout=subprocess.PIPE,
            )
            assert reader.stdout is not None
            while chunk := reader.stdout.read(1 << 20):
                size += len(chunk)
                tail = (tail + chunk)[-4096:]
            if reader.wait() != 0:
                raise RuntimeError(f"curl failed ({reader.returncode})")
        else:
            headers = {"Authorization": f"Bearer {key}"}
            with httpx.stream("GET", url, headers=headers, timeout=None, trust_env=False) as response:
                response.raise_for_status()
                for chunk in response.iter_raw(1 << 20):
                    size += len(chunk)
                    tail = (tail + chunk)[-4096:]
        elapsed = time.perf_counter() - begun
    trailer_line = tail.rstrip(b"\n").rsplit(b"\n", 1)[-1].decode()
    trailer = json.loads(trailer_line)[TRAILER_KEY] if fmt == "jsonl" else parse_csv_trailer(trailer_line)
    rows = int(trailer["rows"])
    return {
        "format": fmt,
        "client": client,
        "rows": rows,
        "bytes": size,
        "seconds": elapsed,
        "rows_per_s": rows / elapsed,
        "mb_per_s": size / MB / elapsed,
        "rss_before_mb": rss_before / MB,
        "rss_peak_mb": rss.peak / MB,
        "trailer_amount": int(trailer["amount"]),
    }


def time_reconcile(srv: common.Servers, runs: int) -> dict:
    engine = make_engine(srv.database_url, pool_size=1)
    times, balanced = [], True
    for _ in range(runs):
        begun = time.perf_counter()
        with snapshot_session(engine) as session:
            report = reconcile_all(session)
        times.append(time.perf_counter() - begun)
        balanced = balanced and report.balanced
        if not report.balanced:
            print("  discrepancies:", [(d.check, d.ids[:5]) for d in report.discrepancies])
    engine.dispose()
    return {"seconds": times, "best": min(times), "median": statistics.median(times), "balanced": balanced}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--entries", type=int, default=1_000_000)
    parser.add_argument("--accounts", type=int, default=1_000)
    parser.add_argument("--runs", type=int, default=2, help="exports per format, and reconciliations")
    parser.add_argument("--time-limit", type=int, default=600)
    parser.add_argument(
        "--client", choices=["curl", "httpx"], default="curl" if shutil.which("curl") else "httpx", help="HTTP reader"
    )
    parser.add_argument("--json", type=Path, default=None, help="write the figures to this file")
    args = parser.parse_args()
    common.bounded(args.time_limit)
    report: dict = {"entries_requested": args.entries, "accounts": args.accounts}

    with common.servers("exports") as srv:
        report["environment"] = common.describe(srv)
        print(report["environment"])
        count, seconds = seed(srv, entries=args.entries, accounts=args.accounts)
        report["entries"], report["seed_seconds"] = count, seconds
        print(f"seeded {count:,} ledger entries in {seconds:.1f} s")

        engine = make_engine(srv.database_url, pool_size=1)
        with make_sessionmaker(engine)() as session:
            key = common.admin_key(session, srv.settings())
        engine.dispose()

        report["exports"] = {}
        with procs.api_process(srv) as (base, proc):
            for fmt in ("csv", "jsonl"):
                runs = []
                for run in range(args.runs):
                    r = stream_export(base, key, fmt, proc, args.client)
                    runs.append(r)
                    print(
                        f"export {fmt} ({args.client}), run {run + 1}: {r['rows']:,} rows in {r['seconds']:.2f} s = "
                        f"{r['rows_per_s']:,.0f} rows/s ({r['mb_per_s']:.0f} MB/s, {r['bytes'] / MB:.0f} MB); "
                        f"API RSS {r['rss_before_mb']:.0f} MB before, {r['rss_peak_mb']:.0f} MB peak",
                        flush=True,
                    )
                    assert r["trailer_amount"] == 0, "a ledger export must sum to zero"
                rates = [r["rows_per_s"] for r in runs]
                report["exports"][fmt] = {"runs": runs, "median_rows_per_s": statistics.median(rates)}

        report["reconcile"] = time_reconcile(srv, args.runs)
        rec = report["reconcile"]
        print(f"reconcile_all: best {rec['best']:.2f} s, median {rec['median']:.2f} s, balanced={rec['balanced']}")

    print("\n=== summary ===")
    for fmt, s in report["exports"].items():
        peak = max(r["rss_peak_mb"] - r["rss_before_mb"] for r in s["runs"])
        met = "met" if s["median_rows_per_s"] >= 100_000 else "MISSED"
        print(f"  [{met}] export {fmt}: {s['median_rows_per_s']:,.0f} rows/s (median), RSS growth <= {peak:.0f} MB")
    rec = report["reconcile"]
    print(f"  [{'met' if rec['median'] <= 10 else 'MISSED'}] reconcile {rec['median']:.2f} s (median) <= 10 s")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2, default=str))
        print(f"results written to {args.json}")


if __name__ == "__main__":
    main()
