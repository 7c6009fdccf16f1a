"""Credentials an integration stores (an API token, a webhook signing secret): sealed with AES-256-GCM before they
reach the database, opened only where they are used, never returned by the API (a fingerprint shows which one is
set).

The keys are the settings' (`Settings.integration_keyring`: the integration keys, else the storage encryption
keys; `facemint.storage_crypto.Keyring`, with key ids). A sealed value is

    b"FMCRED" | version (1) | key-id length (1) | key id | salt (16) | nonce (12) | AES-256-GCM ciphertext and tag

under HKDF-SHA256(settings key, salt). The associated data is that header plus the value's `context` (the table,
row owner and field it belongs to), so a sealed value copied into another row or column does not open. Rotation:
add a key under a new id and point the id at it; values sealed under older ids open while their key is listed, and
are sealed under the current one the next time they are saved."""

from __future__ import annotations

import hashlib
import secrets

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from facemint.config import Environment, Settings
from facemint.errors import ServiceUnavailable
from facemint.storage_crypto import Keyring, ObjectUnreadable

MAGIC = b"FMCRED"
VERSION = 1
_SALT = 16
_NONCE = 12
_INFO = b"facemint integration credential v1"
# Development only (`env=dev` with no key configured): published here, so it protects nothing but the habit.
DEV_KEY_ID = "dev"
_DEV_KEY = hashlib.sha256(b"facemint development-only integration credential key").digest()


class CredentialKeysMissing(ServiceUnavailable):
    code = "credential_keys_missing"
    title = "No key to seal credentials with"


class CredentialUnreadable(ValueError):
    """A sealed credential failed authentication (altered, moved to another row) or its key is not configured."""


def keyring(settings: Settings) -> Keyring:
    """The keys credentials are sealed with. In prod with none configured, nothing can be stored: 503."""
    configured = settings.integration_keyring()
    if configured is not None:
        return configured
    if settings.env is Environment.dev:
        return Keyring({DEV_KEY_ID: _DEV_KEY}, DEV_KEY_ID)
    raise CredentialKeysMissing(
        "credentials cannot be stored: set FACEMINT_INTEGRATION_SECRET_KEYS and FACEMINT_INTEGRATION_SECRET_KEY_ID "
        "(or encrypt storage, whose keys are then used)"
    )


def _cipher(key: bytes, salt: bytes) -> AESGCM:
    return AESGCM(HKDF(algorithm=hashes.SHA256(), length=32, salt=salt, info=_INFO).derive(key))


def seal(value: str, *, keys: Keyring, context: str) -> bytes:
    ident = keys.current.encode("ascii")
    salt, nonce = secrets.token_bytes(_SALT), secrets.token_bytes(_NONCE)
    header = MAGIC + bytes([VERSION, len(ident)]) + ident + salt + nonce
    sealed = _cipher(keys.key(keys.current), salt).encrypt(nonce, value.encode(), header + context.encode())
    return header + sealed


def unseal(blob: bytes, *, keys: Keyring, context: str) -> str:
    data = bytes(blob)
    start = len(MAGIC) + 2
    if not data.startswith(MAGIC) or len(data) < start or data[len(MAGIC)] != VERSION:
        raise CredentialUnreadable("not a sealed credential")
    end = start + data[len(MAGIC) + 1] + _SALT + _NONCE
    if len(data) < end:
        raise CredentialUnreadable("the sealed credential is truncated")
    key_id = data[start : end - _SALT - _NONCE].decode("ascii", "replace")
    salt, nonce = data[end - _SALT - _NONCE : end - _NONCE], data[end - _NONCE : end]
    try:
        key = keys.key(key_id)
    except ObjectUnreadable as exc:
        raise CredentialUnreadable(str(exc)) from None
    try:
        return _cipher(key, salt).decrypt(nonce, data[end:], data[:end] + context.encode()).decode()
    except InvalidTag:
        raise CredentialUnreadable("the sealed credential fails authentication (altered, moved or wrong key)") from None


def key_id(blob: bytes) -> str:
    """The id of the key a sealed value is sealed with (what rotation looks for)."""
    data = bytes(blob)
    start = len(MAGIC) + 2
    return data[start : start + data[len(MAGIC) + 1]].decode("ascii", "replace")


def fingerprint(value: str) -> str:
    """What the API shows of a credential: enough to tell two apart, nothing to use."""
    return hashlib.sha256(value.encode()).hexdigest()[:16]
