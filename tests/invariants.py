"""The ledger invariants every test leaves intact, checked with the same reconciliation the product ships."""

from __future__ import annotations

from sqlalchemy import Connection
from sqlalchemy.orm import Session

from facemint.reports.service import reconcile_all


def assert_ledger_invariants(conn: Connection) -> None:
    """Every transaction sums to zero; each balance equals its entries and each balance-after follows the
    one before; held equals the open holds; nothing is below zero; tokens are conserved; jobs agree with their
    holds."""
    with Session(bind=conn) as session:
        report = reconcile_all(session)
    assert report.balanced, "ledger invariants broken: " + "; ".join(
        f"{d.check} ids={d.ids[:10]} details={d.details[:10]}" for d in report.discrepancies
    )
