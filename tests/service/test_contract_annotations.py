"""The contract's annotations are there and true: google.longrunning.operation_info on every long-running RPC,
google.api.resource on every resource, google.api.resource_reference on every field that names one.

RPCs, resources and fields come from the descriptors, so a new one is covered (and fails here until it is
annotated). The server then runs every long-running RPC for real, once each: what its operations pack is
compared with what operation_info names (what clients now read instead of hard-coding it), and the name of
every resource it issues with its resource pattern.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from google.api import resource_pb2
from google.longrunning import operations_pb2
from google.protobuf.descriptor import Descriptor, FieldDescriptor, MethodDescriptor
from google.protobuf.message import Message

from foretell.client import operation_response, operation_types
from foretell.core.settings import Settings
from foretell.v1 import (
    common_pb2,
    dataset_pb2,
    dataset_service_pb2,
    event_feed_service_pb2,
    forecast_query_service_pb2,
    recommendation_pb2,
    recommendation_service_pb2,
    training_pb2,
    training_service_pb2,
)

from support import Stubs, daily_csv, interactions_csv, make_forecasting_group, make_recommendation_group, start_stubs

FILES = (
    dataset_service_pb2,
    event_feed_service_pb2,
    recommendation_service_pb2,
    training_service_pb2,
    forecast_query_service_pb2,
)
OPERATION = operations_pb2.Operation.DESCRIPTOR.full_name
LONG_RUNNING = [
    m
    for f in FILES
    for s in f.DESCRIPTOR.services_by_name.values()
    for m in s.methods
    if m.output_type.full_name == OPERATION
]


def test_the_descriptors_have_long_running_rpcs() -> None:
    assert len(LONG_RUNNING) >= 10, [m.full_name for m in LONG_RUNNING]


@pytest.mark.parametrize("method", LONG_RUNNING, ids=[m.full_name for m in LONG_RUNNING])
def test_every_long_running_rpc_names_existing_types(method: MethodDescriptor) -> None:
    info = method.GetOptions().Extensions[operations_pb2.operation_info]
    assert info.response_type and info.metadata_type, f"{method.full_name} lacks google.longrunning.operation_info"
    types = operation_types(method)  # resolves both names in the descriptor pool, or raises
    assert types.response.DESCRIPTOR.full_name in (info.response_type, f"foretell.v1.{info.response_type}")
    assert types.metadata is common_pb2.OperationMetadata, "every Foretell operation reports OperationMetadata"


# ---- resources and references ----------------------------------------------------------------------------

MESSAGE_FILES = (*FILES, dataset_pb2, training_pb2, recommendation_pb2)
#: Resources: what a Get* method returns (Get*Response messages are answers, not resources).
RESOURCES = sorted(
    {
        m.output_type
        for f in FILES
        for s in f.DESCRIPTOR.services_by_name.values()
        for m in s.methods
        if m.name.startswith("Get")
        and not m.output_type.name.endswith("Response")
        and m.output_type.full_name.startswith("foretell.")
    },
    key=lambda d: d.full_name,
)
#: String fields that hold a resource name wherever they appear (`name` only in requests: nested it is a column's
#: or a parameter's name, and a resource's own name is its resource annotation's business).
REFERENCE_FIELDS = frozenset(
    {"parent", "dataset_group", "dataset", "schema", "solution_version", "latest_solution_version"}
    | {"campaign", "filter", "predictor", "forecast"}
)


def _resource(message: Descriptor) -> resource_pb2.ResourceDescriptor:
    return message.GetOptions().Extensions[resource_pb2.resource]


def _reference(field: FieldDescriptor) -> resource_pb2.ResourceReference:
    return field.GetOptions().Extensions[resource_pb2.resource_reference]


def _requests() -> list[Descriptor]:
    return [m.input_type for f in FILES for s in f.DESCRIPTOR.services_by_name.values() for m in s.methods]


def _naming_fields() -> list[tuple[str, FieldDescriptor]]:
    """(path, field) of every string field of a request, nested messages included, that names a resource."""
    found: dict[str, FieldDescriptor] = {}

    def walk(message: Descriptor, path: str, top: bool, seen: frozenset[str]) -> None:
        for field in message.fields:
            where = f"{path}.{field.name}"
            if field.type == FieldDescriptor.TYPE_STRING and (
                field.name in REFERENCE_FIELDS or (top and field.name == "name")
            ):
                found[where] = field
            elif (
                field.type == FieldDescriptor.TYPE_MESSAGE
                and field.message_type.full_name.startswith("foretell.")
                and field.message_type.full_name not in seen
            ):
                walk(field.message_type, where, False, seen | {field.message_type.full_name})

    for request in _requests():
        walk(request, request.name, True, frozenset({request.full_name}))
    return sorted(found.items())


NAMING_FIELDS = _naming_fields()
RESOURCE_TYPES = {_resource(m).type: m for m in RESOURCES}


def test_the_descriptors_have_resources_and_naming_fields() -> None:
    assert len(RESOURCES) >= 12, [m.full_name for m in RESOURCES]
    assert len(NAMING_FIELDS) >= 50, [path for path, _ in NAMING_FIELDS]


@pytest.mark.parametrize("message", RESOURCES, ids=[m.full_name for m in RESOURCES])
def test_every_resource_is_annotated(message: Descriptor) -> None:
    resource = _resource(message)
    assert resource.type == f"foretell.io/{message.name}", f"{message.full_name} lacks google.api.resource"
    assert len(resource.pattern) == 1 and resource.plural and resource.singular, resource
    assert "name" in message.fields_by_name, "a resource's name field is `name` (AIP-122)"


@pytest.mark.parametrize("path,field", NAMING_FIELDS, ids=[path for path, _ in NAMING_FIELDS])
def test_every_field_naming_a_resource_references_it(path: str, field: FieldDescriptor) -> None:
    reference = _reference(field)
    named = reference.type or reference.child_type
    assert named, f"{path} lacks google.api.resource_reference"
    assert named in RESOURCE_TYPES, f"{path} references {named!r}, which no resource declares"
    if reference.child_type:  # a parent: the child's pattern has a parent segment to put it in
        assert "/" in RESOURCE_TYPES[named].GetOptions().Extensions[resource_pb2.resource].pattern[0]


def _pattern(message: Descriptor) -> re.Pattern[str]:
    """The resource's name pattern as a regular expression, each {variable} an id as core/names.py checks it."""
    return re.compile(re.sub(r"\{[a-z_]+\}", "[a-z][a-z0-9-]{0,62}", _resource(message).pattern[0]))


# ---- what the server packs -------------------------------------------------------------------------------

GROUP, SALES = "datasetGroups/oi-shop", "datasetGroups/oi-sales"


def _wait(stubs: Stubs, operation: operations_pb2.Operation) -> operations_pb2.Operation:
    done = stubs.wait(operation, timeout=120)
    assert not done.HasField("error"), done.error
    return done


@dataclass
class Ran:
    operations: dict[str, operations_pb2.Operation]  # by the full name of the RPC that started it
    issued: list[Message]  # every kind of resource, as the server answered it


def _run_every_long_running_rpc(stubs: Stubs, tmp: Path) -> Ran:
    """One finished operation per long-running RPC (cheap recipes and data), and a resource of every kind."""
    d, t, r = stubs.datasets, stubs.training, stubs.recommendations
    group = make_recommendation_group(stubs, "oi-shop")
    ran: dict[str, operations_pb2.Operation] = {}

    def run(method: str, call: Callable[[], operations_pb2.Operation]) -> operations_pb2.Operation:
        ran[method] = _wait(stubs, call())
        return ran[method]

    data = interactions_csv(300, seed=3)

    def upload() -> Iterator[dataset_service_pb2.ImportDataRequest]:
        yield dataset_service_pb2.ImportDataRequest(
            config=dataset_service_pb2.ImportDataConfig(dataset=group.interactions)
        )
        yield dataset_service_pb2.ImportDataRequest(chunk=data)

    run("foretell.v1.DatasetService.ImportData", lambda: d.ImportData(upload(), timeout=30))
    (tmp / "more.csv").write_bytes(interactions_csv(50, seed=4))
    run(
        "foretell.v1.DatasetService.CreateImportJob",
        lambda: d.CreateImportJob(
            dataset_service_pb2.CreateImportJobRequest(
                parent=group.interactions,
                import_job=dataset_pb2.ImportJob(
                    source_uri=(tmp / "more.csv").as_uri(), import_mode=dataset_pb2.IMPORT_MODE_INCREMENTAL
                ),
            ),
            timeout=10,
        ),
    )
    run(
        "foretell.v1.DatasetService.ExportDataset",
        lambda: d.ExportDataset(dataset_service_pb2.ExportDatasetRequest(name=group.interactions), timeout=10),
    )
    t.CreateSolution(
        training_service_pb2.CreateSolutionRequest(
            solution_id="oi-pop", solution=training_pb2.Solution(dataset_group=GROUP, recipe="popularity-count")
        ),
        timeout=10,
    )
    trained = run(
        "foretell.v1.TrainingService.CreateSolutionVersion",
        lambda: t.CreateSolutionVersion(
            training_service_pb2.CreateSolutionVersionRequest(parent="solutions/oi-pop"), timeout=10
        ),
    )
    version = operation_response(trained, training_pb2.SolutionVersion).name
    campaign = recommendation_pb2.Campaign(solution_version=version)
    run(
        "foretell.v1.RecommendationService.CreateCampaign",
        lambda: r.CreateCampaign(
            recommendation_service_pb2.CreateCampaignRequest(campaign_id="oi-pop", campaign=campaign), timeout=10
        ),
    )
    changed = recommendation_pb2.Campaign(name="campaigns/oi-pop", enable_metadata_with_recommendations=True)
    run(
        "foretell.v1.RecommendationService.UpdateCampaign",
        lambda: r.UpdateCampaign(
            recommendation_service_pb2.UpdateCampaignRequest(
                campaign=changed, update_mask={"paths": ["enable_metadata_with_recommendations"]}
            ),
            timeout=10,
        ),
    )
    (tmp / "users.jsonl").write_text('{"userId": "u1"}\n')
    job = recommendation_pb2.BatchInferenceJob(
        solution_version=version, input_uri=(tmp / "users.jsonl").as_uri(), num_results=3
    )
    run(
        "foretell.v1.RecommendationService.CreateBatchInferenceJob",
        lambda: r.CreateBatchInferenceJob(
            recommendation_service_pb2.CreateBatchInferenceJobRequest(
                batch_inference_job_id="oi-batch", batch_inference_job=job
            ),
            timeout=10,
        ),
    )
    make_forecasting_group(stubs, "oi-sales", daily_csv(items=2, days=35))
    predictor = training_pb2.Predictor(
        dataset_group=SALES, algorithm="seasonal-naive", forecast_horizon=7, forecast_frequency="D"
    )
    run(
        "foretell.v1.TrainingService.CreatePredictor",
        lambda: t.CreatePredictor(
            training_service_pb2.CreatePredictorRequest(predictor_id="oi-daily", predictor=predictor), timeout=10
        ),
    )
    forecast = training_pb2.Forecast(predictor="predictors/oi-daily")
    run(
        "foretell.v1.TrainingService.CreateForecast",
        lambda: t.CreateForecast(
            training_service_pb2.CreateForecastRequest(forecast_id="oi-next", forecast=forecast), timeout=10
        ),
    )
    run(
        "foretell.v1.TrainingService.ExportForecast",
        lambda: t.ExportForecast(training_service_pb2.ExportForecastRequest(name="forecasts/oi-next"), timeout=10),
    )
    created_filter = r.CreateFilter(
        recommendation_service_pb2.CreateFilterRequest(
            filter_id="oi-filter",
            filter=recommendation_pb2.Filter(
                dataset_group=GROUP, filter_expression="EXCLUDE ItemID WHERE Items.GENRES IN ($G)"
            ),
        ),
        timeout=10,
    )
    issued: list[Message] = [
        d.GetDatasetGroup(dataset_service_pb2.GetDatasetGroupRequest(name=GROUP), timeout=5),
        d.GetSchema(dataset_service_pb2.GetSchemaRequest(name="schemas/oi-shop-items"), timeout=5),
        d.GetDataset(dataset_service_pb2.GetDatasetRequest(name=group.items), timeout=5),
        t.GetSolution(training_service_pb2.GetSolutionRequest(name="solutions/oi-pop"), timeout=5),
        created_filter,
    ]
    for method, operation in ran.items():
        if method.endswith(".ExportForecast"):
            continue  # an answer, not a resource
        issued.append(operation_response(operation, method))
    return Ran(ran, issued)


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Ran]:
    tmp = tmp_path_factory.mktemp("operation-info")
    settings = Settings(
        port=0, data_dir=tmp / "data", training_workers=1, import_roots=[tmp], export_roots=[tmp]
    )
    stubs = start_stubs(settings)
    try:
        yield _run_every_long_running_rpc(stubs, tmp)
    finally:
        stubs.channel.close()
        stubs.app.stop(None)


def test_every_long_running_rpc_was_run(finished: Ran) -> None:
    assert sorted(finished.operations) == sorted(m.full_name for m in LONG_RUNNING), "add the new RPC's request above"


@pytest.mark.parametrize("method", LONG_RUNNING, ids=[m.full_name for m in LONG_RUNNING])
def test_the_server_packs_what_the_annotation_names(finished: Ran, method: MethodDescriptor) -> None:
    operation = finished.operations[method.full_name]
    types = operation_types(method)
    assert operation.response.Is(types.response.DESCRIPTOR), (operation.response.type_url, types.response)
    assert operation.metadata.Is(types.metadata.DESCRIPTOR), (operation.metadata.type_url, types.metadata)
    # What a client gets when it asks by the RPC alone, as the ergonomic client now does.
    result: Any = operation_response(operation, method.full_name)
    assert isinstance(result, types.response) and isinstance(result, Message)


def test_the_names_the_server_issues_match_the_resource_patterns(finished: Ran) -> None:
    by_type = {type(m).DESCRIPTOR.full_name: m for m in finished.issued}
    assert sorted(by_type) == sorted(m.full_name for m in RESOURCES), "issue a resource of the new kind above"
    for message in RESOURCES:
        name = by_type[message.full_name].name
        assert _pattern(message).fullmatch(name), f"{message.full_name}: {name!r} is not {_resource(message).pattern}"
        assert not _pattern(message).fullmatch(name + "/x"), "patterns are anchored"
