"""Campaigns: deployed solution versions held in memory, deployed and hot-swapped in the background.

A `Deployment` is everything one campaign serves with (engine, exploration, events), built
completely before it is published; publishing is one dict assignment in `Deployments`, and a
request takes its deployment once, so during a swap every request sees either the old or the
new model, never a mix or a half-loaded one.

State machine (stored in the campaigns table): PENDING -> ACTIVE | FAILED | CANCELLED on create;
ACTIVE -> UPDATING -> ACTIVE on update (a failed update keeps the old version serving and sets
`error`). A restart reloads ACTIVE campaigns before the server starts listening, from the
artifact URI recorded at deployment (no call to training), and warms their caches afterwards.

A deployment is ACTIVE as soon as its artifact is loaded: candidates are computed per user on first
request (engine.py). Afterwards, in the background, big catalogues get their nearest-neighbour index and
the most recently active users' candidates are cached for up to WARM_SECONDS (`_warm`). Precomputing
every user before ACTIVE took 187 s at 500k users x 100k items (docs/benchmarks.md).
"""

from __future__ import annotations

import contextlib
import logging
import sys
import threading
import time
from collections.abc import Callable, Hashable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Any

import grpc
from google.longrunning import operations_pb2
from google.rpc import code_pb2

from foretell.core import metrics, names, tenancy
from foretell.core.artifact_store import ArtifactNotFound, Artifacts
from foretell.core.errors import (
    Cancelled,
    FailedPrecondition,
    ForetellError,
    NotFound,
    Unavailable,
    absent,
    invalid,
)
from foretell.core.leases import Leases
from foretell.core.logs import failure
from foretell.core.operations import OperationStore, error_status
from foretell.core.pins import Pins
from foretell.recipes.artifact import load_artifact
from foretell.recommendation.engine import NO_EVENTS, Engine, Exploration, RecentEvents
from foretell.recommendation.events import EventFeeds, RecentEventStore
from foretell.recommendation.store import NEXT_GENERATION, RecommendationStore, to_campaign
from foretell.v1 import (
    dataset_service_pb2,
    dataset_service_pb2_grpc,
    training_pb2,
    training_service_pb2,
    training_service_pb2_grpc,
)

log = logging.getLogger("foretell.recommendation")

# Cached top candidates per user, and how many users' candidates a deployment keeps (least recently used go).
CANDIDATES = 100
CACHE_USERS = 100_000
# How long a new deployment spends caching its most recent users' candidates, in the background.
WARM_SECONDS = 10.0
# Serialized answers cached per deployment (about 1 KB each for 25 items).
ANSWERS = 50_000
PEER_TIMEOUT = 10.0
LEASE = "deploy"  # core/leases.py kind of a campaign deployment in progress


@dataclass(frozen=True)
class CampaignSpec:
    solution_version: str
    exploration: Exploration
    metadata_enabled: bool


@dataclass(frozen=True)
class Resolved:
    solution_version: str
    artifact_uri: str
    dataset_group: str


class AnswerCache:
    """Serialized answers of one deployment, keyed by request and recent-events stamp.

    Answers are deterministic for a deployment and a stamp, and parsing a cached answer is far
    cheaper than building it again (protobuf construction dominates a cache hit in the engine).
    Bounded; the oldest entries go first.
    """

    def __init__(self, capacity: int = ANSWERS) -> None:
        self._capacity = capacity
        self._answers: dict[Hashable, bytes] = {}
        self._lock = threading.Lock()

    def get(self, key: Hashable) -> bytes | None:
        return self._answers.get(key)

    def put(self, key: Hashable, answer: bytes) -> None:
        with self._lock:
            if key not in self._answers and len(self._answers) >= self._capacity:
                self._answers.pop(next(iter(self._answers)))
            self._answers[key] = answer


@dataclass(frozen=True)
class Deployment:
    name: str
    spec: CampaignSpec
    artifact_uri: str
    dataset_group: str
    engine: Engine
    events: RecentEventStore | None
    # The campaign row this deployment serves, by creation time (a deleted and re-created namesake is another)
    # and generation (bumped on every change): replicas reconcile towards the row's.
    created: Any = None
    generation: int = 0
    # A new Deployment gets a new cache: its settings (exploration) may change the answers.
    answers: AnswerCache = field(default_factory=AnswerCache, compare=False)

    @property
    def exploration(self) -> Exploration | None:
        return self.spec.exploration if self.spec.exploration.weight > 0 else None

    def prepare(self) -> None:
        """Builds what the settings need before the deployment serves (exploration's indexes)."""
        if self.exploration is not None:
            self.engine.prepare_exploration(self.exploration.cutoff_days)

    def recent(self, user_id: str, session_id: str) -> RecentEvents:
        return self.events.recent(user_id, session_id) if self.events is not None else NO_EVENTS


class Deployments:
    """(tenant, campaign name) -> live Deployment. Reads are one dict lookup; writes replace whole values.

    Names are per tenant: every method acts on the current tenant's campaign (core/tenancy.py)."""

    def __init__(self) -> None:
        self._live: dict[tuple[str, str], Deployment] = {}

    def get(self, name: str) -> Deployment | None:
        return self._live.get((tenancy.current(), name))

    def put(self, deployment: Deployment) -> Deployment | None:
        key = (tenancy.current(), deployment.name)
        old = self._live.get(key)
        self._live[key] = deployment
        metrics.campaign_serving(tenancy.prefix() + deployment.name, deployment.spec.solution_version)
        return old

    def remove(self, name: str) -> Deployment | None:
        metrics.campaign_serving(tenancy.prefix() + name, None)
        return self._live.pop((tenancy.current(), name), None)

    def keys(self) -> set[tuple[str, str]]:
        """(tenant, name) of every live deployment."""
        return set(self._live)

    def engine_for(self, artifact_uri: str) -> Engine | None:
        for deployment in list(self._live.values()):
            if deployment.artifact_uri == artifact_uri:
                return deployment.engine
        return None


def load_engine(artifact_uri: str, artifacts: Artifacts) -> Engine:
    try:
        artifact = load_artifact(artifacts.fetch(artifact_uri))
    except (FileNotFoundError, ArtifactNotFound):
        raise FailedPrecondition(
            f"no complete artifact at {artifact_uri!r}", metadata={"resource": artifact_uri}
        ) from None
    torch = sys.modules.get("torch")
    if torch is not None:
        # As with BLAS (service.single_threaded_blas): parallelism comes from request threads.
        torch.set_num_threads(1)
    return Engine(artifact, candidates=CANDIDATES, cache_size=CACHE_USERS)


class SolutionVersions:
    """Asks the training service where a solution version's artifact is."""

    def __init__(self, channel: Callable[[], grpc.Channel]) -> None:
        self._channel = channel

    def resolve(self, version: str, field_name: str) -> Resolved:
        names.check_name(version, field_name, "solutions", "versions")
        stub = training_service_pb2_grpc.TrainingServiceStub(self._channel())
        try:
            found = stub.GetSolutionVersion(
                training_service_pb2.GetSolutionVersionRequest(name=version), timeout=PEER_TIMEOUT
            )
            solution = stub.GetSolution(
                training_service_pb2.GetSolutionRequest(name=version.rsplit("/versions/", 1)[0]), timeout=PEER_TIMEOUT
            )
        except grpc.RpcError as exc:
            raise _peer_error(exc, version, field_name) from None
        if found.state != training_pb2.TRAINING_STATE_SUCCEEDED or not found.artifact_uri:
            state = training_pb2.TrainingState.Name(found.state).removeprefix("TRAINING_STATE_")
            raise FailedPrecondition(
                f"solution version {version!r} is {state}; only SUCCEEDED versions can be deployed",
                metadata={"resource": version},
            )
        return Resolved(version, found.artifact_uri, solution.dataset_group)


def _peer_error(exc: grpc.RpcError, version: str, field_name: str) -> ForetellError:
    code = exc.code() if isinstance(exc, grpc.Call) else None
    if code == grpc.StatusCode.NOT_FOUND:
        return absent(version)
    if code == grpc.StatusCode.INVALID_ARGUMENT:
        return invalid(field_name, f"training rejected it: {exc.details() if isinstance(exc, grpc.Call) else ''}")
    if code == grpc.StatusCode.UNIMPLEMENTED:
        return FailedPrecondition("the training service does not serve solution versions yet")
    return Unavailable(f"the training service did not answer ({code.name if code else 'error'}); retry later")


def check_dataset_group(channel: Callable[[], grpc.Channel], name: str, field_name: str) -> None:
    """NOT_FOUND when the dataset service does not know group `name`."""
    stub = dataset_service_pb2_grpc.DatasetServiceStub(channel())
    try:
        stub.GetDatasetGroup(dataset_service_pb2.GetDatasetGroupRequest(name=name), timeout=PEER_TIMEOUT)
    except grpc.RpcError as exc:
        code = exc.code() if isinstance(exc, grpc.Call) else None
        if code == grpc.StatusCode.NOT_FOUND:
            raise absent(name) from None
        raise Unavailable(
            f"the dataset service did not answer ({code.name if code else 'error'}); retry later"
        ) from None


class Campaigns:
    def __init__(
        self,
        store: RecommendationStore,
        operations: OperationStore,
        versions: SolutionVersions,
        feeds: EventFeeds,
        artifacts: Artifacts,
        leases: Leases,
        warm_users: int | None = None,
    ) -> None:
        self.deployments = Deployments()
        self._artifacts = artifacts
        self._leases = leases
        self._pins = Pins(store.engine)
        self._store = store
        self._ops = operations
        self._versions = versions
        self._feeds = feeds
        self._warm_users = warm_users
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="campaign-deploy")
        # Index builds and warming: apart, so that they never delay the next deployment.
        self._warmer = ThreadPoolExecutor(1, thread_name_prefix="campaign-warm")
        # Serializes publishing, deleting and state changes of campaigns in this process.
        self._lock = threading.RLock()
        self._loading: set[tuple[str, str]] = set()
        self._closing = threading.Event()
        self._sync: threading.Thread | None = None

    def resolve(self, version: str, field_name: str) -> Resolved:
        return self._versions.resolve(version, field_name)

    # ---- serving ---------------------------------------------------------------------------

    def serving(self, name: str) -> Deployment:
        """The deployment answering for `name`; NOT_FOUND / FAILED_PRECONDITION when there is none."""
        deployment = self.deployments.get(name)
        if deployment is not None:
            return deployment
        names.check_name(name, "campaign", "campaigns")
        row = self._store.get_campaign(name)
        if row.state in ("ACTIVE", "UPDATING") and row.artifact_uri:
            # Deployed by another replica (or its start-up load failed here): load it now.
            self._load_in_background(row)
            raise FailedPrecondition(
                f"campaign {name!r} is being loaded on this server; retry shortly", metadata={"resource": name}
            )
        raise FailedPrecondition(
            f"campaign {name!r} is {row.state}; it answers requests once ACTIVE", metadata={"resource": name}
        )

    def engine_for(self, artifact_uri: str) -> Engine:
        """A live engine serving `artifact_uri`, or a freshly loaded one (not warmed)."""
        return self.deployments.engine_for(artifact_uri) or load_engine(artifact_uri, self._artifacts)

    # ---- create / update / delete ----------------------------------------------------------

    def create(self, campaign_id: str, spec: CampaignSpec) -> operations_pb2.Operation:
        name = f"campaigns/{campaign_id}"
        resolved = self.resolve(spec.solution_version, "campaign.solution_version")
        with self._leases.for_new(LEASE, name, "campaign"):  # this process deploys it
            self._store.create_campaign(
                {
                    "name": name,
                    "solution_version": spec.solution_version,
                    "dataset_group": resolved.dataset_group,
                    "artifact_uri": "",
                    **_config(spec),
                    "state": "PENDING",
                }
            )
        self._pins.hold(name, [spec.solution_version])  # from now on the version cannot be deleted
        operation = self._ops.create(name, "deploy", resolved.dataset_group)
        self._store.update_campaign(name, operation=operation.name)
        self._pool.submit(tenancy.carry(self._deploy), name, operation.name, spec, resolved, True)
        log.info("deploying campaign", extra={"campaign": name, "solution_version": spec.solution_version})
        return self._ops.get(operation.name)

    def update(self, name: str, change: Callable[[CampaignSpec], CampaignSpec]) -> operations_pb2.Operation:
        """Applies `change` to the campaign's settings; a new solution version is loaded, then swapped in."""
        current = self._spec(self._store.get_campaign(name))
        spec = change(current)
        live = self.deployments.get(name)
        reload = live is None or spec.solution_version != live.spec.solution_version
        resolved = self.resolve(spec.solution_version, "campaign.solution_version") if reload else None
        with self._lock:
            row = self._store.get_campaign(name)
            if row.state in ("PENDING", "UPDATING"):
                raise FailedPrecondition(
                    f"campaign {name!r} is {row.state}; wait for operation {row.operation}", metadata={"resource": name}
                )
            operation = self._ops.create(name, "deploy", resolved.dataset_group if resolved else row.dataset_group)
            if resolved is not None:
                self._pins.hold(name, [row.solution_version, spec.solution_version])  # the served one and the next
                self._leases.acquire(LEASE, name)
                self._store.update_campaign(name, state="UPDATING", operation=operation.name, error=None)
                self._pool.submit(tenancy.carry(self._deploy), name, operation.name, spec, resolved, False)
                log.info("updating campaign", extra={"campaign": name, "solution_version": spec.solution_version})
                return self._ops.get(operation.name)
            # Settings only: swap in a deployment sharing the loaded engine.
            live = self.deployments.get(name)
            if live is None:
                raise FailedPrecondition(
                    f"campaign {name!r} was unloaded meanwhile; retry", metadata={"resource": name}
                )
            row = self._store.update_campaign(
                name, operation=operation.name, error=None, generation=NEXT_GENERATION, **_config(spec)
            )
            updated = replace(
                live, spec=spec, answers=AnswerCache(), created=row.create_time, generation=row.generation
            )
            updated.prepare()
            self.deployments.put(updated)
        self._ops.finish(operation.name, to_campaign(row))
        return self._ops.get(operation.name)

    def delete(self, name: str) -> None:
        with self._lock:
            self._store.delete_campaign(name)
            self._pins.hold(name, [])
            old = self.deployments.remove(name)
        if old is not None:
            self._feeds.release(old.dataset_group)
        log.info("deleted campaign", extra={"campaign": name})

    # ---- background work -------------------------------------------------------------------

    def _deploy(self, name: str, operation: str, spec: CampaignSpec, resolved: Resolved, creating: bool) -> None:
        events: RecentEventStore | None = None
        try:
            self._ops.report_progress(operation, 5, f"loading {resolved.solution_version}")
            engine = load_engine(resolved.artifact_uri, self._artifacts)
            self._check_cancel(operation)
            events = self._feeds.acquire(resolved.dataset_group, engine.artifact.snapshot_time)
            deployment = Deployment(name, spec, resolved.artifact_uri, resolved.dataset_group, engine, events)
            deployment.prepare()
            with self._lock:
                try:
                    row = self._store.update_campaign(
                        name,
                        state="ACTIVE",
                        error=None,
                        solution_version=spec.solution_version,
                        dataset_group=resolved.dataset_group,
                        artifact_uri=resolved.artifact_uri,
                        generation=NEXT_GENERATION,  # every replica loads it (reconcile)
                        **_config(spec),
                    )
                except NotFound:
                    raise Cancelled(f"campaign {name!r} was deleted during its deployment") from None
                deployment = replace(deployment, created=row.create_time, generation=row.generation)
                self._pins.hold(name, [spec.solution_version])
                old = self.deployments.put(deployment)
                events = None  # owned by the deployment now
            if old is not None:
                self._feeds.release(old.dataset_group)
            self._ops.finish(operation, to_campaign(row))
            log.info("campaign active", extra={"campaign": name, "solution_version": spec.solution_version})
            self._warm_later(deployment)
        except Exception as exc:
            if events is not None:
                self._feeds.release(resolved.dataset_group)
            self._fail(name, operation, exc, creating)
        finally:
            self._leases.release(LEASE, name)

    def _fail(self, name: str, operation: str, exc: Exception, creating: bool) -> None:
        if isinstance(exc, ForetellError):
            status = exc.to_status()
        else:
            log.error("deployment failed", extra={"campaign": name, **failure(exc)})
            status = error_status(code_pb2.INTERNAL, f"deployment failed: {type(exc).__name__}")
        with self._lock:
            if self.deployments.get(name) is not None:
                state = "ACTIVE"  # a failed update leaves the previous version serving
            elif isinstance(exc, Cancelled) and creating:
                state = "CANCELLED"
            else:
                state = "FAILED"
            with contextlib.suppress(NotFound):
                row = self._store.update_campaign(name, state=state, error=status.SerializeToString())
                self._pins.hold(name, [row.solution_version] if state == "ACTIVE" else [])
        self._ops.fail(operation, status)
        log.warning("deployment failed", extra={"campaign": name, "code": code_pb2.Code.Name(status.code)})

    def _check_cancel(self, operation: str) -> None:
        if self._ops.cancel_requested(operation):
            raise Cancelled("the deployment was cancelled")

    def _spec(self, row: Any) -> CampaignSpec:
        return CampaignSpec(
            row.solution_version, Exploration(row.exploration_weight, row.exploration_cutoff_days), row.metadata_enabled
        )

    def _activate(self, row: Any) -> Deployment:
        """Serves campaign row `row` here (of the current tenant), replacing an older generation; the live one if
        it is as new already."""
        live = self.deployments.get(row.name)
        if live is not None and live.artifact_uri == row.artifact_uri and live.dataset_group == row.dataset_group:
            # Settings changed elsewhere: the loaded model and feed stay.
            deployment = replace(
                live, spec=self._spec(row), answers=AnswerCache(), created=row.create_time, generation=row.generation
            )
            deployment.prepare()
            acquired = False
        else:
            engine = self.deployments.engine_for(row.artifact_uri) or load_engine(row.artifact_uri, self._artifacts)
            events = self._feeds.acquire(row.dataset_group, engine.artifact.snapshot_time)
            deployment = Deployment(
                row.name,
                self._spec(row),
                row.artifact_uri,
                row.dataset_group,
                engine,
                events,
                row.create_time,
                row.generation,
            )
            deployment.prepare()
            acquired = True
        with self._lock:
            current = self.deployments.get(row.name)
            if current is None or not _serves(current, row):
                old = self.deployments.put(deployment)
                if acquired and old is not None:
                    self._feeds.release(old.dataset_group)
                return deployment
        if acquired:
            self._feeds.release(row.dataset_group)  # someone else published it meanwhile
        return current

    def _load_in_background(self, row: Any) -> None:
        key = (row.tenant, row.name)
        with self._lock:
            if key in self._loading:
                return
            self._loading.add(key)

        def load() -> None:
            try:
                self._warm_later(self._activate(row))
            except Exception as exc:
                log.error("loading campaign failed", extra={"campaign": row.name, **failure(exc)})
            finally:
                with self._lock:
                    self._loading.discard(key)

        self._pool.submit(tenancy.carry(load))

    def _warm_later(self, deployment: Deployment) -> None:
        with contextlib.suppress(RuntimeError):  # closing: nothing left to warm for
            self._warmer.submit(self._warm, deployment)

    def _warm(self, deployment: Deployment) -> None:
        """The nearest-neighbour index of a big catalogue, then the most recent users' candidates."""
        start = time.monotonic()
        try:
            indexed = deployment.engine.build_index()
            built = time.monotonic() - start
            users = deployment.engine.warm(self._warm_users, WARM_SECONDS)
        except Exception as exc:  # the engine keeps answering exactly, from the catalogue
            log.error("warming campaign failed", extra={"campaign": deployment.name, **failure(exc)})
            return
        log.info(
            "campaign warm",
            extra={
                "campaign": deployment.name,
                "warm_users": users,
                "index_seconds": round(built, 2) if indexed else None,
                "seconds": round(time.monotonic() - start, 2),
            },
        )

    def sweep(self) -> None:
        """Fails deployments whose process stopped (no live lease, core/leases.py): never another replica's."""
        aborted = error_status(code_pb2.ABORTED, "the server stopped during this deployment; run it again")
        for row in self._store.campaigns_in("PENDING", "UPDATING"):
            with tenancy.acting_as(row.tenant):
                if self._leases.held(LEASE, row.name):
                    continue
                if row.operation and not self._ops.get(row.operation).done:
                    self._ops.fail(row.operation, aborted)
                state = "ACTIVE" if row.state == "UPDATING" and row.artifact_uri else "FAILED"
                with contextlib.suppress(NotFound):
                    self._store.update_campaign(row.name, state=state, error=aborted.SerializeToString())

    def reconcile(self) -> None:
        """Brings this replica's deployments to what the campaigns table says, every tenant's: loads new and
        changed campaigns (a higher generation), unloads deleted ones. Every replica runs it every
        FORETELL_CAMPAIGN_SYNC_SECONDS (`start_sync`)."""
        wanted = {(r.tenant, r.name): r for r in self._store.campaigns_in("ACTIVE", "UPDATING") if r.artifact_uri}
        swapped = []
        for (tenant, name), row in wanted.items():
            with tenancy.acting_as(tenant):
                live = self.deployments.get(name)
                if live is not None and _serves(live, row):
                    continue
                try:
                    swapped.append(self._activate(row))
                    log.info("campaign synced", extra={"campaign": name, "generation": row.generation})
                except Exception as exc:  # retried on the next round; this replica keeps what it served
                    log.error("could not sync campaign", extra={"campaign": name, **failure(exc)})
        for deployment in swapped:
            self._warm_later(deployment)
        for tenant, name in self.deployments.keys() - wanted.keys():
            with tenancy.acting_as(tenant), self._lock:
                try:
                    row = self._store.get_campaign(name)
                    if row.state in ("ACTIVE", "UPDATING"):
                        continue  # published since the read above
                except NotFound:
                    pass
                old = self.deployments.remove(name)
            if old is not None:
                with tenancy.acting_as(tenant):
                    self._feeds.release(old.dataset_group)
                log.info("campaign unloaded", extra={"campaign": name})

    def start_sync(self, every_seconds: float) -> None:
        """Runs `reconcile` every `every_seconds` in a thread of its own until `close`."""

        def run() -> None:
            while not self._closing.wait(every_seconds):
                try:
                    self.reconcile()
                except Exception as exc:  # the database may be briefly away: the next round retries
                    log.warning("campaign sync failed", extra=failure(exc))

        self._sync = threading.Thread(target=run, name="campaign-sync", daemon=True)
        self._sync.start()

    def recover(self) -> None:
        """At start: fails deployments a stopped process left (`sweep`), reloads ACTIVE campaigns (synchronously)."""
        self.sweep()
        loaded = []
        for row in self._store.campaigns_in("ACTIVE"):
            with tenancy.acting_as(row.tenant):
                try:
                    loaded.append(self._activate(row))
                except Exception as exc:
                    status = (
                        exc.to_status()
                        if isinstance(exc, ForetellError)
                        else error_status(code_pb2.INTERNAL, f"could not reload: {type(exc).__name__}")
                    )
                    log.error("could not reload campaign", extra={"campaign": row.name, **failure(exc)})
                    self._store.update_campaign(row.name, state="FAILED", error=status.SerializeToString())
        for deployment in loaded:
            self._warm_later(deployment)
        if loaded:
            log.info("reloaded campaigns", extra={"campaigns": [d.name for d in loaded]})

    def close(self, wait: bool) -> None:
        self._closing.set()
        if self._sync is not None:
            self._sync.join(10.0)
        self._pool.shutdown(wait=wait, cancel_futures=True)
        self._warmer.shutdown(wait=wait, cancel_futures=True)
        self._feeds.close()


def _serves(deployment: Deployment, row: Any) -> bool:
    """Whether `deployment` serves campaign row `row` as it is now, or a later generation of it."""
    # Another creation time: a deleted campaign's namesake.
    return bool(deployment.created == row.create_time and deployment.generation >= row.generation)


def _config(spec: CampaignSpec) -> dict[str, Any]:
    return {
        "exploration_weight": spec.exploration.weight,
        "exploration_cutoff_days": spec.exploration.cutoff_days,
        "metadata_enabled": spec.metadata_enabled,
    }
