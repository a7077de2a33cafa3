"""Serving at catalogue scale: lazy, bounded candidate caches and the nearest-neighbour index (ann.py)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest

from foretell.recipes.als import Als
from foretell.recipes.artifact import Artifact
from foretell.recipes.base import Factors, Interactions, Param, Progress, Recommender, no_progress
from foretell.recommendation import ann
from foretell.recommendation.engine import Engine
from foretell.recommendation.filters import parse_filter


class Dot(Recommender):
    """A factor model: users and items around shared genre centroids, scores u.v + bias."""

    name = "test-dot"
    params: ClassVar[dict[str, Param]] = {}

    def __init__(self, users: np.ndarray, items: np.ndarray, bias: np.ndarray) -> None:
        self.users, self.items, self.bias = users, items, bias
        self.n_items = len(items)
        self.calls = 0

    @classmethod
    def fit(cls, data: Interactions, params: dict[str, Any], progress: Progress = no_progress) -> Dot:
        rng = np.random.default_rng(0)
        centroids = rng.standard_normal((20, 16)).astype(np.float32)
        items = centroids[rng.integers(0, 20, data.n_items)] * 0.6 + rng.standard_normal((data.n_items, 16)) * 0.8
        users = centroids[rng.integers(0, 20, data.n_users)] + rng.standard_normal((data.n_users, 16))
        bias = rng.random(data.n_items) * 0.1
        return cls(users.astype(np.float32), items.astype(np.float32), bias.astype(np.float32))

    def _vectors(self, users: np.ndarray, histories: Sequence[np.ndarray]) -> np.ndarray:
        return np.stack(
            [
                self.users[u] if u >= 0 else self.items[np.asarray(h)].mean(axis=0)
                for u, h in zip(users, histories, strict=True)
            ]
        )

    def score(self, users: np.ndarray, histories: Sequence[np.ndarray]) -> np.ndarray:
        self.calls += 1
        return self._vectors(users, histories) @ self.items.T + self.bias

    def similar(self, items: np.ndarray) -> np.ndarray:
        unit = self.items / np.linalg.norm(self.items, axis=1, keepdims=True)
        return unit[items] @ unit.T + self.bias

    def factors(self) -> Factors:
        return Factors(self.items, self.bias, self._vectors)

    def save(self, directory: Path) -> None:
        raise NotImplementedError

    @classmethod
    def load(cls, directory: Path) -> Dot:
        raise NotImplementedError


def catalogue(n_users: int, n_items: int, per_user: int = 5) -> Interactions:
    rng = np.random.default_rng(1)
    users = np.repeat(np.arange(n_users), per_user).astype(np.int32)
    return Interactions(
        user_ids=np.array([f"u{k}" for k in range(n_users)], dtype=object),
        item_ids=np.array([f"i{k}" for k in range(n_items)], dtype=object),
        users=users,
        items=rng.integers(0, n_items, len(users)).astype(np.int32),
        timestamps=np.arange(len(users), dtype=np.int64) + 1_700_000_000,
        event_types=np.zeros(len(users), dtype=np.int16),
        event_type_names=("click",),
        item_features={"KIND": np.array(["rare" if k % 20 == 0 else "common" for k in range(n_items)], dtype=object)},
    )


def engine_for(data: Interactions, **kwargs: Any) -> Engine:
    return Engine(Artifact(Dot.fit(data, {}), data, "test-dot", {}), **kwargs)


def ids(items: list[Any]) -> list[str]:
    return [item_id for item_id, _, _ in items]


def recall(found: list[str], truth: list[str]) -> float:
    return len(set(found) & set(truth)) / len(truth)


def test_activation_scores_no_user_and_the_cache_holds_only_served_users() -> None:
    data = catalogue(5_000, 2_000)
    engine = engine_for(data, cache_size=100)
    model = engine.model
    assert isinstance(model, Dot) and model.calls == 0  # a new engine has computed nobody's candidates
    for k in range(150):
        engine.recommend(f"u{k}")
    assert model.calls == 150 and len(engine._cache) == 100  # bounded: least recently used went first
    engine.recommend("u149")
    assert model.calls == 150  # still cached
    assert engine.warm(seconds=0) == 0  # the time budget bounds warming


def test_lazy_and_evicted_candidates_equal_the_eagerly_cached_ones() -> None:
    data = catalogue(300, 500)
    eager, lazy = engine_for(data), engine_for(data, cache_size=10)
    assert eager.warm() == 300
    for _ in range(2):  # the second round recomputes what the small cache evicted
        for k in range(0, 300, 7):
            got, want = lazy.recommend(f"u{k}", n=25), eager.recommend(f"u{k}", n=25)
            assert ids(got) == ids(want)  # scores differ in the last bits only (one row vs a batch in BLAS)
            assert [s for _, s, _ in got] == pytest.approx([s for _, s, _ in want], rel=1e-5)


@pytest.fixture
def indexed(monkeypatch: pytest.MonkeyPatch) -> tuple[Engine, Engine]:
    """The same model twice, over 5,000 items: exact, and with the threshold lowered, indexed."""
    monkeypatch.setattr(ann, "MIN_ITEMS", 1_000)
    data = catalogue(400, 5_000)
    model = Dot.fit(data, {})
    approximate = Engine(Artifact(model, data, "test-dot", {}))
    assert approximate.build_index() and approximate.index is not None
    monkeypatch.setattr(ann, "MIN_ITEMS", 10_000)
    exact = Engine(Artifact(model, data, "test-dot", {}))
    assert not exact.build_index() and exact.index is None
    return exact, approximate


def test_the_index_finds_at_least_95_percent_of_the_exact_top_25(indexed: tuple[Engine, Engine]) -> None:
    exact, approximate = indexed
    users = [f"u{k}" for k in range(0, 400, 2)]
    found = [recall(ids(approximate.recommend(u, n=25)), ids(exact.recommend(u, n=25))) for u in users]
    assert np.mean(found) >= 0.95
    # Interacted items stay out; scores are the model's own.
    for u in users[:20]:
        answer = approximate.recommend(u, n=25)
        history = {f"i{i}" for i in exact.history(exact.user_index[u])}
        assert not history & set(ids(answer))
        full = dict(zip(ids(exact.recommend(u, n=500)), [s for _, s, _ in exact.recommend(u, n=500)], strict=True))
        assert all(score == pytest.approx(full[i], abs=1e-4) for i, score, _ in answer if i in full)
    # More than the cached candidates, or interacted items included: the index over-fetches.
    assert (
        np.mean([recall(ids(approximate.recommend(u, n=150)), ids(exact.recommend(u, n=150))) for u in users[:20]])
        >= 0.95
    )  # noqa: E501
    assert np.mean([recall(ids(approximate.recommend(u, n=25, exclude_interacted=False)),
                           ids(exact.recommend(u, n=25, exclude_interacted=False))) for u in users[:20]]) >= 0.95  # fmt: skip


def test_filters_with_the_index_fall_back_to_exact_scoring_when_they_empty_the_candidates(
    indexed: tuple[Engine, Engine],
) -> None:
    exact, approximate = indexed
    rare = parse_filter('INCLUDE ItemID WHERE Items.KIND IN ("rare")').bind({})  # 5% of the catalogue
    common = parse_filter('EXCLUDE ItemID WHERE Items.KIND IN ("rare")').bind({})
    for k in range(0, 400, 40):
        u = f"u{k}"
        # 100 candidates hold about 5 rare items, fewer than 25: the whole catalogue is scored, exactly.
        assert approximate.recommend(u, n=25, item_filter=rare) == exact.recommend(u, n=25, item_filter=rare)
        answer = ids(approximate.recommend(u, n=25, item_filter=common))
        assert len(answer) == 25 and all(int(i[1:]) % 20 for i in answer)
        assert recall(answer, ids(exact.recommend(u, n=25, item_filter=common))) >= 0.8


def test_similar_items_with_the_index(indexed: tuple[Engine, Engine]) -> None:
    exact, approximate = indexed
    items = [f"i{k}" for k in range(0, 5_000, 50)]
    found = [recall(ids(approximate.similar(i, 25)), ids(exact.similar(i, 25))) for i in items]
    assert np.mean(found) >= 0.95
    assert all(i not in ids(approximate.similar(i, 25)) for i in items)
    rare = parse_filter('INCLUDE ItemID WHERE Items.KIND IN ("rare")').bind({})
    assert approximate.similar("i3", 25, item_filter=rare) == exact.similar("i3", 25, item_filter=rare)


def test_als_models_expose_their_factors_for_the_index() -> None:
    rng = np.random.default_rng(0)
    model = Als(
        rng.standard_normal((30, 8)),
        rng.standard_normal((50, 8)),
        np.full(30, 2),
        rng.random(50).astype(np.float32),
        {"regularization": 1.0, "alpha": 10.0, "recent_half_life": 0.0},
    )
    factors = ann.factors_of(model)
    assert factors is not None
    users, histories = np.array([3, -1]), [np.array([1, 2]), np.array([4, 5, 6])]
    expected = model.score(users, histories)
    assert np.allclose(factors.queries(users, histories) @ factors.items.T + factors.bias, expected, atol=1e-5)
