"""Schema migrations (Alembic, environment in foretell.migrations) and the start-up schema policy.

SQLite (embedded, one writer) is brought to head at start: a new file gets the stores' `create_all` and is stamped
head; an older file is upgraded in place (one made before migrations existed counts as the initial revision). On
PostgreSQL `ensure_schema` runs at start: an empty database is migrated to head, a database at head is used as is,
anything else refuses to start ("run `foretell db upgrade`"), so changing existing data stays a deliberate step.
Both the start-up check and `upgrade` hold a PostgreSQL advisory lock, so replicas starting together do not race.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, Engine, MetaData, inspect, text

from foretell.core.db import make_engine

# pg_advisory_lock key shared by every Foretell process on a database ("foretell" in ASCII).
LOCK_KEY = 0x666F726574656C6C
# The revision whose schema is what `create_all` made before migrations existed: such a database is
# stamped with it, then upgraded.
INITIAL_REVISION = "0001"


class SchemaNotCurrent(RuntimeError):
    """The database is not at the revision this code expects."""


def target_metadata() -> MetaData:
    """Every service's tables in one MetaData: what migrations must produce."""
    # Imported here: the stores import foretell.core, so a module-level import would be circular.
    from foretell.core import idempotency, leases, operations, pins, server_secrets
    from foretell.dataset import parts as dataset_parts
    from foretell.dataset import store as dataset_store
    from foretell.recommendation import store as recommendation_store
    from foretell.training import store as training_store

    combined = MetaData()
    for metadata in (
        operations.metadata,
        idempotency.metadata,
        server_secrets.metadata,
        leases.metadata,
        pins.metadata,
        dataset_store.metadata,
        dataset_parts.metadata,
        training_store.metadata,
        recommendation_store.metadata,
    ):
        for table in metadata.tables.values():
            table.to_metadata(combined)
    return combined


def alembic_config(connection: Connection | None = None) -> Config:
    """A Config from the installed package (no alembic.ini): works from a wheel as from the source tree."""
    import foretell.migrations

    config = Config()
    config.set_main_option("script_location", str(Path(foretell.migrations.__file__).parent))
    if connection is not None:
        config.attributes["connection"] = connection
    return config


def head() -> str:
    revision = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert revision is not None, "foretell.migrations has no revisions"
    return revision


def current(engine_or_url: Engine | str) -> str | None:
    """The database's revision; None when it was never migrated."""
    with _engine(engine_or_url) as engine, engine.connect() as conn:
        return _current(conn)


def upgrade(engine_or_url: Engine | str, revision: str = "head") -> None:
    """Migrate to `revision` under the advisory lock; a pre-migration database is adopted first."""
    with _engine(engine_or_url) as engine, _locked(engine) as conn:
        _upgrade(conn, revision)


def downgrade(engine_or_url: Engine | str, revision: str) -> None:
    with _engine(engine_or_url) as engine, _locked(engine) as conn:
        command.downgrade(alembic_config(conn), revision)
        conn.commit()


def ensure_schema(engine: Engine) -> None:
    """The start-up policy (see the module docstring); raises SchemaNotCurrent with what to run."""
    if engine.dialect.name == "sqlite":
        _ensure_sqlite(engine)
        return
    with _locked(engine) as conn:
        found, wanted = _current(conn), head()
        if found == wanted:
            return
        if found is None and not _foretell_tables(conn):
            _upgrade(conn, "head")
            return
        where = f"at revision {found}" if found else "created before migrations"
        raise SchemaNotCurrent(
            f"the database is {where}, this code needs revision {wanted}: run `foretell db upgrade` "
            "(with the same FORETELL_DATABASE_URL), then start again"
        )


def _ensure_sqlite(engine: Engine) -> None:
    with engine.connect() as conn:
        found, wanted = _current(conn), head()
        if found == wanted:
            return
        if found is None and (not _foretell_tables(conn) or _has_head_columns(conn)):
            # A new file (the stores' create_all makes head's tables), or one create_all made with this code: say
            # so, so that a later upgrade starts there.
            # Idempotent: the services of one data directory, started apart at once, may both get here.
            conn.execute(
                text("CREATE TABLE IF NOT EXISTS alembic_version (version_num VARCHAR(32) NOT NULL PRIMARY KEY)")
            )
            conn.execute(
                text("INSERT INTO alembic_version SELECT :v WHERE NOT EXISTS (SELECT 1 FROM alembic_version)"),
                {"v": wanted},
            )
            conn.commit()
            return
        _upgrade(conn, "head")


def _has_head_columns(conn: Connection) -> bool:
    """Whether every table that exists has every column of this code's models."""
    inspector = inspect(conn)
    present = set(inspector.get_table_names())
    complete = all(
        {c.name for c in table.columns} <= {c["name"] for c in inspector.get_columns(name)}
        for name, table in target_metadata().tables.items()
        if name in present
    )
    conn.rollback()
    return complete


def _upgrade(conn: Connection, revision: str) -> None:
    config = alembic_config(conn)
    if _current(conn) is None and _foretell_tables(conn):
        # Tables made by create_all before migrations existed match the initial revision exactly.
        command.stamp(config, INITIAL_REVISION)
        conn.commit()
    command.upgrade(config, revision)
    conn.commit()


def _current(conn: Connection) -> str | None:
    revision = MigrationContext.configure(conn).get_current_revision()
    # Reading autobegins a transaction; end it so that Alembic starts (and commits) its own.
    conn.rollback()
    return revision


def _foretell_tables(conn: Connection) -> set[str]:
    found = set(inspect(conn).get_table_names()) & set(target_metadata().tables)
    conn.rollback()
    return found


@contextmanager
def _locked(engine: Engine) -> Iterator[Connection]:
    """A connection holding the session-level migration lock (PostgreSQL; SQLite has one writer anyway)."""
    with engine.connect() as conn:
        if engine.dialect.name != "postgresql":
            yield conn
            return
        conn.execute(text("SELECT pg_advisory_lock(:key)"), {"key": LOCK_KEY})
        conn.commit()
        try:
            yield conn
        finally:
            conn.rollback()
            conn.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": LOCK_KEY})
            conn.commit()


@contextmanager
def _engine(engine_or_url: Engine | str) -> Iterator[Engine]:
    if isinstance(engine_or_url, Engine):
        yield engine_or_url
        return
    engine = make_engine(engine_or_url)
    try:
        yield engine
    finally:
        engine.dispose()
