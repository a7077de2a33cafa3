"""One server per service on an embedded (SQLite) database: an exclusive lock held while the server runs.

At start each service recovers what a previous run left unfinished (dataset fails unfinished imports, training
re-attaches to or fails its jobs, recommendation aborts deployments). That is right only when no live process runs
the same service on the same database: a second `foretell serve` on one data directory once failed a running
import that the first server then committed, half of it. With SQLite there is no other server to coordinate with,
so a process takes `flock(LOCK_EX | LOCK_NB)` on `{database's directory}/.foretell-{service}.lock` per service it
runs; a second one refuses to start. Services run apart (`python -m foretell.dataset`, `... training`) lock
different files, so that documented setup keeps working. PostgreSQL needs no lock here.

flock belongs to the open file, which Python does not pass to child processes (PEP 446), so a training worker
that outlives a crashed server does not keep its lock; the kernel drops the lock when the process dies.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterable
from pathlib import Path

from sqlalchemy.engine import make_url

# Services that recover jobs at start; forecast-query keeps no state of its own.
LOCKED_SERVICES = ("dataset", "training", "recommendation")


class DataDirInUse(RuntimeError):
    """Another live process runs one of these services on this data directory."""


class DataDirLock:
    """Exclusive locks of the chosen services on one directory; `release` (idempotent) lets them go."""

    def __init__(self, directory: Path, services: Iterable[str]) -> None:
        self.directory = directory
        self._fds: list[int] = []
        try:
            for service in services:
                if service in LOCKED_SERVICES:
                    self._fds.append(_lock(directory, service))
        except BaseException:
            self.release()
            raise

    def release(self) -> None:
        while self._fds:
            os.close(self._fds.pop())  # closing the only descriptor releases its flock


def lock_for(database_url: str, services: Iterable[str]) -> DataDirLock | None:
    """The locks an embedded SQLite database needs (None for PostgreSQL or an in-memory database).

    Raises DataDirInUse naming the directory and the other process.
    """
    url = make_url(database_url)
    if url.get_backend_name() != "sqlite" or not url.database or url.database == ":memory:":
        return None
    directory = Path(url.database).resolve().parent
    directory.mkdir(parents=True, exist_ok=True)
    return DataDirLock(directory, services)


def _lock(directory: Path, service: str) -> int:
    path = directory / f".foretell-{service}.lock"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)  # not inheritable (PEP 446)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        raise DataDirInUse(
            f"another Foretell server uses data directory {directory} (pid {holder}) for the {service} service"
        ) from None
    except BaseException:
        os.close(fd)
        raise
    # Who holds it, for the message a second server prints.
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd
