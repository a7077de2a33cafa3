"""sims: item-to-item similarity from co-occurrence in user histories (like Personalize SIMS).

    S[i, j] = C[i, j] / (c_i ** alpha * c_j ** (1 - alpha) + shrink),   C = X^T X, c_i = C[i, i]

with X the binary user-item matrix: alpha = 0.5 is cosine; larger alpha favours popular targets j,
`shrink` damps similarities resting on few co-occurrences. Each item keeps its `neighbors` most
similar items (a sparse matrix). A user's score is the sum of the similarity rows of their history
items, recent items weighing more with `recent_half_life`; a tiny popularity term orders the items
no history item points to (and everything for an empty history).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import scipy.sparse as sp

from foretell.recipes.base import Interactions, Param, Progress, Recommender, no_progress
from foretell.recipes.data import histories, history_matrix

# Popularity only breaks ties: far below any similarity that rests on a real co-occurrence.
PRIOR_SCALE = 1e-6
_BLOCK_NNZ = 20_000_000  # co-occurrence entries computed at once (bounds memory)


def top_n_per_row(m: sp.csr_matrix, n: int) -> sp.csr_matrix:
    """The `n` largest entries of each row of `m` (ties by column index), zeros dropped."""
    m = m.tocsr()
    m.eliminate_zeros()
    rows = np.repeat(np.arange(m.shape[0]), np.diff(m.indptr))
    order = np.lexsort((m.indices, -m.data, rows))
    rank = np.arange(len(order)) - m.indptr[rows[order]]
    keep = np.sort(order[rank < n])
    return sp.csr_matrix((m.data[keep], (rows[keep], m.indices[keep])), shape=m.shape, dtype=np.float32)


def popularity_prior(data: Interactions) -> np.ndarray:
    """Item counts scaled to [0, PRIOR_SCALE]."""
    counts = np.bincount(data.items, minlength=data.n_items).astype(np.float64)
    top = counts.max() if len(counts) else 0.0
    return (PRIOR_SCALE * counts / top if top > 0 else counts).astype(np.float32)


class Sims(Recommender):
    name: ClassVar[str] = "sims"
    params: ClassVar[dict[str, Param]] = {
        "neighbors": Param(int, 200, "Most similar items kept per item.", 1, 10_000),
        "shrink": Param(float, 10.0, "Added to the similarity denominator: damps rare co-occurrences.", 0.0, 1e6),
        "alpha": Param(float, 0.5, "Asymmetry of the cosine: 0.5 = cosine, higher favours popular items.", 0.0, 1.0),
        "recent_half_life": Param(
            float, 5.0, "A history item's weight halves every this many later items; 0 = all equal.", 0.0, 1e6
        ),
        "max_user_items": Param(int, 1000, "Only a user's latest this many items count as co-occurring.", 2, 1_000_000),
    }

    def __init__(self, sim: sp.csr_matrix, prior: np.ndarray, config: dict[str, Any]) -> None:
        self.sim = sim
        self.prior = prior
        self.n_items = sim.shape[0]
        self.config = config

    @classmethod
    def fit(cls, data: Interactions, params: dict[str, Any], progress: Progress = no_progress) -> Sims:
        p = {name: params.get(name, spec.default) for name, spec in cls.params.items()}
        cap = int(p["max_user_items"])
        x = history_matrix([h[-cap:] for h in histories(data)], data.n_items)
        xt = x.T.tocsr()
        counts = np.asarray(x.sum(axis=0)).ravel()
        left = counts ** float(p["alpha"])
        right = counts ** (1.0 - float(p["alpha"]))
        # Rows in blocks so the co-occurrence of a block stays below _BLOCK_NNZ entries.
        per_item = np.asarray(xt @ x.sum(axis=1)).ravel()  # upper bound on each row's nonzeros
        blocks, start, acc = [], 0, 0.0
        for i, size in enumerate(np.minimum(per_item, data.n_items)):
            acc += size
            if acc > _BLOCK_NNZ:
                blocks.append((start, i + 1))
                start, acc = i + 1, 0.0
        if start < data.n_items:
            blocks.append((start, data.n_items))
        parts = []
        for b, (lo, hi) in enumerate(blocks):
            co = (xt[lo:hi] @ x).tocoo()
            keep = co.row + lo != co.col
            r, c, v = co.row[keep], co.col[keep], co.data[keep].astype(np.float64)
            v = v / (left[r + lo] * right[c] + float(p["shrink"]))
            block = sp.csr_matrix((v.astype(np.float32), (r, c)), shape=(hi - lo, data.n_items))
            parts.append(top_n_per_row(block, int(p["neighbors"])))
            progress((b + 1) / len(blocks), f"similarities {hi}/{data.n_items}", items=float(hi))
        sim = sp.vstack(parts, format="csr") if parts else sp.csr_matrix((0, data.n_items), dtype=np.float32)
        return cls(sim.astype(np.float32), popularity_prior(data), p)

    def score(self, users: np.ndarray, histories: Sequence[np.ndarray]) -> np.ndarray:
        h = history_matrix(histories, self.n_items, float(self.config["recent_half_life"]))
        out = np.asarray((h @ self.sim).toarray(), dtype=np.float32)
        out += self.prior
        return out

    def score_items(self, users: np.ndarray, histories: Sequence[np.ndarray], items: np.ndarray) -> np.ndarray:
        items = np.asarray(items, dtype=np.int64)
        h = history_matrix(histories, self.n_items, float(self.config["recent_half_life"]))
        out = np.asarray((h @ self.sim)[:, items].toarray(), dtype=np.float32)
        out += self.prior[items]
        return out

    def similar(self, items: np.ndarray) -> np.ndarray:
        out = np.asarray(self.sim[np.asarray(items, dtype=np.int64)].toarray(), dtype=np.float32)
        out += self.prior
        return out

    def save(self, directory: Path) -> None:
        np.savez(
            directory / "sims.npz",
            allow_pickle=False,
            indptr=self.sim.indptr,
            indices=self.sim.indices,
            data=self.sim.data,
            prior=self.prior,
        )
        (directory / "config.json").write_text(json.dumps(self.config))

    @classmethod
    def load(cls, directory: Path) -> Sims:
        with np.load(directory / "sims.npz", allow_pickle=False) as z:
            n = len(z["prior"])
            sim = sp.csr_matrix((z["data"], z["indices"], z["indptr"]), shape=(n, n))
            prior = z["prior"]
        return cls(sim, prior, json.loads((directory / "config.json").read_text()))
