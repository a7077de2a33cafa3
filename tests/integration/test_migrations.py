"""Alembic migrations against a real PostgreSQL: head equals create_all, round trips, the CLI, start-up policy."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from click.testing import CliRunner

from foretell.cli.main import cli
from foretell.core import migrations
from foretell.core.db import make_engine
from foretell.core.settings import Settings
from foretell.runtime.server import create_server

pytestmark = pytest.mark.postgres


@pytest.fixture
def engine(pg_url: str) -> Iterator[sa.Engine]:
    engine = make_engine(pg_url)
    yield engine
    engine.dispose()


def _schema(url: str) -> dict[str, Any]:
    """Everything create_all decides, as plain data: columns (type, nullability, default), keys, indexes."""
    engine = sa.create_engine(url)
    try:
        inspector = sa.inspect(engine)
        schema: dict[str, Any] = {}
        for table in sorted(set(inspector.get_table_names()) - {"alembic_version"}):
            schema[table] = {
                "columns": [
                    (c["name"], str(c["type"]), c["nullable"], c.get("default"), c.get("autoincrement"))
                    for c in inspector.get_columns(table)
                ],
                "pk": inspector.get_pk_constraint(table)["constrained_columns"],
                "indexes": sorted(
                    (i["name"], tuple(i["column_names"]), i["unique"]) for i in inspector.get_indexes(table)
                ),
                "unique": sorted(
                    (u["name"], tuple(u["column_names"])) for u in inspector.get_unique_constraints(table)
                ),
                "fks": inspector.get_foreign_keys(table),
            }
        return schema
    finally:
        engine.dispose()


def _differences(engine: sa.Engine) -> list[Any]:
    with engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"compare_type": True, "compare_server_default": True})
        return list(compare_metadata(context, migrations.target_metadata()))


def test_head_equals_create_all(pg_url: str, engine: sa.Engine) -> None:
    """Head and create_all, one after the other in the same (empty) database, give the same schema."""
    migrations.upgrade(pg_url)
    assert migrations.current(pg_url) == migrations.head()
    migrated = _schema(pg_url)
    assert set(migrated) == set(migrations.target_metadata().tables)
    migrations.downgrade(engine, "base")
    with engine.begin() as conn:
        conn.exec_driver_sql("DROP TABLE alembic_version")
    assert sa.inspect(engine).get_table_names() == []
    migrations.target_metadata().create_all(engine)
    assert migrated == _schema(pg_url)


def test_models_match_head(pg_url: str, engine: sa.Engine) -> None:
    """The CI guard: a model change without a migration fails here (write one with autogenerate)."""
    migrations.upgrade(engine)
    assert _differences(engine) == [], "the models differ from the migrations' head: add an Alembic revision"


def test_guard_sees_a_model_change(pg_url: str, engine: sa.Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    migrations.upgrade(engine)
    changed = migrations.target_metadata()
    changed.tables["schemas"].append_column(sa.Column("added_without_migration", sa.Text, nullable=True))
    monkeypatch.setattr(migrations, "target_metadata", lambda: changed)
    assert [d[0] for d in _differences(engine)] == ["add_column"]


def test_downgrade_to_base_leaves_no_tables(pg_url: str, engine: sa.Engine) -> None:
    migrations.upgrade(engine)
    migrations.downgrade(engine, "base")
    assert set(sa.inspect(engine).get_table_names()) <= {"alembic_version"}
    assert migrations.current(engine) is None
    migrations.upgrade(engine)  # and back up again
    assert migrations.current(engine) == migrations.head()


def test_create_all_database_is_adopted(pg_url: str, engine: sa.Engine) -> None:
    """A database made by create_all before migrations existed is stamped with the initial revision."""
    # The schema create_all made then is revision 0001's (later revisions changed the models).
    migrations.upgrade(engine, migrations.INITIAL_REVISION)
    with engine.begin() as conn:
        conn.execute(sa.text("DROP TABLE alembic_version"))
    with pytest.raises(migrations.SchemaNotCurrent, match="foretell db upgrade"):
        migrations.ensure_schema(engine)
    migrations.upgrade(engine)
    assert migrations.current(engine) == migrations.head()


def test_concurrent_upgrades_do_not_race(pg_url: str) -> None:
    errors: list[BaseException] = []

    def run() -> None:
        try:
            migrations.upgrade(pg_url)
        except BaseException as error:  # reported by the assertion below
            errors.append(error)

    threads = [threading.Thread(target=run) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert errors == []
    assert migrations.current(pg_url) == migrations.head()


def test_cli_upgrade_and_current(pg_url: str) -> None:
    runner = CliRunner()
    before = runner.invoke(cli, ["db", "current", "--database-url", pg_url])
    assert before.exit_code == 0, before.output
    assert "none" in before.output
    result = runner.invoke(cli, ["db", "upgrade", "--revision", "head"], env={"FORETELL_DATABASE_URL": pg_url})
    assert result.exit_code == 0, result.output
    assert migrations.head() in result.output
    after = runner.invoke(cli, ["db", "current"], env={"FORETELL_DATABASE_URL": pg_url})
    assert after.exit_code == 0, after.output
    assert f"{migrations.head()} (head)" in after.output


def test_server_start_policy(tmp_path: Path, pg_url: str, engine: sa.Engine) -> None:
    settings = Settings(port=0, data_dir=tmp_path / "data", database_url=pg_url)
    # An empty database is migrated at start ...
    app = create_server(settings)
    app.stop(0)
    assert migrations.current(pg_url) == migrations.head()
    # ... one with tables but not at head (here: made before migrations) refuses, naming the command to run.
    migrations.downgrade(engine, "base")
    migrations.target_metadata().tables["schemas"].create(engine)
    with pytest.raises(SystemExit, match="run `foretell db upgrade`"):
        create_server(settings)
