"""Offline evaluation: a time-based hold-out and ranking metrics over the FULL catalogue.

Metrics (binary relevance; R = the user's held-out items not already in their training history;
the user's training items are removed from the ranking; averages over evaluated users):
  precision_at_k  hits@k / k
  recall_at_k     hits@k / |R|   (the standard definition, not hits@k / min(k, |R|))
  ndcg_at_k       DCG@k / ideal DCG@k, gains 1/log2(rank + 1), ideal over min(k, |R|) hits
  mrr             1 / rank of the best-ranked item of R in the full ranking; items tied with it
                  count as if ties were broken at random (expected rank)
  catalog_coverage  share of the catalogue in at least one evaluated user's top `coverage_k` (10)
Top-k lists break ties by item index.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from foretell.recipes.base import Interactions, Recommender
from foretell.recipes.data import by_user, subset

KS = (5, 10, 20, 25)
COVERAGE_K = 10


PROTOCOLS = ("time", "random")


def has_time_signal(data: Interactions) -> bool:
    """Whether the interactions' times order them at all: not all equal, and not one time per interaction at equal
    steps (the file's order: `from_arrays` numbers the rows 0..n-1 when there is no TIMESTAMP column)."""
    steps = np.diff(data.timestamps)
    return len(steps) > 0 and steps.min() != steps.max()


def temporal_holdout(
    data: Interactions,
    fraction: float = 0.1,
    min_interactions: int = 5,
    max_users: int | None = None,
    seed: int = 0,
) -> tuple[Interactions, dict[int, np.ndarray]]:
    """Holds out the latest ceil(fraction * n) (at least 1) interactions of each user with n >= min_interactions.

    With `max_users`, only a random sample of that many eligible users is held out (the others
    keep everything in train). Returns (train, {user: held-out item indices not in the user's train
    items}); users whose held-out items all reappear in their train part are left out of the dict.
    """
    # Position of each interaction from its user's end (0 = latest); data is sorted by time.
    return _holdout(data, by_user(data)[::-1], fraction, min_interactions, max_users, seed)


def random_holdout(
    data: Interactions,
    fraction: float = 0.1,
    min_interactions: int = 5,
    max_users: int | None = None,
    seed: int = 0,
) -> tuple[Interactions, dict[int, np.ndarray]]:
    """`temporal_holdout` with a random ceil(fraction * n) of each eligible user's interactions instead of the
    latest: the protocol for interactions whose times say nothing (`has_time_signal`)."""
    shuffled = np.random.default_rng(seed + 1_000_003).permutation(len(data.users))
    order = shuffled[np.argsort(data.users[shuffled], kind="stable")]  # by user, in random order within
    return _holdout(data, order, fraction, min_interactions, max_users, seed)


def holdout(
    data: Interactions, protocol: str, fraction: float, min_interactions: int, max_users: int | None, seed: int
) -> tuple[Interactions, dict[int, np.ndarray]]:
    """The `protocol` ("time" or "random") hold-out."""
    split = {"time": temporal_holdout, "random": random_holdout}[protocol]
    return split(data, fraction, min_interactions, max_users, seed)


def _holdout(
    data: Interactions,
    order: np.ndarray,
    fraction: float,
    min_interactions: int,
    max_users: int | None,
    seed: int,
) -> tuple[Interactions, dict[int, np.ndarray]]:
    """Holds out each eligible user's first interactions in `order` (grouped by user, in any user order)."""
    if not 0.0 < fraction < 1.0:
        raise ValueError("fraction must lie strictly between 0 and 1")
    counts = np.bincount(data.users, minlength=data.n_users)
    # The epsilon keeps ceil(0.1 * 30) at 3 despite float rounding (0.1 * 30 = 3.0000000000000004).
    n_hold = np.maximum(np.ceil(fraction * counts - 1e-9), 1).astype(np.int64)
    eligible = counts >= max(min_interactions, 2)  # a user keeps at least one training interaction
    n_hold = np.minimum(n_hold, counts - 1)
    if max_users is not None and eligible.sum() > max_users:
        chosen = np.random.default_rng(seed).choice(np.flatnonzero(eligible), size=max_users, replace=False)
        eligible = np.zeros_like(eligible)
        eligible[chosen] = True
    n_hold[~eligible] = 0
    # Rank of each interaction within its user's run of `order` (0 = held out first).
    sorted_users = data.users[order]
    firsts = np.r_[0, np.flatnonzero(np.diff(sorted_users)) + 1]
    run_start = np.repeat(firsts, np.diff(np.r_[firsts, len(order)]))
    rank = np.empty(len(order), dtype=np.int64)
    rank[order] = np.arange(len(order)) - run_start
    held = rank < n_hold[data.users]
    train = subset(data, ~held)
    # Held-out pairs that are not in the user's train part, deduplicated, grouped by user.
    n_items = np.int64(data.n_items)
    # Only the held-out users' train pairs can match (a few % of the data when max_users samples).
    of_held = n_hold[train.users] > 0
    train_keys = train.users[of_held].astype(np.int64) * n_items + train.items[of_held]
    keys = np.unique(data.users[held].astype(np.int64) * n_items + data.items[held])
    keys = keys[~np.isin(keys, train_keys)]
    users, items = keys // n_items, (keys % n_items).astype(np.int32)
    edges = np.concatenate([[0], np.flatnonzero(np.diff(users)) + 1, [len(users)]]).tolist()
    # Slices, not np.split: its per-group overhead was a second per 10k users.
    held_out = {int(users[lo]): items[lo:hi] for lo, hi in zip(edges[:-1], edges[1:], strict=True) if hi > lo}
    return train, held_out


def _top_k(scores: np.ndarray, k: int) -> np.ndarray:
    """(rows, k) item indices by descending score, ties by ascending index; `scores` has no NaN.

    faiss's heap selection finds each row's k-th largest score (13x numpy's argpartition over a 100k
    catalogue, and parallel); the items above it come from the heap, the ties at it are the first
    by index from one comparison pass, so the answer is exact and deterministic."""
    import faiss  # lazy: the evaluation alone needs it in a training job

    rows, n = scores.shape
    k = min(k, n)
    scores = np.ascontiguousarray(scores, dtype=np.float32)
    vals = np.empty((rows, k), dtype=np.float32)
    ids = np.empty((rows, k), dtype=np.int64)
    heap = faiss.float_minheap_array_t()
    heap.nh, heap.k, heap.val, heap.ids = rows, k, faiss.swig_ptr(vals), faiss.swig_ptr(ids)
    heap.heapify()
    heap.addn(n, faiss.swig_ptr(scores))
    heap.reorder()  # descending; a row with fewer than k scores above -inf is padded with id -1
    vals[ids < 0] = -np.inf  # the padding's value is -FLT_MAX
    kth = vals[:, -1].copy()
    above = vals > kth[:, None]
    n_above = above.sum(axis=1)
    # Where the row has more ties at the k-th score than the heap kept (or it kept padding: -inf ties),
    # take the first by index.
    tied = scores == kth[:, None]
    need = k - n_above
    fix = np.flatnonzero((np.count_nonzero(tied, axis=1) > need) | (ids[:, -1] < 0))
    tie_rows, tie_cols = np.nonzero(tied[fix])
    starts = np.searchsorted(tie_rows, np.arange(len(fix)))
    rank = np.arange(len(tie_rows)) - starts[tie_rows]
    keep = rank < need[fix][tie_rows]
    rows_at = fix[tie_rows[keep]]
    ids[rows_at, n_above[rows_at] + rank[keep]] = tie_cols[keep]
    vals[~above] = np.repeat(kth, k - n_above)
    order = np.lexsort((ids.ravel(), -vals.ravel(), np.repeat(np.arange(rows), k))).reshape(rows, k) % k
    return np.take_along_axis(ids, order, axis=1)


def evaluate(
    model: Recommender,
    train: Interactions,
    holdout: dict[int, np.ndarray],
    ks: Sequence[int] = KS,
    batch_size: int = 256,
    coverage_k: int = COVERAGE_K,
) -> dict[str, float]:
    """Ranking metrics of `model` (trained on `train`) on `holdout`; see the module docstring."""
    users = np.array(sorted(holdout), dtype=np.int64)
    n_items = train.n_items
    sums: dict[str, float] = {f"{m}_at_{k}": 0.0 for k in ks for m in ("precision", "recall", "ndcg")}
    sums["mrr"] = 0.0
    if len(users) == 0:
        return {**sums, "catalog_coverage": 0.0, "evaluated_users": 0.0}
    # The evaluated users' training histories in time order (not all users': a 500k-way split took 1.5 s).
    order = by_user(train)
    counts = np.bincount(train.users, minlength=train.n_users)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    history_items = train.items[order].astype(np.int32)
    k_max = max(max(ks), coverage_k)
    discounts = 1.0 / np.log2(np.arange(2, k_max + 2))
    ideal = np.cumsum(discounts)
    covered = np.zeros(n_items, dtype=bool)
    for lo in range(0, len(users), batch_size):
        batch = users[lo : lo + batch_size]
        hists = [history_items[starts[u] : starts[u] + counts[u]] for u in batch]
        scores = np.asarray(model.score(batch, hists), dtype=np.float32)
        if not (scores.flags.owndata and scores.flags.writeable):  # a view of the model's own arrays
            scores = scores.copy()
        if scores.shape != (len(batch), n_items):
            raise ValueError(f"{type(model).__name__}.score returned shape {scores.shape}")
        scores[~np.isfinite(scores)] = -np.inf
        scores[np.repeat(np.arange(len(batch)), counts[batch]), np.concatenate(hists)] = -np.inf  # seen items
        rel_lists = [holdout[int(u)] for u in batch]
        n_rel = np.array([len(r) for r in rel_lists])
        # Relevant items as sorted (row, item) keys, not a dense (batch, n_items) matrix: with a 100k-item
        # catalogue the dense one cost as much as the ranking.
        rel_rows = np.repeat(np.arange(len(batch)), n_rel)
        rel_items = np.concatenate(rel_lists).astype(np.int64)
        rel_keys = rel_rows * n_items + rel_items  # sorted: rows ascend, each user's items are sorted
        top = _top_k(scores, k_max)
        top_scores = np.take_along_axis(scores, top, axis=1)
        top_keys = np.arange(len(batch))[:, None] * n_items + top
        at = np.minimum(np.searchsorted(rel_keys, top_keys), len(rel_keys) - 1)
        hit = (rel_keys[at] == top_keys) & np.isfinite(top_scores)
        for k in ks:
            cut = min(k, hit.shape[1])  # a catalogue smaller than k
            hits = hit[:, :cut].sum(axis=1)
            sums[f"precision_at_{k}"] += float((hits / k).sum())
            sums[f"recall_at_{k}"] += float((hits / n_rel).sum())
            dcg = (hit[:, :cut] * discounts[:cut]).sum(axis=1)
            sums[f"ndcg_at_{k}"] += float((dcg / ideal[np.minimum(n_rel, k) - 1]).sum())
        sums["mrr"] += float(_reciprocal_ranks(scores, rel_rows, scores[rel_rows, rel_items]).sum())
        shown = top[:, :coverage_k][np.isfinite(top_scores[:, :coverage_k])]
        covered[shown] = True
    out = {name: total / len(users) for name, total in sums.items()}
    out["catalog_coverage"] = float(covered.mean())
    out["evaluated_users"] = float(len(users))
    return out


def _reciprocal_ranks(scores: np.ndarray, rel_rows: np.ndarray, rel_scores: np.ndarray) -> np.ndarray:
    """1 / expected rank of each row's best relevant item; `rel_scores` are the relevant items' scores."""
    best = np.full(len(scores), -np.inf, dtype=scores.dtype)
    np.maximum.at(best, rel_rows, rel_scores)
    above = (scores > best[:, None]).sum(axis=1)
    tied_rel = np.bincount(rel_rows, weights=rel_scores == best[rel_rows], minlength=len(scores))
    tied_other = (scores == best[:, None]).sum(axis=1) - tied_rel
    # Expected rank of the first relevant item when the tied ones are ordered at random.
    rank = 1.0 + above + tied_other / (tied_rel + 1.0)
    # A relevant item scored -inf (never recommendable) counts as not found.
    return np.where(np.isfinite(best), 1.0 / rank, 0.0)
