"""EventFeedService.WatchEvents: PutEvents events stream out as they are stored, resumable by cursor, to the
internal principal only (DatasetService.WatchEvents, its deprecated twin, likewise)."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest
from google.protobuf import timestamp_pb2

from foretell.client import Client
from foretell.core import auth, tenancy
from foretell.core.settings import Settings
from foretell.v1 import dataset_pb2 as pb
from foretell.v1 import dataset_service_pb2 as api
from foretell.v1 import dataset_service_pb2_grpc, event_feed_service_pb2_grpc

from errors import expect_error
from support import Stubs, interactions_csv, make_recommendation_group, start_stubs, upload

INVALID = grpc.StatusCode.INVALID_ARGUMENT


def _feed(stubs: Stubs) -> event_feed_service_pb2_grpc.EventFeedServiceStub:
    return event_feed_service_pb2_grpc.EventFeedServiceStub(stubs.channel)


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
    stream = _feed(stubs).WatchEvents(
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
    resumed = _feed(stubs).WatchEvents(
        api.WatchEventsRequest(dataset_group=group.name, cursor=received[-1][0].cursor), timeout=5
    )
    first = next(iter(resumed))
    resumed.cancel()
    assert [e.item_id for e in first.events] == ["new-3"]


def test_bad_cursor_and_unknown_group_are_rejected(stubs: Stubs) -> None:
    group = make_recommendation_group(stubs)
    bad_cursor = api.WatchEventsRequest(dataset_group=group.name, cursor="x';")
    expect_error(lambda: next(iter(_feed(stubs).WatchEvents(bad_cursor, timeout=5))), INVALID, "cursor")
    unknown = api.WatchEventsRequest(dataset_group="datasetGroups/nope")
    expect_error(lambda: next(iter(_feed(stubs).WatchEvents(unknown, timeout=5))), grpc.StatusCode.NOT_FOUND)


TENANT_KEY, ADMIN_KEY, READER_KEY = "tenant-key-0123456789", "admin-key-0123456789", "reader-key-0123456789"


@pytest.fixture
def secured(tmp_path: Path) -> Iterator[Stubs]:
    keys = tmp_path / "keys.json"
    entries = [
        {"principal": "tenant", "key": TENANT_KEY, "dataset_groups": ["shop"]},
        {"principal": "admin", "tenant": "tenant", "key": ADMIN_KEY, "dataset_groups": ["*"]},
        {"principal": "reader", "tenant": "tenant", "key": READER_KEY, "dataset_groups": ["*"], "read_only": True},
    ]
    keys.write_text(json.dumps({"keys": entries}))
    stubs = start_stubs(Settings(port=0, data_dir=tmp_path / "data", api_keys_file=keys))
    yield stubs
    stubs.channel.close()
    stubs.app.stop(None)


def _as(key: str) -> list[tuple[str, str]]:
    return [("x-api-key", key)]


def test_only_the_internal_principal_may_watch_events(secured: Stubs) -> None:
    """A tenant's key for the very group, an all-groups admin key and a read-only key are all PERMISSION_DENIED,
    on the internal service and on its deprecated DatasetService twin; the internal key streams from both."""
    internal = auth.internal_key("")  # this process's: the server runs here, auth.py made it at import
    with Client(f"127.0.0.1:{secured.app.port}", api_key=ADMIN_KEY) as admin:
        channel = admin.channel
        make_recommendation_group(
            Stubs(channel, admin.datasets, admin.operations, secured.app, admin.training, admin.recommendations), "shop"
        )
    request = api.WatchEventsRequest(dataset_group="datasetGroups/shop", start_time=timestamp_pb2.Timestamp(seconds=0))
    watches: dict[str, Callable[..., Iterator[api.WatchEventsResponse]]] = {
        "EventFeedService": event_feed_service_pb2_grpc.EventFeedServiceStub(secured.channel).WatchEvents,
        "DatasetService": dataset_service_pb2_grpc.DatasetServiceStub(secured.channel).WatchEvents,
    }
    for service, watch in watches.items():
        for key in (TENANT_KEY, ADMIN_KEY, READER_KEY):
            with pytest.raises(grpc.RpcError) as refused:
                next(iter(watch(request, metadata=_as(key), timeout=5)))
            assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED, (service, key[:6], refused.value)
            assert "shop" not in str(refused.value.details())
        datasets = dataset_service_pb2_grpc.DatasetServiceStub(secured.channel)
        datasets.PutEvents(
            api.PutEventsRequest(
                dataset_group="datasetGroups/shop",
                session_id="s1",
                user_id="u1",
                events=[pb.Event(event_type="click", item_id=service, sent_at=timestamp_pb2.Timestamp(seconds=9))],
            ),
            metadata=_as(TENANT_KEY),
            timeout=5,
        )
        stream = watch(request, metadata=[*_as(internal), (tenancy.HEADER, "tenant")], timeout=5)
        first = next(iter(stream))
        stream.cancel()
        assert first.events[0].item_id == "EventFeedService", service
