"""Sharded predictor jobs through TrainingJobs and the LocalLauncher: real worker processes, one per shard, on a
snapshot written here (no dataset service). Progress over all shards, the merge, a failed or killed shard, cancel."""

from __future__ import annotations

import json
import os
import shutil
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from google.protobuf import empty_pb2
from google.protobuf.message import Message
from google.rpc import status_pb2
from test_predictor_shards import numbers_of, predictor_spec, write_snapshot

from foretell.core.db import make_engine
from foretell.core.leases import Leases
from foretell.core.operations import OperationStore
from foretell.training import launcher as launcher_module
from foretell.training import predictor_worker, shards
from foretell.training.jobs import TrainingJobs
from foretell.training.launcher import LocalLauncher
from foretell.training.store import TrainingStore

TARGET = "predictors/p"


class ShardedPredictorKind:
    """The JobKind "predictor" minus the dataset service and the database row: the snapshot is written here and
    spec.json asks for `shards` shards, as PredictorJobs writes it for a large snapshot."""

    def __init__(self, root: Path, shards: int, items: int = 23, **spec: Any) -> None:
        self.snapshot = write_snapshot(root / "snapshot", items=items)
        self.artifact = root / "artifacts" / "predictors" / "p"
        self.spec = predictor_spec(self.snapshot, self.artifact, shards=shards, **spec)
        self.result: dict[str, Any] | None = None
        self.ended_with: list[tuple[str, status_pb2.Status | None]] = []

    def prepare(self, job: Any, job_dir: Path, cancelled: Any) -> None:
        (job_dir / "spec.json").write_text(json.dumps(self.spec))

    def succeeded(self, job: Any, job_dir: Path, result: dict[str, Any]) -> Message:
        self.result = result
        return empty_pb2.Empty()

    def ended(self, job: Any, state: str, error: status_pb2.Status | None) -> None:
        shutil.rmtree(self.artifact, ignore_errors=True)  # what PredictorJobs.ended does
        self.ended_with.append((state, error))


class RecordingOperationStore(OperationStore):
    """The real store, also keeping every progress report: the stored metadata holds only the latest, and a
    test polling it misses the reports that came in one burst (shard 0's lines are read just before shard 1's)."""

    def __init__(self, engine: Any) -> None:
        super().__init__(engine)
        self.reports: list[tuple[float, str, dict[str, float]]] = []

    def report_progress(
        self, name: str, percent: float, message: str = "", counters: dict[str, float] | None = None
    ) -> None:
        self.reports.append((percent, message, dict(counters or {})))
        super().report_progress(name, percent, message, counters)


class Harness:
    def __init__(self, root: Path, kind: ShardedPredictorKind, launcher: LocalLauncher) -> None:
        engine = make_engine(f"sqlite:///{root / 'foretell.db'}")
        self.ops = RecordingOperationStore(engine)
        self.kind = kind
        self.launcher = launcher
        jobs_dir = root / "artifacts" / "jobs"
        self.jobs = TrainingJobs(
            TrainingStore(engine), self.ops, launcher, {"predictor": kind}, jobs_dir, 1, 300, Leases(engine)
        )
        self.op = self.ops.create(TARGET, "train")
        self.job_dir = root / "artifacts" / "jobs" / self.op.name.removeprefix("operations/")

    def submit(self) -> None:
        self.jobs.submit(self.op.name, "predictor", TARGET)

    def wait_until(self, condition: Any, timeout: float = 240) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            assert time.monotonic() < deadline, f"timed out; progress so far: {self.ops.reports[-3:]}"
            time.sleep(0.05)

    def run(self) -> Any:
        self.submit()
        self.wait_until(lambda: self.ops.get(self.op.name).done)
        return self.ops.get(self.op.name)


@pytest.fixture
def harness(tmp_path: Path) -> Iterator[Any]:
    made: list[Harness] = []

    def make(kind: ShardedPredictorKind, max_parallel: int = 2) -> Harness:
        h = Harness(tmp_path, kind, LocalLauncher(stop_grace_seconds=5, max_parallel_shards=max_parallel))
        made.append(h)
        return h

    yield make
    for h in made:
        h.jobs.close(wait=True)


@pytest.mark.slow
def test_shards_run_as_processes_report_progress_and_merge_into_the_unsharded_predictor(
    harness: Any, tmp_path: Path
) -> None:
    kind = ShardedPredictorKind(tmp_path, shards=3)
    h = harness(kind, max_parallel=2)
    done = h.run()
    assert not done.HasField("error"), done.error
    assert kind.result is not None and kind.result["ok"] and kind.result["series_count"] == 23

    # Progress over all shards: each shard named, percentages that only grow, then the merge.
    messages = [message for _, message, _ in h.ops.reports]
    assert {m.split(":")[0] for m in messages if m.startswith("shard ")} == {
        "shard 0 of 3",
        "shard 1 of 3",
        "shard 2 of 3",
    }
    percents = [p for p, message, _ in h.ops.reports if message.startswith("shard ")]
    assert percents == sorted(percents) and 5 < percents[-1] < 100
    assert any(c.get("shards_done") == 3 and c.get("shards") == 3 for _, _, c in h.ops.reports)

    # Each shard wrote its own progress, log and result; the job's result.json is the merged one.
    for i in range(3):
        shard = shards.shard_dir(h.job_dir, i)
        assert json.loads((shard / "result.json").read_text())["ok"]
        assert (shard / "progress.jsonl").read_text() and (shard / "worker.log").exists()
        assert not (shard / shards.OUTPUT).exists(), "the shards' outputs go once the job succeeded"
    assert json.loads((h.job_dir / "result.json").read_text()) == kind.result

    # The unsharded predictor on the same snapshot: the same artifact and the same figures.
    whole = predictor_worker.train_predictor_job(
        predictor_spec(kind.snapshot, tmp_path / "whole"), lambda *a, **k: None
    )
    assert (kind.artifact / "item_accuracy.jsonl").read_bytes() == (
        tmp_path / "whole" / "item_accuracy.jsonl"
    ).read_bytes()
    chosen = [json.loads((d / "predictor.json").read_text())["chosen"] for d in (kind.artifact, tmp_path / "whole")]
    assert chosen[0] == chosen[1]
    assert numbers_of(kind.result["accuracy"]) == pytest.approx(numbers_of(whole["accuracy"]), rel=1e-12, abs=1e-12)


def test_a_failing_shard_fails_the_job_with_its_error_and_leaves_no_artifact(harness: Any, tmp_path: Path) -> None:
    kind = ShardedPredictorKind(tmp_path, shards=3)
    h = harness(kind)
    # Shard 1 cannot stage its output: a file stands where its staging directory goes.
    staging = shards.shard_dir(h.job_dir, 1) / (shards.OUTPUT + ".partial")
    staging.parent.mkdir(parents=True)
    staging.write_text("in the way")
    done = h.run()
    assert done.error.message.startswith("shard 1 of 3: FileExistsError"), done.error.message
    assert [state for state, _ in kind.ended_with] == ["FAILED"]
    assert not kind.artifact.exists() and not (h.job_dir / "result.json").exists()


def test_a_killed_shard_fails_the_job_naming_it_and_the_others_are_stopped(harness: Any, tmp_path: Path) -> None:
    kind = ShardedPredictorKind(tmp_path, shards=2, items=60, candidates=["arima", "ets"])
    h = harness(kind, max_parallel=2)
    h.submit()
    h.wait_until(lambda: len(launcher_module._running_shards(h.job_dir)) == 2)
    running = launcher_module._running_shards(h.job_dir)
    os.killpg(running[1], signal.SIGKILL)
    h.wait_until(lambda: h.ops.get(h.op.name).done)
    done = h.ops.get(h.op.name)
    assert done.error.message.startswith("the training worker of shard 1 of 2 exited with code -9"), done.error.message
    assert not launcher_module._running_shards(h.job_dir) and not kind.artifact.exists()


def test_cancel_stops_every_shard(harness: Any, tmp_path: Path) -> None:
    kind = ShardedPredictorKind(tmp_path, shards=3, items=60, candidates=["arima", "ets"])
    h = harness(kind, max_parallel=2)
    h.submit()
    h.wait_until(lambda: len(launcher_module._running_shards(h.job_dir)) == 2)
    h.ops.request_cancel(h.op.name)
    h.wait_until(lambda: h.ops.get(h.op.name).done, timeout=30)
    assert h.ops.get(h.op.name).error.code == 1  # CANCELLED
    assert not launcher_module._running_shards(h.job_dir)
    assert not (shards.shard_dir(h.job_dir, 2) / "worker.log").exists(), "the third shard never started"
    assert [state for state, _ in kind.ended_with] == ["CANCELLED"] and not kind.artifact.exists()


@pytest.mark.slow
def test_after_a_restart_the_launcher_adopts_running_shards_and_starts_the_rest(tmp_path: Path) -> None:
    kind = ShardedPredictorKind(tmp_path, shards=3, items=30, candidates=["naive", "ets"])
    job_dir = tmp_path / "job"
    job_dir.mkdir()
    kind.prepare(None, job_dir, None)
    before = LocalLauncher(max_parallel_shards=1)
    handle = before.start(job_dir)
    deadline = time.monotonic() + 60
    while 0 not in launcher_module._running_shards(job_dir):
        assert time.monotonic() < deadline, "shard 0 never started"
        time.sleep(0.05)
    # A new server's launcher knows nothing of the handle: it follows shard 0 and runs shards 1 and 2 itself.
    after = LocalLauncher(max_parallel_shards=1)
    deadline = time.monotonic() + 240
    while (status := after.status(handle, job_dir)).running:
        assert time.monotonic() < deadline, "the adopted job never ended"
        assert len(launcher_module._running_shards(job_dir)) <= 1, "still one shard at a time"
        time.sleep(0.05)
    assert status.exit_code == 0
    assert all((shards.read_result(job_dir, i) or {}).get("ok") for i in range(3))
    before.stop(handle)  # reaps the old launcher's ended child (a real restart has no old launcher left)
    assert shards.merge(job_dir)["series_count"] == 30
