"""Every RPC of every foretell.v1 service (and google.longrunning.Operations) fuzzed over one real server.

The RPCs are enumerated from the generated descriptors, so a new RPC is fuzzed without touching this
file. Requests come from `proto_strategies`: hostile strings (injection payloads, NUL, control
characters, unicode, very long runs), extreme numbers, unknown enums, out-of-range timestamps, nested
messages, repeated fields and maps, plus the names of the seeded resources and mutations of them.
Half the requests are "plausible" (REQUIRED fields set, names of the right kind, one hostile field
among good ones) so that the fuzzer gets past the first check.

Invariants of every call: a status from ALLOWED (never UNKNOWN or INTERNAL), a rich status with
ErrorInfo and no traceback on errors, a BadRequest naming a field that exists in the request message
on INVALID_ARGUMENT. After each RPC's run the server is healthy and a known-good recommendation
(through a seeded filter) and forecast query give the answers recorded at seeding; at the end every
seeded resource is still there. Deleting and updating RPCs never get a seeded resource's name.

Deterministic in CI: derandomized, no example database. FORETELL_FUZZ_EXAMPLES raises the examples per RPC.
"""

from __future__ import annotations

import csv
import io
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.longrunning import operations_pb2
from google.protobuf import message_factory
from google.protobuf.descriptor import Descriptor, FieldDescriptor, MethodDescriptor
from google.protobuf.message import Message
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_status import rpc_status
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from proto_strategies import INJECTIONS, MessageStrategies, field_path_exists, string_values, strings

from foretell.core.settings import Settings
from foretell.v1 import (
    dataset_service_pb2,
    event_feed_service_pb2,
    forecast_query_service_pb2,
    recommendation_pb2,
    recommendation_service_pb2,
    training_pb2,
    training_service_pb2,
)

from errors import reason_of, violations_of
from support import Stubs, daily_csv, make_forecasting_group, make_recommendation_group, start_stubs, upload

PROTO_DIR = Path(__file__).resolve().parents[2] / "protos" / "foretell" / "v1"
FILES = (
    dataset_service_pb2,
    event_feed_service_pb2,
    recommendation_service_pb2,
    training_service_pb2,
    forecast_query_service_pb2,
)
SERVICES = [s for f in FILES for s in f.DESCRIPTOR.services_by_name.values()]
SERVICES.append(operations_pb2.DESCRIPTOR.services_by_name["Operations"])
METHODS = [m for s in SERVICES for m in s.methods]

C = grpc.StatusCode
# UNIMPLEMENTED is not allowed: every RPC of the contract is served. UNAVAILABLE / DEADLINE_EXCEEDED are
# not either: the server is in-process and local. CANCELLED only for streams we stop ourselves.
ALLOWED = {
    C.OK,
    C.INVALID_ARGUMENT,
    C.NOT_FOUND,
    C.FAILED_PRECONDITION,
    C.ALREADY_EXISTS,
    C.PERMISSION_DENIED,
    C.UNAUTHENTICATED,
    C.RESOURCE_EXHAUSTED,
    C.OUT_OF_RANGE,
    C.ABORTED,
}
EXAMPLES = int(os.environ.get("FORETELL_FUZZ_EXAMPLES", "25"))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much, HealthCheck.data_too_large],
)

GROUP, FORECAST_GROUP = "datasetGroups/fuzz-shop", "datasetGroups/fuzz-sales"
CAMPAIGN, FILTER, SOLUTION = "campaigns/fuzz-pop", "filters/fuzz-genre", "solutions/fuzz-pop"
PREDICTOR, FORECAST = "predictors/fuzz-daily", "forecasts/fuzz-next"
# Ids no generated string will equal, so PutEvents/PutItems cannot change the known-good answers.
USERS, ITEMS, GENRES = 25, 40, ("g-rock", "g-jazz", "g-pop")


@dataclass
class Seed:
    stubs: Stubs
    names: list[str]  # every seeded resource name
    recommendation: recommendation_service_pb2.GetRecommendationsResponse
    query: forecast_query_service_pb2.QueryForecastResponse
    tmp: Path


def _interactions() -> bytes:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["USER_ID", "ITEM_ID", "TIMESTAMP", "EVENT_TYPE"])
    for u in range(USERS):
        for k in range(8):
            writer.writerow(
                [f"seed-user-{u}", f"seed-item-{(u * 3 + k * k) % ITEMS}", 1_700_000_000 + u * 10 + k, "click"]
            )
    return out.getvalue().encode()


def _items() -> bytes:
    rows = ["ITEM_ID,GENRES,PRICE"] + [f"seed-item-{i},{GENRES[i % 3]},{i}" for i in range(ITEMS)]
    return ("\n".join(rows) + "\n").encode()


def _done(stubs: Stubs, op: operations_pb2.Operation, timeout: float = 120) -> operations_pb2.Operation:
    done = stubs.wait(op, timeout=timeout)
    assert not done.HasField("error"), done.error
    return done


def _known_recommendation(stubs: Stubs) -> recommendation_service_pb2.GetRecommendationsResponse:
    answer = stubs.recommendations.GetRecommendations(
        recommendation_service_pb2.GetRecommendationsRequest(
            campaign=CAMPAIGN, user_id="seed-user-1", num_results=10, filter=FILTER, filter_values={"G": '"g-jazz"'}
        ),
        timeout=10,
    )
    answer.ClearField("recommendation_id")
    return answer


def _known_query(stubs: Stubs) -> forecast_query_service_pb2.QueryForecastResponse:
    query = grpc_stub(stubs, forecast_query_service_pb2.DESCRIPTOR.services_by_name["ForecastQueryService"])
    return query["QueryForecast"](
        forecast_query_service_pb2.QueryForecastRequest(forecast=FORECAST, dimensions={"store": "south"}), timeout=10
    )


def grpc_stub(stubs: Stubs, service: Any) -> dict[str, Any]:
    out = {}
    for method in service.methods:
        path = f"/{service.full_name}/{method.name}"
        response = message_factory.GetMessageClass(method.output_type).FromString
        kind = _kind(method)
        factory = getattr(stubs.channel, kind)
        out[method.name] = factory(path, request_serializer=_serialize, response_deserializer=response)
    return out


def _serialize(message: Message | bytes) -> bytes:
    return message if isinstance(message, bytes) else message.SerializeToString()


def _kind(method: MethodDescriptor) -> str:
    client, server = method.client_streaming, method.server_streaming
    return {(False, False): "unary_unary", (False, True): "unary_stream", (True, False): "stream_unary"}[
        (client, server)
    ]


@pytest.fixture(scope="module")
def seed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Seed]:
    tmp = tmp_path_factory.mktemp("fuzz")
    for name, data in READABLE.items():
        (tmp / name).write_bytes(data)
    # tmp is the one file root (the caller's area: auth is off); it also holds the server's data directory,
    # which file_roots must keep out of reach.
    settings = Settings(
        port=0, data_dir=tmp / "data", training_workers=1, import_roots=[tmp], export_roots=[tmp]
    )
    stubs = start_stubs(settings)
    try:
        group = make_recommendation_group(stubs, "fuzz-shop")
        _done(stubs, upload(stubs, group.interactions, _interactions()))
        _done(stubs, upload(stubs, group.items, _items()))
        t, r = stubs.training, stubs.recommendations
        t.CreateSolution(
            training_service_pb2.CreateSolutionRequest(
                solution_id="fuzz-pop",
                solution=training_pb2.Solution(dataset_group=GROUP, recipe="popularity-count"),
            ),
            timeout=10,
        )
        version = training_pb2.SolutionVersion()
        _done(
            stubs,
            t.CreateSolutionVersion(training_service_pb2.CreateSolutionVersionRequest(parent=SOLUTION), timeout=10),
        ).response.Unpack(version)
        r.CreateFilter(
            recommendation_service_pb2.CreateFilterRequest(
                filter_id="fuzz-genre",
                filter=recommendation_pb2.Filter(
                    dataset_group=GROUP, filter_expression="EXCLUDE ItemID WHERE Items.GENRES IN ($G)"
                ),
            ),
            timeout=10,
        )
        _done(
            stubs,
            r.CreateCampaign(
                recommendation_service_pb2.CreateCampaignRequest(
                    campaign_id="fuzz-pop",
                    campaign=recommendation_pb2.Campaign(
                        solution_version=version.name, enable_metadata_with_recommendations=True
                    ),
                ),
                timeout=10,
            ),
        )
        make_forecasting_group(stubs, "fuzz-sales", daily_csv(items=3, days=42))
        predictor = training_pb2.Predictor(
            dataset_group=FORECAST_GROUP,
            algorithm="seasonal-naive",
            forecast_horizon=7,
            forecast_frequency="D",
            forecast_dimensions=["store"],
        )
        _done(
            stubs,
            t.CreatePredictor(
                training_service_pb2.CreatePredictorRequest(predictor_id="fuzz-daily", predictor=predictor),
                timeout=10,
            ),
        )
        forecast = training_pb2.Forecast(predictor=PREDICTOR)
        forecast_op = t.CreateForecast(
            training_service_pb2.CreateForecastRequest(forecast_id="fuzz-next", forecast=forecast), timeout=10
        )
        _done(stubs, forecast_op)
        names = [
            GROUP,
            FORECAST_GROUP,
            group.interactions,
            group.items,
            f"{FORECAST_GROUP}/datasets/sales",
            "schemas/fuzz-shop-interactions",
            "schemas/fuzz-shop-items",
            "schemas/fuzz-sales-target",
            SOLUTION,
            version.name,
            CAMPAIGN,
            FILTER,
            PREDICTOR,
            FORECAST,
            forecast_op.name,
        ]
        recommendation = _known_recommendation(stubs)
        assert len(recommendation.item_list) == 10
        query = _known_query(stubs)
        assert sorted(s.item_id for s in query.series) == ["item0", "item2"]
        yield Seed(stubs, names, recommendation, query, tmp)
    finally:
        stubs.channel.close()
        stubs.app.stop(None)


# ---- strategies -------------------------------------------------------------------------------------

_WRITTEN_URIS = ("destination_uri", "output_uri")
# Files the read URIs may name: a good items CSV, a bad header, user ids for batch inference.
READABLE = {
    "items.csv": _items(),
    "bad-header.csv": b"NOPE,ITEM_ID,\x00\n1,2,3\n",
    "users.jsonl": b'{"userId": "seed-user-1"}\n{"userId": "\\u0000\\" OR 1=1"}\nnot json\n',
}


def _uris(tmp: Path, write: bool) -> st.SearchStrategy[str]:
    """URIs that stay inside `tmp` when they could be written: the server writes wherever a client asks."""
    inside = st.builds(
        lambda payload, suffix: f"{tmp}/{payload.replace('/', '_').replace(chr(0), '')[:60]}{suffix}",
        st.sampled_from(INJECTIONS),
        st.sampled_from(["", ".csv", ".jsonl", "/x.csv"]),
    )
    hostile = st.sampled_from(
        ["", "http://example.invalid/x.csv", "s3://", "s3://b", "s3://a/../x", "file://", "ftp://x", "\x00"]
        + ["/etc/passwd", "/proc/self/environ", "../x.csv", f"{tmp}/../x.csv", f"{tmp}/data/foretell.db"]
    )
    if write:
        return st.one_of(inside, hostile, st.builds(lambda p: f"file://{tmp}/{p}", st.sampled_from(["a.csv", "../"])))
    files = [f"{tmp}/{name}" for name in READABLE]
    return st.one_of(inside, hostile, strings(), st.sampled_from([*files, *(f"file://{f}" for f in files)]))


_VERBS = {"Create", "Get", "List", "Delete", "Update", "Cancel", "Wait", "Export", "Import", "Put", "Watch", "Query"}


# Plausible values by field name, so that requests get past the first check to the code behind it.
_PLAUSIBLE: dict[str, st.SearchStrategy[str]] = {
    "user_id": st.sampled_from(["seed-user-1", "seed-user-2", "someone-new"]),
    "item_id": st.sampled_from(["seed-item-3", "seed-item-4", "item0", "item2"]),
    "input_list": st.sampled_from(["seed-item-3", "seed-item-4", "nope"]),
    "session_id": st.just("s1"),
    "event_type": st.just("click"),
    "recipe": st.sampled_from(["popularity-count", "sims"]),
    "algorithm": st.sampled_from(["seasonal-naive", "naive"]),
    "forecast_frequency": st.just("D"),
    "forecast_dimensions": st.just("store"),
    "page_token": st.just(""),
    "request_id": st.from_regex(r"[A-Za-z0-9._:-]{1,20}", fullmatch=True),
    "filter_expression": st.builds(
        lambda value: f"EXCLUDE ItemID WHERE Items.GENRES IN ({value}) | INCLUDE ItemID WHERE Items.PRICE < $P",
        st.sampled_from(
            ['"g-rock"', "$G", *('"' + p.replace("\\", "\\\\").replace('"', '\\"') + '"' for p in INJECTIONS)]
        ),
    ),
}


# Which seeded names suit a field that names a resource of one kind.
_COLLECTION = {
    "campaign": "campaigns/",
    "filter": "filters/",
    "predictor": "predictors/",
    "forecast": "forecasts/",
    "schema": "schemas/",
    "solution_version": "/versions/",
    "dataset_group": "datasetGroups/",
    "dataset": "/datasets/",
}


def _of_kind(names: list[str], field_name: str) -> list[str]:
    marker = _COLLECTION.get(field_name)
    if marker is None:
        return []
    return [n for n in names if marker in n and not (field_name == "dataset_group" and "/datasets/" in n)]


def _strategies(seed: Seed, method: MethodDescriptor, plausible: bool = False) -> MessageStrategies:
    # Names of the resources the RPC is about ("Operation" in WaitOperation) come up more often.
    nouns = [w.lower() for w in re.findall(r"[A-Z][a-z]+", method.name) if w not in _VERBS]
    favoured = [n for n in seed.names if any(w in n.lower() for w in nouns)]
    pool = strings(seed.names, favoured)
    uris = {name: _uris(seed.tmp, name in _WRITTEN_URIS) for name in ("source_uri", "input_uri", *_WRITTEN_URIS)}
    new_ids = st.from_regex(r"[a-z][a-z0-9-]{0,20}", fullmatch=True)

    def strings_for(field: FieldDescriptor) -> st.SearchStrategy[str]:
        if field.name in uris:
            return uris[field.name]
        if not plausible:
            return pool
        # Mostly plausible, sometimes hostile: usually one bad field among good ones.
        names = st.sampled_from(_of_kind(seed.names, field.name) or favoured or seed.names)
        good = _PLAUSIBLE.get(field.name, new_ids if field.name.endswith("_id") else names)
        return st.one_of(good, good, good, pool)

    return MessageStrategies(strings_for, max_depth=4, max_repeated=3, plausible=plausible)


def _protected(method: MethodDescriptor) -> bool:
    """RPCs that would legitimately delete or change a seeded resource given its name."""
    return method.name.startswith(("Delete", "Update"))


def _touches_seed(seed: Seed, request: Message) -> bool:
    values = set(string_values(request))
    return any(name in values for name in seed.names)


# ---- invariants ---------------------------------------------------------------------------------------


def _check(method: MethodDescriptor, request_type: Descriptor, error: grpc.RpcError | None, raw: bool = False) -> None:
    if error is None:
        return
    code = error.code()
    where = f"{method.full_name} -> {code}: {error.details()!r}"
    assert code in ALLOWED, where
    assert "Traceback" not in (error.details() or ""), where
    status = rpc_status.from_call(error)  # also checks that code and message agree with the rich status
    assert status is not None, f"no google.rpc.Status attached: {where}"
    assert reason_of(status), f"no ErrorInfo: {where}"
    if code == C.INVALID_ARGUMENT:
        fields = violations_of(status)
        assert fields, f"INVALID_ARGUMENT without BadRequest field violations: {where}"
        for field, description in fields.items():
            if raw and field == "request":  # bytes that are no message of the type at all
                assert "not a valid protobuf message" in description, where
                continue
            assert field_path_exists(request_type, field), (
                f"violation of {field!r}, not a field of the request: {where}"
            )


def _call(seed: Seed, method: MethodDescriptor, request: Any) -> grpc.RpcError | None:
    stub = grpc_stub(seed.stubs, method.containing_service)[method.name]
    try:
        if method.server_streaming:
            # WatchEvents streams until cancelled: read a little, then stop it ourselves.
            responses = stub(request, timeout=0.2)
            try:
                for _, _response in zip(range(3), responses, strict=False):
                    pass
            finally:
                responses.cancel()
        elif method.client_streaming:
            stub(iter(request), timeout=10)
        else:
            # WaitOperation waits up to the request's timeout; the call's deadline bounds it.
            response = stub(request, timeout=0.2 if method.name == "WaitOperation" else 10)
            if isinstance(response, operations_pb2.Operation) and not response.done:
                # A job the fuzzer started (training, export...): stop it so the CPU stays free.
                seed.stubs.operations.CancelOperation(operations_pb2.CancelOperationRequest(name=response.name))
    except grpc.RpcError as error:
        if error.code() in (C.CANCELLED, C.DEADLINE_EXCEEDED) and method.server_streaming:
            return None
        if error.code() == C.DEADLINE_EXCEEDED and method.name == "WaitOperation":
            return None
        return error
    return None


def _requests(seed: Seed, method: MethodDescriptor) -> st.SearchStrategy[Any]:
    messages = st.one_of(
        _strategies(seed, method).for_message(method.input_type),
        _strategies(seed, method, plausible=True).for_message(method.input_type),
    )
    if not method.client_streaming:
        return messages
    # ImportData: a config (often naming a seeded dataset) then CSV-ish or random chunks, all bounded.
    config = _strategies(seed, method).for_message(dataset_service_pb2.ImportDataConfig.DESCRIPTOR)
    header = st.sampled_from(
        [b"USER_ID,ITEM_ID,TIMESTAMP\n", b"ITEM_ID,GENRES,PRICE\n", b"ITEM_ID,TIMESTAMP,TARGET_VALUE\n"]
    )
    rows = st.lists(
        st.builds(
            lambda cells: ",".join(cells).encode("utf-8", "surrogatepass") + b"\n", st.lists(strings(), max_size=4)
        ),
        max_size=4,
    )
    chunk = st.one_of(st.binary(max_size=64), rows.map(b"".join))
    csvish = st.builds(
        lambda c, h, body: [
            dataset_service_pb2.ImportDataRequest(config=c),
            dataset_service_pb2.ImportDataRequest(chunk=h),
            *(dataset_service_pb2.ImportDataRequest(chunk=b) for b in body),
        ],
        config,
        header,
        st.lists(chunk, max_size=3),
    )
    return st.one_of(st.lists(messages, max_size=4), csvish)


def _assert_seed_intact(seed: Seed) -> None:
    stubs = seed.stubs
    health = health_pb2_grpc.HealthStub(stubs.channel).Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
    assert health.status == health_pb2.HealthCheckResponse.SERVING
    assert _known_recommendation(stubs) == seed.recommendation
    assert _known_query(stubs) == seed.query


# ---- tests --------------------------------------------------------------------------------------------


def test_every_rpc_of_the_contract_is_fuzzed() -> None:
    """Every .proto service file is enumerated here; generated code and protos agree on the RPCs."""
    files = {f.DESCRIPTOR.name.rsplit("/", 1)[-1] for f in FILES}
    with_services = {p.name for p in PROTO_DIR.glob("*.proto") if "\nservice " in p.read_text()}
    assert files == with_services
    assert len({m.full_name for m in METHODS}) == len(METHODS) > 50


@pytest.mark.parametrize("method", METHODS, ids=[m.full_name for m in METHODS])
def test_fuzzed_requests_get_a_clear_answer(seed: Seed, method: MethodDescriptor) -> None:
    protected = _protected(method)

    @FUZZ
    @given(request=_requests(seed, method))
    def run(request: Any) -> None:
        if protected and _touches_seed(seed, request):
            return
        _check(method, method.input_type, _call(seed, method, request))

    run()
    _assert_seed_intact(seed)


UNARY = [m for m in METHODS if not m.client_streaming and not m.server_streaming]


@pytest.mark.parametrize("method", UNARY, ids=[m.full_name for m in UNARY])
def test_undecodable_bytes_get_invalid_argument(seed: Seed, method: MethodDescriptor) -> None:
    """Raw bytes that are no message of the type, and invalid UTF-8 in a string field (named in the answer)."""
    stub = grpc_stub(seed.stubs, method.containing_service)[method.name]
    timeout = 0.2 if method.name == "WaitOperation" else 10

    @settings(FUZZ, max_examples=max(4, EXAMPLES // 4))
    @given(data=st.binary(min_size=1, max_size=48))
    def run(data: bytes) -> None:
        try:
            stub(data, timeout=timeout)
        except grpc.RpcError as error:
            _check(method, method.input_type, error, raw=True)

    run()
    text = next(f for f in method.input_type.fields if f.type == FieldDescriptor.TYPE_STRING and not f.is_repeated)
    with pytest.raises(grpc.RpcError) as info:
        stub(bytes([(text.number << 3) | 2, 2, 0xC3, 0x28]), timeout=timeout)
    _check(method, method.input_type, info.value, raw=True)
    assert info.value.code() == C.INVALID_ARGUMENT and text.name in violations_of(rpc_status.from_call(info.value))


def _quoted(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def test_injected_filter_values_are_data_end_to_end(seed: Seed) -> None:
    """A payload in a filter literal or a $PARAMETER value only ever matches an item with that very id."""
    r = seed.stubs.recommendations
    payloads = [
        '" OR ITEM_ID != "',
        '") | EXCLUDE ItemID WHERE Items.GENRES NOT IN ("x',
        "' OR 1=1 --",
        '\\" OR 1=1 --',
    ]
    literal = "INCLUDE ItemID WHERE Items.ITEM_ID IN (" + ", ".join(map(_quoted, ["seed-item-3", *payloads])) + ")"
    for filter_id, expression in (
        ("fuzz-literal", literal),
        ("fuzz-param", "INCLUDE ItemID WHERE Items.ITEM_ID IN ($IDS)"),
    ):
        r.CreateFilter(
            recommendation_service_pb2.CreateFilterRequest(
                filter_id=filter_id,
                filter=recommendation_pb2.Filter(dataset_group=GROUP, filter_expression=expression),
            ),
            timeout=10,
        )
    for payload in payloads:
        for name, values in (
            ("filters/fuzz-literal", {}),
            ("filters/fuzz-param", {"IDS": f'"seed-item-3",{_quoted(payload)}'}),
        ):
            answer = r.GetRecommendations(
                recommendation_service_pb2.GetRecommendationsRequest(
                    campaign=CAMPAIGN, user_id="someone-new", num_results=50, filter=name, filter_values=values
                ),
                timeout=10,
            )
            assert [i.item_id for i in answer.item_list] == ["seed-item-3"], (name, payload)


def test_nothing_seeded_was_deleted_or_changed(seed: Seed) -> None:
    """Runs last: the seeded groups are listed, every seeded resource answers, answers are unchanged."""
    stubs = seed.stubs
    _assert_seed_intact(seed)
    listed = stubs.datasets.ListDatasetGroups(dataset_service_pb2.ListDatasetGroupsRequest(page_size=1000), timeout=5)
    assert {GROUP, FORECAST_GROUP} <= {g.name for g in listed.dataset_groups}
    assert stubs.datasets.GetDataset(dataset_service_pb2.GetDatasetRequest(name=f"{GROUP}/datasets/items"), timeout=5)
    schema = stubs.datasets.GetSchema(dataset_service_pb2.GetSchemaRequest(name="schemas/fuzz-shop-items"), timeout=5)
    assert [f.name for f in schema.fields][:2] == ["ITEM_ID", "GENRES"]
    campaign = stubs.recommendations.GetCampaign(
        recommendation_service_pb2.GetCampaignRequest(name=CAMPAIGN), timeout=5
    )
    assert campaign.state == recommendation_pb2.DEPLOYMENT_STATE_ACTIVE
    got = stubs.recommendations.GetFilter(recommendation_service_pb2.GetFilterRequest(name=FILTER), timeout=5)
    assert got.filter_expression == "EXCLUDE ItemID WHERE Items.GENRES IN ($G)"
    t = stubs.training
    assert t.GetSolution(training_service_pb2.GetSolutionRequest(name=SOLUTION), timeout=5).latest_solution_version
    assert t.GetPredictor(training_service_pb2.GetPredictorRequest(name=PREDICTOR), timeout=5).state == (
        training_pb2.TRAINING_STATE_SUCCEEDED
    )
    assert t.GetForecast(training_service_pb2.GetForecastRequest(name=FORECAST), timeout=5).series_count == 3
    # The injected SQL left the interactions table intact: a group still lists its datasets and rows.
    datasets = stubs.datasets.ListDatasets(dataset_service_pb2.ListDatasetsRequest(parent=GROUP), timeout=5)
    assert {d.name.rsplit("/", 1)[-1] for d in datasets.datasets} >= {"interactions", "items"}
