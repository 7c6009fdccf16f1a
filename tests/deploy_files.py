"""Reading the deployment files the way Docker Compose and Kubernetes read them, for tests/test_compose.py and
tests/test_deploy_manifests.py: a compose service's environment and command, `${NAME:?}` interpolation with test
secrets, a container's FACEMINT_* variables checked against `Settings`, and a command line against the CLI."""

from __future__ import annotations

import base64
import json
import re
import shlex
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import click
import yaml

from facemint.cli.main import cli
from facemint.config import Settings

ROOT = Path(__file__).resolve().parents[1]
COMPOSE_FILE = ROOT / "docker-compose.yml"
ENV_PREFIX = "FACEMINT_"
# boto3's own credential variables: the S3 backend reads them, never the settings (facemint.storage_s3).
S3_CREDENTIAL_VARIABLES = frozenset({"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"})
# `${NAME:?message}`: compose refuses to start when NAME is unset or empty; `${NAME:-default}`: default when unset.
REQUIRED_FROM_ENV = re.compile(r"^\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*):\?[^}]*\}$")
DEFAULTED_FROM_ENV = re.compile(r"^\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*):-(?P<default>[^}]*)\}$")
# What the operator's environment (compose) or Secret (Kubernetes) provides in the tests: valid production values.
TEST_SECRETS = {
    "FACEMINT_JWT_SECRET": "compose-test-jwt-secret-0123456789abcdefg",
    "FACEMINT_API_KEY_PEPPER": "compose-test-api-key-pepper-0123456789ab",
    "FACEMINT_METRICS_TOKEN": "compose-test-metrics-token-0123456789abcd",
    "FACEMINT_STORAGE_ENCRYPTION_KEYS": json.dumps({"k1": base64.b64encode(bytes(range(32))).decode()}),
    "S3_ACCESS_KEY_ID": "compose-test-access-key",
    "S3_SECRET_ACCESS_KEY": "compose-test-secret-key-0123456789",
}


def load_compose() -> dict[str, Any]:
    document = yaml.safe_load(COMPOSE_FILE.read_text())
    assert isinstance(document, dict)
    return document


def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    found = compose.get("services")
    assert isinstance(found, dict), "docker-compose.yml has no services"
    return found


def environment(service: dict[str, Any]) -> dict[str, str]:
    """A service's environment, whether written as a mapping or as a list of NAME=value."""
    raw = service.get("environment") or {}
    if isinstance(raw, list):
        pairs = (item.split("=", 1) for item in raw)
        return {name: value for name, value in pairs}
    return {str(name): "" if value is None else str(value) for name, value in raw.items()}


def facemint_environment(compose: dict[str, Any]) -> dict[str, dict[str, str]]:
    return {
        name: {k: v for k, v in environment(service).items() if k.upper().startswith(ENV_PREFIX)}
        for name, service in services(compose).items()
    }


def command(service: dict[str, Any]) -> list[str]:
    raw = service.get("command")
    assert raw, "the service has no command"
    return list(raw) if isinstance(raw, list) else shlex.split(raw)


def depends_on(service: dict[str, Any]) -> dict[str, dict[str, Any]]:
    raw = service.get("depends_on") or {}
    if isinstance(raw, list):  # short form: no condition (service_started)
        return {name: {"condition": "service_started"} for name in raw}
    return dict(raw)


def interpolate(value: str, *, without: frozenset[str] = frozenset()) -> str | None:
    """What compose makes of a value, with TEST_SECRETS as the host's environment less `without`; None when the
    variable stays unset (compose itself would refuse to start for a `${NAME:?}`)."""
    required = REQUIRED_FROM_ENV.match(value)
    if required is not None:
        name = required.group("name")
        return None if name in without else TEST_SECRETS[name]
    defaulted = DEFAULTED_FROM_ENV.match(value)
    if defaulted is not None:
        name = defaulted.group("name")
        return TEST_SECRETS.get(name, defaulted.group("default")) if name not in without else defaulted.group("default")
    assert "${" not in value, f"interpolation the tests do not model: {value}"
    return value


def container_environment(env: dict[str, str], *, without: frozenset[str] = frozenset()) -> dict[str, str]:
    """The environment a container gets from its compose `environment`."""
    out = {}
    for name, value in env.items():
        interpolated = interpolate(value, without=without)
        if interpolated is not None:
            out[name] = interpolated
    return out


def assert_settings_fields(names: Iterable[str], where: str) -> int:
    """Every FACEMINT_* name is a Settings field; returns how many there were."""
    fields = {name.lower() for name in Settings.model_fields}
    assert Settings.model_config.get("env_prefix") == ENV_PREFIX
    seen = 0
    for name in names:
        if name.upper().startswith(ENV_PREFIX):
            seen += 1
            field = name[len(ENV_PREFIX) :].lower()
            assert field in fields, f"{where}: {name} is not a Settings field (FACEMINT_<field>)"
    return seen


def assert_real_command(argv: list[str], subcommand: str) -> click.Context:
    """`facemint <subcommand> [options]` is a command of the CLI and Click accepts its options and values."""
    program, *words = argv
    assert program == "facemint", argv
    group: click.Command = cli
    path = ["facemint"]
    while isinstance(group, click.Group) and words and not words[0].startswith("-"):
        name = words.pop(0)
        assert name in group.commands, f"`{' '.join(path)} {name}` is not a command"
        group = group.commands[name]
        path.append(name)
    assert " ".join(path[1:]) == subcommand, argv
    known = {opt for param in group.params for opt in param.opts if isinstance(param, click.Option)}
    for arg in words:
        if arg.startswith("-"):
            assert arg.split("=", 1)[0] in known, f"`{' '.join(path)}` has no option {arg}"
    # Click itself parses the arguments: unknown options and badly typed values (e.g. --port x) fail here.
    return group.make_context(" ".join(path), list(words))
