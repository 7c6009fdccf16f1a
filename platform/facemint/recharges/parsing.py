"""Batch input parsing: CSV or JSON into one row shape. Problems with one row are row failures (reported,
never fatal in partial mode); problems with the whole document (encoding, header, size) are 4xx errors."""

from __future__ import annotations

import csv
import io
import json
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from billing.ledger.orm import MAX_PRIORITY, MIN_PRIORITY
from facemint.recharges.errors import (
    BatchTooLarge,
    EmptyBatch,
    InvalidBatch,
    InvalidCsv,
    InvalidCsvHeader,
    InvalidEncoding,
    InvalidJson,
)

_DIGITS = re.compile(r"[0-9]{1,19}")
MAX_REFERENCE_LENGTH = 200
MAX_EMAIL_LENGTH = 320
# The optional columns after `amount`, in any order: the row's reference and its credited tokens' lot terms.
OPTIONAL_COLUMNS = ("reference", "priority", "expires_at")


@dataclass(slots=True)
class RowFailure:
    row: int
    code: str
    detail: str
    email: str | None = None
    user_id: int | None = None

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"row": self.row, "code": self.code, "detail": self.detail}
        if self.email is not None:
            out["email"] = self.email
        if self.user_id is not None:
            out["user_id"] = self.user_id
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RowFailure:
        return cls(data["row"], data["code"], data["detail"], email=data.get("email"), user_id=data.get("user_id"))


@dataclass(slots=True)
class ParsedBatch:
    """Column-wise rows that passed parsing, plus the rows that did not."""

    row_count: int = 0
    row_nos: list[int] = field(default_factory=list)
    user_ids: list[int | None] = field(default_factory=list)
    emails: list[str | None] = field(default_factory=list)
    amounts: list[int] = field(default_factory=list)
    references: list[str | None] = field(default_factory=list)
    priorities: list[int | None] = field(default_factory=list)
    expiries: list[str | None] = field(default_factory=list)  # ISO 8601 with a time zone, as given
    failures: list[RowFailure] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        """The parsed rows as an approval stores them: what was requested, so approving applies exactly it
        (parsing the body again could give another answer once the ceiling or the row limit changes)."""
        return {
            "row_count": self.row_count,
            "row_nos": self.row_nos,
            "user_ids": self.user_ids,
            "emails": self.emails,
            "amounts": self.amounts,
            "references": self.references,
            "priorities": self.priorities,
            "expiries": self.expiries,
            "failures": [f.as_dict() for f in self.failures],
        }

    @classmethod
    def from_dict(cls, rows: dict[str, Any]) -> ParsedBatch:
        return cls(
            row_count=rows["row_count"],
            row_nos=rows["row_nos"],
            user_ids=rows["user_ids"],
            emails=rows["emails"],
            amounts=rows["amounts"],
            references=rows["references"],
            # Approvals requested before lots had no lot terms.
            priorities=rows.get("priorities", [None] * len(rows["row_nos"])),
            expiries=rows.get("expiries", [None] * len(rows["row_nos"])),
            failures=[RowFailure.from_dict(f) for f in rows["failures"]],
        )

    def add(
        self,
        row: int,
        *,
        user_id_raw: Any,
        email_raw: Any,
        amount_raw: Any,
        reference_raw: Any,
        ceiling: int,
        priority_raw: Any = None,
        expires_at_raw: Any = None,
    ) -> None:
        if not all(_storable(v) for v in (email_raw, reference_raw, user_id_raw) if isinstance(v, str)):
            self.failures.append(RowFailure(row, "malformed_row", "text with NUL or unencodable characters"))
            return
        email = email_raw.strip().lower() if isinstance(email_raw, str) and email_raw.strip() else None
        user_id: int | None = None
        if user_id_raw is not None and user_id_raw != "":
            if isinstance(user_id_raw, bool) or not (
                (isinstance(user_id_raw, int) and user_id_raw > 0)
                or (isinstance(user_id_raw, str) and _DIGITS.fullmatch(user_id_raw.strip()))
            ):
                self.failures.append(RowFailure(row, "malformed_row", "user_id must be a positive integer"))
                return
            user_id = int(user_id_raw)
            if user_id <= 0 or user_id >= 2**63:
                self.failures.append(RowFailure(row, "malformed_row", "user_id must be a positive integer"))
                return
        if (user_id is None) == (email is None):
            self.failures.append(RowFailure(row, "malformed_row", "each row names exactly one email or user_id"))
            return
        if email is not None and (len(email) > MAX_EMAIL_LENGTH or "@" not in email):
            self.failures.append(RowFailure(row, "malformed_row", "not an email address", email=email[:320]))
            return
        amount = _parse_amount(amount_raw)
        if amount is None:
            self.failures.append(
                RowFailure(
                    row,
                    "invalid_amount",
                    "amount must be a positive integer number of tokens",
                    email=email,
                    user_id=user_id,
                )
            )
            return
        if amount > ceiling:
            self.failures.append(
                RowFailure(
                    row,
                    "amount_above_ceiling",
                    f"amount {amount} is above the per-row ceiling of {ceiling}",
                    email=email,
                    user_id=user_id,
                )
            )
            return
        reference = None
        if reference_raw is not None and reference_raw != "":
            if not isinstance(reference_raw, str) or len(reference_raw) > MAX_REFERENCE_LENGTH:
                self.failures.append(
                    RowFailure(
                        row,
                        "malformed_row",
                        f"reference must be text of at most {MAX_REFERENCE_LENGTH} characters",
                        email=email,
                        user_id=user_id,
                    )
                )
                return
            reference = reference_raw
        try:
            priority = _parse_priority(priority_raw)
        except ValueError:
            self.failures.append(
                RowFailure(
                    row,
                    "invalid_priority",
                    f"priority must be a whole number from {MIN_PRIORITY} to {MAX_PRIORITY}",
                    email=email,
                    user_id=user_id,
                )
            )
            return
        try:
            expires_at = _parse_expiry(expires_at_raw)
        except ValueError:
            self.failures.append(
                RowFailure(
                    row,
                    "invalid_expiry",
                    "expires_at must be an ISO 8601 time with a time zone, in the future",
                    email=email,
                    user_id=user_id,
                )
            )
            return
        self.row_nos.append(row)
        self.user_ids.append(user_id)
        self.emails.append(email)
        self.amounts.append(amount)
        self.references.append(reference)
        self.priorities.append(priority)
        self.expiries.append(expires_at)


def _storable(text: str) -> bool:
    """Postgres text takes neither NUL nor lone surrogates (which JSON's \\ud800 escapes can produce)."""
    if "\x00" in text:
        return False
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _parse_amount(raw: Any) -> int | None:
    if isinstance(raw, bool):
        return None
    if isinstance(raw, int):
        value = raw
    elif isinstance(raw, str) and _DIGITS.fullmatch(raw.strip()):
        value = int(raw.strip())
    else:
        return None
    return value if 0 < value < 2**62 else None


def _parse_priority(raw: Any) -> int | None:
    """The row's lot priority, None when not given; ValueError when it is not one."""
    if raw is None or raw == "":
        return None
    if isinstance(raw, str) and re.fullmatch(r"[0-9]{1,3}", raw.strip()):
        raw = int(raw.strip())
    if isinstance(raw, int) and not isinstance(raw, bool) and MIN_PRIORITY <= raw <= MAX_PRIORITY:
        return raw
    raise ValueError(raw)


def _parse_expiry(raw: Any) -> str | None:
    """The row's lot expiry as ISO 8601 (UTC), None when not given; ValueError when it is not a future time with a
    time zone."""
    if raw is None or raw == "":
        return None
    if not isinstance(raw, str):
        raise ValueError(raw)
    value = datetime.fromisoformat(raw.strip())
    if value.tzinfo is None or value <= datetime.now(UTC):
        raise ValueError(raw)
    return value.astimezone(UTC).isoformat()


def parse_csv(body: bytes, *, max_rows: int, ceiling: int) -> ParsedBatch:
    try:
        content = body.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise InvalidEncoding("the CSV is not UTF-8") from exc
    if "\x00" in content:
        raise InvalidCsv("the CSV contains NUL bytes")
    reader = csv.reader(io.StringIO(content, newline=""), strict=True)
    try:
        header = next(reader, None)
    except csv.Error as exc:
        raise InvalidCsv(f"unreadable CSV header: {exc}") from exc
    if not header:
        raise EmptyBatch("the CSV is empty")
    columns = [h.strip().lower() for h in header]
    optional = columns[2:]
    if (
        columns[:1] not in (["email"], ["user_id"])
        or columns[1:2] != ["amount"]
        or len(set(optional)) != len(optional)
        or not set(optional) <= set(OPTIONAL_COLUMNS)
    ):
        raise InvalidCsvHeader(
            "the CSV header must be email,amount or user_id,amount, then any of reference, priority and expires_at",
            header=header[:10],
        )
    by_email = columns[0] == "email"
    width = len(columns)
    batch = ParsedBatch()
    row = 0
    while True:
        try:
            values = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:
            row += 1
            batch.failures.append(RowFailure(row, "malformed_row", f"unreadable line: {exc}"))
            continue
        if not values or (len(values) == 1 and not values[0].strip()):
            continue  # blank lines are not rows
        row += 1
        if row > max_rows:
            raise BatchTooLarge(f"a batch holds at most {max_rows} rows", max_rows=max_rows)
        if len(values) != width:
            batch.failures.append(RowFailure(row, "malformed_row", f"expected {width} columns, found {len(values)}"))
            continue
        named = dict(zip(optional, values[2:], strict=True))
        batch.add(
            row,
            user_id_raw=None if by_email else values[0],
            email_raw=values[0] if by_email else None,
            amount_raw=values[1],
            reference_raw=named["reference"].strip() if "reference" in named else None,
            ceiling=ceiling,
            priority_raw=named.get("priority"),
            expires_at_raw=named.get("expires_at"),
        )
    batch.row_count = row
    if row == 0:
        raise EmptyBatch("the batch has no rows")
    return batch


def parse_json(body: bytes, *, max_rows: int, ceiling: int) -> tuple[str | None, ParsedBatch]:
    """Returns the body's `reason` and its rows."""
    try:
        document = json.loads(body)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise InvalidJson("the body is not valid JSON") from exc
    if not isinstance(document, dict) or not isinstance(document.get("items"), list):
        raise InvalidBatch('the body must be {"reason": ..., "items": [...]}')
    unknown = set(document) - {"reason", "items"}
    if unknown:
        raise InvalidBatch(f"unknown fields: {', '.join(sorted(unknown))}")
    reason = document.get("reason")
    if reason is not None and not isinstance(reason, str):
        raise InvalidBatch("reason must be text")
    items = document["items"]
    if not items:
        raise EmptyBatch("the batch has no rows")
    if len(items) > max_rows:
        raise BatchTooLarge(f"a batch holds at most {max_rows} rows", max_rows=max_rows)
    batch = ParsedBatch(row_count=len(items))
    allowed = {"email", "user_id", "amount", *OPTIONAL_COLUMNS}
    for index, item in enumerate(items, start=1):
        if not isinstance(item, dict):
            batch.failures.append(RowFailure(index, "malformed_row", "each item must be an object"))
            continue
        extra = set(item) - allowed
        if extra:
            batch.failures.append(
                RowFailure(index, "malformed_row", f"unknown fields: {', '.join(sorted(map(str, extra)))}")
            )
            continue
        email = item.get("email")
        if email is not None and not isinstance(email, str):
            batch.failures.append(RowFailure(index, "malformed_row", "email must be text"))
            continue
        batch.add(
            index,
            user_id_raw=item.get("user_id"),
            email_raw=email,
            amount_raw=item.get("amount"),
            reference_raw=item.get("reference"),
            ceiling=ceiling,
            priority_raw=item.get("priority"),
            expires_at_raw=item.get("expires_at"),
        )
    return reason, batch
