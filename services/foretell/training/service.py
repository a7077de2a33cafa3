"""Wires the training service into a gRPC server."""

from __future__ import annotations

from collections.abc import Callable

import grpc
from sqlalchemy import Engine

from foretell.core.artifact_store import Artifacts
from foretell.core.idempotency import IdempotencyStore
from foretell.core.leases import Leases
from foretell.core.operations import OperationStore
from foretell.core.pagination import PageTokens
from foretell.core.peers import Peers
from foretell.core.settings import Settings
from foretell.training.jobs import JobKind, TrainingJobs
from foretell.training.launcher import Launcher, LocalLauncher
from foretell.training.predictor_jobs import ForecastExportJobs, ForecastJobs, PredictorJobs
from foretell.training.servicer import TrainingServicer
from foretell.training.solution_jobs import SolutionVersionJobs
from foretell.training.store import TrainingStore
from foretell.v1 import training_service_pb2, training_service_pb2_grpc

SERVICE_NAME = training_service_pb2.DESCRIPTOR.services_by_name["TrainingService"].full_name


def add_training_service(
    server: grpc.Server,
    settings: Settings,
    engine: Engine,
    operations: OperationStore,
    tokens: PageTokens,
    leases: Leases,
    peers: Peers,
) -> Callable[[bool], None]:
    """Registers TrainingService; returns the function that stops its jobs."""
    store = TrainingStore(engine)
    dataset_channel = peers.channel("dataset")
    artifacts = Artifacts(settings)
    kinds: dict[str, JobKind] = {
        "solution-version": SolutionVersionJobs(store, dataset_channel, artifacts),
        "predictor": PredictorJobs(store, dataset_channel, artifacts, workers=0),
        "forecast": ForecastJobs(store, dataset_channel, artifacts, workers=0),
        "forecast-export": ForecastExportJobs(store, artifacts),
    }
    jobs = TrainingJobs(
        store,
        operations,
        _launcher(settings),
        kinds,
        settings.artifacts / "jobs",
        settings.training_workers,
        settings.training_timeout_seconds,
        leases,
    )
    servicer = TrainingServicer(
        store,
        jobs,
        operations,
        IdempotencyStore(engine, settings.request_id_retention_seconds),
        dataset_channel,
        artifacts,
        tokens,
    )
    training_service_pb2_grpc.add_TrainingServiceServicer_to_server(servicer, server)
    jobs.recover()
    leases.on_sweep(jobs.recover)
    return jobs.close


def _launcher(settings: Settings) -> Launcher:
    if settings.training_launcher == "kubernetes":
        # Imported only here: the kubernetes client is a production dependency the local path never loads.
        from foretell.training.k8s_launcher import KubernetesLauncher

        return KubernetesLauncher(settings)
    return LocalLauncher()
