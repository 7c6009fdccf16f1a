"""Instants and days the API accepts, checked strictly and turned into UTC here, so Postgres only ever sees values
it can store and the OpenAPI document says exactly what is taken:

- an instant is ISO 8601 `YYYY-MM-DDTHH:MM[:SS[.ffffff]]` with an offset (`Z`, `+HH:MM`) or none (meaning UTC);
  an offset Postgres would refuse (beyond +/-15:59) is converted first, and one that leaves the calendar once in
  UTC answers 422, never 500;
- a day is `YYYY-MM-DD`;
- where a wrong guess would matter (an API key's expiry), the offset is required (`AwareUtcDatetime`).
Numbers, dates given for instants and other forms pydantic would read leniently (a Unix time) are refused."""

from __future__ import annotations

import re
from datetime import UTC, date, datetime
from typing import Annotated, Any

from pydantic import AfterValidator, BeforeValidator, WithJsonSchema

INSTANT_PATTERN = r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}(:\d{2}(\.\d{1,6})?)?(Z|z|[+-]\d{2}:\d{2})?$"
AWARE_INSTANT_PATTERN = r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}(:\d{2}(\.\d{1,6})?)?(Z|z|[+-]\d{2}:\d{2})$"
DAY_PATTERN = r"^\d{4}-\d{2}-\d{2}$"
_INSTANT = re.compile(INSTANT_PATTERN)
_AWARE_INSTANT = re.compile(AWARE_INSTANT_PATTERN)
_DAY = re.compile(DAY_PATTERN)


def _instant_text(value: Any) -> Any:
    if isinstance(value, datetime):
        return value
    if not isinstance(value, str) or not _INSTANT.match(value):
        raise ValueError("an instant is ISO 8601: YYYY-MM-DDTHH:MM[:SS[.ffffff]] with Z, +HH:MM or no offset (UTC)")
    return value


def _aware_instant_text(value: Any) -> Any:
    if isinstance(value, datetime) and value.tzinfo is not None:
        return value
    if not isinstance(value, str) or not _AWARE_INSTANT.match(value):
        raise ValueError("an instant with its offset: YYYY-MM-DDTHH:MM[:SS[.ffffff]] and Z or +HH:MM")
    return value


def _day_text(value: Any) -> Any:
    if isinstance(value, date) and not isinstance(value, datetime):
        return value
    if not isinstance(value, str) or not _DAY.match(value):
        raise ValueError("a day is YYYY-MM-DD")
    return value


def to_utc(value: datetime) -> datetime:
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    try:
        return value.astimezone(UTC)
    except OverflowError:
        raise ValueError("the instant is out of range once converted to UTC") from None


UtcDatetime = Annotated[
    datetime,
    BeforeValidator(_instant_text),
    AfterValidator(to_utc),
    WithJsonSchema({"type": "string", "pattern": INSTANT_PATTERN, "description": "ISO 8601; no offset means UTC"}),
]
# Where a wrong guess matters (when a key stops working), the offset is required rather than taken as UTC.
AwareUtcDatetime = Annotated[
    datetime,
    BeforeValidator(_aware_instant_text),
    AfterValidator(to_utc),
    WithJsonSchema({"type": "string", "pattern": AWARE_INSTANT_PATTERN, "description": "ISO 8601 with an offset"}),
]
IsoDate = Annotated[date, BeforeValidator(_day_text), WithJsonSchema({"type": "string", "pattern": DAY_PATTERN})]
