"""Wires the recommendation service into a gRPC server.

The contract is complete; its RPCs answer UNIMPLEMENTED until the recommendation issue lands.
"""

from __future__ import annotations

import grpc

from foretell.v1 import recommendation_service_pb2, recommendation_service_pb2_grpc

SERVICE_NAME = recommendation_service_pb2.DESCRIPTOR.services_by_name["RecommendationService"].full_name


def add_recommendation_service(server: grpc.Server) -> None:
    recommendation_service_pb2_grpc.add_RecommendationServiceServicer_to_server(
        recommendation_service_pb2_grpc.RecommendationServiceServicer(),  # type: ignore[abstract]  # every RPC answers UNIMPLEMENTED for now
        server,
    )
