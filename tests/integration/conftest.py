"""PostgreSQL fixtures: one real server for the session, a fresh database per test."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
import sqlalchemy as sa
from moto.server import ThreadedMotoServer

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


@pytest.fixture(scope="module")
def endpoint() -> Iterator[str]:
    """A real S3-compatible server: moto's standalone server on a free local port (no network)."""
    with pytest.MonkeyPatch.context() as env:
        # Dummy credentials for boto3's chain; nothing leaves this machine.
        for name, value in {
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1",
        }.items():
            env.setenv(name, value)
        for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL"):
            env.delenv(name, raising=False)
        server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        server.start()
        host, port = server.get_host_and_port()
        try:
            yield f"http://{host}:{port}"
        finally:
            server.stop()


@pytest.fixture
def raw(endpoint: str) -> Any:
    """A plain boto3 client on the same server, to look behind the store's back."""
    return boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")


@pytest.fixture
def bucket(raw: Any) -> str:
    name = f"art-{uuid.uuid4().hex[:12]}"
    raw.create_bucket(Bucket=name)
    return name
