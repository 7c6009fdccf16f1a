"""Alembic environment: the URL comes from the caller (facemint.migrate) or, for a bare `alembic` command, from
FACEMINT_DATABASE_OWNER_URL (else FACEMINT_DATABASE_URL): migrations run as the schema's owner. Only `facemint
migrate` also grants the service's role its privileges afterwards."""

from __future__ import annotations

import os
from logging.config import fileConfig

from alembic import context
from sqlalchemy import create_engine, pool

from facemint.db import sqlalchemy_url
from facemint.orm import Base

config = context.config
if config.config_file_name is not None and config.attributes.get("configure_logger", True):
    fileConfig(config.config_file_name, disable_existing_loggers=False)

target_metadata = Base.metadata


def _url() -> str:
    url = (
        config.attributes.get("database_url")
        or os.environ.get("FACEMINT_DATABASE_OWNER_URL")
        or os.environ.get("FACEMINT_DATABASE_URL")
    )
    if not url:
        raise RuntimeError("set FACEMINT_DATABASE_OWNER_URL (or run `facemint migrate`)")
    return sqlalchemy_url(url)


def run_migrations_offline() -> None:
    context.configure(url=_url(), target_metadata=target_metadata, literal_binds=True, compare_type=True)
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        context.configure(connection=connection, target_metadata=target_metadata, compare_type=True)
        with context.begin_transaction():
            context.run_migrations()
        return
    # hide_parameters: a failed statement's error never carries bound values (see facemint.db.make_engine).
    engine = create_engine(_url(), poolclass=pool.NullPool, hide_parameters=True)
    with engine.connect() as connection:
        context.configure(connection=connection, target_metadata=target_metadata, compare_type=True)
        with context.begin_transaction():
            context.run_migrations()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
