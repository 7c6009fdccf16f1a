"""Credentials sealed for the database: AES-256-GCM under the configured key, bound to their row and field."""

from __future__ import annotations

import base64

import pytest

from facemint.config import Settings
from facemint.integrations import credentials
from facemint.integrations.credentials import CredentialKeysMissing, CredentialUnreadable
from facemint.storage_crypto import Keyring

KEYS = Keyring({"k1": bytes(range(32)), "k2": bytes(range(1, 33))}, "k1")


def test_a_sealed_credential_opens_only_in_its_own_context() -> None:
    sealed = credentials.seal("s3cret-token", keys=KEYS, context="zendesk_connectors:1:api_token")
    assert b"s3cret-token" not in sealed
    assert sealed.startswith(credentials.MAGIC)
    assert credentials.key_id(sealed) == "k1"
    assert credentials.unseal(sealed, keys=KEYS, context="zendesk_connectors:1:api_token") == "s3cret-token"
    for elsewhere in ("zendesk_connectors:2:api_token", "zendesk_connectors:1:signing_secret"):
        with pytest.raises(CredentialUnreadable):
            credentials.unseal(sealed, keys=KEYS, context=elsewhere)


def test_an_altered_credential_or_a_missing_key_does_not_open() -> None:
    sealed = credentials.seal("token", keys=KEYS, context="c")
    flipped = sealed[:-1] + bytes([sealed[-1] ^ 1])
    for broken in (flipped, sealed[:20], b"plain text"):
        with pytest.raises(CredentialUnreadable):
            credentials.unseal(broken, keys=KEYS, context="c")
    with pytest.raises(CredentialUnreadable, match="not configured"):
        credentials.unseal(sealed, keys=Keyring({"k2": bytes(range(1, 33))}, "k2"), context="c")


def test_rotation_seals_with_the_current_key_and_opens_older_ones() -> None:
    old = credentials.seal("token", keys=KEYS, context="c")
    rotated = Keyring(KEYS.keys, "k2")
    assert credentials.key_id(credentials.seal("token", keys=rotated, context="c")) == "k2"
    assert credentials.unseal(old, keys=rotated, context="c") == "token"


def test_the_keys_come_from_the_settings_and_prod_refuses_to_store_without_one() -> None:
    key = base64.b64encode(bytes(32)).decode()
    secrets = {"jwt_secret": "j" * 40, "api_key_pepper": "p" * 40}
    own = Settings(env="prod", **secrets, integration_secret_keys={"i1": key}, integration_secret_key_id="i1")
    assert credentials.keyring(own).current == "i1"
    storage = Settings(env="prod", **secrets, storage_encryption_keys={"s1": key}, storage_encryption_key_id="s1")
    assert credentials.keyring(storage).current == "s1"
    assert credentials.keyring(Settings(env="dev")).current == credentials.DEV_KEY_ID
    with pytest.raises(CredentialKeysMissing):
        credentials.keyring(Settings(env="prod", **secrets))
    with pytest.raises(ValueError, match="32 bytes"):
        Settings(env="dev", integration_secret_keys={"i1": "c2hvcnQ="}, integration_secret_key_id="i1")
