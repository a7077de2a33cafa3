"""create_server(settings, services) -> App: the real server, used by main() and by tests (port 0)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from concurrent import futures
from dataclasses import dataclass, field
from typing import Any

import grpc
from google.longrunning import operations_pb2, operations_pb2_grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from sqlalchemy import Engine

from foretell.core.async_server import AsyncServer
from foretell.core.auth import auth_interceptor, peer_resolver
from foretell.core.data_lock import DataDirInUse, DataDirLock, lock_for
from foretell.core.db import make_engine
from foretell.core.interceptors import ErrorInterceptor
from foretell.core.leases import Leases
from foretell.core.metrics import MetricsServer, TelemetryInterceptor
from foretell.core.migrations import SchemaNotCurrent, ensure_schema
from foretell.core.operations import OperationsServicer, OperationStore
from foretell.core.pagination import PageTokens
from foretell.core.peers import Peers
from foretell.core.settings import ALL_SERVICES, ServiceName, Settings
from foretell.dataset import jobs as dataset_jobs
from foretell.dataset import service as dataset_service
from foretell.forecast_query import service as forecast_query_service
from foretell.recommendation import batch, campaigns
from foretell.recommendation import service as recommendation_service
from foretell.runtime.ports import listen
from foretell.training import jobs as training_jobs
from foretell.training import service as training_service

log = logging.getLogger("foretell.server")

# The core/leases.py kinds each service's background work takes.
LEASE_KINDS: dict[str, tuple[str, ...]] = {
    "dataset": dataset_jobs.LEASES,
    "training": (training_jobs.LEASE,),
    "recommendation": (campaigns.LEASE, batch.LEASE),
}
OPERATIONS = operations_pb2.DESCRIPTOR.services_by_name["Operations"].full_name


@dataclass
class App:
    server: grpc.Server
    port: int
    health: health.HealthServicer
    engine: Engine
    services: list[str]
    _closers: list[Callable[[bool], None]] = field(default_factory=list)
    _before_stop: list[Callable[[], None]] = field(default_factory=list)
    # The /metrics endpoint (FORETELL_METRICS_PORT), None when off.
    metrics: MetricsServer | None = None
    # The embedded database's single-writer lock (core/data_lock.py), held until stop.
    lock: DataDirLock | None = None

    def start(self) -> None:
        self.server.start()
        for name in ["", *self.services]:
            self.health.set(name, health_pb2.HealthCheckResponse.SERVING)
        metrics = {"metrics_port": self.metrics.port} if self.metrics else {}
        log.info("serving", extra={"port": self.port, "services": self.services, **metrics})

    def stop(self, grace: float | None = None) -> None:
        """Stops taking calls, lets in-flight ones finish within `grace`, then stops jobs."""
        self.health.enter_graceful_shutdown()
        for end in self._before_stop:
            end()
        self.server.stop(grace).wait()
        for close in self._closers:
            close(grace is not None and grace > 0)
        if self.metrics is not None:  # last: scrapes still work while the server drains
            self.metrics.close()
            self.metrics = None
        self.engine.dispose()
        if self.lock is not None:  # last: nothing of this server writes any more
            self.lock.release()


def grpc_options(settings: Settings) -> list[tuple[str, Any]]:
    """The gRPC server's channel options (the serving benches give their no-op server the same)."""
    return [
        ("grpc.max_receive_message_length", settings.max_message_bytes),
        ("grpc.max_send_message_length", settings.max_message_bytes),
        ("grpc.so_reuseport", 0),
        ("grpc.max_concurrent_streams", settings.max_streams_per_connection),
        # Count open streams as the client does (not streams the server has yet to free), so a client
        # at the cap waits for a slot instead of getting RST_STREAM(REFUSED_STREAM), i.e. UNAVAILABLE.
        ("grpc.http.overload_protection", 0),
    ]


def create_server(settings: Settings, services: Iterable[ServiceName] = ALL_SERVICES) -> App:
    wanted = list(dict.fromkeys(services))
    try:
        # First: a second server on this data directory must not even migrate or recover.
        lock = lock_for(settings.database_url, wanted)
    except DataDirInUse as error:
        raise SystemExit(f"cannot start: {error}") from None
    try:
        app = _create_server(settings, wanted)
    except BaseException:
        if lock is not None:
            lock.release()
        raise
    app.lock = lock
    return app


def _create_server(settings: Settings, wanted: list[ServiceName]) -> App:
    engine = make_engine(settings.database_url)
    try:
        # Before any store: their create_all must not build tables Alembic does not know about.
        ensure_schema(engine)
    except SchemaNotCurrent as error:
        engine.dispose()
        raise SystemExit(f"cannot start: {error}") from None
    guard = auth_interceptor(settings)
    server = AsyncServer(
        futures.ThreadPoolExecutor(max_workers=settings.max_workers, thread_name_prefix="rpc"),
        # Telemetry outermost: it times and counts every call, those the inner ones refuse included.
        interceptors=[TelemetryInterceptor(), ErrorInterceptor(), *([guard] if guard else [])],
        maximum_concurrent_rpcs=settings.max_concurrent_rpcs,
        options=grpc_options(settings),
        max_streams=settings.max_streams,
        max_streams_per_principal=settings.max_streams_per_principal,
        principal_of=guard.principal_name if guard else lambda metadata: None,
        client_stream_idle_seconds=settings.client_stream_idle_seconds,
    )
    # Bound before the services are added: they need the address to call their peers here.
    port = listen(server, settings)
    metrics = _metrics_server(settings)
    peers = Peers(settings, f"{_dialable(settings.host)}:{port}")
    if guard:
        guard.resolver = peer_resolver(peers.channel)
    operations = OperationStore(engine)
    leases = Leases(engine, settings.lease_seconds)
    if engine.dialect.name == "sqlite":
        # One process per service on a SQLite database (its lock): every lease of these services is a dead process's.
        leases.clear(kind for service in wanted for kind in LEASE_KINDS.get(service, ()))
    # One secret per database, read once: every service's page tokens, and every replica's, agree.
    tokens = PageTokens.of_database(engine)
    closers: list[Callable[[bool], None]] = []
    before_stop: list[Callable[[], None]] = []
    names: list[str] = []
    for service in wanted:
        if service == "dataset":
            closers.append(
                dataset_service.add_dataset_service(server, settings, engine, operations, tokens, leases, before_stop)
            )
            names += [dataset_service.SERVICE_NAME, dataset_service.EVENT_FEED_SERVICE_NAME]
        elif service == "training":
            closers.append(
                training_service.add_training_service(server, settings, engine, operations, tokens, leases, peers)
            )
            names.append(training_service.SERVICE_NAME)
        elif service == "recommendation":
            closers.append(
                recommendation_service.add_recommendation_service(
                    server, settings, engine, operations, tokens, leases, peers
                )
            )
            names.append(recommendation_service.SERVICE_NAME)
        elif service == "forecast-query":
            forecast_query_service.add_forecast_query_service(server, settings, peers, tokens)
            names.append(forecast_query_service.SERVICE_NAME)
        else:
            raise ValueError(f"unknown service {service!r}")
    operations_pb2_grpc.add_OperationsServicer_to_server(OperationsServicer(operations, tokens), server)
    names.append(OPERATIONS)
    health_servicer = health.HealthServicer(experimental_non_blocking=True)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    for name in ["", *names]:
        health_servicer.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
    reflection.enable_server_reflection([*names, health.SERVICE_NAME, reflection.SERVICE_NAME], server)
    closers.append(lambda wait: peers.close())
    closers.append(lambda wait: leases.close())
    leases.start()
    return App(server, port, health_servicer, engine, names, closers, before_stop, metrics)


def _metrics_server(settings: Settings) -> MetricsServer | None:
    """The /metrics endpoint, bound before the services start: a port already taken stops the start
    before any job resumes."""
    if settings.metrics_port is None:
        return None
    try:
        return MetricsServer(settings.host, settings.metrics_port)
    except OSError as error:
        raise SystemExit(f"cannot serve metrics on {settings.host}:{settings.metrics_port}: {error}") from None


def _dialable(host: str) -> str:
    """An address this process can call itself on when it listens on `host`."""
    return "127.0.0.1" if host in ("0.0.0.0", "::", "[::]", "") else host
