"""Webhooks for jobs' terminal states: the outbox (an event row written in the settlement transaction), the
sender (claims due events, posts them signed, records each attempt) and the receiver-side check.

Signing follows Standard Webhooks (https://www.standardwebhooks.com): `webhook-id`, `webhook-timestamp` and
`webhook-signature: v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">`, keyed with the tenant's secret.

Every URL is checked against server-side request forgery twice: when a job names it and again at every send,
where the connection is pinned to the addresses just checked, so a name that re-resolves to an internal address
in between (DNS rebinding) is never dialled."""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import ipaddress
import json
import logging
import re
import secrets
import socket
import ssl
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any
from urllib.parse import urlsplit

import httpx
from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from facemint.audit import service as audit
from facemint.config import Settings
from facemint.context import RequestContext
from facemint.tenants import service as tenant_service
from facemint.tenants.orm import Tenant, new_webhook_secret
from facemint.webhooks.errors import InvalidWebhookUrl
from facemint.webhooks.orm import EventStatus, WebhookDelivery, WebhookEvent
from facemint.webhooks.schemas import WebhookDeliveryRead, WebhookEventRead
from facemint.webhooks.transport import PinnedTransport

logger = logging.getLogger("facemint.webhooks")

USER_AGENT = "Facemint-Webhooks/1"
SECRET_PREFIX = "whsec_"
MAX_URL_LENGTH = 2048
MAX_ERROR_LENGTH = 500

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
# `socket.getaddrinfo` or a stand-in with its signature and result shape (tests resolve names without DNS).
Resolver = Callable[..., Sequence[tuple[Any, ...]]]

# Cloud metadata services: refused even where `webhook_allowed_networks` would admit their network.
METADATA_HOSTS = frozenset({"metadata.google.internal", "metadata.goog", "metadata", "instance-data"})
METADATA_ADDRESSES = frozenset(
    {
        ipaddress.ip_address("169.254.169.254"),  # AWS, GCP, Azure, OpenStack, ...
        ipaddress.ip_address("169.254.170.2"),  # AWS ECS task metadata
        ipaddress.ip_address("fd00:ec2::254"),  # AWS over IPv6
        ipaddress.ip_address("100.100.100.200"),  # Alibaba Cloud
    }
)
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_SHARED = ipaddress.ip_network("100.64.0.0/10")
# What getaddrinfo (inet_aton) reads as IPv4: 1 to 4 parts, each decimal, octal (leading 0) or hex (0x).
_LEGACY_IPV4 = re.compile(r"^(0x[0-9a-f]*|[0-9]+)(\.(0x[0-9a-f]*|[0-9]+)){0,3}\.?$")
_HOST_NAME = re.compile(r"^(?!-)[a-z0-9_-]{1,63}(?<!-)(\.(?!-)[a-z0-9_-]{1,63}(?<!-))*\.?$")


# --- URL checks --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Target:
    """A checked webhook URL and the addresses it may be sent to."""

    url: str
    host: str
    port: int
    addresses: tuple[IPAddress, ...]


def validate_webhook_url(url: str, *, allowed_networks: Sequence[str], resolve: Resolver = socket.getaddrinfo) -> str:
    """The normalized URL, or InvalidWebhookUrl when it is not http(s) or any address it resolves to is not
    public (unless inside `allowed_networks`)."""
    return _check_target(url, allowed_networks=allowed_networks, resolve=resolve).url


def _check_target(url: str, *, allowed_networks: Sequence[str], resolve: Resolver = socket.getaddrinfo) -> Target:
    if not isinstance(url, str) or not url:
        raise InvalidWebhookUrl("the webhook URL is empty")
    if len(url) > MAX_URL_LENGTH:
        raise InvalidWebhookUrl(f"the webhook URL is longer than {MAX_URL_LENGTH} characters")
    # Parsers disagree about whitespace, control characters and backslashes; refusing them leaves no doubt
    # about which host is meant.
    if any(ch <= " " or ch == "\x7f" or ch == "\\" for ch in url):
        raise InvalidWebhookUrl("the webhook URL contains whitespace, control characters or backslashes")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise InvalidWebhookUrl(f"the webhook URL cannot be parsed: {exc}") from exc
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https"):
        raise InvalidWebhookUrl("the webhook URL must use http or https")
    if "@" in parts.netloc:
        raise InvalidWebhookUrl("the webhook URL must not contain credentials")
    if not parts.hostname:
        raise InvalidWebhookUrl("the webhook URL has no host")
    if port == 0:
        raise InvalidWebhookUrl("the webhook URL's port must be 1-65535")
    default_port = 443 if scheme == "https" else 80
    effective_port = port or default_port
    networks = _parse_networks(allowed_networks)

    literal = _ip_literal(parts.hostname)
    if literal is not None:
        host = str(literal)
        url_host = f"[{host}]" if literal.version == 6 else host
        addresses: tuple[IPAddress, ...] = (literal,)
    else:
        host = _host_name(parts.hostname)
        url_host = host
        if host.rstrip(".") in METADATA_HOSTS:
            raise InvalidWebhookUrl(f"{host} is a cloud metadata service")
        addresses = _resolve(host, effective_port, resolve)
    for address in addresses:
        reason = _address_refusal(address, networks)
        if reason is not None:
            if literal is not None:
                raise InvalidWebhookUrl(f"the webhook address {address} {reason}")
            # The address itself is not echoed: it would tell callers how this server resolves internal names.
            raise InvalidWebhookUrl(f"the webhook host {host} resolves to an address that {reason}")

    netloc = url_host if port in (None, default_port) else f"{url_host}:{port}"
    normalized = f"{scheme}://{netloc}{parts.path or '/'}" + (f"?{parts.query}" if parts.query else "")
    return Target(url=normalized, host=host, port=effective_port, addresses=addresses)


def _parse_networks(allowed: Sequence[str]) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    return [ipaddress.ip_network(cidr, strict=False) for cidr in allowed]


def _ip_literal(hostname: str) -> IPAddress | None:
    """The address a host written as an IP means, including the forms inet_aton accepts (`2130706433`,
    `0x7f.1`, `0177.0.0.1`), which resolvers would otherwise turn into loopback behind our back."""
    try:
        return ipaddress.ip_address(hostname)
    except ValueError:
        pass
    if not _LEGACY_IPV4.match(hostname):
        return None
    parts = hostname.rstrip(".").split(".")
    values = []
    for part in parts:
        try:
            if part.startswith("0x"):
                values.append(int(part[2:] or "0", 16))
            elif len(part) > 1 and part.startswith("0"):
                values.append(int(part, 8))
            else:
                values.append(int(part))
        except ValueError:
            raise InvalidWebhookUrl(f"{hostname} is not a valid IPv4 address") from None
    *leading, last = values
    if any(v > 255 for v in leading) or last >= 256 ** (5 - len(values)):
        raise InvalidWebhookUrl(f"{hostname} is not a valid IPv4 address")
    number = last
    for index, value in enumerate(leading):
        number |= value << (8 * (3 - index))
    return ipaddress.IPv4Address(number)


def _host_name(hostname: str) -> str:
    try:
        host = hostname.encode("idna").decode("ascii").lower()
    except UnicodeError as exc:
        raise InvalidWebhookUrl(f"the webhook host {hostname!r} is not a valid host name") from exc
    if len(host) > 253 or not _HOST_NAME.match(host):
        raise InvalidWebhookUrl(f"the webhook host {hostname!r} is not a valid host name")
    return host


def _resolve(host: str, port: int, resolve: Resolver) -> tuple[IPAddress, ...]:
    try:
        infos = resolve(host, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError) as exc:
        raise InvalidWebhookUrl(f"the webhook host {host} cannot be resolved") from exc
    addresses: list[IPAddress] = []
    for info in infos:
        try:
            address = ipaddress.ip_address(info[4][0])
        except (ValueError, IndexError, TypeError) as exc:
            raise InvalidWebhookUrl(f"the webhook host {host} resolves to an unusable address") from exc
        if address not in addresses:
            addresses.append(address)
    if not addresses:
        raise InvalidWebhookUrl(f"the webhook host {host} cannot be resolved")
    return tuple(addresses)


def _embedded_ipv4(address: IPAddress) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address carries (mapped, 6to4, Teredo, NAT64, IPv4-compatible), if any."""
    if not isinstance(address, ipaddress.IPv6Address):
        return None
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address.sixtofour is not None:
        return address.sixtofour
    if address.teredo is not None:
        return address.teredo[1]
    if address in _NAT64 or (int(address) >> 32 == 0 and int(address) > 0xFFFF):
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return None


def _address_refusal(
    address: IPAddress, allowed: Sequence[ipaddress.IPv4Network | ipaddress.IPv6Network]
) -> str | None:
    """Why a webhook may not be sent to this address, or None when it may."""
    if isinstance(address, ipaddress.IPv6Address) and address.scope_id:
        address = ipaddress.IPv6Address(str(address).partition("%")[0])  # a zone does not change what it is
    embedded = _embedded_ipv4(address)
    candidates = [address] if embedded is None else [address, embedded]
    if any(candidate in METADATA_ADDRESSES for candidate in candidates):
        return "is a cloud metadata service"
    if any(candidate in network for candidate in candidates for network in allowed):
        return None
    for candidate in candidates:
        if not _is_public(candidate):
            return "is not a public address"
    return None


def _is_public(address: IPAddress) -> bool:
    if isinstance(address, ipaddress.IPv4Address) and address in _SHARED:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.is_site_local:
        return False
    return address.is_global and not (
        address.is_private
        or address.is_loopback
        or address.is_link_local
        or address.is_multicast
        or address.is_reserved
        or address.is_unspecified
    )


# --- Signing -------------------------------------------------------------------------------------------------


def _secret_key(secret: str) -> bytes:
    encoded = secret.removeprefix(SECRET_PREFIX)
    try:
        return base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ValueError("a webhook secret is `whsec_` followed by base64") from exc


def sign(secret: str, *, msg_id: str, timestamp: int, body: bytes) -> str:
    """The `webhook-signature` header value for one message."""
    signed = f"{msg_id}.{timestamp}.".encode() + body
    digest = hmac.new(_secret_key(secret), signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode("ascii")


def verify(
    secret: str,
    headers: Mapping[str, str],
    body: bytes | str,
    *,
    tolerance_seconds: int = 300,
    now: float | None = None,
) -> bool:
    """Whether a received webhook is authentic and fresh (what a receiver runs). `headers` may be any mapping;
    names are matched case-insensitively. Any one of several space-separated signatures may match (a sender
    signs with more than one secret while rotating)."""
    lowered = {name.lower(): value for name, value in headers.items()}
    msg_id = lowered.get("webhook-id")
    raw_timestamp = lowered.get("webhook-timestamp")
    signatures = lowered.get("webhook-signature")
    if not msg_id or not raw_timestamp or not signatures:
        return False
    try:
        timestamp = int(raw_timestamp)
    except ValueError:
        return False
    current = time.time() if now is None else now
    if abs(current - timestamp) > tolerance_seconds:
        return False
    payload = body.encode() if isinstance(body, str) else body
    expected = sign(secret, msg_id=msg_id, timestamp=timestamp, body=payload).encode()
    matched = False
    for candidate in signatures.split():
        # Every candidate is compared, so timing says nothing about which one matched.
        matched |= hmac.compare_digest(candidate.encode(), expected)
    return matched


def encode_body(payload: Mapping[str, Any]) -> bytes:
    """The exact bytes that are signed and sent: compact JSON with sorted keys."""
    return json.dumps(payload, separators=(",", ":"), sort_keys=True).encode()


# --- The outbox ----------------------------------------------------------------------------------------------


def record_event(
    session: Session, *, job_id: int, tenant_id: int, url: str, event_type: str, payload: dict[str, Any]
) -> None:
    """Queue a webhook, in the caller's transaction (the job's settlement), so it exists iff the state does."""
    session.add(
        WebhookEvent(
            public_id=f"msg_{secrets.token_hex(12)}",
            job_id=job_id,
            tenant_id=tenant_id,
            url=url,
            event_type=event_type,
            payload=payload,
            status=EventStatus.pending.value,
            attempts=0,
            next_attempt_at=func.now(),
        )
    )


@dataclass(frozen=True, slots=True)
class _Claimed:
    id: int
    public_id: str
    url: str
    payload: dict[str, Any]
    secret: str


@dataclass(frozen=True, slots=True)
class _Outcome:
    response_status: int | None
    error: str | None
    duration_ms: float

    @property
    def ok(self) -> bool:
        return self.response_status is not None and 200 <= self.response_status < 300


def deliver_due(
    session_factory: Callable[[], Session],
    *,
    settings: Settings,
    limit: int = 20,
    resolve: Resolver = socket.getaddrinfo,
) -> int:
    """Send up to `limit` due webhooks, one attempt each; returns how many attempts were made.

    Claiming and recording are two short transactions; the HTTP call happens outside both, so a slow receiver
    holds no lock or connection. A claim pushes `next_attempt_at` past the time a send can take, so other
    senders skip the event meanwhile and a sender that dies mid-send only delays it."""
    lease = timedelta(seconds=settings.webhook_timeout_seconds * 2 + 5)
    claimed = _claim(session_factory, limit=limit, lease=lease)
    if not claimed:
        return 0
    ssl_context = httpx.create_ssl_context()
    for event in claimed:
        try:
            outcome = _send(event, settings=settings, resolve=resolve, ssl_context=ssl_context)
        except Exception as exc:  # one broken event must not stop the batch; it is retried like a failure
            logger.exception("webhook %s: unexpected error while sending", event.public_id)
            outcome = _Outcome(response_status=None, error=_error_text(exc), duration_ms=0.0)
        _record_outcome(session_factory, event, outcome, settings=settings)
    return len(claimed)


def _claim(session_factory: Callable[[], Session], *, limit: int, lease: timedelta) -> list[_Claimed]:
    with session_factory() as session, session.begin():
        rows = session.execute(
            # The secret is read now, at send time: a rotation applies to the next attempt of every pending event.
            select(
                WebhookEvent.id, WebhookEvent.public_id, WebhookEvent.url, WebhookEvent.payload, Tenant.webhook_secret
            )
            .join(Tenant, Tenant.id == WebhookEvent.tenant_id)
            .where(WebhookEvent.status == EventStatus.pending.value, WebhookEvent.next_attempt_at <= func.now())
            .order_by(WebhookEvent.next_attempt_at, WebhookEvent.id)
            .limit(limit)
            .with_for_update(of=WebhookEvent, skip_locked=True)
        ).all()
        if rows:
            ids = [row.id for row in rows]
            session.execute(
                update(WebhookEvent).where(WebhookEvent.id.in_(ids)).values(next_attempt_at=func.now() + lease)
            )
    return [
        _Claimed(id=row.id, public_id=row.public_id, url=row.url, payload=row.payload, secret=row.webhook_secret)
        for row in rows
    ]


def _send(event: _Claimed, *, settings: Settings, resolve: Resolver, ssl_context: ssl.SSLContext) -> _Outcome:
    started = time.monotonic()

    def elapsed_ms() -> float:
        return round((time.monotonic() - started) * 1000, 3)

    try:
        target = _check_target(event.url, allowed_networks=settings.webhook_allowed_networks, resolve=resolve)
    except InvalidWebhookUrl as exc:
        return _Outcome(response_status=None, error=_truncate(f"refused: {exc.detail}"), duration_ms=elapsed_ms())
    body = encode_body(event.payload)
    timestamp = int(time.time())
    headers = {
        "content-type": "application/json",
        "user-agent": USER_AGENT,
        "webhook-id": event.public_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": sign(event.secret, msg_id=event.public_id, timestamp=timestamp, body=body),
    }
    transport = PinnedTransport(
        addresses=[str(address) for address in target.addresses],
        deadline=started + settings.webhook_timeout_seconds,
        ssl_context=ssl_context,
    )
    try:
        with httpx.Client(
            transport=transport,
            follow_redirects=False,
            timeout=settings.webhook_timeout_seconds,
            trust_env=False,  # no proxies or .netrc from the environment
        ) as client:
            response = client.post(target.url, content=body, headers=headers)
    except httpx.HTTPError as exc:
        return _Outcome(response_status=None, error=_error_text(exc), duration_ms=elapsed_ms())
    error = None
    if response.is_redirect:
        error = _truncate(f"redirects are not followed (Location: {response.headers.get('location', '')})")
    elif not response.is_success:
        error = f"HTTP {response.status_code}"
    return _Outcome(response_status=response.status_code, error=error, duration_ms=elapsed_ms())


def _record_outcome(
    session_factory: Callable[[], Session], event: _Claimed, outcome: _Outcome, *, settings: Settings
) -> None:
    with session_factory() as session, session.begin():
        row = session.get(WebhookEvent, event.id, with_for_update=True, populate_existing=True)
        assert row is not None  # events are never deleted
        attempt = row.attempts + 1
        session.add(
            WebhookDelivery(
                event_id=row.id,
                attempt=attempt,
                response_status=outcome.response_status,
                error=outcome.error,
                duration_ms=outcome.duration_ms,
            )
        )
        row.attempts = attempt
        if row.status != EventStatus.pending.value:
            # Settled by another sender after this one's claim ran out: the attempt is logged, nothing else.
            return
        if outcome.ok:
            row.status = EventStatus.delivered.value
            row.delivered_at = func.now()
        elif attempt >= settings.webhook_max_attempts:
            row.status = EventStatus.failed.value
            logger.warning("webhook %s failed after %d attempts: %s", row.public_id, attempt, outcome.error)
        else:
            row.next_attempt_at = func.now() + timedelta(seconds=backoff_seconds(settings, attempts=attempt))


def backoff_seconds(settings: Settings, *, attempts: int) -> float:
    """The wait after `attempts` failed attempts: `webhook_backoff_seconds[attempts - 1]`, the last repeating."""
    schedule = settings.webhook_backoff_seconds
    if not schedule:
        return 0.0
    return float(schedule[min(attempts, len(schedule)) - 1])


def _error_text(exc: BaseException) -> str:
    message = str(exc)
    return _truncate(f"{type(exc).__name__}: {message}" if message else type(exc).__name__)


def _truncate(text: str) -> str:
    return text if len(text) <= MAX_ERROR_LENGTH else text[: MAX_ERROR_LENGTH - 1] + "…"


# --- Reading -------------------------------------------------------------------------------------------------


def list_deliveries(session: Session, *, job_id: int) -> list[WebhookEventRead]:
    """A job's webhook events, oldest first, each with its attempts. The caller checks the job is visible."""
    events = list(session.scalars(select(WebhookEvent).where(WebhookEvent.job_id == job_id).order_by(WebhookEvent.id)))
    deliveries: dict[int, list[WebhookDeliveryRead]] = {event.id: [] for event in events}
    if events:
        for delivery in session.scalars(
            select(WebhookDelivery)
            .where(WebhookDelivery.event_id.in_(list(deliveries)))
            .order_by(WebhookDelivery.event_id, WebhookDelivery.id)
        ):
            deliveries[delivery.event_id].append(WebhookDeliveryRead.model_validate(delivery))
    return [
        WebhookEventRead(
            id=event.public_id,
            event_type=event.event_type,
            status=EventStatus(event.status),
            attempts=event.attempts,
            next_attempt_at=event.next_attempt_at if event.status == EventStatus.pending.value else None,
            delivered_at=event.delivered_at,
            created_at=event.created_at,
            deliveries=deliveries[event.id],
        )
        for event in events
    ]


# --- The tenant's secret -------------------------------------------------------------------------------------


def get_secret(session: Session, *, tenant_id: int, tenant_scope: int | None) -> str:
    return tenant_service.get(session, tenant_id=tenant_id, tenant_scope=tenant_scope).webhook_secret


def rotate_secret(session: Session, *, context: RequestContext, tenant_id: int, tenant_scope: int | None) -> str:
    """Replace the tenant's signing secret; every attempt from now on (retries included) is signed with it."""
    tenant = tenant_service.get(session, tenant_id=tenant_id, tenant_scope=tenant_scope)
    before = _fingerprint(tenant.webhook_secret)
    tenant.webhook_secret = new_webhook_secret()
    session.flush()
    audit.record(
        session,
        context=context,
        action="tenant.webhook_secret.rotate",
        target_type="tenant",
        target_id=tenant.id,
        tenant_id=tenant.id,
        # Fingerprints, never the secret: the trail shows that it changed, not what to.
        before={"secret_sha256": before},
        after={"secret_sha256": _fingerprint(tenant.webhook_secret)},
    )
    return tenant.webhook_secret


def _fingerprint(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()[:16]
