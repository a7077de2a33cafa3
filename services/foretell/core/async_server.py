"""`AsyncServer`: grpc.aio's server in front of the synchronous servicers and interceptors.

Why not `grpc.server`: the synchronous server keeps one requested call per method and takes every completion
(each accept, each received message, each sent status) one at a time on a single thread, so under the GIL the
most frequent method can be accepted no faster than that thread gets the GIL back, and a backlog, once built,
does not drain (docs/benchmarks.md, load test). grpc.aio's event loop handles completions in batches, so
the more is queued, the more each turn of the loop gets done.

The servicers, the interceptors and the tests stay synchronous: each call is matched to its handler and run
through the (synchronous) interceptors on the loop, then its behaviour runs in the thread pool with a
`SyncContext`, which gives it the grpc.ServicerContext it expects (abort, is_active, add_callback...).
`AsyncServer` offers the part of grpc.Server that Foretell uses, so generated `add_*_to_server` work on it.

Streaming calls (event feeds, WatchEvents, uploads, Health.Watch, reflection) last as long as their client likes,
so they run in a pool of their own, under a bound of their own (core/admission.py): however many are open, unary
calls and the health check keep the handler threads. A client stream that sends nothing for
`client_stream_idle_seconds` is ended, so a stalled upload frees its thread and its spooled file.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent import futures
from concurrent.futures import Future
from typing import Any

import grpc
from grpc import aio
from grpc_status import rpc_status

from foretell.core.admission import Admission
from foretell.core.errors import DeadlineExceeded, ForetellError
from foretell.core.interceptors import AbortedCall, rewrap

_DONE = object()
_IDLE = object()
# Threads of the stream pool beyond one per admitted stream: closing a stream whose client went away takes one.
STREAM_POOL_SPARE = 8
# Who a call comes from, by its metadata: a principal's name, or None (no key, or auth off).
PrincipalOf = Callable[[Sequence[tuple[str, Any]]], "str | None"]


def _wait(future: Future[Any], loop: asyncio.AbstractEventLoop) -> Any:
    """From a pool thread, the result of a coroutine sent to the loop; RpcError if the loop stops meanwhile (the
    server stopped, its calls with it), so no thread waits forever for a loop that is gone."""
    while True:
        try:
            return future.result(timeout=1.0)
        except TimeoutError:
            if not loop.is_running():
                future.cancel()
                raise grpc.RpcError() from None


class SyncContext:
    """grpc.ServicerContext for a synchronous behaviour running in a pool thread, over aio's context."""

    def __init__(self, context: aio.ServicerContext, loop: asyncio.AbstractEventLoop) -> None:
        self._context = context
        self._loop = loop
        self._active = True
        self._code: grpc.StatusCode | None = None
        # (code, details, trailing metadata) of abort(), sent by the coroutine that ran the behaviour.
        self.aborted: tuple[grpc.StatusCode, str, tuple[Any, ...]] | None = None
        self._callbacks: list[Callable[[], None]] = []
        self._lock = threading.Lock()

    # -- what the interceptors and servicers use --
    def invocation_metadata(self) -> Sequence[tuple[str, str | bytes]]:
        return self._context.invocation_metadata() or ()

    def time_remaining(self) -> float | None:
        return self._context.time_remaining()

    def is_active(self) -> bool:
        return self._active

    def add_callback(self, callback: Callable[[], None]) -> bool:
        """Runs `callback` (on the loop, so it must not block) when the call ends, however it ends."""
        with self._lock:
            if not self._active:
                return False
            self._callbacks.append(callback)
            return True

    def abort(self, code: grpc.StatusCode, details: str = "", trailing_metadata: Any = ()) -> None:
        """Ends the behaviour; its coroutine sends the status once the behaviour has unwound (as the synchronous
        server does), so the interceptors have recorded the call before the client sees its answer."""
        if self.aborted is None:
            self._code = code
            self.aborted = (code, details, tuple(trailing_metadata))
        raise AbortedCall(details)

    def abort_with_status(self, status: grpc.Status) -> None:
        self.abort(status.code, status.details, status.trailing_metadata)

    def code(self) -> grpc.StatusCode | None:
        return self._code

    def set_code(self, code: grpc.StatusCode) -> None:
        self._code = code
        self._context.set_code(code)

    def set_details(self, details: str) -> None:
        self._context.set_details(details)

    def set_trailing_metadata(self, metadata: Any) -> None:
        self._context.set_trailing_metadata(tuple(metadata))

    def send_initial_metadata(self, metadata: Any) -> None:
        _wait(
            asyncio.run_coroutine_threadsafe(self._context.send_initial_metadata(tuple(metadata)), self._loop),
            self._loop,
        )

    def peer(self) -> str:
        return self._context.peer()

    def peer_identities(self) -> Any:
        return self._context.peer_identities()

    def peer_identity_key(self) -> Any:
        return self._context.peer_identity_key()

    def auth_context(self) -> Any:
        return self._context.auth_context()

    # -- for the adapters below --
    def _end(self) -> None:
        with self._lock:
            self._active = False
            callbacks, self._callbacks = self._callbacks, []
        for callback in callbacks:
            callback()


class _Requests(Iterator[Any]):
    """A client stream as the blocking iterator a synchronous behaviour reads (from a pool thread)."""

    def __init__(self, context: aio.ServicerContext, loop: asyncio.AbstractEventLoop, idle: float | None) -> None:
        self._context = context
        self._loop = loop
        self._idle = idle

    async def _read(self) -> Any:
        if self._idle is None:
            return await self._context.read()
        try:
            return await asyncio.wait_for(self._context.read(), self._idle)
        except TimeoutError:
            return _IDLE  # not raised: _wait reads a TimeoutError as its own poll

    def __next__(self) -> Any:
        try:
            message = _wait(asyncio.run_coroutine_threadsafe(self._read(), self._loop), self._loop)
        except Exception:
            raise grpc.RpcError() from None  # what the synchronous server raises when the call is gone
        if message is _IDLE:
            raise DeadlineExceeded(
                f"no message arrived for {self._idle:g} s (FORETELL_CLIENT_STREAM_IDLE_SECONDS): the stream is "
                "ended and what it sent discarded; send it again"
            )
        if message is aio.EOF:
            raise StopIteration
        return message


def _close(iterator: Iterator[Any]) -> None:
    close = getattr(iterator, "close", None)
    if close is not None:
        with contextlib.suppress(ValueError):  # still running in another thread: it ends by itself (is_active)
            close()


class _Serving:
    """What adapting a call needs: the loop, the two pools, the admission counts and who is calling."""

    def __init__(
        self,
        calls: futures.Executor,
        streams: futures.Executor,
        admission: Admission,
        principal_of: PrincipalOf,
        idle: float | None,
    ) -> None:
        self.loop: asyncio.AbstractEventLoop | None = None
        self.calls = calls
        self.streams = streams
        self.admission = admission
        self.principal_of = principal_of
        self.idle = idle

    def admit(self, streaming: bool, context: aio.ServicerContext) -> Callable[[], None]:
        """The release function of the call's slot, or ResourceExhausted."""
        if not streaming:
            return self.admission.admit_call()
        principal = self.principal_of(context.invocation_metadata() or ())
        return self.admission.admit_stream(principal or f"peer:{context.peer()}")


class _Tasks:
    """A call's work in its pool, one task at a time; `then` runs once the last task is done, so a stream's slot
    is freed only when its thread is free too (a cancelled call's behaviour runs on until it sees is_active)."""

    def __init__(self, pool: futures.Executor) -> None:
        self._pool = pool
        self._last: Future[Any] | None = None

    async def run(self, function: Callable[..., Any], *args: Any) -> Any:
        self._last = self._pool.submit(function, *args)
        return await asyncio.wrap_future(self._last)

    def then(self, release: Callable[[], None]) -> None:
        if self._last is None:
            release()
        else:
            self._last.add_done_callback(lambda _: release())


async def _refuse(context: aio.ServicerContext, error: ForetellError) -> None:
    status = rpc_status.to_status(error.to_status())
    await context.abort(status.code, status.details, status.trailing_metadata)


def _to_async(handler: grpc.RpcMethodHandler, serving: _Serving) -> grpc.RpcMethodHandler:
    """`handler` (synchronous behaviour) as a coroutine handler that runs the behaviour in a pool: streams in
    theirs, unary calls in the other, each admitted first (core/admission.py)."""
    loop = serving.loop
    assert loop is not None
    streaming_request = handler.request_streaming
    streaming = bool(handler.request_streaming or handler.response_streaming)
    pool = serving.streams if streaming else serving.calls

    def request_of(request: Any, context: aio.ServicerContext) -> Any:
        return _Requests(context, loop, serving.idle) if streaming_request else request

    def adapt(behavior: Callable[..., Any], streaming_response: bool) -> Callable[..., Any]:
        async def unary(request: Any, context: aio.ServicerContext) -> Any:
            try:
                release = serving.admit(streaming, context)
            except ForetellError as error:
                await _refuse(context, error)
            sync = SyncContext(context, loop)
            tasks = _Tasks(pool)
            try:
                try:
                    response = await tasks.run(behavior, request_of(request, context), sync)
                except AbortedCall:
                    response = None
                if sync.aborted is not None:  # even if the behaviour swallowed the exception
                    await context.abort(*sync.aborted)
                return response
            finally:
                sync._end()
                tasks.then(release)

        async def stream(request: Any, context: aio.ServicerContext) -> Any:
            try:
                release = serving.admit(streaming, context)
            except ForetellError as error:
                await _refuse(context, error)
            sync = SyncContext(context, loop)
            tasks = _Tasks(pool)
            running: list[Iterator[Any]] = []

            def ended(_: Any) -> None:
                # A client gone while the generator waits at a yield: nothing would resume or close it but the
                # garbage collector. Close it now (its finally blocks run) and end the context (callbacks,
                # is_active).
                sync._end()
                if running:
                    with contextlib.suppress(RuntimeError):  # the server stopped: its pool takes no more work
                        pool.submit(_close, running[0])

            context.add_done_callback(ended)
            try:
                try:
                    items = await tasks.run(behavior, request_of(request, context), sync)
                    running.append(iter(items))
                    while True:
                        item = await tasks.run(next, running[0], _DONE)
                        if item is _DONE:
                            break
                        yield item
                except AbortedCall:
                    pass
                if sync.aborted is not None:
                    await context.abort(*sync.aborted)
            finally:
                sync._end()
                tasks.then(release)

        return stream if streaming_response else unary

    return rewrap(handler, adapt)


class _Router(grpc.GenericRpcHandler):
    """Finds a call's synchronous handler, runs the synchronous interceptors, and adapts the result."""

    def __init__(self, interceptors: Sequence[grpc.ServerInterceptor], serving: _Serving) -> None:
        self.methods: dict[str, grpc.RpcMethodHandler] = {}
        self.generic: list[grpc.GenericRpcHandler] = []
        self._interceptors = tuple(interceptors)
        self._serving = serving

    def _lookup(self, details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
        found = self.methods.get(details.method)
        if found is not None:
            return found
        for generic in self.generic:
            found = generic.service(details)
            if found is not None:
                return found
        return None

    def _intercepted(self, index: int, details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
        if index == len(self._interceptors):
            return self._lookup(details)
        return self._interceptors[index].intercept_service(lambda d: self._intercepted(index + 1, d), details)

    def service(self, handler_call_details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
        handler = self._intercepted(0, handler_call_details)
        if handler is None:
            return None
        return _to_async(handler, self._serving)


class AsyncServer(grpc.Server):
    """The part of grpc.Server that Foretell uses, served by grpc.aio on an event loop thread of its own."""

    def __init__(
        self,
        thread_pool: futures.ThreadPoolExecutor,
        interceptors: Sequence[grpc.ServerInterceptor] = (),
        maximum_concurrent_rpcs: int | None = None,
        options: Sequence[tuple[str, Any]] = (),
        *,
        max_streams: int = 256,
        max_streams_per_principal: int = 32,
        principal_of: PrincipalOf = lambda metadata: None,
        client_stream_idle_seconds: float | None = None,
    ) -> None:
        """`maximum_concurrent_rpcs` bounds unary calls; streams have their own bounds and pool, of
        `max_streams` threads (plus a few spare): one each, so an admitted stream never waits for a thread."""
        self._pool = thread_pool
        self._stream_pool = futures.ThreadPoolExecutor(
            max_workers=max_streams + STREAM_POOL_SPARE, thread_name_prefix="stream"
        )
        admission = Admission(maximum_concurrent_rpcs or sys.maxsize, max_streams, max_streams_per_principal)
        self.admission = admission
        serving = _Serving(thread_pool, self._stream_pool, admission, principal_of, client_stream_idle_seconds)
        self._router = _Router(interceptors, serving)
        self._loop = asyncio.new_event_loop()
        serving.loop = self._loop
        self._thread = threading.Thread(target=self._loop.run_forever, name="grpc-aio", daemon=True)
        self._thread.start()

        async def make() -> aio.Server:
            # No maximum_concurrent_rpcs here: gRPC's one limit would let streams take the unary calls' share.
            return aio.server(handlers=[self._router], options=list(options))

        self._server = self._run(make())
        self._stopped = threading.Event()

    def _run(self, coroutine: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result()

    def add_generic_rpc_handlers(self, handlers: Sequence[grpc.GenericRpcHandler]) -> None:
        self._router.generic.extend(handlers)

    def add_registered_method_handlers(self, service: str, handlers: dict[str, grpc.RpcMethodHandler]) -> None:
        for name, handler in handlers.items():
            self._router.methods[f"/{service}/{name}"] = handler

    def add_insecure_port(self, address: str) -> int:
        return self._server.add_insecure_port(address)

    def add_secure_port(self, address: str, credentials: grpc.ServerCredentials) -> int:
        return self._server.add_secure_port(address, credentials)

    def start(self) -> None:
        self._run(self._server.start())

    def stop(self, grace: float | None) -> threading.Event:
        """Refuses new calls, gives in-flight ones `grace` seconds, cancels the rest; the event is set once
        done. Behaviours still running in the pool then see `is_active()` turn false."""

        async def stop() -> None:
            await self._server.stop(grace)

        def stopped(_: Any) -> None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._stream_pool.shutdown(wait=False)  # its idle threads end; running ones see is_active() false
            self._stopped.set()

        if self._stopped.is_set() or not self._loop.is_running():
            self._stopped.set()
        else:
            asyncio.run_coroutine_threadsafe(stop(), self._loop).add_done_callback(stopped)
        return self._stopped

    def wait_for_termination(self, timeout: float | None = None) -> bool:
        return self._stopped.wait(timeout)
