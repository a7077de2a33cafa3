"""Wires the training service into a gRPC server.

The contract is complete; its RPCs answer UNIMPLEMENTED until the training issue lands.
"""

from __future__ import annotations

import grpc

from foretell.v1 import training_service_pb2, training_service_pb2_grpc

SERVICE_NAME = training_service_pb2.DESCRIPTOR.services_by_name["TrainingService"].full_name


def add_training_service(server: grpc.Server) -> None:
    training_service_pb2_grpc.add_TrainingServiceServicer_to_server(
        training_service_pb2_grpc.TrainingServiceServicer(),  # type: ignore[abstract]  # every RPC answers UNIMPLEMENTED for now
        server,
    )
