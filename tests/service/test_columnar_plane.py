"""The columnar data plane through the public API (dataset/parts.py, dataset/plane.py): Parquet uploads, keyed
merges, the SQL tail folded in by snapshots, user deletion rewriting parts, retired parts kept then swept, and
imports that fail or quote newlines across block boundaries."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import grpc
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest
from google.protobuf import struct_pb2, timestamp_pb2

from foretell.core.artifacts import path_of
from foretell.dataset import importer, parts
from foretell.v1 import dataset_pb2 as pb
from foretell.v1 import dataset_service_pb2 as api
from foretell.v1 import event_feed_service_pb2 as feed_api
from foretell.v1 import event_feed_service_pb2_grpc

from errors import expect_error
from support import Group, Stubs, interactions_csv, make_recommendation_group, upload

pytestmark = pytest.mark.databases("sqlite", "postgres")


@pytest.fixture
def group(stubs: Stubs) -> Group:
    return make_recommendation_group(stubs)


def rows(stubs: Stubs, dataset: str) -> int:
    return stubs.datasets.GetDataset(api.GetDatasetRequest(name=dataset), timeout=5).row_count


def snapshot(stubs: Stubs, dataset: str) -> feed_api.DatasetSnapshot:
    feed = event_feed_service_pb2_grpc.EventFeedServiceStub(stubs.channel)
    return feed.SnapshotDataset(feed_api.SnapshotDatasetRequest(name=dataset), timeout=30)


def read_parts(found: feed_api.DatasetSnapshot) -> pa.Table:
    return pa.concat_tables([pq.read_table(path_of(uri)) for uri in found.part_uris])


def export(stubs: Stubs, dataset: str, files: Path, name: str) -> list[dict[str, str]]:
    target = files / name
    done = stubs.wait(stubs.datasets.ExportDataset(api.ExportDatasetRequest(name=dataset, destination_uri=str(target))))
    assert not done.HasField("error"), done.error
    return list(csv.DictReader(io.StringIO(target.read_text())))


def items_csv(rows: list[tuple[str, str, str]]) -> bytes:
    lines = ["ITEM_ID,GENRES,PRICE"] + [",".join(r) for r in rows]
    return ("\n".join(lines) + "\n").encode()


def ok(stubs: Stubs, operation: object) -> None:
    done = stubs.wait(operation)  # type: ignore[arg-type]
    assert not done.HasField("error"), done.error


def test_a_parquet_upload_imports_as_its_csv_does(stubs: Stubs, group: Group, settings: object) -> None:
    data = interactions_csv(500, seed=3)
    as_parquet = io.BytesIO()
    table = pacsv.read_csv(
        io.BytesIO(data), convert_options=pacsv.ConvertOptions(column_types={"USER_ID": pa.string()})
    )
    pq.write_table(table, as_parquet)
    ok(stubs, upload(stubs, group.interactions, data))
    files = settings.data_dir / "files"  # type: ignore[attr-defined]
    from_csv = export(stubs, group.interactions, files, "csv.csv")
    ok(stubs, upload(stubs, group.interactions, as_parquet.getvalue()))
    assert rows(stubs, group.interactions) == 500
    assert export(stubs, group.interactions, files, "parquet.csv") == from_csv
    # A Parquet file's columns are checked as a CSV header is.
    wrong = io.BytesIO()
    pq.write_table(table.rename_columns([*table.column_names[:-1], "NOT_IN_SCHEMA"]), wrong)
    expect_error(
        lambda: upload(stubs, group.interactions, wrong.getvalue()), grpc.StatusCode.INVALID_ARGUMENT, "header[5]"
    )


def test_keyed_rows_merge_and_put_items_win_until_a_full_import(stubs: Stubs, group: Group, settings: object) -> None:
    files = settings.data_dir / "files"  # type: ignore[attr-defined]
    ok(stubs, upload(stubs, group.items, items_csv([("i1", "a", "1.0"), ("i2", "b", "2.0"), ("i1", "c", "3.0")])))
    assert rows(stubs, group.items) == 2  # within one import the last row of an id wins
    ok(stubs, upload(stubs, group.items, items_csv([("i2", "d", ""), ("i3", "e", "5.5")]), pb.IMPORT_MODE_INCREMENTAL))
    props = struct_pb2.Struct()
    props.update({"GENRES": "put", "PRICE": 9.5})
    stubs.datasets.PutItems(api.PutItemsRequest(dataset=group.items, items=[pb.Item(item_id="i3", properties=props)]))
    stubs.datasets.PutItems(api.PutItemsRequest(dataset=group.items, items=[pb.Item(item_id="i4", properties=props)]))
    assert rows(stubs, group.items) == 4
    shown = {r["ITEM_ID"]: r["GENRES"] for r in export(stubs, group.items, files, "merged.csv")}
    assert shown == {"i1": "c", "i2": "d", "i3": "put", "i4": "put"}
    # A snapshot folds the PutItems rows into the parts: one view, same answer.
    folded = read_parts(snapshot(stubs, group.items))
    assert dict(zip(folded.column("ITEM_ID").to_pylist(), folded.column("GENRES").to_pylist(), strict=True)) == shown
    # An INCREMENTAL import after them replaces them; a FULL import replaces everything before it.
    ok(stubs, upload(stubs, group.items, items_csv([("i4", "imported", "")]), pb.IMPORT_MODE_INCREMENTAL))
    assert {r["ITEM_ID"]: r["GENRES"] for r in export(stubs, group.items, files, "inc.csv")}["i4"] == "imported"
    stubs.datasets.PutItems(api.PutItemsRequest(dataset=group.items, items=[pb.Item(item_id="i9", properties=props)]))
    ok(stubs, upload(stubs, group.items, items_csv([("i5", "only", "")])))
    assert [r["ITEM_ID"] for r in export(stubs, group.items, files, "full.csv")] == ["i5"]


def test_snapshots_fold_events_in_once_and_keep_what_they_listed(stubs: Stubs, group: Group) -> None:
    ok(stubs, upload(stubs, group.interactions, interactions_csv(200, seed=5)))
    first = snapshot(stubs, group.interactions)
    assert len(first.part_uris) == 1 and first.row_count == 200
    events = [
        pb.Event(
            event_id=f"e{i}",
            event_type="click",
            item_id=f"i{i}",
            sent_at=timestamp_pb2.Timestamp(seconds=1_700_000_000 + i),
        )
        for i in range(3)
    ]
    stubs.datasets.PutEvents(
        api.PutEventsRequest(dataset_group=group.name, session_id="s", user_id="new", events=events)
    )
    assert rows(stubs, group.interactions) == 203
    second = snapshot(stubs, group.interactions)
    assert list(second.part_uris[:1]) == list(first.part_uris) and len(second.part_uris) == 2
    tail = pq.read_table(path_of(second.part_uris[1]))
    assert tail.column("USER_ID").to_pylist() == ["new"] * 3 and tail.column("TIMESTAMP").type == pa.int64()
    assert snapshot(stubs, group.interactions).part_uris == second.part_uris  # nothing new: no new part
    assert rows(stubs, group.interactions) == 203  # folded, not counted twice
    # A FULL import replaces the parts; the files a running job may hold stay until the retention has passed.
    ok(stubs, upload(stubs, group.interactions, interactions_csv(50, seed=6)))
    assert rows(stubs, group.interactions) == 50
    assert all(path_of(uri).exists() for uri in second.part_uris)
    store_files = parts.PartFiles("")
    assert parts.sweep(parts.PartCatalog(stubs.app.engine), store_files, retain_seconds=3600) == 0
    assert parts.sweep(parts.PartCatalog(stubs.app.engine), store_files, retain_seconds=-1) == 2
    assert not any(path_of(uri).exists() for uri in second.part_uris)
    assert rows(stubs, group.interactions) == 50


def test_delete_user_data_rewrites_the_parts_that_hold_the_user(stubs: Stubs, group: Group) -> None:
    ok(stubs, upload(stubs, group.interactions, interactions_csv(300, seed=7, users=10)))
    before = read_parts(snapshot(stubs, group.interactions))
    gone = before.column("USER_ID")[0].as_py()
    theirs = before.column("USER_ID").to_pylist().count(gone)
    stubs.datasets.PutEvents(
        api.PutEventsRequest(
            dataset_group=group.name,
            session_id="s",
            user_id=gone,
            events=[
                pb.Event(
                    event_id="x",
                    event_type="click",
                    item_id="i1",
                    sent_at=timestamp_pb2.Timestamp(seconds=1_700_000_000),
                )
            ],
        )
    )
    answer = stubs.datasets.DeleteUserData(api.DeleteUserDataRequest(dataset_group=group.name, user_ids=[gone]))
    assert answer.interactions_deleted == theirs + 1
    after = read_parts(snapshot(stubs, group.interactions))
    assert gone not in after.column("USER_ID").to_pylist() and after.num_rows == 300 - theirs
    assert rows(stubs, group.interactions) == 300 - theirs


def test_a_failed_import_leaves_no_part_behind(stubs: Stubs, group: Group, settings: object) -> None:
    ok(stubs, upload(stubs, group.interactions, interactions_csv(100, seed=8)))
    kept = snapshot(stubs, group.interactions).part_uris
    data_dir = settings.artifacts / "data"  # type: ignore[attr-defined]
    before = sorted(p for p in data_dir.rglob("*.parquet"))
    bad = interactions_csv(5000, seed=9) + b"u1,i1,not-a-time,click,1.0,web\n"
    done = stubs.wait(upload(stubs, group.interactions, bad))
    assert done.HasField("error") and "rows[5001].TIMESTAMP" in done.error.message
    assert sorted(p for p in data_dir.rglob("*.parquet")) == before
    assert snapshot(stubs, group.interactions).part_uris == kept and rows(stubs, group.interactions) == 100


def test_quoted_newlines_across_block_boundaries(stubs: Stubs, group: Group, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(importer, "BLOCK_BYTES", 4096)  # many blocks, so that some boundary falls inside quotes
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["USER_ID", "ITEM_ID", "TIMESTAMP", "EVENT_TYPE", "EVENT_VALUE", "DEVICE"])
    for i in range(2000):
        writer.writerow([f"u{i % 30}", f"i{i % 70}", 1_700_000_000 + i, "click", "1.0", f"line one\nline two {i}"])
    ok(stubs, upload(stubs, group.interactions, out.getvalue().encode()))
    stored = read_parts(snapshot(stubs, group.interactions))
    assert stored.num_rows == 2000 and stored.column("DEVICE")[1999].as_py() == "line one\nline two 1999"
