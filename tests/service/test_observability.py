"""Prometheus metrics on /metrics and OpenTelemetry spans, from a real server on port 0.

Metrics live in the process-wide default registry (one server per process in production), and
other tests in this process add to it, so the assertions compare scrapes before and after.
"""

from __future__ import annotations

import importlib.util
import socket
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import grpc
import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind
from prometheus_client.parser import text_string_to_metric_families

from foretell.core import tracing
from foretell.core.settings import Settings
from foretell.runtime.server import create_server
from foretell.v1 import dataset_service_pb2 as dapi
from foretell.v1 import forecast_query_service_pb2, forecast_query_service_pb2_grpc, training_pb2
from foretell.v1 import recommendation_pb2 as rpb
from foretell.v1 import recommendation_service_pb2 as rapi
from foretell.v1 import training_service_pb2 as tapi

from support import Stubs, interactions_csv, make_recommendation_group, start_stubs, upload

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(port: int) -> Samples:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        assert response.status == 200
        text = response.read().decode()
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    """The sum of `name` over the samples whose labels include `labels` (0 when there are none)."""
    wanted = set(labels.items())
    return sum(v for (n, lbl), v in samples.items() if n == name and wanted <= lbl)


@pytest.fixture
def observed(tmp_path: Path) -> Iterator[Stubs]:
    stubs = start_stubs(Settings(port=0, data_dir=tmp_path / "data", metrics_port=0))
    yield stubs
    stubs.channel.close()
    stubs.app.stop(None)


def test_metrics_count_calls_by_method_and_code_and_follow_campaigns(observed: Stubs) -> None:
    stubs = observed
    assert stubs.app.metrics is not None
    port = stubs.app.metrics.port
    before = scrape(port)

    group = make_recommendation_group(stubs, "metered")
    with pytest.raises(grpc.RpcError) as missing:
        stubs.datasets.GetDatasetGroup(dapi.GetDatasetGroupRequest(name="datasetGroups/nope"), timeout=5)
    assert missing.value.code() == grpc.StatusCode.NOT_FOUND
    imported = stubs.wait(upload(stubs, group.interactions, interactions_csv(300, users=20, items=40)))
    assert not imported.HasField("error"), imported.error
    stubs.training.CreateSolution(
        tapi.CreateSolutionRequest(
            solution_id="metered",
            solution=training_pb2.Solution(dataset_group=group.name, recipe="popularity-count"),
        ),
        timeout=10,
    )
    trained = stubs.wait(
        stubs.training.CreateSolutionVersion(tapi.CreateSolutionVersionRequest(parent="solutions/metered"), timeout=10),
        timeout=120,
    )
    assert not trained.HasField("error"), trained.error
    version = stubs.training.ListSolutionVersions(
        tapi.ListSolutionVersionsRequest(parent="solutions/metered"), timeout=5
    ).solution_versions[0]
    deployed = stubs.wait(
        stubs.recommendations.CreateCampaign(
            rapi.CreateCampaignRequest(campaign_id="metered", campaign=rpb.Campaign(solution_version=version.name)),
            timeout=10,
        ),
        timeout=60,
    )
    assert not deployed.HasField("error"), deployed.error
    answer = stubs.recommendations.GetRecommendations(
        rapi.GetRecommendationsRequest(campaign="campaigns/metered", user_id="u1", num_results=5), timeout=5
    )
    assert answer.item_list

    after = scrape(port)

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    dataset = {"grpc_service": "foretell.v1.DatasetService"}
    assert delta("grpc_server_handled_total", **dataset, grpc_method="GetDatasetGroup", grpc_code="NOT_FOUND") == 1
    assert delta("grpc_server_handled_total", **dataset, grpc_method="CreateDatasetGroup", grpc_code="OK") == 1
    assert delta("grpc_server_started_total", **dataset, grpc_method="CreateDataset", grpc_type="unary") == 2
    # The streamed upload is one client-streaming call.
    assert delta("grpc_server_handled_total", **dataset, grpc_method="ImportData", grpc_type="client_stream") == 1
    recs = {"grpc_service": "foretell.v1.RecommendationService", "grpc_method": "GetRecommendations"}
    assert delta("grpc_server_handled_total", **recs, grpc_code="OK") == 1
    # A latency histogram per method: every bucket counts the call once (it took less than 60 s).
    assert delta("grpc_server_handling_seconds_count", **recs) == 1
    assert delta("grpc_server_handling_seconds_bucket", **recs, le="60.0") == 1
    assert delta("grpc_server_handling_seconds_bucket", **recs, le="+Inf") == 1
    assert 0 < delta("grpc_server_handling_seconds_sum", **recs) < 5
    # Nothing is in flight between calls (the scrape itself is HTTP, not gRPC).
    assert value(after, "foretell_rpc_in_flight", **recs) == 0
    assert delta("foretell_import_rows_total", table="interactions") == 300
    assert delta("foretell_training_job_duration_seconds_count", kind="solution-version", outcome="SUCCEEDED") == 1
    # The campaign's model, then nothing once the campaign is deleted.
    assert value(after, "foretell_campaign_solution_version_info", campaign="campaigns/metered") == 1
    assert value(after, "foretell_campaign_solution_version_info", solution_version=version.name) == 1
    stubs.recommendations.DeleteCampaign(rapi.DeleteCampaignRequest(name="campaigns/metered"), timeout=10)
    assert value(scrape(port), "foretell_campaign_solution_version_info", campaign="campaigns/metered") == 0


def test_metrics_are_off_unless_a_port_is_set(stubs: Stubs) -> None:
    assert stubs.app.metrics is None


def test_a_taken_metrics_port_stops_the_start_with_a_reason(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(SystemExit, match=f"cannot serve metrics on 127.0.0.1:{port}"):
            create_server(Settings(port=0, data_dir=tmp_path / "data", metrics_port=port))


@pytest.fixture(scope="module")
def spans() -> Iterator[InMemorySpanExporter]:
    """An SDK tracer provider for this process (it can be set only once; later tests find it in place)."""
    provider = trace.get_tracer_provider()
    if not isinstance(provider, TracerProvider):
        provider = TracerProvider()
        trace.set_tracer_provider(provider)
    exporter = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    time.sleep(tracing.PROVIDER_RECHECK_SECONDS)  # running servers notice a provider set after they started
    yield exporter
    exporter.shutdown()  # stops recording: other tests' spans are not kept


def test_rpcs_and_their_peer_calls_are_traced_as_one_trace(stubs: Stubs, spans: InMemorySpanExporter) -> None:
    spans.clear()
    query = forecast_query_service_pb2_grpc.ForecastQueryServiceStub(stubs.channel)
    caller_trace = 0x0AF7651916CD43DD8448EB211C80319C
    traceparent = f"00-{caller_trace:032x}-b7ad6b7169203331-01"
    with pytest.raises(grpc.RpcError) as missing:
        # QueryForecast asks the training service (a peer, here over loopback) where the forecast is.
        query.QueryForecast(
            forecast_query_service_pb2.QueryForecastRequest(forecast="forecasts/nope", item_id="a"),
            timeout=10,
            metadata=[("traceparent", traceparent)],
        )
    assert missing.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.RpcError):
        stubs.recommendations.GetRecommendations(
            rapi.GetRecommendationsRequest(campaign="campaigns/nope", user_id="u"), timeout=5
        )

    finished = spans.get_finished_spans()
    by_name = {(s.name, s.kind): s for s in finished}
    server = by_name[("foretell.v1.ForecastQueryService/QueryForecast", SpanKind.SERVER)]
    client = by_name[("foretell.v1.TrainingService/GetForecast", SpanKind.CLIENT)]
    peer = by_name[("foretell.v1.TrainingService/GetForecast", SpanKind.SERVER)]
    # One trace, continued from the caller's traceparent: caller -> server -> client -> peer's server.
    assert {server.context.trace_id, client.context.trace_id, peer.context.trace_id} == {caller_trace}
    assert server.parent is not None and server.parent.span_id == 0xB7AD6B7169203331
    assert client.parent is not None and client.parent.span_id == server.context.span_id
    assert peer.parent is not None and peer.parent.span_id == client.context.span_id
    assert server.attributes is not None and peer.attributes is not None
    assert server.attributes["rpc.system"] == "grpc"
    assert server.attributes["rpc.service"] == "foretell.v1.ForecastQueryService"
    assert server.attributes["rpc.method"] == "QueryForecast"
    assert server.attributes["rpc.grpc.status_code"] == grpc.StatusCode.NOT_FOUND.value[0]
    assert peer.attributes["rpc.grpc.status_code"] == grpc.StatusCode.NOT_FOUND.value[0]

    recs = by_name[("foretell.v1.RecommendationService/GetRecommendations", SpanKind.SERVER)]
    assert recs.attributes is not None and recs.attributes["rpc.method"] == "GetRecommendations"
    assert recs.attributes["rpc.grpc.status_code"] != grpc.StatusCode.OK.value[0]
    assert recs.parent is None and recs.context.trace_id != caller_trace  # no traceparent: a new trace


@pytest.mark.parametrize("overlay", ["base", "overlays/cpu", "overlays/gpu"])
def test_kubernetes_pods_expose_metrics_to_scrapers_only(overlay: str) -> None:
    """The manifests agree with each other: the settings' metrics port is each pod's `metrics` port and its
    scrape annotation, and the NetworkPolicies let a labelled scraper (only) reach it."""
    k8s = _k8s_manifests()
    docs = k8s.RENDERED[overlay]
    settings = next(d for d in k8s.of_kind(docs, "ConfigMap") if d["metadata"]["name"] == "foretell-settings")
    port = int(settings["data"]["FORETELL_METRICS_PORT"])
    scraper = ("monitoring", {"foretell.dev/scraper": "true"})
    stranger = ("monitoring", {"app": "something-else"})
    for name in k8s.SERVICES:
        deployment = next(d for d in k8s.of_kind(docs, "Deployment") if d["metadata"]["name"] == name)
        template = deployment["spec"]["template"]
        assert template["metadata"]["annotations"]["prometheus.io/port"] == str(port)
        ports = template["spec"]["containers"][0]["ports"]
        assert {"name": "metrics", "containerPort": port, "protocol": "TCP"} in ports
        pod = k8s.pod_of(docs, name)
        assert k8s.allowed(docs, scraper, pod, port), name
        assert not k8s.allowed(docs, stranger, pod, port), name
        assert not k8s.allowed(docs, scraper, pod, 50051), name  # scraping opens no gRPC access


def _k8s_manifests() -> ModuleType:
    """tests/unit/test_k8s_manifests.py: its kustomize renderer and NetworkPolicy evaluator."""
    name = "test_k8s_manifests"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, Path(__file__).parents[1] / "unit" / f"{name}.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]
