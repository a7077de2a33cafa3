"""Spooled ImportData uploads (`artifacts/uploads/`) and what a crash leaves of them.

A spooled file is deleted when its import ends; a server that dies first leaves it behind, and the restarted server's
`recover()` fails that import, so nothing will read the file again. Each file is named after its job (a digest of
tenant and job name: names may hold characters a file name should not), so the dataset service can tell at start
which files still belong to an unfinished import.
"""

from __future__ import annotations

import hashlib
import logging
import time
import uuid
from collections.abc import Iterable
from pathlib import Path

log = logging.getLogger("foretell.dataset")

# With several processes on one database (PostgreSQL), a file whose job does not exist yet may be an upload
# another process is spooling right now (it is written before its job row): it is an orphan only once unchanged
# for this long.
ORPHAN_AFTER_SECONDS = 3600.0


def job_key(tenant: str, job: str) -> str:
    return hashlib.sha256(f"{tenant}\0{job}".encode()).hexdigest()[:32]


def spool_path(directory: Path, tenant: str, job: str) -> Path:
    return directory / f"{job_key(tenant, job)}.{uuid.uuid4().hex}.csv"


def remove_orphans(
    directory: Path,
    *,
    unfinished: Iterable[tuple[str, str]],
    failed: Iterable[tuple[str, str]],
    single_writer: bool,
    now: float | None = None,
) -> int:
    """Deletes spooled uploads no running import will read; returns how many.

    `unfinished` and `failed` are (tenant, job) of imports still running and of those recovery just failed. With
    `single_writer` (SQLite under the data directory lock) no other process spools here, so every file of a job that
    is not unfinished is an orphan.
    """
    keep = {job_key(t, j) for t, j in unfinished}
    gone = {job_key(t, j) for t, j in failed}
    cutoff = (time.time() if now is None else now) - ORPHAN_AFTER_SECONDS
    removed = 0
    for path in directory.glob("*.csv"):
        key = path.name.split(".", 1)[0]
        if key in keep:
            continue
        try:
            if single_writer or key in gone or path.stat().st_mtime < cutoff:
                path.unlink()
                removed += 1
        except FileNotFoundError:  # its import ended meanwhile
            continue
    if removed:
        log.warning("removed uploads no import will read", extra={"count": removed, "directory": str(directory)})
    return removed
