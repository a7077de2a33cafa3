"""Wires the recommendation service into a gRPC server."""

from __future__ import annotations

from collections.abc import Callable

import grpc
from sqlalchemy import Engine

from foretell.core.operations import OperationStore
from foretell.core.peers import Peers
from foretell.core.settings import Settings
from foretell.v1 import recommendation_service_pb2, recommendation_service_pb2_grpc

SERVICE_NAME = recommendation_service_pb2.DESCRIPTOR.services_by_name["RecommendationService"].full_name


def add_recommendation_service(
    server: grpc.Server, settings: Settings, engine: Engine, operations: OperationStore, peers: Peers
) -> Callable[[bool], None]:
    """Registers RecommendationService; returns the function that stops its background work."""
    recommendation_service_pb2_grpc.add_RecommendationServiceServicer_to_server(
        recommendation_service_pb2_grpc.RecommendationServiceServicer(),  # type: ignore[abstract]  # replaced by the recommendation servicer
        server,
    )
    return lambda wait: None
