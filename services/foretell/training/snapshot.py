"""Takes an immutable snapshot of a dataset group through the dataset service's contract.

For each dataset of the group, the dataset service's SnapshotDataset names the Parquet files that hold its
rows (after folding in the rows written one at a time); the snapshot is that list, written as
`snapshot.json` into a fresh directory. Training reads the files in place (core/snapshot_files.py): nothing
is exported or copied, and imports and events that arrive later cannot change a run halfway (the DESIGN's
"snapshot URI"), as the files are immutable.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import grpc

from foretell.core.artifact_store import Artifacts
from foretell.core.errors import Cancelled, FailedPrecondition
from foretell.core.snapshot_files import MANIFEST
from foretell.v1 import (
    dataset_pb2,
    dataset_service_pb2,
    dataset_service_pb2_grpc,
    event_feed_service_pb2,
    event_feed_service_pb2_grpc,
)

# How long to wait for the dataset service.
READY_SECONDS = 60.0

NAME_OF = {
    dataset_pb2.DATASET_TYPE_INTERACTIONS: "interactions",
    dataset_pb2.DATASET_TYPE_ITEMS: "items",
    dataset_pb2.DATASET_TYPE_USERS: "users",
    dataset_pb2.DATASET_TYPE_TARGET_TIME_SERIES: "target_time_series",
    dataset_pb2.DATASET_TYPE_RELATED_TIME_SERIES: "related_time_series",
    dataset_pb2.DATASET_TYPE_ITEM_METADATA: "item_metadata",
}


def new_snapshot_dir(artifacts: Artifacts, dataset_group: str) -> Path:
    """A fresh local directory for one snapshot of the group: snapshots are job inputs, kept with the jobs."""
    group_id = dataset_group.rsplit("/", 1)[-1]
    return artifacts.local_dir("snapshots", group_id, f"{time.strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:8]}")


def take_snapshot(
    channel: grpc.Channel,
    dataset_group: str,
    directory: Path,
    cancelled: Callable[[], bool],
    timeout: float = 3600,
    required: str = "interactions",
    s3: tuple[str, str] = ("", ""),
) -> list[str]:
    """Writes the group's snapshot (`snapshot.json`) into `directory`; returns the datasets it holds.

    `s3` (endpoint URL, region) says how the job reaches files on S3: its workers get no settings but the spec."""
    datasets = dataset_service_pb2_grpc.DatasetServiceStub(channel)
    feed = event_feed_service_pb2_grpc.EventFeedServiceStub(channel)
    directory.mkdir(parents=True, exist_ok=True)
    listed = _list_datasets(datasets, dataset_group, cancelled)
    manifest: dict[str, dict[str, object]] = {}
    for dataset in listed.datasets:
        name = NAME_OF.get(dataset.dataset_type)
        if name is None:
            continue
        if cancelled():
            raise Cancelled("cancelled while taking the dataset snapshot")
        try:
            snapshot = feed.SnapshotDataset(
                event_feed_service_pb2.SnapshotDatasetRequest(name=dataset.name), timeout=timeout
            )
        except grpc.RpcError as exc:
            raise FailedPrecondition(f"the snapshot of {dataset.name} failed: {exc.details()}") from None
        manifest[name] = {"part_uris": list(snapshot.part_uris), "row_count": snapshot.row_count}
    if required not in manifest:
        raise FailedPrecondition(f"dataset group {dataset_group!r} has no {required.upper()} dataset")
    store = {"s3_endpoint_url": s3[0], "s3_region": s3[1]}
    (directory / MANIFEST).write_text(json.dumps({"store": store, "datasets": manifest}, indent=1))
    return list(manifest)


def _list_datasets(
    datasets: dataset_service_pb2_grpc.DatasetServiceStub, dataset_group: str, cancelled: Callable[[], bool]
) -> dataset_service_pb2.ListDatasetsResponse:
    """The group's datasets. A job resumed at start-up may call before the dataset service listens, so this waits
    for it (up to READY_SECONDS), one second at a time: a server stopping meanwhile is noticed at once, not after
    the whole wait."""
    request = dataset_service_pb2.ListDatasetsRequest(parent=dataset_group, page_size=100)
    deadline = time.monotonic() + READY_SECONDS
    while True:
        try:
            return datasets.ListDatasets(request, timeout=1, wait_for_ready=True)
        except grpc.RpcError as exc:
            if exc.code() != grpc.StatusCode.DEADLINE_EXCEEDED or time.monotonic() > deadline:
                raise
        if cancelled():
            raise Cancelled("cancelled while waiting for the dataset service")
