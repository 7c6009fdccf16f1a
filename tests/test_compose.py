"""docker-compose.yml against the code it runs: the file is valid under the Compose Specification's schema, the
settings it sets exist, the commands it runs exist, the services start in the right order, the production settings
it describes are the ones `Settings` accepts, and the app, its workers and the bucket job agree on one S3.

Docker is not needed: the file is parsed with PyYAML and checked with check-jsonschema (the Compose schema it
vendors), against `facemint.config.Settings` and the `facemint` click group; the roles script it mounts into
Postgres runs on the test server, the bucket script on a real SeaweedFS. The proxy, GPU and monitoring services:
tests/test_compose_services.py."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import boto3
import pytest
import yaml
from pydantic import ValidationError
from sqlalchemy import Engine, text

from facemint.config import DEV_API_KEY_PEPPER, DEV_JWT_SECRET, Environment, Settings
from facemint.migrate import check_login
from tests.deploy_files import (
    COMPOSE_FILE,
    ENV_PREFIX,
    REQUIRED_FROM_ENV,
    ROOT,
    S3_CREDENTIAL_VARIABLES,
    TEST_SECRETS,
    assert_real_command,
    assert_settings_fields,
    command,
    container_environment,
    depends_on,
    environment,
    facemint_environment,
    load_compose,
    services,
)
from tests.storage_servers import S3Server

SERVICES = ("postgres", "redis", "seaweedfs", "s3-bucket", "migrate", "api", "proxy", "worker-gpu", "worker-cpu")
APP_SERVICES = ("api", "worker-gpu", "worker-cpu")  # the long-running ones, as the service's role
WORKERS = ("worker-gpu", "worker-cpu")
# The prod secrets compose takes from the host; each must be `${NAME:?...}` in every app service.
HOST_SECRETS = ("FACEMINT_JWT_SECRET", "FACEMINT_API_KEY_PEPPER", "FACEMINT_METRICS_TOKEN")
S3_GATEWAY_PORT = 8333  # `weed server -s3` without -s3.port


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return load_compose()


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """No FACEMINT_* from the machine running the tests leaks into the Settings under test."""
    for name in list(os.environ):
        if name.upper().startswith(ENV_PREFIX):
            monkeypatch.delenv(name)
    return monkeypatch


def _check_jsonschema(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "check_jsonschema", "--builtin-schema", "vendor.compose-spec", str(path)],
        capture_output=True,
        text=True,
        check=False,
    )


def test_the_file_is_valid_under_the_compose_specification() -> None:
    result = _check_jsonschema(COMPOSE_FILE)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_schema_check_rejects_what_compose_would(tmp_path: Path) -> None:
    """The check is live: a GPU reservation without its required `capabilities` fails it."""
    document = load_compose()
    (device,) = document["services"]["worker-gpu"]["deploy"]["resources"]["reservations"]["devices"]
    del device["capabilities"]
    broken = tmp_path / "docker-compose.yml"
    broken.write_text(yaml.safe_dump(document))
    result = _check_jsonschema(broken)
    assert result.returncode != 0
    assert "capabilities" in result.stdout + result.stderr


def test_the_services_exist(compose: dict[str, Any]) -> None:
    assert set(SERVICES) <= set(services(compose))


def test_images_and_healthchecks(compose: dict[str, Any]) -> None:
    found = services(compose)
    assert str(found["postgres"]["image"]).startswith("postgres:16")
    assert str(found["redis"]["image"]).startswith("redis:7")
    for name in ("postgres", "redis", "seaweedfs", "api", "proxy"):
        assert found[name].get("healthcheck", {}).get("test"), f"{name} needs a healthcheck"


def test_every_facemint_variable_is_a_settings_field(compose: dict[str, Any]) -> None:
    seen = sum(assert_settings_fields(env, service) for service, env in facemint_environment(compose).items())
    assert seen, "no FACEMINT_* variable found"


def test_migrate_api_and_workers_share_one_configuration(compose: dict[str, Any]) -> None:
    env = facemint_environment(compose)
    migrate = {k: v for k, v in env["migrate"].items() if k != "FACEMINT_DATABASE_OWNER_URL"}
    for name in APP_SERVICES:
        assert env[name] == migrate, name
        assert environment(services(compose)[name]).keys() - env[name].keys() == S3_CREDENTIAL_VARIABLES, name


def test_only_the_migration_connects_as_the_owner(compose: dict[str, Any]) -> None:
    """The owner's URL is in the migration's environment alone; the api and workers log in as the service's role."""
    env = facemint_environment(compose)
    postgres_env = environment(services(compose)["postgres"])
    owner = urlsplit(env["migrate"]["FACEMINT_DATABASE_OWNER_URL"])
    assert (owner.hostname, owner.path.lstrip("/")) == ("postgres", postgres_env["POSTGRES_DB"])
    assert (owner.username, owner.password) == (postgres_env["POSTGRES_USER"], postgres_env["POSTGRES_PASSWORD"])
    for name in APP_SERVICES:
        assert "FACEMINT_DATABASE_OWNER_URL" not in env[name]
        service = urlsplit(env[name]["FACEMINT_DATABASE_URL"])
        assert service.username != postgres_env["POSTGRES_USER"], f"{name} must not connect as the owner"
        assert service.password != postgres_env["POSTGRES_PASSWORD"]


def _roles_script(compose: dict[str, Any]) -> Path:
    """The SQL file mounted into the postgres image's init directory (run once, as POSTGRES_USER)."""
    mounts = [str(volume).split(":") for volume in services(compose)["postgres"].get("volumes", [])]
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
    service = urlsplit(facemint_environment(compose)["api"]["FACEMINT_DATABASE_URL"])
    group = facemint_environment(compose)["api"].get(
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
    service = urlsplit(facemint_environment(compose)["api"]["FACEMINT_DATABASE_URL"])
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


@pytest.mark.parametrize(
    ("service", "subcommand"),
    [("migrate", "migrate"), ("api", "serve"), ("worker-gpu", "worker"), ("worker-cpu", "worker")],
)
def test_commands_are_real_cli_commands_with_real_options(
    compose: dict[str, Any], service: str, subcommand: str
) -> None:
    assert_real_command(command(services(compose)[service]), subcommand)


def test_api_listens_on_all_interfaces_on_port_8000(compose: dict[str, Any]) -> None:
    context = assert_real_command(command(services(compose)["api"]), "serve")
    assert context.params["host"] == "0.0.0.0"
    assert context.params["port"] == 8000


def test_one_warm_worker_process_per_container(compose: dict[str, Any]) -> None:
    for name in WORKERS:
        context = assert_real_command(command(services(compose)[name]), "worker")
        assert context.params["concurrency"] == 1, name
        assert context.params["burst"] is False, name
        # Warm shutdown: the current job finishes on SIGTERM, so compose must wait longer than its default 10 s.
        assert services(compose)[name]["stop_grace_period"] == "60s", name


def test_start_order(compose: dict[str, Any]) -> None:
    found = services(compose)
    assert depends_on(found["migrate"])["postgres"]["condition"] == "service_healthy"
    assert depends_on(found["s3-bucket"])["seaweedfs"]["condition"] == "service_healthy"
    for name in APP_SERVICES:
        after = depends_on(found[name])
        assert after["migrate"]["condition"] == "service_completed_successfully", name
        assert after["s3-bucket"]["condition"] == "service_completed_successfully", name
        assert after["redis"]["condition"] == "service_healthy", name
    for name in ("migrate", "s3-bucket"):
        assert found[name]["restart"] == "no", f"{name} runs once"


def test_urls_point_at_the_compose_services(compose: dict[str, Any]) -> None:
    env = facemint_environment(compose)["api"]
    database = urlsplit(env["FACEMINT_DATABASE_URL"])
    assert database.scheme in ("postgresql", "postgres")
    assert database.hostname == "postgres"
    assert database.path.lstrip("/") == environment(services(compose)["postgres"])["POSTGRES_DB"]
    redis = urlsplit(env["FACEMINT_REDIS_URL"])
    assert (redis.scheme, redis.hostname) == ("redis", "redis")


def test_the_app_and_the_bucket_job_use_the_seaweedfs_service(compose: dict[str, Any]) -> None:
    """One S3 for all: the app's endpoint is the seaweedfs service's S3 gateway, its credentials are the ones the
    gateway takes as its admin's, and the bucket job creates the app's bucket there."""
    found = services(compose)
    seaweedfs = found["seaweedfs"]
    assert command(seaweedfs)[:2] == ["server", "-s3"]
    assert not any(arg.startswith("-s3.port=") for arg in command(seaweedfs))
    gateway = environment(seaweedfs)
    bucket_job = environment(found["s3-bucket"])
    for name in APP_SERVICES:
        env = environment(found[name])
        assert env["FACEMINT_STORAGE_BACKEND"] == "s3", name
        endpoint = urlsplit(env["FACEMINT_S3_ENDPOINT_URL"])
        assert (endpoint.hostname, endpoint.port) == ("seaweedfs", S3_GATEWAY_PORT), name
        for variable in S3_CREDENTIAL_VARIABLES:
            assert env[variable] == gateway[variable] == bucket_job[variable], (name, variable)
        for variable in ("FACEMINT_S3_BUCKET", "FACEMINT_S3_ENDPOINT_URL", "FACEMINT_S3_REGION"):
            assert env[variable] == bucket_job[variable], (name, variable)
        # Nothing shared on disk but the models: replicas and workers may run anywhere the network reaches.
        targets = {str(volume).split(":")[1] for volume in found[name].get("volumes", [])}
        assert targets <= {env["FACEMINT_MODELS_DIR"]}, (name, targets)


def test_the_bucket_job_runs_the_mounted_script(compose: dict[str, Any]) -> None:
    job = services(compose)["s3-bucket"]
    mounts = {target: ROOT / source for source, target, *_ in (str(v).split(":") for v in job["volumes"])}
    program, script = command(job)
    assert program == "python"
    assert mounts[script] == ROOT / "scripts" / "create_bucket.py"
    assert mounts[script].is_file()


def _run_bucket_script(
    compose: dict[str, Any], s3_server: S3Server, **overrides: str
) -> subprocess.CompletedProcess[str]:
    env = container_environment(environment(services(compose)["s3-bucket"]))
    env.update(
        FACEMINT_S3_ENDPOINT_URL=s3_server.endpoint_url,
        AWS_ACCESS_KEY_ID=s3_server.access_key,
        AWS_SECRET_ACCESS_KEY=s3_server.secret_key,
        PATH=os.environ.get("PATH", ""),
    )
    env.update(overrides)
    return subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "create_bucket.py")],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_the_bucket_script_creates_the_bucket_once(compose: dict[str, Any], s3_server: S3Server) -> None:
    """Against a real SeaweedFS: the first run creates the app's bucket, a second (a restart) leaves it be."""
    bucket = environment(services(compose)["s3-bucket"])["FACEMINT_S3_BUCKET"]
    first = _run_bucket_script(compose, s3_server)
    assert first.returncode == 0, first.stderr
    assert f"bucket {bucket}: created" in first.stderr
    second = _run_bucket_script(compose, s3_server)
    assert second.returncode == 0, second.stderr
    assert f"bucket {bucket}: already there" in second.stderr
    client = boto3.client(
        "s3",
        endpoint_url=s3_server.endpoint_url,
        region_name=s3_server.region,
        aws_access_key_id=s3_server.access_key,
        aws_secret_access_key=s3_server.secret_key,
    )
    client.head_bucket(Bucket=bucket)


def test_the_bucket_script_fails_with_wrong_credentials(compose: dict[str, Any], s3_server: S3Server) -> None:
    result = _run_bucket_script(compose, s3_server, FACEMINT_S3_BUCKET="facemint-denied", AWS_SECRET_ACCESS_KEY="x")
    assert result.returncode != 0
    assert "SignatureDoesNotMatch" in result.stderr or "AccessDenied" in result.stderr, result.stderr


def test_secrets_are_required_from_the_host_environment(compose: dict[str, Any]) -> None:
    for service in ("migrate", *APP_SERVICES):
        env = environment(services(compose)[service])
        for name in (*HOST_SECRETS, "FACEMINT_STORAGE_ENCRYPTION_KEYS"):
            required = REQUIRED_FROM_ENV.match(env.get(name, ""))
            assert required is not None, f"{service}: {name} must be `${{{name}:?...}}`"
            assert required.group("name") == name
        for name in S3_CREDENTIAL_VARIABLES:
            assert REQUIRED_FROM_ENV.match(env[name]), f"{service}: {name} must come from the host"


def _set_environment(monkeypatch: pytest.MonkeyPatch, env: dict[str, str]) -> None:
    for name, value in env.items():
        if name.upper().startswith(ENV_PREFIX):
            monkeypatch.setenv(name, value)


def test_prod_settings_are_accepted_with_the_secrets(compose: dict[str, Any], clean_env: pytest.MonkeyPatch) -> None:
    env = container_environment(environment(services(compose)["api"]))
    _set_environment(clean_env, env)
    settings = Settings()
    assert settings.env is Environment.prod
    assert settings.require_urls() == (env["FACEMINT_DATABASE_URL"], env["FACEMINT_REDIS_URL"])
    assert settings.jwt_signing_secret == TEST_SECRETS["FACEMINT_JWT_SECRET"]
    assert settings.api_key_pepper_bytes == TEST_SECRETS["FACEMINT_API_KEY_PEPPER"].encode()
    assert settings.metrics_token is not None
    assert settings.metrics_token.get_secret_value() == TEST_SECRETS["FACEMINT_METRICS_TOKEN"]
    assert (settings.storage_backend, settings.s3_bucket) == ("s3", "facemint")
    keyring = settings.storage_keyring()
    assert keyring is not None, "inputs and results are encrypted at rest"


@pytest.mark.parametrize(
    ("missing", "message"),
    [
        (frozenset({"FACEMINT_JWT_SECRET", "FACEMINT_API_KEY_PEPPER"}), "FACEMINT_JWT_SECRET"),
        (frozenset({"FACEMINT_STORAGE_ENCRYPTION_KEYS"}), "storage encryption key id .k1. names no configured key"),
    ],
)
def test_prod_settings_are_refused_without_the_secrets(
    compose: dict[str, Any], clean_env: pytest.MonkeyPatch, missing: frozenset[str], message: str
) -> None:
    env = container_environment(environment(services(compose)["api"]), without=missing)
    assert not missing & env.keys()
    _set_environment(clean_env, env)
    with pytest.raises(ValidationError, match=message):
        Settings()


def test_prod_settings_are_refused_with_the_dev_secrets(compose: dict[str, Any], clean_env: pytest.MonkeyPatch) -> None:
    _set_environment(clean_env, container_environment(environment(services(compose)["api"])))
    clean_env.setenv("FACEMINT_JWT_SECRET", DEV_JWT_SECRET)
    clean_env.setenv("FACEMINT_API_KEY_PEPPER", DEV_API_KEY_PEPPER)
    with pytest.raises(ValidationError):
        Settings()


def test_the_image_holds_what_facemint_reads_at_run_time(compose: dict[str, Any]) -> None:
    """`facemint migrate` reads alembic.ini and migrations/ next to the source tree; the app serves admin_ui/."""
    for service in ("migrate", "api", "worker-cpu", "s3-bucket"):
        assert services(compose)[service].get("build") == ".", f"{service} is built from the Dockerfile"
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
