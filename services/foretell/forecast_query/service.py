"""Wires the forecast-query service into a gRPC server.

QueryForecast resolves the forecast through TrainingService.GetForecast on the training channel
and serves its stored table from memory (`forecasts` holds the cache and its staleness rules,
`query` the request rules and the encoding of answers). The handler returns the answer already
encoded, so the method is registered here with a serializer that passes bytes through, in place
of the generated `add_ForecastQueryServiceServicer_to_server`.
"""

from __future__ import annotations

import grpc

from foretell.core import auth
from foretell.core.pagination import PageTokens
from foretell.core.peers import Peers
from foretell.core.settings import Settings
from foretell.forecast_query.forecasts import Forecasts, table_loader
from foretell.forecast_query.query import parse_request
from foretell.v1 import forecast_query_service_pb2 as api

SERVICE_NAME = api.DESCRIPTOR.services_by_name["ForecastQueryService"].full_name


class ForecastQueryServicer:
    def __init__(self, forecasts: Forecasts, tokens: PageTokens) -> None:
        self._forecasts = forecasts
        self._tokens = tokens

    def QueryForecast(self, request: api.QueryForecastRequest, context: grpc.ServicerContext) -> bytes:  # noqa: N802
        """An encoded QueryForecastResponse."""
        filters = parse_request(request, self._tokens)
        auth.authorize_resource(filters.forecast)
        return self._forecasts.get(filters.forecast).answer(filters)


def _serialize(response: bytes | api.QueryForecastResponse) -> bytes:
    return response if isinstance(response, bytes) else response.SerializeToString()


def add_forecast_query_service(server: grpc.Server, settings: Settings, peers: Peers, tokens: PageTokens) -> None:
    """Registers ForecastQueryService; tables load on their first query (nothing to stop)."""

    def training() -> grpc.Channel:
        return peers.channel("training")

    servicer = ForecastQueryServicer(Forecasts(training, table_loader(settings)), tokens)
    handlers = {
        "QueryForecast": grpc.unary_unary_rpc_method_handler(
            servicer.QueryForecast,
            request_deserializer=api.QueryForecastRequest.FromString,
            response_serializer=_serialize,
        )
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE_NAME, handlers),))
    server.add_registered_method_handlers(SERVICE_NAME, handlers)
