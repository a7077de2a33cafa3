"""What one tenant can learn from another through request ids, page tokens, lists and errors: nothing.

A real server on port 0 with API keys for two tenants; tenant A owns a trained popularity-count model, a
campaign, a filter, a seasonal-naive predictor and a forecast, tenant B an import of its own."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.longrunning import operations_pb2
from google.protobuf import descriptor, message_factory
from google.protobuf.message import Message
from sqlalchemy import func, select

from foretell.client import Client, operation_response
from foretell.core.idempotency import idempotency_table
from foretell.core.settings import Settings
from foretell.runtime.server import App, create_server
from foretell.v1 import dataset_pb2 as dpb
from foretell.v1 import dataset_service_pb2 as dapi
from foretell.v1 import (
    forecast_query_service_pb2,
    recommendation_service_pb2,
    training_pb2,
    training_service_pb2,
)
from foretell.v1 import recommendation_pb2 as rpb
from foretell.v1 import recommendation_service_pb2 as rapi
from foretell.v1 import training_service_pb2 as tapi

from errors import expect_error, violations_of
from support import (
    daily_csv,
    interactions_csv,
    make_forecast,
    make_forecasting_group,
    make_recommendation_group,
    stubs_of,
    upload,
)

KEY_A = "tenant-a-key-0123456789abcdef"
KEY_B = "tenant-b-key-fedcba9876543210"
INVALID = grpc.StatusCode.INVALID_ARGUMENT


def write_keys(path: Path) -> Path:
    path.write_text(
        json.dumps(
            {
                "keys": [
                    {"principal": "tenant-a", "key": KEY_A, "dataset_groups": ["shop-a", "sales-a"]},
                    {"principal": "tenant-b", "key": KEY_B, "dataset_groups": ["shop-b", "sales-b"]},
                ]
            }
        )
    )
    return path


@dataclass
class Tenants:
    a: Client
    b: Client
    app: App
    names: dict[str, str]  # tenant A's resources by kind


@pytest.fixture(scope="module")
def tenants(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Tenants]:
    directory = tmp_path_factory.mktemp("tenant-answers")
    app = create_server(Settings(port=0, data_dir=directory / "data", api_keys_file=write_keys(directory / "k.json")))
    app.start()
    target = f"127.0.0.1:{app.port}"
    a, b = Client(target, api_key=KEY_A, timeout=20), Client(target, api_key=KEY_B, timeout=20)
    try:
        stubs = stubs_of(a, app)
        group = make_recommendation_group(stubs, "shop-a")
        imported = stubs.wait(upload(stubs, group.interactions, interactions_csv(300, users=20, items=30)))
        a.create_solution("pop-a", group.name, "popularity-count")
        version = operation_response(
            a.wait_operation(a.create_solution_version("solutions/pop-a"), timeout=180), training_pb2.SolutionVersion
        )
        campaign = a.create_campaign("rec-a", version.name, timeout=120)
        flt = a.recommendations.CreateFilter(
            rapi.CreateFilterRequest(
                filter_id="only-a",
                filter=rpb.Filter(
                    dataset_group=group.name, filter_expression='EXCLUDE ItemID WHERE Items.GENRES IN ("x")'
                ),
            ),
            timeout=10,
        )
        sales = make_forecasting_group(stubs, "sales-a", daily_csv(items=2, days=40))
        make_forecast(stubs, sales, "naive-a", "next-a")
        b_stubs = stubs_of(b, app)
        b_group = make_recommendation_group(b_stubs, "shop-b")
        b_stubs.wait(upload(b_stubs, b_group.interactions, interactions_csv(20)))
        b.create_dataset_group("sales-b", dpb.DOMAIN_FORECASTING)
        import_job = a.datasets.ListImportJobs(dapi.ListImportJobsRequest(parent=group.interactions), timeout=5)
        yield Tenants(
            a,
            b,
            app,
            {
                "group": group.name,
                "dataset": group.interactions,
                "import_job": import_job.import_jobs[0].name,
                "solution": "solutions/pop-a",
                "version": version.name,
                "campaign": campaign.name,
                "filter": flt.name,
                "predictor": "predictors/naive-a",
                "forecast": "forecasts/next-a",
                "operation": imported.name,
            },
        )
    finally:
        a.close()
        b.close()
        app.stop(None)


# ---- request ids -------------------------------------------------------------------------------------


def _schema(schema_id: str, request_id: str) -> dapi.CreateSchemaRequest:
    fields = [dpb.SchemaField(name="ITEM_ID", type=dpb.FIELD_TYPE_STRING)]
    return dapi.CreateSchemaRequest(
        schema_id=schema_id, schema=dpb.Schema(domain=dpb.DOMAIN_RECOMMENDATION, fields=fields), request_id=request_id
    )


def test_a_request_id_is_the_callers_own(tenants: Tenants) -> None:
    mine = tenants.a.datasets.CreateSchema(_schema("ids-a", "shared-id"), timeout=5)
    theirs = tenants.b.datasets.CreateSchema(_schema("ids-b", "shared-id"), timeout=5)
    assert (mine.name, theirs.name) == ("schemas/ids-a", "schemas/ids-b")  # B's call ran: not A's answer


def test_a_request_id_reused_with_another_request_is_refused(tenants: Tenants) -> None:
    first = tenants.a.datasets.CreateSchema(_schema("ids-c", "once"), timeout=5)
    assert tenants.a.datasets.CreateSchema(_schema("ids-c", "once"), timeout=5) == first  # a retry: same answer
    status = expect_error(lambda: tenants.a.datasets.CreateSchema(_schema("ids-d", "once"), timeout=5), INVALID)
    assert "request_id" in violations_of(status)
    expect_error(
        lambda: tenants.a.datasets.GetSchema(dapi.GetSchemaRequest(name="schemas/ids-d"), timeout=5),
        grpc.StatusCode.NOT_FOUND,
    )


def test_answers_are_pruned_after_the_retention(tmp_path: Path) -> None:
    app = create_server(Settings(port=0, data_dir=tmp_path, request_id_retention_seconds=1))
    app.start()
    try:
        with Client(f"127.0.0.1:{app.port}", timeout=10) as client:
            request = dapi.CreateDatasetGroupRequest(
                dataset_group_id="g", dataset_group=dpb.DatasetGroup(domain=dpb.DOMAIN_RECOMMENDATION), request_id="r"
            )
            client.datasets.CreateDatasetGroup(request, timeout=5)
            assert client.datasets.CreateDatasetGroup(request, timeout=5).name == "datasetGroups/g"
            time.sleep(1.2)
            # The stored answer is gone: the call runs again and finds the group taken.
            expect_error(lambda: client.datasets.CreateDatasetGroup(request, timeout=5), grpc.StatusCode.ALREADY_EXISTS)
        with app.engine.connect() as conn:
            assert conn.execute(select(func.count()).select_from(idempotency_table)).scalar() == 0
    finally:
        app.stop(None)


# ---- page tokens and lists ----------------------------------------------------------------------------


def _operations(client: Client, page_size: int, token: str = "") -> operations_pb2.ListOperationsResponse:
    return client.operations.ListOperations(
        operations_pb2.ListOperationsRequest(page_size=page_size, page_token=token), timeout=5
    )


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def test_page_tokens_show_nothing_and_refuse_forgery_editing_and_other_callers(tenants: Tenants) -> None:
    a, b = tenants.a, tenants.b
    token = _operations(a, 1).next_page_token
    raw = base64.urlsafe_b64decode(token + "==")
    assert b"operations/" not in raw and b"datasetGroups" not in raw
    edited = bytearray(raw)
    edited[20] ^= 0x01
    forged_old_format = _b64(json.dumps({"a": tenants.names["operation"], "s": ""}).encode())
    for bad in (_b64(bytes(edited)), forged_old_format, token[:-2], "x" * 5000):
        status = expect_error(lambda bad=bad: _operations(a, 1, bad), INVALID)
        assert "page_token" in violations_of(status)
    expect_error(lambda: _operations(b, 1, token), INVALID)  # another principal's token
    expect_error(  # another request's token
        lambda: a.training.ListSolutions(tapi.ListSolutionsRequest(page_size=1, page_token=token), timeout=5), INVALID
    )


def _all_pages(call: Callable[[str], Any], field: str) -> list[list[str]]:
    pages, token = [], ""
    while True:
        response = call(token)
        pages.append([item.name for item in getattr(response, field)])
        token = response.next_page_token
        if not token:
            return pages


def test_lists_filter_before_they_page(tenants: Tenants) -> None:
    for client, group in ((tenants.a, "shop-a"), (tenants.b, "shop-b")):
        pages = _all_pages(lambda t, c=client: _operations(c, 1, t), "operations")  # type: ignore[misc]
        assert all(len(page) == 1 for page in pages), pages  # full pages: nothing of the other tenant was cut
        groups = _all_pages(
            lambda t, c=client: c.datasets.ListDatasetGroups(  # type: ignore[misc]
                dapi.ListDatasetGroupsRequest(page_size=1, page_token=t), timeout=5
            ),
            "dataset_groups",
        )
        assert [len(p) for p in groups] == [1, 1] and f"datasetGroups/{group}" in sum(groups, [])
    a_ops = {n for page in _all_pages(lambda t: _operations(tenants.a, 1, t), "operations") for n in page}
    b_ops = {n for page in _all_pages(lambda t: _operations(tenants.b, 1, t), "operations") for n in page}
    assert tenants.names["operation"] in a_ops and not a_ops & b_ops


# ---- another tenant's resource answers as an absent one ---------------------------------------------------

# Request fields that name a resource, and which of tenant A's resources each takes.
_FIELD_KINDS = {
    "dataset_group": "group",
    "dataset": "dataset",
    "solution_version": "version",
    "campaign": "campaign",
    "predictor": "predictor",
    "forecast": "forecast",
    "filter": "filter",
}
# `name` / `parent` by the resource the method's name ends in (Get/Delete/List/... + resource).
_METHOD_KINDS = {
    "DatasetGroup": "group",
    "Datasets": "group",
    "Dataset": "dataset",
    "ImportJob": "import_job",
    "ImportJobs": "dataset",
    "ExportJobs": "dataset",
    "Solution": "solution",
    "SolutionVersions": "solution",
    "SolutionVersion": "version",
    "SolutionMetrics": "version",
    "Campaign": "campaign",
    "Filter": "filter",
    "Predictor": "predictor",
    "AccuracyMetrics": "predictor",
    "ItemAccuracies": "predictor",
    "Forecast": "forecast",
    "Operation": "operation",
}
_VERBS = ("Get", "Delete", "List", "Update", "Export", "Cancel", "Wait", "Create")
_FILLERS: dict[str, Any] = {"user_id": "u1", "item_id": "i1", "input_list": ["i1"], "session_id": "s"}


def _kind(method: str, field: str) -> str | None:
    if field in _FIELD_KINDS:
        return _FIELD_KINDS[field]
    noun = next((method[len(v) :] for v in _VERBS if method.startswith(v)), "")
    return _METHOD_KINDS.get(noun) if field in ("name", "parent") else None


def _fill(message: Message, method: str, names: dict[str, str]) -> int:
    """Sets every resource field of `message` (and of its message fields) to tenant A's resource; how many."""
    count = 0
    for field in message.DESCRIPTOR.fields:
        if field.type == descriptor.FieldDescriptor.TYPE_MESSAGE and not field.is_repeated:
            if not field.message_type.full_name.startswith("google."):
                count += _fill(getattr(message, field.name), method, names)
            continue
        kind = _kind(method, field.name)
        if kind and field.type == descriptor.FieldDescriptor.TYPE_STRING and not field.is_repeated:
            setattr(message, field.name, names[kind])
            count += 1
        elif field.name in _FILLERS:
            value = _FILLERS[field.name]
            getattr(message, field.name).extend(value) if isinstance(value, list) else setattr(
                message, field.name, value
            )
        elif field.name.endswith("_id") and field.type == descriptor.FieldDescriptor.TYPE_STRING:
            setattr(message, field.name, "taken-by-b")
    return count


def _absent_twin(name: str) -> str:
    """The same name with its top-level id replaced by one nobody has."""
    collection, _, rest = name.partition("/")
    return "/".join([collection, "zz-absent", *rest.split("/")[1:]])


def _answer(stub: Any, method: descriptor.MethodDescriptor, request: Message) -> tuple[str, str]:
    call = getattr(stub, method.name)
    try:
        result = call(request, timeout=10)
        if method.server_streaming:
            next(iter(result))
    except grpc.RpcError as error:
        return error.code().name, error.details() or ""
    return "OK", ""


def _services(client: Client) -> list[tuple[Any, descriptor.ServiceDescriptor]]:
    return [
        (client.datasets, dapi.DESCRIPTOR.services_by_name["DatasetService"]),
        (client.training, training_service_pb2.DESCRIPTOR.services_by_name["TrainingService"]),
        (client.recommendations, recommendation_service_pb2.DESCRIPTOR.services_by_name["RecommendationService"]),
        (client.forecast_query, forecast_query_service_pb2.DESCRIPTOR.services_by_name["ForecastQueryService"]),
        (client.operations, operations_pb2.DESCRIPTOR.services_by_name["Operations"]),
    ]


def test_another_tenants_resources_answer_exactly_as_absent_ones_in_every_rpc(tenants: Tenants) -> None:
    names = tenants.names
    twins = {kind: _absent_twin(name) for kind, name in names.items()}
    tops = sorted({"/".join(n.split("/")[:2]) for n in [*names.values(), *twins.values()]}, key=len, reverse=True)
    checked, not_found = [], 0
    for stub, service in _services(tenants.b):
        for method in service.methods:
            if method.client_streaming:
                continue  # ImportData: tests/service/test_security.py
            request_type = message_factory.GetMessageClass(method.input_type)
            theirs, absent = request_type(), request_type()
            if not _fill(theirs, method.name, names) or not _fill(absent, method.name, twins):
                continue
            code_theirs, text_theirs = _answer(stub, method, theirs)
            code_absent, text_absent = _answer(stub, method, absent)
            for top in tops:  # the names asked for differ; nothing else may
                text_theirs, text_absent = text_theirs.replace(top, "<name>"), text_absent.replace(top, "<name>")
            assert (code_theirs, text_theirs) == (code_absent, text_absent), method.full_name
            assert "shop-a" not in text_theirs and "tenant-a" not in text_theirs and code_theirs != "OK", method.name
            checked.append(method.name)
            not_found += code_theirs == "NOT_FOUND"
    assert len(checked) >= 35 and not_found >= 30, (len(checked), not_found)
    # Nothing of A's changed.
    assert tenants.a.get_campaign(names["campaign"]).name == names["campaign"]
    assert tenants.a.get_recommendations(names["campaign"], user_id="u1", num_results=2).item_list
