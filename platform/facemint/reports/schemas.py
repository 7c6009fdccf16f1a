from __future__ import annotations

from typing import Any

from pydantic import BaseModel


class DiscrepancyRead(BaseModel):
    check: str
    description: str
    ids: list[Any]
    details: list[Any]


class ReconciliationRead(BaseModel):
    balanced: bool
    checks: list[str]
    totals: dict[str, int]
    discrepancies: list[DiscrepancyRead]
