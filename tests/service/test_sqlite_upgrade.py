"""An embedded data directory made by an older Foretell is upgraded in place at start (SQLite has one writer),
and a new one is stamped with the head revision, so a later upgrade starts from the right place."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest
import sqlalchemy as sa
from google.longrunning import operations_pb2

from foretell.core import migrations
from foretell.core.settings import Settings

from support import start_stubs

# A warning of SQLAlchemy's during an upgrade may be a future release's error: fail on it now.
pytestmark = pytest.mark.filterwarnings("error::sqlalchemy.exc.SAWarning")


def test_an_older_sqlite_file_is_upgraded_at_start_and_keeps_its_rows(tmp_path: Path) -> None:
    settings = Settings(port=0, data_dir=tmp_path / "data")
    settings.data_dir.mkdir()
    migrations.upgrade(settings.database_url, migrations.INITIAL_REVISION)  # what the previous release made
    engine = sa.create_engine(settings.database_url)
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                "INSERT INTO operations (name, target, verb, done, cancel_requested, metadata, create_time) "
                "VALUES ('operations/old', 'datasetGroups/shop/datasets/d/importJobs/j', 'import', 1, 0, x'', :t)"
            ),
            {"t": datetime.now(UTC)},
        )
    stubs = start_stubs(settings)
    try:
        assert migrations.current(engine) == migrations.head()
        with engine.connect() as conn:
            group = conn.execute(sa.text("SELECT dataset_group FROM operations WHERE name = 'operations/old'")).scalar()
        assert group == "datasetGroups/shop"  # filled from the resource the operation names
        listed = stubs.operations.ListOperations(operations_pb2.ListOperationsRequest(), timeout=5).operations
        assert [o.name for o in listed] == ["operations/old"]
    finally:
        stubs.channel.close()
        stubs.app.stop(None)
        engine.dispose()


def test_a_new_sqlite_file_is_stamped_with_head_and_upgrades_as_a_no_op(tmp_path: Path) -> None:
    settings = Settings(port=0, data_dir=tmp_path / "data")
    stubs = start_stubs(settings)
    stubs.channel.close()
    stubs.app.stop(None)
    assert migrations.current(settings.database_url) == migrations.head()
    migrations.upgrade(settings.database_url)  # nothing to do, nothing fails
    assert migrations.current(settings.database_url) == migrations.head()
