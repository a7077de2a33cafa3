"""A throwaway PostgreSQL server from the local binaries (initdb/pg_ctl), for tests and benchmarks.

Real server, real socket: no mocks. Finds the binaries on PATH or under /usr/lib/postgresql.
"""

from __future__ import annotations

import getpass
import glob
import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def find_bin(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return candidates[-1] if candidates else None


def available() -> bool:
    return find_bin("initdb") is not None and find_bin("pg_ctl") is not None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _as_postgres_user() -> list[str]:
    # initdb refuses to run as root; run it as the `postgres` system user when we are root.
    if os.geteuid() == 0:
        return ["runuser", "-u", "postgres", "--"]
    return []


@contextmanager
def temporary_postgres() -> Iterator[str]:
    """Yields a SQLAlchemy URL of a fresh database; the cluster is removed afterwards."""
    initdb, pg_ctl = find_bin("initdb"), find_bin("pg_ctl")
    if not initdb or not pg_ctl:
        raise RuntimeError("PostgreSQL binaries (initdb, pg_ctl) not found; apt-get install postgresql")
    prefix = _as_postgres_user()
    root = Path(tempfile.mkdtemp(prefix="foretell-pg-"))
    if prefix:
        shutil.chown(root, "postgres")
    data, port = root / "data", _free_port()
    user = "postgres" if prefix else getpass.getuser()
    subprocess.run(
        [*prefix, initdb, "-D", str(data), "-U", user, "--auth=trust", "-E", "UTF8"], check=True, capture_output=True
    )
    opts = f"-c listen_addresses=127.0.0.1 -p {port} -k {root} -c fsync=off -c synchronous_commit=off"
    subprocess.run(
        [*prefix, pg_ctl, "-D", str(data), "-o", opts, "-l", str(root / "log"), "-w", "start"],
        check=True,
        capture_output=True,
    )
    try:
        yield f"postgresql+psycopg://{user}@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run([*prefix, pg_ctl, "-D", str(data), "-m", "immediate", "stop"], capture_output=True)
        shutil.rmtree(root, ignore_errors=True)
