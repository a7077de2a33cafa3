"""Recommendation replicas on one PostgreSQL converge: whichever replica handles a change, every replica serves it
within the sync bound, and none serves a deleted campaign.

Server A runs every service; B and C run the recommendation service alone on the same database (their peers are
A's dataset and training services), as the Kubernetes base runs 2-8 replicas. A client sends every call round-
robin to B, C (and later D). Under that load: a campaign is created (on B), hot-swapped to another model (on C)
while a fourth replica D starts, then deleted (on A): not one call fails, and every replica serves each state
within FORETELL_CAMPAIGN_SYNC_SECONDS plus a model's load time.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest
from google.longrunning import operations_pb2
from google.protobuf import field_mask_pb2

from foretell.client import Client, operation_response
from foretell.core.db import make_engine
from foretell.core.leases import Leases
from foretell.core.operations import OperationStore
from foretell.core.settings import ServiceName, Settings
from foretell.dataset import importer
from foretell.dataset.columns import BatchValidator
from foretell.dataset.store import DatasetStore
from foretell.runtime.server import App, create_server
from foretell.v1 import dataset_pb2 as dpb
from foretell.v1 import recommendation_pb2 as rpb
from foretell.v1 import recommendation_service_pb2 as rapi
from foretell.v1 import recommendation_service_pb2_grpc, training_pb2

from support import interactions_csv, make_recommendation_group, stubs_of, upload

SYNC = 0.3
BOUND = 30.0  # seconds: the sync interval plus loading a small model, with room for a busy CI machine


@dataclass
class Replicas:
    url: str
    tmp: Path
    main: App
    apps: list[App] = field(default_factory=list)

    def start(self, services: list[ServiceName]) -> App:
        target = f"127.0.0.1:{self.main.port}"
        settings = Settings(
            port=0,
            data_dir=self.tmp / f"replica{len(self.apps)}",
            database_url=self.url,
            dataset_target=target,
            training_target=target,
            campaign_sync_seconds=SYNC,
        )
        app = create_server(settings, services)
        app.start()
        self.apps.append(app)
        return app


@pytest.fixture
def replicas(pg_url: str, tmp_path: Path) -> Iterator[Replicas]:
    main = create_server(Settings(port=0, data_dir=tmp_path / "main", database_url=pg_url, campaign_sync_seconds=SYNC))
    main.start()
    found = Replicas(pg_url, tmp_path, main)
    try:
        yield found
    finally:
        for app in [*found.apps, main]:
            app.stop(None)


def _items(channel: grpc.Channel, campaign: str) -> list[str]:
    answer = recommendation_service_pb2_grpc.RecommendationServiceStub(channel).GetRecommendations(
        # A generous deadline: a failure here must mean a replica refused, not that a busy machine was slow.
        rapi.GetRecommendationsRequest(campaign=campaign, user_id="u1", num_results=5), timeout=30
    )
    return [i.item_id for i in answer.item_list]


def _until(condition: Callable[[], bool], what: str, bound: float = BOUND) -> float:
    start = time.monotonic()
    while True:
        try:
            if condition():
                return time.monotonic() - start
        except grpc.RpcError:
            pass
        assert time.monotonic() - start < bound, f"not within {bound} s: {what}"
        time.sleep(0.05)


class Load:
    """GetRecommendations round-robin over the replicas' channels from two threads; counts every failure."""

    def __init__(self, channels: list[grpc.Channel], campaign: str) -> None:
        self.channels = channels
        self.campaign = campaign
        self.calls = 0
        self.failures: list[str] = []
        self.prefixes: set[str] = set()
        self._stop = threading.Event()
        self._next = itertools.count()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(2)]

    def _run(self) -> None:
        while not self._stop.is_set():
            with self._lock:
                channel = self.channels[next(self._next) % len(self.channels)]
            try:
                items = _items(channel, self.campaign)
                with self._lock:
                    self.calls += 1
                    self.prefixes.update(i[0] for i in items)
            except grpc.RpcError as exc:
                with self._lock:
                    self.failures.append(f"{exc.code()}: {exc.details()}")

    def add(self, channel: grpc.Channel) -> None:
        with self._lock:
            self.channels.append(channel)

    def __enter__(self) -> Load:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(10)


def test_three_replicas_create_swap_and_delete_a_campaign_under_load(replicas: Replicas) -> None:
    main = replicas.main
    b, c = replicas.start(["recommendation"]), replicas.start(["recommendation"])
    channels = {name: grpc.insecure_channel(f"127.0.0.1:{app.port}") for name, app in (("a", main), ("b", b), ("c", c))}
    with Client(f"127.0.0.1:{main.port}", timeout=30) as admin:
        stubs = stubs_of(admin, main)
        group = make_recommendation_group(stubs, "shop")
        stubs.wait(upload(stubs, group.interactions, interactions_csv(300, seed=1, users=10, items=60)))
        admin.create_solution("movies", group.name, "popularity-count")
        first = operation_response(
            admin.wait_operation(admin.create_solution_version("solutions/movies"), timeout=180),
            training_pb2.SolutionVersion,
        )
        # The same users, other items (b0..): the swapped-in model's answers are told apart by their first letter.
        other = interactions_csv(300, seed=2, users=10, items=60).replace(b",i", b",b")
        stubs.wait(upload(stubs, group.interactions, other, mode=dpb.IMPORT_MODE_FULL))
        second = operation_response(
            admin.wait_operation(admin.create_solution_version("solutions/movies"), timeout=180),
            training_pb2.SolutionVersion,
        )

    # Created on B: every replica serves it within the bound.
    with Client(f"127.0.0.1:{b.port}", timeout=60) as on_b:
        campaign = on_b.create_campaign("movies", first.name, timeout=120).name
    for name, channel in channels.items():
        _until(lambda channel=channel: set(i[0] for i in _items(channel, campaign)) == {"i"}, f"{name} serves v1")

    with Load([channels["b"], channels["c"]], campaign) as load:
        time.sleep(0.5)
        # Hot swap on C, while a fourth replica starts.
        with Client(f"127.0.0.1:{c.port}", timeout=60) as on_c:
            swap = on_c.recommendations.UpdateCampaign(
                rapi.UpdateCampaignRequest(
                    campaign=rpb.Campaign(name=campaign, solution_version=second.name),
                    update_mask=field_mask_pb2.FieldMask(paths=["solution_version"]),
                ),
                timeout=30,
            )
            d = replicas.start(["recommendation"])
            channels["d"] = grpc.insecure_channel(f"127.0.0.1:{d.port}")
            load.add(channels["d"])
            done = on_c.wait_operation(swap, timeout=120)
            assert not done.HasField("error"), done.error
        for name, channel in channels.items():
            _until(lambda channel=channel: set(i[0] for i in _items(channel, campaign)) == {"b"}, f"{name} serves v2")
        time.sleep(0.5)
    assert load.calls > 20 and not load.failures, (load.calls, load.failures[:5])
    assert load.prefixes == {"i", "b"} or load.prefixes == {"b"}

    # Deleted and at once re-created on A with the first model: every replica serves the new campaign, never the
    # deleted namesake it had loaded (a generation counter alone would start over and look older).
    with Client(f"127.0.0.1:{main.port}", timeout=60) as admin:
        admin.recommendations.DeleteCampaign(rapi.DeleteCampaignRequest(name=campaign), timeout=10)
        admin.create_campaign("movies", first.name, timeout=120)
    for name, channel in channels.items():
        _until(lambda channel=channel: set(i[0] for i in _items(channel, campaign)) == {"i"}, f"{name} serves anew")

    # Deleted on A: no replica serves it any more.
    with Client(f"127.0.0.1:{main.port}", timeout=30) as admin:
        admin.recommendations.DeleteCampaign(rapi.DeleteCampaignRequest(name=campaign), timeout=10)

    def gone(channel: grpc.Channel) -> bool:
        try:
            _items(channel, campaign)
        except grpc.RpcError as exc:
            return exc.code() == grpc.StatusCode.NOT_FOUND
        return False

    for name, channel in channels.items():
        _until(lambda channel=channel: gone(channel), f"{name} no longer serves the deleted campaign")
    for channel in channels.values():
        channel.close()


# ---- leases: recovery never touches another live replica's work ----------------------------------------------


def test_a_starting_replica_leaves_another_replicas_running_import_alone(
    pg_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Found: a second server's start-up recovery marked a running import FAILED while the first committed it."""
    real = BatchValidator.convert

    def slowly(self: BatchValidator, *args: object, **kwargs: object) -> object:
        time.sleep(0.1)  # about 20 blocks: the import outlives a few sweeps of the leases
        return real(self, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(BatchValidator, "convert", slowly)
    monkeypatch.setattr(importer, "BLOCK_BYTES", 2048)
    first = create_server(Settings(port=0, data_dir=tmp_path / "a", database_url=pg_url))
    first.start()
    try:
        stubs = stubs_of(Client(f"127.0.0.1:{first.port}", timeout=30), first)
        group = make_recommendation_group(stubs, "shop")
        running = upload(stubs, group.interactions, interactions_csv(1000, seed=3))
        second = create_server(Settings(port=0, data_dir=tmp_path / "b", database_url=pg_url), ["dataset"])
        second.stop(None)
        during = stubs.operations.GetOperation(operations_pb2.GetOperationRequest(name=running.name), timeout=5)
        assert not during.done, during.error  # before: ABORTED by the second server's recovery
        done = stubs.wait(running)
        assert not done.HasField("error"), done.error
        imported = dpb.ImportJob()
        done.response.Unpack(imported)
        assert imported.rows_imported == 1000 and imported.state == dpb.JOB_STATE_SUCCEEDED
    finally:
        first.stop(None)


def test_a_dead_replicas_import_is_failed_by_a_survivor_once_its_lease_expires(pg_url: str, tmp_path: Path) -> None:
    survivor = create_server(Settings(port=0, data_dir=tmp_path / "a", database_url=pg_url, lease_seconds=1.0))
    survivor.start()
    try:
        with Client(f"127.0.0.1:{survivor.port}", timeout=30) as client:
            group = make_recommendation_group(stubs_of(client, survivor), "shop")
            # What a replica that died mid-import leaves: a RUNNING job, its operation, a lease nobody renews.
            engine = make_engine(pg_url)
            dead = Leases(engine, ttl_seconds=1.0)
            job = f"{group.interactions}/importJobs/orphan"
            assert dead.acquire("import", job)
            operation = OperationStore(engine).create(job, "import", group.name)
            store = DatasetStore(engine)
            store.create_import_job(job, group.interactions, "", "FULL", operation.name)
            store.update_import_job(job, state="RUNNING")
            assert not client.get_operation(operation.name).done  # the lease is live: left alone
            _until(lambda: client.get_operation(operation.name).done, "the orphaned import is failed", bound=10)
            failed = client.get_operation(operation.name)
            assert failed.error.code == grpc.StatusCode.ABORTED.value[0]
            engine.dispose()
    finally:
        survivor.stop(None)
