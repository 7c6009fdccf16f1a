"""Cursor pagination: newest first, the cursor is an opaque token for the last id seen."""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Callable
from typing import Any, Generic, TypeVar

from pydantic import BaseModel
from sqlalchemy import Select

from facemint.errors import InvalidCursor

T = TypeVar("T")
SelectT = TypeVar("SelectT", bound=Select)  # any select; the row type is kept

MAX_LIMIT = 200
_MAX_ID = 2**63 - 1  # ids are bigint


class Page(BaseModel, Generic[T]):
    items: list[T]
    next_cursor: str | None


class PageParams(BaseModel):
    before_id: int | None
    limit: int


def encode_cursor(last_id: int) -> str:
    return base64.urlsafe_b64encode(json.dumps({"before": last_id}).encode()).decode().rstrip("=")


def decode_cursor(cursor: str | None) -> int | None:
    if not cursor:
        return None
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        value = json.loads(base64.urlsafe_b64decode(padded.encode()))["before"]
    except (binascii.Error, ValueError, KeyError, TypeError, UnicodeDecodeError) as exc:
        raise InvalidCursor("the cursor is not one this API returned") from exc
    # bool is an int subclass, and a value past bigint would fail in the query: both are forged cursors.
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= _MAX_ID:
        raise InvalidCursor("the cursor is not one this API returned")
    return value


def make_page(
    items: list[T], *, limit: int, id_of: Callable[[T], int | None] = lambda item: getattr(item, "id", None)
) -> Page[T]:
    """`items` were fetched with limit + 1 rows, newest first, to know whether another page exists."""
    if len(items) <= limit:
        return Page(items=items, next_cursor=None)
    items = items[:limit]
    last_id = id_of(items[-1])
    return Page(items=items, next_cursor=encode_cursor(last_id) if last_id else None)


def newest_first(query: SelectT, id_column: Any, *, before_id: int | None, limit: int) -> SelectT:
    """Order by id, newest first, after the cursor, one row more than the page (see `make_page`)."""
    query = query.order_by(id_column.desc()).limit(limit + 1)
    return query if before_id is None else query.where(id_column < before_id)
