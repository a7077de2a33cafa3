"""TrainingService over a real server: solutions, versions trained by real worker processes, metrics,
cancellation, dead workers and restarts."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import grpc
from google.longrunning import operations_pb2

from foretell.core.artifacts import path_of
from foretell.core.db import make_engine
from foretell.core.operations import OperationStore
from foretell.core.settings import Settings
from foretell.training.store import TrainingStore
from foretell.v1 import common_pb2, training_pb2
from foretell.v1 import training_service_pb2 as api

from errors import expect_error
from support import Stubs, interactions_csv, make_recommendation_group, start_stubs, upload

INVALID = grpc.StatusCode.INVALID_ARGUMENT
PRECONDITION = grpc.StatusCode.FAILED_PRECONDITION
# Hyper-parameters that keep a worker busy for minutes: for cancel / kill / restart tests.
SLOW = {"epochs": "500"}


def _group_with_data(stubs: Stubs, group_id: str = "shop", rows: int = 1500) -> str:
    group = make_recommendation_group(stubs, group_id)
    done = stubs.wait(upload(stubs, group.interactions, interactions_csv(rows, users=40, items=120)))
    assert not done.HasField("error"), done.error
    return group.name


def _solution(stubs: Stubs, group: str, recipe: str, solution_id: str = "s", **params: str) -> training_pb2.Solution:
    return stubs.training.CreateSolution(
        api.CreateSolutionRequest(
            solution_id=solution_id,
            solution=training_pb2.Solution(dataset_group=group, recipe=recipe, hyper_parameters=params),
        ),
        timeout=10,
    )


def _meta(op: operations_pb2.Operation) -> common_pb2.OperationMetadata:
    meta = common_pb2.OperationMetadata()
    op.metadata.Unpack(meta)
    return meta


def _get(stubs: Stubs, name: str) -> operations_pb2.Operation:
    return stubs.operations.GetOperation(operations_pb2.GetOperationRequest(name=name), timeout=5)


def _wait_running(stubs: Stubs, op: operations_pb2.Operation, timeout: float = 60) -> operations_pb2.Operation:
    deadline = time.monotonic() + timeout
    while not _meta(op).job:
        assert time.monotonic() < deadline, "the worker never started"
        assert not op.done, op.error
        time.sleep(0.05)
        op = _get(stubs, op.name)
    return op


def test_train_a_version_read_its_metrics_and_delete_it(stubs: Stubs) -> None:
    group = _group_with_data(stubs)
    solution = _solution(stubs, group, "popularity-count")
    assert solution.name == "solutions/s" and solution.recipe == "popularity-count"
    op = stubs.training.CreateSolutionVersion(
        api.CreateSolutionVersionRequest(parent=solution.name, solution_version_id="v1"), timeout=10
    )
    assert _meta(op).verb == "train" and _meta(op).target == "solutions/s/versions/v1"
    done = stubs.wait(op, timeout=120)
    assert not done.HasField("error"), done.error
    version = training_pb2.SolutionVersion()
    done.response.Unpack(version)
    assert version.state == training_pb2.TRAINING_STATE_SUCCEEDED
    assert _meta(done).progress_percent == 100.0
    assert (path_of(version.artifact_uri) / "meta.json").is_file()
    snapshot = json.loads((path_of(version.dataset_snapshot_uri) / "snapshot.json").read_text())
    assert snapshot["datasets"]["interactions"]["row_count"] > 0
    assert all(path_of(uri).is_file() for uri in snapshot["datasets"]["interactions"]["part_uris"])
    assert version.training_duration.seconds >= 0 and version.tuned_hyper_parameters

    metrics = stubs.training.GetSolutionMetrics(api.GetSolutionMetricsRequest(name=version.name), timeout=5).metrics
    assert [m.k for m in metrics.at_k] == [5, 10, 25]
    assert metrics.evaluated_users > 0
    assert 0 < metrics.catalog_coverage <= 1 and 0 < metrics.mean_reciprocal_rank <= 1
    assert all(0 <= m.precision <= 1 and 0 <= m.recall <= 1 and 0 <= m.ndcg <= 1 for m in metrics.at_k)
    assert metrics.at_k[2].recall >= metrics.at_k[0].recall

    listed = stubs.training.ListSolutionVersions(api.ListSolutionVersionsRequest(parent=solution.name), timeout=5)
    assert [v.name for v in listed.solution_versions] == [version.name]
    assert (
        stubs.training.GetSolution(api.GetSolutionRequest(name=solution.name)).latest_solution_version == version.name
    )

    # UPDATE refreshes from the latest version with its tuned parameters.
    update = stubs.wait(
        stubs.training.CreateSolutionVersion(
            api.CreateSolutionVersionRequest(parent=solution.name, training_mode=training_pb2.TRAINING_MODE_UPDATE),
            timeout=10,
        ),
        timeout=120,
    )
    assert not update.HasField("error"), update.error

    stubs.training.DeleteSolutionVersion(api.DeleteSolutionVersionRequest(name=version.name), timeout=5)
    assert not path_of(version.artifact_uri).exists()
    expect_error(
        lambda: stubs.training.GetSolutionVersion(api.GetSolutionVersionRequest(name=version.name)),
        grpc.StatusCode.NOT_FOUND,
    )
    stubs.training.DeleteSolution(api.DeleteSolutionRequest(name=solution.name), timeout=5)
    expect_error(
        lambda: stubs.training.GetSolution(api.GetSolutionRequest(name=solution.name)), grpc.StatusCode.NOT_FOUND
    )


def test_bad_requests_name_the_field(stubs: Stubs) -> None:
    group = make_recommendation_group(stubs)
    t = stubs.training

    def create(**solution: object) -> object:
        return t.CreateSolution(
            api.CreateSolutionRequest(solution_id="s", solution=training_pb2.Solution(**solution)), timeout=5
        )

    expect_error(lambda: create(dataset_group=group.name, recipe="magic"), INVALID, "solution.recipe")
    expect_error(
        lambda: create(dataset_group=group.name, recipe="ease", hyper_parameters={"lambada": "1"}),
        INVALID,
        "solution.hyper_parameters[lambada]",
    )
    # NaN passed the bounds and trained a model of zeros that "SUCCEEDED"; Infinity passed where there is no upper bound.
    for value in ("nan", "NaN", "inf", "-Infinity"):
        expect_error(
            lambda: create(dataset_group=group.name, recipe="ease", hyper_parameters={"l2": value}),  # noqa: B023
            INVALID,
            "solution.hyper_parameters[l2]",
        )
    expect_error(
        lambda: create(dataset_group=group.name, recipe="sequence", hyper_parameters={"seed": "9" * 40}),
        INVALID,
        "solution.hyper_parameters[seed]",
    )
    expect_error(
        lambda: create(
            dataset_group=group.name,
            recipe="ease",
            perform_hpo=True,
            hpo_config=training_pb2.HpoConfig(
                continuous_ranges=[
                    training_pb2.ContinuousParameterRange(name="l2", min_value=float("nan"), max_value=10.0)
                ],
            ),
        ),
        INVALID,
        "solution.hpo_config.continuous_ranges[0]",
    )
    expect_error(lambda: create(dataset_group="datasetGroups/none", recipe="ease"), grpc.StatusCode.NOT_FOUND)
    expect_error(lambda: create(dataset_group="nonsense", recipe="ease"), INVALID, "solution.dataset_group")
    expect_error(
        lambda: create(
            dataset_group=group.name,
            recipe="ease",
            perform_hpo=True,
            hpo_config=training_pb2.HpoConfig(
                objective_metric="ndcg_at_7",
                integer_ranges=[training_pb2.IntegerParameterRange(name="nope", min_value=1, max_value=2)],
            ),
        ),
        INVALID,
        "solution.hpo_config.integer_ranges[0].name",
    )
    solution = _solution(stubs, group.name, "popularity-count")
    # No interactions yet: nothing to train on.
    expect_error(lambda: t.CreateSolutionVersion(api.CreateSolutionVersionRequest(parent=solution.name)), PRECONDITION)
    expect_error(
        lambda: t.CreateSolutionVersion(
            api.CreateSolutionVersionRequest(parent=solution.name, training_mode=training_pb2.TRAINING_MODE_UPDATE)
        ),
        PRECONDITION,
    )
    expect_error(
        lambda: t.CreateSolutionVersion(api.CreateSolutionVersionRequest(parent="solutions/none")),
        grpc.StatusCode.NOT_FOUND,
    )
    expect_error(
        lambda: t.CreateSolutionVersion(
            api.CreateSolutionVersionRequest(parent=solution.name, solution_version_id="B!")
        ),
        INVALID,
        "solution_version_id",
    )
    expect_error(lambda: t.GetSolutionMetrics(api.GetSolutionMetricsRequest(name="solutions/s")), INVALID, "name")


def test_training_reports_progress_then_cancel_stops_the_worker(stubs: Stubs) -> None:
    group = _group_with_data(stubs)
    solution = _solution(stubs, group, "sequence", **SLOW)
    op = stubs.training.CreateSolutionVersion(api.CreateSolutionVersionRequest(parent=solution.name), timeout=10)
    op = _wait_running(stubs, op)
    deadline = time.monotonic() + 60
    while "epoch" not in _meta(op).counters:
        assert time.monotonic() < deadline, f"no epoch progress: {_meta(op)}"
        time.sleep(0.1)
        op = _get(stubs, op.name)
    meta = _meta(op)
    assert 0 < meta.progress_percent < 100 and "loss" in meta.counters
    pid = int(meta.job.removeprefix("pid:"))

    stubs.operations.CancelOperation(operations_pb2.CancelOperationRequest(name=op.name), timeout=5)
    done = stubs.wait(op, timeout=30)
    assert done.error.code == grpc.StatusCode.CANCELLED.value[0]
    version = stubs.training.GetSolutionVersion(api.GetSolutionVersionRequest(name=_meta(op).target), timeout=5)
    assert version.state == training_pb2.TRAINING_STATE_CANCELLED and not version.artifact_uri
    assert not _alive(pid)


def test_a_killed_worker_is_reported_failed_with_a_reason(stubs: Stubs) -> None:
    group = _group_with_data(stubs)
    solution = _solution(stubs, group, "sequence", **SLOW)
    op = _wait_running(
        stubs, stubs.training.CreateSolutionVersion(api.CreateSolutionVersionRequest(parent=solution.name), timeout=10)
    )
    pid = int(_meta(op).job.removeprefix("pid:"))
    # The worker lowers its priority first thing (to nice 19), so that training never starves serving on one machine.
    deadline = time.monotonic() + 10
    while os.getpriority(os.PRIO_PROCESS, pid) < 19:
        assert time.monotonic() < deadline, "the worker did not lower its priority"
        time.sleep(0.05)
    os.kill(pid, signal.SIGKILL)
    done = stubs.wait(op, timeout=30)
    assert done.error.code == grpc.StatusCode.INTERNAL.value[0]
    assert "exited with code -9" in done.error.message
    version = stubs.training.GetSolutionVersion(api.GetSolutionVersionRequest(name=_meta(op).target), timeout=5)
    assert version.state == training_pb2.TRAINING_STATE_FAILED and "-9" in version.error.message
    # The failed version can simply be trained again.
    retry = stubs.training.CreateSolutionVersion(api.CreateSolutionVersionRequest(parent=solution.name), timeout=10)
    assert _meta(retry).target != _meta(op).target


def test_jobs_beyond_the_worker_limit_wait_queued(tmp_path: Path) -> None:
    stubs = start_stubs(Settings(port=0, data_dir=tmp_path / "data", training_workers=1))
    try:
        group = _group_with_data(stubs)
        solution = _solution(stubs, group, "sequence", **SLOW)
        first = _wait_running(
            stubs, stubs.training.CreateSolutionVersion(api.CreateSolutionVersionRequest(parent=solution.name))
        )
        second = stubs.training.CreateSolutionVersion(api.CreateSolutionVersionRequest(parent=solution.name))
        time.sleep(1.0)
        second = _get(stubs, second.name)
        assert _meta(second).status_message == "queued" and not _meta(second).job
        stubs.operations.CancelOperation(operations_pb2.CancelOperationRequest(name=first.name), timeout=5)
        _wait_running(stubs, second)  # the freed slot goes to the queued job
        stubs.operations.CancelOperation(operations_pb2.CancelOperationRequest(name=second.name), timeout=5)
        stubs.wait(second, timeout=30)
    finally:
        stubs.channel.close()
        stubs.app.stop(None)


def test_a_worker_that_died_while_the_server_was_down_is_marked_failed(tmp_path: Path) -> None:
    settings = Settings(port=0, data_dir=tmp_path / "data")
    settings.data_dir.mkdir(parents=True)
    engine = make_engine(settings.database_url)
    store, ops = TrainingStore(engine), OperationStore(engine)
    # What a crashed server leaves behind: a RUNNING job whose worker pid no longer exists.
    store.create_solution(
        {"name": "solutions/s", "dataset_group": "datasetGroups/g", "recipe": "ease", "hyper_parameters": {}}
    )
    op = ops.create("solutions/s/versions/v", "train")
    store.create_version(
        {
            "name": "solutions/s/versions/v",
            "solution": "solutions/s",
            "training_mode": "FULL",
            "state": "RUNNING",
            "operation": op.name,
        }
    )
    job_dir = settings.artifacts / "jobs" / "crashed"
    job_dir.mkdir(parents=True)
    store.create_job(op.name, "solution-version", "solutions/s/versions/v", str(job_dir))
    store.update_job(op.name, state="RUNNING", handle=f"pid:{_dead_pid()}")
    engine.dispose()

    stubs = start_stubs(settings)
    try:
        done = stubs.wait(_get(stubs, op.name), timeout=30)
        assert "is gone" in done.error.message
        version = stubs.training.GetSolutionVersion(api.GetSolutionVersionRequest(name="solutions/s/versions/v"))
        assert version.state == training_pb2.TRAINING_STATE_FAILED
    finally:
        stubs.channel.close()
        stubs.app.stop(None)


def _dead_pid() -> int:
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    os.waitpid(pid, 0)
    return pid


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True
