"""OpenTelemetry hooks: a server span per RPC (parent from W3C traceparent metadata) and a client span
per peer call (its context injected into the call's metadata).

Only the OpenTelemetry API is used. Until a process configures an SDK tracer provider
(`opentelemetry.trace.set_tracer_provider`, e.g. through `opentelemetry-instrument` and its
OTEL_* variables) every function here returns at once and costs nothing measurable. Attributes follow
the RPC semantic conventions: rpc.system, rpc.service, rpc.method, rpc.grpc.status_code.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, MutableSequence
from typing import Any

import grpc
from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.trace import Span, SpanKind, Status, StatusCode

# Server-side codes that mean the server failed (semantic conventions for gRPC); others are the caller's.
_SERVER_ERRORS = {
    grpc.StatusCode.UNKNOWN,
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.UNIMPLEMENTED,
    grpc.StatusCode.INTERNAL,
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.DATA_LOSS,
}


# Without a provider, how often `enabled` looks again (the look costs an environment lookup per RPC).
PROVIDER_RECHECK_SECONDS = 1.0
_checked_at = -PROVIDER_RECHECK_SECONDS
_enabled = False


def enabled() -> bool:
    """Whether a real tracer provider is configured (the API's default proxy and no-op record nothing).

    Asked on every RPC, so the answer is cached: a provider, once set, stays (the API sets it only once);
    one set while the server runs is noticed within PROVIDER_RECHECK_SECONDS."""
    global _checked_at, _enabled
    if _enabled:
        return True
    now = time.monotonic()
    if now - _checked_at >= PROVIDER_RECHECK_SECONDS:
        _checked_at = now
        provider = trace.get_tracer_provider()
        _enabled = not isinstance(provider, trace.ProxyTracerProvider | trace.NoOpTracerProvider)
    return _enabled


def _attributes(method: str) -> dict[str, str]:
    service, _, name = method.lstrip("/").partition("/")
    return {"rpc.system": "grpc", "rpc.service": service, "rpc.method": name}


def start_server_span(method: str, metadata: Iterable[tuple[str, Any]] | None) -> Span | None:
    """A SERVER span for the RPC `method`, child of the caller's traceparent if it sent one."""
    if not enabled():
        return None
    carrier = {key: value for key, value in metadata or () if isinstance(value, str)}
    parent = propagate.extract(carrier)
    tracer = trace.get_tracer("foretell")
    return tracer.start_span(method.lstrip("/"), context=parent, kind=SpanKind.SERVER, attributes=_attributes(method))


def activate(span: Span | None) -> object | None:
    """Makes `span` current in this thread (peer calls become its children); pass the result to `deactivate`."""
    return None if span is None else otel_context.attach(trace.set_span_in_context(span))


def deactivate(token: object | None) -> None:
    if token is not None:
        otel_context.detach(token)  # type: ignore[arg-type]


def end_server_span(span: Span | None, code: grpc.StatusCode) -> None:
    if span is None:
        return
    span.set_attribute("rpc.grpc.status_code", code.value[0])
    if code in _SERVER_ERRORS:
        span.set_status(Status(StatusCode.ERROR, code.name))
    span.end()


def client_span(method: str, metadata: MutableSequence[tuple[str, Any]]) -> Span | None:
    """A CLIENT span for a peer call, child of the current span; adds its traceparent to `metadata`."""
    if not enabled():
        return None
    span = trace.get_tracer("foretell").start_span(
        method.lstrip("/"), kind=SpanKind.CLIENT, attributes=_attributes(method)
    )
    carrier: dict[str, str] = {}
    propagate.inject(carrier, context=trace.set_span_in_context(span))
    metadata.extend(carrier.items())
    return span


def end_client_span(span: Span | None, code: grpc.StatusCode) -> None:
    if span is None:
        return
    span.set_attribute("rpc.grpc.status_code", code.value[0])
    if code != grpc.StatusCode.OK:
        span.set_status(Status(StatusCode.ERROR, code.name))
    span.end()
