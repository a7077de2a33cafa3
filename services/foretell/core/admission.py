"""Which calls the server takes on: unary calls and long-lived streams have budgets of their own.

Streams (server, client or both ways: event feeds, WatchEvents, ImportData uploads, Health.Watch, reflection) may
stay open for as long as their client likes, so they get their own threads (core/async_server.py) and their own
bound: in total, so that they cannot take the calls' share, and per principal (per connection for callers without
a key), so that one caller cannot take every stream. The internal principal (services' event feeds) has no bound
of its own: feeds are one per watched dataset group, and refusing one would silently stop a campaign's events.

Decided on the event loop, before any thread is taken: a refused call costs no handler thread.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from foretell.core.auth import INTERNAL_PRINCIPAL
from foretell.core.errors import ResourceExhausted


class Admission:
    """Counts calls in flight; `admit_*` answers a release function, or raises ResourceExhausted."""

    def __init__(self, max_calls: int, max_streams: int, max_streams_per_principal: int) -> None:
        self.max_calls = max_calls
        self.max_streams = max_streams
        self.max_streams_per_principal = max_streams_per_principal
        self._calls = 0
        self._streams: dict[str, int] = {}
        self._total_streams = 0
        self._lock = threading.Lock()

    @property
    def streams(self) -> int:
        return self._total_streams

    def admit_call(self) -> Callable[[], None]:
        with self._lock:
            if self._calls >= self.max_calls:
                raise ResourceExhausted(
                    f"the server has {self.max_calls} calls in flight, its limit (FORETELL_MAX_CONCURRENT_RPCS); "
                    "retry later"
                )
            self._calls += 1
        return _once(self._end_call)

    def admit_stream(self, principal: str) -> Callable[[], None]:
        """`principal`: the caller's principal name, or its connection ("peer:...") when it sent no key."""
        with self._lock:
            if self._total_streams >= self.max_streams:
                raise ResourceExhausted(
                    f"the server has {self.max_streams} streams open, its limit (FORETELL_MAX_STREAMS); retry later",
                    metadata={"limit": "FORETELL_MAX_STREAMS"},
                )
            held = self._streams.get(principal, 0)
            if principal != INTERNAL_PRINCIPAL and held >= self.max_streams_per_principal:
                who = "this connection" if principal.startswith("peer:") else f"principal {principal!r}"
                raise ResourceExhausted(
                    f"{who} has {held} streams open, the limit per caller (FORETELL_MAX_STREAMS_PER_PRINCIPAL); "
                    "close one or retry later",
                    metadata={"limit": "FORETELL_MAX_STREAMS_PER_PRINCIPAL"},
                )
            self._streams[principal] = held + 1
            self._total_streams += 1
        return _once(lambda: self._end_stream(principal))

    def _end_call(self) -> None:
        with self._lock:
            self._calls -= 1

    def _end_stream(self, principal: str) -> None:
        with self._lock:
            self._total_streams -= 1
            left = self._streams[principal] - 1
            if left:
                self._streams[principal] = left
            else:
                del self._streams[principal]


def _once(release: Callable[[], None]) -> Callable[[], None]:
    done = threading.Event()
    lock = threading.Lock()

    def run(*_: object) -> None:
        with lock:
            if done.is_set():
                return
            done.set()
        release()

    return run
