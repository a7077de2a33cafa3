"""Recent events per user and per anonymous session, fed by the dataset service's internal EventFeedService.

One background thread per dataset group consumes the stream (reconnecting with backoff and
resuming from the last cursor) into a `RecentEventStore`. The store is written by that thread
only and read lock-free by request threads: each key maps to an immutable `RecentEvents`
replaced on every event. Every update takes a fresh stamp from one process-wide counter, so a
stamp identifies one state of one key and never comes back, even after the key is evicted;
the engine uses it to tell whether a cached answer is stale.

A group's feed starts at the snapshot time of the first campaign that needs it (WatchEvents
replays the events stored since) and is shared by every later campaign of the group; it stops
when the last one is deleted. Events are kept per user (or per session for anonymous visits)
and are not dropped when a newer model is swapped in: one that already trained on them sees
them twice, which only repeats items the user interacted with anyway.
"""

from __future__ import annotations

import itertools
import logging
import threading
from collections import OrderedDict
from collections.abc import Callable

import grpc
from google.protobuf import timestamp_pb2

from foretell.core import tenancy
from foretell.core.logs import failure
from foretell.recommendation.engine import NO_EVENTS, RecentEvents
from foretell.v1 import dataset_service_pb2, dataset_service_pb2_grpc, event_feed_service_pb2_grpc

log = logging.getLogger("foretell.recommendation")

EVENTS_PER_KEY = 200
MAX_KEYS = 200_000
# A stream is re-opened this often (a deadline on every call; resuming by cursor is cheap).
STREAM_SECONDS = 300.0
MAX_BACKOFF = 30.0

_stamps = itertools.count(1)


class RecentEventStore:
    """The latest `per_key` events of each user (and of each session without a user), LRU over keys."""

    def __init__(self, per_key: int = EVENTS_PER_KEY, max_keys: int = MAX_KEYS) -> None:
        self._per_key = per_key
        self._max_keys = max_keys
        self._logs: OrderedDict[str, RecentEvents] = OrderedDict()
        self._lock = threading.Lock()
        self.received = 0

    def add(self, user_id: str, session_id: str, item_id: str, event_type: str) -> None:
        # Events of a known user are kept under the user; the session key is for anonymous visits.
        key = "u:" + user_id if user_id else "s:" + session_id
        with self._lock:
            old = self._logs.get(key, NO_EVENTS)
            self._logs[key] = RecentEvents(
                (*old.items, item_id)[-self._per_key :],
                (*old.event_types, event_type)[-self._per_key :],
                (next(_stamps),),
            )
            self._logs.move_to_end(key)
            if len(self._logs) > self._max_keys:
                self._logs.popitem(last=False)
            self.received += 1

    def recent(self, user_id: str, session_id: str = "") -> RecentEvents:
        """The user's events, followed by those of `session_id` sent without a user id."""
        mine = self._logs.get("u:" + user_id, NO_EVENTS) if user_id else NO_EVENTS
        if not session_id:
            return mine
        anonymous = self._logs.get("s:" + session_id, NO_EVENTS)
        if anonymous is NO_EVENTS:
            return mine
        if mine is NO_EVENTS:
            return anonymous
        return RecentEvents(
            mine.items + anonymous.items, mine.event_types + anonymous.event_types, mine.stamp + anonymous.stamp
        )


class EventFeed:
    """Streams one dataset group's events into a store from a daemon thread, on a channel of its own (`channel`
    opens one; the feed closes it): feeds never fill the connection other peer calls use."""

    def __init__(
        self, channel: Callable[[], grpc.Channel], dataset_group: str, start_time: int, store: RecentEventStore
    ) -> None:
        self.dataset_group = dataset_group
        self.start_time = start_time
        self.store = store
        self.cursor = ""
        self._open_channel = channel
        self._own: grpc.Channel | None = None
        self._stop = threading.Event()
        self._call: grpc.Future | None = None
        self._legacy = False  # the peer answered UNIMPLEMENTED for EventFeedService
        # The feed's thread acts for the tenant that acquired it: its peer calls name that tenant's group.
        self._thread = threading.Thread(target=tenancy.carry(self._run), name=f"events-{dataset_group}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def close(self, timeout: float = 5.0) -> None:
        self._stop.set()
        call = self._call
        if call is not None:
            call.cancel()
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(timeout)

    def _channel(self) -> grpc.Channel:
        if self._own is None:
            self._own = self._open_channel()
        return self._own

    def _request(self) -> dataset_service_pb2.WatchEventsRequest:
        if self.cursor:
            return dataset_service_pb2.WatchEventsRequest(dataset_group=self.dataset_group, cursor=self.cursor)
        return dataset_service_pb2.WatchEventsRequest(
            dataset_group=self.dataset_group, start_time=timestamp_pb2.Timestamp(seconds=self.start_time)
        )

    def _watch(self, channel: grpc.Channel) -> Callable[..., grpc.Future]:
        """EventFeedService.WatchEvents, or during an upgrade from a dataset service that lacks it (UNIMPLEMENTED
        once) the deprecated DatasetService.WatchEvents, the same stream on the wire."""
        if self._legacy:
            return dataset_service_pb2_grpc.DatasetServiceStub(channel).WatchEvents
        return event_feed_service_pb2_grpc.EventFeedServiceStub(channel).WatchEvents

    def _run(self) -> None:
        try:
            self._follow()
        finally:  # in the feed's thread, which alone opens it
            if self._own is not None:
                self._own.close()

    def _follow(self) -> None:
        backoff = 0.5
        failures = 0
        while not self._stop.is_set():
            try:
                call = self._watch(self._channel())(self._request(), timeout=STREAM_SECONDS, wait_for_ready=True)
                self._call = call
                if self._stop.is_set():
                    call.cancel()
                for response in call:
                    for e in response.events:
                        self.store.add(e.user_id, e.session_id, e.item_id, e.event_type)
                    self.cursor = response.cursor
                    backoff, failures = 0.5, 0
            except grpc.RpcError as exc:
                if self._stop.is_set():
                    break
                code = exc.code() if isinstance(exc, grpc.Call) else None
                if code == grpc.StatusCode.DEADLINE_EXCEEDED:
                    continue  # the periodic re-open: resume at once
                if code == grpc.StatusCode.UNIMPLEMENTED and not self._legacy:
                    self._legacy = True  # a dataset service older than EventFeedService: its deprecated twin
                    continue
                failures += 1
                # A single failure is routine (a peer restarting); say so loudly once it persists.
                (log.warning if failures == 3 else log.debug)(
                    "event stream failed; retrying",
                    extra={"dataset_group": self.dataset_group, "code": str(code), "retry_s": backoff},
                )
            except Exception as exc:
                if self._stop.is_set():
                    break
                log.error("event stream broke; retrying", extra={"dataset_group": self.dataset_group, **failure(exc)})
            self._stop.wait(backoff)
            backoff = min(MAX_BACKOFF, backoff * 2)


class EventFeeds:
    """One feed per dataset group of a tenant, shared by the campaigns serving it (reference counted).

    Groups are named per tenant: every method acts on the current tenant's group (core/tenancy.py)."""

    def __init__(self, channel: Callable[[], grpc.Channel]) -> None:
        self._channel = channel
        self._feeds: dict[tuple[str, str], EventFeed] = {}
        self._users: dict[tuple[str, str], int] = {}
        self._lock = threading.Lock()

    def acquire(self, dataset_group: str, start_time: int) -> RecentEventStore:
        """The group's store; starts its feed at `start_time` (epoch seconds) if none runs yet."""
        key = (tenancy.current(), dataset_group)
        with self._lock:
            feed = self._feeds.get(key)
            if feed is None:
                feed = EventFeed(self._channel, dataset_group, start_time, RecentEventStore())
                self._feeds[key] = feed
                feed.start()
                log.info("watching events", extra={"dataset_group": dataset_group, "start_time": start_time})
            self._users[key] = self._users.get(key, 0) + 1
            return feed.store

    def release(self, dataset_group: str) -> None:
        key = (tenancy.current(), dataset_group)
        with self._lock:
            left = self._users.get(key, 0) - 1
            if left > 0:
                self._users[key] = left
                return
            self._users.pop(key, None)
            feed = self._feeds.pop(key, None)
        if feed is not None:
            feed.close()

    def feed(self, dataset_group: str) -> EventFeed | None:
        return self._feeds.get((tenancy.current(), dataset_group))

    def close(self) -> None:
        with self._lock:
            feeds = list(self._feeds.values())
            self._feeds.clear()
            self._users.clear()
        for feed in feeds:
            feed.close()
