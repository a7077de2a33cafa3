"""Reliability under load and failure: deadlines carried into peer calls, bounded concurrency and queues,
graceful drain on SIGTERM, no acknowledged write lost to SIGKILL, no partial model served.

Timing bounds are generous (the CI machine is small and shared): each one only has to tell the
behaviour asked for from the one it replaces (a 1 s deadline from a 10 s peer timeout, etc.).
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.longrunning import operations_pb2, operations_pb2_grpc
from google.protobuf import duration_pb2, timestamp_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client import REGISTRY
from test_process import start

from foretell.client._channel import read_methods
from foretell.core.db import make_engine
from foretell.core.operations import OperationStore
from foretell.core.settings import Settings
from foretell.dataset.importer import Importer
from foretell.runtime.server import create_server
from foretell.v1 import (
    common_pb2,
    dataset_pb2,
    dataset_service_pb2,
    dataset_service_pb2_grpc,
    forecast_query_service_pb2,
    forecast_query_service_pb2_grpc,
    recommendation_pb2,
    recommendation_service_pb2,
    recommendation_service_pb2_grpc,
    training_pb2,
    training_service_pb2,
    training_service_pb2_grpc,
)

from support import Stubs, interactions_csv, make_recommendation_group, start_stubs, upload

DATASETS = "foretell.v1.DatasetService"

# ---- deadlines ------------------------------------------------------------------------------------


class SlowTraining(training_service_pb2_grpc.TrainingServiceServicer):
    """A training service whose GetForecast answers NOT_FOUND, at once or (forecasts/slow) after 8 s,
    recording the time the caller gave it and how long it was kept waiting."""

    def __init__(self) -> None:
        self.seen: list[tuple[float | None, float]] = []

    def GetForecast(self, request: Any, context: grpc.ServicerContext) -> Any:  # noqa: N802
        given = context.time_remaining()
        start = time.monotonic()
        if request.name == "forecasts/slow":
            while context.is_active() and time.monotonic() - start < 8:
                time.sleep(0.01)
        self.seen.append((given, time.monotonic() - start))
        context.abort(grpc.StatusCode.NOT_FOUND, f"{request.name} not found")


@pytest.fixture
def slow_training() -> Iterator[tuple[SlowTraining, str]]:
    servicer = SlowTraining()
    server = grpc.server(futures.ThreadPoolExecutor(4))
    training_service_pb2_grpc.add_TrainingServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield servicer, f"127.0.0.1:{port}"
    server.stop(None)


def test_a_peer_call_gets_no_more_time_than_its_caller_has_left(
    slow_training: tuple[SlowTraining, str], tmp_path: Path
) -> None:
    training, target = slow_training
    app = create_server(Settings(port=0, data_dir=tmp_path / "data", training_target=target), ["forecast-query"])
    app.start()
    try:
        with grpc.insecure_channel(f"127.0.0.1:{app.port}") as channel:
            query = forecast_query_service_pb2_grpc.ForecastQueryServiceStub(channel)

            def ask(forecast: str, timeout: float | None) -> grpc.StatusCode:
                request = forecast_query_service_pb2.QueryForecastRequest(forecast=forecast, item_id="a")
                with pytest.raises(grpc.RpcError) as failed:
                    query.QueryForecast(request, timeout=timeout)
                return failed.value.code()

            # No deadline from the caller: the peer call keeps its own (10 s).
            assert ask("forecasts/fast", None) == grpc.StatusCode.NOT_FOUND
            given, _ = training.seen[0]
            assert given is not None and 5 < given <= 10.5

            started = time.monotonic()
            assert ask("forecasts/slow", 1.0) == grpc.StatusCode.DEADLINE_EXCEEDED
            assert time.monotonic() - started < 3
            deadline = time.monotonic() + 10
            while len(training.seen) < 2:
                assert time.monotonic() < deadline, "the peer call is still waiting"
                time.sleep(0.05)
            given, waited = training.seen[1]
            # The peer was told the caller's 1 s, and was let go then: not after its own 10 s.
            assert given is not None and given <= 1.5  # (gRPC rounds the timeout it sends up)
            assert waited < 3
    finally:
        app.stop(None)


# ---- back-pressure --------------------------------------------------------------------------------


def _in_flight(service: str, method: str) -> float:
    return REGISTRY.get_sample_value("foretell_rpc_in_flight", {"grpc_service": service, "grpc_method": method}) or 0


def _refused(method: str) -> float:
    """Calls of `method` received but never started: refused by the concurrency limit."""
    labels = {"grpc_type": "unary", "grpc_service": "google.longrunning.Operations", "grpc_method": method}
    received = REGISTRY.get_sample_value("foretell_rpc_received_total", labels) or 0
    return received - (REGISTRY.get_sample_value("grpc_server_started_total", labels) or 0)


def test_wait_operation_with_a_huge_timeout_waits_until_the_call_deadline(stubs: Stubs) -> None:
    # Regression (found by tests/service/test_fuzz_requests.py): seconds beyond what a timedelta holds gave INTERNAL.
    pending = OperationStore(stubs.app.engine).create("x", "test")
    huge = operations_pb2.WaitOperationRequest(name=pending.name, timeout=duration_pb2.Duration(seconds=2**63 - 1))
    start = time.monotonic()
    try:
        assert not stubs.operations.WaitOperation(huge, timeout=2).done
    except grpc.RpcError as exc:  # answered at the deadline, arrived just after it on a busy machine
        assert exc.code() == grpc.StatusCode.DEADLINE_EXCEEDED, exc
    assert time.monotonic() - start > 1


@pytest.mark.slow
def test_calls_beyond_the_concurrency_limit_get_resource_exhausted_and_the_server_stays_healthy(
    tmp_path: Path,
) -> None:
    limit, extra = 4, 3
    stubs = start_stubs(Settings(port=0, data_dir=tmp_path / "data", max_concurrent_rpcs=limit, max_workers=8))
    try:
        pending = OperationStore(stubs.app.engine).create("x", "test")  # never finishes: WaitOperation waits
        slow = operations_pb2.WaitOperationRequest(name=pending.name, timeout=duration_pb2.Duration(seconds=5))
        results: list[object] = []

        def wait() -> None:
            try:
                results.append(stubs.operations.WaitOperation(slow, timeout=20))
            except grpc.RpcError as exc:
                results.append(exc.code())

        callers = [threading.Thread(target=wait) for _ in range(limit)]
        for caller in callers:
            caller.start()
        deadline = time.monotonic() + 10
        while _in_flight("google.longrunning.Operations", "WaitOperation") < limit:
            assert time.monotonic() < deadline, "the slow calls never all started"
            time.sleep(0.02)
        refused_before = _refused("GetOperation")
        refused = []
        for _ in range(extra):
            with pytest.raises(grpc.RpcError) as info:
                stubs.operations.GetOperation(operations_pb2.GetOperationRequest(name=pending.name), timeout=5)
            refused.append(info.value.code())
        assert refused == [grpc.StatusCode.RESOURCE_EXHAUSTED] * extra
        assert _refused("GetOperation") - refused_before == extra  # visible in the metrics
        for caller in callers:
            caller.join(20)
        # Every admitted call finished normally: refusing the extra ones cost them nothing.
        assert [getattr(r, "name", r) for r in results] == [pending.name] * limit
        health = health_pb2_grpc.HealthStub(stubs.channel)
        assert health.Check(health_pb2.HealthCheckRequest(), timeout=5).status == health_pb2.HealthCheckResponse.SERVING
        assert not stubs.operations.GetOperation(operations_pb2.GetOperationRequest(name=pending.name), timeout=5).done
    finally:
        stubs.channel.close()
        stubs.app.stop(None)


@pytest.mark.slow
def test_a_connection_at_its_stream_cap_waits_for_a_slot_and_other_connections_go_on(tmp_path: Path) -> None:
    cap, calls = 2, 5
    stubs = start_stubs(Settings(port=0, data_dir=tmp_path / "data", max_streams_per_connection=cap, max_workers=8))
    other = grpc.insecure_channel(f"127.0.0.1:{stubs.app.port}")
    try:
        pending = OperationStore(stubs.app.engine).create("x", "test")  # never finishes: each wait lasts 1 s
        slow = operations_pb2.WaitOperationRequest(name=pending.name, timeout=duration_pb2.Duration(seconds=1))
        results: list[object] = []

        def wait() -> None:
            try:
                results.append(stubs.operations.WaitOperation(slow, timeout=30).name)
            except grpc.RpcError as exc:
                results.append(exc.code())

        started = time.monotonic()
        callers = [threading.Thread(target=wait) for _ in range(calls)]
        for caller in callers:
            caller.start()
        most = 0.0
        answered_meanwhile = None
        while any(caller.is_alive() for caller in callers):
            most = max(most, _in_flight("google.longrunning.Operations", "WaitOperation"))
            if most == cap and answered_meanwhile is None:
                # The first connection is at its cap with calls waiting; a second one is not held up by it.
                again = operations_pb2_grpc.OperationsStub(other).GetOperation(
                    operations_pb2.GetOperationRequest(name=pending.name), timeout=5
                )
                answered_meanwhile = again.name
            time.sleep(0.01)
        # Every call was answered, none refused (UNAVAILABLE) or shed; at most `cap` ran at once, so the
        # others waited in the client: 5 one-second calls two at a time take three rounds.
        assert results == [pending.name] * calls
        assert most == cap
        assert answered_meanwhile == pending.name
        assert time.monotonic() - started >= 2.5
    finally:
        other.close()
        stubs.channel.close()
        stubs.app.stop(None)


def test_imports_beyond_the_queue_limit_get_resource_exhausted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    release = threading.Event()
    original = Importer.run

    def held(self: Importer, **kwargs: Any) -> Any:
        release.wait(30)  # the one import worker stays busy until the test lets it go
        return original(self, **kwargs)

    monkeypatch.setattr(Importer, "run", held)
    stubs = start_stubs(Settings(port=0, data_dir=tmp_path / "data", import_workers=1, max_queued_imports=2))
    try:
        group = make_recommendation_group(stubs)
        data = interactions_csv(20)
        running = upload(stubs, group.interactions, data)
        deadline = time.monotonic() + 10
        while (
            stubs.datasets.GetImportJob(dataset_service_pb2.GetImportJobRequest(name=_target(running)), timeout=5).state
            != dataset_pb2.JOB_STATE_RUNNING
        ):
            assert time.monotonic() < deadline, "the first import never started"
            time.sleep(0.02)
        queued = [upload(stubs, group.interactions, data, mode=dataset_pb2.IMPORT_MODE_INCREMENTAL) for _ in range(2)]
        with pytest.raises(grpc.RpcError) as info:
            upload(stubs, group.interactions, data)
        assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "2 imports are already waiting" in (info.value.details() or "")
        release.set()
        for operation in [running, *queued]:
            assert not stubs.wait(operation).HasField("error")
        # Room again once the queue drained.
        assert not stubs.wait(upload(stubs, group.interactions, data)).HasField("error")
    finally:
        release.set()
        stubs.channel.close()
        stubs.app.stop(None)


def _target(operation: operations_pb2.Operation) -> str:
    meta = common_pb2.OperationMetadata()
    operation.metadata.Unpack(meta)
    return meta.target


# ---- graceful drain -------------------------------------------------------------------------------


def _serve(tmp_path: Path) -> tuple[subprocess.Popen[str], int, Stubs]:
    """`foretell serve` as a process over `tmp_path`, and stubs on a channel to it."""
    proc, port = start("foretell.runtime", tmp_path)
    return proc, port, _process_stubs(grpc.insecure_channel(f"127.0.0.1:{port}"))


def _process_stubs(channel: grpc.Channel) -> Stubs:
    return Stubs(
        channel,
        dataset_service_pb2_grpc.DatasetServiceStub(channel),
        operations_pb2_grpc.OperationsStub(channel),
        None,  # type: ignore[arg-type]  # the server is another process
        training_service_pb2_grpc.TrainingServiceStub(channel),
        recommendation_service_pb2_grpc.RecommendationServiceStub(channel),
    )


def _event(event_id: str, item: str) -> dataset_pb2.Event:
    return dataset_pb2.Event(
        event_id=event_id, event_type="click", item_id=item, sent_at=timestamp_pb2.Timestamp(seconds=1_700_100_000)
    )


@pytest.mark.slow
def test_sigterm_drains_unary_and_streaming_calls_and_refuses_new_ones(tmp_path: Path) -> None:
    proc, port, stubs = _serve(tmp_path)
    channel = stubs.channel
    try:
        group = make_recommendation_group(stubs)
        pending = OperationStore(make_engine(f"sqlite:///{tmp_path / 'foretell.db'}")).create("x", "test")
        outcome: dict[str, Any] = {}

        def unary() -> None:  # held open 3 s by WaitOperation, started 1 s before SIGTERM
            request = operations_pb2.WaitOperationRequest(name=pending.name, timeout=duration_pb2.Duration(seconds=3))
            try:
                outcome["unary"] = stubs.operations.WaitOperation(request, timeout=20).name
            except grpc.RpcError as exc:
                outcome["unary"] = exc.code()

        watching = threading.Event()

        def server_stream() -> None:  # WatchEvents: open until the server ends it
            stream = stubs.datasets.WatchEvents(
                dataset_service_pb2.WatchEventsRequest(dataset_group=group.name, start_time=timestamp_pb2.Timestamp()),
                timeout=30,
            )
            items = []
            try:
                for response in stream:
                    items += [e.item_id for e in response.events]
                    watching.set()
                outcome["server_stream"] = items
            except grpc.RpcError as exc:
                outcome["server_stream"] = exc.code()

        terminated = threading.Event()

        def client_stream() -> None:  # an upload that sends chunks until a second after SIGTERM
            rows = interactions_csv(2000).splitlines(keepends=True)

            def messages() -> Iterator[dataset_service_pb2.ImportDataRequest]:
                yield dataset_service_pb2.ImportDataRequest(
                    config=dataset_service_pb2.ImportDataConfig(
                        dataset=group.interactions, import_mode=dataset_pb2.IMPORT_MODE_INCREMENTAL
                    )
                )
                for start_row in range(0, len(rows), 20):
                    yield dataset_service_pb2.ImportDataRequest(chunk=b"".join(rows[start_row : start_row + 20]))
                    if terminated.wait(0.1):
                        time.sleep(1.0)
                        return

            try:
                outcome["client_stream"] = stubs.datasets.ImportData(messages(), timeout=20).name
            except grpc.RpcError as exc:
                outcome["client_stream"] = exc.code()

        grpc.channel_ready_future(channel).result(timeout=10)
        callers = [threading.Thread(target=f) for f in (server_stream, client_stream, unary)]
        for caller in callers[:2]:
            caller.start()
        stubs.datasets.PutEvents(
            dataset_service_pb2.PutEventsRequest(
                dataset_group=group.name, session_id="s", user_id="u", events=[_event("e1", "i1")]
            ),
            timeout=5,
        )
        # Up to 30 s on a loaded machine; at once if the stream ended instead (its code is in the outcome).
        deadline = time.monotonic() + 30
        while not watching.is_set() and "server_stream" not in outcome and time.monotonic() < deadline:
            time.sleep(0.05)
        assert watching.is_set(), f"the event stream delivered nothing: {outcome}"
        callers[2].start()
        time.sleep(1.0)  # all three calls are in flight
        proc.send_signal(signal.SIGTERM)
        terminated.set()
        time.sleep(0.5)  # draining (grace 5 s)

        # New calls are refused cleanly, on a fresh connection and on the open one.
        with grpc.insecure_channel(f"127.0.0.1:{port}") as fresh, pytest.raises(grpc.RpcError) as info:
            health_pb2_grpc.HealthStub(fresh).Check(health_pb2.HealthCheckRequest(), timeout=2)
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE
        with pytest.raises(grpc.RpcError) as info:
            stubs.operations.GetOperation(operations_pb2.GetOperationRequest(name=pending.name), timeout=2)
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE

        for caller in callers:
            caller.join(20)
        assert outcome["unary"] == pending.name
        assert outcome["server_stream"] == ["i1"]  # ended by the server, without an error
        assert str(outcome["client_stream"]).startswith("operations/")
        assert proc.wait(timeout=20) == 0
    finally:
        channel.close()
        if proc.poll() is None:
            proc.kill()
            proc.wait()


# ---- crashes ----------------------------------------------------------------------------------


def test_acknowledged_events_and_imports_survive_sigkill(tmp_path: Path) -> None:
    proc, _, stubs = _serve(tmp_path)
    try:
        group = make_recommendation_group(stubs)
        done = stubs.wait(upload(stubs, group.interactions, interactions_csv(100)))
        assert not done.HasField("error")
        accepted = 0
        for batch in range(20):
            answer = stubs.datasets.PutEvents(
                dataset_service_pb2.PutEventsRequest(
                    dataset_group=group.name,
                    session_id=f"s{batch}",
                    user_id=f"u{batch}",
                    events=[_event(f"e{batch}-{i}", f"i{i}") for i in range(10)],
                ),
                timeout=5,
            )
            accepted += answer.accepted
        assert accepted == 200
        # An import that may still be running when the server dies.
        late = upload(stubs, group.items, b"ITEM_ID,GENRES\n" + b"".join(b"i%d,rock\n" % i for i in range(20_000)))
    finally:
        stubs.channel.close()
    proc.kill()  # SIGKILL: no drain, no clean-up
    proc.wait(timeout=10)

    proc, _, stubs = _serve(tmp_path)
    try:
        with stubs.channel:
            count = stubs.datasets.GetDataset(dataset_service_pb2.GetDatasetRequest(name=group.interactions), timeout=5)
            assert count.row_count == 100 + accepted
            # The import killed mid-way is reported ABORTED and changed nothing, or had committed completely.
            ended = stubs.wait(
                stubs.operations.GetOperation(operations_pb2.GetOperationRequest(name=late.name), timeout=5)
            )
            items = stubs.datasets.GetDataset(dataset_service_pb2.GetDatasetRequest(name=group.items), timeout=5)
            if ended.HasField("error"):
                assert ended.error.code == grpc.StatusCode.ABORTED.value[0]
                assert items.row_count == 0
            else:
                assert items.row_count == 20_000
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=20)


@pytest.mark.slow
def test_a_killed_training_worker_leaves_no_model_to_serve_and_the_solution_trains_again(
    stubs: Stubs, settings: Settings
) -> None:
    group = make_recommendation_group(stubs)
    assert not stubs.wait(upload(stubs, group.interactions, interactions_csv(1500, users=40, items=120))).HasField(
        "error"
    )
    stubs.training.CreateSolution(
        training_service_pb2.CreateSolutionRequest(
            solution_id="s",
            solution=training_pb2.Solution(
                dataset_group=group.name, recipe="sequence", hyper_parameters={"epochs": "500"}
            ),
        ),
        timeout=10,
    )

    def running() -> tuple[operations_pb2.Operation, common_pb2.OperationMetadata]:
        op = stubs.training.CreateSolutionVersion(
            training_service_pb2.CreateSolutionVersionRequest(parent="solutions/s"), timeout=10
        )
        meta = common_pb2.OperationMetadata()
        deadline = time.monotonic() + 60
        while not meta.job or meta.progress_percent <= 5:  # the worker has started training
            assert time.monotonic() < deadline, "the worker never started"
            op = stubs.operations.GetOperation(operations_pb2.GetOperationRequest(name=op.name), timeout=5)
            assert not op.done, op.error
            op.metadata.Unpack(meta)
            time.sleep(0.05)
        return op, meta

    op, meta = running()
    os.kill(int(meta.job.removeprefix("pid:")), signal.SIGKILL)
    failed = stubs.wait(op, timeout=30)
    assert failed.error.code == grpc.StatusCode.INTERNAL.value[0]
    version = stubs.training.GetSolutionVersion(
        training_service_pb2.GetSolutionVersionRequest(name=meta.target), timeout=5
    )
    assert version.state == training_pb2.TRAINING_STATE_FAILED and not version.artifact_uri
    # Nothing of the half-trained model is left where models are published.
    assert not (settings.artifacts / "models" / meta.target).exists()
    with pytest.raises(grpc.RpcError) as info:
        stubs.recommendations.CreateCampaign(
            recommendation_service_pb2.CreateCampaignRequest(
                campaign_id="c", campaign=recommendation_pb2.Campaign(solution_version=meta.target)
            ),
            timeout=10,
        )
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    # The same solution trains again.
    again, again_meta = running()
    assert again_meta.target != meta.target
    stubs.operations.CancelOperation(operations_pb2.CancelOperationRequest(name=again.name), timeout=5)
    assert stubs.wait(again, timeout=30).error.code == grpc.StatusCode.CANCELLED.value[0]


# ---- client retries ---------------------------------------------------------------------------


def test_the_client_retries_only_calls_that_are_safe_to_replay() -> None:
    from foretell.v1 import dataset_service_pb2 as d
    from foretell.v1 import forecast_query_service_pb2 as f
    from foretell.v1 import recommendation_service_pb2 as r
    from foretell.v1 import training_service_pb2 as t

    retried = set(read_methods())
    methods = [
        (service.full_name, method)
        for module in (d, t, r, f)
        for service in module.DESCRIPTOR.services_by_name.values()
        for method in service.methods
    ]
    for service, method in methods:
        writes = "request_id" in method.input_type.fields_by_name or method.name.startswith(
            ("Create", "Update", "Delete", "Import", "Put", "Stop")
        )
        # A write is never replayed by the channel: a caller retries it with the same request_id.
        assert not (writes and (service, method.name) in retried), method.full_name
    assert (DATASETS, "GetDataset") in retried and (DATASETS, "PutEvents") not in retried
