"""PostgreSQL fixtures: one real server for the session, a fresh database per test."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from foretell.core.settings import Settings
from foretell.runtime import pgtemp


@pytest.fixture(scope="session")
def pg_server() -> Iterator[str]:
    if not pgtemp.available():
        if os.environ.get("CI"):
            pytest.fail("PostgreSQL binaries are missing in CI; .ci/run must install postgresql")
        pytest.skip("PostgreSQL binaries (initdb, pg_ctl) not installed; run .ci/run or apt-get install postgresql")
    with pgtemp.temporary_postgres() as url:
        yield url


@pytest.fixture
def pg_url(pg_server: str) -> Iterator[str]:
    name = f"t_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(pg_server, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.exec_driver_sql(f"CREATE DATABASE {name}")
    yield pg_server.rsplit("/", 1)[0] + f"/{name}"
    with admin.connect() as conn:
        conn.exec_driver_sql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
    admin.dispose()


@pytest.fixture
def settings(tmp_path: Path, pg_url: str) -> Settings:
    """Overrides the SQLite settings of tests/conftest.py: same tests, PostgreSQL underneath."""
    return Settings(port=0, data_dir=tmp_path / "data", database_url=pg_url, import_batch_rows=50)
