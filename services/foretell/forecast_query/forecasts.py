"""Forecasts resolved through the training service, their tables loaded once and cached.

Staleness: a SUCCEEDED forecast never changes, so a cached table is served without asking
training again for RECHECK_SECONDS after the last GetForecast that confirmed it. After that the
next request for it re-checks (one request does; the others keep being served meanwhile): a
deleted forecast stops being served within about RECHECK_SECONDS, and one whose artifact moved is
reloaded. When training does not answer a re-check, the cached table keeps being served (it is
immutable) and the next request after RECHECK_SECONDS asks again; a forecast that is not cached
needs training to answer. At most CAPACITY tables are held; the least recently used goes first.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

import grpc

from foretell.core import names, tenancy
from foretell.core.artifact_store import ArtifactNotFound, fetch_dir
from foretell.core.artifacts import path_of
from foretell.core.errors import FailedPrecondition, ForetellError, InvalidArgument, Unavailable, absent, invalid
from foretell.core.logs import failure
from foretell.core.settings import Settings
from foretell.forecast_query.query import ServedForecast
from foretell.forecasting.table import ForecastTable
from foretell.v1 import training_pb2, training_service_pb2, training_service_pb2_grpc

log = logging.getLogger("foretell.forecast_query")

RECHECK_SECONDS = 5.0
CAPACITY = 8
PEER_TIMEOUT = 10.0


@dataclass
class _Entry:
    served: ServedForecast
    artifact_uri: str
    checked: float  # monotonic time of the last GetForecast that confirmed it


def load_table(name: str, artifact_uri: str, settings: Settings | None = None) -> ServedForecast:
    """The table at a local path, or (with settings) an s3:// one fetched into the local artifact cache."""
    try:
        if settings is not None:
            directory = fetch_dir(artifact_uri, settings, "artifact_uri")  # in place when local
        else:
            directory = path_of(artifact_uri, "artifact_uri")
        table = ForecastTable.load(directory)
    except (FileNotFoundError, ArtifactNotFound, InvalidArgument, ValueError) as exc:
        log.warning("cannot load forecast table", extra={"forecast": name, "uri": artifact_uri, **failure(exc)})
        raise FailedPrecondition(
            f"forecast {name!r} has no readable table at {artifact_uri!r}", metadata={"resource": name}
        ) from None
    return ServedForecast(name, table)


def table_loader(settings: Settings) -> Callable[[str, str], ServedForecast]:
    """`load_table` with the settings that reach the S3 artifact store."""
    return functools.partial(load_table, settings=settings)


class Forecasts:
    def __init__(
        self,
        channel: Callable[[], grpc.Channel],
        load: Callable[[str, str], ServedForecast] = load_table,
        capacity: int | None = None,
        recheck_seconds: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._channel = channel
        self._load = load
        # Read at construction, so tests can change the module's values before a server starts.
        self._capacity = capacity or CAPACITY
        self._recheck = RECHECK_SECONDS if recheck_seconds is None else recheck_seconds
        self._clock = clock
        self._entries: OrderedDict[tuple[str, str], _Entry] = OrderedDict()  # (tenant, name)
        self._lock = threading.Lock()  # the entries and their `checked` times
        self._loading = threading.Lock()  # one table loads at a time; cached ones keep serving

    def get(self, name: str) -> ServedForecast:
        """The forecast's served table; NOT_FOUND, FAILED_PRECONDITION or UNAVAILABLE otherwise."""
        key = (tenancy.current(), name)  # names are per tenant
        entry = self._entries.get(key)
        if entry is not None:
            with self._lock:
                due = self._clock() - entry.checked >= self._recheck
                if due:
                    entry.checked = self._clock()  # claimed: concurrent requests keep the cached table
                if key in self._entries:
                    self._entries.move_to_end(key)
            if not due:
                return entry.served
            return self._recheck_entry(key, entry)
        names.check_name(name, "forecast", "forecasts")
        with self._loading:
            entry = self._entries.get(key)
            if entry is not None:  # loaded by another request meanwhile
                return entry.served
            uri = self._resolve(name)
            return self._put(key, self._load(name, uri), uri)

    def _recheck_entry(self, key: tuple[str, str], entry: _Entry) -> ServedForecast:
        name = key[1]
        try:
            uri = self._resolve(name)
        except Unavailable:
            log.warning("training did not answer; serving the cached forecast", extra={"forecast": name})
            return entry.served
        except ForetellError:
            self._evict(key, entry)
            raise
        if uri == entry.artifact_uri:
            return entry.served
        with self._loading:
            return self._put(key, self._load(name, uri), uri)

    def _put(self, key: tuple[str, str], served: ServedForecast, uri: str) -> ServedForecast:
        with self._lock:
            self._entries[key] = _Entry(served, uri, self._clock())
            self._entries.move_to_end(key)
            while len(self._entries) > self._capacity:
                self._entries.popitem(last=False)
        log.info("forecast loaded", extra={"forecast": key[1], "series": len(served.table.item_ids)})
        return served

    def _evict(self, key: tuple[str, str], entry: _Entry) -> None:
        with self._lock:
            if self._entries.get(key) is entry:
                del self._entries[key]

    def _resolve(self, name: str) -> str:
        """The artifact URI of SUCCEEDED forecast `name`, asked of the training service."""
        stub = training_service_pb2_grpc.TrainingServiceStub(self._channel())
        try:
            found = stub.GetForecast(training_service_pb2.GetForecastRequest(name=name), timeout=PEER_TIMEOUT)
        except grpc.RpcError as exc:
            raise _peer_error(exc, name) from None
        if found.state != training_pb2.TRAINING_STATE_SUCCEEDED or not found.artifact_uri:
            state = training_pb2.TrainingState.Name(found.state).removeprefix("TRAINING_STATE_")
            raise FailedPrecondition(
                f"forecast {name!r} is {state}; only SUCCEEDED forecasts can be queried", metadata={"resource": name}
            )
        return found.artifact_uri


def _peer_error(exc: grpc.RpcError, name: str) -> ForetellError:
    code = exc.code() if isinstance(exc, grpc.Call) else None
    if code == grpc.StatusCode.NOT_FOUND:
        return absent(name)
    if code == grpc.StatusCode.INVALID_ARGUMENT:
        return invalid("forecast", f"training rejected it: {exc.details() if isinstance(exc, grpc.Call) else ''}")
    if code == grpc.StatusCode.UNIMPLEMENTED:
        return FailedPrecondition("the training service does not serve forecasts yet")
    return Unavailable(f"the training service did not answer ({code.name if code else 'error'}); retry later")
