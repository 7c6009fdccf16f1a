"""Where the time goes in a CSV batch recharge: the service path the endpoint runs (parse, COPY, resolve,
stage, apply, finish, audit, commit), called in this process with a timer around each step and around every SQL
statement; then the same body through the HTTP API (a separate `facemint serve`), so the difference is what
HTTP, the body upload, authentication and the response cost.

    .venv/bin/python bench/batch_phases.py [--rows 100000] [--runs 3]"""

from __future__ import annotations

import argparse
import statistics
import time
import uuid
from collections import defaultdict
from collections.abc import Callable
from typing import Any

import common
import httpx
import procs
from batch_recharge import csv_body, http_batch
from sqlalchemy import event

from billing.recharge import service as batches
from facemint.audit import service as audit
from facemint.auth.principal import Principal
from facemint.auth.scopes import Scope
from facemint.db import make_engine, make_sessionmaker
from facemint.deps import RequestContext
from facemint.recharges import batch as recharges
from facemint.recharges import parsing
from facemint.users.orm import Role

timings: dict[str, float] = defaultdict(float)


def timed(owner: Any, name: str, label: str) -> None:
    original: Callable[..., Any] = getattr(owner, name)

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        try:
            return original(*args, **kwargs)
        finally:
            timings[label] += time.perf_counter() - started

    setattr(owner, name, wrapper)


def watch_statements(engine: Any) -> None:
    """Time every SQL statement; the label is its first words."""

    @event.listens_for(engine, "before_cursor_execute")
    def before(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        conn.info["started"] = time.perf_counter()

    @event.listens_for(engine, "after_cursor_execute")
    def after(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        label = " ".join(statement.split())[:70]
        timings["sql: " + label] += time.perf_counter() - conn.info.pop("started")


def copy_buffer_only(parsed: parsing.ParsedBatch) -> float:
    """The Python half of the COPY step: escaping the rows into COPY text (no database)."""
    started = time.perf_counter()
    recharges._copy_text(parsed)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--no-http", action="store_true")
    parser.add_argument("--time-limit", type=int, default=600)
    args = parser.parse_args()
    common.bounded(args.time_limit)
    n = args.rows

    with common.servers("phases") as srv:
        print(common.describe(srv))
        settings = srv.settings()
        engine = make_engine(srv.database_url, pool_size=2)
        factory = make_sessionmaker(engine)
        with factory() as session:
            common.seed_members(session, n=n, prefix="m")
            session.commit()
            admin, key = common.admin_user_and_key(session, settings)
        principal = Principal(
            user_id=admin.id,
            email=admin.email,
            role=Role.platform_admin,
            tenant_id=None,
            account_id=admin.account_id,
            plan="platform",
            scopes=frozenset(Scope),
        )
        context = RequestContext(principal=principal, request_id="bench", ip="127.0.0.1")
        body = csv_body(n, 3)

        timed(parsing, "parse_csv", "parse_csv (decode, csv module, validate)")
        timed(recharges, "batch_request_hash", "request hash (sha256 of the body)")
        timed(batches, "find_batch", "find_batch (idempotency lookup)")
        timed(recharges, "_copy_rows", "_copy_rows (COPY text build + COPY)")
        timed(recharges, "_resolve_rows", "_resolve_rows (incl. _copy_rows)")
        timed(recharges, "source_for", "source_for")
        timed(batches, "create_stage", "create_stage")
        timed(batches, "stage_totals", "stage_totals")
        timed(batches, "begin_batch", "begin_batch")
        timed(batches, "apply_staged", "apply_staged (credit, entries, balance trigger)")
        timed(batches, "finish_batch", "finish_batch (result as jsonb)")
        timed(audit, "record", "audit.record")
        watch_statements(engine)

        runs: list[dict[str, float]] = []
        for run in range(args.runs + 1):  # the first run warms caches and is not counted
            timings.clear()
            started = time.perf_counter()
            with factory() as session:
                parsed = parsing.parse_csv(body, max_rows=n, ceiling=settings.recharge_max_amount)
                request = recharges.BatchRequest(
                    mode="atomic",
                    dry_run=False,
                    reason="bench",
                    tenant_id=None,
                    idempotency_key=uuid.uuid4().hex,
                    content_kind="text/csv",
                    body=body,
                )
                t = time.perf_counter()
                result, created = recharges.run_batch(session, context=context, request=request, parsed=parsed)
                timings["run_batch (total)"] = time.perf_counter() - t
                t = time.perf_counter()
                session.commit()
                timings["commit (audit flush + COMMIT)"] = time.perf_counter() - t
            timings["TOTAL in-process"] = time.perf_counter() - started
            if not created or result["applied"] != n:
                raise RuntimeError(f"unexpected batch result: {result}")
            if run:
                runs.append(dict(timings))
                print(f"in-process run {run}: {timings['TOTAL in-process']:.3f} s")
        timings.clear()
        buffer_s = statistics.median(copy_buffer_only(parsed) for _ in range(3))

        http_s: list[float] = []
        if not args.no_http:
            with (
                procs.api_process(srv, FACEMINT_BATCH_MAX_BYTES=str(64 * procs.MB)) as (base, _),
                httpx.Client(timeout=120, trust_env=False) as client,
            ):
                http_batch(client, base, key, csv_body(100, 0), 100)
                for _ in range(args.runs):
                    http_s.append(http_batch(client, base, key, body, n)[0])
        engine.dispose()

    total = statistics.median(r["TOTAL in-process"] for r in runs)
    print(f"\n=== {n:,} rows: median per step over {len(runs)} runs (after one warm-up run) ===")
    labels = sorted({k for r in runs for k in r}, key=lambda k: -statistics.median(r.get(k, 0.0) for r in runs))
    for label in labels:
        value = statistics.median(r.get(label, 0.0) for r in runs)
        if value >= 0.001:
            print(f"{value * 1000:9.1f} ms {100 * value / total:5.1f}%  {label}")
    print(
        f"{buffer_s * 1000:9.1f} ms {100 * buffer_s / total:5.1f}%  (of _copy_rows: building the COPY text in Python)"
    )
    if http_s:
        e2e = statistics.median(http_s)
        print(
            f"\nHTTP end to end: {common.summary(http_s)} s; in-process total {total:.3f} s; "
            f"HTTP/upload/auth/response overhead ~{e2e - total:.3f} s ({100 * (e2e - total) / e2e:.0f}%)"
        )


if __name__ == "__main__":
    main()
