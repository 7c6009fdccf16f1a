from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime


@dataclass(frozen=True, slots=True)
class PriceVersion:
    operation: str
    version: int
    tokens_per_unit: int
    actor: str | None
    note: str | None
    created_at: datetime
