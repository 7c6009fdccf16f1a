"""Webhook URL checks against server-side request forgery, and name lookups bounded by an attempt's deadline.

Every URL is checked twice: when a job names it and again at every send, where the connection is pinned to the
addresses just checked (see transport.py), so a name that re-resolves to an internal address in between (DNS
rebinding) is never dialled. At send time the lookup runs on its own thread and is waited for only until the
attempt's deadline: a resolver that hangs fails the attempt like a receiver that does."""

from __future__ import annotations

import ipaddress
import re
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from facemint.webhooks.errors import InvalidWebhookUrl

MAX_URL_LENGTH = 2048
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
    return check_target(url, allowed_networks=allowed_networks, resolve=resolve).url


def check_target(url: str, *, allowed_networks: Sequence[str], resolve: Resolver = socket.getaddrinfo) -> Target:
    """The checked URL and its addresses; InvalidWebhookUrl as for `validate_webhook_url`. A lookup that `resolve`
    abandons with ResolveTimeout propagates as such."""
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


# --- Lookups bounded by a deadline ---------------------------------------------------------------------------


class ResolveTimeout(Exception):
    """A lookup did not finish by the attempt's deadline, or could not start because earlier lookups (of the same
    tenant, or too many in all) still hang. Deliberately not an OSError: it fails the attempt as a timeout, not as
    an unresolvable name."""


class DeadlineResolver:
    """Runs each lookup on a thread of its own and waits for it at most until the attempt's deadline.

    getaddrinfo cannot be interrupted: a lookup that outlives its attempt keeps its thread until the resolver
    gives up. So lookups are capped, `max_pending` in all and `max_pending_per_key` per key (the tenant), and one
    beyond a cap fails at once instead of waiting in a queue: one tenant's hanging name server can tie up only
    its own share, never the lookups of others."""

    def __init__(self, resolve: Resolver, *, max_pending: int, max_pending_per_key: int) -> None:
        self._resolve = resolve
        self._max_pending = max_pending
        self._max_pending_per_key = max_pending_per_key
        self._lock = threading.Lock()
        self._pending: Counter[object] = Counter()

    def until(self, deadline: float, *, key: object) -> Resolver:
        """A resolver for one attempt: the same arguments as getaddrinfo, finished by `deadline` (monotonic)."""

        def resolve(host: str, port: int, *args: Any, **kwargs: Any) -> Sequence[tuple[Any, ...]]:
            return self.lookup(host, port, *args, deadline=deadline, key=key, **kwargs)

        return resolve

    def lookup(self, host: str, port: int, *args: Any, deadline: float, key: object, **kwargs: Any) -> Any:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise ResolveTimeout(f"no time was left to resolve {host}")
        with self._lock:
            if self._pending.total() >= self._max_pending or self._pending[key] >= self._max_pending_per_key:
                raise ResolveTimeout(f"earlier lookups have not finished; {host} was not resolved")
            self._pending[key] += 1
        result: Future[Sequence[tuple[Any, ...]]] = Future()

        def run() -> None:
            try:
                result.set_result(self._resolve(host, port, *args, **kwargs))
            except BaseException as exc:  # handed to the waiting attempt, which may already have gone
                result.set_exception(exc)
            finally:
                with self._lock:
                    self._pending[key] -= 1
                    if self._pending[key] <= 0:
                        del self._pending[key]

        threading.Thread(target=run, name="webhook-dns", daemon=True).start()
        try:
            return result.result(timeout=remaining)
        except TimeoutError:
            if result.done() and result.exception() is not None:
                raise  # the resolver's own timeout: a failed lookup like any other
            raise ResolveTimeout(f"resolving {host} did not finish within the attempt's deadline") from None

    def pending(self) -> int:
        """Lookups still running (finished attempts' included)."""
        with self._lock:
            return self._pending.total()
