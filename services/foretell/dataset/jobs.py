"""Runs import and export jobs in background threads and mirrors them into operations."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import IO, Any

from google.longrunning import operations_pb2
from google.rpc import code_pb2
from sqlalchemy.engine import Row

from foretell.core import metrics, tenancy
from foretell.core.errors import Cancelled, ForetellError, ResourceExhausted
from foretell.core.file_roots import Place
from foretell.core.leases import Leases
from foretell.core.logs import failure
from foretell.core.operations import OperationStore, error_status
from foretell.dataset import convert
from foretell.dataset.importer import Importer, export_csv
from foretell.dataset.rows import RowMapper
from foretell.dataset.store import DatasetStore

log = logging.getLogger("foretell.dataset.jobs")


LEASES = ("import", "export")  # core/leases.py kinds of the jobs here, named by the job


class DatasetJobs:
    def __init__(
        self,
        store: DatasetStore,
        operations: OperationStore,
        workers: int,
        max_violations: int,
        leases: Leases,
        max_queued_imports: int = 32,
    ) -> None:
        self._store = store
        self._ops = operations
        self._leases = leases
        self._importer = Importer(store, max_violations)
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix="dataset-job")
        # Imports accepted but not started: each holds its upload on disk, so their number is bounded.
        self._max_queued = max_queued_imports
        self._queued = 0
        self._queued_lock = threading.Lock()

    def recover(self) -> list[tuple[str, str]]:
        """Fails jobs a stopped server left unfinished and drops their staged rows: those no live process holds
        (core/leases.py), so a replica never fails another's running job. At start, then once per lease TTL.
        Returns (tenant, job) of the imports it failed."""
        failed: list[tuple[str, str]] = []
        for tenant, kind, name, operation in self._store.unfinished_jobs():
            status = error_status(code_pb2.ABORTED, "the server stopped during this job; run it again")
            with tenancy.acting_as(tenant):
                if self._leases.held(kind, name):
                    continue
                if kind == "import":
                    failed.append((tenant, name))
                    self._store.discard_all_staged(name)
                    self._store.update_import_job(name, state="FAILED", error=status.SerializeToString())
                else:
                    self._store.update_export_job(name, state="FAILED", error=status.SerializeToString())
            if operation:
                self._ops.fail(operation, status)
            log.warning("marked unfinished job failed", extra={"job": name})
        return failed

    def start_import(
        self,
        *,
        dataset: Row[Any],
        job_id: str,
        mapper: RowMapper,
        source: Callable[[], IO[bytes]],
        mode: str,
        source_uri: str,
        remove_file: Path | None,
        allow_empty: bool = False,
    ) -> operations_pb2.Operation:
        """Imports what `source()` opens; `remove_file` (a spooled upload) is deleted when the job ends."""
        job = f"{dataset.name}/importJobs/{job_id}"
        with self._queued_lock:
            if self._queued >= self._max_queued:
                raise ResourceExhausted(
                    f"{self._queued} imports are already waiting for an import worker; retry once some have "
                    "finished (FORETELL_MAX_QUEUED_IMPORTS)"
                )
            self._queued += 1
        try:
            with self._leases.for_new("import", job, "import job"):
                operation = self._ops.create(job, "import", dataset.dataset_group)
                self._store.create_import_job(job, dataset.name, source_uri, mode, operation.name)
        except BaseException:
            self._started()
            raise

        def work() -> None:
            self._started()
            self._store.update_import_job(job, state="RUNNING")
            try:
                outcome = self._importer.run(
                    job=job,
                    dataset_name=dataset.name,
                    mapper=mapper,
                    source=source,
                    mode=mode,
                    progress=lambda p, m, c: self._ops.report_progress(operation.name, p, m, c),
                    cancelled=lambda: self._ops.cancel_requested(operation.name),
                    allow_empty=allow_empty,
                )
                log.info("import done", extra={"job": job, "rows": outcome.rows})
                metrics.rows_imported(mapper.table, outcome.rows)
                self._ops.finish(operation.name, convert.import_job(self._store.get_import_job(job)))
            finally:
                if remove_file is not None:
                    remove_file.unlink(missing_ok=True)

        self._run(operation.name, work, lambda **v: self._store.update_import_job(job, **v), ("import", job))
        return self._ops.get(operation.name)

    def _started(self) -> None:
        with self._queued_lock:
            self._queued -= 1

    def start_export(
        self, *, dataset: Row[Any], job_id: str, mapper: RowMapper, destination: Place
    ) -> operations_pb2.Operation:
        job = f"{dataset.name}/exportJobs/{job_id}"
        with self._leases.for_new("export", job, "export job"):
            operation = self._ops.create(job, "export", dataset.dataset_group)
            self._store.create_export_job(job, dataset.name, destination.uri, operation.name)

        def work() -> None:
            self._store.update_export_job(job, state="RUNNING")
            rows = export_csv(
                self._store,
                dataset.name,
                mapper,
                destination,
                progress=lambda p, m, c: self._ops.report_progress(operation.name, p, m, c),
                cancelled=lambda: self._ops.cancel_requested(operation.name),
            )
            self._ops.finish(
                operation.name,
                convert.export_job(self._store.update_export_job(job, state="SUCCEEDED", rows_exported=rows)),
            )

        self._run(operation.name, work, lambda **v: self._store.update_export_job(job, **v), ("export", job))
        return self._ops.get(operation.name)

    def _run(self, operation: str, work: Callable[[], None], mark: Callable[..., Any], lease: tuple[str, str]) -> None:
        tenant = tenancy.current()  # the job outlives the call that started it

        def guarded() -> None:
            with tenancy.acting_as(tenant):
                try:
                    run_guarded()
                finally:
                    self._leases.release(*lease)

        def run_guarded() -> None:
            try:
                work()
            except Exception as exc:
                if isinstance(exc, ForetellError):
                    status = exc.to_status()
                else:
                    log.error("job failed", extra={"operation": operation, **failure(exc)})
                    status = error_status(code_pb2.INTERNAL, f"job failed: {type(exc).__name__}")
                state = "CANCELLED" if isinstance(exc, Cancelled) else "FAILED"
                mark(state=state, error=status.SerializeToString())
                self._ops.fail(operation, status)

        self._pool.submit(guarded)

    def shutdown(self, wait: bool = True) -> None:
        self._pool.shutdown(wait=wait, cancel_futures=not wait)
