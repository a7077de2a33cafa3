"""S3 fixtures: a real S3-compatible server (moto's) per module, a fresh bucket per test.

PostgreSQL's fixtures (pg_server, pg_url) are in tests/conftest.py."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from moto.server import ThreadedMotoServer


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
