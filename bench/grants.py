"""A recurring grant's run over many users, as the workers run it (`facemint.worker.granting.grant_once`): a
platform-issued grant (chunks of `--chunk` accounts, one transaction each), the same run again (nothing left to
grant: what every later round of the scheduler costs), and a grant paid from the tenant's pool (one transaction
for the whole tenant); then the reconciliation. Each measured run is a new grant, so every user lacks it. A
platform-issued grant is made as the API makes it: asked for by one admin and approved by another (four eyes),
outside the timing.

    .venv/bin/python bench/grants.py [--users 10000] [--runs 3] [--chunk 5000] [--baseline 1000]

`--baseline` credits that many of the users one `billing.ledger.service.credit` (one lot) each in one transaction,
the row-by-row way, for comparison (0: skip)."""

from __future__ import annotations

import argparse
import json
import statistics
import time
import uuid
from pathlib import Path

import common
from sqlalchemy import text
from sqlalchemy.orm import Session, sessionmaker

from billing.grants.schemas import Period
from billing.ledger import service as ledger
from billing.ledger.orm import LotSource
from facemint.approvals import approving
from facemint.approvals.service import Held, Policy
from facemint.context import RequestContext
from facemint.db import make_engine, make_sessionmaker
from facemint.grants import service as grant_service
from facemint.grants.orm import Funding, GrantScope
from facemint.grants.schemas import GrantCreate
from facemint.reports.service import reconcile_all
from facemint.worker.granting import GrantReport, grant_once

AMOUNT = 5
CEILING = 1_000_000


def new_grant(
    session: Session,
    *,
    tenant_id: int,
    funding: Funding,
    four_eyes: tuple[RequestContext, RequestContext],
    policy: Policy,
) -> int:
    data = GrantCreate(
        name=f"bench {funding.value} {uuid.uuid4().hex[:6]}",
        scope=GrantScope.tenant,
        tenant_id=tenant_id,
        amount=AMOUNT,
        period=Period.day,
        funding=funding,
    )
    if funding is Funding.tenant_pool:
        grant_id = grant_service.create(session, context=None, data=data, ceiling=CEILING).id
        session.commit()
        return grant_id
    # It mints tokens: held for a second admin, who approves it (the database refuses it otherwise).
    requester, approver = four_eyes
    held = grant_service.submit_create(session, context=requester, data=data, ceiling=CEILING, policy=policy)
    assert isinstance(held, Held)
    session.commit()
    approval = approving.approve(session, context=approver, approval_id=held.approval.id, note="bench")
    session.commit()
    assert approval.result is not None
    return int(approval.result["grant_id"])


def disable_all(session: Session) -> None:
    """Only the grant being measured is in force."""
    session.execute(text("UPDATE credit_grants SET enabled = false"))
    session.commit()


def timed_run(factory: sessionmaker[Session], chunk: int) -> tuple[float, GrantReport]:
    started = time.perf_counter()
    report = grant_once(factory, chunk_size=chunk)
    return time.perf_counter() - started, report


def row_by_row(session: Session, account_ids: list[int], tag: str) -> float:
    _, period_end = Period.day.bounds(session.execute(text("SELECT now()")).scalar_one())
    started = time.perf_counter()
    for account_id in account_ids:
        ledger.credit(
            session,
            account_id=account_id,
            amount=AMOUNT,
            source=LotSource.grant,
            priority=10,
            expires_at=period_end,
            idempotency_key=f"bench-rbr-{tag}-{account_id}",
            request_hash=b"bench",
            tenant_id=None,
            actor="bench",
        )
    session.commit()
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", type=int, default=10_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--chunk", type=int, default=5000)
    parser.add_argument("--baseline", type=int, default=1000, help="row-by-row credits for comparison (0: none)")
    parser.add_argument("--time-limit", type=int, default=600)
    parser.add_argument("--out", type=Path, default=common.ROOT / "bench" / "out" / "grants.json")
    args = parser.parse_args()
    common.bounded(args.time_limit)
    report: dict = {"users": args.users, "chunk": args.chunk, "runs": {}}

    with common.servers("grants") as srv:
        report["environment"] = common.describe(srv)
        print(report["environment"])
        engine = make_engine(srv.database_url, pool_size=2)
        factory = make_sessionmaker(engine)
        settings = srv.settings()
        policy = Policy.from_settings(settings)
        with factory() as session:
            tenant_id, account_ids = common.seed_members(session, n=args.users, prefix="g")
            session.commit()
            four_eyes = (common.admin_context(session, settings), common.admin_context(session, settings))
            session.execute(text("ANALYZE users"))
            session.commit()
            pool = session.execute(text("SELECT pool_account_id FROM tenants WHERE id = :t"), {"t": tenant_id})
            pool_account = pool.scalar_one()
        print(f"seeded {args.users} members")

        for name, funding in (("platform", Funding.platform), ("tenant_pool", Funding.tenant_pool)):
            firsts, reruns = [], []
            for run in range(args.runs):
                with factory() as session:
                    disable_all(session)
                    if funding is Funding.tenant_pool:
                        common.fund_set_based(
                            session, account_ids=[pool_account], amount=AMOUNT * args.users, key=uuid.uuid4().hex
                        )
                        session.commit()
                    new_grant(session, tenant_id=tenant_id, funding=funding, four_eyes=four_eyes, policy=policy)
                elapsed, result = timed_run(factory, args.chunk)
                if result.granted_accounts != args.users or result.failed or result.short:
                    raise RuntimeError(f"{name} run {run + 1}: {result}")
                again, repeat = timed_run(factory, args.chunk)
                if repeat.granted_accounts:
                    raise RuntimeError(f"{name} rerun {run + 1} granted again: {repeat}")
                firsts.append(elapsed)
                reruns.append(again)
                print(
                    f"{name:>11} grant, {args.users} users: {elapsed:.3f} s ({args.users / elapsed:,.0f} accounts/s, "
                    f"{result.transactions} transaction(s)); the same run again: {again * 1000:.1f} ms"
                )
            report["runs"][name] = {
                "first_s": firsts,
                "first_median_s": statistics.median(firsts),
                "rerun_s": reruns,
                "rerun_median_s": statistics.median(reruns),
            }

        if args.baseline:
            n = min(args.baseline, args.users)
            with factory() as session:
                elapsed = row_by_row(session, account_ids[:n], uuid.uuid4().hex[:6])
            report["row_by_row"] = {"accounts": n, "s": elapsed, "per_10000_s": elapsed * 10_000 / n}
            print(
                f"row by row ({n} credits, one lot each, one transaction): {elapsed:.3f} s, "
                f"{elapsed * 10_000 / n:.1f} s per 10,000 extrapolated"
            )

        started = time.perf_counter()
        with factory() as session:
            reconciled = reconcile_all(session)
        print(
            f"reconciliation after the benchmark: balanced={reconciled.balanced} "
            f"({time.perf_counter() - started:.1f} s)"
        )
        report["reconciled"] = reconciled.balanced
        engine.dispose()

    print("\n=== summary ===")
    for name, r in report["runs"].items():
        print(
            f"{name:>11}: {args.users} users granted in {r['first_median_s']:.3f} s (median of {args.runs}); "
            f"rerun {r['rerun_median_s'] * 1000:.1f} ms"
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(f"results written to {args.out}")
    if not report["reconciled"]:
        raise SystemExit("the books do not balance after the benchmark")


if __name__ == "__main__":
    main()
