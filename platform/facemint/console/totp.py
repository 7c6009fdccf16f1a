"""RFC 6238 time-based one-time passwords (SHA-1, 6 digits, 30-second steps: what every authenticator app reads
from an `otpauth://` URI), and the enrolment QR code as inline SVG."""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import struct
import time
from urllib.parse import quote

import segno

STEP_SECONDS = 30
DIGITS = 6
# One step either side: a phone clock a little off, or a code typed just as it turned over.
DRIFT_STEPS = 1


def new_secret() -> str:
    return base64.b32encode(secrets.token_bytes(20)).decode().rstrip("=")


def _key(secret: str) -> bytes:
    return base64.b32decode(secret + "=" * (-len(secret) % 8), casefold=True)


def code_at(secret: str, counter: int) -> str:
    digest = hmac.new(_key(secret), struct.pack(">Q", counter), hashlib.sha1).digest()
    offset = digest[-1] & 0x0F
    value = (struct.unpack(">I", digest[offset : offset + 4])[0] & 0x7FFFFFFF) % 10**DIGITS
    return f"{value:0{DIGITS}d}"


def current_counter(now: float | None = None) -> int:
    return int((time.time() if now is None else now) // STEP_SECONDS)


def matching_counter(secret: str, code: str, *, now: float | None = None) -> int | None:
    """The time step whose code this is (within the drift allowed), or None. The caller refuses a step at or
    before the last one accepted for the user: a code works once."""
    code = code.strip().replace(" ", "")
    if len(code) != DIGITS or not code.isdigit():
        return None
    counter = current_counter(now)
    for candidate in range(counter - DRIFT_STEPS, counter + DRIFT_STEPS + 1):
        if hmac.compare_digest(code_at(secret, candidate), code):
            return candidate
    return None


def provisioning_uri(secret: str, *, account: str, issuer: str = "Facemint") -> str:
    return (
        f"otpauth://totp/{quote(issuer)}:{quote(account)}?secret={secret}&issuer={quote(issuer)}"
        f"&algorithm=SHA1&digits={DIGITS}&period={STEP_SECONDS}"
    )


def qr_svg(uri: str) -> str:
    """The URI as an SVG QR code, to inline in the page (no image request, nothing fetched)."""
    return str(segno.make(uri, error="m").svg_inline(scale=5, dark="#111", light="#fff"))
