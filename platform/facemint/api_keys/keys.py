"""API key format: `fmk_<public id>_<secret><checksum>`.

- `fmk_` makes keys recognisable (secret scanners, logs); `_` keeps the key one double-click word.
- The public id (12 base62 characters) finds the key's row and names its rate-limit bucket.
- The secret is 32 base62 characters (about 190 bits).
- The checksum is CRC32 of everything before it, 6 base62 characters: malformed or mistyped keys are refused
  without touching the database.
Keys are stored as HMAC-SHA256(pepper, key)."""

from __future__ import annotations

import hashlib
import hmac
import secrets
import string
import zlib
from dataclasses import dataclass

PREFIX = "fmk_"
_ALPHABET = string.digits + string.ascii_letters
_PUBLIC_ID_LEN = 12
_SECRET_LEN = 32
_CHECKSUM_LEN = 6
KEY_LENGTH = len(PREFIX) + _PUBLIC_ID_LEN + 1 + _SECRET_LEN + _CHECKSUM_LEN


class MalformedKey(ValueError):
    pass


@dataclass(frozen=True, slots=True)
class NewKey:
    key: str
    public_id: str


def _random(length: int) -> str:
    return "".join(secrets.choice(_ALPHABET) for _ in range(length))


def _base62(value: int, width: int) -> str:
    digits = []
    for _ in range(width):
        value, rem = divmod(value, 62)
        digits.append(_ALPHABET[rem])
    return "".join(reversed(digits))


def _checksum(body: str) -> str:
    return _base62(zlib.crc32(body.encode()), _CHECKSUM_LEN)


def generate() -> NewKey:
    public_id = _random(_PUBLIC_ID_LEN)
    body = f"{PREFIX}{public_id}_{_random(_SECRET_LEN)}"
    return NewKey(key=body + _checksum(body), public_id=public_id)


def looks_like_key(token: str) -> bool:
    return token.startswith(PREFIX)


def parse_public_id(key: str) -> str:
    """The public id of a well-formed key; MalformedKey for anything else (no database involved)."""
    if len(key) != KEY_LENGTH or not key.startswith(PREFIX):
        raise MalformedKey("not a Facemint API key")
    body, checksum = key[:-_CHECKSUM_LEN], key[-_CHECKSUM_LEN:]
    public_id, sep, secret = body[len(PREFIX) :].partition("_")
    if (
        sep != "_"
        or len(public_id) != _PUBLIC_ID_LEN
        or len(secret) != _SECRET_LEN
        or not all(c in _ALPHABET for c in public_id + secret + checksum)
    ):
        raise MalformedKey("not a Facemint API key")
    if not hmac.compare_digest(_checksum(body), checksum):
        raise MalformedKey("API key checksum does not match")
    return public_id


def hash_key(pepper: bytes, key: str) -> bytes:
    return hmac.new(pepper, key.encode(), hashlib.sha256).digest()


def display_prefix(public_id: str) -> str:
    return f"{PREFIX}{public_id}_"
