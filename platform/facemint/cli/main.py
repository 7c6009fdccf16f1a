"""`facemint` command line."""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import ipaddress
import json
import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NoReturn

import click
from pydantic import ValidationError
from sqlalchemy.orm import Session

from facemint import log_setup
from facemint.cli import backup_commands, engine_commands, finance_commands, ledger_commands, storage_commands
from facemint.config import Environment, Settings, get_settings


def _settings(**overrides: object) -> Settings:
    """The settings from the environment (and `overrides`), or one clear line and exit 1 when they are invalid."""
    get_settings.cache_clear()
    try:
        return Settings(**overrides) if overrides else get_settings()  # type: ignore[arg-type]
    except ValidationError as exc:
        # e.g. FACEMINT_ENV=prod with a default secret: one clear line, not a traceback.
        problems = "; ".join(str(e.get("msg", e)) for e in exc.errors())
        click.echo(f"error: invalid settings: {problems}", err=True)
        sys.exit(1)


@contextmanager
def _database(settings: Settings) -> Iterator[str]:
    """The URL the service connects with: the configured database, or the embedded one under the data dir (migrated
    by its owner first, then used as the service's own role) when none is configured."""
    if settings.database_url:
        yield settings.database_url
        return
    from facemint import embedded, migrate

    postgres = embedded.start_postgres(settings.data_dir, app_role=settings.database_app_role)
    try:
        # A fresh data dir gets its schema before anything reads it.
        migrate.upgrade(postgres.owner_url, app_role=settings.database_app_role, app_login=embedded.APP_LOGIN)
        yield postgres.app_url
    finally:
        postgres.cleanup()


def _migrate(settings: Settings, *, owner_url: str | None = None) -> None:
    """Migrate as the owner (`owner_url`, else the configured one) and grant the application role what the service
    needs; when the service logs in as a role of its own, that role must be in the group. One line on failure."""
    from sqlalchemy import make_url

    from facemint import migrate

    owner_url = owner_url or settings.migration_database_url
    assert owner_url is not None
    assert settings.database_url is not None
    login = make_url(settings.database_url).username
    if login == make_url(owner_url).username:
        login = None  # one role for both (no FACEMINT_DATABASE_OWNER_URL): nothing to check
    try:
        migrate.upgrade(owner_url, app_role=settings.database_app_role, app_login=login)
    except migrate.RoleSetupError as exc:
        _fail(exc)


class AccessPathOnly(logging.Filter):
    """uvicorn's access line without the query string: query parameters are the client's data (a batch's reason,
    a search by email), not the server's to keep."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        # uvicorn logs '%s - "%s %s HTTP/%s" %d' with (client, method, path with query, version, status).
        if isinstance(args, tuple) and len(args) == 5 and isinstance(args[2], str):
            record.args = (args[0], args[1], args[2].split("?", 1)[0], args[3], args[4])
        return True


def uvicorn_log_config(log_format: log_setup.LogFormat = "text") -> dict[str, Any]:
    """uvicorn's own logging set-up, its access lines filtered by `AccessPathOnly`; JSON lines when asked."""
    from uvicorn.config import LOGGING_CONFIG

    config = copy.deepcopy(LOGGING_CONFIG)
    config.setdefault("filters", {})["path_only"] = {"()": f"{__name__}.AccessPathOnly"}
    config["loggers"]["uvicorn.access"]["filters"] = ["path_only"]
    return log_setup.uvicorn_config(config, log_format)


def _is_loopback(host: str) -> bool:
    if host.strip("[]").lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:  # a host name (or "" for every interface): it may resolve anywhere
        return False


def _refuse_builtin_secrets_beyond_loopback(settings: Settings, host: str) -> None:
    """The built-in secrets are published in the source: anyone who can reach the API could mint tokens with them."""
    if settings.uses_builtin_secrets and not _is_loopback(host):
        _fail(
            f"refusing to listen on {host} with the built-in development secrets: set FACEMINT_JWT_SECRET and "
            "FACEMINT_API_KEY_PEPPER (32+ characters), or listen on 127.0.0.1"
        )


@contextmanager
def _session(database_url: str) -> Iterator[Session]:
    from facemint.db import make_engine, make_sessionmaker, unit_of_work

    engine = make_engine(database_url, pool_size=1)
    try:
        with unit_of_work(make_sessionmaker(engine)) as session:
            yield session
    finally:
        engine.dispose()


@click.group()
def cli() -> None:
    """Facemint: token-metered face-swap platform."""


@cli.command()
@click.option("--data-dir", type=click.Path(path_type=Path), default=None, help="default: ./.facemint")
@click.option("--host", default=None, help="default: 127.0.0.1")
@click.option("--port", type=int, default=None, help="default: 8000")
@click.option("--no-demo", is_flag=True, help="do not seed the demo tenant")
def up(data_dir: Path | None, host: str | None, port: int | None, no_demo: bool) -> None:
    """Start everything: embedded Postgres/Redis when no URLs are set, migrations, demo data, the API."""
    import uvicorn

    from facemint import demo, embedded
    from facemint.app import create_app

    # `up` is the local, explicit development mode: the built-in secrets (unless set), open /docs and /metrics.
    settings = _settings(env=Environment.dev)
    data_dir = data_dir or settings.data_dir
    host = host or settings.host
    port = port or settings.port
    _refuse_builtin_secrets_beyond_loopback(settings, host)
    data_dir.mkdir(parents=True, exist_ok=True)
    started: list[str] = []
    postgres = redis_server = None
    database_url, redis_url = settings.database_url, settings.redis_url
    owner_url = settings.migration_database_url
    if not database_url:
        postgres = embedded.start_postgres(data_dir, app_role=settings.database_app_role)
        database_url, owner_url = postgres.app_url, postgres.owner_url
        started.append(f"embedded Postgres  {database_url}")
    if not redis_url:
        redis_url, redis_server = embedded.start_redis(data_dir)
        started.append(f"embedded Redis     {redis_url}")
    try:
        api_url = f"http://{host}:{port}"
        settings = settings.model_copy(
            update={"database_url": database_url, "redis_url": redis_url, "data_dir": data_dir, "api_url": api_url}
        )
        _migrate(settings, owner_url=owner_url)
        click.echo("Facemint is starting (development mode).")
        for line in started or ["using the configured Postgres and Redis"]:
            click.echo(f"  {line}")
        click.echo(f"  data dir           {data_dir.resolve()}")
        click.echo("  migrations         up to date")
        click.echo(f"  engine models      {_ensure_models(settings)}")
        if not no_demo:
            with _session(database_url) as session:
                seeded = demo.seed(session, settings=settings, data_dir=data_dir)
            click.echo(demo.describe(seeded, api_url=api_url))
        worker = _start_worker(settings)
        click.echo(f"  worker             pid {worker.pid} (engine warm, sweeper, webhooks)")
        click.echo(f"\nAPI on {api_url} (docs at {api_url}/docs). Ctrl-C stops everything started here.")
        try:
            uvicorn.run(
                create_app(settings),
                host=host,
                port=port,
                log_level="info",
                log_config=uvicorn_log_config(settings.log_format),
            )
        finally:
            worker.terminate()
            try:
                worker.wait(timeout=15)
            except subprocess.TimeoutExpired:
                worker.kill()
    finally:
        if redis_server is not None:
            embedded.stop_redis(redis_server)
        if postgres is not None:
            postgres.cleanup()
        if started:
            click.echo("stopped: " + ", ".join(s.split()[1] for s in started))


def _start_worker(settings: Settings) -> subprocess.Popen[bytes]:
    """The worker as the service's role, in `settings.env` (dev under `up`); it never needs the owner's URL."""
    env = {
        **{name: value for name, value in os.environ.items() if name != "FACEMINT_DATABASE_OWNER_URL"},
        "FACEMINT_ENV": settings.env.value,
        "FACEMINT_DATABASE_URL": settings.database_url or "",
        "FACEMINT_REDIS_URL": settings.redis_url or "",
        "FACEMINT_DATA_DIR": str(settings.data_dir),
        "FACEMINT_LOG_FORMAT": settings.log_format,
    }
    return subprocess.Popen([sys.executable, "-m", "facemint.cli.main", "worker"], env=env)


def _ensure_models(settings: Settings) -> str:
    """Real models when they are there; otherwise demo models (generated once), and say so."""
    from inference.models import REAL_MODELS, verify_models, write_demo_models

    models_dir = settings.resolved_models_dir
    results = verify_models(REAL_MODELS, models_dir)
    if all(r.ok for r in results):
        return f"real models in {models_dir}"
    if not any(r.present and not r.is_demo for r in results):
        write_demo_models(models_dir)
        return f"demo models in {models_dir} (no real models found: results are placeholders)"
    broken = ", ".join(r.model.file for r in results if not r.ok)
    return f"INCOMPLETE real models in {models_dir} ({broken}); run `facemint models fetch`"


@cli.command()
@click.option("--host", default=None)
@click.option("--port", type=int, default=None)
@click.option("--workers", type=int, default=1, show_default=True)
def serve(host: str | None, port: int | None, workers: int) -> None:
    """Serve the API on configured Postgres and Redis (FACEMINT_DATABASE_URL, FACEMINT_REDIS_URL)."""
    import uvicorn

    settings = _settings()
    try:
        settings.require_urls()
    except RuntimeError as exc:
        _fail(exc)
    host = host or settings.host
    _refuse_builtin_secrets_beyond_loopback(settings, host)
    uvicorn.run(
        "facemint.app:create_app",
        factory=True,
        host=host,
        port=port or settings.port,
        workers=workers,
        log_config=uvicorn_log_config(settings.log_format),
    )


@cli.command()
@click.option("--queues", "queues", multiple=True, help="repeat for several; default: FACEMINT_QUEUE_NAME (swaps)")
@click.option("--concurrency", type=click.IntRange(1, 64), default=1, show_default=True, help="worker processes")
@click.option("--burst", is_flag=True, help="exit once the queues are empty (tests, one-off drains)")
def worker(queues: tuple[str, ...], concurrency: int, burst: bool) -> None:
    """Run swap workers: the engine loaded once per process and kept warm; each also sweeps and sends webhooks."""
    from facemint.worker import runner

    settings = _settings()
    try:
        settings.require_urls()
    except RuntimeError as exc:
        _fail(exc)
    log_setup.configure(settings.log_format)
    # httpx logs every request's URL at INFO: a webhook URL may carry its receiver's token in its path or query.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    if concurrency > 1:
        argv = [arg for q in queues for arg in ("--queues", q)] + (["--burst"] if burst else [])
        runner.supervise(argv, concurrency)
        return
    runner.run_worker(settings, queues=list(queues) or [settings.queue_name], burst=burst)


@cli.command()
def migrate() -> None:
    """Apply the database migrations (alembic upgrade head) as the schema's owner (FACEMINT_DATABASE_OWNER_URL,
    else FACEMINT_DATABASE_URL) and grant the application role (FACEMINT_DATABASE_APP_ROLE) what the service needs."""
    settings = _settings()
    if settings.database_url:
        _migrate(settings)
    else:
        with _database(settings):  # the embedded database is migrated as it starts
            pass
    click.echo("migrations applied", err=True)


@cli.group()
def admin() -> None:
    """Administration from the command line."""


@admin.command("bootstrap")
@click.option("--email", required=True)
@click.option("--password", required=True, help="at least 8 characters")
def admin_bootstrap(email: str, password: str) -> None:
    """Create or update a platform admin (idempotent)."""
    from facemint.users import service as user_service

    if len(password) < 8:
        raise click.BadParameter("at least 8 characters", param_hint="--password")
    settings = _settings()
    with _database(settings) as url, _session(url) as session:
        try:
            user, created = user_service.bootstrap_admin(session, email=email, password=password)
        except Exception as exc:
            _fail(exc)
    click.echo(f"platform admin {user.email} (id {user.id}) {'created' if created else 'updated'}", err=True)


@admin.command("create-key")
@click.option("--email", required=True)
@click.option("--scope", "scopes", multiple=True, required=True, help="repeat for several scopes")
@click.option("--name", default="cli", show_default=True)
def admin_create_key(email: str, scopes: tuple[str, ...], name: str) -> None:
    """Issue an API key; prints only the key on stdout."""
    from facemint.api_keys import service as key_service
    from facemint.api_keys.schemas import ApiKeyCreate
    from facemint.auth.scopes import Scope
    from facemint.users import service as user_service

    try:
        parsed = [Scope(s) for s in scopes]
    except ValueError as exc:
        raise click.BadParameter(f"{exc}; known scopes: {', '.join(s.value for s in Scope)}") from exc
    settings = _settings()
    with _database(settings) as url, _session(url) as session:
        user = user_service.get_by_email(session, email=email)
        if user is None:
            _fail(f"no user {email}")
        try:
            _, plaintext = key_service.create(
                session,
                context=None,
                settings=settings,
                data=ApiKeyCreate(user_id=user.id, name=name, scopes=parsed),
            )
        except Exception as exc:
            _fail(exc)
    click.echo(plaintext)


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="print the report as JSON")
def reconcile(as_json: bool) -> None:
    """Prove the books balance; exit code 0 only when they do."""
    from facemint.reports import service as reports

    settings = _settings()
    from facemint.db import make_engine, make_sessionmaker, snapshot_session, unit_of_work

    with _database(settings) as url:
        engine = make_engine(url, pool_size=1)
        try:
            with snapshot_session(engine) as session:
                report = reports.reconcile_all(session)
            # Recorded like the console's and the API's runs: the dashboard shows the last one.
            with unit_of_work(make_sessionmaker(engine)) as session:
                reports.record_run(session, report=report, requested_by="cli")
        finally:
            engine.dispose()
    if as_json:
        click.echo(
            json.dumps(
                {
                    "balanced": report.balanced,
                    "checks": report.checks_run,
                    "totals": report.totals,
                    # Discrepancy is a slots dataclass: it has no __dict__.
                    "discrepancies": [dataclasses.asdict(d) for d in report.discrepancies],
                },
                default=str,
            )
        )
    else:
        click.echo(
            f"{len(report.checks_run)} checks; totals: " + ", ".join(f"{k}={v}" for k, v in report.totals.items())
        )
        for d in report.discrepancies:
            click.echo(f"DISCREPANCY {d.check}: {d.description}; ids {d.ids[:20]} details {d.details[:20]}")
        click.echo("the books balance" if report.balanced else f"{len(report.discrepancies)} check(s) failed")
    sys.exit(0 if report.balanced else 1)


@cli.command()
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--mode", type=click.Choice(["atomic", "partial"]), required=True)
@click.option("--dry-run", is_flag=True)
@click.option("--reason", required=True)
@click.option("--idempotency-key", default=None, help="default: derived from the file's content and options")
@click.option("--tenant-id", type=int, default=None, help="staff: every row must belong to this tenant")
def recharge(
    file: Path, mode: str, dry_run: bool, reason: str, idempotency_key: str | None, tenant_id: int | None
) -> None:
    """Apply a recharge CSV through the API (FACEMINT_API_URL, FACEMINT_API_KEY). Safe to run twice.

    Exit codes: 0 every row applied (with --dry-run: every row would apply); 3 some rows failed, the others
    applied (with --dry-run: would apply); 4 held for four-eyes approval, nothing applied yet (run the same
    command again once it is approved: it then reports the applied batch); 2 the API refused the request (any
    4xx), nothing applied; 1 anything else (unreachable API, a 5xx, a missing FACEMINT_API_KEY)."""
    import httpx

    api_url = os.environ.get("FACEMINT_API_URL") or _settings().api_url
    api_key = os.environ.get("FACEMINT_API_KEY")
    if not api_key:
        _fail("set FACEMINT_API_KEY")
    content = file.read_bytes()
    key = (
        idempotency_key
        or "csv-"
        + hashlib.sha256(b"\x00".join([content, mode.encode(), reason.encode(), str(tenant_id).encode()])).hexdigest()[
            :40
        ]
    )
    total = len(content)

    def body() -> Iterator[bytes]:
        chunk = 256 * 1024
        for start in range(0, total, chunk):
            yield content[start : start + chunk]
            if total > 1024 * 1024:
                click.echo(f"\r  uploaded {min(start + chunk, total) * 100 // total:3d}%", nl=False, err=True)
        if total > 1024 * 1024:
            click.echo("  waiting for the server...", err=True)

    params: dict[str, str] = {"mode": mode, "dry_run": str(dry_run).lower(), "reason": reason}
    if tenant_id is not None:
        params["tenant_id"] = str(tenant_id)
    try:
        response = httpx.post(
            f"{api_url.rstrip('/')}/admin/v1/recharges/batch",
            params=params,
            content=body(),
            headers={
                "Authorization": f"Bearer {api_key}",
                "Idempotency-Key": key,
                "Content-Type": "text/csv",
                "Content-Length": str(total),
            },
            timeout=httpx.Timeout(300.0, connect=10.0),
        )
    except httpx.HTTPError as exc:
        _fail(f"could not reach {api_url}: {exc}")
    try:
        result = response.json()
    except ValueError:
        _fail(f"unexpected response {response.status_code}")
    failed = result.get("failed", [])
    if response.status_code >= 400:
        click.echo(f"refused ({response.status_code} {result.get('code')}): {result.get('detail')}", err=True)
        for f in failed[:50]:
            click.echo(f"  row {f['row']}: {f['code']} {f['detail']}", err=True)
        if len(failed) > 50:
            click.echo(f"  ... and {len(failed) - 50} more", err=True)
        sys.exit(2 if response.status_code < 500 else 1)
    if response.status_code == 202:
        # Held for approval: the body is the approval, not a batch result.
        click.echo(
            f"held for approval {result.get('id')} ({result.get('status')}): {result.get('total_amount')} tokens in "
            f"{result.get('row_count')} rows wait for a second operator; nothing is applied until then. Run this "
            f"command again (idempotency key {key}) to see the outcome.",
            err=True,
        )
        sys.exit(RECHARGE_HELD_EXIT)
    replayed = response.headers.get("Idempotent-Replayed") == "true"
    verb = "would apply" if dry_run else ("already applied" if replayed else "applied")
    click.echo(
        f"batch {result.get('batch_id')}: {verb} {result['applied']} of {result['rows']} rows, "
        f"{result['total_amount']} tokens; {len(failed)} failed (idempotency key {key})"
    )
    for f in failed[:50]:
        click.echo(f"  row {f['row']}: {f['code']} {f['detail']}")
    sys.exit(3 if failed else 0)


RECHARGE_HELD_EXIT = 4


def _fail(message: object) -> NoReturn:
    click.echo(f"error: {message}", err=True)
    sys.exit(1)


engine_commands.register(cli, _settings)
ledger_commands.register(cli, _settings)
finance_commands.register(cli, _settings)
backup_commands.register(cli, _settings)
storage_commands.register(cli, _settings)

if __name__ == "__main__":
    cli()
