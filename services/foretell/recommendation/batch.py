"""Batch inference: JSON lines of users or items in, JSON lines of recommendations out.

Input lines are `{"userId": "u1"}` (recommendations), `{"itemId": "i1"}` (similar items) or
`{"userId": "u1", "itemList": ["i1", "i2"]}` (personalized ranking). Each output line is
`{"input": <the input>, "output": {"recommendedItems": [...], "scores": [...]}, "error": null}`,
or `"output": null` with an `"error"` message for a line that could not be answered; a bad line
never fails the job. Real-time events and exploration are not used offline. The output is
written to a temporary file next to the destination and renamed into place when complete.
The job stays PENDING while it runs (progress is in its operation), then SUCCEEDED, FAILED or
CANCELLED.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from google.longrunning import operations_pb2
from google.rpc import code_pb2

from foretell.core import tenancy
from foretell.core.artifact_store import Artifacts
from foretell.core.errors import Cancelled, ForetellError
from foretell.core.file_roots import Place
from foretell.core.leases import Leases
from foretell.core.logs import failure
from foretell.core.operations import OperationStore, error_status
from foretell.recommendation.campaigns import Campaigns, Resolved
from foretell.recommendation.engine import Engine, Scored, UnknownItem
from foretell.recommendation.filters import BoundFilter
from foretell.recommendation.store import RecommendationStore, to_batch_job

log = logging.getLogger("foretell.recommendation")

MAX_LINE_ITEMS = 500


@dataclass(frozen=True)
class BatchSpec:
    job_id: str
    version: Resolved
    # s3://bucket/key or file:///path
    input_uri: str
    output_uri: str
    # The local file in the caller's area behind each URI; None for s3:// and for the server's default output.
    input: Place | None
    output: Place | None
    num_results: int
    filter_name: str
    filter_values: dict[str, str]
    item_filter: BoundFilter | None


LEASE = "batch"  # core/leases.py kind of a batch inference job in progress


class BatchJobs:
    def __init__(
        self,
        store: RecommendationStore,
        operations: OperationStore,
        campaigns: Campaigns,
        artifacts: Artifacts,
        leases: Leases,
    ) -> None:
        self._store = store
        self._leases = leases
        self._artifacts = artifacts
        # Local copies of an s3:// input or output while a job runs.
        self._work = artifacts.local_dir("batch-inference", ".work")
        self._ops = operations
        self._campaigns = campaigns
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="batch-inference")

    def start(self, spec: BatchSpec) -> operations_pb2.Operation:
        name = f"batchInferenceJobs/{spec.job_id}"
        with self._leases.for_new(LEASE, name, "batch inference job"):
            self._create(name, spec)
        operation = self._ops.create(name, "batch-inference", spec.version.dataset_group)
        self._store.update_batch_job(name, operation=operation.name)
        self._pool.submit(tenancy.carry(self._guarded), name, operation.name, spec)
        return self._ops.get(operation.name)

    def _create(self, name: str, spec: BatchSpec) -> None:
        self._store.create_batch_job(
            {
                "name": name,
                "solution_version": spec.version.solution_version,
                "dataset_group": spec.version.dataset_group,
                "input_uri": spec.input_uri,
                "output_uri": spec.output_uri,
                "num_results": spec.num_results,
                "filter": spec.filter_name,
                "filter_values": spec.filter_values or None,
                "state": "PENDING",
            }
        )

    def _guarded(self, name: str, operation: str, spec: BatchSpec) -> None:
        try:
            self._guarded_run(name, operation, spec)
        finally:
            self._leases.release(LEASE, name)

    def _guarded_run(self, name: str, operation: str, spec: BatchSpec) -> None:
        try:
            lines = self._run(operation, spec)
            row = self._store.update_batch_job(name, state="SUCCEEDED", error=None)
            self._ops.finish(operation, to_batch_job(row))
            log.info("batch inference done", extra={"job": name, "lines": lines})
        except Exception as exc:
            if isinstance(exc, ForetellError):
                status = exc.to_status()
            else:
                log.error("batch inference failed", extra={"job": name, **failure(exc)})
                status = error_status(code_pb2.INTERNAL, f"batch inference failed: {type(exc).__name__}")
            state = "CANCELLED" if isinstance(exc, Cancelled) else "FAILED"
            self._store.update_batch_job(name, state=state, error=status.SerializeToString())
            self._ops.fail(operation, status)

    def _run(self, operation: str, spec: BatchSpec) -> int:
        self._ops.report_progress(operation, 1, f"loading {spec.version.solution_version}")
        engine = self._campaigns.engine_for(spec.version.artifact_uri)
        if spec.item_filter is not None:
            spec.item_filter.check_fields(engine.catalog, "batch_inference_job.filter")
        work = operation.removeprefix("operations/")  # unique: job ids are per tenant
        copies = [self._work / f"{work}.input.jsonl", self._work / f"{work}.output.jsonl"]
        try:
            if spec.input is None:
                download = self._artifacts.download_file(spec.input_uri, copies[0], "batch_inference_job.input_uri")
                source: Callable[[], IO[bytes]] = lambda: download.open("rb")  # noqa: E731
            else:
                source = spec.input.open_read
            lines = self._answer(operation, spec, engine, source, copies[1])
            # The output is written here first, then copied out: a caller's place only ever gets a whole file.
            if spec.output is not None:
                spec.output.deliver(copies[1])
            else:
                self._artifacts.upload_file(copies[1], spec.output_uri, "batch_inference_job.output_uri")
        finally:
            for copy in copies:
                copy.unlink(missing_ok=True)
        return lines

    def _answer(
        self, operation: str, spec: BatchSpec, engine: Engine, opened: Callable[[], IO[bytes]], output_path: Path
    ) -> int:
        output_path.parent.mkdir(parents=True, exist_ok=True)
        partial = output_path.with_name(output_path.name + ".partial")
        lines = 0
        last_report = time.monotonic()
        try:
            with opened() as source, partial.open("w", encoding="utf-8") as out:
                total = max(1, os.fstat(source.fileno()).st_size)
                for raw in source:
                    text = raw.decode("utf-8", errors="replace").strip()
                    if not text:
                        continue
                    out.write(json.dumps(answer_line(engine, text, spec.num_results, spec.item_filter)) + "\n")
                    lines += 1
                    if time.monotonic() - last_report > 0.5:
                        last_report = time.monotonic()
                        if self._ops.cancel_requested(operation):
                            raise Cancelled("the batch inference job was cancelled")
                        percent = 5 + 90 * source.tell() / total
                        self._ops.report_progress(operation, percent, f"{lines} lines", {"lines": float(lines)})
            os.replace(partial, output_path)
        finally:
            partial.unlink(missing_ok=True)
        return lines

    def recover(self) -> None:
        """Fails jobs whose process stopped (no live lease, core/leases.py): never another replica's running job.
        At start, then once per lease TTL."""
        aborted = error_status(code_pb2.ABORTED, "the server stopped during this job; run it again")
        for row in self._store.batch_jobs_in("PENDING"):
            with tenancy.acting_as(row.tenant):
                if self._leases.held(LEASE, row.name):
                    continue
                if row.operation and not self._ops.get(row.operation).done:
                    self._ops.fail(row.operation, aborted)
                self._store.update_batch_job(row.name, state="FAILED", error=aborted.SerializeToString())

    def shutdown(self, wait: bool) -> None:
        self._pool.shutdown(wait=wait, cancel_futures=True)


def answer_line(engine: Engine, text: str, n: int, item_filter: BoundFilter | None) -> dict[str, Any]:
    """One output record for one input line (errors are reported in the record, not raised)."""
    try:
        request = json.loads(text)
    except ValueError:
        return {"input": text, "output": None, "error": "the line is not valid JSON"}
    if not isinstance(request, dict):
        return {"input": request, "output": None, "error": "the line must be a JSON object"}
    user, item, item_list = request.get("userId"), request.get("itemId"), request.get("itemList")
    try:
        if item_list is not None:
            if not isinstance(item_list, list) or not 1 <= len(item_list) <= MAX_LINE_ITEMS:
                raise ValueError(f"itemList must be a list of 1 to {MAX_LINE_ITEMS} item ids")
            ranked = engine.rank(_text(user), list(dict.fromkeys(str(i) for i in item_list)), item_filter=item_filter)
            return _ok(request, ranked, "itemList")
        if user is not None:
            return _ok(request, engine.recommend(_text(user), n=n, item_filter=item_filter), "recommendedItems")
        if item is not None:
            return _ok(request, engine.similar(_text(item), n, item_filter=item_filter), "recommendedItems")
        raise ValueError('expected "userId", "itemId" or "userId" with "itemList"')
    except UnknownItem as exc:
        return {"input": request, "output": None, "error": f"item {exc.item_id!r} is not in the model"}
    except (ValueError, ForetellError) as exc:
        return {"input": request, "output": None, "error": str(exc)}


def _text(value: Any) -> str:
    if not isinstance(value, str | int) or isinstance(value, bool) or not str(value):
        raise ValueError("ids must be non-empty strings")
    return str(value)


def _ok(request: dict[str, Any], items: list[Scored], key: str) -> dict[str, Any]:
    return {
        "input": request,
        "output": {key: [item_id for item_id, _, _ in items], "scores": [score for _, score, _ in items]},
        "error": None,
    }
