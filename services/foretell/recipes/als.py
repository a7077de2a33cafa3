"""als: implicit-feedback matrix factorisation (Hu, Koren & Volinsky, ICDM 2008).

Minimises  sum_ui c_ui (p_ui - x_u . y_i)^2 + l2 (|X|^2 + |Y|^2)  with p_ui = 1 where user u
interacted with item i (else 0) and confidence c_ui = 1 + alpha * n_ui, n_ui the interaction count
(with `recent_half_life`, the sum of recency weights: a user's latest interactions count most).

The solver is `implicit` (conjugate-gradient ALS, Takacs et al. 2011): its CUDA build when a GPU
is usable, else its CPU build. The modelling choices stay ours, and they are why this recipe beats
`implicit` used as is (MovieLens-100K test NDCG@10, docs/benchmarks.md): recency-weighted
confidences (`recent_half_life` 0 -> 10: 0.138 -> 0.180) and a larger, unscaled l2 (1 -> 20 at
half-life 0: 0.124 -> 0.138). implicit takes the matrix it is given as the confidences
themselves, so c_ui = 1 + alpha * n_ui is built here and passed with implicit's alpha at 1. The
popularity prior only breaks ties (cold items); serving folds new events in with the same weights.
Our former numpy CG solver reached the same NDCG with 3.4-3.7x the CPU time (bench/als_speed.py).

`refit` continues from a fitted model's factors for a few iterations: train.py's final fit on all
the data starts from the hold-out fit instead of from random factors.

Serving: a training user whose history is exactly its training history uses its trained factors;
a longer history (real-time events appended) or an unknown user gets a vector folded in from the
history by an exact solve against the item factors. Serving never imports `implicit`.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Sequence
from functools import cached_property
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import scipy.sparse as sp
from threadpoolctl import threadpool_info, threadpool_limits

from foretell.recipes.base import Interactions, Param, Progress, Recommender, no_progress
from foretell.recipes.data import recency_weights, user_item_matrix
from foretell.recipes.sims import popularity_prior

log = logging.getLogger(__name__)

_SEED = 0
# A warm-started refit runs this share of `iterations` (at least 1): starting from factors fitted on
# all but the hold-out (~2% of the interactions), ALS is back at its fixed point within a few passes.
# 1M synthetic interactions, 10 iterations, outer-test NDCG@10 / Recall@20: 1 pass 0.1675 / 0.3275,
# 2 passes 0.1676 / 0.3284, 3 passes 0.1677 / 0.3285, a full fit from scratch 0.1675 / 0.3281: one pass
# at 10 iterations (two at the default 15) already gives the NDCG of a fit from scratch.
REFIT_SHARE = 0.1


def confidences(data: Interactions, alpha: float, half_life: float) -> sp.csr_matrix:
    """(n_users, n_items) float32 CSR of c_ui = 1 + alpha * (recency-weighted count), the matrix implicit fits."""
    conf = user_item_matrix(data, recency_weights(data, half_life))
    conf.data = (1.0 + alpha * conf.data).astype(np.float32)
    return conf


def use_gpu() -> bool:
    """True when implicit has a CUDA build and sees a device; any failure to tell means no."""
    try:
        import implicit.gpu

        return bool(implicit.gpu.HAS_CUDA) and int(implicit.gpu.get_device_count()) > 0
    except Exception as exc:  # an import or driver error: the CPU solver still works
        log.info("implicit's GPU solver is not usable (%s); using the CPU solver", exc)
        return False


def cpu_threads() -> int:
    """implicit's OpenMP threads: the CPUs this process may run on, fewer where an OpenMP limit is set
    (OMP_NUM_THREADS, threadpoolctl: tests/conftest.py gives each test process its share); never
    implicit's 0, which means every core of the machine."""
    limits = [int(p["num_threads"]) for p in threadpool_info() if p["user_api"] == "openmp"]
    return max(1, min([len(os.sched_getaffinity(0)), *limits]))


def solve(
    conf: sp.csr_matrix,
    users: np.ndarray,
    items: np.ndarray,
    params: dict[str, Any],
    iterations: int,
    progress: Progress = no_progress,
    gpu: bool | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """`iterations` ALS passes on `conf` starting from `users`/`items`; returns the new (user, item) factors.

    On the GPU when `gpu` (default: `use_gpu()`); a GPU failure falls back to the CPU.
    """
    if gpu is None:
        gpu = use_gpu()
    if gpu:
        try:
            return _solve(conf, users, items, params, iterations, progress, gpu=True)
        except Exception as exc:  # out of GPU memory, a driver fault: the CPU gives the same model
            log.warning("implicit's GPU solver failed (%s); fitting on the CPU", exc)
    return _solve(conf, users, items, params, iterations, progress, gpu=False)


def _solve(
    conf: sp.csr_matrix,
    users: np.ndarray,
    items: np.ndarray,
    params: dict[str, Any],
    iterations: int,
    progress: Progress,
    gpu: bool,
) -> tuple[np.ndarray, np.ndarray]:
    # One BLAS thread while implicit's own threads call BLAS per row (implicit warns otherwise: an
    # oversubscribed OpenBLAS is many times slower); the limit is undone on exit.
    with threadpool_limits(limits=1, user_api="blas"):
        options = dict(
            factors=users.shape[1],
            regularization=float(params["regularization"]),
            alpha=1.0,  # conf already holds 1 + alpha * n
            iterations=iterations,
            random_state=_SEED,
        )
        if gpu:
            import implicit.gpu
            from implicit.gpu.als import AlternatingLeastSquares as GpuAls

            model: Any = GpuAls(**options)
            model.user_factors = implicit.gpu.Matrix(np.ascontiguousarray(users, dtype=np.float32))
            model.item_factors = implicit.gpu.Matrix(np.ascontiguousarray(items, dtype=np.float32))
        else:
            from implicit.cpu.als import AlternatingLeastSquares as CpuAls

            model = CpuAls(**options, num_threads=cpu_threads())
            model.user_factors = np.array(users, dtype=np.float32, order="C")
            model.item_factors = np.array(items, dtype=np.float32, order="C")
        model.cg_steps = int(params["cg_steps"])

        def callback(iteration: int, seconds: float, loss: float | None) -> None:
            progress((iteration + 1) / iterations, f"iteration {iteration + 1}/{iterations}", iteration=iteration + 1)

        model.fit(conf, show_progress=False, callback=callback)
        if gpu:
            model = model.to_cpu()
        return np.asarray(model.user_factors, dtype=np.float32), np.asarray(model.item_factors, dtype=np.float32)


class Als(Recommender):
    name: ClassVar[str] = "als"
    params: ClassVar[dict[str, Param]] = {
        "factors": Param(int, 128, "Latent dimensions of user and item vectors.", 1, 4096),
        "regularization": Param(float, 20.0, "L2 penalty l2 on user and item vectors.", 0.0, 1e6),
        "alpha": Param(float, 10.0, "Confidence growth per interaction: c = 1 + alpha * count.", 0.0, 1e6),
        "iterations": Param(int, 15, "Alternating passes (users, then items).", 1, 1000),
        "cg_steps": Param(int, 3, "Conjugate-gradient steps per side and pass.", 1, 100),
        "recent_half_life": Param(
            float,
            10.0,
            "An interaction's confidence weight halves every this many later interactions of the user; 0 = all equal.",
            0.0,
            1e6,
        ),
    }

    def __init__(
        self, users: np.ndarray, items: np.ndarray, train_counts: np.ndarray, prior: np.ndarray, config: dict[str, Any]
    ) -> None:
        self.user_factors = users.astype(np.float32)
        self.item_factors = items.astype(np.float32)
        self.train_counts = train_counts  # (n_users,) training interactions per user
        self.prior = prior
        self.n_items = len(items)
        self.config = config

    @classmethod
    def fit(cls, data: Interactions, params: dict[str, Any], progress: Progress = no_progress) -> Als:
        p = {name: params.get(name, spec.default) for name, spec in cls.params.items()}
        rng = np.random.default_rng(_SEED)
        f = int(p["factors"])
        x = (rng.standard_normal((data.n_users, f)) * 0.01).astype(np.float32)
        y = (rng.standard_normal((data.n_items, f)) * 0.01).astype(np.float32)
        return cls._fit_from(data, p, x, y, int(p["iterations"]), progress)

    def refit(self, data: Interactions, params: dict[str, Any], progress: Progress = no_progress) -> Als:
        """A fit on `data` (same index spaces as this model's) starting from this model's factors.

        Runs REFIT_SHARE of the iterations; a model of another shape is fitted from scratch.
        """
        p = {name: params.get(name, spec.default) for name, spec in self.params.items()}
        shape = (data.n_users, int(p["factors"]))
        if self.user_factors.shape != shape or self.item_factors.shape[0] != data.n_items:
            return self.fit(data, params, progress)
        iterations = max(1, math.ceil(REFIT_SHARE * int(p["iterations"])))
        return self._fit_from(data, p, self.user_factors, self.item_factors, iterations, progress)

    @classmethod
    def _fit_from(
        cls, data: Interactions, p: dict[str, Any], x: np.ndarray, y: np.ndarray, iterations: int, progress: Progress
    ) -> Als:
        conf = confidences(data, float(p["alpha"]), float(p["recent_half_life"]))
        x, y = solve(conf, x, y, p, iterations, progress)
        train_counts = np.bincount(data.users, minlength=data.n_users).astype(np.int64)
        return cls(x, y, train_counts, popularity_prior(data), p)

    def score(self, users: np.ndarray, histories: Sequence[np.ndarray]) -> np.ndarray:
        out = self._user_vectors(users, histories) @ self.item_factors.T
        out += self.prior
        return out

    def score_items(self, users: np.ndarray, histories: Sequence[np.ndarray], items: np.ndarray) -> np.ndarray:
        items = np.asarray(items, dtype=np.int64)
        out = self._user_vectors(users, histories) @ self.item_factors[items].T
        out += self.prior[items]
        return out

    def _user_vectors(self, users: np.ndarray, histories: Sequence[np.ndarray]) -> np.ndarray:
        """Trained factors where the history is the training one; folded-in vectors otherwise."""
        users = np.asarray(users, dtype=np.int64)
        vectors = np.zeros((len(histories), self.item_factors.shape[1]), dtype=np.float32)
        known = (users >= 0) & (users < len(self.user_factors))
        lengths = np.array([len(h) for h in histories], dtype=np.int64)
        same = known.copy()
        same[known] = lengths[known] == self.train_counts[users[known]]
        vectors[same] = self.user_factors[users[same]]
        for r in np.flatnonzero(~same).tolist():
            vectors[r] = self.fold_in(histories[r])
        return vectors

    @cached_property
    def _gram(self) -> np.ndarray:
        """Y^T Y in float64, shared by every fold-in (an n_items x f^2 product: too dear per request)."""
        y = self.item_factors.astype(np.float64)
        gram: np.ndarray = y.T @ y
        return gram

    def fold_in(self, history: np.ndarray) -> np.ndarray:
        """The user vector that training would give `history` against the fixed item factors."""
        h = np.asarray(history, dtype=np.int64)
        h = h[(h >= 0) & (h < self.n_items)]
        f = self.item_factors.shape[1]
        if len(h) == 0:
            return np.zeros(f, dtype=np.float32)
        half_life = float(self.config["recent_half_life"])
        age = np.arange(len(h) - 1, -1, -1, dtype=np.float64)
        w = np.exp2(-age / half_life) if half_life > 0 else np.ones(len(h))
        items, at = np.unique(h, return_inverse=True)
        c = 1.0 + float(self.config["alpha"]) * np.bincount(at, weights=w, minlength=len(items))
        yh = self.item_factors[items].astype(np.float64)
        a = self._gram + (yh * (c - 1.0)[:, None]).T @ yh + float(self.config["regularization"]) * np.eye(f)
        return np.linalg.solve(a, yh.T @ c).astype(np.float32)

    def similar(self, items: np.ndarray) -> np.ndarray:
        """Cosine similarity of item vectors."""
        y = self.item_factors
        norms = np.linalg.norm(y, axis=1)
        norms[norms == 0] = 1.0
        unit = y / norms[:, None]
        out = unit[np.asarray(items, dtype=np.int64)] @ unit.T
        out += self.prior
        return np.asarray(out, dtype=np.float32)

    def save(self, directory: Path) -> None:
        np.savez(
            directory / "factors.npz",
            allow_pickle=False,
            users=self.user_factors,
            items=self.item_factors,
            train_counts=self.train_counts,
            prior=self.prior,
        )
        (directory / "config.json").write_text(json.dumps(self.config))

    @classmethod
    def load(cls, directory: Path) -> Als:
        with np.load(directory / "factors.npz", allow_pickle=False) as z:
            parts = (z["users"], z["items"], z["train_counts"], z["prior"])
        return cls(*parts, json.loads((directory / "config.json").read_text()))
