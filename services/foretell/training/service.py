"""Wires the training service into a gRPC server."""

from __future__ import annotations

from collections.abc import Callable

import grpc
from sqlalchemy import Engine

from foretell.core.operations import OperationStore
from foretell.core.peers import Peers
from foretell.core.settings import Settings
from foretell.v1 import training_service_pb2, training_service_pb2_grpc

SERVICE_NAME = training_service_pb2.DESCRIPTOR.services_by_name["TrainingService"].full_name


def add_training_service(
    server: grpc.Server, settings: Settings, engine: Engine, operations: OperationStore, peers: Peers
) -> Callable[[bool], None]:
    """Registers TrainingService; returns the function that stops its background work."""
    training_service_pb2_grpc.add_TrainingServiceServicer_to_server(
        training_service_pb2_grpc.TrainingServiceServicer(),  # type: ignore[abstract]  # replaced by the training servicer
        server,
    )
    return lambda wait: None
