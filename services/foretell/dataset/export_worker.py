"""A large export's work in a process of its own: `python -m foretell.dataset.export_worker` reads its spec
(JSON) on stdin, writes the CSV and prints its outcome (JSON) on stdout.

Why: writing a dataset as CSV is pure-Python work (2.5 s of CPU for 70,000 interaction rows), and in the
serving process every second of it holds the GIL that the RPCs need. A training job's snapshot is such an
export: in the load test it was most of what a job cost serving. In a process of its own, at a training
worker's priority, it takes idle CPU only. It has what the job thread had: the database (an engine of its
own) and the export job's operation, through which it reports progress and learns of a cancel.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from typing import Any

from google.rpc import code_pb2, status_pb2
from sqlalchemy.engine import make_url

from foretell.core import tenancy
from foretell.core.db import make_engine
from foretell.core.errors import Cancelled, ForetellError
from foretell.core.file_roots import Place
from foretell.core.operations import OperationStore, error_status
from foretell.core.priority import lower_priority
from foretell.dataset import convert
from foretell.dataset.importer import export_csv
from foretell.dataset.rows import RowMapper
from foretell.dataset.store import DatasetStore

# Below this many rows an export takes less CPU than starting the process would (about 1 s of imports).
PROCESS_ROWS = 20_000


class ExportFailed(ForetellError):
    """The export process's own error, passed on as it reported it."""

    def __init__(self, status: status_pb2.Status) -> None:
        super().__init__(status.message)
        self.status = status

    def to_status(self) -> status_pb2.Status:
        return self.status


def shared_with_other_processes(database_url: str) -> bool:
    """Whether another process opening `database_url` sees the same database: not SQLite in memory."""
    url = make_url(database_url)
    return not (url.get_backend_name() == "sqlite" and url.database in (None, "", ":memory:"))


class ExportProcesses:
    """Starts export processes and ends them when the dataset service stops without waiting."""

    def __init__(self) -> None:
        self._running: set[subprocess.Popen[str]] = set()
        self._lock = threading.Lock()

    def run(self, database_url: str, dataset: str, operation: str, destination: Place) -> int:
        """Exports `dataset` to `destination` in a child process; the rows written, or the child's error raised."""
        spec = {
            "database_url": database_url,
            "tenant": tenancy.current(),
            "dataset": dataset,
            "operation": operation,
            "destination": destination.to_json(),
        }
        child = subprocess.Popen(
            [sys.executable, "-m", "foretell.dataset.export_worker"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        with self._lock:
            self._running.add(child)
        try:
            # The URL may hold a password: it goes on stdin, never on the command line.
            out, err = child.communicate(json.dumps(spec))
        finally:
            with self._lock:
                self._running.discard(child)
        try:
            outcome = json.loads(out.strip().splitlines()[-1])
        except (ValueError, IndexError):
            tail = err.strip().splitlines()[-1:] or ["no output"]
            raise ExportFailed(
                error_status(code_pb2.INTERNAL, f"the export process exited with code {child.returncode}: {tail[0]}")
            ) from None
        if "rows" in outcome:
            return int(outcome["rows"])
        status = status_pb2.Status(code=int(outcome["code"]), message=str(outcome["message"]))
        if status.code == code_pb2.CANCELLED:
            raise Cancelled(status.message)
        raise ExportFailed(status)

    def stop(self) -> None:
        with self._lock:
            running = list(self._running)
        for child in running:
            child.kill()


def export_reporting(
    store: DatasetStore,
    operations: OperationStore,
    dataset: str,
    mapper: RowMapper,
    destination: Place,
    operation: str,
) -> int:
    """export_csv with its progress and cancel going through the export's operation, in a job thread or here."""
    return export_csv(
        store,
        dataset,
        mapper,
        destination,
        progress=lambda p, m, c: operations.report_progress(operation, p, m, c),
        cancelled=lambda: operations.cancel_requested(operation),
    )


def run(spec: dict[str, Any]) -> int:
    engine = make_engine(spec["database_url"])
    try:
        with tenancy.acting_as(str(spec["tenant"])):
            store = DatasetStore(engine)
            dataset = store.get_dataset(spec["dataset"])
            return export_reporting(
                store,
                OperationStore(engine),
                dataset.name,
                convert.mapper_of(dataset),
                Place.from_json(spec["destination"]),
                spec["operation"],
            )
    finally:
        engine.dispose()


def main() -> int:
    lower_priority()
    spec = json.load(sys.stdin)
    try:
        rows = run(spec)
    except ForetellError as exc:
        status = exc.to_status()
        print(json.dumps({"code": status.code, "message": status.message}))
        return 1
    print(json.dumps({"rows": rows}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
