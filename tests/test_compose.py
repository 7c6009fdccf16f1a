"""docker-compose.yml against the code it runs: the settings it sets exist, the commands it runs exist, the
services start in the right order, and the production settings it describes are the ones `Settings` accepts.

Docker is not needed: the file is parsed with PyYAML and checked against `facemint.config.Settings` and the
`facemint` click group; the roles script it mounts into Postgres is run on the test server."""

from __future__ import annotations

import os
import re
import shlex
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import click
import pytest
import yaml
from pydantic import ValidationError
from sqlalchemy import Engine, text

from facemint.cli.main import cli
from facemint.config import DEV_API_KEY_PEPPER, DEV_JWT_SECRET, Environment, Settings
from facemint.migrate import check_login

ROOT = Path(__file__).resolve().parents[1]
COMPOSE_FILE = ROOT / "docker-compose.yml"
SERVICES = ("postgres", "redis", "migrate", "api", "worker")
ENV_PREFIX = "FACEMINT_"
# `${NAME:?message}`: compose refuses to start when NAME is unset or empty.
REQUIRED_FROM_ENV = re.compile(r"^\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*):\?[^}]*\}$")
TEST_SECRETS = {
    "FACEMINT_JWT_SECRET": "compose-test-jwt-secret-0123456789abcdefg",
    "FACEMINT_API_KEY_PEPPER": "compose-test-api-key-pepper-0123456789ab",
}


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    document = yaml.safe_load(COMPOSE_FILE.read_text())
    assert isinstance(document, dict)
    return document


def _services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    services = compose.get("services")
    assert isinstance(services, dict), "docker-compose.yml has no services"
    return services


def _environment(service: dict[str, Any]) -> dict[str, str]:
    """A service's environment, whether written as a mapping or as a list of NAME=value."""
    raw = service.get("environment") or {}
    if isinstance(raw, list):
        pairs = (item.split("=", 1) for item in raw)
        return {name: value for name, value in pairs}
    return {str(name): "" if value is None else str(value) for name, value in raw.items()}


def _facemint_environment(compose: dict[str, Any]) -> dict[str, dict[str, str]]:
    return {
        name: {k: v for k, v in _environment(service).items() if k.upper().startswith(ENV_PREFIX)}
        for name, service in _services(compose).items()
    }


def _command(service: dict[str, Any]) -> list[str]:
    raw = service.get("command")
    assert raw, "the service has no command"
    return list(raw) if isinstance(raw, list) else shlex.split(raw)


def _depends_on(service: dict[str, Any]) -> dict[str, dict[str, Any]]:
    raw = service.get("depends_on") or {}
    if isinstance(raw, list):  # short form: no condition (service_started)
        return {name: {"condition": "service_started"} for name in raw}
    return raw


def _settings_environment(env: dict[str, str], *, with_secrets: bool) -> dict[str, str]:
    """The environment a container gets: `${NAME:?}` values come from the host (test secrets here)."""
    out: dict[str, str] = {}
    for name, value in env.items():
        required = REQUIRED_FROM_ENV.match(value)
        if required is None:
            out[name] = value
        elif with_secrets:
            out[name] = TEST_SECRETS[required.group("name")]
    return out


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """No FACEMINT_* from the machine running the tests leaks into the Settings under test."""
    for name in list(os.environ):
        if name.upper().startswith(ENV_PREFIX):
            monkeypatch.delenv(name)
    return monkeypatch


def test_the_five_services_exist(compose: dict[str, Any]) -> None:
    assert set(SERVICES) <= set(_services(compose))


def test_images_and_healthchecks(compose: dict[str, Any]) -> None:
    services = _services(compose)
    assert str(services["postgres"]["image"]).startswith("postgres:16")
    assert str(services["redis"]["image"]).startswith("redis:7")
    for name in ("postgres", "redis"):
        assert services[name].get("healthcheck", {}).get("test"), f"{name} needs a healthcheck"
    assert any(str(port).endswith("8000") for port in services["api"].get("ports", []))


def test_every_facemint_variable_is_a_settings_field(compose: dict[str, Any]) -> None:
    fields = {name.lower() for name in Settings.model_fields}
    assert Settings.model_config.get("env_prefix") == ENV_PREFIX
    seen = 0
    for service, env in _facemint_environment(compose).items():
        for name in env:
            seen += 1
            field = name[len(ENV_PREFIX) :].lower()
            assert field in fields, f"{service}: {name} is not a Settings field (FACEMINT_<field>)"
    assert seen, "no FACEMINT_* variable found"


def test_migrate_api_and_worker_share_one_configuration(compose: dict[str, Any]) -> None:
    env = _facemint_environment(compose)
    migrate = {k: v for k, v in env["migrate"].items() if k != "FACEMINT_DATABASE_OWNER_URL"}
    assert migrate == env["api"] == env["worker"]


def test_only_the_migration_connects_as_the_owner(compose: dict[str, Any]) -> None:
    """The owner's URL is in the migration's environment alone; the api and worker log in as the service's role."""
    services = _services(compose)
    env = _facemint_environment(compose)
    postgres_env = _environment(services["postgres"])
    owner = urlsplit(env["migrate"]["FACEMINT_DATABASE_OWNER_URL"])
    assert (owner.hostname, owner.path.lstrip("/")) == ("postgres", postgres_env["POSTGRES_DB"])
    assert (owner.username, owner.password) == (postgres_env["POSTGRES_USER"], postgres_env["POSTGRES_PASSWORD"])
    for name in ("api", "worker"):
        assert "FACEMINT_DATABASE_OWNER_URL" not in env[name]
        service = urlsplit(env[name]["FACEMINT_DATABASE_URL"])
        assert service.username != postgres_env["POSTGRES_USER"], f"{name} must not connect as the owner"
        assert service.password != postgres_env["POSTGRES_PASSWORD"]


def _roles_script(compose: dict[str, Any]) -> Path:
    """The SQL file mounted into the postgres image's init directory (run once, as POSTGRES_USER)."""
    mounts = [str(volume).split(":") for volume in _services(compose)["postgres"].get("volumes", [])]
    scripts = [
        ROOT / source
        for source, target, *_ in mounts
        if target.startswith("/docker-entrypoint-initdb.d/") and target.endswith(".sql")
    ]
    assert len(scripts) == 1, mounts
    assert scripts[0].is_file(), scripts[0]
    return scripts[0]


def test_the_service_login_is_created_in_the_application_group(compose: dict[str, Any]) -> None:
    script = _roles_script(compose).read_text()
    service = urlsplit(_facemint_environment(compose)["api"]["FACEMINT_DATABASE_URL"])
    group = _facemint_environment(compose)["api"].get(
        "FACEMINT_DATABASE_APP_ROLE", Settings.model_fields["database_app_role"].default
    )
    assert re.search(rf"CREATE ROLE {group} NOLOGIN;", script)
    login = re.search(r"CREATE ROLE (\w+) LOGIN PASSWORD '([^']*)' IN ROLE (\w+);", script)
    assert login is not None
    assert login.groups() == (service.username, service.password, group)


def test_the_roles_script_runs_and_the_migration_accepts_its_login(
    compose: dict[str, Any], owner_engine: Engine
) -> None:
    """Run on the test server as the owner (in a transaction rolled back): `facemint migrate` then finds the
    service's login in the group (it checks before migrating)."""
    service = urlsplit(_facemint_environment(compose)["api"]["FACEMINT_DATABASE_URL"])
    assert service.username is not None
    with owner_engine.connect() as conn, conn.begin() as transaction:
        conn.execute(text(_roles_script(compose).read_text()))
        conn.execute(text(_roles_script(compose).read_text()))  # again: a volume set up by hand, then restarted
        assert conn.execute(
            text(
                "SELECT pg_has_role(:login, 'facemint_app', 'USAGE') AND NOT rolcanlogin FROM pg_roles "
                "WHERE rolname = 'facemint_app'"
            ),
            {"login": service.username},
        ).scalar_one()
        check_login(conn, service.username, "facemint_app")
        transaction.rollback()


def test_api_and_worker_share_the_job_storage(compose: dict[str, Any]) -> None:
    services = _services(compose)
    storage = _facemint_environment(compose)["api"]["FACEMINT_STORAGE_DIR"]
    for name in ("api", "worker"):
        mounts = {volume.split(":")[1]: volume.split(":")[0] for volume in services[name]["volumes"]}
        assert mounts.get(storage) == "storage", (name, mounts)


@pytest.mark.parametrize(("service", "subcommand"), [("migrate", "migrate"), ("api", "serve"), ("worker", "worker")])
def test_commands_are_real_cli_commands_with_real_options(
    compose: dict[str, Any], service: str, subcommand: str
) -> None:
    program, name, *args = _command(_services(compose)[service])
    assert program == "facemint"
    assert name == subcommand
    assert name in cli.commands, f"`facemint {name}` is not a command"
    command = cli.commands[name]
    known = {opt for param in command.params for opt in param.opts if isinstance(param, click.Option)}
    for arg in args:
        if arg.startswith("-"):
            assert arg.split("=", 1)[0] in known, f"`facemint {name}` has no option {arg}"
    # Click itself parses the arguments: unknown options and badly typed values (e.g. --port x) fail here.
    command.make_context(f"facemint {name}", list(args))


def test_api_listens_on_all_interfaces_on_the_published_port(compose: dict[str, Any]) -> None:
    _, _, *args = _command(_services(compose)["api"])
    context = cli.commands["serve"].make_context("facemint serve", list(args))
    assert context.params["host"] == "0.0.0.0"
    assert context.params["port"] == 8000


def test_start_order(compose: dict[str, Any]) -> None:
    services = _services(compose)
    migrate = _depends_on(services["migrate"])
    api = _depends_on(services["api"])
    assert migrate["postgres"]["condition"] == "service_healthy"
    assert api["migrate"]["condition"] == "service_completed_successfully"
    assert api["redis"]["condition"] == "service_healthy"


def test_urls_point_at_the_compose_services(compose: dict[str, Any]) -> None:
    services = _services(compose)
    env = _facemint_environment(compose)["api"]
    database = urlsplit(env["FACEMINT_DATABASE_URL"])
    assert database.scheme in ("postgresql", "postgres")
    assert database.hostname == "postgres"
    postgres_env = _environment(services["postgres"])
    assert database.path.lstrip("/") == postgres_env["POSTGRES_DB"]
    redis = urlsplit(env["FACEMINT_REDIS_URL"])
    assert (redis.scheme, redis.hostname) == ("redis", "redis")


def test_secrets_are_required_from_the_host_environment(compose: dict[str, Any]) -> None:
    for service in ("migrate", "api"):
        env = _facemint_environment(compose)[service]
        for name in TEST_SECRETS:
            required = REQUIRED_FROM_ENV.match(env.get(name, ""))
            assert required is not None, f"{service}: {name} must be `${{{name}:?...}}`"
            assert required.group("name") == name


def test_prod_settings_are_accepted_with_the_secrets(compose: dict[str, Any], clean_env: pytest.MonkeyPatch) -> None:
    env = _settings_environment(_facemint_environment(compose)["api"], with_secrets=True)
    for name, value in env.items():
        clean_env.setenv(name, value)
    settings = Settings()
    assert settings.env is Environment.prod
    assert settings.require_urls() == (env["FACEMINT_DATABASE_URL"], env["FACEMINT_REDIS_URL"])
    assert settings.jwt_signing_secret == TEST_SECRETS["FACEMINT_JWT_SECRET"]
    assert settings.api_key_pepper_bytes == TEST_SECRETS["FACEMINT_API_KEY_PEPPER"].encode()


def test_prod_settings_are_refused_without_the_secrets(compose: dict[str, Any], clean_env: pytest.MonkeyPatch) -> None:
    env = _settings_environment(_facemint_environment(compose)["api"], with_secrets=False)
    assert "FACEMINT_JWT_SECRET" not in env
    assert "FACEMINT_API_KEY_PEPPER" not in env
    for name, value in env.items():
        clean_env.setenv(name, value)
    with pytest.raises(ValidationError) as info:
        Settings()
    message = str(info.value)
    assert "FACEMINT_JWT_SECRET" in message
    assert "FACEMINT_API_KEY_PEPPER" in message


def test_prod_settings_are_refused_with_the_dev_secrets(compose: dict[str, Any], clean_env: pytest.MonkeyPatch) -> None:
    env = _settings_environment(_facemint_environment(compose)["api"], with_secrets=False)
    for name, value in env.items():
        clean_env.setenv(name, value)
    clean_env.setenv("FACEMINT_JWT_SECRET", DEV_JWT_SECRET)
    clean_env.setenv("FACEMINT_API_KEY_PEPPER", DEV_API_KEY_PEPPER)
    with pytest.raises(ValidationError):
        Settings()


def test_the_image_holds_what_facemint_reads_at_run_time(compose: dict[str, Any]) -> None:
    """`facemint migrate` reads alembic.ini and migrations/ next to the source tree; the app serves admin_ui/."""
    for service in ("migrate", "api"):
        build = _services(compose)[service].get("build")
        assert build is not None, f"{service} is built from the Dockerfile"
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert "FROM python:3.11-slim" in dockerfile
    copied = " ".join(line for line in dockerfile.splitlines() if line.startswith("COPY "))
    for path in ("pyproject.toml", "README.md", "alembic.ini", "platform/", "billing/", "inference/", "migrations/"):
        assert path in copied, f"the Dockerfile does not copy {path}"
    assert "admin_ui/" in copied
    assert re.search(r"^USER\s+(?!root\b)\S+", dockerfile, re.MULTILINE), "the image runs as a non-root user"


def test_the_image_runs_as_prod_unless_told_otherwise(clean_env: pytest.MonkeyPatch) -> None:
    """Without FACEMINT_ENV the settings are dev when no database is configured (the CLI on its local data dir):
    the image says prod, so a container started without it still refuses the built-in secrets."""
    dockerfile = (ROOT / "Dockerfile").read_text()
    env_lines = re.findall(r"^ENV\s+((?:.*\\\n)*.*)$", dockerfile, re.MULTILINE)
    assignments = dict(re.findall(r"(\w+)=(\S+)", " ".join(env_lines)))
    assert assignments.get("FACEMINT_ENV") == "prod"
    clean_env.setenv("FACEMINT_ENV", assignments["FACEMINT_ENV"])
    with pytest.raises(ValidationError, match="FACEMINT_JWT_SECRET is missing"):
        Settings()
