"""The one channel a Client uses, and the gRPC service config that gives it deadlines and retries.

gRPC has no default deadline, so a call without one can hang forever on a stuck
server. The service config gives every method of every Foretell service a
``timeout``, so even raw stub calls made without ``timeout=`` are bounded.

gRPC Python fires service-config deadlines about 1 to 1.5 s early (measured with
grpcio 1.85; grpc/grpc#34547), so a configured "1s" fails every call at once. The
configured value is therefore the client's timeout plus ``DEADLINE_SLACK``: a
backstop for raw stub calls, while the helpers pass the exact ``timeout=``, which
gRPC honours precisely (the effective deadline is the earlier of the two).

Transparent retries (``retryPolicy``) are only configured for reads, and only on
UNAVAILABLE (the request never reached a server, or the server is shutting down):
replaying a read is harmless. Mutating calls are never retried here, because a
replay could create a second resource or launch a second training job. Callers
retry them themselves, passing the same ``request_id`` again; the server then
returns the first result (AIP-155).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import grpc

from foretell.v1 import (
    dataset_service_pb2,
    forecast_query_service_pb2,
    recommendation_service_pb2,
    training_service_pb2,
)

__all__ = ["DEADLINE_SLACK", "ChannelOptions", "create_channel", "read_methods", "service_config"]

ChannelOptions = Sequence[tuple[str, Any]]

_MODULES = (dataset_service_pb2, training_service_pb2, recommendation_service_pb2, forecast_query_service_pb2)
#: Method name prefixes of side-effect-free RPCs (AIP-131/132 and QueryForecast).
_READ_PREFIXES = ("Get", "List", "Query")
_OPERATIONS = "google.longrunning.Operations"
_OPERATIONS_READS = ("GetOperation", "ListOperations", "WaitOperation")
#: The streamed CSV upload gets its own, longer deadline: the default one is sized for unary calls.
_UPLOAD_METHOD = ("foretell.v1.DatasetService", "ImportData")

#: Seconds added to configured timeouts to make up for gRPC Python firing them early.
DEADLINE_SLACK = 2.0

_RETRY_POLICY: dict[str, Any] = {
    "maxAttempts": 4,
    "initialBackoff": "0.1s",
    "maxBackoff": "2s",
    "backoffMultiplier": 2,
    "retryableStatusCodes": ["UNAVAILABLE"],
}


def _services() -> list[str]:
    """Full names of the Foretell services, read from the generated descriptors."""
    return [service.full_name for module in _MODULES for service in module.DESCRIPTOR.services_by_name.values()]


def read_methods() -> list[tuple[str, str]]:
    """(service, method) pairs that are safe to retry: every Get*/List*/Query* and Operations reads."""
    reads = [
        (service.full_name, method.name)
        for module in _MODULES
        for service in module.DESCRIPTOR.services_by_name.values()
        for method in service.methods
        if method.name.startswith(_READ_PREFIXES)
    ]
    return reads + [(_OPERATIONS, name) for name in _OPERATIONS_READS]


def _duration(seconds: float) -> str:
    """A protobuf JSON Duration ("32s", "2.200000000s"), padded by DEADLINE_SLACK."""
    seconds += DEADLINE_SLACK
    return f"{seconds:.0f}s" if seconds.is_integer() else f"{seconds:.9f}s"


def service_config(timeout: float, upload_timeout: float) -> dict[str, Any]:
    """The service config: round-robin over every address the name resolves to (a headless Kubernetes
    Service lists each pod, so calls spread over the replicas), a per-service deadline, and a retry
    policy for reads only.

    gRPC picks the most specific ``name`` entry, so the read entry repeats the timeout.
    """
    services = [*_services(), _OPERATIONS]
    return {
        "loadBalancingConfig": [{"round_robin": {}}],
        "methodConfig": [
            {"name": [{"service": s} for s in services], "timeout": _duration(timeout)},
            {
                "name": [{"service": s, "method": m} for s, m in read_methods()],
                "timeout": _duration(timeout),
                "retryPolicy": _RETRY_POLICY,
            },
            {
                "name": [{"service": _UPLOAD_METHOD[0], "method": _UPLOAD_METHOD[1]}],
                "timeout": _duration(max(timeout, upload_timeout)),
            },
        ],
    }


def create_channel(
    target: str,
    *,
    timeout: float,
    upload_timeout: float,
    credentials: grpc.ChannelCredentials | None = None,
    options: ChannelOptions = (),
) -> grpc.Channel:
    """Opens the channel; ``options`` are added last, and a caller's ``grpc.service_config`` wins."""
    merged: list[tuple[str, Any]] = [
        ("grpc.enable_retries", 1),
        ("grpc.service_config", json.dumps(service_config(timeout, upload_timeout))),
        # gRPC's default lets reconnect attempts drift 2 minutes apart: a server restarted during a long wait
        # would be found that late. Callers that wait out a restart (Client.wait_operation) try every 5 s at most.
        ("grpc.max_reconnect_backoff_ms", 5000),
    ]
    overridden = {key for key, _ in options}
    merged = [(key, value) for key, value in merged if key not in overridden] + list(options)
    if credentials is not None:
        return grpc.secure_channel(target, credentials, options=merged)
    return grpc.insecure_channel(target, options=merged)
