"""Approximate top-k for big catalogues: HNSW graphs (faiss) over a factor model's item vectors.

Below MIN_ITEMS the engine scores the whole catalogue per request: exact, and about 1 ms per 100k items x 64
factors. From MIN_ITEMS up it asks the index for candidates and scores only those, exactly: answers keep exact
scores and only recall is approximate (recall@25 and latency measured by bench/ann_bench.py, docs/benchmarks.md).

The graphs search by inner product directly (faiss METRIC_INNER_PRODUCT); the model's bias (a popularity prior)
is one more coordinate, 1 in every query. Measured on factor-like data (30k items x 64): inner-product HNSW found
97-99% of the exact top 25 at efSearch 64-128, the MIPS-to-L2 transform (Bachrach et al. 2014) 24-50%, and IVF
(inner product, 4 sqrt(n) lists) under 40% even with 128 lists probed.

Built when a deployment is activated, in the background (the engine scores exactly until then), not in the
training job: no artifact format or training change, and the index always matches the serving faiss version.
The price is the build on every replica and load: 568 s for both graphs of 1M items x 64 on 2 cores (+1 GB).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from foretell.recipes.base import Factors, Recommender

# Catalogues from this size up are searched approximately; smaller ones are scored exactly.
MIN_ITEMS = 1_000_000
LINKS = 32  # HNSW neighbours per node (M)
EF_CONSTRUCTION = 80
# Search breadth, bench/ann_bench.py (docs/benchmarks.md): at 1M items x 64, 128 found 0.968 of the exact top 25
# for users but only 0.943 for similar items; 256 finds 0.985 / 0.957 at 1.25 ms p50 (exact scoring: 17 ms).
EF_SEARCH = 256


def factors_of(model: Recommender) -> Factors | None:
    found = model.factors()
    if found is None:
        from foretell.recipes.als import Als

        if isinstance(model, Als):
            # Until Als implements Recommender.factors itself (als.py is being changed on another branch).
            found = Factors(model.item_factors, model.prior, model._user_vectors)
    return found


class VectorIndex:
    """Maximum inner product search over the rows of `vectors`."""

    def __init__(self, vectors: np.ndarray, ef_search: int = EF_SEARCH) -> None:
        import faiss  # only campaigns that need it pay for the import

        data = np.ascontiguousarray(vectors, dtype=np.float32)
        self.ef_search = ef_search
        self._faiss: Any = faiss  # no type stubs
        self._index = faiss.IndexHNSWFlat(data.shape[1], LINKS, faiss.METRIC_INNER_PRODUCT)
        self._index.hnsw.efConstruction = EF_CONSTRUCTION
        self._index.add(data)

    def search(self, queries: np.ndarray, k: int) -> np.ndarray:
        """(len(queries), k) row indices, best first; -1 pads rows that found fewer."""
        q = np.ascontiguousarray(queries, dtype=np.float32)
        # Per-call parameters: requests search concurrently, so the shared index is never changed.
        params = self._faiss.SearchParametersHNSW()
        params.efSearch = max(self.ef_search, k)
        _, ids = self._index.search(q, k, params=params)
        return np.asarray(ids)


class ItemIndex:
    """A factor model's two searches: recommendations (inner product + bias), similar items (cosine + bias)."""

    def __init__(self, factors: Factors, ef_search: int = EF_SEARCH) -> None:
        self.factors = factors
        items = np.asarray(factors.items, dtype=np.float32)
        self.bias = np.asarray(factors.bias, dtype=np.float32)
        norms = np.linalg.norm(items, axis=1)
        norms[norms == 0] = 1.0
        self.norms = norms.astype(np.float32)
        self._recommend = VectorIndex(np.hstack([items, self.bias[:, None]]), ef_search)
        self._similar = VectorIndex(np.hstack([items / self.norms[:, None], self.bias[:, None]]), ef_search)

    def recommend(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Candidates for each query vector and their exact scores (queries @ items.T + bias), best first."""
        ids = self._recommend.search(_with_one(queries), k)
        return _rescore(ids, queries, self.factors.items, self.bias, None)

    def similar(self, item: int, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Candidates for `item` (itself included) and their exact cosine + bias, best first."""
        unit = np.asarray(self.factors.items[item], dtype=np.float32)[None, :] / self.norms[item]
        ids = self._similar.search(_with_one(unit), k)
        items, scores = _rescore(ids, unit, self.factors.items, self.bias, self.norms)
        return items[0], scores[0]


def _with_one(queries: np.ndarray) -> np.ndarray:
    return np.hstack([queries, np.ones((len(queries), 1), dtype=np.float32)]).astype(np.float32)


def _rescore(
    ids: np.ndarray, queries: np.ndarray, items: np.ndarray, bias: np.ndarray, norms: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray]:
    """Exact scores of the found rows, from the model's own vectors, re-sorted."""
    found = np.maximum(ids, 0)
    vectors = np.asarray(items[found.reshape(-1)], dtype=np.float32).reshape(*found.shape, -1)
    if norms is not None:
        vectors = vectors / norms[found][..., None]
    scores = np.einsum("qkf,qf->qk", vectors, np.asarray(queries, dtype=np.float32)) + bias[found]
    scores[ids < 0] = -np.inf
    order = np.argsort(-scores, axis=1, kind="stable")
    return np.take_along_axis(found, order, axis=1), np.take_along_axis(scores, order, axis=1).astype(np.float32)
