from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum


class Period(StrEnum):
    """How often a grant recurs. Periods are UTC calendar periods: a day starts at 00:00 UTC, a week on Monday
    00:00 UTC (ISO weeks), a month on its first day at 00:00 UTC; each ends where the next starts."""

    day = "day"
    week = "week"
    month = "month"

    def bounds(self, at: datetime) -> tuple[datetime, datetime]:
        """The [start, end) of the period containing the instant `at` (timezone-aware)."""
        if at.tzinfo is None:
            raise ValueError("a period is found for an aware instant")
        midnight = at.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
        if self is Period.day:
            return midnight, midnight + timedelta(days=1)
        if self is Period.week:
            start = midnight - timedelta(days=midnight.weekday())
            return start, start + timedelta(days=7)
        start = midnight.replace(day=1)
        end = start.replace(year=start.year + 1, month=1) if start.month == 12 else start.replace(month=start.month + 1)
        return start, end


@dataclass(frozen=True, slots=True)
class GrantApplied:
    """What crediting one staged set did: the transaction (None when nothing was written), how many accounts and
    tokens, and, when the paying pool could not cover the total, what it had (nothing was written then)."""

    transaction_id: int | None
    accounts: int
    total: int
    pool_available: int | None = None

    @property
    def short(self) -> bool:
        return self.pool_available is not None
