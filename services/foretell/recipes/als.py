"""als: implicit-feedback matrix factorisation (Hu, Koren & Volinsky, ICDM 2008).

Minimises  sum_ui c_ui (p_ui - x_u . y_i)^2 + l2 (|X|^2 + |Y|^2)  with p_ui = 1 where user u
interacted with item i (else 0) and confidence c_ui = 1 + alpha * n_ui, n_ui the interaction count
(with `recent_half_life`, the sum of recency weights: a user's latest interactions count most).
Alternating updates solve each side's least squares with a few conjugate-gradient steps
warm-started from the previous factors (Takacs et al. 2011, the approach of `implicit`).

Why our own numpy/scipy code rather than a wrapper around `implicit`: `implicit` is only a bench
extra (its wheels are not available everywhere, and its GPU build needs CUDA at install time),
and the training worker must not depend on it. CG is batched over ALL users (or items) at once:
one CG step is a gather-dot over the nonzeros plus one sparse x dense product, so nothing loops in
Python per user, and the cost is O(nnz * f + n * f^2) per step, like `implicit`'s.

Serving: a training user whose history is exactly its training history uses its trained factors;
a longer history (real-time events appended) or an unknown user gets a vector folded in from the
history by an exact solve against the item factors.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from functools import cached_property
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import scipy.sparse as sp

from foretell.recipes.base import Interactions, Param, Progress, Recommender, no_progress
from foretell.recipes.data import recency_weights, user_item_matrix
from foretell.recipes.sims import popularity_prior

_BLOCK_NNZ = 2_000_000  # nonzeros gathered at once in a CG step (bounds memory to ~nnz * factors)
_SEED = 0


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
        f, reg, iterations = int(p["factors"]), float(p["regularization"]), int(p["iterations"])
        counts = user_item_matrix(data, recency_weights(data, float(p["recent_half_life"])))
        conf = counts.copy()
        conf.data = 1.0 + float(p["alpha"]) * conf.data
        conf_t = conf.T.tocsr()
        rng = np.random.default_rng(_SEED)
        x = (rng.standard_normal((data.n_users, f)) * 0.01).astype(np.float32)
        y = (rng.standard_normal((data.n_items, f)) * 0.01).astype(np.float32)
        for it in range(iterations):
            _cg(conf, y, x, reg, int(p["cg_steps"]))
            _cg(conf_t, x, y, reg, int(p["cg_steps"]))
            progress(
                (it + 1) / iterations, f"iteration {it + 1}/{iterations}", iteration=it + 1, loss=_loss(conf, x, y, reg)
            )
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


def _blocks(m: sp.csr_matrix) -> list[tuple[int, int]]:
    """Row ranges of `m` holding at most about _BLOCK_NNZ nonzeros each."""
    cuts = np.searchsorted(m.indptr, np.arange(_BLOCK_NNZ, m.nnz, _BLOCK_NNZ))
    edges = np.unique(np.concatenate([[0], cuts, [m.shape[0]]]))
    return list(zip(edges[:-1].tolist(), edges[1:].tolist(), strict=True))


def _cg(conf: sp.csr_matrix, fixed: np.ndarray, solve: np.ndarray, reg: float, steps: int) -> None:
    """A few CG steps on every row of `solve` (in place) for (F^T C_u F + l2 I) s_u = F^T C_u 1."""
    gram = fixed.T @ fixed + reg * np.eye(fixed.shape[1], dtype=np.float32)
    for lo, hi in _blocks(conf):
        c = conf[lo:hi]
        rows = np.repeat(np.arange(hi - lo), np.diff(c.indptr))
        fy = fixed[c.indices]  # (nnz, f) factors of each nonzero's column

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


def _loss(conf: sp.csr_matrix, x: np.ndarray, y: np.ndarray, reg: float) -> float:
    """The objective per user-item cell (observed cells: c (1 - s)^2; the rest: s^2)."""
    total = float(((x @ (y.T @ y)) * x).sum())  # sum of s^2 over every cell
    for lo, hi in _blocks(conf):
        c = conf[lo:hi]
        rows = np.repeat(np.arange(hi - lo), np.diff(c.indptr)) + lo
        s = np.einsum("ij,ij->i", x[rows], y[c.indices]).astype(np.float64)
        total += float((c.data * (1.0 - s) ** 2 - s**2).sum())
    total += reg * float((x * x).sum() + (y * y).sum())
    return total / max(conf.shape[0] * conf.shape[1], 1)
