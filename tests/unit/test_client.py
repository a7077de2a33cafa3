"""The Python client against a real in-process gRPC server with scripted servicers.

A real server (not mocks) is what proves the service config works: retries and
deadlines are applied by gRPC's channel, invisible to a mocked stub.
"""

from __future__ import annotations

import io
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest
from google.longrunning import operations_pb2, operations_pb2_grpc
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from foretell.client import Client, ForetellError, operation_response, raise_for_operation
from foretell.client._channel import DEADLINE_SLACK, read_methods, service_config
from foretell.v1 import (
    common_pb2,
    dataset_pb2,
    dataset_service_pb2,
    dataset_service_pb2_grpc,
    recommendation_pb2,
    recommendation_service_pb2,
    recommendation_service_pb2_grpc,
    training_pb2,
    training_service_pb2,
    training_service_pb2_grpc,
)

GROUPS = [f"datasetGroups/g{i}" for i in range(5)]


def _any(message: object) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(message)
    return packed


def _bad_request_status() -> status_pb2.Status:
    info = error_details_pb2.ErrorInfo(reason="INVALID_FIELD_TYPE", domain="foretell.v1", metadata={"field": "x"})
    bad = error_details_pb2.BadRequest(
        field_violations=[
            error_details_pb2.BadRequest.FieldViolation(field="schema.fields[0].type", description="required")
        ]
    )
    return status_pb2.Status(code=code_pb2.INVALID_ARGUMENT, message="bad schema", details=[_any(info), _any(bad)])


class Datasets(dataset_service_pb2_grpc.DatasetServiceServicer):
    def __init__(self) -> None:
        self.calls: Counter[str] = Counter()
        self.create_requests: list[dataset_service_pb2.CreateDatasetGroupRequest] = []
        self.uploaded: list[dataset_service_pb2.ImportDataRequest] = []
        self.page_tokens: list[str] = []

    def GetDatasetGroup(self, request, context):  # noqa: N802
        self.calls["GetDatasetGroup"] += 1
        if self.calls["GetDatasetGroup"] <= 2:
            context.abort(grpc.StatusCode.UNAVAILABLE, "warming up")
        return dataset_pb2.DatasetGroup(name=request.name)

    def CreateDatasetGroup(self, request, context):  # noqa: N802
        self.calls["CreateDatasetGroup"] += 1
        self.create_requests.append(request)
        context.abort(grpc.StatusCode.UNAVAILABLE, "shutting down")

    def GetDataset(self, request, context):  # noqa: N802
        end = time.monotonic() + 3
        while context.is_active() and time.monotonic() < end:
            time.sleep(0.01)
        return dataset_pb2.Dataset(name=request.name)

    def DeleteDataset(self, request, context):  # noqa: N802
        self.GetDataset(request, context)
        return dataset_service_pb2.DeleteDatasetResponse()

    def CreateSchema(self, request, context):  # noqa: N802
        context.abort_with_status(rpc_status.to_status(_bad_request_status()))

    def ListDatasetGroups(self, request, context):  # noqa: N802
        self.page_tokens.append(request.page_token)
        start = int(request.page_token or 0)
        end = start + request.page_size
        return dataset_service_pb2.ListDatasetGroupsResponse(
            dataset_groups=[dataset_pb2.DatasetGroup(name=n) for n in GROUPS[start:end]],
            next_page_token=str(end) if end < len(GROUPS) else "",
        )

    def ImportData(self, request_iterator, context):  # noqa: N802
        self.uploaded = list(request_iterator)
        return operations_pb2.Operation(name="operations/import-1")


class Operations(operations_pb2_grpc.OperationsServicer):
    def __init__(self) -> None:
        self.polls = 0

    def GetOperation(self, request, context):  # noqa: N802
        if request.name == "operations/stuck":
            return operations_pb2.Operation(name=request.name)
        self.polls += 1
        meta = common_pb2.OperationMetadata(verb="import", progress_percent=25.0 * self.polls)
        op = operations_pb2.Operation(name=request.name, metadata=_any(meta), done=self.polls >= 4)
        if op.done:
            op.response.Pack(dataset_pb2.ImportJob(name="importJobs/1", rows_imported=3))
        return op


@pytest.fixture
def server() -> Iterator[tuple[Datasets, Operations, str]]:
    datasets, operations = Datasets(), Operations()
    srv = grpc.server(ThreadPoolExecutor(max_workers=8))
    dataset_service_pb2_grpc.add_DatasetServiceServicer_to_server(datasets, srv)
    operations_pb2_grpc.add_OperationsServicer_to_server(operations, srv)
    port = srv.add_insecure_port("127.0.0.1:0")
    srv.start()
    yield datasets, operations, f"127.0.0.1:{port}"
    srv.stop(None)


def test_retry_policy_covers_reads_only() -> None:
    reads = {m for _, m in read_methods()}
    assert {"GetRecommendations", "GetPersonalizedRanking", "GetSimilarItems", "QueryForecast"} <= reads
    assert {"GetOperation", "ListOperations", "WaitOperation", "ListDatasets"} <= reads
    assert not {m for m in reads if m.startswith(("Create", "Delete", "Update", "Import", "Put", "Cancel"))}
    configs = service_config(2.5, 60)["methodConfig"]
    padded = 2.5 + DEADLINE_SLACK, 60 + DEADLINE_SLACK
    assert [float(c["timeout"].rstrip("s")) for c in configs] == [padded[0], padded[0], padded[1]]
    assert [("retryPolicy" in c) for c in configs] == [False, True, False]
    assert configs[1]["retryPolicy"]["retryableStatusCodes"] == ["UNAVAILABLE"]
    services = {n["service"] for n in configs[0]["name"]}
    assert "google.longrunning.Operations" in services and "foretell.v1.ForecastQueryService" in services


def test_read_is_retried_on_unavailable(server) -> None:
    datasets, _, target = server
    with Client(target) as client:  # raw stub, no timeout=: the channel's service config does the work
        group = client.datasets.GetDatasetGroup(dataset_service_pb2.GetDatasetGroupRequest(name="datasetGroups/a"))
    assert group.name == "datasetGroups/a"
    assert datasets.calls["GetDatasetGroup"] == 3


def test_mutation_is_not_retried(server) -> None:
    datasets, _, target = server
    with Client(target) as client, pytest.raises(ForetellError) as caught:
        client.create_dataset_group("a", dataset_pb2.DOMAIN_RECOMMENDATION)
    assert caught.value.code is grpc.StatusCode.UNAVAILABLE
    assert datasets.calls["CreateDatasetGroup"] == 1
    assert len(datasets.create_requests[0].request_id) == 36  # a fresh uuid4, reusable by the caller


def test_default_deadline(server) -> None:
    _, _, target = server
    request = dataset_service_pb2.GetDatasetRequest(name="d")
    with Client(target, timeout=0.2) as client:
        # A small timeout must not fail fast calls (gRPC fires service-config deadlines early).
        listed = client.datasets.ListDatasetGroups(dataset_service_pb2.ListDatasetGroupsRequest(page_size=1))
        assert len(listed.dataset_groups) == 1
        # No timeout= passed: the service config bounds reads and mutations alike.
        for method, raw_request in [
            (client.datasets.GetDataset, request),
            (client.datasets.DeleteDataset, dataset_service_pb2.DeleteDatasetRequest(name="d")),
        ]:
            started = time.monotonic()
            with pytest.raises(grpc.RpcError) as raw:
                method(raw_request)
            assert raw.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED
            assert time.monotonic() - started < 0.2 + DEADLINE_SLACK + 0.5
        started = time.monotonic()
        with pytest.raises(ForetellError) as caught:
            client.call(client.datasets.GetDataset, request)  # helpers pass the exact timeout
        assert caught.value.code is grpc.StatusCode.DEADLINE_EXCEEDED
        assert 0.15 < time.monotonic() - started < 1.0


def test_rich_error_details(server) -> None:
    _, _, target = server
    field = dataset_pb2.SchemaField(name="USER_ID")
    with Client(target) as client, pytest.raises(ForetellError) as caught:
        client.create_schema("s", dataset_pb2.DOMAIN_RECOMMENDATION, [field])
    error = caught.value
    assert error.code is grpc.StatusCode.INVALID_ARGUMENT
    assert (error.message, error.reason, error.domain) == ("bad schema", "INVALID_FIELD_TYPE", "foretell.v1")
    assert error.metadata == {"field": "x"}
    assert error.field_violations == [("schema.fields[0].type", "required")]
    assert "schema.fields[0].type: required" in str(error)


def test_raise_for_operation() -> None:
    failed = operations_pb2.Operation(name="operations/x", done=True, error=_bad_request_status())
    with pytest.raises(ForetellError) as caught:
        raise_for_operation(failed)
    assert caught.value.code is grpc.StatusCode.INVALID_ARGUMENT
    assert caught.value.field_violations == [("schema.fields[0].type", "required")]
    ok = operations_pb2.Operation(name="operations/y", done=True, response=_any(dataset_pb2.ImportJob(name="j")))
    raise_for_operation(ok)
    assert operation_response(ok, dataset_pb2.ImportJob).name == "j"
    with pytest.raises(ForetellError):
        operation_response(failed, dataset_pb2.ImportJob)


@pytest.mark.parametrize("as_path", [True, False])
def test_import_csv_streams_config_then_chunks(server, tmp_path, as_path: bool) -> None:
    datasets, _, target = server
    data = b"USER_ID,ITEM_ID,TIMESTAMP\n" + b"".join(b"u%d,i%d,%d\n" % (i, i, 1700000000 + i) for i in range(20))
    path = tmp_path / "interactions.csv"
    path.write_bytes(data)
    source = path if as_path else io.BytesIO(data)
    progress: list[tuple[int, int]] = []
    with Client(target) as client:
        op = client.import_csv(
            "datasetGroups/g/datasets/d",
            source,
            import_mode=dataset_pb2.IMPORT_MODE_INCREMENTAL,
            chunk_size=64,
            progress=lambda sent, total: progress.append((sent, total)),
            request_id="req-1",
        )
    assert op.name == "operations/import-1"
    first, *rest = datasets.uploaded
    assert first.WhichOneof("payload") == "config"
    assert (first.config.dataset, first.config.request_id) == ("datasetGroups/g/datasets/d", "req-1")
    assert first.config.import_mode == dataset_pb2.IMPORT_MODE_INCREMENTAL
    assert all(r.WhichOneof("payload") == "chunk" and 0 < len(r.chunk) <= 64 for r in rest)
    assert len(rest) == -(-len(data) // 64)
    assert b"".join(r.chunk for r in rest) == data
    assert [s for s, _ in progress] == sorted({s for s, _ in progress})
    assert progress[-1] == (len(data), len(data))


def test_wait_operation_reports_progress(server) -> None:
    _, operations, target = server
    seen: list[common_pb2.OperationMetadata] = []
    with Client(target) as client:
        op = client.wait_operation("operations/import-1", poll=0.01, on_progress=seen.append)
        assert op.done and operations.polls == 4
        assert [m.progress_percent for m in seen] == [25.0, 50.0, 75.0, 100.0]
        assert operation_response(op, dataset_pb2.ImportJob).rows_imported == 3
        with pytest.raises(ForetellError) as caught:
            client.wait_operation("operations/stuck", timeout=0.1, poll=0.02)
        assert caught.value.code is grpc.StatusCode.DEADLINE_EXCEEDED


def test_list_all_follows_page_tokens(server) -> None:
    datasets, _, target = server
    request = dataset_service_pb2.ListDatasetGroupsRequest(page_size=2)
    with Client(target) as client:
        groups = list(client.list_all(client.datasets.ListDatasetGroups, request, "dataset_groups"))
    assert [g.name for g in groups] == GROUPS
    assert datasets.page_tokens == ["", "2", "4"]
    assert request.page_token == ""  # the caller's request is not modified


# ---- training and recommendation helpers ------------------------------------------------


class Training(training_service_pb2_grpc.TrainingServiceServicer):
    """Trains "instantly": the operation is done after three polls (see TrainingOperations)."""

    def __init__(self) -> None:
        self.requests: list[object] = []

    def CreateSolution(self, request, context):  # noqa: N802
        self.requests.append(request)
        return training_pb2.Solution(name=f"solutions/{request.solution_id}", **_fields(request.solution))

    def CreateSolutionVersion(self, request, context):  # noqa: N802
        self.requests.append(request)
        meta = common_pb2.OperationMetadata(verb="train", target=f"{request.parent}/versions/v1")
        return operations_pb2.Operation(name="operations/train-1", metadata=_any(meta))

    def GetSolutionVersion(self, request, context):  # noqa: N802
        return training_pb2.SolutionVersion(name=request.name, state=training_pb2.TRAINING_STATE_PENDING)

    def GetSolutionMetrics(self, request, context):  # noqa: N802
        return training_service_pb2.GetSolutionMetricsResponse(
            metrics=training_pb2.SolutionMetrics(solution_version=request.name, mean_reciprocal_rank=0.5)
        )


def _fields(solution: training_pb2.Solution) -> dict[str, object]:
    return {"dataset_group": solution.dataset_group, "recipe": solution.recipe}


class Recommendations(recommendation_service_pb2_grpc.RecommendationServiceServicer):
    def __init__(self) -> None:
        self.requests: list[object] = []

    def _deploy(self, request, name: str, campaign: recommendation_pb2.Campaign):
        self.requests.append(request)
        done = recommendation_pb2.Campaign()
        done.CopyFrom(campaign)
        done.name, done.state = name, recommendation_pb2.DEPLOYMENT_STATE_ACTIVE
        meta = common_pb2.OperationMetadata(verb="deploy", target=name, progress_percent=100)
        return operations_pb2.Operation(name="operations/deploy-1", metadata=_any(meta), done=True, response=_any(done))

    def CreateCampaign(self, request, context):  # noqa: N802
        return self._deploy(request, f"campaigns/{request.campaign_id}", request.campaign)

    def UpdateCampaign(self, request, context):  # noqa: N802
        return self._deploy(request, request.campaign.name, request.campaign)

    def GetRecommendations(self, request, context):  # noqa: N802
        self.requests.append(request)
        return recommendation_service_pb2.GetRecommendationsResponse(
            item_list=[recommendation_pb2.PredictedItem(item_id="i1", score=1.0)]
        )

    def GetSimilarItems(self, request, context):  # noqa: N802
        self.requests.append(request)
        return recommendation_service_pb2.GetSimilarItemsResponse()


class TrainingOperations(operations_pb2_grpc.OperationsServicer):
    def __init__(self) -> None:
        self.polls = 0

    def GetOperation(self, request, context):  # noqa: N802
        self.polls += 1
        meta = common_pb2.OperationMetadata(
            verb="train",
            progress_percent=min(100.0, 40.0 * self.polls),
            status_message=f"epoch {self.polls}/3",
            counters={"epoch": self.polls, "loss": 1.0 / self.polls},
        )
        op = operations_pb2.Operation(name=request.name, metadata=_any(meta), done=self.polls >= 3)
        if op.done:
            op.response.Pack(
                training_pb2.SolutionVersion(
                    name="solutions/s/versions/v1", state=training_pb2.TRAINING_STATE_SUCCEEDED
                )
            )
        return op


@pytest.fixture
def personalize_server() -> Iterator[tuple[Training, Recommendations, str]]:
    training, recommendations = Training(), Recommendations()
    srv = grpc.server(ThreadPoolExecutor(max_workers=4))
    training_service_pb2_grpc.add_TrainingServiceServicer_to_server(training, srv)
    recommendation_service_pb2_grpc.add_RecommendationServiceServicer_to_server(recommendations, srv)
    operations_pb2_grpc.add_OperationsServicer_to_server(TrainingOperations(), srv)
    port = srv.add_insecure_port("127.0.0.1:0")
    srv.start()
    yield training, recommendations, f"127.0.0.1:{port}"
    srv.stop(None)


def test_create_solution_then_train_with_progress(personalize_server) -> None:
    training, _, target = personalize_server
    seen: list[tuple[float, str, float]] = []
    with Client(target) as client:
        solution = client.create_solution(
            "s", "datasetGroups/g", "ease", {"lambda": 200, "flag": True}, request_id="r1"
        )
        version = client.train(
            solution,
            training_mode="update",
            poll=0.01,
            on_progress=lambda m: seen.append((m.progress_percent, m.status_message, m.counters["loss"])),
        )
        metrics = client.get_solution_metrics(version)
    create, start = training.requests
    assert create.solution.hyper_parameters == {"lambda": "200", "flag": "True"} and create.request_id == "r1"
    assert start.parent == "solutions/s" and start.training_mode == training_pb2.TRAINING_MODE_UPDATE
    assert len(start.request_id) == 36
    assert version.state == training_pb2.TRAINING_STATE_SUCCEEDED
    assert seen[-1] == (100.0, "epoch 3/3", 1 / 3) and [s[1] for s in seen[1:]] == [
        "epoch 1/3",
        "epoch 2/3",
        "epoch 3/3",
    ]
    assert metrics.solution_version == version.name and metrics.mean_reciprocal_rank == 0.5


def test_train_without_waiting_returns_the_pending_version(personalize_server) -> None:
    _, _, target = personalize_server
    with Client(target) as client:
        version = client.train("solutions/s", wait=False)
        assert version.name == "solutions/s/versions/v1" and version.state == training_pb2.TRAINING_STATE_PENDING
        with pytest.raises(ValueError, match="training_mode"):
            client.train("solutions/s", training_mode="PARTIAL")


def test_campaign_helpers_send_only_what_is_given(personalize_server) -> None:
    _, recommendations, target = personalize_server
    with Client(target) as client:
        created = client.create_campaign(
            "c", training_pb2.SolutionVersion(name="solutions/s/versions/v1"), exploration_weight=0.3, metadata=True
        )
        assert created.state == recommendation_pb2.DEPLOYMENT_STATE_ACTIVE and created.name == "campaigns/c"
        client.update_campaign(created, "solutions/s/versions/v2")
        client.update_campaign("campaigns/c", item_age_cutoff_days=7, metadata=False)
        with pytest.raises(ValueError, match="nothing to update"):
            client.update_campaign("campaigns/c")
        client.get_recommendations(
            "campaigns/c",
            user_id="u1",
            include_interacted=True,
            metadata_columns=["TITLE"],
            filter="filters/f",
            filter_values={"G": '"rock"'},
        )
        client.get_similar_items("campaigns/c", "i1", num_results=3)
    create, swap, settings, recommend, similar = recommendations.requests
    assert create.campaign.solution_version == "solutions/s/versions/v1"
    assert create.campaign.exploration_config.exploration_weight == pytest.approx(0.3)
    assert create.campaign.enable_metadata_with_recommendations
    assert list(swap.update_mask.paths) == ["solution_version"]
    assert swap.campaign.solution_version == "solutions/s/versions/v2"
    assert list(settings.update_mask.paths) == [
        "exploration_config.exploration_item_age_cutoff_days",
        "enable_metadata_with_recommendations",
    ]
    assert recommend.include_interacted and list(recommend.metadata_columns) == ["TITLE"]
    assert dict(recommend.filter_values) == {"G": '"rock"'}
    assert (similar.item_id, similar.num_results) == ("i1", 3)


def test_calls_spread_round_robin_over_every_resolved_address() -> None:
    """Behind a headless Service a name resolves to every pod; the client must use them all."""
    from concurrent import futures

    from foretell.client import Client

    hits = [0, 0]
    servers, ports = [], []
    for i in range(2):

        def answer(request: bytes, context: grpc.ServicerContext, i: int = i) -> bytes:
            hits[i] += 1
            return b""

        server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
        handler = grpc.unary_unary_rpc_method_handler(answer)  # raw bytes in and out
        server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler("foretell.v1.ForecastQueryService", {"QueryForecast": handler}),)
        )
        ports.append(server.add_insecure_port("127.0.0.1:0"))
        server.start()
        servers.append(server)
    try:
        with Client(f"ipv4:127.0.0.1:{ports[0]},127.0.0.1:{ports[1]}", timeout=5) as client:
            for _ in range(10):
                client.query_forecast("forecasts/f", "item")
        assert hits[0] >= 3 and hits[1] >= 3, hits
    finally:
        for server in servers:
            server.stop(None)
