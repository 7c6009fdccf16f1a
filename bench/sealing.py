"""Sealed books with 1,000,000 ledger entries: sealing throughput alone and while the reserve+capture benchmark
(bench/holds.py's scenario: threads doing reserve, commit, capture, commit over many funded accounts) runs, the
hold cycle rate with and without the sealer, and the time to verify everything.

    .venv/bin/python bench/sealing.py [--entries 1000000] [--seconds 10] [--threads 8] [--json]

Phases, on one freshly migrated database:
1. seed: `--accounts` members, funded in rounds through the batch recharge path until `--entries` entries exist
   (set-based; each round its own transaction). Nothing is sealed yet.
2. holds alone (a baseline).
3. half of the backlog sealed alone, one batch (`--max-rows`) per transaction: the sealing rate without load.
4. holds while a sealer drains the other half flat out: the sealing rate under load (target >= 5,000 entries/s)
   and, for information, the worst-case slowdown of the holds (the sealer busy on one of the cores throughout).
5. `--runs` times: holds while the periodic sealer runs as the worker would (`seal_all` every `--interval` s,
   sealing what the holds write), then holds alone again. The slowdown is the median with the sealer against
   the median of the baselines (target <= 10%); baselines bracket the sealer runs so table growth biases neither.
6. verify: every seal, root and leaf recomputed (and the table sizes, leaves included).
7. for information (skip with --no-index-cost): holds with the ledger_entries (xid, id) index dropped, then
   recreated: what the index the sealer walks costs the write path (the xid column's default costs next to
   nothing)."""

from __future__ import annotations

import argparse
import json
import os
import statistics
import threading
import time
from functools import partial
from pathlib import Path
from typing import Any

import common
import holds
import procs
from sqlalchemy import text
from sqlalchemy.orm import Session, sessionmaker

from billing.sealing import service as sealing
from facemint.db import make_engine, make_sessionmaker, snapshot_session


def seed(factory: sessionmaker[Session], *, accounts: int, entries: int) -> tuple[list[int], float]:
    started = time.perf_counter()
    with factory() as session:
        _, ids = common.seed_members(session, n=accounts, prefix="s")
        session.commit()
        rounds = 0
        while session.execute(text("SELECT count(*) FROM ledger_entries")).scalar_one() < entries:
            common.fund_set_based(session, account_ids=ids, amount=10**6, key=f"bench-seal-funding-{rounds}")
            session.commit()
            rounds += 1
    return ids, time.perf_counter() - started


class Sealer(threading.Thread):
    """Seals in its own session. `drain`: one batch per transaction, back to back, until caught up or stopped.
    Otherwise: `seal_all` every `interval` seconds, like a worker's periodic sealer."""

    def __init__(
        self,
        factory: sessionmaker[Session],
        *,
        max_rows: int,
        drain: bool,
        interval: float = 0.0,
        limit_rows: int | None = None,
    ) -> None:
        super().__init__(daemon=True)
        self.factory, self.max_rows, self.drain, self.interval = factory, max_rows, drain, interval
        self.limit_rows = limit_rows
        self.stop = threading.Event()
        self.rows = 0
        self.busy = 0.0
        self.rounds: list[dict[str, float]] = []
        self.caught_up_at: float | None = None
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            with self.factory() as session:
                while not self.stop.is_set():
                    begun = time.perf_counter()
                    if self.drain:
                        result = sealing.seal(session, stream="ledger_entries", max_rows=self.max_rows)
                        results = [result] if result else []
                    else:
                        results = sealing.seal_all(session, max_rows=self.max_rows)
                    session.commit()
                    took = time.perf_counter() - begun
                    sealed = sum(r.n_rows for r in results)
                    self.rows += sealed
                    self.busy += took
                    self.rounds.append({"rows": sealed, "seconds": took})
                    if self.drain:
                        if sealed < self.max_rows:
                            self.caught_up_at = time.perf_counter()
                            return
                        if self.limit_rows is not None and self.rows + self.max_rows > self.limit_rows:
                            return
                    else:
                        self.stop.wait(max(0.0, self.interval - took))
        except BaseException as exc:  # reported by the main thread
            self.error = exc


def holds_run(
    factory: sessionmaker[Session], accounts: list[int], args: argparse.Namespace, tag: str, pg: object
) -> dict[str, Any]:
    result = holds.run_scenario(factory, partial(holds.worker, factory, accounts), args.threads, args.seconds, tag, pg)
    print(
        f"  holds: {result['per_s']:,.0f} cycles/s (p50 {result['p50_ms']:.1f} ms, p99 {result['p99_ms']:.1f} ms, "
        f"{result['retries']} retries; load {result['load']:.1f})",
        flush=True,
    )
    return result


def unsealed(factory: sessionmaker[Session]) -> int:
    with factory() as session:
        return int(
            session.execute(
                text(
                    "SELECT count(*) FROM ledger_entries WHERE id NOT IN "
                    "(SELECT row_id FROM ledger_seal_leaves WHERE stream = 'ledger_entries')"
                )
            ).scalar_one()
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--entries", type=int, default=1_000_000)
    parser.add_argument("--accounts", type=int, default=10_000)
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=10.0, help="measured window of each holds run")
    parser.add_argument("--max-rows", type=int, default=50_000, help="rows per sealed batch")
    parser.add_argument("--interval", type=float, default=1.0, help="periodic sealer's interval in phase 5")
    parser.add_argument("--runs", type=int, default=2, help="periodic-sealer / baseline pairs in phase 5")
    parser.add_argument(
        "--no-index-cost",
        dest="index_cost",
        action="store_false",
        help="skip phase 7 (holds without, then with, the ledger_entries (xid, id) index)",
    )
    parser.add_argument("--time-limit", type=int, default=600)
    parser.add_argument("--json", action="store_true", help="write the figures as JSON (see --out)")
    parser.add_argument("--out", type=Path, default=common.ROOT / "bench" / "out" / "sealing.json")
    args = parser.parse_args()
    common.bounded(args.time_limit)
    report: dict[str, Any] = {
        "entries_target": args.entries,
        "threads": args.threads,
        "seconds": args.seconds,
        "max_rows": args.max_rows,
        "interval": args.interval,
    }

    with common.servers("sealing") as srv:
        report["environment"] = common.describe(srv)
        print(report["environment"], flush=True)
        engine = make_engine(srv.database_url, pool_size=args.threads + 4)
        factory = make_sessionmaker(engine)
        pg = procs.postgres_root(engine)
        try:
            accounts, seeded_in = seed(factory, accounts=args.accounts, entries=args.entries)
            with factory() as session:
                total = session.execute(text("SELECT count(*) FROM ledger_entries")).scalar_one()
                session.execute(text("ANALYZE ledger_entries"))
                session.commit()
            report["seeded_entries"] = total
            report["seed_seconds"] = seeded_in
            print(f"1. seeded {total:,} entries over {len(accounts):,} accounts in {seeded_in:.1f} s", flush=True)

            print("2. holds alone (baseline)", flush=True)
            baselines = [holds_run(factory, accounts, args, "b0", pg)]

            backlog = unsealed(factory)
            print(f"3. half of the {backlog:,} unsealed entries sealed alone", flush=True)
            alone = Sealer(factory, max_rows=args.max_rows, drain=True, limit_rows=backlog // 2)
            alone.run()
            if alone.error:
                raise alone.error
            alone_rate = alone.rows / alone.busy if alone.busy else 0.0
            print(f"  sealer: {alone.rows:,} entries in {alone.busy:.1f} s = {alone_rate:,.0f} entries/s alone")

            print("4. holds while the sealer drains the rest flat out", flush=True)
            drainer = Sealer(factory, max_rows=args.max_rows, drain=True)
            drainer.start()
            under_load = holds_run(factory, accounts, args, "d", pg)
            drainer.stop.set()
            drainer.join(timeout=120)
            if drainer.error:
                raise drainer.error
            drain_rate = drainer.rows / drainer.busy if drainer.busy else 0.0
            print(
                f"  sealer: {drainer.rows:,} entries in {drainer.busy:.1f} s busy = {drain_rate:,.0f} entries/s "
                f"under load ({'caught up' if drainer.caught_up_at else 'still behind'} within the holds run)",
                flush=True,
            )
            with factory() as session:  # the audit events too: the periodic sealer starts caught up
                sealing.seal_all(session, max_rows=args.max_rows)
                session.commit()

            print(f"5. holds with the periodic sealer (seal_all every {args.interval:g} s), then alone", flush=True)
            periodic_runs: list[dict[str, Any]] = []
            rounds: list[dict[str, float]] = []
            for run in range(args.runs):
                periodic = Sealer(factory, max_rows=args.max_rows, drain=False, interval=args.interval)
                periodic.start()
                periodic_runs.append(holds_run(factory, accounts, args, f"p{run}", pg))
                periodic.stop.set()
                periodic.join(timeout=60)
                if periodic.error:
                    raise periodic.error
                busy = [r for r in periodic.rounds if r["rows"]]
                rounds.extend(periodic.rounds)
                print(
                    f"  sealer: {periodic.rows:,} entries in {len(periodic.rounds)} rounds, {periodic.busy:.2f} s "
                    f"busy; largest round {max((r['rows'] for r in busy), default=0):,.0f} rows in "
                    f"{max((r['seconds'] for r in busy), default=0):.3f} s",
                    flush=True,
                )
                baselines.append(holds_run(factory, accounts, args, f"b{run + 1}", pg))
            sealing_rounds = [r for r in rounds if r["rows"]]
            periodic_rate = sum(r["rows"] for r in sealing_rounds) / max(
                sum(r["seconds"] for r in sealing_rounds), 1e-9
            )

            print("6. verify", flush=True)
            with factory() as session:
                sealing.seal_all(session, max_rows=args.max_rows)
                session.commit()
            started = time.perf_counter()
            with snapshot_session(engine) as session:
                verified = sealing.verify(session)
            verify_seconds = time.perf_counter() - started
            checked = sum(verified.rows.values())
            print(
                f"  verify: {checked:,} sealed rows in {sum(verified.seals.values())} seals in {verify_seconds:.1f} s "
                f"({checked / verify_seconds:,.0f} rows/s); intact={verified.intact}",
                flush=True,
            )
            with factory() as session:
                sizes = session.execute(
                    text(
                        "SELECT pg_total_relation_size('ledger_entries'), pg_total_relation_size('ledger_seal_leaves'),"
                        " pg_total_relation_size('ledger_seals')"
                    )
                ).one()

            index_cost: dict[str, Any] | None = None
            if args.index_cost:
                print(
                    "7. for information: holds without the (xid, id) index the sealer walks, then with it", flush=True
                )
                with factory() as session:
                    session.execute(text("DROP INDEX ix_ledger_entries_xid_id"))
                    session.commit()
                without_index = holds_run(factory, accounts, args, "noidx", pg)
                with factory() as session:
                    session.execute(text("CREATE INDEX ix_ledger_entries_xid_id ON ledger_entries (xid, id)"))
                    session.commit()
                with_index = holds_run(factory, accounts, args, "idx", pg)
                index_cost = {
                    "without_index_per_s": without_index["per_s"],
                    "with_index_per_s": with_index["per_s"],
                    "slowdown": 1 - with_index["per_s"] / without_index["per_s"],
                }
        finally:
            engine.dispose()

    baseline = statistics.median(b["per_s"] for b in baselines)
    with_sealer = statistics.median(p["per_s"] for p in periodic_runs)
    slowdown = 1 - with_sealer / baseline
    worst = 1 - under_load["per_s"] / baseline
    report.update(
        holds_baseline_per_s=[b["per_s"] for b in baselines],
        holds_with_periodic_sealer_per_s=[p["per_s"] for p in periodic_runs],
        holds_while_draining_per_s=under_load["per_s"],
        slowdown_periodic=slowdown,
        slowdown_draining=worst,
        sealing_under_load_per_s=drain_rate,
        sealing_under_load_rows=drainer.rows,
        sealing_alone_per_s=alone_rate,
        sealing_alone_rows=alone.rows,
        sealing_periodic_per_s=periodic_rate,
        periodic_rounds=rounds,
        entries_written_per_s_by_holds=2 * with_sealer,
        verify_seconds=verify_seconds,
        verify_rows=checked,
        verify_intact=verified.intact,
        bytes={"ledger_entries": sizes[0], "ledger_seal_leaves": sizes[1], "ledger_seals": sizes[2]},
        index_cost=index_cost,
    )
    print("\n=== summary ===")
    print(
        f"sealing: {drain_rate:,.0f} entries/s while the holds run ({drainer.rows:,} entries), {alone_rate:,.0f} "
        f"entries/s alone ({alone.rows:,}); the periodic sealer ran at {periodic_rate:,.0f} entries/s while sealing "
        f"the holds' ~{2 * with_sealer:,.0f} entries/s"
    )
    print(
        f"holds (median cycles/s): {baseline:,.0f} alone {[round(b['per_s']) for b in baselines]}, "
        f"{with_sealer:,.0f} with the periodic sealer {[round(p['per_s']) for p in periodic_runs]} "
        f"(slowdown {slowdown:+.1%}); {under_load['per_s']:,.0f} while the sealer drained a backlog flat out "
        f"(slowdown {worst:+.1%}, for information: it takes one of the {os.cpu_count()} cores)"
    )
    print(f"verify: {checked:,} rows in {verify_seconds:.1f} s")
    if index_cost:
        print(
            f"write-path cost of the (xid, id) index: {index_cost['with_index_per_s']:,.0f} cycles/s with it, "
            f"{index_cost['without_index_per_s']:,.0f} without ({index_cost['slowdown']:+.1%})"
        )
    print(
        f"storage: ledger_entries {sizes[0] / 2**20:,.0f} MiB, leaves {sizes[1] / 2**20:,.0f} MiB, "
        f"seals {sizes[2] / 2**10:,.0f} KiB"
    )
    print(f"  [{'met' if drain_rate >= 5000 else 'MISSED'}] sealing >= 5,000 entries/s while the holds run")
    print(f"  [{'met' if slowdown <= 0.10 else 'MISSED'}] the periodic sealer slows the holds by <= 10%")
    print(f"  [{'met' if verified.intact else 'MISSED'}] verify finds the sealed books intact")
    if args.json:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2, default=str))
        print(f"results written to {args.out}")


if __name__ == "__main__":
    main()
