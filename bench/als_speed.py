"""ALS training speed: `implicit`'s bare fit, our former numpy solver, and the `als` recipe end to end.

Synthetic data with structure a model can find: items fall into clusters, each user has a home
cluster; an interaction is drawn from the home cluster's items (Zipf-skewed inside it) with
probability --affinity, otherwise from the whole catalogue (Zipf). User activity is Zipf-skewed too.
Times are uniform over a year, so the temporal split cuts each user's latest interactions.

One outer split (`temporal_holdout`, latest 10% of up to --eval-users users) gives D (train) and T (test).
Timed on D, all with the same factors and iterations:
  (a) implicit bare     `implicit.cpu.als.AlternatingLeastSquares.fit` on D's count matrix, nothing else;
  (b) old solver        the numpy conjugate-gradient ALS Foretell had before `implicit` (kept here only
                        as the baseline), one fit on D with the recipe's confidences; train.py paid for
                        two such fits (hold-out fit + full refit) plus the evaluation;
  (c) foretell als      `recipes.train.train_solution(D, "als", ...)`: split, hold-out fit, evaluation,
                        warm-started final fit: the training stage of CreateSolutionVersion;
  (c1) new solver       `Als.fit` on D alone (implicit underneath), the like of (b).
(b), (c) and (c1) are scored on T (NDCG@10, Recall@20, full ranking); the table gives ratios.
Each row has wall seconds and the process's CPU seconds (all threads): on a machine shared with other
work the wall time of one run swings with the load, its CPU time much less. (a) runs first and last;
the ratio column divides by the faster of the two.

    PYTHONPATH=services nice -n 19 python bench/als_speed.py [--interactions 1000000 --users 100000
        --items 20000 --factors 64 --iterations 10 --json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT / "services") not in sys.path:
    sys.path.insert(0, str(ROOT / "services"))

from threadpoolctl import threadpool_limits  # noqa: E402

from foretell.recipes.als import Als, confidences, cpu_threads  # noqa: E402
from foretell.recipes.base import Interactions  # noqa: E402
from foretell.recipes.data import user_item_matrix  # noqa: E402
from foretell.recipes.evaluation import evaluate, temporal_holdout  # noqa: E402
from foretell.recipes.registry import parse_params  # noqa: E402
from foretell.recipes.sims import popularity_prior  # noqa: E402
from foretell.recipes.train import train_solution  # noqa: E402

METRICS = ("ndcg_at_10", "recall_at_20")


# ---- data ---------------------------------------------------------------------------------


def _zipf_sample(rng: np.random.Generator, n: int, size: int, exponent: float) -> np.ndarray:
    """`size` ranks in [0, n) with P(rank r) proportional to 1 / (r + 1) ** exponent."""
    cdf = np.cumsum(1.0 / np.arange(1, n + 1) ** exponent)
    return np.minimum(np.searchsorted(cdf, rng.random(size) * cdf[-1]), n - 1)


def synthetic(
    n: int, n_users: int, n_items: int, clusters: int = 100, affinity: float = 0.7, seed: int = 0
) -> Interactions:
    rng = np.random.default_rng(seed)
    users = rng.permutation(n_users)[_zipf_sample(rng, n_users, n, 0.6)]
    per = n_items // clusters
    home = users % clusters
    own = rng.random(n) < affinity
    items = np.empty(n, dtype=np.int64)
    items[own] = home[own] * per + _zipf_sample(rng, per, int(own.sum()), 1.0)
    items[~own] = rng.permutation(n_items)[_zipf_sample(rng, n_items, int((~own).sum()), 1.0)]
    times = np.sort(rng.integers(0, 365 * 86_400, n))
    order = rng.permutation(n)  # users and items independent of time
    u, i = users[order].astype(np.int32), items[order].astype(np.int32)
    # Index spaces as `from_arrays` would make them, without a million str ids.
    return Interactions(
        user_ids=np.array([f"u{k}" for k in range(n_users)], dtype=object),
        item_ids=np.array([f"i{k}" for k in range(n_items)], dtype=object),
        users=u,
        items=i,
        timestamps=times.astype(np.int64),
        event_types=np.zeros(n, dtype=np.int16),
    )


# ---- (b): the former hand-written solver, verbatim but for names ------------------------------

_BLOCK_NNZ = 2_000_000


def _blocks(m: sp.csr_matrix) -> list[tuple[int, int]]:
    cuts = np.searchsorted(m.indptr, np.arange(_BLOCK_NNZ, m.nnz, _BLOCK_NNZ))
    edges = np.unique(np.concatenate([[0], cuts, [m.shape[0]]]))
    return list(zip(edges[:-1].tolist(), edges[1:].tolist(), strict=True))


def _cg(conf: sp.csr_matrix, fixed: np.ndarray, solve: np.ndarray, reg: float, steps: int) -> None:
    """A few CG steps on every row of `solve` (in place) for (F^T C_u F + l2 I) s_u = F^T C_u 1."""
    gram = fixed.T @ fixed + reg * np.eye(fixed.shape[1], dtype=np.float32)
    for lo, hi in _blocks(conf):
        c = conf[lo:hi]
        rows = np.repeat(np.arange(hi - lo), np.diff(c.indptr))
        fy = fixed[c.indices]

        def apply(v: np.ndarray, c: sp.csr_matrix = c, rows: np.ndarray = rows, fy: np.ndarray = fy) -> np.ndarray:
            dots = np.einsum("ij,ij->i", fy, v[rows])
            extra = sp.csr_matrix(((c.data - 1.0) * dots, c.indices, c.indptr), shape=c.shape)
            return np.asarray(v @ gram + extra @ fixed, dtype=np.float32)

        s = solve[lo:hi]
        r = np.asarray(c @ fixed, dtype=np.float32) - apply(s)
        d = r.copy()
        rs_old = np.einsum("ij,ij->i", r, r)
        for _ in range(steps):
            ad = apply(d)
            denom = np.einsum("ij,ij->i", d, ad)
            step = np.divide(rs_old, denom, out=np.zeros_like(rs_old), where=denom > 0)
            s += step[:, None] * d
            r -= step[:, None] * ad
            rs_new = np.einsum("ij,ij->i", r, r)
            beta = np.divide(rs_new, rs_old, out=np.zeros_like(rs_new), where=rs_old > 0)
            d = r + beta[:, None] * d
            rs_old = rs_new
        solve[lo:hi] = s


def old_fit(data: Interactions, p: dict[str, Any]) -> Als:
    """The former `Als.fit` (its per-iteration loss, only a progress counter, left out)."""
    f, reg = int(p["factors"]), float(p["regularization"])
    conf = confidences(data, float(p["alpha"]), float(p["recent_half_life"]))
    conf_t = conf.T.tocsr()
    rng = np.random.default_rng(0)
    x = (rng.standard_normal((data.n_users, f)) * 0.01).astype(np.float32)
    y = (rng.standard_normal((data.n_items, f)) * 0.01).astype(np.float32)
    for _ in range(int(p["iterations"])):
        _cg(conf, y, x, reg, int(p["cg_steps"]))
        _cg(conf_t, x, y, reg, int(p["cg_steps"]))
    return Als(x, y, np.bincount(data.users, minlength=data.n_users), popularity_prior(data), p)


# ---- runs ---------------------------------------------------------------------------------


def timed(fn: Any) -> tuple[Any, float, float]:
    """(fn(), wall seconds, CPU seconds of this process)."""
    began, cpu = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - began, time.process_time() - cpu


def implicit_bare(data: Interactions, p: dict[str, Any]) -> dict[str, float]:
    from implicit.cpu.als import AlternatingLeastSquares

    counts = user_item_matrix(data)
    with threadpool_limits(limits=1, user_api="blas"):  # implicit's own advice; it warns otherwise
        model = AlternatingLeastSquares(
            factors=int(p["factors"]),
            regularization=float(p["regularization"]),
            iterations=int(p["iterations"]),
            num_threads=cpu_threads(),
            random_state=0,
        )
        _, seconds, cpu = timed(lambda: model.fit(counts, show_progress=False))
    return {"seconds": seconds, "cpu_seconds": cpu}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--interactions", type=int, default=1_000_000)
    parser.add_argument("--users", type=int, default=100_000)
    parser.add_argument("--items", type=int, default=20_000)
    parser.add_argument("--factors", type=int, default=64)
    parser.add_argument("--iterations", type=int, default=10)
    parser.add_argument("--eval-users", type=int, default=10_000, help="users in the outer test split")
    parser.add_argument("--skip-old", action="store_true", help="leave out (b), the slow former solver")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    began = time.perf_counter()
    data = synthetic(args.interactions, args.users, args.items)
    train, test = temporal_holdout(data, max_users=args.eval_users, seed=7)
    print(
        f"{args.interactions} interactions, {args.users} users, {args.items} items "
        f"(made in {time.perf_counter() - began:.1f} s); D: {len(train.users)} interactions, T: {len(test)} users; "
        f"{cpu_threads()} CPU threads",
        flush=True,
    )
    raw = {"factors": str(args.factors), "iterations": str(args.iterations)}
    p = parse_params("als", raw)
    rows: dict[str, dict[str, float]] = {}

    rows["(a) implicit bare fit"] = implicit_bare(train, p)
    print(f"  (a) {rows['(a) implicit bare fit']}", flush=True)
    if not args.skip_old:
        model, seconds, cpu = timed(lambda: old_fit(train, p))
        rows["(b) old solver, one fit"] = {"seconds": seconds, "cpu_seconds": cpu, **_scores(model, train, test)}
        print(f"  (b) {rows['(b) old solver, one fit']}", flush=True)
    model, seconds, cpu = timed(lambda: Als.fit(train, p))
    rows["(c1) new solver, one fit"] = {"seconds": seconds, "cpu_seconds": cpu, **_scores(model, train, test)}
    print(f"  (c1) {rows['(c1) new solver, one fit']}", flush=True)
    result, seconds, cpu = timed(lambda: train_solution(train, "als", raw, None, lambda *a, **k: None))
    rows["(c) foretell als, train_solution"] = {
        "seconds": seconds,
        "cpu_seconds": cpu,
        **_scores(result.model, train, test),
    }
    print(f"  (c) {rows['(c) foretell als, train_solution']}", flush=True)
    again = "(a') implicit bare fit, again"
    rows[again] = implicit_bare(train, p)
    print(f"  (a') {rows[again]}", flush=True)

    bare = min(rows["(a) implicit bare fit"]["seconds"], rows[again]["seconds"])
    bare_cpu = min(rows["(a) implicit bare fit"]["cpu_seconds"], rows[again]["cpu_seconds"])
    base = rows.get("(b) old solver, one fit")
    lines = [
        "| run | wall s | x bare | CPU s | x bare (CPU) | NDCG@10 | Recall@20 | NDCG@10 / (b) | Recall@20 / (b) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, r in rows.items():
        cells = [f"{r['seconds']:.1f}", f"{r['seconds'] / bare:.2f}", f"{r['cpu_seconds']:.1f}"]
        cells.append(f"{r['cpu_seconds'] / bare_cpu:.2f}")
        cells += [f"{r[m]:.4f}" if m in r else "" for m in METRICS]
        cells += [f"{r[m] / base[m]:.3f}" if base and m in r else "" for m in METRICS]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    print("\n" + "\n".join(lines))
    if args.json:
        machine = {"python": platform.python_version(), "cpus": os.cpu_count(), "platform": platform.platform()}
        settings = {**vars(args), "json": str(args.json)}
        args.json.write_text(json.dumps({"args": settings, "machine": machine, "rows": rows}, indent=2))


def _scores(model: Any, train: Interactions, test: dict[int, np.ndarray]) -> dict[str, float]:
    metrics = evaluate(model, train, test)
    return {m: float(metrics[m]) for m in METRICS}


if __name__ == "__main__":
    main()
