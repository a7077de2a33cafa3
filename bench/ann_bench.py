"""Serving at catalogue scale: the nearest-neighbour index (recommendation/ann.py) and lazy campaign activation.

Part 1 (always): synthetic factors shaped like a trained factor model's (items around genre centroids, norms that
vary, a small popularity bias; users mixing two genres), `--items` x `--factors`. Reports the index build time and
memory, recall@25 of GetRecommendations' search (inner product + bias) for `--queries` users and of
GetSimilarItems' (cosine + bias) for `--similar` items against the exact answers, and p50/p99 latency of one query
exact (numpy over the catalogue, as the engine scores) vs approximate (index candidates, rescored exactly), for
each efSearch in `--ef`.

Part 2 (`--activation`): a synthetic `als` artifact (`--users` x `--model-items` x `--factors`, `--interactions`
events) loaded as campaigns.load_engine loads it. "Before" is what a deployment did before ACTIVE until this change:
load, then cache CACHE_USERS users' candidates (`Engine.warm`); "after" is the load alone. GetRecommendations
p50/p99 (engine.recommend, 25 items, random training users) with a cold lazy cache, then with the eager cache.

    PYTHONPATH=services:clients/python python bench/ann_bench.py [--items 1000000] [--activation]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

K = 25


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def percentiles(seconds: list[float]) -> tuple[float, float]:
    ms = np.array(seconds) * 1e3
    return float(np.percentile(ms, 50)), float(np.percentile(ms, 99))


def synthetic_factors(n_items: int, f: int, n_users: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    genres = 200
    centroids = rng.standard_normal((genres, f)).astype(np.float32)
    genre = rng.integers(0, genres, n_items)
    scale = rng.lognormal(0, 0.4, (n_items, 1)).astype(np.float32)
    items = (centroids[genre] * 0.6 + rng.standard_normal((n_items, f)).astype(np.float32) * 0.8) * scale * 0.1
    bias = (np.log1p(rng.zipf(1.5, n_items).clip(max=10_000)) * 0.01).astype(np.float32)
    favourites = rng.integers(0, genres, (n_users, 2))
    users = centroids[favourites].sum(axis=1) + rng.standard_normal((n_users, f)).astype(np.float32)
    return items.astype(np.float32), bias, users.astype(np.float32)


def exact_top(queries: np.ndarray, items: np.ndarray, bias: np.ndarray, k: int) -> np.ndarray:
    out = np.empty((len(queries), k), dtype=np.int64)
    for lo in range(0, len(queries), 256):
        scores = queries[lo : lo + 256] @ items.T + bias
        part = np.argpartition(-scores, k, axis=1)[:, :k]
        order = np.argsort(-np.take_along_axis(scores, part, axis=1), axis=1)
        out[lo : lo + 256] = np.take_along_axis(part, order, axis=1)
    return out


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(set(a.tolist()) & set(b.tolist())) / len(b) for a, b in zip(found, truth, strict=True)]))


def ann_part(args: argparse.Namespace) -> dict[str, Any]:
    from foretell.recipes.base import Factors
    from foretell.recommendation import ann
    from foretell.recommendation.engine import top_k

    items, bias, users = synthetic_factors(args.items, args.factors, args.queries)
    factors = Factors(items, bias, lambda u, h: users[u])
    before = rss_mb()
    t0 = time.monotonic()
    index = ann.ItemIndex(factors)
    build_s = time.monotonic() - t0
    index_mb = rss_mb() - before
    print(
        f"index of {args.items:,} x {args.factors}: built in {build_s:.1f} s (both graphs), +{index_mb:.0f} MB",
        flush=True,
    )

    t0 = time.monotonic()
    truth = exact_top(users, items, bias, K)
    unit = items / index.norms[:, None]
    sim_items = np.random.default_rng(2).choice(args.items, args.similar, replace=False)
    sim_truth = exact_top(unit[sim_items], unit, bias, K + 1)
    print(f"exact answers in {time.monotonic() - t0:.1f} s", flush=True)

    rows = []
    latency_queries = users[: args.latency]
    for ef in args.ef:
        index._recommend.ef_search = index._similar.ef_search = ef
        found, _ = index.recommend(users, K)
        sim_found = np.array([index.similar(int(i), K + 1)[0] for i in sim_items])
        ann_times, exact_times = [], []
        for q in latency_queries:
            t = time.perf_counter()
            index.recommend(q[None, :], K)
            ann_times.append(time.perf_counter() - t)
        if not rows:  # the exact side does not depend on ef
            for q in latency_queries:
                t = time.perf_counter()
                top_k(items @ q + bias, K)
                exact_times.append(time.perf_counter() - t)
            exact_p = percentiles(exact_times)
        row = {
            "ef_search": ef,
            "recall_recommend": recall(found, truth),
            "recall_similar": recall(sim_found, sim_truth),
            "ann_p50_ms": percentiles(ann_times)[0],
            "ann_p99_ms": percentiles(ann_times)[1],
            "exact_p50_ms": exact_p[0],
            "exact_p99_ms": exact_p[1],
        }
        print(json.dumps(row), flush=True)
        rows.append(row)
    return {"items": args.items, "factors": args.factors, "queries": args.queries, "build_s": build_s,
            "index_mb": index_mb, "rows": rows}  # fmt: skip


def als_artifact(directory: Path, n_users: int, n_items: int, f: int, n_events: int) -> None:
    from foretell.recipes.als import Als
    from foretell.recipes.artifact import Artifact, save_artifact
    from foretell.recipes.base import Interactions

    rng = np.random.default_rng(0)
    items, bias, user_vectors = synthetic_factors(n_items, f, n_users)
    users = np.sort(rng.integers(0, n_users, n_events)).astype(np.int32)
    order = rng.permutation(n_events)
    data = Interactions(
        user_ids=np.array([f"u{k}" for k in range(n_users)], dtype=object),
        item_ids=np.array([f"i{k}" for k in range(n_items)], dtype=object),
        users=users[order],
        items=rng.integers(0, n_items, n_events).astype(np.int32),
        timestamps=np.arange(n_events, dtype=np.int64) + 1_700_000_000,
        event_types=np.zeros(n_events, dtype=np.int16),
        event_type_names=("click",),
    )
    config = {"factors": f, "regularization": 20.0, "alpha": 10.0, "recent_half_life": 10.0}
    train_counts = np.bincount(data.users, minlength=n_users).astype(np.int64)
    model = Als(user_vectors * 0.1, items, train_counts, bias, config)
    save_artifact(directory, Artifact(model, data, "als", config, snapshot_time=int(time.time())))


def serve(engine: Any, users: list[str]) -> tuple[float, float]:
    times = []
    for user in users:
        t = time.perf_counter()
        engine.recommend(user, n=K)
        times.append(time.perf_counter() - t)
    return percentiles(times)


def activation_part(args: argparse.Namespace) -> dict[str, Any]:
    from foretell.recommendation import campaigns

    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="ann-bench-"))
    directory = workdir / f"als-{args.users}x{args.model_items}x{args.factors}-{args.interactions}"
    if not (directory / "meta.json").exists():
        t0 = time.monotonic()
        als_artifact(directory, args.users, args.model_items, args.factors, args.interactions)
        print(f"artifact written in {time.monotonic() - t0:.1f} s", flush=True)
    base = rss_mb()
    t0 = time.monotonic()
    engine = _load(directory)
    load_s = time.monotonic() - t0
    load_mb = rss_mb()
    print(f"loaded in {load_s:.1f} s, RSS {load_mb:.0f} MB (+{load_mb - base:.0f})", flush=True)
    rng = np.random.default_rng(3)
    users = [f"u{k}" for k in rng.integers(0, args.users, args.requests)]
    lazy_cold = serve(engine, users)
    lazy_hot = serve(engine, users)
    lazy_mb = rss_mb()
    print(f"lazy: first request p50/p99 {lazy_cold[0]:.2f}/{lazy_cold[1]:.2f} ms, repeat "
          f"{lazy_hot[0]:.2f}/{lazy_hot[1]:.2f} ms, RSS {lazy_mb:.0f} MB", flush=True)  # fmt: skip
    engine = _load(directory)  # a fresh engine for the eager path
    t0 = time.monotonic()
    warmed = engine.warm(campaigns.CACHE_USERS)
    warm_s = time.monotonic() - t0
    eager_mb = rss_mb()
    eager = serve(engine, users)
    print(f"eager: warmed {warmed:,} users in {warm_s:.1f} s, p50/p99 {eager[0]:.2f}/{eager[1]:.2f} ms, "
          f"RSS {eager_mb:.0f} MB", flush=True)  # fmt: skip
    return {"users": args.users, "items": args.model_items, "factors": args.factors, "interactions": args.interactions,
            "load_s": load_s, "warm_s": warm_s, "warmed_users": warmed, "rss_after_load_mb": load_mb,
            "rss_lazy_mb": lazy_mb, "rss_eager_mb": eager_mb, "lazy_first_ms": lazy_cold, "lazy_repeat_ms": lazy_hot,
            "eager_ms": eager}  # fmt: skip


def _load(directory: Path) -> Any:
    from foretell.recipes.artifact import load_artifact
    from foretell.recommendation import campaigns
    from foretell.recommendation.engine import Engine

    return Engine(load_artifact(directory), candidates=campaigns.CANDIDATES, cache_size=campaigns.CACHE_USERS)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, default=1_000_000)
    parser.add_argument("--factors", type=int, default=64)
    parser.add_argument("--queries", type=int, default=10_000, help="users whose recall@25 is measured")
    parser.add_argument("--similar", type=int, default=1_000, help="items whose GetSimilarItems recall is measured")
    parser.add_argument("--latency", type=int, default=500, help="single queries timed, exact and approximate")
    parser.add_argument("--ef", type=int, nargs="+", default=[64, 128, 256], help="efSearch values")
    parser.add_argument("--skip-ann", action="store_true")
    parser.add_argument("--activation", action="store_true", help="also part 2 (campaign activation)")
    parser.add_argument("--users", type=int, default=500_000)
    parser.add_argument("--model-items", type=int, default=100_000)
    parser.add_argument("--interactions", type=int, default=5_000_000)
    parser.add_argument("--requests", type=int, default=2_000)
    parser.add_argument("--workdir", type=Path, help="keep the part 2 artifact here and reuse it")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    out: dict[str, Any] = {}
    if not args.skip_ann:
        out["ann"] = ann_part(args)
    if args.activation:
        out["activation"] = activation_part(args)
    if args.json:
        args.json.write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
