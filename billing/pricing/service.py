"""Price book reads and writes. The current price of an operation is its highest version."""

from __future__ import annotations

from typing import Any

from sqlalchemy import text
from sqlalchemy.orm import Session

from billing.errors import InvalidAmount, PriceNotFound
from billing.pricing.schemas import PriceVersion

# The operations the platform meters, with the price a fresh database starts at (migration 0003 seeds the image
# swap, 0008 the rest): per image, or per started second of (trimmed) video.
DEFAULT_PRICES = {"swap.image": 1, "swap.video": 10, "enhance.image": 1, "enhance.video": 5}
MAX_TOKENS_PER_UNIT = 1_000_000

_COLUMNS = "operation, version, tokens_per_unit, actor, note, created_at"


def _row(row: Any) -> PriceVersion:
    return PriceVersion(
        operation=row.operation,
        version=row.version,
        tokens_per_unit=row.tokens_per_unit,
        actor=row.actor,
        note=row.note,
        created_at=row.created_at,
    )


def current_price(session: Session, *, operation: str) -> PriceVersion:
    row = session.execute(
        text(f"SELECT {_COLUMNS} FROM prices WHERE operation = :op ORDER BY version DESC LIMIT 1"),
        {"op": operation},
    ).one_or_none()
    if row is None:
        raise PriceNotFound(f"no price for operation {operation!r}", operation=operation)
    return _row(row)


def list_prices(session: Session, *, operation: str | None = None) -> list[PriceVersion]:
    rows = session.execute(
        text(
            f"SELECT {_COLUMNS} FROM prices WHERE CAST(:op AS text) IS NULL OR operation = :op "
            "ORDER BY operation, version DESC"
        ),
        {"op": operation},
    )
    return [_row(r) for r in rows]


def set_price(
    session: Session, *, operation: str, tokens_per_unit: int, actor: str | None, note: str | None
) -> PriceVersion:
    """Add the next version of an operation's price. Only operations already in the book can be priced (a typo
    must not create a new operation). Changes to one operation are serialised by a transaction-scoped lock, so
    two concurrent changes become consecutive versions."""
    if not 1 <= tokens_per_unit <= MAX_TOKENS_PER_UNIT:
        raise InvalidAmount(f"tokens_per_unit must be between 1 and {MAX_TOKENS_PER_UNIT}")
    session.execute(text("SELECT pg_advisory_xact_lock(hashtextextended('price:' || :op, 0))"), {"op": operation})
    row = session.execute(
        text(
            f"""
            INSERT INTO prices (operation, version, tokens_per_unit, actor, note)
            SELECT :op, max(version) + 1, :tpu, :actor, :note FROM prices WHERE operation = :op
            HAVING count(*) > 0
            RETURNING {_COLUMNS}
            """
        ),
        {"op": operation, "tpu": tokens_per_unit, "actor": actor, "note": note},
    ).one_or_none()
    if row is None:
        raise PriceNotFound(f"no price for operation {operation!r}", operation=operation)
    return _row(row)
