"""Each service runs alone as a process; SIGTERM drains in-flight calls; logs are JSON lines."""

from __future__ import annotations

import ctypes
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import grpc
import pytest
from google.longrunning import operations_pb2, operations_pb2_grpc
from google.protobuf import duration_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from foretell.v1 import training_service_pb2, training_service_pb2_grpc

from support import stopped

ROOT = Path(__file__).resolve().parents[2]


def start(module: str, data_dir: Path, port: int = 0) -> tuple[subprocess.Popen[str], int]:
    env = {
        **os.environ,
        "FORETELL_PORT": str(port),
        "FORETELL_DATA_DIR": str(data_dir),
        "FORETELL_GRACE_SECONDS": "5",
        "PYTHONPATH": os.pathsep.join([str(ROOT / "services"), str(ROOT / "clients/python")]),
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", module], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env
    )
    assert proc.stdout is not None
    for line in proc.stdout:
        entry = json.loads(line)  # every line is a JSON object
        assert {"time", "severity", "service", "message"} <= entry.keys()
        if entry["message"] == "serving":
            return proc, int(entry["port"])
    raise AssertionError(f"{module} exited with {proc.wait()} before serving")


# SYS_tgkill, the one call that sends a signal to one thread of another process.
TGKILL = {"x86_64": 234, "aarch64": 131}.get(os.uname().machine)


@pytest.mark.skipif(not sys.platform.startswith("linux") or TGKILL is None, reason="tgkill is Linux's (x86-64, arm64)")
def test_sigterm_delivered_to_any_thread_stops_the_server(tmp_path: Path) -> None:
    """The kernel may hand a process's SIGTERM to any of its threads; Python runs the handler in the main thread only
    once that thread wakes, which a plain Event.wait() never did: the server ran on until killed."""
    proc, _ = start("foretell.dataset", tmp_path)
    try:
        threads = [int(t.name) for t in Path(f"/proc/{proc.pid}/task").iterdir() if int(t.name) != proc.pid]
        assert threads, "a serving process runs more threads than its main one"
        libc = ctypes.CDLL(None, use_errno=True)
        assert libc.syscall(TGKILL, proc.pid, threads[-1], signal.SIGTERM) == 0, os.strerror(ctypes.get_errno())
        assert proc.wait(timeout=20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.stdout is not None
    assert '"shutting down"' in proc.stdout.read()


def services_of(channel: grpc.Channel) -> set[str]:
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    responses = stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=5)
    return {s.name for r in responses for s in r.list_services_response.service}


@pytest.mark.parametrize(
    ("module", "service"),
    [
        ("foretell.dataset", "foretell.v1.DatasetService"),
        ("foretell.training", "foretell.v1.TrainingService"),
        ("foretell.recommendation", "foretell.v1.RecommendationService"),
        ("foretell.forecast_query", "foretell.v1.ForecastQueryService"),
    ],
)
def test_service_runs_alone(module: str, service: str, tmp_path: Path) -> None:
    proc, port = start(module, tmp_path)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            health = health_pb2_grpc.HealthStub(channel)
            ok = health_pb2.HealthCheckResponse.SERVING
            assert health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5).status == ok
            found = services_of(channel)
            assert service in found and "grpc.health.v1.Health" in found
            assert not {"foretell.v1.DatasetService", "foretell.v1.TrainingService"} - {service} <= found
    finally:
        assert stopped(proc) == 0


def test_the_training_service_alone_serves_predictors(tmp_path: Path) -> None:
    proc, port = start("foretell.training", tmp_path)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = training_service_pb2_grpc.TrainingServiceStub(channel)
            with pytest.raises(grpc.RpcError) as info:
                stub.GetPredictor(training_service_pb2.GetPredictorRequest(name="predictors/x"), timeout=5)
            assert info.value.code() == grpc.StatusCode.NOT_FOUND and "predictors/x" in (info.value.details() or "")
            listed = stub.ListPredictors(training_service_pb2.ListPredictorsRequest(), timeout=5)
            assert not listed.predictors
    finally:
        stopped(proc)


@pytest.mark.slow
def test_sigterm_drains_in_flight_calls(tmp_path: Path) -> None:
    proc, port = start("foretell.runtime", tmp_path)
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    ops = operations_pb2_grpc.OperationsStub(channel)
    # An operation that never finishes: WaitOperation holds the call open for 2 s.
    from foretell.core.db import make_engine
    from foretell.core.operations import OperationStore

    pending = OperationStore(make_engine(f"sqlite:///{tmp_path / 'foretell.db'}")).create("x", "test")
    result: dict[str, object] = {}

    def wait() -> None:
        try:
            result["op"] = ops.WaitOperation(
                operations_pb2.WaitOperationRequest(name=pending.name, timeout=duration_pb2.Duration(seconds=2)),
                timeout=10,
            )
        except grpc.RpcError as exc:
            result["error"] = exc.code()

    grpc.channel_ready_future(channel).result(timeout=10)  # connected before the call starts
    caller = threading.Thread(target=wait)
    caller.start()
    threading.Event().wait(1.0)  # the call is in flight (it lasts 2 s)
    proc.send_signal(signal.SIGTERM)
    caller.join(timeout=15)
    assert "error" not in result, result
    assert result["op"].name == pending.name  # type: ignore[attr-defined]
    assert proc.wait(timeout=20) == 0
    channel.close()


@pytest.mark.slow
def test_a_worker_outlives_a_crashed_server_and_the_restarted_server_takes_it_back(tmp_path: Path) -> None:
    from foretell.v1 import common_pb2, training_pb2

    from support import Stubs, interactions_csv, make_recommendation_group, upload

    proc, port = start("foretell.runtime", tmp_path)
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    stubs = Stubs(channel, *_stubs(channel))
    group = make_recommendation_group(stubs)
    stubs.wait(upload(stubs, group.interactions, interactions_csv(1000, users=30, items=80)))
    training = training_service_pb2_grpc.TrainingServiceStub(channel)
    training.CreateSolution(
        training_service_pb2.CreateSolutionRequest(
            solution_id="s",
            solution=training_pb2.Solution(
                dataset_group=group.name, recipe="sequence", hyper_parameters={"epochs": "500"}
            ),
        ),
        timeout=10,
    )
    op = training.CreateSolutionVersion(
        training_service_pb2.CreateSolutionVersionRequest(parent="solutions/s"), timeout=10
    )
    meta = common_pb2.OperationMetadata()
    deadline = time.monotonic() + 60
    while not meta.job:
        assert time.monotonic() < deadline
        time.sleep(0.1)
        stubs.operations.GetOperation(operations_pb2.GetOperationRequest(name=op.name), timeout=5).metadata.Unpack(meta)
    worker = int(meta.job.removeprefix("pid:"))
    channel.close()

    proc.kill()  # a crash: no graceful stop, the worker is not told
    proc.wait(timeout=10)
    assert _running(worker)  # still training

    proc, port = start("foretell.runtime", tmp_path)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            ops = operations_pb2_grpc.OperationsStub(channel)
            before = common_pb2.OperationMetadata()
            ops.GetOperation(operations_pb2.GetOperationRequest(name=op.name), timeout=5).metadata.Unpack(before)
            time.sleep(1.5)  # the re-attached monitor keeps mirroring progress
            after = ops.GetOperation(operations_pb2.GetOperationRequest(name=op.name), timeout=5)
            assert not after.done
            ops.CancelOperation(operations_pb2.CancelOperationRequest(name=op.name), timeout=5)
            deadline = time.monotonic() + 30
            while not after.done:
                assert time.monotonic() < deadline, "cancel of a re-attached worker did not finish"
                time.sleep(0.1)
                after = ops.GetOperation(operations_pb2.GetOperationRequest(name=op.name), timeout=5)
            assert after.error.code == grpc.StatusCode.CANCELLED.value[0]
            assert not _running(worker)
    finally:
        stopped(proc)


def _stubs(channel: grpc.Channel) -> tuple[object, ...]:
    from foretell.v1 import dataset_service_pb2_grpc, recommendation_service_pb2_grpc

    return (
        dataset_service_pb2_grpc.DatasetServiceStub(channel),
        operations_pb2_grpc.OperationsStub(channel),
        None,
        training_service_pb2_grpc.TrainingServiceStub(channel),
        recommendation_service_pb2_grpc.RecommendationServiceStub(channel),
    )


def _running(pid: int) -> bool:
    """Alive and not a zombie (an orphan's zombie lingers until its new parent reaps it)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False
