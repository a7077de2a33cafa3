"""No caller can starve the server (issue 15): long-lived streams have threads and bounds of their own.

- With 50 campaign event feeds, 50 idle WatchEvents streams and 16 stalled uploads open (default settings), a unary
  call and the health check answer in under a second, and the feeds still get their events.
- An upload that sends nothing for FORETELL_CLIENT_STREAM_IDLE_SECONDS ends with DEADLINE_EXCEEDED and leaves no
  spooled file.
- With auth on, one read-only key holding streams gets RESOURCE_EXHAUSTED past its bound, and another tenant's
  unary call still answers at once; the internal key's streams (event feeds) are not held to that bound.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import timestamp_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from pydantic import SecretStr

from foretell.client import Client
from foretell.core import tenancy
from foretell.core.admission import Admission
from foretell.core.settings import Settings
from foretell.recommendation.events import EventFeed, RecentEventStore
from foretell.runtime.server import create_server
from foretell.v1 import dataset_pb2 as pb
from foretell.v1 import dataset_service_pb2 as api
from foretell.v1 import dataset_service_pb2_grpc, event_feed_service_pb2_grpc

from support import Stubs, make_recommendation_group, start_stubs, stubs_of

FEEDS, WATCHERS, UPLOADS = 50, 50, 16
SECOND = 1.0


def _admission(stubs: Stubs) -> Admission:
    return stubs.app.server.admission  # type: ignore[attr-defined,no-any-return]


def _until(check: Callable[[], bool], what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


def _slowest(call: Callable[[], Any], times: int = 10) -> float:
    slowest = 0.0
    for _ in range(times):
        started = time.monotonic()
        call()
        slowest = max(slowest, time.monotonic() - started)
    return slowest


def _channels(target: str, count: int) -> list[grpc.Channel]:
    """Channels on connections of their own (HTTP/2 caps the streams of one connection)."""
    return [grpc.insecure_channel(target, options=[("grpc.use_local_subchannel_pool", 1)]) for _ in range(count)]


def _stalled_upload(dataset: str, release: threading.Event) -> Iterator[api.ImportDataRequest]:
    yield api.ImportDataRequest(config=api.ImportDataConfig(dataset=dataset))
    release.wait()


def test_unary_calls_and_the_health_check_answer_with_feeds_watchers_and_stalled_uploads_open(stubs: Stubs) -> None:
    group = make_recommendation_group(stubs)
    target = f"127.0.0.1:{stubs.app.port}"
    channels = _channels(target, 8)
    release = threading.Event()
    feeds = [
        EventFeed(lambda: _channels(target, 1)[0], group.name, int(time.time()) - 60, RecentEventStore())
        for _ in range(FEEDS)
    ]
    watchers = [
        event_feed_service_pb2_grpc.EventFeedServiceStub(channels[i % 5]).WatchEvents(
            api.WatchEventsRequest(dataset_group=group.name)
        )
        for i in range(WATCHERS)
    ]
    uploads = [
        dataset_service_pb2_grpc.DatasetServiceStub(channels[5 + i % 2]).ImportData.future(
            _stalled_upload(group.interactions, release)
        )
        for i in range(UPLOADS)
    ]
    try:
        for feed in feeds:
            feed.start()
        _until(lambda: _admission(stubs).streams == FEEDS + WATCHERS + UPLOADS, "the streams never all opened")

        get = _slowest(
            lambda: stubs.datasets.GetDatasetGroup(api.GetDatasetGroupRequest(name=group.name), timeout=SECOND)
        )
        health = health_pb2_grpc.HealthStub(channels[7])
        check = _slowest(lambda: health.Check(health_pb2.HealthCheckRequest(), timeout=SECOND))
        print(
            f"slowest of 10 with {FEEDS + WATCHERS + UPLOADS} streams open: GetDatasetGroup {get:.3f} s, "
            f"Health.Check {check:.3f} s"
        )
        assert get < SECOND and check < SECOND

        # The feeds are served, not just admitted: an event reaches every one of them.
        stubs.datasets.PutEvents(
            api.PutEventsRequest(
                dataset_group=group.name,
                session_id="s1",
                user_id="u1",
                events=[
                    pb.Event(
                        event_type="click", item_id="i1", sent_at=timestamp_pb2.Timestamp(seconds=int(time.time()))
                    )
                ],
            ),
            timeout=5,
        )
        _until(lambda: all(feed.store.received for feed in feeds), "an event did not reach every feed")
    finally:
        release.set()
        for feed in feeds:
            feed.close(timeout=0)
        for watcher in watchers:
            watcher.cancel()
        for upload in uploads:
            upload.cancel()
        for channel in channels:
            channel.close()
    _until(lambda: _admission(stubs).streams == 0, "the streams' slots were not given back")


def test_a_stalled_upload_times_out_and_leaves_no_spooled_file(tmp_path: Path) -> None:
    settings = Settings(port=0, data_dir=tmp_path / "data", client_stream_idle_seconds=0.5)
    stubs = start_stubs(settings)
    release = threading.Event()
    try:
        group = make_recommendation_group(stubs)

        def stalled() -> Iterator[api.ImportDataRequest]:
            yield api.ImportDataRequest(config=api.ImportDataConfig(dataset=group.interactions))
            yield api.ImportDataRequest(chunk=b"USER_ID,ITEM_ID,TIMESTAMP,EVENT_TYPE\nu1,i1,1,click\n")
            release.wait()

        uploads = settings.artifacts / "uploads"
        started = time.monotonic()
        with pytest.raises(grpc.RpcError) as info:
            stubs.datasets.ImportData(stalled(), timeout=30)
        assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert "FORETELL_CLIENT_STREAM_IDLE_SECONDS" in (info.value.details() or "")
        assert time.monotonic() - started < 10
        assert not list(uploads.glob("*")), "the spooled upload was left behind"
        _until(lambda: _admission(stubs).streams == 0, "the upload's slot was not given back")
    finally:
        release.set()
        stubs.channel.close()
        stubs.app.stop(None)


KEY_READER = "reader-key-0123456789abcdef"
KEY_OTHER = "other-key-fedcba9876543210"
INTERNAL_KEY = "internal-key-for-services-only-0123456789"


def test_one_key_holding_many_streams_cannot_starve_another_tenant(tmp_path: Path) -> None:
    keys = tmp_path / "keys.json"
    keys.write_text(
        json.dumps(
            {
                "keys": [
                    {"principal": "reader", "key": KEY_READER, "dataset_groups": ["*"], "read_only": True},
                    {"principal": "other", "key": KEY_OTHER, "dataset_groups": ["*"]},
                ]
            }
        )
    )
    settings = Settings(
        port=0, data_dir=tmp_path / "data", api_keys_file=keys, internal_api_key=SecretStr(INTERNAL_KEY)
    )
    bound = settings.max_streams_per_principal
    app = create_server(settings)
    app.start()
    target = f"127.0.0.1:{app.port}"
    channels = _channels(target, 4)
    opened: list[Any] = []
    try:
        with Client(target, api_key=KEY_OTHER, timeout=10) as other:
            group = make_recommendation_group(stubs_of(other, app), "shop")
            reader = [(("x-api-key", KEY_READER),)]
            # Health.Watch: a stream any key may hold for as long as it likes.
            watches = [
                health_pb2_grpc.HealthStub(channels[i % 2]).Watch(health_pb2.HealthCheckRequest(), metadata=reader[0])
                for i in range(bound + 8)
            ]
            opened += watches
            answered, refused = [], []
            for watch in watches:  # each admitted stream first answers the current status
                try:
                    answered.append(next(watch).status)
                except grpc.RpcError as error:
                    refused.append(error)
            assert answered == [health_pb2.HealthCheckResponse.SERVING] * bound
            assert {e.code() for e in refused} == {grpc.StatusCode.RESOURCE_EXHAUSTED}
            assert "principal 'reader'" in (refused[0].details() or "")
            assert "FORETELL_MAX_STREAMS_PER_PRINCIPAL" in (refused[0].details() or "")

            # The internal key (event feeds) is not held to the per-principal bound.
            internal = (("authorization", f"Bearer {INTERNAL_KEY}"),)
            feeds = [
                event_feed_service_pb2_grpc.EventFeedServiceStub(channels[2 + i % 2]).WatchEvents(
                    api.WatchEventsRequest(dataset_group=group.name), metadata=(*internal, (tenancy.HEADER, "other"))
                )
                for i in range(bound + 8)
            ]
            opened += feeds
            admission: Admission = app.server.admission  # type: ignore[attr-defined]
            _until(lambda: admission.streams == 2 * bound + 8, "the internal streams were not all admitted")

            took = _slowest(
                lambda: other.datasets.GetDatasetGroup(api.GetDatasetGroupRequest(name=group.name), timeout=SECOND)
            )
            print(f"slowest of 10 GetDatasetGroup with the reader holding {bound} streams: {took:.3f} s")
            assert took < SECOND
    finally:
        for call in opened:
            call.cancel()
        for channel in channels:
            channel.close()
        app.stop(None)
