"""Serving benchmark: Foretell's GetRecommendations / GetPersonalizedRanking against a no-op gRPC server.

One run:
1. synthesizes a catalogue (default 100k items, 20k users, ~1.5M interactions with genre
   structure and Zipf-like popularity) and trains a factor model on it directly with the recipes
   (`als` when `foretell.recipes.als` exists, else the bench's own PureSVD, the same `U[u] @ V.T`
   serving shape), saved as an artifact;
2. records a campaign on it as ACTIVE and starts a real Foretell server (dataset + recommendation,
   `foretell.runtime.server.create_server`, default settings) in a subprocess: the campaign is
   loaded the way a restart loads it, and the bench waits for its "campaign warm" log line;
3. starts, in another subprocess, a no-op gRPC server with the same thread pool whose handlers
   return a pre-built response (a real Foretell answer, so the same size): the Python gRPC ceiling;
4. from a separate load process (grpc.aio, its own channels) measures, per method, closed-loop peak
   QPS with p50/p99, then p50/p99 open-loop at half of each server's peak (latency counted from the
   scheduled send time, so queueing is not hidden). The load alternates between the two servers in
   1-second slices: this shared 2-core machine drifts by +-30% over seconds to minutes, and
   alternating slices makes both servers see the same drift.

    PYTHONPATH=services:clients/python python bench/serve_bench.py [--json out.json]
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

# The shared load generator; importing it also puts services/ and clients/python on sys.path.
from grpc_load import add_load_arguments, compare, load_summary, machine, run_noop_server, spawn, stop, table

from foretell.recipes.base import Interactions, Param, Progress, Recommender, no_progress

CAMPAIGN = "campaigns/bench"
GROUP = "datasetGroups/bench"
BENCH_RECIPE = "bench-puresvd"


# ---- data and model ------------------------------------------------------------------------


def synthesize(n_items: int, n_users: int, n_interactions: int, genres: int = 50, seed: int = 0) -> Interactions:
    """Users with two favourite genres: 70% of their events in them, 30% anywhere (Zipf-like popularity)."""
    rng = np.random.default_rng(seed)
    item_genre = rng.integers(0, genres, n_items)
    weight = 1.0 / (rng.permutation(n_items) + 10.0) ** 0.8
    per_user = rng.lognormal(0, 0.8, n_users)
    per_user = np.maximum(1, np.round(per_user / per_user.sum() * n_interactions)).astype(np.int64)
    users = np.repeat(np.arange(n_users), per_user)
    n = len(users)
    favourites = rng.integers(0, genres, (n_users, 2))
    chosen_genre = favourites[users, rng.integers(0, 2, n)]
    in_genre = rng.random(n) < 0.7
    items = np.empty(n, dtype=np.int64)
    global_cdf = np.cumsum(weight) / weight.sum()
    items[~in_genre] = np.searchsorted(global_cdf, rng.random(int((~in_genre).sum())))
    for g in range(genres):
        members = np.flatnonzero(item_genre == g)
        rows = np.flatnonzero(in_genre & (chosen_genre == g))
        cdf = np.cumsum(weight[members]) / weight[members].sum()
        items[rows] = members[np.minimum(np.searchsorted(cdf, rng.random(len(rows))), len(members) - 1)]
    items = np.minimum(items, n_items - 1)
    timestamps = np.sort(rng.integers(1_700_000_000, 1_700_000_000 + 90 * 86400, n))
    order = rng.permutation(n)  # events of users interleave in time
    second = rng.integers(0, genres, n_items)
    labels = np.array(
        [f"g{a}|g{b}" if rng.random() < 0.3 else f"g{a}" for a, b in zip(item_genre, second, strict=True)]
    )
    return Interactions(
        user_ids=np.array([f"u{k}" for k in range(n_users)], dtype=object),
        item_ids=np.array([f"i{k}" for k in range(n_items)], dtype=object),
        users=users[order].astype(np.int32),
        items=items[order].astype(np.int32),
        timestamps=timestamps,
        event_types=(rng.random(n) < 0.1).astype(np.int16),
        event_type_names=("click", "purchase"),
        item_features={
            "GENRES": labels.astype(object),
            "PRICE": np.round(rng.lognormal(3, 1, n_items), 2).astype(str).astype(object),
        },
        item_created=rng.uniform(1_700_000_000 - 365 * 86400, 1_700_000_000 + 90 * 86400, n_items),
    )


class BenchPureSVD(Recommender):
    """PureSVD (truncated SVD of the user-item matrix): a factor model with ALS's serving shape.

    Used when `foretell.recipes.als` is not available; it scores like any factor model,
    `U[u] @ V.T`, and folds unknown users in as the sum of their items' factors.
    """

    name = BENCH_RECIPE
    params: ClassVar[dict[str, Param]] = {"factors": Param(int, 64, "latent factors", 2, 512)}

    def __init__(self, user_factors: np.ndarray, item_factors: np.ndarray) -> None:
        self.user_factors_ = user_factors
        self.item_factors_ = item_factors
        self.n_items = len(item_factors)

    @classmethod
    def fit(cls, data: Interactions, params: dict[str, Any], progress: Progress = no_progress) -> BenchPureSVD:
        import torch

        k = int(params.get("factors", 64))
        keys = np.unique(data.users.astype(np.int64) * data.n_items + data.items)
        rows, cols = keys // data.n_items, keys % data.n_items
        x = torch.sparse_coo_tensor(
            torch.from_numpy(np.vstack([rows, cols])), torch.ones(len(keys)), (data.n_users, data.n_items)
        ).coalesce()
        generator = torch.Generator().manual_seed(0)
        q = torch.randn(data.n_items, k + 16, generator=generator)
        for _ in range(3):  # randomized range finder with power iterations
            y, _ = torch.linalg.qr(torch.sparse.mm(x, q))
            q, _ = torch.linalg.qr(torch.sparse.mm(x.t(), y))
        y, _ = torch.linalg.qr(torch.sparse.mm(x, q))
        b = torch.sparse.mm(x.t(), y).t()  # (k+16, n_items)
        _, s, vt = torch.linalg.svd(b, full_matrices=False)
        v = vt[:k].t().contiguous()  # item factors
        u = torch.sparse.mm(x, v)  # users: their rows projected on the item factors
        return cls(u.numpy().astype(np.float32), v.numpy().astype(np.float32))

    def _users(self, users: np.ndarray, histories: Sequence[np.ndarray]) -> np.ndarray:
        out = np.empty((len(users), self.item_factors_.shape[1]), dtype=np.float32)
        for row, (user, history) in enumerate(zip(users.tolist(), histories, strict=True)):
            out[row] = self.user_factors_[user] if user >= 0 else self.item_factors_[np.asarray(history)].sum(axis=0)
        return out

    def score(self, users: np.ndarray, histories: Sequence[np.ndarray]) -> np.ndarray:
        return self._users(users, histories) @ self.item_factors_.T

    def score_items(self, users: np.ndarray, histories: Sequence[np.ndarray], items: np.ndarray) -> np.ndarray:
        return self._users(users, histories) @ self.item_factors_[items].T

    def similar(self, items: np.ndarray) -> np.ndarray:
        return self.item_factors_[items] @ self.item_factors_.T

    def save(self, directory: Path) -> None:
        np.savez(directory / "factors.npz", users=self.user_factors_, items=self.item_factors_)

    @classmethod
    def load(cls, directory: Path) -> BenchPureSVD:
        with np.load(directory / "factors.npz") as z:
            return cls(z["users"], z["items"])


def register_bench_recipe() -> None:
    from foretell.recipes.registry import RECIPES

    RECIPES.setdefault(BENCH_RECIPE, "serve_bench:BenchPureSVD")


def train(data: Interactions, recipe: str, factors: int) -> tuple[Recommender, str]:
    if recipe == "auto":
        try:
            import foretell.recipes.als  # noqa: F401
        except ImportError:
            recipe = BENCH_RECIPE
        else:
            recipe = "als"
    if recipe == BENCH_RECIPE:
        return BenchPureSVD.fit(data, {"factors": factors}), recipe
    from foretell.recipes.registry import parse_params, recipe_class

    params = parse_params(recipe, {"factors": str(factors)} if "factors" in recipe_class(recipe).params else {})
    return recipe_class(recipe).fit(data, params), recipe


# ---- servers (subprocesses) ----------------------------------------------------------------


class _Warm(logging.Handler):
    def __init__(self, done: Any) -> None:
        super().__init__()
        self.done = done

    def emit(self, record: logging.LogRecord) -> None:
        if record.getMessage() == "campaign warm":
            self.done.set()


def serve_foretell(conn: Connection, data_dir: str) -> None:
    import threading

    register_bench_recipe()
    from foretell.core.settings import Settings
    from foretell.runtime.server import create_server

    warm = threading.Event()
    rec_log = logging.getLogger("foretell.recommendation")
    rec_log.setLevel(logging.INFO)
    rec_log.addHandler(_Warm(warm))
    started = time.monotonic()
    app = create_server(Settings(port=0, data_dir=Path(data_dir)), ("dataset", "recommendation"))
    loaded = time.monotonic() - started
    app.start()
    conn.send(("listening", app.port, loaded))
    warm.wait(timeout=1800)
    conn.send(("warm", app.port, time.monotonic() - started))
    conn.recv()
    app.stop(0)


def serve_noop(conn: Connection, recommendations: bytes, ranking: bytes, max_workers: int) -> None:
    from foretell.v1 import recommendation_service_pb2 as api
    from foretell.v1 import recommendation_service_pb2_grpc

    recs = api.GetRecommendationsResponse.FromString(recommendations)
    ranked = api.GetPersonalizedRankingResponse.FromString(ranking)

    class Noop(recommendation_service_pb2_grpc.RecommendationServiceServicer):
        def GetRecommendations(self, request: Any, context: Any) -> Any:  # noqa: N802
            return recs

        def GetPersonalizedRanking(self, request: Any, context: Any) -> Any:  # noqa: N802
            return ranked

    run_noop_server(
        conn,
        lambda server: recommendation_service_pb2_grpc.add_RecommendationServiceServicer_to_server(Noop(), server),
        max_workers,
    )


# ---- orchestration -------------------------------------------------------------------------


def recommendation_call(method: str, channel: Any) -> Any:
    """`method` of the generated stub on `channel`: the client (de)serializes messages, as a user's does."""
    from foretell.v1 import recommendation_service_pb2_grpc

    return getattr(recommendation_service_pb2_grpc.RecommendationServiceStub(channel), method)


def _setup_group(port: int) -> None:
    """The dataset group the campaign watches for events (so its event feed connects)."""
    import grpc

    from foretell.v1 import dataset_pb2 as dpb
    from foretell.v1 import dataset_service_pb2 as dapi
    from foretell.v1 import dataset_service_pb2_grpc

    fields = [
        dpb.SchemaField(name="USER_ID", type=dpb.FIELD_TYPE_STRING),
        dpb.SchemaField(name="ITEM_ID", type=dpb.FIELD_TYPE_STRING),
        dpb.SchemaField(name="TIMESTAMP", type=dpb.FIELD_TYPE_LONG),
        dpb.SchemaField(name="EVENT_TYPE", type=dpb.FIELD_TYPE_STRING, nullable=True),
    ]
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = dataset_service_pb2_grpc.DatasetServiceStub(channel)
        calls: list[Callable[[], Any]] = [
            lambda: stub.CreateDatasetGroup(
                dapi.CreateDatasetGroupRequest(
                    dataset_group_id="bench", dataset_group=dpb.DatasetGroup(domain=dpb.DOMAIN_RECOMMENDATION)
                ),
                timeout=10,
            ),
            lambda: stub.CreateSchema(
                dapi.CreateSchemaRequest(
                    schema_id="bench", schema=dpb.Schema(domain=dpb.DOMAIN_RECOMMENDATION, fields=fields)
                ),
                timeout=10,
            ),
            lambda: stub.CreateDataset(
                dapi.CreateDatasetRequest(
                    parent=GROUP,
                    dataset_id="interactions",
                    dataset=dpb.Dataset(dataset_type=dpb.DATASET_TYPE_INTERACTIONS, schema="schemas/bench"),
                ),
                timeout=10,
            ),
        ]
        for call in calls:
            try:
                call()
            except grpc.RpcError as exc:  # a reused --workdir has them already
                if not isinstance(exc, grpc.Call) or exc.code() != grpc.StatusCode.ALREADY_EXISTS:
                    raise


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, default=100_000)
    parser.add_argument("--users", type=int, default=20_000)
    parser.add_argument("--interactions", type=int, default=1_500_000)
    parser.add_argument("--factors", type=int, default=64)
    parser.add_argument("--recipe", default="auto", help=f"auto (als if available, else {BENCH_RECIPE}), als, ...")
    parser.add_argument("--results", type=int, default=25, help="num_results of GetRecommendations")
    parser.add_argument("--ranking-items", type=int, default=100, help="input_list size of GetPersonalizedRanking")
    add_load_arguments(parser, "method")
    parser.add_argument("--methods", default="GetRecommendations,GetPersonalizedRanking")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument(
        "--workdir", type=Path, help="keep the artifact and database here; a rerun with the same shape reuses them"
    )
    args = parser.parse_args()

    from foretell.core.artifacts import uri_of
    from foretell.core.db import make_engine
    from foretell.core.settings import Settings
    from foretell.recipes.artifact import Artifact, load_interactions, save_artifact
    from foretell.recommendation.store import RecommendationStore
    from foretell.v1 import recommendation_service_pb2 as api
    from foretell.v1 import recommendation_service_pb2_grpc

    register_bench_recipe()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="serve-bench-"))
    artifact_dir = workdir / "artifact"
    shape = {"items": args.items, "users": args.users, "interactions": args.interactions, "factors": args.factors}
    settings = Settings(port=0, data_dir=workdir / "data")
    reusable = (workdir / "shape.json").exists() and json.loads((workdir / "shape.json").read_text()) == {
        **shape,
        "recipe": args.recipe,
    }
    if reusable:  # --workdir of an earlier run with the same arguments: skip training
        data = load_interactions(artifact_dir / "interactions.npz")
        recipe, train_s = json.loads((artifact_dir / "meta.json").read_text())["recipe"], 0.0
        print(f"reusing the {recipe} artifact in {workdir}", flush=True)
    else:
        t0 = time.monotonic()
        data = synthesize(args.items, args.users, args.interactions)
        print(f"data: {data.n_users} users, {data.n_items} items, {len(data.users)} interactions "
              f"({time.monotonic() - t0:.1f} s)", flush=True)  # fmt: skip
        t0 = time.monotonic()
        model, recipe = train(data, args.recipe, args.factors)
        train_s = time.monotonic() - t0
        print(f"trained {recipe} in {train_s:.1f} s", flush=True)
        shutil.rmtree(settings.data_dir, ignore_errors=True)
        save_artifact(
            artifact_dir, Artifact(model, data, recipe, {"factors": args.factors}, snapshot_time=int(time.time()))
        )
        engine = make_engine(settings.database_url)
        RecommendationStore(engine).create_campaign(
            {
                "name": CAMPAIGN,
                "solution_version": "solutions/bench/versions/v1",
                "dataset_group": GROUP,
                "artifact_uri": uri_of(artifact_dir),
                "state": "ACTIVE",
            }
        )
        engine.dispose()
        (workdir / "shape.json").write_text(json.dumps({**shape, "recipe": args.recipe}))

    foretell, foretell_conn = spawn(serve_foretell, str(settings.data_dir))
    _, port, load_s = foretell_conn.recv()
    _setup_group(port)
    _, _, warm_s = foretell_conn.recv()
    print(f"foretell on :{port}: campaign loaded in {load_s:.1f} s, warm after {warm_s:.1f} s", flush=True)

    rng = np.random.default_rng(1)
    users = [f"u{k}" for k in rng.integers(0, data.n_users, 2000)]
    rec_requests = [
        api.GetRecommendationsRequest(campaign=CAMPAIGN, user_id=u, num_results=args.results) for u in users
    ]
    rank_requests = [
        api.GetPersonalizedRankingRequest(
            campaign=CAMPAIGN,
            user_id=u,
            input_list=[f"i{k}" for k in rng.choice(data.n_items, args.ranking_items, replace=False)],
        )
        for u in users[:500]
    ]
    import grpc

    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = recommendation_service_pb2_grpc.RecommendationServiceStub(channel)
        sample_recs = stub.GetRecommendations(rec_requests[0], timeout=10)
        sample_rank = stub.GetPersonalizedRanking(rank_requests[0], timeout=10)
    assert len(sample_recs.item_list) == args.results and len(sample_rank.personalized_ranking) == args.ranking_items

    noop, noop_conn = spawn(
        serve_noop, sample_recs.SerializeToString(), sample_rank.SerializeToString(), args.max_workers
    )
    _, noop_port = noop_conn.recv()

    rows: list[dict[str, Any]] = []
    for method in args.methods.split(","):
        requests = rec_requests if method == "GetRecommendations" else rank_requests
        connect = functools.partial(recommendation_call, method)
        rows += compare(method, method, [port, noop_port], [foretell.pid, noop.pid], connect, requests, args)
    stop(foretell, foretell_conn)
    stop(noop, noop_conn)

    print()
    print(f"Catalogue {data.n_items:,} items, {data.n_users:,} users, {len(data.users):,} interactions; "
          f"recipe {recipe} ({args.factors} factors); {load_summary(args)}")  # fmt: skip
    print()
    print(table(rows))
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "items": data.n_items,
                    "users": data.n_users,
                    "interactions": int(len(data.users)),
                    "recipe": recipe,
                    "factors": args.factors,
                    "train_seconds": train_s,
                    "campaign_load_seconds": load_s,
                    "warm_seconds": warm_s,
                    "concurrency": args.concurrency,
                    "channels": args.channels,
                    "segments": args.segments,
                    "segment": args.segment,
                    "machine": machine(),
                    "rows": rows,
                },
                indent=2,
            )  # fmt: skip
        )


if __name__ == "__main__":
    main()
