"""Wires the dataset service into a gRPC server."""

from __future__ import annotations

import logging
from collections.abc import Callable

import grpc
from sqlalchemy import Engine

from foretell.core import tenancy
from foretell.core.artifacts import uri_of
from foretell.core.file_roots import FileRoots
from foretell.core.idempotency import IdempotencyStore
from foretell.core.leases import Leases
from foretell.core.operations import OperationStore
from foretell.core.pagination import PageTokens
from foretell.core.settings import Settings
from foretell.dataset import parts, uploads
from foretell.dataset.jobs import DatasetJobs
from foretell.dataset.parts import PartFiles
from foretell.dataset.servicer import DatasetServicer, EventFeedServicer
from foretell.dataset.store import DatasetStore
from foretell.dataset.watch import EventBell
from foretell.v1 import (
    dataset_service_pb2,
    dataset_service_pb2_grpc,
    event_feed_service_pb2,
    event_feed_service_pb2_grpc,
)

log = logging.getLogger("foretell.dataset")

SERVICE_NAME = dataset_service_pb2.DESCRIPTOR.services_by_name["DatasetService"].full_name
#: Internal (core/auth.INTERNAL_ONLY_METHODS): served with DatasetService, whose events it streams.
EVENT_FEED_SERVICE_NAME = event_feed_service_pb2.DESCRIPTOR.services_by_name["EventFeedService"].full_name


def add_dataset_service(
    server: grpc.Server,
    settings: Settings,
    engine: Engine,
    operations: OperationStore,
    tokens: PageTokens,
    leases: Leases,
    before_stop: list[Callable[[], None]],
) -> Callable[[bool], None]:
    """Registers DatasetService and the internal EventFeedService; returns the function that stops its background jobs.

    Appends to `before_stop` what must end before the server drains (open WatchEvents streams).
    """
    store = DatasetStore(
        engine,
        PartFiles(settings.artifact_uri or uri_of(settings.artifacts), settings.s3_endpoint_url, settings.s3_region),
    )
    jobs = DatasetJobs(
        store,
        operations,
        settings.import_workers,
        settings.max_reported_violations,
        leases,
        settings.max_queued_imports,
    )
    failed = jobs.recover()
    leases.on_sweep(jobs.recover)
    # Retired Parquet parts outlive the snapshots that may still list them (parts.RETAIN_SECONDS), then go.
    leases.on_sweep(lambda: parts.sweep(store.plane.catalog, store.plane.files))
    uploads.remove_orphans(
        settings.artifacts / "uploads",
        unfinished=[(tenant, name) for tenant, kind, name, _ in store.unfinished_jobs() if kind == "import"],
        failed=failed,
        # SQLite: this process holds the data directory's dataset lock (core/data_lock.py), nobody else spools here.
        single_writer=engine.dialect.name == "sqlite",
    )
    if settings.api_keys_file is not None:
        unowned = store.groups_of(tenancy.DEFAULT)
        if unowned:
            # Stored before tenant namespaces (or by this server without keys): no key acts for the default tenant.
            log.warning(
                "dataset groups belong to no tenant: run `foretell db move-group GROUP --to TENANT` for each",
                extra={"dataset_groups": unowned[:20], "count": len(unowned)},
            )
    bell = EventBell()
    servicer = DatasetServicer(
        store,
        jobs,
        IdempotencyStore(engine, settings.request_id_retention_seconds),
        settings.artifacts / "uploads",
        settings.artifacts / "exports",
        settings.max_upload_bytes,
        bell,
        tokens,
        FileRoots(settings),
    )
    dataset_service_pb2_grpc.add_DatasetServiceServicer_to_server(servicer, server)
    event_feed_service_pb2_grpc.add_EventFeedServiceServicer_to_server(EventFeedServicer(servicer), server)
    before_stop.append(bell.close)
    return lambda wait: jobs.shutdown(wait)
