"""Wires the recommendation service into a gRPC server."""

from __future__ import annotations

import logging
from collections.abc import Callable

import grpc
from sqlalchemy import Engine
from threadpoolctl import threadpool_limits

from foretell.core.artifact_store import Artifacts
from foretell.core.file_roots import FileRoots
from foretell.core.idempotency import IdempotencyStore
from foretell.core.leases import Leases
from foretell.core.operations import OperationStore
from foretell.core.pagination import PageTokens
from foretell.core.peers import Peers
from foretell.core.settings import Settings
from foretell.recommendation.batch import BatchJobs
from foretell.recommendation.campaigns import Campaigns, SolutionVersions, check_dataset_group
from foretell.recommendation.events import EventFeeds
from foretell.recommendation.servicer import RecommendationServicer
from foretell.recommendation.store import RecommendationStore
from foretell.v1 import recommendation_service_pb2, recommendation_service_pb2_grpc

SERVICE_NAME = recommendation_service_pb2.DESCRIPTOR.services_by_name["RecommendationService"].full_name

log = logging.getLogger("foretell.recommendation")


def single_threaded_blas() -> None:
    """Serving runs requests in parallel threads; a BLAS call per request must then use one core.

    With OpenBLAS's default (a thread per core) 16 concurrent full-catalogue scorings of a
    100k-item ALS model took 118 ms each on 2 cores instead of 4 ms. Training runs in worker
    processes, which this does not affect.
    """
    threadpool_limits(limits=1, user_api="blas")


def add_recommendation_service(
    server: grpc.Server,
    settings: Settings,
    engine: Engine,
    operations: OperationStore,
    tokens: PageTokens,
    leases: Leases,
    peers: Peers,
) -> Callable[[bool], None]:
    """Registers RecommendationService; returns the function that stops its background work.

    ACTIVE campaigns are loaded here, before the server starts listening.
    """
    single_threaded_blas()
    store = RecommendationStore(engine)

    def training() -> grpc.Channel:
        return peers.channel("training")

    def dataset() -> grpc.Channel:
        return peers.channel("dataset")

    artifacts = Artifacts(settings)
    feeds = EventFeeds(lambda: peers.stream_channel("dataset"))  # connections of their own (core/peers.py)
    campaigns = Campaigns(store, operations, SolutionVersions(training), feeds, artifacts, leases)
    campaigns.recover()
    campaigns.start_sync(settings.campaign_sync_seconds)
    batch = BatchJobs(store, operations, campaigns, artifacts, leases)
    batch.recover()
    leases.on_sweep(campaigns.sweep)
    leases.on_sweep(batch.recover)
    servicer = RecommendationServicer(
        store,
        campaigns,
        batch,
        IdempotencyStore(engine, settings.request_id_retention_seconds),
        lambda name, field_name: check_dataset_group(dataset, name, field_name),
        lambda job_id: artifacts.uri("batch-inference", f"{job_id}.jsonl"),
        tokens,
        FileRoots(settings),
    )
    recommendation_service_pb2_grpc.add_RecommendationServiceServicer_to_server(servicer, server)

    def close(wait: bool) -> None:
        batch.shutdown(wait)
        campaigns.close(wait)

    return close
