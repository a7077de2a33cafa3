"""Server interceptor: request-scoped log context and domain-error mapping.

Every handler kind (unary/streaming) is wrapped so that a ForetellError becomes a
rich google.rpc.Status and anything unexpected becomes INTERNAL without a traceback
reaching the client (it is logged instead).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from typing import Any

import grpc
from google.rpc import code_pb2, status_pb2
from grpc_status import rpc_status

from foretell.core import logs
from foretell.core.errors import ForetellError, fit_trailers, invalid
from foretell.core.wire import find_bad_field

log = logging.getLogger("foretell.rpc")


def _abort(context: grpc.ServicerContext, status: status_pb2.Status) -> None:
    context.abort_with_status(rpc_status.to_status(fit_trailers(status)))


def _request_id(context: grpc.ServicerContext) -> str:
    for key, value in context.invocation_metadata() or ():
        if key == "x-request-id":
            return str(value)
    return ""


class Malformed:
    """Stands in for a request that failed to parse, so the handler can answer INVALID_ARGUMENT."""

    def __init__(self, deserializer: Callable[[bytes], Any], data: bytes) -> None:
        self.deserializer = deserializer
        self.data = data

    def error(self) -> ForetellError:
        descriptor = getattr(getattr(self.deserializer, "__self__", None), "DESCRIPTOR", None)
        where = find_bad_field(descriptor, self.data) if descriptor is not None else ""
        if where:
            return invalid(where, "is not valid UTF-8")
        return invalid("request", "is not a valid protobuf message of the expected type")


def _tolerant(deserializer: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    if deserializer is None:
        return None

    def parse(data: bytes) -> Any:
        try:
            return deserializer(data)
        except Exception:
            return Malformed(deserializer, data)

    return parse


def _checked(requests: Iterator[Any]) -> Iterator[Any]:
    for request in requests:
        if isinstance(request, Malformed):
            raise request.error()
        yield request


class AbortedCall(Exception):
    """Raised by context.abort() (core.async_server's SyncContext): the call's status is already set."""


Wrap = Callable[[Callable[..., Any], bool], Callable[..., Any]]
_KINDS = (
    ("unary_unary", False, grpc.unary_unary_rpc_method_handler),
    ("unary_stream", True, grpc.unary_stream_rpc_method_handler),
    ("stream_unary", False, grpc.stream_unary_rpc_method_handler),
    ("stream_stream", True, grpc.stream_stream_rpc_method_handler),
)


def rewrap(
    handler: grpc.RpcMethodHandler, wrap: Wrap, request_deserializer: Callable[[bytes], Any] | None = None
) -> grpc.RpcMethodHandler:
    """`handler` with its behaviour replaced by `wrap(behaviour, streaming_response)`, whatever its kind; what
    every interceptor here does. `request_deserializer` replaces the handler's when given."""
    for attribute, streaming_response, make in _KINDS:
        behavior = getattr(handler, attribute)
        if behavior is not None:
            return make(
                wrap(behavior, streaming_response),
                request_deserializer or handler.request_deserializer,
                handler.response_serializer,
            )
    return handler


class ErrorInterceptor(grpc.ServerInterceptor):
    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler | None],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        handler = continuation(details)
        if handler is None:
            return None
        method = details.method

        def guard(behavior: Callable[..., Any], streaming_response: bool) -> Callable[..., Any]:
            def run(request: Any, context: grpc.ServicerContext) -> Any:
                token_m = logs.rpc_method.set(method)
                token_r = logs.request_id.set(_request_id(context))
                start = time.perf_counter()
                try:
                    if isinstance(request, Malformed):
                        raise request.error()
                    if not hasattr(request, "DESCRIPTOR"):
                        request = _checked(request)  # client-streaming: check each message
                    result = behavior(request, context)
                    if streaming_response:
                        return _guard_stream(result, context)
                    return result
                except ForetellError as exc:
                    log.info("rejected", extra=rejected(exc))
                    _abort(context, exc.to_status())
                except NotImplementedError:
                    # Generated base servicers raise this for RPCs a release does not serve yet.
                    _abort(
                        context,
                        status_pb2.Status(code=code_pb2.UNIMPLEMENTED, message=f"{method} is not implemented yet"),
                    )
                except grpc.RpcError as exc:
                    if not isinstance(exc, grpc.Call):
                        raise
                    # A peer service's answer that the handler did not handle: its code, not UNKNOWN.
                    # The code only: the peer's text may name what the peer read.
                    log.warning("peer call failed", extra={"code": exc.code().name})
                    _abort(context, _peer_status(exc))
                except Exception as exc:
                    if isinstance(exc, AbortedCall):
                        raise  # context.abort() inside the handler: already a status
                    log.error("unhandled error", extra=logs.failure(exc))
                    _abort(context, status_pb2.Status(code=code_pb2.INTERNAL, message="internal error"))
                finally:
                    log.debug("rpc", extra={"ms": round((time.perf_counter() - start) * 1e3, 3)})
                    logs.rpc_method.reset(token_m)
                    logs.request_id.reset(token_r)
                return None

            return run

        def _guard_stream(items: Iterator[Any], context: grpc.ServicerContext) -> Iterator[Any]:
            try:
                yield from items
            except ForetellError as exc:
                _abort(context, exc.to_status())

        return rewrap(handler, guard, _tolerant(handler.request_deserializer))


def rejected(exc: ForetellError) -> dict[str, object]:
    """The "rejected" log line's fields: code, reason, the fields at fault and the ErrorInfo keys.

    Not the message: it may quote the request or a line of the caller's file (a CSV header, a value).
    """
    fields: dict[str, object] = {"code": code_pb2.Code.Name(exc.code), "reason": exc.reason}
    violations = getattr(exc, "violations", None)
    if violations:
        fields["fields"] = [v.field for v in violations]
    if exc.metadata:
        fields["about"] = sorted(exc.metadata)
    return fields


def _peer_status(call: grpc.Call) -> status_pb2.Status:
    """The status to answer with when a call to a peer service failed.

    Its code passes through (NOT_FOUND, DEADLINE_EXCEEDED, UNAVAILABLE... mean the same to the caller),
    except a refused credential: the caller's own key was fine, this service's internal one was not.
    """
    code = call.code()
    if code in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED):
        return status_pb2.Status(code=code_pb2.INTERNAL, message="a peer service refused this service's credentials")
    detailed = rpc_status.from_call(call)  # the peer's details (BadRequest, ErrorInfo) when it sent them
    return detailed or status_pb2.Status(code=code.value[0], message=call.details() or code.name)
