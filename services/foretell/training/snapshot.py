"""Takes an immutable snapshot of a dataset group through the dataset service's contract.

Each dataset of the group is exported (ExportDataset) as `<type>.csv` into a fresh directory;
training reads only that directory, so imports and events that arrive later cannot change a
run halfway (the DESIGN's "snapshot URI").
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from pathlib import Path

import grpc
from google.longrunning import operations_pb2, operations_pb2_grpc
from google.rpc import status_pb2

from foretell.core.artifact_store import Artifacts
from foretell.core.artifacts import uri_of
from foretell.core.errors import Cancelled, FailedPrecondition
from foretell.core.polling import intervals
from foretell.v1 import dataset_pb2, dataset_service_pb2, dataset_service_pb2_grpc

# Longest pause between two looks at an export's operation, and how long to wait for the dataset service.
POLL_SECONDS = 0.1
READY_SECONDS = 60.0

FILE_OF = {
    dataset_pb2.DATASET_TYPE_INTERACTIONS: "interactions.csv",
    dataset_pb2.DATASET_TYPE_ITEMS: "items.csv",
    dataset_pb2.DATASET_TYPE_USERS: "users.csv",
    dataset_pb2.DATASET_TYPE_TARGET_TIME_SERIES: "target_time_series.csv",
    dataset_pb2.DATASET_TYPE_RELATED_TIME_SERIES: "related_time_series.csv",
    dataset_pb2.DATASET_TYPE_ITEM_METADATA: "item_metadata.csv",
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
    required: str = "interactions.csv",
) -> list[str]:
    """Exports the group's datasets into `directory`; returns the files written."""
    datasets = dataset_service_pb2_grpc.DatasetServiceStub(channel)
    operations = operations_pb2_grpc.OperationsStub(channel)
    directory.mkdir(parents=True, exist_ok=True)
    listed = _list_datasets(datasets, dataset_group, cancelled)
    written = []
    for dataset in listed.datasets:
        file_name = FILE_OF.get(dataset.dataset_type)
        if file_name is None:
            continue
        operation = datasets.ExportDataset(
            dataset_service_pb2.ExportDatasetRequest(name=dataset.name, destination_uri=uri_of(directory / file_name)),
            timeout=30,
        )
        deadline = time.monotonic() + timeout
        waits = intervals(POLL_SECONDS)
        while not operation.done:
            if cancelled():
                operations.CancelOperation(operations_pb2.CancelOperationRequest(name=operation.name), timeout=30)
                raise Cancelled("cancelled while taking the dataset snapshot")
            if time.monotonic() > deadline:
                raise FailedPrecondition(f"the snapshot of {dataset.name} took longer than {timeout:.0f} s")
            time.sleep(next(waits))
            operation = operations.GetOperation(operations_pb2.GetOperationRequest(name=operation.name), timeout=30)
        if operation.HasField("error"):
            raise FailedPrecondition(f"the snapshot of {dataset.name} failed: {_message(operation.error)}")
        written.append(file_name)
    if required not in written:
        kind = required.removesuffix(".csv").upper()
        raise FailedPrecondition(f"dataset group {dataset_group!r} has no {kind} dataset")
    return written


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


def _message(status: status_pb2.Status) -> str:
    return status.message or f"code {status.code}"
