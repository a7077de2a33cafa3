"""The caller's deadline, carried from a server handler into the calls it makes to peer services.

The telemetry interceptor (`foretell.core.metrics`) records each RPC's deadline in a context
variable for as long as its handler runs; `PeerInterceptor` (on every `Peers` channel) then shortens
a peer call's timeout to what the caller has left. Without this a handler whose client gave up after
1 s would keep a thread busy for the peer call's own 10 s timeout. Work that runs outside a handler
(training jobs, event feeds) has no recorded deadline and keeps its own timeouts.
"""

from __future__ import annotations

import contextvars
import time
from collections.abc import Callable
from typing import Any, NamedTuple

import grpc

from foretell.core import tenancy, tracing
from foretell.core.errors import DeadlineExceeded

# time.monotonic() at which the current RPC's caller stops waiting; None outside a handler or
# when the caller set no deadline.
_deadline: contextvars.ContextVar[float | None] = contextvars.ContextVar("foretell_deadline", default=None)


def remaining() -> float | None:
    """Seconds the current RPC's caller still waits, or None when unbounded."""
    deadline = _deadline.get()
    return None if deadline is None else deadline - time.monotonic()


def cap(timeout: float | None) -> float | None:
    """`timeout` shortened to the caller's remaining time; DeadlineExceeded when none is left."""
    left = remaining()
    if left is None:
        return timeout
    if left <= 0:
        raise DeadlineExceeded("the caller's deadline passed before the work was done")
    return left if timeout is None else min(timeout, left)


def restore(deadline: float | None) -> contextvars.Token[float | None]:
    """Records `deadline` (time.monotonic() seconds, None: unbounded) for this thread until `release`."""
    return _deadline.set(deadline)


def release(token: contextvars.Token[float | None]) -> None:
    _deadline.reset(token)


class _CallDetails(NamedTuple):
    method: str
    timeout: float | None
    metadata: Any
    credentials: grpc.CallCredentials | None
    wait_for_ready: bool | None
    compression: grpc.Compression | None


class _Details(_CallDetails, grpc.ClientCallDetails):
    pass


class PeerInterceptor(
    grpc.UnaryUnaryClientInterceptor,
    grpc.UnaryStreamClientInterceptor,
    grpc.StreamUnaryClientInterceptor,
    grpc.StreamStreamClientInterceptor,
):
    """On calls to peer services: the caller's deadline caps the timeout, the current tenant goes along
    (core/tenancy.HEADER), and the current trace context as W3C traceparent metadata under a client span."""

    def _call(self, continuation: Callable[[grpc.ClientCallDetails, Any], Any], details: Any, request: Any) -> Any:
        metadata = list(details.metadata or ())
        if tenancy.current() != tenancy.DEFAULT:
            metadata.append((tenancy.HEADER, tenancy.current()))  # whose names the peer must look up
        span = tracing.client_span(details.method, metadata)
        try:
            new = _Details(
                details.method,
                cap(details.timeout),
                metadata,
                details.credentials,
                getattr(details, "wait_for_ready", None),
                getattr(details, "compression", None),
            )
            call = continuation(new, request)
        except BaseException:
            tracing.end_client_span(span, grpc.StatusCode.UNKNOWN)
            raise
        call.add_done_callback(lambda done: tracing.end_client_span(span, _code(done)))
        return call

    def intercept_unary_unary(self, continuation: Any, client_call_details: Any, request: Any) -> Any:
        return self._call(continuation, client_call_details, request)

    def intercept_unary_stream(self, continuation: Any, client_call_details: Any, request: Any) -> Any:
        return self._call(continuation, client_call_details, request)

    def intercept_stream_unary(self, continuation: Any, client_call_details: Any, request_iterator: Any) -> Any:
        return self._call(continuation, client_call_details, request_iterator)

    def intercept_stream_stream(self, continuation: Any, client_call_details: Any, request_iterator: Any) -> Any:
        return self._call(continuation, client_call_details, request_iterator)


def _code(call: Any) -> grpc.StatusCode:
    try:
        code = call.code()
    except Exception:
        return grpc.StatusCode.UNKNOWN
    return code if isinstance(code, grpc.StatusCode) else grpc.StatusCode.UNKNOWN
