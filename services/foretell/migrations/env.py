"""Alembic environment: every service's tables, the URL from Foretell's Settings.

foretell.core.migrations passes an open connection (config.attributes["connection"]) so that the
caller's advisory lock covers the migration; `alembic` run by hand falls back to FORETELL_DATABASE_URL.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection

from foretell.core.migrations import target_metadata

config = context.config


def _run(connection: Connection) -> None:
    context.configure(connection=connection, target_metadata=target_metadata(), compare_type=True)
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    from foretell.core.db import make_engine
    from foretell.core.settings import Settings

    engine = make_engine(Settings().database_url)
    try:
        with engine.connect() as conn:
            _run(conn)
    finally:
        engine.dispose()


if context.is_offline_mode():
    raise SystemExit("offline (--sql) migrations are not supported: run `foretell db upgrade` against the database")
run_migrations_online()
