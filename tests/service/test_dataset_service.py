"""DatasetService over a real server on port 0, on a real SQLite file and again on a real PostgreSQL server."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import grpc
import pytest
from google.longrunning import operations_pb2
from google.protobuf import struct_pb2, timestamp_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc

from foretell.core.settings import Settings
from foretell.v1 import dataset_pb2 as pb
from foretell.v1 import dataset_service_pb2 as api

from errors import expect_error, violations_of
from support import (
    ITEM_FIELDS,
    Group,
    Stubs,
    interactions_csv,
    make_recommendation_group,
    start_stubs,
    upload,
)

pytestmark = pytest.mark.databases("sqlite", "postgres")

INVALID = grpc.StatusCode.INVALID_ARGUMENT


def rows(stubs: Stubs, dataset: str) -> int:
    return stubs.datasets.GetDataset(api.GetDatasetRequest(name=dataset), timeout=5).row_count


@pytest.fixture
def files(settings: Settings, stubs: Stubs) -> Path:
    """The caller's file area with authentication off: the default import and export root, data_dir/files."""
    return settings.data_dir / "files"


@pytest.fixture
def group(stubs: Stubs) -> Group:
    return make_recommendation_group(stubs)


# ---- dataset groups, schemas, datasets ----------------------------------------------------


def test_the_server_runs_on_the_database_asked_for(stubs: Stubs, database: str) -> None:
    assert stubs.app.engine.dialect.name == {"sqlite": "sqlite", "postgres": "postgresql"}[database]


def test_hostile_operation_names_are_invalid_on_either_database(stubs: Stubs) -> None:
    # PostgreSQL refuses a NUL in text, so a name that reached the query was INTERNAL there.
    for name in ("operations/a\x00b", "operations/../x", "operations/" + "é" * 30, "operations/" + "a" * 70):
        status = expect_error(
            lambda name=name: stubs.operations.GetOperation(operations_pb2.GetOperationRequest(name=name), timeout=5),
            INVALID,
        )
        assert "name" in violations_of(status), name
    missing = expect_error(
        lambda: stubs.operations.GetOperation(operations_pb2.GetOperationRequest(name="operations/nope"), timeout=5),
        grpc.StatusCode.NOT_FOUND,
    )
    assert missing.message == "operation 'operations/nope' not found"


def test_create_get_list_delete_dataset_groups(stubs: Stubs) -> None:
    d = stubs.datasets
    for i in range(5):
        d.CreateDatasetGroup(
            api.CreateDatasetGroupRequest(
                dataset_group_id=f"g{i}",
                dataset_group=pb.DatasetGroup(domain=pb.DOMAIN_FORECASTING, labels={"team": "x"}),
            )
        )
    got = d.GetDatasetGroup(api.GetDatasetGroupRequest(name="datasetGroups/g3"))
    assert got.domain == pb.DOMAIN_FORECASTING and got.state == pb.DatasetGroup.STATE_ACTIVE
    assert got.labels["team"] == "x" and got.create_time.seconds > 0
    seen, token = [], ""
    while True:
        page = d.ListDatasetGroups(api.ListDatasetGroupsRequest(page_size=2, page_token=token))
        assert len(page.dataset_groups) <= 2
        seen += [g.name for g in page.dataset_groups]
        token = page.next_page_token
        if not token:
            break
    assert seen == [f"datasetGroups/g{i}" for i in range(5)]
    d.DeleteDatasetGroup(api.DeleteDatasetGroupRequest(name="datasetGroups/g3"))
    expect_error(
        lambda: d.GetDatasetGroup(api.GetDatasetGroupRequest(name="datasetGroups/g3")), grpc.StatusCode.NOT_FOUND
    )


def test_dataset_group_bad_input(stubs: Stubs) -> None:
    d = stubs.datasets
    ok = pb.DatasetGroup(domain=pb.DOMAIN_RECOMMENDATION)
    expect_error(
        lambda: d.CreateDatasetGroup(api.CreateDatasetGroupRequest(dataset_group=ok)), INVALID, "dataset_group_id"
    )
    expect_error(
        lambda: d.CreateDatasetGroup(api.CreateDatasetGroupRequest(dataset_group_id="Bad_Id", dataset_group=ok)),
        INVALID,
        "dataset_group_id",
    )
    expect_error(
        lambda: d.CreateDatasetGroup(api.CreateDatasetGroupRequest(dataset_group_id="shop\n", dataset_group=ok)),
        INVALID,
        "dataset_group_id",
    )
    expect_error(
        lambda: d.CreateDatasetGroup(api.CreateDatasetGroupRequest(dataset_group_id="g")),
        INVALID,
        "dataset_group.domain",
    )
    expect_error(
        lambda: d.CreateDatasetGroup(
            api.CreateDatasetGroupRequest(dataset_group_id="g", dataset_group=pb.DatasetGroup(domain=99))
        ),
        INVALID,
        "dataset_group.domain",
    )
    d.CreateDatasetGroup(api.CreateDatasetGroupRequest(dataset_group_id="g", dataset_group=ok))
    expect_error(
        lambda: d.CreateDatasetGroup(api.CreateDatasetGroupRequest(dataset_group_id="g", dataset_group=ok)),
        grpc.StatusCode.ALREADY_EXISTS,
    )
    expect_error(lambda: d.GetDatasetGroup(api.GetDatasetGroupRequest(name="groups/g")), INVALID, "name")
    expect_error(lambda: d.GetDatasetGroup(api.GetDatasetGroupRequest()), INVALID, "name")
    expect_error(lambda: d.ListDatasetGroups(api.ListDatasetGroupsRequest(page_size=-1)), INVALID, "page_size")
    expect_error(
        lambda: d.ListDatasetGroups(api.ListDatasetGroupsRequest(page_token="garbage!")), INVALID, "page_token"
    )
    expect_error(
        lambda: d.DeleteDatasetGroup(api.DeleteDatasetGroupRequest(name="datasetGroups/nope")),
        grpc.StatusCode.NOT_FOUND,
    )


def test_create_request_id_is_idempotent(stubs: Stubs) -> None:
    req = api.CreateDatasetGroupRequest(
        dataset_group_id="idem", dataset_group=pb.DatasetGroup(domain=pb.DOMAIN_RECOMMENDATION), request_id="r-1"
    )
    first = stubs.datasets.CreateDatasetGroup(req)
    assert stubs.datasets.CreateDatasetGroup(req) == first  # a retry, not ALREADY_EXISTS
    expect_error(
        lambda: stubs.datasets.CreateDatasetGroup(
            api.CreateDatasetGroupRequest(
                dataset_group_id="idem",
                dataset_group=pb.DatasetGroup(domain=pb.DOMAIN_RECOMMENDATION),
                request_id="r-2",
            )
        ),
        grpc.StatusCode.ALREADY_EXISTS,
    )


def test_schema_validation_names_fields(stubs: Stubs) -> None:
    d = stubs.datasets

    def create(fields: list[pb.SchemaField], domain: int = pb.DOMAIN_RECOMMENDATION) -> object:
        return d.CreateSchema(api.CreateSchemaRequest(schema_id="s", schema=pb.Schema(domain=domain, fields=fields)))

    expect_error(lambda: create([]), INVALID, "schema.fields")
    expect_error(
        lambda: create([pb.SchemaField(name="USER_ID", type=pb.FIELD_TYPE_LONG)]), INVALID, "schema.fields[0].type"
    )
    expect_error(
        lambda: create([pb.SchemaField(name="1bad", type=pb.FIELD_TYPE_STRING)]), INVALID, "schema.fields[0].name"
    )
    expect_error(
        lambda: create([pb.SchemaField(name="GENRES\n", type=pb.FIELD_TYPE_STRING)]), INVALID, "schema.fields[0].name"
    )
    expect_error(
        lambda: create(
            [pb.SchemaField(name="A", type=pb.FIELD_TYPE_STRING), pb.SchemaField(name="a", type=pb.FIELD_TYPE_STRING)]
        ),
        INVALID,
        "schema.fields[1].name",
    )
    expect_error(lambda: create([pb.SchemaField(name="X")]), INVALID, "schema.fields[0].type")
    expect_error(
        lambda: create([pb.SchemaField(name="X", type=pb.FIELD_TYPE_LONG, categorical=True)]),
        INVALID,
        "schema.fields[0]",
    )
    expect_error(
        lambda: create([pb.SchemaField(name="X", type=pb.FIELD_TYPE_LONG)], domain=0), INVALID, "schema.domain"
    )


def test_dataset_rules(stubs: Stubs, group: Group) -> None:
    d = stubs.datasets
    # One dataset per type and group.
    expect_error(
        lambda: d.CreateDataset(
            api.CreateDatasetRequest(
                parent=group.name,
                dataset_id="again",
                dataset=pb.Dataset(dataset_type=pb.DATASET_TYPE_ITEMS, schema="schemas/shop-items"),
            )
        ),
        grpc.StatusCode.ALREADY_EXISTS,
    )
    # An items schema cannot back interactions.
    d.CreateDatasetGroup(
        api.CreateDatasetGroupRequest(
            dataset_group_id="other", dataset_group=pb.DatasetGroup(domain=pb.DOMAIN_RECOMMENDATION)
        )
    )
    expect_error(
        lambda: d.CreateDataset(
            api.CreateDatasetRequest(
                parent="datasetGroups/other",
                dataset_id="x",
                dataset=pb.Dataset(dataset_type=pb.DATASET_TYPE_INTERACTIONS, schema="schemas/shop-items"),
            )
        ),
        INVALID,
        "dataset.schema",
    )
    # Forecasting types do not belong in a recommendation group.
    expect_error(
        lambda: d.CreateDataset(
            api.CreateDatasetRequest(
                parent="datasetGroups/other",
                dataset_id="x",
                dataset=pb.Dataset(dataset_type=pb.DATASET_TYPE_TARGET_TIME_SERIES, schema="schemas/shop-items"),
            )
        ),
        INVALID,
        "dataset.dataset_type",
    )
    expect_error(
        lambda: d.CreateDataset(
            api.CreateDatasetRequest(
                parent="datasetGroups/other",
                dataset_id="x",
                dataset=pb.Dataset(dataset_type=pb.DATASET_TYPE_ITEMS, schema="schemas/missing"),
            )
        ),
        grpc.StatusCode.NOT_FOUND,
    )
    expect_error(
        lambda: d.CreateDataset(
            api.CreateDatasetRequest(
                parent="datasetGroups/nope",
                dataset_id="x",
                dataset=pb.Dataset(dataset_type=pb.DATASET_TYPE_ITEMS, schema="schemas/shop-items"),
            )
        ),
        grpc.StatusCode.NOT_FOUND,
    )
    expect_error(
        lambda: d.CreateDataset(
            api.CreateDatasetRequest(
                parent="datasetGroups/other", dataset_id="x", dataset=pb.Dataset(schema="schemas/shop-items")
            )
        ),
        INVALID,
        "dataset.dataset_type",
    )
    # Schemas in use and groups with datasets are protected.
    expect_error(
        lambda: d.DeleteSchema(api.DeleteSchemaRequest(name="schemas/shop-items")), grpc.StatusCode.FAILED_PRECONDITION
    )
    expect_error(
        lambda: d.DeleteDatasetGroup(api.DeleteDatasetGroupRequest(name=group.name)),
        grpc.StatusCode.FAILED_PRECONDITION,
    )
    listed = d.ListDatasets(api.ListDatasetsRequest(parent=group.name))
    assert sorted(x.name for x in listed.datasets) == sorted([group.interactions, group.items])
    d.DeleteDatasetGroup(api.DeleteDatasetGroupRequest(name=group.name, force=True))
    expect_error(lambda: d.GetDataset(api.GetDatasetRequest(name=group.items)), grpc.StatusCode.NOT_FOUND)
    d.DeleteSchema(api.DeleteSchemaRequest(name="schemas/shop-items"))


# ---- import --------------------------------------------------------------------------------


def test_failed_import_leaves_dataset_unchanged(stubs: Stubs, group: Group) -> None:
    stubs.wait(upload(stubs, group.interactions, interactions_csv(300)))
    assert rows(stubs, group.interactions) == 300
    good = interactions_csv(400, seed=1).decode().splitlines()
    # Row 350 (after several staged batches) has a non-numeric timestamp, row 360 a bad value.
    good[350] = "u1,i2,yesterday,click,,web"
    good[360] = "u1,i2,1700000000,click,lots,web"
    op = stubs.wait(upload(stubs, group.interactions, ("\n".join(good) + "\n").encode()))
    assert op.error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    problems = violations_of(op.error)
    assert "rows[350].TIMESTAMP" in problems and "rows[360].EVENT_VALUE" in problems
    assert rows(stubs, group.interactions) == 300  # the FULL import that failed replaced nothing
    job = stubs.datasets.ListImportJobs(api.ListImportJobsRequest(parent=group.interactions)).import_jobs
    assert sorted(j.state for j in job) == sorted([pb.JOB_STATE_SUCCEEDED, pb.JOB_STATE_FAILED])


def test_full_replaces_and_incremental_appends(stubs: Stubs, group: Group) -> None:
    stubs.wait(upload(stubs, group.interactions, interactions_csv(120)))
    stubs.wait(upload(stubs, group.interactions, interactions_csv(80, seed=3)))
    assert rows(stubs, group.interactions) == 80
    stubs.wait(upload(stubs, group.interactions, interactions_csv(50, seed=4), mode=pb.IMPORT_MODE_INCREMENTAL))
    assert rows(stubs, group.interactions) == 130


def test_items_incremental_import_replaces_same_ids(stubs: Stubs, group: Group) -> None:
    first = b"ITEM_ID,GENRES,PRICE\ni1,Comedy,1.5\ni2,Drama|Comedy,\n"
    second = b"ITEM_ID,GENRES,PRICE\ni2,Horror,3\ni3,Drama,4\ni3,Action,5\n"
    stubs.wait(upload(stubs, group.items, first))
    stubs.wait(upload(stubs, group.items, second, mode=pb.IMPORT_MODE_INCREMENTAL))
    assert rows(stubs, group.items) == 3


@pytest.mark.parametrize(
    ("data", "field"),
    [
        (b"USER_ID,ITEM_ID\nu,i\n", "header"),  # TIMESTAMP missing
        (b"USER_ID,ITEM_ID,TIMESTAMP,COLOR\nu,i,1\n", "header[3]"),
        (b"USER_ID,USER_ID,ITEM_ID,TIMESTAMP\n", "header[1]"),
        (b"\xff\xfeUSER_ID,ITEM_ID,TIMESTAMP\n", "header"),
    ],
)
def test_bad_header_is_rejected_at_once(stubs: Stubs, group: Group, data: bytes, field: str) -> None:
    expect_error(lambda: upload(stubs, group.interactions, data), INVALID, field)


@pytest.mark.parametrize(
    ("line", "field"),
    [
        (b"u1,i1,1700000000,click,abc,web", "rows[2].EVENT_VALUE"),
        (b",i1,1700000000,click,,web", "rows[2].USER_ID"),
        (b"u1,i1,1700000000", "rows[2]"),
        (b"u1,i1,1700000000,click,\xc3\x28,web", "rows[2]"),  # malformed UTF-8
        (b"u1," + b"i" * 300 + b",1700000000,click,,web", "rows[2].ITEM_ID"),
        (b"\x00x,i1,1700000000,click,,web", "rows[2].USER_ID"),  # NUL: stored, then broke every training
        (b"u1,i\x1b1,1700000000,click,,web", "rows[2].ITEM_ID"),
        (b"u1,i1,1e30,click,,web", "rows[2].TIMESTAMP"),  # passed, then failed the job with OverflowError
        (b"u1,i1,9223372036854775808,click,,web", "rows[2].TIMESTAMP"),
    ],
)
def test_bad_rows_fail_the_job_with_row_numbers(stubs: Stubs, group: Group, line: bytes, field: str) -> None:
    data = b"USER_ID,ITEM_ID,TIMESTAMP,EVENT_TYPE,EVENT_VALUE,DEVICE\nu0,i0,1700000000,click,,web\n" + line + b"\n"
    op = stubs.wait(upload(stubs, group.interactions, data))
    assert op.error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0], op
    assert field in violations_of(op.error)
    assert rows(stubs, group.interactions) == 0


def test_import_stream_protocol_errors(stubs: Stubs, group: Group) -> None:
    d = stubs.datasets
    expect_error(lambda: d.ImportData(iter([api.ImportDataRequest(chunk=b"x")])), INVALID, "config")
    config = api.ImportDataRequest(config=api.ImportDataConfig(dataset=group.interactions))
    expect_error(lambda: d.ImportData(iter([config, config])), INVALID, "config")
    expect_error(lambda: d.ImportData(iter([config])), INVALID, "chunk")
    expect_error(
        lambda: d.ImportData(
            iter(
                [
                    api.ImportDataRequest(config=api.ImportDataConfig(dataset="datasetGroups/shop/datasets/nope")),
                    api.ImportDataRequest(chunk=b"a\n"),
                ]
            )
        ),
        grpc.StatusCode.NOT_FOUND,
    )
    expect_error(
        lambda: d.ImportData(
            iter([api.ImportDataRequest(config=api.ImportDataConfig(dataset=group.interactions, import_mode=7))])
        ),
        INVALID,
        "config.import_mode",
    )


def test_import_from_uri_and_export_round_trip(stubs: Stubs, group: Group, files: Path) -> None:
    source = files / "in.csv"
    source.write_bytes(interactions_csv(1234, seed=9))
    op = stubs.datasets.CreateImportJob(
        api.CreateImportJobRequest(
            parent=group.interactions, import_job_id="from-file", import_job=pb.ImportJob(source_uri=source.as_uri())
        )
    )
    op = stubs.wait(op)
    job = pb.ImportJob()
    op.response.Unpack(job)
    assert job.name == f"{group.interactions}/importJobs/from-file" and job.rows_imported == 1234
    assert stubs.datasets.GetImportJob(api.GetImportJobRequest(name=job.name)).state == pb.JOB_STATE_SUCCEEDED
    out = files / "out.csv"
    op = stubs.wait(
        stubs.datasets.ExportDataset(api.ExportDatasetRequest(name=group.interactions, destination_uri=str(out)))
    )
    export = pb.ExportJob()
    op.response.Unpack(export)
    assert export.rows_exported == 1234
    # The export re-imports to the same rows.
    stubs.wait(
        stubs.datasets.CreateImportJob(
            api.CreateImportJobRequest(parent=group.interactions, import_job=pb.ImportJob(source_uri=str(out)))
        )
    )
    assert rows(stubs, group.interactions) == 1234
    out2 = files / "out2.csv"
    stubs.wait(
        stubs.datasets.ExportDataset(api.ExportDatasetRequest(name=group.interactions, destination_uri=str(out2)))
    )
    assert out2.read_bytes() == out.read_bytes()
    expect_error(
        lambda: stubs.datasets.CreateImportJob(
            api.CreateImportJobRequest(
                parent=group.interactions, import_job=pb.ImportJob(source_uri=str(files / "missing.csv"))
            )
        ),
        INVALID,
        "import_job.source_uri",
    )
    expect_error(
        lambda: stubs.datasets.CreateImportJob(
            api.CreateImportJobRequest(
                parent=group.interactions, import_job=pb.ImportJob(source_uri="s3://bucket/x.csv")
            )
        ),
        INVALID,
        "import_job.source_uri",
    )
    expect_error(
        lambda: stubs.datasets.ExportDataset(
            api.ExportDatasetRequest(name=group.interactions, destination_uri=str(files / "no" / "dir.csv"))
        ),
        INVALID,
        "destination_uri",
    )
    # Regression: a NUL in a path made Path.resolve() raise ValueError (INTERNAL).
    expect_error(
        lambda: stubs.datasets.ExportDataset(
            api.ExportDatasetRequest(name=group.interactions, destination_uri="x\x00.csv")
        ),
        INVALID,
        "destination_uri",
    )


def test_import_reports_progress_and_can_be_cancelled(stubs: Stubs, group: Group) -> None:
    op = upload(stubs, group.interactions, interactions_csv(20000, seed=5), chunk=1 << 16)
    stubs.operations.CancelOperation(operations_pb2.CancelOperationRequest(name=op.name))
    op = stubs.wait(op)
    job = stubs.datasets.ListImportJobs(api.ListImportJobsRequest(parent=group.interactions)).import_jobs[0]
    if op.HasField("error"):  # cancelled before the end: nothing visible
        assert op.error.code == grpc.StatusCode.CANCELLED.value[0]
        assert job.state == pb.JOB_STATE_CANCELLED and rows(stubs, group.interactions) == 0
    else:  # finished before the flag was read
        assert job.state == pb.JOB_STATE_SUCCEEDED and rows(stubs, group.interactions) == 20000
    listed = stubs.operations.ListOperations(
        operations_pb2.ListOperationsRequest(name="operations", filter="done=true")
    )
    assert op.name in [o.name for o in listed.operations]
    expect_error(
        lambda: stubs.operations.ListOperations(operations_pb2.ListOperationsRequest(filter="color=red")),
        INVALID,
        "filter",
    )
    expect_error(
        lambda: stubs.operations.GetOperation(operations_pb2.GetOperationRequest(name="operations/nope")),
        grpc.StatusCode.NOT_FOUND,
    )


def test_import_request_id_returns_first_operation(stubs: Stubs, group: Group) -> None:
    first = stubs.wait(upload(stubs, group.interactions, interactions_csv(10), request_id="imp-1"))
    again = upload(stubs, group.interactions, interactions_csv(10), request_id="imp-1")
    assert again.name == first.name
    # The upload is part of the request the id is bound to (AIP-155): another upload is refused.
    status = expect_error(
        lambda: upload(stubs, group.interactions, interactions_csv(20), request_id="imp-1"),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    assert "request_id" in violations_of(status)
    assert rows(stubs, group.interactions) == 10


# ---- real-time ---------------------------------------------------------------------------


def _event(item: str, event_id: str = "", seconds: int = 1_700_000_000, **kw: object) -> pb.Event:
    return pb.Event(
        event_id=event_id, event_type="click", item_id=item, sent_at=timestamp_pb2.Timestamp(seconds=seconds), **kw
    )  # type: ignore[arg-type]


def test_put_events_is_idempotent_on_event_id(stubs: Stubs, group: Group) -> None:
    req = api.PutEventsRequest(
        dataset_group=group.name,
        session_id="s1",
        user_id="u1",
        events=[_event("i1", "e1"), _event("i2", "e2"), _event("i2", "e2")],
    )
    first = stubs.datasets.PutEvents(req)
    assert (first.accepted, first.duplicates) == (2, 1)
    retry = stubs.datasets.PutEvents(req)
    assert (retry.accepted, retry.duplicates) == (0, 3)
    anonymous = stubs.datasets.PutEvents(
        api.PutEventsRequest(
            dataset_group=group.name, session_id="s2", events=[_event("i3", event_value=4.5, impression=["i3", "i4"])]
        )
    )
    assert anonymous.accepted == 1
    assert rows(stubs, group.interactions) == 3


def test_put_events_bad_input_stores_nothing(stubs: Stubs, group: Group) -> None:
    d = stubs.datasets

    def put(**kw: object) -> object:
        base: dict[str, object] = {"dataset_group": group.name, "session_id": "s", "events": [_event("i1")]}
        base.update(kw)
        return d.PutEvents(api.PutEventsRequest(**base))  # type: ignore[arg-type]

    expect_error(lambda: put(session_id=""), INVALID, "session_id")
    expect_error(lambda: put(events=[]), INVALID, "events")
    expect_error(lambda: put(events=[_event("i1")] * 101), INVALID, "events")
    expect_error(
        lambda: put(events=[_event("i1"), pb.Event(event_type="click", item_id="i2")]), INVALID, "events[1].sent_at"
    )
    expect_error(
        lambda: put(events=[pb.Event(item_id="i2", sent_at=timestamp_pb2.Timestamp(seconds=1))]),
        INVALID,
        "events[0].event_type",
    )
    props = struct_pb2.Struct()
    props.update({"COLOR": "red"})
    expect_error(lambda: put(events=[_event("i1", properties=props)]), INVALID, "events[0].properties.COLOR")
    expect_error(lambda: put(dataset_group="datasetGroups/nope"), grpc.StatusCode.NOT_FOUND)
    expect_error(lambda: put(dataset_group="nope"), INVALID, "dataset_group")
    assert rows(stubs, group.interactions) == 0


def test_put_items_and_users(stubs: Stubs, group: Group) -> None:
    d = stubs.datasets
    props = struct_pb2.Struct()
    props.update({"GENRES": "Comedy", "PRICE": 9.5})
    assert (
        d.PutItems(api.PutItemsRequest(dataset=group.items, items=[pb.Item(item_id="i1", properties=props)])).accepted
        == 1
    )
    props.update({"GENRES": "Drama"})
    d.PutItems(api.PutItemsRequest(dataset=group.items, items=[pb.Item(item_id="i1", properties=props)]))
    assert rows(stubs, group.items) == 1  # replaced, not duplicated
    bad = struct_pb2.Struct()
    bad.update({"PRICE": "cheap"})
    expect_error(
        lambda: d.PutItems(api.PutItemsRequest(dataset=group.items, items=[pb.Item(item_id="i2", properties=bad)])),
        INVALID,
        "items[0].properties.PRICE",
    )
    expect_error(
        lambda: d.PutItems(api.PutItemsRequest(dataset=group.items, items=[pb.Item(properties=props)])),
        INVALID,
        "items[0].item_id",
    )
    expect_error(lambda: d.PutItems(api.PutItemsRequest(dataset=group.items)), INVALID, "items")
    expect_error(
        lambda: d.PutItems(api.PutItemsRequest(dataset=group.interactions, items=[pb.Item(item_id="x")])),
        INVALID,
        "dataset",
    )
    expect_error(
        lambda: d.PutUsers(api.PutUsersRequest(dataset=group.items, users=[pb.User(user_id="u")])), INVALID, "dataset"
    )
    assert rows(stubs, group.items) == 1
    assert ITEM_FIELDS  # schema used above has GENRES and PRICE


def test_put_events_refuses_control_characters_and_far_times_naming_the_field(stubs: Stubs, group: Group) -> None:
    d = stubs.datasets

    def put(**kw: object) -> object:
        base: dict[str, object] = {"dataset_group": group.name, "session_id": "s", "events": [_event("i1")]}
        base.update(kw)
        return d.PutEvents(api.PutEventsRequest(**base))  # type: ignore[arg-type]

    expect_error(lambda: put(user_id="\x00x"), INVALID, "user_id")
    expect_error(lambda: put(session_id="s\x7f"), INVALID, "session_id")
    expect_error(lambda: put(events=[_event("a\x00b")]), INVALID, "events[0].item_id")
    expect_error(lambda: put(events=[_event("i1", event_id="e\n1")]), INVALID, "events[0].event_id")
    expect_error(lambda: put(events=[_event("i1", impression=["i1", "i\x002"])]), INVALID, "events[0].impression[1]")
    status = expect_error(lambda: put(events=[_event("i1", seconds=2**62)]), INVALID, "events[0].sent_at")
    assert "events[0].properties.TIMESTAMP" not in violations_of(status)  # named once, by the event's own field
    props = struct_pb2.Struct()
    props.update({"DEVICE": "we\x00b"})
    expect_error(lambda: put(events=[_event("i1", properties=props)]), INVALID, "events[0].properties.DEVICE")
    props = struct_pb2.Struct()
    props.update({"DEVICE": float("nan")})
    expect_error(lambda: put(events=[_event("i1", properties=props)]), INVALID, "events[0].properties.DEVICE")
    assert rows(stubs, group.interactions) == 0


def test_put_items_refuses_nan_infinity_and_control_characters(stubs: Stubs, group: Group) -> None:
    d = stubs.datasets

    def put(item_id: str, **properties: object) -> object:
        props = struct_pb2.Struct()
        props.update({"GENRES": "Comedy", **properties})
        return d.PutItems(api.PutItemsRequest(dataset=group.items, items=[pb.Item(item_id=item_id, properties=props)]))

    for number in (float("nan"), float("inf"), float("-inf")):
        expect_error(lambda: put("i1", PRICE=number), INVALID, "items[0].properties.PRICE")  # noqa: B023
    expect_error(lambda: put("i\x001"), INVALID, "items[0].item_id")
    expect_error(lambda: put("i1", CREATION_TIMESTAMP=1e30), INVALID, "items[0].properties.CREATION_TIMESTAMP")
    expect_error(
        lambda: d.PutUsers(api.PutUsersRequest(dataset=group.items, users=[pb.User(user_id="u\x00")])),
        INVALID,
    )
    assert rows(stubs, group.items) == 0


def test_a_header_longer_than_the_limit_is_invalid_argument_naming_the_header(
    stubs: Stubs, group: Group, files: Path
) -> None:
    huge = b'USER_ID,ITEM_ID,TIMESTAMP,"' + b"x" * ((1 << 20) + 10) + b'"\nu1,i1,1700000000,x\n'
    expect_error(lambda: upload(stubs, group.interactions, huge, chunk=1 << 16), INVALID, "header")
    source = files / "huge-header.csv"
    source.write_bytes(huge)
    expect_error(
        lambda: stubs.datasets.CreateImportJob(
            api.CreateImportJobRequest(parent=group.interactions, import_job=pb.ImportJob(source_uri=source.as_uri()))
        ),
        INVALID,
        "import_job.source_uri.header",
    )


def test_a_full_import_of_no_rows_empties_a_dataset_only_when_asked(stubs: Stubs, group: Group, files: Path) -> None:
    stubs.wait(upload(stubs, group.interactions, interactions_csv(30)))
    header_only = b"USER_ID,ITEM_ID,TIMESTAMP,EVENT_TYPE,EVENT_VALUE,DEVICE\n"
    op = stubs.wait(upload(stubs, group.interactions, header_only))
    assert op.error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0], op
    assert "allow_empty" in violations_of(op.error)["rows"]
    assert rows(stubs, group.interactions) == 30  # kept
    op = stubs.wait(upload(stubs, group.interactions, header_only, mode=pb.IMPORT_MODE_INCREMENTAL))
    assert not op.HasField("error") and rows(stubs, group.interactions) == 30
    source = files / "empty.csv"
    source.write_bytes(header_only)
    job = pb.ImportJob(source_uri=source.as_uri())
    request = api.CreateImportJobRequest(parent=group.interactions, import_job=job)
    assert stubs.wait(stubs.datasets.CreateImportJob(request)).error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert rows(stubs, group.interactions) == 30
    job.allow_empty = True
    request = api.CreateImportJobRequest(parent=group.interactions, import_job=job)
    assert not stubs.wait(stubs.datasets.CreateImportJob(request)).HasField("error")
    assert rows(stubs, group.interactions) == 0
    stubs.wait(upload(stubs, group.interactions, interactions_csv(5)))

    def allowed() -> Any:
        yield api.ImportDataRequest(config=api.ImportDataConfig(dataset=group.interactions, allow_empty=True))
        yield api.ImportDataRequest(chunk=header_only)

    assert not stubs.wait(stubs.datasets.ImportData(allowed(), timeout=30)).HasField("error")
    assert rows(stubs, group.interactions) == 0


def test_delete_user_data_removes_a_users_events_and_user_row(stubs: Stubs, group: Group) -> None:
    d = stubs.datasets
    d.CreateSchema(
        api.CreateSchemaRequest(
            schema_id="shop-users",
            schema=pb.Schema(
                domain=pb.DOMAIN_RECOMMENDATION,
                fields=[
                    pb.SchemaField(name="USER_ID", type=pb.FIELD_TYPE_STRING),
                    pb.SchemaField(name="AGE", type=pb.FIELD_TYPE_INT, nullable=True),
                ],
            ),
        )
    )
    users = d.CreateDataset(
        api.CreateDatasetRequest(
            parent=group.name,
            dataset_id="users",
            dataset=pb.Dataset(dataset_type=pb.DATASET_TYPE_USERS, schema="schemas/shop-users"),
        )
    ).name
    data = b"USER_ID,ITEM_ID,TIMESTAMP,EVENT_TYPE,EVENT_VALUE,DEVICE\n" + b"".join(
        f"u{i % 3},i{i},{1_700_000_000 + i},click,,\n".encode() for i in range(30)
    )
    stubs.wait(upload(stubs, group.interactions, data))
    d.PutEvents(api.PutEventsRequest(dataset_group=group.name, session_id="s", user_id="u1", events=[_event("i9")]))
    d.PutUsers(api.PutUsersRequest(dataset=users, users=[pb.User(user_id=u) for u in ("u0", "u1", "u2")]))
    request = api.DeleteUserDataRequest(dataset_group=group.name, user_ids=["u1", "nobody"], request_id="forget-u1")
    answer = d.DeleteUserData(request, timeout=5)
    assert (answer.interactions_deleted, answer.users_deleted) == (11, 1)
    assert rows(stubs, group.interactions) == 20 and rows(stubs, users) == 2
    assert d.DeleteUserData(request, timeout=5) == answer  # a retry answers what the first call did
    again = d.DeleteUserData(api.DeleteUserDataRequest(dataset_group=group.name, user_ids=["u1"]), timeout=5)
    assert (again.interactions_deleted, again.users_deleted) == (0, 0)

    def delete(*user_ids: str) -> object:
        return d.DeleteUserData(api.DeleteUserDataRequest(dataset_group=group.name, user_ids=user_ids), timeout=5)

    expect_error(lambda: delete(), INVALID, "user_ids")
    expect_error(lambda: delete(*[f"u{i}" for i in range(1001)]), INVALID, "user_ids")
    expect_error(lambda: delete("u0", ""), INVALID, "user_ids[1]")
    expect_error(lambda: delete("u\x000"), INVALID, "user_ids[0]")
    expect_error(
        lambda: d.DeleteUserData(api.DeleteUserDataRequest(dataset_group="shop", user_ids=["u0"])),
        INVALID,
        "dataset_group",
    )
    assert rows(stubs, group.interactions) == 20


def test_malformed_utf8_in_request_names_the_field(stubs: Stubs, group: Group) -> None:
    # Hand-built wire bytes: PutEventsRequest{dataset_group=group, session_id=<invalid UTF-8>}.
    name = group.name.encode()
    raw = b"\x0a" + bytes([len(name)]) + name + b"\x12\x02\xc3\x28"
    call = stubs.channel.unary_unary(
        "/foretell.v1.DatasetService/PutEvents", request_serializer=lambda b: b, response_deserializer=lambda b: b
    )
    expect_error(lambda: call(raw, timeout=5), INVALID, "session_id")
    # Bytes that are no message at all (a bad wire type) are not blamed on UTF-8.
    status = expect_error(lambda: call(b"\x0f", timeout=5), INVALID, "request")
    assert "not a valid protobuf message" in status.message


def test_an_error_quoting_huge_input_still_reaches_the_client(stubs: Stubs, group: Group) -> None:
    # Regression: a 3000-character property name quoted in the BadRequest overflowed the client's 8 KiB
    # trailer limit, so the call ended RESOURCE_EXHAUSTED (or with a mismatched rich status).
    key = "\x12" * 3000
    item = pb.Item(item_id="i1", properties=struct_pb2.Struct(fields={key: struct_pb2.Value(string_value="x")}))
    many = [pb.Item(item_id="", properties=item.properties)] * 100
    for items in ([item], many):
        status = expect_error(
            lambda items=items: stubs.datasets.PutItems(api.PutItemsRequest(dataset=group.items, items=items)), INVALID
        )
        assert all(f.startswith("items[") for f in violations_of(status)) and len(status.message) <= 250


def test_health_and_restart_recovery(settings, tmp_path) -> None:  # type: ignore[no-untyped-def]
    stubs = start_stubs(settings)
    health = health_pb2_grpc.HealthStub(stubs.channel)
    for service in ("", "foretell.v1.DatasetService", "google.longrunning.Operations"):
        assert (
            health.Check(health_pb2.HealthCheckRequest(service=service)).status
            == health_pb2.HealthCheckResponse.SERVING
        )
    group = make_recommendation_group(stubs)
    stubs.wait(upload(stubs, group.interactions, interactions_csv(100)))
    # Simulate a crash mid-import: a RUNNING job with a Parquet part written and an unfinished operation.
    import pyarrow as pa

    from foretell.core.artifacts import uri_of
    from foretell.dataset.columns import arrow_schema
    from foretell.dataset.convert import mapper_of
    from foretell.dataset.parts import PartFiles
    from foretell.dataset.store import DatasetStore

    files = PartFiles(uri_of(settings.artifacts))
    store = DatasetStore(stubs.app.engine, files)
    from foretell.core.operations import OperationStore

    ops = OperationStore(stubs.app.engine)
    crashed = f"{group.interactions}/importJobs/crashed"
    pending = ops.create(crashed, "import")
    store.create_import_job(crashed, group.interactions, "", "FULL", pending.name)
    schema = arrow_schema(mapper_of(store.get_dataset(group.interactions)).fields)
    writer = files.writer(group.interactions, crashed, schema)
    writer.write(pa.Table.from_pylist([{"USER_ID": "u", "ITEM_ID": "i", "TIMESTAMP": 1}] * 10, schema=schema))
    (orphan,) = [uri for uri, _, _ in writer.finish()]
    assert Path(orphan.removeprefix("file://")).exists()
    stubs.channel.close()
    stubs.app.stop(None)
    restarted = start_stubs(settings)
    try:
        assert rows(restarted, group.interactions) == 100
        op_after = restarted.operations.GetOperation(operations_pb2.GetOperationRequest(name=pending.name))
        assert op_after.done and op_after.error.code == grpc.StatusCode.ABORTED.value[0]
        job = restarted.datasets.GetImportJob(api.GetImportJobRequest(name=f"{group.interactions}/importJobs/crashed"))
        assert job.state == pb.JOB_STATE_FAILED
        assert not Path(orphan.removeprefix("file://")).exists()  # the crashed import's part is gone
    finally:
        restarted.channel.close()
        restarted.app.stop(None)


BAD_NAMES = [
    ("GetSchema", api.GetSchemaRequest(name="datasetGroups/x"), "name"),
    ("DeleteSchema", api.DeleteSchemaRequest(name="schemas/Bad"), "name"),
    ("ListSchemas", api.ListSchemasRequest(page_size=-5), "page_size"),
    ("GetDataset", api.GetDatasetRequest(name="datasetGroups/shop"), "name"),
    ("ListDatasets", api.ListDatasetsRequest(parent="schemas/x"), "parent"),
    ("DeleteDataset", api.DeleteDatasetRequest(name=""), "name"),
    ("GetImportJob", api.GetImportJobRequest(name="datasetGroups/shop/datasets/items"), "name"),
    ("ListImportJobs", api.ListImportJobsRequest(parent="datasetGroups/shop"), "parent"),
    ("GetExportJob", api.GetExportJobRequest(name="x/y"), "name"),
    ("ListExportJobs", api.ListExportJobsRequest(parent=""), "parent"),
    ("ExportDataset", api.ExportDatasetRequest(name="datasets/x"), "name"),
    (
        "CreateImportJob",
        api.CreateImportJobRequest(parent="datasetGroups/shop/datasets/items"),
        "import_job.source_uri",
    ),
    ("PutUsers", api.PutUsersRequest(dataset="users"), "dataset"),
    (
        "PutItems",
        api.PutItemsRequest(dataset="datasetGroups/shop/datasets/items", items=[pb.Item(item_id="i")] * 101),
        "items",
    ),
    (
        "CreateDatasetGroup",
        api.CreateDatasetGroupRequest(
            dataset_group_id="g", dataset_group=pb.DatasetGroup(domain=pb.DOMAIN_FORECASTING), request_id="bad id!"
        ),
        "request_id",
    ),
]


@pytest.mark.parametrize(("method", "request_", "field"), BAD_NAMES, ids=[m for m, _, _ in BAD_NAMES])
def test_every_rpc_rejects_bad_input_naming_the_field(
    stubs: Stubs, group: Group, method: str, request_, field: str
) -> None:  # type: ignore[no-untyped-def]
    expect_error(lambda: getattr(stubs.datasets, method)(request_, timeout=5), INVALID, field)


UNKNOWN = [
    ("DeleteUserData", api.DeleteUserDataRequest(dataset_group="datasetGroups/nope", user_ids=["u1"])),
    ("GetSchema", api.GetSchemaRequest(name="schemas/nope")),
    ("DeleteSchema", api.DeleteSchemaRequest(name="schemas/nope")),
    ("GetDataset", api.GetDatasetRequest(name="datasetGroups/shop/datasets/nope")),
    ("ListDatasets", api.ListDatasetsRequest(parent="datasetGroups/nope")),
    ("DeleteDataset", api.DeleteDatasetRequest(name="datasetGroups/shop/datasets/nope")),
    ("GetImportJob", api.GetImportJobRequest(name="datasetGroups/shop/datasets/items/importJobs/nope")),
    ("ListImportJobs", api.ListImportJobsRequest(parent="datasetGroups/shop/datasets/nope")),
    ("GetExportJob", api.GetExportJobRequest(name="datasetGroups/shop/datasets/items/exportJobs/nope")),
    ("ExportDataset", api.ExportDatasetRequest(name="datasetGroups/shop/datasets/nope")),
    ("PutUsers", api.PutUsersRequest(dataset="datasetGroups/shop/datasets/nope", users=[pb.User(user_id="u")])),
]


@pytest.mark.parametrize(("method", "request_"), UNKNOWN, ids=[m for m, _ in UNKNOWN])
def test_every_rpc_answers_not_found_for_unknown_ids(stubs: Stubs, group: Group, method: str, request_) -> None:  # type: ignore[no-untyped-def]
    expect_error(lambda: getattr(stubs.datasets, method)(request_, timeout=5), grpc.StatusCode.NOT_FOUND)


def test_put_events_fills_required_reserved_columns_from_the_event(stubs: Stubs) -> None:
    d = stubs.datasets
    d.CreateDatasetGroup(
        api.CreateDatasetGroupRequest(
            dataset_group_id="strict", dataset_group=pb.DatasetGroup(domain=pb.DOMAIN_RECOMMENDATION)
        )
    )
    fields = [
        pb.SchemaField(name=n, type=t)
        for n, t in (
            ("USER_ID", pb.FIELD_TYPE_STRING),
            ("ITEM_ID", pb.FIELD_TYPE_STRING),
            ("TIMESTAMP", pb.FIELD_TYPE_LONG),
            ("EVENT_TYPE", pb.FIELD_TYPE_STRING),
            ("EVENT_VALUE", pb.FIELD_TYPE_FLOAT),
        )
    ]
    d.CreateSchema(
        api.CreateSchemaRequest(schema_id="strict", schema=pb.Schema(domain=pb.DOMAIN_RECOMMENDATION, fields=fields))
    )
    d.CreateDataset(
        api.CreateDatasetRequest(
            parent="datasetGroups/strict",
            dataset_id="events",
            dataset=pb.Dataset(dataset_type=pb.DATASET_TYPE_INTERACTIONS, schema="schemas/strict"),
        )
    )
    ok = d.PutEvents(
        api.PutEventsRequest(
            dataset_group="datasetGroups/strict", session_id="s", events=[_event("i1", event_value=1.0)]
        )
    )
    assert ok.accepted == 1
    status = expect_error(
        lambda: d.PutEvents(
            api.PutEventsRequest(dataset_group="datasetGroups/strict", session_id="s", events=[_event("i1")])
        ),
        INVALID,
    )
    assert any("EVENT_VALUE" in f for f in violations_of(status))
