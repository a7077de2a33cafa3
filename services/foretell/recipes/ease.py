"""ease: Steck's EASE^R (WWW 2019), a linear item-item model with a closed-form solution.

    P = (X^T X + l2 * I)^-1,   B = I - P / diag(P)   (so diag(B) = 0),   scores = x_u B

X is the binary user-item matrix. B is a dense n_items x n_items matrix: the Gram matrix is
inverted in place through its Cholesky factor (one n^2 float32 buffer), and B is kept in float32.
Hence `max_items`: above it fitting is refused instead of exhausting memory. A user's
history row may weigh recent items more (`recent_half_life`); a tiny popularity term orders items
with equal scores (and everything for an empty history).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from scipy.linalg import lapack

from foretell.recipes.base import Interactions, Param, Progress, Recommender, no_progress
from foretell.recipes.data import history_matrix, user_item_matrix
from foretell.recipes.sims import popularity_prior


class Ease(Recommender):
    name: ClassVar[str] = "ease"
    params: ClassVar[dict[str, Param]] = {
        "l2": Param(float, 400.0, "L2 regularisation lambda added to the Gram matrix diagonal.", 1e-3, 1e9),
        "recent_half_life": Param(
            float, 5.0, "A history item's weight halves every this many later items; 0 = all equal.", 0.0, 1e6
        ),
        "max_items": Param(
            int, 20_000, "Refuse catalogues larger than this (memory grows with n_items^2).", 1, 100_000
        ),
    }

    def __init__(self, weights: np.ndarray, prior: np.ndarray, config: dict[str, Any]) -> None:
        self.weights = weights
        self.prior = prior
        self.n_items = len(prior)
        self.config = config

    @classmethod
    def fit(cls, data: Interactions, params: dict[str, Any], progress: Progress = no_progress) -> Ease:
        p = {name: params.get(name, spec.default) for name, spec in cls.params.items()}
        n = data.n_items
        if n > int(p["max_items"]):
            gib = n * n * 4 / 2**30
            raise ValueError(
                f"ease needs a dense {n} x {n} matrix (~{gib:.1f} GiB) and the catalogue has more than "
                f"max_items={p['max_items']} items: raise max_items or use the als or sims recipe"
            )
        x = user_item_matrix(data, binary=True)
        l2 = float(p["l2"])
        # float32 halves time and memory; its error (~1e-5 relative at l2 = 1 on MovieLens) does
        # not change rankings. Tiny l2 makes the Gram matrix ill-conditioned: float64 then.
        dtype, potrf, potri = (
            (np.float32, lapack.spotrf, lapack.spotri) if l2 >= 1.0 else (np.float64, lapack.dpotrf, lapack.dpotri)
        )
        gram = (x.T @ x).astype(dtype).toarray()
        gram[np.diag_indices(n)] += l2
        progress(0.2, "gram matrix", items=float(n))
        # In-place Cholesky inverse: P = G^-1 (upper triangle filled), no second n^2 buffer.
        chol, info = potrf(gram, lower=False, overwrite_a=True, clean=False)
        if info != 0:
            raise ValueError(f"ease: the Gram matrix is not positive definite (LAPACK info {info}); raise l2")
        progress(0.6, "cholesky factor")
        inv, info = potri(chol, lower=False, overwrite_c=True)
        if info != 0:
            raise ValueError(f"ease: inverting the Gram matrix failed (LAPACK info {info})")
        inv = _symmetrize_upper(inv)
        diag = np.diag(inv).copy()
        inv /= -diag[np.newaxis, :]  # B[i, j] = -P[i, j] / P[j, j]
        inv[np.diag_indices(n)] = 0.0
        weights = inv.astype(np.float32, copy=False)
        progress(1.0, "weights", items=float(n))
        return cls(weights, popularity_prior(data), p)

    def score(self, users: np.ndarray, histories: Sequence[np.ndarray]) -> np.ndarray:
        h = history_matrix(histories, self.n_items, float(self.config["recent_half_life"]))
        out = np.asarray(h @ self.weights, dtype=np.float32)
        out += self.prior
        return out

    def score_items(self, users: np.ndarray, histories: Sequence[np.ndarray], items: np.ndarray) -> np.ndarray:
        items = np.asarray(items, dtype=np.int64)
        h = history_matrix(histories, self.n_items, float(self.config["recent_half_life"]))
        out = np.asarray(h @ self.weights[:, items], dtype=np.float32)
        out += self.prior[items]
        return out

    def save(self, directory: Path) -> None:
        np.save(directory / "weights.npy", self.weights, allow_pickle=False)
        np.save(directory / "prior.npy", self.prior, allow_pickle=False)
        (directory / "config.json").write_text(json.dumps(self.config))

    @classmethod
    def load(cls, directory: Path) -> Ease:
        weights = np.load(directory / "weights.npy", allow_pickle=False)
        prior = np.load(directory / "prior.npy", allow_pickle=False)
        return cls(weights, prior, json.loads((directory / "config.json").read_text()))


def _symmetrize_upper(m: np.ndarray, block: int = 2048) -> np.ndarray:
    """Copies the upper triangle onto the lower one in place, in blocks (no n^2 temporary)."""
    n = len(m)
    for lo in range(0, n, block):
        hi = min(lo + block, n)
        # Rows lo:hi below the diagonal block come from columns lo:hi above it.
        m[hi:, lo:hi] = m[lo:hi, hi:].T
        tile = m[lo:hi, lo:hi]
        m[lo:hi, lo:hi] = np.triu(tile) + np.triu(tile, 1).T
    return m
