"""WatchEvents: PutEvents events stream out as they are stored, resumable by cursor."""

from __future__ import annotations

import threading
import time

import grpc
from google.protobuf import timestamp_pb2

from foretell.v1 import dataset_pb2 as pb
from foretell.v1 import dataset_service_pb2 as api

from errors import expect_error
from support import Stubs, interactions_csv, make_recommendation_group, upload

INVALID = grpc.StatusCode.INVALID_ARGUMENT


def _put(stubs: Stubs, group: str, user: str, item: str, seconds: int) -> None:
    stubs.datasets.PutEvents(
        api.PutEventsRequest(
            dataset_group=group,
            session_id=f"s-{user}",
            user_id=user,
            events=[pb.Event(event_type="click", item_id=item, sent_at=timestamp_pb2.Timestamp(seconds=seconds))],
        ),
        timeout=5,
    )


def test_streams_new_events_within_a_second_and_resumes_from_the_cursor(stubs: Stubs) -> None:
    group = make_recommendation_group(stubs)
    stubs.wait(upload(stubs, group.interactions, interactions_csv(50)))  # imported rows are not events
    _put(stubs, group.name, "u1", "old", 1_000)
    stream = stubs.datasets.WatchEvents(
        api.WatchEventsRequest(dataset_group=group.name, start_time=timestamp_pb2.Timestamp(seconds=2_000)),
        timeout=10,
    )
    received: list[tuple[api.WatchEventsResponse, float]] = []

    def consume() -> None:
        for response in stream:
            received.append((response, time.monotonic()))
            if sum(len(r.events) for r, _ in received) >= 2:
                return

    reader = threading.Thread(target=consume)
    reader.start()
    time.sleep(0.3)
    sent = time.monotonic()
    _put(stubs, group.name, "u1", "new-1", 2_000)
    _put(stubs, group.name, "u2", "new-2", 2_001)
    reader.join(timeout=5)
    stream.cancel()
    events = [e for r, _ in received for e in r.events]
    assert [(e.user_id, e.item_id, e.event_type) for e in events] == [
        ("u1", "new-1", "click"),
        ("u2", "new-2", "click"),
    ]
    assert received[0][1] - sent < 1.0
    assert events[0].session_id == "s-u1" and events[0].sent_at.seconds == 2_000

    _put(stubs, group.name, "u3", "new-3", 2_002)
    resumed = stubs.datasets.WatchEvents(
        api.WatchEventsRequest(dataset_group=group.name, cursor=received[-1][0].cursor), timeout=5
    )
    first = next(iter(resumed))
    resumed.cancel()
    assert [e.item_id for e in first.events] == ["new-3"]


def test_bad_cursor_and_unknown_group_are_rejected(stubs: Stubs) -> None:
    group = make_recommendation_group(stubs)
    bad_cursor = api.WatchEventsRequest(dataset_group=group.name, cursor="x';")
    expect_error(lambda: next(iter(stubs.datasets.WatchEvents(bad_cursor, timeout=5))), INVALID, "cursor")
    unknown = api.WatchEventsRequest(dataset_group="datasetGroups/nope")
    expect_error(lambda: next(iter(stubs.datasets.WatchEvents(unknown, timeout=5))), grpc.StatusCode.NOT_FOUND)
