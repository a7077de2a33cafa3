"""Serving engine: exclusion, popularity fallback, ranking, exploration, filters, caches, hot swap."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest

from foretell.recipes.artifact import Artifact
from foretell.recipes.base import Interactions, Param, Progress, Recommender, no_progress
from foretell.recommendation.campaigns import CampaignSpec, Deployment, Deployments
from foretell.recommendation.engine import Engine, Exploration, RecentEvents, Scored, UnknownItem, top_k
from foretell.recommendation.filters import parse_filter


class CoOccurrence(Recommender):
    """Scores items by how often they co-occur with the history's items (plus a popularity tie-break)."""

    name = "test-cooccurrence"
    params: ClassVar[dict[str, Param]] = {}

    def __init__(self, counts: np.ndarray, popularity: np.ndarray) -> None:
        self.counts = counts
        self.popularity = popularity
        self.n_items = len(popularity)
        self.calls = 0

    @classmethod
    def fit(cls, data: Interactions, params: dict[str, Any], progress: Progress = no_progress) -> CoOccurrence:
        seen = np.zeros((data.n_users, data.n_items), dtype=np.float32)
        seen[data.users, data.items] = 1
        counts = seen.T @ seen
        np.fill_diagonal(counts, 0)
        popularity = np.bincount(data.items, minlength=data.n_items).astype(np.float32)
        return cls(counts, popularity / max(1.0, popularity.max()) * 1e-3)

    def score(self, users: np.ndarray, histories: Sequence[np.ndarray]) -> np.ndarray:
        self.calls += 1
        out = np.tile(self.popularity, (len(users), 1))
        for row, history in enumerate(histories):
            if len(history):
                out[row] += self.counts[np.asarray(history)].sum(axis=0)
        return out

    def save(self, directory: Path) -> None:
        raise NotImplementedError

    @classmethod
    def load(cls, directory: Path) -> CoOccurrence:
        raise NotImplementedError


class Ranker(CoOccurrence):
    """The same model with the optional fast path of scoring only some items."""

    def score_items(self, users: np.ndarray, histories: Sequence[np.ndarray], items: np.ndarray) -> np.ndarray:
        return self.score(users, histories)[:, items]


def interactions(
    pairs: list[tuple[str, str]],
    extra_items: Sequence[str] = (),
    features: dict[str, dict[str, str]] | None = None,
    created: dict[str, float] | None = None,
    event_types: Sequence[str] | None = None,
) -> Interactions:
    users = sorted({u for u, _ in pairs})
    items = list(dict.fromkeys([i for _, i in pairs] + list(extra_items)))
    uidx = {u: k for k, u in enumerate(users)}
    iidx = {i: k for k, i in enumerate(items)}
    names = sorted(set(event_types or ["click"]))
    types = event_types or ["click"] * len(pairs)
    item_features = {
        column: np.array([(features or {}).get(column, {}).get(i, "") for i in items], dtype=object)
        for column in (features or {})
    }
    return Interactions(
        user_ids=np.array(users, dtype=object),
        item_ids=np.array(items, dtype=object),
        users=np.array([uidx[u] for u, _ in pairs], dtype=np.int32),
        items=np.array([iidx[i] for _, i in pairs], dtype=np.int32),
        timestamps=np.arange(len(pairs), dtype=np.int64) * 86400 + 1_700_000_000,
        event_types=np.array([names.index(t) for t in types], dtype=np.int16),
        event_type_names=tuple(names),
        item_features=item_features,
        item_created=np.array([(created or {}).get(i, np.nan) for i in items]) if created is not None else None,
    )


def engine_for(data: Interactions, model: type[CoOccurrence] = CoOccurrence, **kwargs: Any) -> Engine:
    return Engine(Artifact(model.fit(data, {}), data, "test-cooccurrence", {}), **kwargs)


# u1 and u2 both like a and b; u2 also took c, so for u1 the best unseen item is c.
BASIC = [
    ("u1", "a"), ("u1", "b"),
    ("u2", "a"), ("u2", "b"), ("u2", "c"),
    ("u3", "c"), ("u3", "d"),
    ("u4", "a"), ("u4", "e"),
    ("u5", "a"), ("u5", "c"),
]  # fmt: skip


def ids(items: list[Scored]) -> list[str]:
    return [item_id for item_id, _, _ in items]


def full_order(engine: Engine, user: str, recent: Sequence[str] = ()) -> list[str]:
    """Reference answer: score everything, drop interacted items, sort (ties by index)."""
    u = engine.user_index.get(user, -1)
    history = list(engine.history(u)) if u >= 0 else []
    seq = np.array(history + [engine.item_index[i] for i in recent], dtype=np.int32)
    scores = engine.model.score(np.array([u]), [seq])[0].astype(np.float64)
    scores[seq] = -np.inf
    order = [i for i in np.argsort(-scores, kind="stable") if np.isfinite(scores[i])]
    return [str(engine.item_ids[i]) for i in order]


def test_known_users_get_model_scores_without_items_they_interacted_with() -> None:
    engine = engine_for(interactions(BASIC))
    result = engine.recommend("u1", n=3)
    assert ids(result) == full_order(engine, "u1")[:3]
    assert ids(result)[0] == "c"
    assert not {"a", "b"} & set(ids(result))
    assert all(reason == "model" and score is not None for _, score, reason in result)
    scores = [score or 0.0 for _, score, _ in result]
    assert scores == sorted(scores, reverse=True)
    with_seen = engine.recommend("u1", n=5, exclude_interacted=False)
    assert {"a", "b"} <= set(ids(with_seen))


def test_unknown_users_without_events_get_popular_items() -> None:
    engine = engine_for(interactions(BASIC))
    result = engine.recommend("stranger", n=3)
    assert ids(result) == ["a", "c", "b"]  # 4, 3 and 2 interactions
    assert all(reason == "popular" for _, _, reason in result)
    assert result[0][1] == pytest.approx(4 / 11)


def test_anonymous_sessions_are_scored_from_their_recent_events() -> None:
    engine = engine_for(interactions(BASIC))
    recent = RecentEvents(("d",), ("click",), (7,))
    result = engine.recommend("stranger", recent, n=2)
    assert ids(result)[0] == "c"  # d co-occurs with c only
    assert "d" not in ids(result)
    assert result[0][2] == "model"


def test_a_new_event_changes_the_cached_answer_and_is_excluded() -> None:
    engine = engine_for(interactions(BASIC))
    before = engine.recommend("u1", n=2)
    calls = engine.model.calls  # type: ignore[attr-defined]
    assert engine.recommend("u1", n=2) == before
    assert engine.model.calls == calls, "a repeated request must be served from the cache"  # type: ignore[attr-defined]
    after = engine.recommend("u1", RecentEvents(("c",), ("click",), (1,)), n=2)
    assert engine.model.calls == calls + 1  # type: ignore[attr-defined]
    assert "c" not in ids(after)
    assert ids(after) == full_order(engine, "u1", ["c"])[:2]


def test_ranking_orders_known_items_and_puts_unknown_ones_last_unscored() -> None:
    engine = engine_for(interactions(BASIC), Ranker)
    ranked = engine.rank("u1", ["zz1", "e", "c", "zz2", "d", "a"])
    scores = engine.model.score(np.array([engine.user_index["u1"]]), [engine.history(engine.user_index["u1"])])[0]
    reference = sorted(["e", "c", "d", "a"], key=lambda i: -scores[engine.item_index[i]])
    known = [r for r in ranked if r[1] is not None]
    assert ids(known) == reference  # interacted items are ranked too
    assert all(reason == "model" for _, _, reason in known)
    assert ids(ranked)[-2:] == ["zz1", "zz2"]
    assert ranked[-2:] == [("zz1", None, ""), ("zz2", None, "")]
    assert set(ids(ranked)) == {"zz1", "e", "c", "zz2", "d", "a"}
    scores = [score or 0.0 for _, score, _ in known]
    assert scores == sorted(scores, reverse=True)
    # Without score_items the engine scores the catalogue and picks the same order.
    plain = engine_for(interactions(BASIC)).rank("u1", ["zz1", "e", "c", "zz2", "d", "a"])
    assert ids(plain) == ids(ranked)


def test_filters_apply_to_recommendations_ranking_and_similar_items() -> None:
    features = {"GENRES": {"a": "x", "b": "x", "c": "y", "d": "y|z", "e": "z"}}
    engine = engine_for(interactions(BASIC, features=features))
    no_y = parse_filter("EXCLUDE ItemID WHERE Items.GENRES IN ($G)").bind({"G": '"y"'})
    assert not {"c", "d"} & set(ids(engine.recommend("u1", n=3, item_filter=no_y)))
    assert ids(engine.recommend("u1", n=3, item_filter=no_y)) == ["e"]
    assert ids(engine.rank("u1", ["c", "e", "d"], item_filter=no_y)) == ["e"]
    assert ids(engine.similar("a", 5, item_filter=no_y)) == ["b", "e"]
    assert ids(engine.recommend("stranger", n=2, item_filter=no_y)) == ["a", "b"]


def test_interaction_filters_use_history_and_recent_events() -> None:
    pairs = [("u1", "a"), ("u1", "b"), ("u2", "a"), ("u2", "c"), ("u2", "b")]
    data = interactions(pairs, event_types=["purchase", "click", "click", "click", "click"])
    engine = engine_for(data)
    clicked = parse_filter('INCLUDE ItemID WHERE Interactions.EVENT_TYPE IN ("click")').bind({})
    assert ids(engine.recommend("u1", n=5, exclude_interacted=False, item_filter=clicked)) == ["b"]
    recent = RecentEvents(("c",), ("click",), (3,))
    result = engine.recommend("u1", recent, n=5, exclude_interacted=False, item_filter=clicked)
    assert set(ids(result)) == {"b", "c"}


def test_a_filter_that_eats_the_cached_candidates_falls_back_to_full_scoring() -> None:
    items = [f"i{k}" for k in range(40)]
    pairs = [(f"u{k % 7}", item) for k, item in enumerate(items * 2)]
    features = {"KIND": {item: ("rare" if k >= 35 else "common") for k, item in enumerate(items)}}
    engine = engine_for(interactions(pairs, features=features), candidates=5)
    engine.warm()
    rare = parse_filter('INCLUDE ItemID WHERE Items.KIND IN ("rare")').bind({})
    result = engine.recommend("u0", n=3, item_filter=rare)
    allowed = [i for i in full_order(engine, "u0") if features["KIND"][i] == "rare"]
    assert ids(result) == allowed[:3] and len(result) == 3


def test_warmed_caches_give_the_same_answers_as_scoring_on_demand() -> None:
    data = interactions(BASIC)
    cold, warm = engine_for(data, candidates=3), engine_for(data, candidates=3)
    assert warm.warm() == 5
    for user in ("u1", "u2", "u3", "u4", "u5"):
        for n in (1, 2, 3, 4):
            assert warm.recommend(user, n=n) == cold.recommend(user, n=n), (user, n)
            assert ids(warm.recommend(user, n=n)) == full_order(cold, user)[:n]


def test_similar_items_exclude_the_item_and_reject_unknown_ones() -> None:
    engine = engine_for(interactions(BASIC))
    similar = engine.similar("a", 3)
    assert "a" not in ids(similar)
    assert ids(similar)[0] == "c"
    with pytest.raises(UnknownItem):
        engine.similar("nope", 3)


EXPLORE_FEATURES = {
    "GENRES": {
        "a": "rock", "b": "rock|pop", "c": "jazz", "d": "jazz", "e": "pop",
        "new-rock": "rock", "new-jazz": "jazz", "new-pop": "pop", "old-cold": "rock",
    }
}  # fmt: skip


def exploring_engine() -> Engine:
    newest = 1_700_000_000 + 10 * 86400
    created = {"new-rock": newest - 86400, "new-jazz": newest - 3600, "old-cold": newest - 400 * 86400}
    data = interactions(
        BASIC, extra_items=["new-rock", "new-jazz", "new-pop", "old-cold"], features=EXPLORE_FEATURES, created=created
    )
    return engine_for(data)


def test_exploration_gives_new_items_a_share_of_the_slots() -> None:
    engine = exploring_engine()
    assert sorted(engine.item_ids[engine.new_items(30)].tolist()) == ["new-jazz", "new-pop", "new-rock"]
    result = engine.recommend("u1", n=6, exploration=Exploration(0.34, 30))
    explored = [r for r in result if r[2] == "exploration"]
    assert len(result) == 6 and len(explored) == 2
    assert all(score is None for _, score, _ in explored)
    assert result[0][2] == "model"
    assert len(set(ids(result))) == 6
    # u1 took a (rock) and b (rock|pop): the rock newcomer matches twice, the pop one once.
    picks = engine.recommend("u1", n=4, exploration=Exploration(0.5, 30))
    assert [i for i, _, reason in picks if reason == "exploration"] == ["new-rock", "new-pop"]
    # u3 took jazz items; among the non-matching ones the newest comes first.
    picks = engine.recommend("u3", n=4, exploration=Exploration(0.5, 30))
    assert [i for i, _, reason in picks if reason == "exploration"] == ["new-jazz", "new-rock"]
    assert [reason for _, _, reason in picks] == ["model", "exploration", "model", "exploration"]


def test_cold_items_reach_users_only_through_exploration() -> None:
    engine = exploring_engine()
    cold = {"new-rock", "new-jazz", "new-pop", "old-cold"}
    for user in ("u1", "u2", "u3", "u4", "u5", "stranger"):
        # Without exploration a cold item (score 0) only fills slots no warm item is left for.
        assert not cold & set(ids(engine.recommend(user, n=2))), user
        explored = engine.recommend(user, n=4, exploration=Exploration(0.5, 30))
        assert {i for i, _, reason in explored if reason == "exploration"} <= cold - {"old-cold"}
        assert sum(reason == "exploration" for _, _, reason in explored) == 2
        assert not cold & {i for i, _, reason in explored if reason != "exploration"}
    assert Exploration(1.0).slots(10) == 5  # never more than half
    assert Exploration(0.01).slots(10) == 1
    assert Exploration(0.0).slots(10) == 0


def test_metadata_and_top_k() -> None:
    engine = engine_for(interactions(BASIC, features={"GENRES": {"a": "x|y"}}))
    assert engine.metadata("a", ["GENRES"]) == {"GENRES": "x|y"}
    assert engine.metadata("b", ["GENRES"]) == {}
    scores = np.array([0.5, -np.inf, 2.0, 1.0], dtype=np.float32)
    assert top_k(scores, 2).tolist() == [2, 3]
    assert top_k(scores, 10).tolist() == [2, 3, 0]


@pytest.mark.slow
def test_hot_swap_under_load_serves_one_whole_version_per_request() -> None:
    pairs_b = [(u, "b-" + i) for u, i in BASIC]
    old = engine_for(interactions(BASIC, extra_items=["new"]))
    new = engine_for(interactions(pairs_b, extra_items=["b-new"]))
    spec_old = CampaignSpec("solutions/s/versions/v1", Exploration(), False)
    spec_new = CampaignSpec("solutions/s/versions/v2", Exploration(0.5, 30), False)
    deployments = Deployments()
    deployments.put(Deployment("campaigns/c", spec_old, "file:///v1", "datasetGroups/g", old, None))
    errors: list[BaseException] = []
    seen: set[str] = set()
    stop = threading.Event()

    def client() -> None:
        while not stop.is_set():
            try:
                live = deployments.get("campaigns/c")
                assert live is not None
                result = live.engine.recommend("u1", n=4, exploration=live.exploration)
                prefixes = {item_id.startswith("b-") for item_id, _, _ in result}
                explored = any(reason == "exploration" for _, _, reason in result)
                assert len(prefixes) == 1 and explored == (prefixes == {True}), result
                seen.add(live.spec.solution_version)
            except BaseException as exc:  # noqa: BLE001 - collected and asserted below
                errors.append(exc)
                return

    threads = [threading.Thread(target=client) for _ in range(4)]
    for t in threads:
        t.start()
    for k in range(200):
        time.sleep(0.001)
        deployments.put(
            Deployment("campaigns/c", spec_new if k % 2 == 0 else spec_old, "file:///v", "datasetGroups/g",
                       new if k % 2 == 0 else old, None)
        )  # fmt: skip
    stop.set()
    for t in threads:
        t.join()
    assert errors == []
    assert seen == {"solutions/s/versions/v1", "solutions/s/versions/v2"}
