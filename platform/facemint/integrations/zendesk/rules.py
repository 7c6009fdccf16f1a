"""What a webhook says about a ticket, and which template and scene the tenant's rules pick for it. Pure: no I/O.

Two payload shapes are read (docs/integrations.md shows the trigger's JSON body):
- a trigger's webhook with the body we document: `{"ticket": {"id": "{{ticket.id}}", "subject":
  "{{ticket.title}}", "tags": "{{ticket.tags}}", "group_id": "{{ticket.group.id}}"}}` (placeholders arrive as
  strings: ids as digits, tags space-separated, a ticket without a group as "");
- Zendesk's ticket event webhook (`"type": "zen:event-type:ticket.created"`, the ticket in `detail`)."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from facemint.integrations.zendesk.errors import InvalidTicketEvent
from facemint.integrations.zendesk.schemas import BIGINT, MAX_SUBJECT, MAX_TAG, MAX_TAGS, AssetPair, RuleWrite

TICKET_CREATED = "ticket.created"
_EVENT_TYPES = {"ticket.created": TICKET_CREATED, "zen:event-type:ticket.created": TICKET_CREATED}


@dataclass(frozen=True, slots=True)
class TicketEvent:
    event: str | None  # TICKET_CREATED, or None for an event the connector does not act on
    ticket_id: int
    subject: str
    tags: tuple[str, ...]
    group_id: int | None


@dataclass(frozen=True, slots=True)
class Match:
    template_id: int
    scene_id: int
    matched_by: str  # "rule 1" (1-based, in order), "default"


def parse_event(body: bytes) -> TicketEvent:
    try:
        payload = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidTicketEvent("the webhook body is not JSON") from exc
    if not isinstance(payload, dict):
        raise InvalidTicketEvent("the webhook body is not a JSON object")
    if "detail" in payload and "type" in payload:
        ticket, kind = payload["detail"], payload["type"]
    else:
        ticket, kind = payload.get("ticket"), payload.get("event", TICKET_CREATED)
    if not isinstance(ticket, dict):
        raise InvalidTicketEvent("the webhook names no ticket (`ticket` or `detail` object)")
    ticket_id = _id(ticket.get("id"), "ticket id")
    if ticket_id is None:
        raise InvalidTicketEvent("the ticket has no id")
    subject = ticket.get("subject", "")
    if subject is None:
        subject = ""
    if not isinstance(subject, str):
        raise InvalidTicketEvent("the ticket's subject is not text")
    return TicketEvent(
        event=_EVENT_TYPES.get(kind) if isinstance(kind, str) else None,
        ticket_id=ticket_id,
        subject=subject[:MAX_SUBJECT],
        tags=_tags(ticket.get("tags")),
        group_id=_id(ticket.get("group_id"), "group id"),
    )


def _id(value: Any, what: str) -> int | None:
    if value is None or value == "":
        return None
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value.strip())
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= BIGINT:
        raise InvalidTicketEvent(f"the {what} is not a positive integer")
    return value


def _tags(value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    items = value.split() if isinstance(value, str) else value
    if not isinstance(items, list) or not all(isinstance(item, str) for item in items):
        raise InvalidTicketEvent("the ticket's tags are neither a list of text nor space-separated text")
    tags = dict.fromkeys(item.strip().lower() for item in items if item.strip() and len(item.strip()) <= MAX_TAG)
    return tuple(tags)[:MAX_TAGS]


def _words(subject: str) -> set[str]:
    return set(re.findall(r"\w+", subject.casefold()))


def _keyword_matches(keyword: str, subject: str, words: set[str]) -> bool:
    folded = keyword.casefold()
    if re.fullmatch(r"\w+", folded):
        return folded in words
    # A phrase ("order status"): its words in sequence, at word boundaries.
    return re.search(rf"(?<!\w){re.escape(folded)}(?!\w)", subject.casefold()) is not None


def matches(rule: RuleWrite, ticket: TicketEvent) -> bool:
    if rule.group_id is not None and rule.group_id != ticket.group_id:
        return False
    if rule.tags and not set(rule.tags) & set(ticket.tags):
        return False
    if rule.subject_keywords:
        words = _words(ticket.subject)
        if not any(_keyword_matches(keyword, ticket.subject, words) for keyword in rule.subject_keywords):
            return False
    return True


def pick(rules: list[RuleWrite], default: AssetPair | None, ticket: TicketEvent) -> Match | None:
    """The first rule the ticket matches, else the default, else None (the ticket is skipped)."""
    for position, rule in enumerate(rules, start=1):
        if matches(rule, ticket):
            return Match(template_id=rule.template_id, scene_id=rule.scene_id, matched_by=f"rule {position}")
    if default is not None:
        return Match(template_id=default.template_id, scene_id=default.scene_id, matched_by="default")
    return None
