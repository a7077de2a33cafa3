"""Shared fixtures: a real server on port 0 over a real SQLite file, real stubs.

tests/integration/conftest.py overrides `settings` to run the same tests on PostgreSQL.

Markers say what a test needs, so a developer can run the fast core alone
(`python3 -m pytest -m "not (postgres or s3 or clients or tooling or slow)"`); the README's test command runs
everything. `postgres` and `s3` are given here to every test that uses those servers' fixtures, so no test
can need one without saying so.

`@pytest.mark.databases("sqlite", "postgres")` on a test or module runs it once per database: its `settings` (and
so `stubs`) point at a real SQLite file or at a fresh database on a real PostgreSQL server.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from foretell.core.settings import Settings
from foretell.runtime import pgtemp

from support import Stubs, start_stubs

# Fixture -> the marker of what it starts (tests/integration/conftest.py).
_NEEDS = {"pg_server": "postgres", "endpoint": "s3"}


def pytest_configure(config: pytest.Config) -> None:
    """Under pytest-xdist, each test process (and the servers and workers it starts) gets its share of the cores
    for torch's and BLAS's thread pools: N processes each spinning a pool as wide as the machine made torch
    training several times slower than running the tests one after another."""
    processes = os.environ.get("PYTEST_XDIST_WORKER_COUNT")
    if processes:
        share = str(max(1, (os.cpu_count() or 1) // int(processes)))
        for variable in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
            os.environ.setdefault(variable, share)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        for fixture, marker in _NEEDS.items():
            if fixture in getattr(item, "fixturenames", ()):
                item.add_marker(marker)


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    marker = metafunc.definition.get_closest_marker("databases")
    if marker is not None and "database" in metafunc.fixturenames:
        kinds = [pytest.param(k, marks=[pytest.mark.postgres] if k == "postgres" else []) for k in marker.args]
        metafunc.parametrize("database", kinds)


@pytest.fixture
def database() -> str:
    return "sqlite"


@pytest.fixture
def settings(tmp_path: Path, database: str, request: pytest.FixtureRequest) -> Settings:
    url = request.getfixturevalue("pg_url") if database == "postgres" else ""
    return Settings(port=0, data_dir=tmp_path / "data", database_url=url)


@pytest.fixture(scope="session")
def pg_server() -> Iterator[str]:
    """One real PostgreSQL server per test process, started from the local binaries."""
    if not pgtemp.available():
        if os.environ.get("CI"):
            pytest.fail("PostgreSQL binaries are missing in CI; .ci/run must install postgresql")
        pytest.skip("PostgreSQL binaries (initdb, pg_ctl) not installed; run .ci/run or apt-get install postgresql")
    with pgtemp.temporary_postgres() as url:
        yield url


@pytest.fixture
def pg_url(pg_server: str) -> Iterator[str]:
    """A fresh database on that server for each test."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(pg_server, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.exec_driver_sql(f"CREATE DATABASE {name}")
    yield pg_server.rsplit("/", 1)[0] + f"/{name}"
    with admin.connect() as conn:
        conn.exec_driver_sql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
    admin.dispose()


@pytest.fixture
def stubs(settings: Settings) -> Iterator[Stubs]:
    s = start_stubs(settings)
    yield s
    s.channel.close()
    s.app.stop(None)
