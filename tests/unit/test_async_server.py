"""AsyncServer: synchronous handlers and interceptors served by grpc.aio, with the grpc.ServicerContext they
expect (abort with details, is_active, add_callback, client streams, drain on stop)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from concurrent import futures
from typing import Any

import grpc
import pytest
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from foretell.core.async_server import AsyncServer

SERVICE = "test.Echo"


class Echo:
    def __init__(self) -> None:
        self.ended = threading.Event()
        self.callback_ran = threading.Event()
        self.release = threading.Event()
        self.collect_ended = threading.Event()

    def Unary(self, request: bytes, context: grpc.ServicerContext) -> bytes:  # noqa: N802
        if request == b"fail":
            detail = error_details_pb2.BadRequest(
                field_violations=[error_details_pb2.BadRequest.FieldViolation(field="name", description="bad")]
            )
            status = status_pb2.Status(code=code_pb2.INVALID_ARGUMENT, message="name is bad")
            status.details.add().Pack(detail)
            context.abort_with_status(rpc_status.to_status(status))
        if request == b"slow":
            self.release.wait(10)
        return b"echo:" + request + b":" + dict(context.invocation_metadata()).get("x-tag", "").encode()

    def Stream(self, request: bytes, context: grpc.ServicerContext) -> Iterator[bytes]:  # noqa: N802
        context.add_callback(self.callback_ran.set)
        count = 0
        try:
            while context.is_active():
                yield b"%d" % count
                count += 1
                time.sleep(0.01)
        finally:  # the loop ended (is_active) or the generator was closed at a yield: either way, promptly
            self.ended.set()

    def Collect(self, requests: Iterator[bytes], context: grpc.ServicerContext) -> bytes:  # noqa: N802
        try:
            return b"+".join(requests)
        finally:
            self.collect_ended.set()


class Tagging(grpc.ServerInterceptor):
    """A synchronous interceptor like Foretell's: it wraps the behaviour of the handler it is given."""

    def __init__(self) -> None:
        self.seen: list[str] = []

    def intercept_service(
        self, continuation: Callable[[grpc.HandlerCallDetails], Any], details: grpc.HandlerCallDetails
    ) -> Any:
        self.seen.append(details.method)
        handler = continuation(details)
        if handler is None or handler.unary_unary is None:
            return handler
        inner = handler.unary_unary

        def run(request: bytes, context: grpc.ServicerContext) -> bytes:
            return inner(request, context) + b"!"

        return grpc.unary_unary_rpc_method_handler(run)


@pytest.fixture
def served() -> Iterator[tuple[Echo, Tagging, grpc.Channel, AsyncServer]]:
    echo, tagging = Echo(), Tagging()
    server = AsyncServer(futures.ThreadPoolExecutor(4), [tagging], maximum_concurrent_rpcs=8)
    server.add_registered_method_handlers(
        SERVICE,
        {
            "Unary": grpc.unary_unary_rpc_method_handler(echo.Unary),
            "Stream": grpc.unary_stream_rpc_method_handler(echo.Stream),
            "Collect": grpc.stream_unary_rpc_method_handler(echo.Collect),
        },
    )
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    yield echo, tagging, channel, server
    echo.release.set()
    channel.close()
    server.stop(None).wait(10)


def _unary(channel: grpc.Channel) -> Any:
    return channel.unary_unary(f"/{SERVICE}/Unary")


def test_a_sync_handler_answers_through_the_sync_interceptors(served: Any) -> None:
    _, tagging, channel, _ = served
    assert _unary(channel)(b"hi", metadata=[("x-tag", "t1")], timeout=5) == b"echo:hi:t1!"
    assert tagging.seen == [f"/{SERVICE}/Unary"]


def test_abort_with_status_reaches_the_client_with_its_details(served: Any) -> None:
    _, _, channel, _ = served
    with pytest.raises(grpc.RpcError) as raised:
        _unary(channel)(b"fail", timeout=5)
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert raised.value.details() == "name is bad"
    status = rpc_status.from_call(raised.value)
    assert status is not None
    bad = error_details_pb2.BadRequest()
    status.details[0].Unpack(bad)
    assert bad.field_violations[0].field == "name"


def test_an_unknown_method_is_unimplemented(served: Any) -> None:
    _, _, channel, _ = served
    with pytest.raises(grpc.RpcError) as raised:
        channel.unary_unary(f"/{SERVICE}/Nope")(b"", timeout=5)
    assert raised.value.code() == grpc.StatusCode.UNIMPLEMENTED


def test_a_client_stream_is_read_by_the_sync_handler(served: Any) -> None:
    _, _, channel, _ = served
    assert channel.stream_unary(f"/{SERVICE}/Collect")(iter([b"a", b"b", b"c"]), timeout=5) == b"a+b+c"


def test_a_cancelled_stream_turns_is_active_false_and_runs_the_callbacks(served: Any) -> None:
    echo, _, channel, _ = served
    call = channel.unary_stream(f"/{SERVICE}/Stream")(b"", timeout=10)
    assert [next(call) for _ in range(3)] == [b"0", b"1", b"2"]
    call.cancel()
    assert echo.ended.wait(5), "the handler kept streaming after the client went away"
    assert echo.callback_ran.wait(5)


def test_stop_lets_in_flight_calls_finish_and_refuses_new_ones(served: Any) -> None:
    echo, _, channel, server = served
    in_flight = _unary(channel).future(b"slow", timeout=10)
    time.sleep(0.3)
    stopped = server.stop(5)
    time.sleep(0.2)
    echo.release.set()
    assert in_flight.result() == b"echo:slow:!"
    assert stopped.wait(10)
    with pytest.raises(grpc.RpcError) as raised:
        _unary(channel)(b"late", timeout=2)
    assert raised.value.code() == grpc.StatusCode.UNAVAILABLE


def test_a_client_stream_cut_off_by_the_stop_frees_its_thread(served: Any) -> None:
    echo, _, channel, server = served
    hold = threading.Event()

    def requests() -> Iterator[bytes]:
        yield b"a"
        hold.wait(10)  # the client keeps its stream open past the grace period

    call = channel.stream_unary(f"/{SERVICE}/Collect").future(requests(), timeout=10)
    time.sleep(0.3)
    assert server.stop(0.2).wait(10)
    # The handler thread was blocked reading the next message: the read ends (RpcError or end of stream) and
    # the thread is free, instead of waiting for a loop that is gone.
    assert echo.collect_ended.wait(5)
    hold.set()
    with pytest.raises(grpc.RpcError):
        call.result()


def test_streams_have_threads_and_a_bound_of_their_own() -> None:
    # One handler thread for unary calls, two streams at most: the streams never take the unary thread, a third
    # stream is refused at once (no thread needed), and a silent client stream is ended.
    echo = Echo()
    server = AsyncServer(
        futures.ThreadPoolExecutor(1), [], max_streams=2, max_streams_per_principal=2, client_stream_idle_seconds=0.3
    )
    server.add_registered_method_handlers(
        SERVICE,
        {
            "Unary": grpc.unary_unary_rpc_method_handler(echo.Unary),
            "Stream": grpc.unary_stream_rpc_method_handler(echo.Stream),
            "Collect": grpc.stream_unary_rpc_method_handler(echo.Collect),
        },
    )
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    hold = threading.Event()
    try:
        streams = [channel.unary_stream(f"/{SERVICE}/Stream")(b"", timeout=10) for _ in range(2)]
        assert [next(s) for s in streams] == [b"0", b"0"]
        assert _unary(channel)(b"hi", timeout=2) == b"echo:hi:"
        with pytest.raises(grpc.RpcError) as raised:
            next(channel.unary_stream(f"/{SERVICE}/Stream")(b"", timeout=2))
        assert raised.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "FORETELL_MAX_STREAMS" in (raised.value.details() or "")
        for s in streams:
            s.cancel()
        deadline = time.monotonic() + 5
        while server.admission.streams:
            assert time.monotonic() < deadline, "the cancelled streams kept their slots"
            time.sleep(0.02)

        def silent() -> Iterator[bytes]:
            yield b"a"
            hold.wait(10)

        with pytest.raises(grpc.RpcError) as raised:
            channel.stream_unary(f"/{SERVICE}/Collect")(silent(), timeout=10)
        # The server's ErrorInterceptor makes this DEADLINE_EXCEEDED (tests/service/test_no_starvation.py).
        assert "FORETELL_CLIENT_STREAM_IDLE_SECONDS" in (raised.value.details() or "")
        assert echo.collect_ended.wait(5)
    finally:
        hold.set()
        channel.close()
        server.stop(None).wait(10)
