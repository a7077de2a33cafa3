"""Wires the forecast-query service into a gRPC server.

The contract is complete; QueryForecast answers UNIMPLEMENTED until the forecasting issue lands.
"""

from __future__ import annotations

import grpc

from foretell.v1 import forecast_query_service_pb2, forecast_query_service_pb2_grpc

SERVICE_NAME = forecast_query_service_pb2.DESCRIPTOR.services_by_name["ForecastQueryService"].full_name


def add_forecast_query_service(server: grpc.Server) -> None:
    forecast_query_service_pb2_grpc.add_ForecastQueryServiceServicer_to_server(
        forecast_query_service_pb2_grpc.ForecastQueryServiceServicer(),  # type: ignore[abstract]  # every RPC answers UNIMPLEMENTED for now
        server,
    )
