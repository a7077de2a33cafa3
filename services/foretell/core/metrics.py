"""Prometheus metrics, the outermost server interceptor, and the /metrics HTTP endpoint.

The RPC metrics use the names of go-grpc-prometheus (grpc_server_handled_total,
grpc_server_handling_seconds, ...) so that existing gRPC dashboards work unchanged. Metrics live in
prometheus_client's default registry: one server per process, plus the process_* metrics it
exports. gRPC refuses calls beyond its concurrency limit (FORETELL_MAX_CONCURRENT_RPCS) after the
interceptors have looked the method up but without running a handler, so such a call is received and
never started: foretell_rpc_received_total minus grpc_server_started_total counts them.

`TelemetryInterceptor` also opens the RPC's tracing span (`foretell.core.tracing`) and records its
deadline (`foretell.core.deadlines`): all three need the same hook around the whole call, including
the iteration of a streamed response, and one wrapper costs less per call than three.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

import grpc
from prometheus_client import Counter, Gauge, Histogram, start_http_server

from foretell.core import deadlines, tracing
from foretell.core.interceptors import rewrap

_RPC = ("grpc_type", "grpc_service", "grpc_method")

RPC_RECEIVED = Counter(
    "foretell_rpc_received_total",
    "RPCs received for a known method; those never started were refused by the concurrency limit.",
    _RPC,
)
RPC_STARTED = Counter("grpc_server_started_total", "RPCs whose handler started.", _RPC)
RPC_HANDLED = Counter(
    "grpc_server_handled_total", "RPCs completed on the server, by status code.", (*_RPC, "grpc_code")
)
RPC_SECONDS = Histogram(
    "grpc_server_handling_seconds",
    "Time from the start of an RPC's handler to its end (a streamed response: its last message).",
    _RPC,
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300),
)
RPC_IN_FLIGHT = Gauge("foretell_rpc_in_flight", "RPCs whose handler is running.", ("grpc_service", "grpc_method"))
CAMPAIGN_VERSION = Gauge(
    "foretell_campaign_solution_version_info",
    "1 for the solution version each campaign serves in this process.",
    ("campaign", "solution_version"),
)
TRAINING_SECONDS = Histogram(
    "foretell_training_job_duration_seconds",
    "Training jobs from submission (queue time included) to their end, by kind and outcome.",
    ("kind", "outcome"),
    buckets=(1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600, 7200, 14400, 28800, 86400),
)
IMPORT_ROWS = Counter("foretell_import_rows_total", "Rows committed by import jobs.", ("table",))

_campaigns: dict[str, str] = {}
_campaigns_lock = threading.Lock()


# ---- hooks called by the services -------------------------------------------------------------


def campaign_serving(campaign: str, solution_version: str | None) -> None:
    """The campaign now serves `solution_version` in this process (None: it serves nothing any more)."""
    with _campaigns_lock:
        old = _campaigns.pop(campaign, None)
        if old is not None and old != solution_version:
            CAMPAIGN_VERSION.remove(campaign, old)
        if solution_version is not None:
            _campaigns[campaign] = solution_version
            CAMPAIGN_VERSION.labels(campaign, solution_version).set(1)


def training_job_ended(kind: str, outcome: str, submitted: datetime | None) -> None:
    if submitted is None:
        return
    if submitted.tzinfo is None:  # SQLite hands back naive UTC times
        submitted = submitted.replace(tzinfo=UTC)
    TRAINING_SECONDS.labels(kind, outcome).observe(max(0.0, (datetime.now(UTC) - submitted).total_seconds()))


def rows_imported(table: str, rows: int) -> None:
    IMPORT_ROWS.labels(table).inc(rows)


# ---- the /metrics endpoint --------------------------------------------------------------------


class MetricsServer:
    """prometheus_client's HTTP server on `host:port` (0: a free port), serving /metrics."""

    def __init__(self, host: str, port: int) -> None:
        self._server, self._thread = start_http_server(port, addr=host)
        self.port: int = self._server.server_port

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)


# ---- the interceptor --------------------------------------------------------------------------


def _kind(handler: grpc.RpcMethodHandler) -> str:
    if handler.request_streaming:
        return "bidi_stream" if handler.response_streaming else "client_stream"
    return "server_stream" if handler.response_streaming else "unary"


def _final_code(context: grpc.ServicerContext, failed: bool) -> grpc.StatusCode:
    """The status the caller sees: the handler's code, unless its deadline passed or it went away first."""
    left = context.time_remaining()
    if left is not None and left <= 0:
        return grpc.StatusCode.DEADLINE_EXCEEDED
    code = context.code()  # set by abort()/set_code()
    if isinstance(code, grpc.StatusCode):
        return code
    if failed:
        return grpc.StatusCode.UNKNOWN
    return grpc.StatusCode.OK if context.is_active() else grpc.StatusCode.CANCELLED


class _Method:
    """One method's labelled metrics, looked up once: `labels()` costs more than the update itself."""

    def __init__(self, labels: tuple[str, str, str]) -> None:
        self.labels = labels
        self.received = RPC_RECEIVED.labels(*labels)
        self.started = RPC_STARTED.labels(*labels)
        self.seconds = RPC_SECONDS.labels(*labels)
        self.in_flight = RPC_IN_FLIGHT.labels(labels[1], labels[2])
        self.handled: dict[grpc.StatusCode, Any] = {}

    def finished(self, code: grpc.StatusCode) -> Any:
        counter = self.handled.get(code)
        if counter is None:
            counter = self.handled[code] = RPC_HANDLED.labels(*self.labels, code.name)
        return counter


_methods: dict[tuple[str, str, str], _Method] = {}


def _method(labels: tuple[str, str, str]) -> _Method:
    found = _methods.get(labels)
    if found is None:
        found = _methods.setdefault(labels, _Method(labels))
    return found


class _Call:
    """One RPC's metrics and span; `end` runs once, whichever way the call finishes."""

    def __init__(self, method: _Method, span: Any) -> None:
        self.method = method
        self.span = span
        self.start = time.perf_counter()
        self._ended = False
        self._lock = threading.Lock()
        method.started.inc()
        method.in_flight.inc()

    def end(self, code: grpc.StatusCode) -> None:
        with self._lock:
            if self._ended:
                return
            self._ended = True
        self.method.seconds.observe(time.perf_counter() - self.start)
        self.method.finished(code).inc()
        self.method.in_flight.dec()
        tracing.end_server_span(self.span, code)


class TelemetryInterceptor(grpc.ServerInterceptor):
    """Outermost interceptor: RPC metrics, the server span, and the deadline seen by peer calls."""

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler | None],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        handler = continuation(details)
        if handler is None:
            return None
        method = details.method
        service, _, name = method.lstrip("/").partition("/")
        method_metrics = _method((_kind(handler), service, name))
        method_metrics.received.inc()
        metadata = details.invocation_metadata

        def wrap(behavior: Callable[..., Any], streaming_response: bool) -> Callable[..., Any]:
            def run(request: Any, context: grpc.ServicerContext) -> Any:
                call = _Call(method_metrics, tracing.start_server_span(method, metadata))
                deadline = deadlines.restore(_deadline_of(context))
                span_token = tracing.activate(call.span)
                try:
                    result = behavior(request, context)
                except BaseException:
                    call.end(_final_code(context, True))
                    raise
                finally:
                    tracing.deactivate(span_token)
                    deadlines.release(deadline)
                if not streaming_response:
                    call.end(_final_code(context, False))
                    return result
                # A client that goes away mid-stream stops the iteration without telling the iterator.
                context.add_callback(lambda: call.end(grpc.StatusCode.CANCELLED))
                return _stream(result, call, context)

            return run

        return rewrap(handler, wrap)


def _deadline_of(context: grpc.ServicerContext) -> float | None:
    left = context.time_remaining()
    return None if left is None else time.monotonic() + left


def _stream(items: Iterator[Any], call: _Call, context: grpc.ServicerContext) -> Iterator[Any]:
    """Yields the handler's messages, with its deadline and span current while each one is made."""
    deadline = _deadline_of(context)
    iterator = iter(items)
    while True:
        deadline_token = deadlines.restore(deadline)
        span_token = tracing.activate(call.span)
        try:
            item = next(iterator)
        except StopIteration:
            call.end(_final_code(context, False))
            return
        except BaseException:
            call.end(_final_code(context, True))
            raise
        finally:
            tracing.deactivate(span_token)
            deadlines.release(deadline_token)
        yield item
