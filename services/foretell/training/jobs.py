"""Runs training jobs: queue → prepare (dataset snapshot) → worker → result, all mirrored into the operation.

Concurrency is bounded by a thread pool: each job holds one slot from prepare to result, so at
most `workers` workers run at once and the rest wait QUEUED. Job rows are durable, so after a
restart `recover()` re-attaches to workers still running and reports the ones that died.

A sharded job (spec.json "shards": N, see `foretell.training.shards`) is one launcher handle for N
worker processes or pods: its progress is the mean over the shards' progress files, cancel and the
timeout stop every shard, the first failed shard's error fails the job, and once all have succeeded
the service merges their outputs into the artifact (see `_sharded_result` for why here).
"""

from __future__ import annotations

import json
import logging
import shutil
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from google.protobuf.message import Message
from google.rpc import code_pb2, status_pb2
from sqlalchemy.engine import Row

from foretell.core import metrics, tenancy
from foretell.core.errors import Cancelled, ForetellError
from foretell.core.leases import Leases
from foretell.core.logs import failure
from foretell.core.operations import OperationStore, error_status
from foretell.core.polling import intervals
from foretell.training import shards
from foretell.training.launcher import Launcher, WorkerStatus
from foretell.training.store import TrainingStore
from foretell.training.worker import WorkerError

log = logging.getLogger("foretell.training")

# Longest pause between two looks at a running worker (short jobs are looked at sooner: core.polling).
POLL_SECONDS = 0.2
# Share of the operation's progress spent preparing (the snapshot); the worker reports the rest.
PREPARE_SHARE = 5.0
_CODES = {name: value for name, value in code_pb2.Code.items()}


class JobKind(Protocol):
    """What differs between kinds of training job (solution version, predictor, forecast)."""

    def prepare(self, job: Row[Any], job_dir: Path, cancelled: Callable[[], bool]) -> None:
        """Writes job_dir/spec.json (taking the dataset snapshot first); raises ForetellError to fail."""
        ...

    def succeeded(self, job: Row[Any], job_dir: Path, result: dict[str, Any]) -> Message:
        """Records the worker's result; returns the operation's response."""
        ...

    def ended(self, job: Row[Any], state: str, error: status_pb2.Status | None) -> None:
        """Records a FAILED or CANCELLED end (and removes partial output)."""
        ...


@dataclass
class _Outcome:
    state: str  # SUCCEEDED, FAILED, CANCELLED
    error: status_pb2.Status | None = None
    result: dict[str, Any] | None = None


LEASE = "training"  # core/leases.py kind of a training job, named by its operation


class TrainingJobs:
    def __init__(
        self,
        store: TrainingStore,
        operations: OperationStore,
        launcher: Launcher,
        kinds: dict[str, JobKind],
        jobs_dir: Path,
        workers: int,
        timeout_seconds: float,
        leases: Leases,
    ) -> None:
        self._store = store
        self._leases = leases
        self._running: set[str] = set()  # operations whose job this process runs (or has queued)
        self._running_lock = threading.Lock()
        self._ops = operations
        self._launcher = launcher
        self._kinds = kinds
        self._jobs_dir = jobs_dir
        self._timeout = timeout_seconds
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="training-job")
        self._closing = threading.Event()

    def submit(self, operation: str, kind: str, target: str, request: dict[str, Any] | None = None) -> None:
        """Queues a job; `request` (JSON) is what `prepare` needs beyond the target's stored row."""
        job_dir = self._jobs_dir / operation.removeprefix("operations/")
        job_dir.mkdir(parents=True, exist_ok=True)
        if request is not None:
            (job_dir / "request.json").write_text(json.dumps(request))
        self._claim(operation)  # before the row exists: no other replica's sweep may resume it
        self._store.create_job(operation, kind, target, str(job_dir))
        self._ops.report_progress(operation, 0.0, "queued")
        self._pool.submit(self._guarded, operation, tenancy.current())

    def _claim(self, operation: str) -> bool:
        with self._running_lock:
            if operation in self._running or not self._leases.acquire(LEASE, operation):
                return False
            self._running.add(operation)
            return True

    def recover(self) -> None:
        """Resumes the jobs no live process runs (core/leases.py): a previous process's, or a dead replica's.
        At start, then once per lease TTL; a job another replica runs is left alone."""
        for job in self._store.unfinished_jobs():
            with tenancy.acting_as(job.tenant):
                if not self._claim(job.name):
                    continue
                if job.state == "PREPARING":
                    self._store.update_job(job.name, state="QUEUED")
            log.info("resuming training job", extra={"operation": job.name, "state": job.state})
            self._pool.submit(self._guarded, job.name, job.tenant)

    def close(self, wait: bool) -> None:
        """Stops the running workers and marks their jobs FAILED (ABORTED), so nothing is left RUNNING;
        queued jobs stay QUEUED and start after the next `recover()`."""
        self._closing.set()
        self._pool.shutdown(wait=True, cancel_futures=True)

    # ---- one job ---------------------------------------------------------------------

    def _guarded(self, operation: str, tenant: str) -> None:
        with tenancy.acting_as(tenant):  # the job's tenant: its target's names, snapshot and artifacts are its
            try:
                self._guarded_run(operation)
            finally:
                with self._running_lock:
                    self._running.discard(operation)
                self._leases.release(LEASE, operation)

    def _guarded_run(self, operation: str) -> None:
        job = self._store.get_job(operation)
        try:
            outcome = self._run(job)
        except Cancelled:
            outcome = _stopped() if self._closing.is_set() else _Outcome("CANCELLED")
        except ForetellError as exc:
            outcome = _Outcome("FAILED", exc.to_status())
        except Exception as exc:  # a bug must still end the job, never leave it RUNNING
            log.error("training job crashed", extra={"operation": operation, **failure(exc)})
            outcome = _Outcome("FAILED", error_status(code_pb2.INTERNAL, f"training job failed: {type(exc).__name__}"))
        self._finish(self._store.get_job(operation), outcome)

    def _run(self, job: Row[Any]) -> _Outcome:
        job_dir = Path(job.job_dir)
        kind = self._kinds[job.kind]
        if self._ops.cancel_requested(job.name):
            return _Outcome("CANCELLED")
        if self._closing.is_set():
            return _stopped()
        if job.state == "QUEUED":
            self._store.update_job(job.name, state="PREPARING")
            self._ops.report_progress(job.name, 0.0, "taking the dataset snapshot")
            kind.prepare(job, job_dir, lambda: self._ops.cancel_requested(job.name) or self._closing.is_set())
            if self._ops.cancel_requested(job.name):
                return _Outcome("CANCELLED")
            if self._closing.is_set():
                return _stopped()
            handle = self._launcher.start(job_dir)
            self._store.update_job(job.name, state="RUNNING", handle=handle, attempt=job.attempt + 1)
            self._ops.set_job(job.name, handle)
            self._ops.report_progress(job.name, PREPARE_SHARE, "worker started")
            job = self._store.get_job(job.name)
        return self._monitor(job, job_dir)

    def _monitor(self, job: Row[Any], job_dir: Path) -> _Outcome:
        n = shards.count_of(job_dir)
        progress = _Progress(job_dir, n)
        started = job.update_time.timestamp() if job.update_time else time.time()
        waits = intervals(POLL_SECONDS)
        while True:
            for percent, message, counters in progress.new_lines():
                share = PREPARE_SHARE + (100.0 - PREPARE_SHARE) * percent / 100.0
                self._ops.report_progress(job.name, min(share, 99.9), message, counters)
            status = self._launcher.status(job.handle, job_dir)
            if not status.running:
                if n == 1:
                    return _result(job_dir, status.exit_code, status.reason)
                return self._sharded_result(job, job_dir, n, status)
            if self._closing.is_set():
                self._launcher.stop(job.handle)
                return _stopped()
            if self._ops.cancel_requested(job.name):
                self._launcher.stop(job.handle)
                return _Outcome("CANCELLED")
            if time.time() - started > self._timeout:
                self._launcher.stop(job.handle)
                return _Outcome(
                    "FAILED",
                    error_status(code_pb2.DEADLINE_EXCEEDED, f"training ran longer than {self._timeout:.0f} s"),
                )
            time.sleep(next(waits))

    def _sharded_result(self, job: Row[Any], job_dir: Path, n: int, status: WorkerStatus) -> _Outcome:
        """The verdict of a sharded job: the first failed shard's error; else, once every shard succeeded,
        their merge.

        The merge runs here, in the training service, once the launcher says every shard has ended: it
        only concatenates per-series lines and adds up per-window sums (no fitting), so it is cheap; it
        runs exactly once, after all shards and only then (a pod cannot tell that it is the last one
        without trusting the shared volume to show other pods' files at once, which NFS does not
        promise); and a failed or cancelled shard never starts it. It is idempotent, so after a restart
        `recover()` simply merges again."""
        results = [shards.read_result(job_dir, i) for i in range(n)]
        for i, result in enumerate(results):
            if result is not None and not result.get("ok"):
                outcome = _verdict(result)
                assert outcome.error is not None
                outcome.error.message = f"shard {i} of {n}: {outcome.error.message}"
                return outcome
        missing = [i for i, result in enumerate(results) if result is None]
        if missing:
            # The launcher's reason names the shard that failed ("of shard 2 of 4 exited with code 137").
            failed = status.shard if status.shard is not None else missing[0]
            shard = shards.shard_dir(job_dir, failed)
            how = status.reason or f"of shard {failed} of {n} " + (
                f"exited with code {status.exit_code}" if status.exit_code is not None else "is gone"
            )
            tail = _log_tail(shard) or _log_tail(job_dir)
            return _Outcome("FAILED", error_status(code_pb2.INTERNAL, f"the training worker {how}{tail}"))
        self._ops.report_progress(job.name, 99.9, f"merging {n} shards")
        try:
            output = shards.merge(job_dir)
        except WorkerError as exc:
            return _Outcome("FAILED", error_status(_CODES.get(exc.code, code_pb2.INTERNAL), str(exc)))
        result = {"ok": True, **output}
        shards.write_json(job_dir / "result.json", result)  # what recover() or a reader of the job dir expects
        return _Outcome("SUCCEEDED", result=result)

    def _finish(self, job: Row[Any], outcome: _Outcome) -> None:
        kind = self._kinds[job.kind]
        try:
            if outcome.state == "SUCCEEDED":
                assert outcome.result is not None
                response = kind.succeeded(job, Path(job.job_dir), outcome.result)
                # Tidied before the operation says done, so whoever sees it done sees the job directory as it stays.
                shutil.rmtree(Path(job.job_dir) / "scratch", ignore_errors=True)
                shards.remove_outputs(Path(job.job_dir))
                self._ops.finish(job.name, response)
            else:
                kind.ended(job, outcome.state, outcome.error)
                error = outcome.error or error_status(code_pb2.CANCELLED, "cancelled by request")
                self._ops.fail(job.name, error)
        except Exception as exc:
            log.error("could not record the end of a training job", extra={"operation": job.name, **failure(exc)})
            kind.ended(job, "FAILED", error_status(code_pb2.INTERNAL, "could not store the trained model"))
            self._ops.fail(job.name, error_status(code_pb2.INTERNAL, "could not store the trained model"))
        self._store.update_job(job.name, state="DONE")
        log.info(
            "training job ended",
            extra={"operation": job.name, "target": job.target, "state": outcome.state},
        )
        metrics.training_job_ended(job.kind, outcome.state, job.create_time)


def _stopped() -> _Outcome:
    return _Outcome(
        "FAILED", error_status(code_pb2.ABORTED, "the training service stopped while the job ran; re-run it")
    )


def _result(job_dir: Path, exit_code: int | None, reason: str | None = None) -> _Outcome:
    """The worker's verdict from result.json, or a FAILED that says how the worker died."""
    try:
        result = json.loads((job_dir / "result.json").read_text())
    except (OSError, ValueError):
        how = reason or (
            f"exited with code {exit_code}" if exit_code is not None else "is gone (it died or was killed)"
        )
        return _Outcome("FAILED", error_status(code_pb2.INTERNAL, f"the training worker {how}{_log_tail(job_dir)}"))
    return _verdict(result)


def _verdict(result: dict[str, Any]) -> _Outcome:
    if result.get("ok"):
        return _Outcome("SUCCEEDED", result=result)
    error = result.get("error") or {}
    code = _CODES.get(str(error.get("code")), code_pb2.INTERNAL)
    return _Outcome("FAILED", error_status(code, str(error.get("message") or "training failed")))


def _log_tail(job_dir: Path, lines: int = 5) -> str:
    try:
        text = (job_dir / "worker.log").read_text(errors="replace").strip().splitlines()[-lines:]
    except OSError:
        return ""
    return (": " + " | ".join(text))[:2000] if text else ""


class _ProgressReader:
    """Reads complete lines appended to the worker's progress file since the last call."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._offset = 0

    def new_lines(self) -> list[tuple[float, str, dict[str, float]]]:
        try:
            with self._path.open("rb") as f:
                f.seek(self._offset)
                data = f.read()
        except FileNotFoundError:
            return []
        end = data.rfind(b"\n") + 1
        self._offset += end
        out = []
        for line in data[:end].splitlines():
            try:
                entry = json.loads(line)
                counters = {k: float(v) for k, v in (entry.get("counters") or {}).items()}
                out.append((float(entry["percent"]), str(entry.get("message", "")), counters))
            except (ValueError, KeyError, TypeError):
                continue
        return out


class _Progress:
    """The worker's progress lines; for a sharded job, the shards' lines as one progress: the mean of their
    percentages (the shards hold equal shares of the series), naming the shard that spoke."""

    def __init__(self, job_dir: Path, n: int) -> None:
        self._n = n
        if n == 1:
            self._readers = [_ProgressReader(job_dir / "progress.jsonl")]
        else:
            self._readers = [_ProgressReader(shards.shard_dir(job_dir, i) / "progress.jsonl") for i in range(n)]
        self._percents = [0.0] * n

    def new_lines(self) -> list[tuple[float, str, dict[str, float]]]:
        if self._n == 1:
            return self._readers[0].new_lines()
        out = []
        for i, reader in enumerate(self._readers):
            for percent, message, counters in reader.new_lines():
                self._percents[i] = percent
                done = sum(p >= 100.0 for p in self._percents)
                out.append(
                    (
                        sum(self._percents) / self._n,
                        f"shard {i} of {self._n}: {message}",
                        {**counters, "shards": float(self._n), "shards_done": float(done)},
                    )
                )
        return out
