"""Reading what a console form or filter sends: as the API's own request schemas where there is one (so a form is
refused exactly as the same JSON body would be), and ids typed by hand."""

from __future__ import annotations

import secrets
from enum import Enum
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from facemint.errors import FacemintError, Unprocessable

ModelT = TypeVar("ModelT", bound=BaseModel)
_MAX_ID = 2**63 - 1  # ids are bigint


def validated(model: type[ModelT], data: dict[str, Any]) -> ModelT:
    """A form's fields as the API's request schema, refused as a 422 problem naming the fields (what the API
    answers for the same body)."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        detail = "; ".join(
            f"{'.'.join(str(part) for part in error['loc']) or 'form'}: {error['msg']}" for error in exc.errors()[:5]
        )
        raise Unprocessable(detail) from None


def typed_int(value: str) -> int | str | None:
    """A number typed into a form: None when empty, an int when it is one; anything else is passed on as text for
    the (strict) schema to refuse by name."""
    value = value.strip()
    if not value:
        return None
    return int(value) if value.isdigit() and len(value) < 19 else value


def id_filter(value: str) -> int | None:
    """An id filter from a link's query string: anything but an id is no filter (a stale or mistyped link lists
    everything rather than failing)."""
    parsed = typed_int(value)
    return parsed if isinstance(parsed, int) and 0 < parsed <= _MAX_ID else None


def enum_filter(value: str, allowed: type[Enum]) -> str | None:
    """A filter's value if it is one of the enum's, else no filter (a stale bookmark shows everything)."""
    return value if value in {member.value for member in allowed} else None


def new_idempotency_key() -> str:
    """The Idempotency-Key a form carries, fixed when it is drawn: submitting it twice (a double click, a
    resubmit) replays the first result."""
    return f"console-{secrets.token_urlsafe(18)}"


def positive_id(value: str, name: str, *, error: type[FacemintError] = Unprocessable) -> int | None:
    """An id filter typed into a filter form: None when empty, otherwise a positive bigint or a 422 naming it."""
    value = value.strip()
    if not value:
        return None
    if not value.isdigit() or not 0 < int(value) <= _MAX_ID:
        raise error(f"`{name}` must be a positive whole number", filter=name)
    return int(value)
