"""Recipes, evaluation, HPO and train_solution on synthetic data with planted structure.

Users belong to latent clusters that prefer disjoint item groups (with a popularity skew inside
each group and some noise from the global catalogue), so the hold-out is predictable from a
user's history but not from global popularity alone.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest

from foretell.recipes.base import Interactions, Param, Progress, Recommender, no_progress
from foretell.recipes.data import (
    from_arrays,
    histories,
    history_matrix,
    load_snapshot,
    recency_weights,
    subset,
    user_item_matrix,
)
from foretell.recipes.evaluation import _top_k, evaluate, has_time_signal, random_holdout, temporal_holdout
from foretell.recipes.hpo import CategoricalRange, ContinuousRange, IntegerRange, default_space, search
from foretell.recipes.registry import ParamError, parse_params, recipe_class
from foretell.recipes.train import HpoSpec, train_solution

CLUSTERS, ITEMS_PER_CLUSTER, USERS = 4, 30, 240
DAY = 86_400


def planted(seed: int = 0) -> Interactions:
    """Users in 4 clusters; 85% of a user's items come from their cluster's 30 items (Zipf-skewed)."""
    rng = np.random.default_rng(seed)
    n_items = CLUSTERS * ITEMS_PER_CLUSTER
    zipf = 1.0 / np.arange(1, ITEMS_PER_CLUSTER + 1) ** 0.7
    zipf /= zipf.sum()
    global_pop = 1.0 / np.arange(1, n_items + 1) ** 1.0
    global_pop /= global_pop.sum()
    users, items, times = [], [], []
    for u in range(USERS):
        cluster = u % CLUSTERS
        n = int(rng.integers(15, 30))
        own = rng.choice(ITEMS_PER_CLUSTER, size=int(n * 0.85), replace=False, p=zipf) + cluster * ITEMS_PER_CLUSTER
        noise = rng.choice(n_items, size=n - len(own), replace=False, p=global_pop)
        seq = np.concatenate([own, noise])
        rng.shuffle(seq)
        seq = seq[np.sort(np.unique(seq, return_index=True)[1])]  # drop repeats, keep order
        start = int(rng.integers(0, 100)) * DAY
        users += [f"u{u}"] * len(seq)
        items += [f"i{i:03d}" for i in seq]
        times += list(start + np.arange(len(seq)) * 3600)
    return from_arrays(users, items, times)


@pytest.fixture(scope="module")
def split() -> tuple[Interactions, Interactions, dict[int, np.ndarray]]:
    data = planted()
    train, holdout = temporal_holdout(data, fraction=0.2)
    return data, train, holdout


def fit(recipe: str, data: Interactions, **raw: str) -> Recommender:
    return recipe_class(recipe).fit(data, parse_params(recipe, raw))


# ---- data -------------------------------------------------------------------------------


def test_from_arrays_indexes_sorted_ids_and_sorts_by_time() -> None:
    d = from_arrays(
        ["b", "a", "b"], ["x", "y", "z"], [30, 10, 20], catalog=["w", "x"], item_features={"G": ["g1", "g2"]}
    )
    assert list(d.user_ids) == ["a", "b"] and list(d.item_ids) == ["w", "x", "y", "z"]
    assert d.timestamps.tolist() == [10, 20, 30]
    assert [d.item_ids[i] for i in d.items] == ["y", "z", "x"]
    assert d.item_features["G"].tolist() == ["g1", "g2", "", ""]
    assert [h.tolist() for h in histories(d)] == [[2], [3, 1]]


def test_subset_keeps_index_spaces_and_matrices() -> None:
    d = from_arrays(["a", "a", "b", "a"], ["x", "y", "x", "x"], [1, 2, 3, 4])
    s = subset(d, d.users == 0)
    assert s.n_users == 2 and s.n_items == 2 and len(s.users) == 3
    assert user_item_matrix(s).toarray().tolist() == [[2.0, 1.0], [0.0, 0.0]]
    assert user_item_matrix(s, binary=True).toarray().tolist() == [[1.0, 1.0], [0.0, 0.0]]
    # Recency: the latest item weighs 1, each later item halves (half-life 1); repeats count at their latest.
    m = history_matrix([np.array([0, 1, 0, 2])], 3, half_life=1.0).toarray()
    assert m.tolist() == [[0.5, 0.25, 1.0]]
    assert recency_weights(s, 1.0).tolist() == [0.25, 0.5, 1.0]


def test_load_snapshot_reads_the_export_format(tmp_path: Path) -> None:
    (tmp_path / "interactions.csv").write_text(
        "USER_ID,ITEM_ID,TIMESTAMP,EVENT_TYPE,EVENT_VALUE,SESSION_ID\n"
        "u2,i1,2024-01-02 00:00:00,click,,s1\n"
        "u1,i2,2024-01-01 00:00:00,buy,9.5,\n"
        "u1,007,1704326400,click,1,s2\n"  # epoch seconds (2024-01-04) are accepted too
        "u1,i1,2024-01-03 00:00:00,click,,\n"
    )
    (tmp_path / "items.csv").write_text(
        "ITEM_ID,GENRES,PRICE,CREATION_TIMESTAMP\ni1,Comedy|Drama,3.5,2023-12-01 00:00:00\ncold,,,\n"
    )
    (tmp_path / "users.csv").write_text("USER_ID,AGE\nu1,30\n")
    d = load_snapshot(tmp_path)
    assert sorted(d.item_ids) == ["007", "cold", "i1", "i2"]  # items.csv-only items are in the catalogue
    assert [d.user_ids[u] for u in d.users] == ["u1", "u2", "u1", "u1"]
    assert [d.item_ids[i] for i in d.items] == ["i2", "i1", "i1", "007"]
    assert d.timestamps.tolist() == [1704067200, 1704153600, 1704240000, 1704326400]
    assert [d.event_type_names[c] for c in d.event_types] == ["buy", "click", "click", "click"]
    assert d.values is not None and d.values[0] == 9.5 and np.isnan(d.values[1])
    at = {item: i for i, item in enumerate(d.item_ids)}
    assert d.item_features["GENRES"][at["i1"]] == "Comedy|Drama" and d.item_features["GENRES"][at["cold"]] == ""
    assert d.item_features["PRICE"][at["i1"]] == "3.5"
    assert (
        d.item_created is not None and d.item_created[at["i1"]] == 1701388800 and np.isnan(d.item_created[at["cold"]])
    )
    clicks = load_snapshot(tmp_path, "click")
    assert len(clicks.users) == 3 and sorted(clicks.item_ids) == sorted(d.item_ids)  # i2 stays a catalogue item
    assert len(load_snapshot(tmp_path, "rate").users) == 0


def test_load_snapshot_rejects_bad_times(tmp_path: Path) -> None:
    (tmp_path / "interactions.csv").write_text("USER_ID,ITEM_ID,TIMESTAMP\nu,i,yesterday\n")
    with pytest.raises(ValueError, match="yesterday"):
        load_snapshot(tmp_path)


# ---- evaluation -------------------------------------------------------------------------


class Fixed(Recommender):
    """Scores from a table (rows by user index): lets tests hand-compute metrics."""

    name: ClassVar[str] = "fixed"
    params: ClassVar[dict[str, Param]] = {}

    def __init__(self, table: np.ndarray) -> None:
        self.table, self.n_items = table.astype(np.float32), table.shape[1]

    @classmethod
    def fit(cls, data: Interactions, params: dict[str, Any], progress: Progress = no_progress) -> Fixed:
        raise NotImplementedError

    def score(self, users: np.ndarray, histories: Any) -> np.ndarray:
        return self.table[users].copy()

    def save(self, directory: Path) -> None:
        raise NotImplementedError

    @classmethod
    def load(cls, directory: Path) -> Fixed:
        raise NotImplementedError


def test_temporal_holdout_takes_the_latest_interactions() -> None:
    users = ["a"] * 30 + ["b"] * 4 + ["c"] * 10
    items = [f"i{k}" for k in range(30)] + ["i0", "i1", "i2", "i3"] + [f"i{k}" for k in range(10)]
    times = list(range(30)) + [5, 6, 7, 8] + list(range(100, 90, -1))  # c's events arrive in reverse order
    data = from_arrays(users, items, times)
    train, holdout = temporal_holdout(data, fraction=0.1, min_interactions=5)
    item = {i: n for n, i in enumerate(data.item_ids)}
    # a: ceil(0.1 * 30) = 3 latest; b: too few interactions; c: 1 latest (i0 at t=100).
    assert sorted(data.item_ids[holdout[0]]) == ["i27", "i28", "i29"]
    assert 1 not in holdout
    assert data.item_ids[holdout[2]].tolist() == ["i0"]
    assert len(train.users) == 44 - 4
    assert not np.any((train.users == 2) & (train.items == item["i0"]))
    sampled_train, sampled = temporal_holdout(data, fraction=0.1, max_users=1, seed=3)
    assert len(sampled) == 1 and len(sampled_train.users) == 44 - sum(len(v) for v in sampled.values())


def test_time_signal_is_absent_without_times_with_one_time_or_in_file_order() -> None:
    users, items = ["a", "a", "b", "b"], ["x", "y", "x", "z"]
    assert not has_time_signal(from_arrays(users, items))  # no TIMESTAMP: numbered in file order
    assert not has_time_signal(from_arrays(users, items, [7, 7, 7, 7]))
    assert not has_time_signal(from_arrays(users, items, [10, 20, 30, 40]))  # one per row, equal steps
    assert has_time_signal(from_arrays(users, items, [10, 20, 20, 45]))


def test_random_holdout_takes_a_random_share_of_each_user() -> None:
    users = ["a"] * 30 + ["b"] * 4 + ["c"] * 10
    items = [f"i{k}" for k in range(30)] + ["i0", "i1", "i2", "i3"] + [f"i{k}" for k in range(10)]
    data = from_arrays(users, items, list(range(44)))
    held = [random_holdout(data, fraction=0.1, min_interactions=5, seed=s)[1] for s in range(6)]
    for holdout in held:
        assert sorted(holdout) == [0, 2] and len(holdout[0]) == 3 and len(holdout[2]) == 1  # b: too few
    assert len({tuple(sorted(data.item_ids[h[0]])) for h in held}) > 1, "random, not always the same items"
    assert held[0][0].tolist() == random_holdout(data, fraction=0.1, min_interactions=5, seed=0)[1][0].tolist()
    latest = temporal_holdout(data, fraction=0.1, min_interactions=5)[1]
    assert any(sorted(h[0].tolist()) != sorted(latest[0].tolist()) for h in held)


@pytest.mark.parametrize("recipe", ["ease", "als", "sims"])
def test_without_times_training_holds_out_at_random_and_weighs_no_recency(recipe: str) -> None:
    timed = planted()
    data = from_arrays(timed.user_ids[timed.users], timed.item_ids[timed.items])  # the same pairs, no times
    messages: list[str] = []
    result = train_solution(data, recipe, {}, None, lambda f, m="", **c: messages.append(m))
    assert result.params["recent_half_life"] == 0.0 and result.metrics["ndcg_at_10"] > 0
    assert any("at random" in m for m in messages)
    kept = train_solution(data, recipe, {"recent_half_life": "3"}, None, no_progress)  # the solution's choice stands
    assert kept.params["recent_half_life"] == 3.0
    with_times = train_solution(timed, recipe, {}, None, no_progress)
    assert with_times.params["recent_half_life"] == recipe_class(recipe).params["recent_half_life"].default


def test_metrics_match_a_hand_computed_example() -> None:
    # 2 users, 6 items. User 0 trained on item 5 (masked) and holds out {1, 3}; user 1 holds out {4}.
    data = from_arrays(["a", "a", "a", "b", "b"], ["5", "1", "3", "0", "4"], [0, 1, 2, 3, 4], catalog=["2"])
    train = subset(data, np.array([True, False, False, True, False]))
    holdout = {0: np.array([1, 3]), 1: np.array([4])}
    # User 0 ranking without item 5: 0, 1, 2, 3, 4 -> hits at ranks 2 and 4.
    # User 1 ranking without item 0: 1, 2, 3, 4, 5 -> hit at rank 4.
    table = np.array([[0.9, 0.8, 0.7, 0.6, 0.5, 1.0], [1.0, 0.9, 0.8, 0.7, 0.6, 0.5]])
    m = evaluate(Fixed(table), train, holdout, ks=(1, 2, 4), coverage_k=2)
    log2 = np.log2
    assert m["evaluated_users"] == 2
    assert m["precision_at_2"] == pytest.approx((1 / 2 + 0) / 2)
    assert m["recall_at_2"] == pytest.approx((1 / 2 + 0) / 2)
    assert m["recall_at_4"] == pytest.approx((1 + 1) / 2)
    assert m["precision_at_4"] == pytest.approx((2 / 4 + 1 / 4) / 2)
    ndcg0 = (1 / log2(3) + 1 / log2(5)) / (1 + 1 / log2(3))
    ndcg1 = (1 / log2(5)) / 1
    assert m["ndcg_at_4"] == pytest.approx((ndcg0 + ndcg1) / 2)
    assert m["ndcg_at_1"] == 0.0
    assert m["mrr"] == pytest.approx((1 / 2 + 1 / 4) / 2)
    assert m["catalog_coverage"] == pytest.approx(len({0, 1, 2}) / 6)


def test_mrr_counts_ties_at_their_expected_rank() -> None:
    data = from_arrays(["a", "a"], ["0", "1"], [0, 1], catalog=["2", "3"])
    train, holdout = subset(data, np.array([True, False])), {0: np.array([1])}
    # Item 1 ties with items 2 and 3 after the masked item 0: expected rank 2 of 3.
    assert evaluate(Fixed(np.array([[5.0, 1.0, 1.0, 1.0]])), train, holdout)["mrr"] == pytest.approx(1 / 2)


@pytest.mark.parametrize("seed", range(40))
def test_top_k_is_the_full_sort_with_ties_by_index(seed: int) -> None:
    # Rounded scores tie often; -inf (masked items) can fill a row's top k; k may exceed the catalogue.
    rng = np.random.default_rng(seed)
    rows, n, k = int(rng.integers(1, 20)), int(rng.integers(1, 300)), int(rng.integers(1, 40))
    scores = np.round(rng.standard_normal((rows, n)), int(rng.integers(0, 3))).astype(np.float32)
    scores[rng.random((rows, n)) < rng.random()] = -np.inf
    expected = [np.lexsort((np.arange(n), -row))[: min(k, n)] for row in scores]
    np.testing.assert_array_equal(_top_k(scores, k), np.array(expected))


def test_full_ranking_masks_training_items(split: tuple[Interactions, Interactions, dict[int, np.ndarray]]) -> None:
    _, train, holdout = split
    seen = user_item_matrix(train, binary=True).toarray()
    table = seen * 10.0  # training items first...
    for u, items in holdout.items():
        table[u, items] = 5.0  # ...then exactly the held-out ones
    m = evaluate(Fixed(table), train, holdout)
    assert m["mrr"] == pytest.approx(1.0)
    assert m["recall_at_25"] == pytest.approx(1.0)
    assert m["ndcg_at_10"] == pytest.approx(1.0)


# ---- recipes ----------------------------------------------------------------------------


def test_personalized_recipes_beat_popularity(split: tuple[Interactions, Interactions, dict[int, np.ndarray]]) -> None:
    _, train, holdout = split
    baseline = evaluate(fit("popularity-count", train), train, holdout)["ndcg_at_10"]
    for recipe in ("sims", "ease", "als"):
        ndcg = evaluate(fit(recipe, train), train, holdout)["ndcg_at_10"]
        assert ndcg > baseline * 1.5 and ndcg > baseline + 0.08, (recipe, ndcg, baseline)


def test_popularity_decay_prefers_recent_items() -> None:
    old = [(f"u{k}", "old", 0) for k in range(10)]
    new = [(f"v{k}", "new", 100 * DAY) for k in range(4)]
    users, items, times = zip(*(old + new), strict=True)
    data = from_arrays(users, items, times)
    at = {item: i for i, item in enumerate(data.item_ids)}
    plain = fit("popularity-count", data).score(np.array([-1]), [np.array([], dtype=np.int32)])[0]
    decayed = fit("popularity-count", data, half_life_days="7").score(np.array([0, -1]), [np.array([0]), np.array([])])
    assert plain[at["old"]] > plain[at["new"]]
    assert decayed[0, at["new"]] > decayed[0, at["old"]]
    assert np.array_equal(decayed[0], decayed[1])  # the same for everyone


def test_sims_neighbours_share_the_cluster(split: tuple[Interactions, Interactions, dict[int, np.ndarray]]) -> None:
    data = split[0]
    model = fit("sims", data, neighbors="10")
    rows = model.similar(np.arange(0, data.n_items, 7))
    clusters = np.array([int(i[1:]) // ITEMS_PER_CLUSTER for i in data.item_ids])
    top = np.argsort(-rows, axis=1)[:, :5]
    same = clusters[top] == clusters[np.arange(0, data.n_items, 7)][:, None]
    assert same.mean() > 0.8
    assert model.sim.getnnz(axis=1).max() <= 10  # kept sparse


def test_ease_refuses_large_catalogues() -> None:
    data = from_arrays(["a", "b"], ["x", "y"], catalog=[str(k) for k in range(50)])
    with pytest.raises(ValueError, match="max_items"):
        fit("ease", data, max_items="20")


def test_als_folds_in_unknown_and_extended_histories(
    split: tuple[Interactions, Interactions, dict[int, np.ndarray]],
) -> None:
    data, train, _ = split
    model = fit("als", train, iterations="8")
    hists = histories(train)
    known = model.score(np.array([0]), [hists[0]])
    extended = model.score(np.array([0]), [np.concatenate([hists[0], [hists[1][0]]])])
    assert not np.allclose(known, extended)
    # An unknown user with user 0's history scores like user 0: the fold-in solves the same problem.
    cold = model.score(np.array([-1]), [hists[0]])
    assert np.corrcoef(known[0], cold[0])[0, 1] > 0.95


@pytest.mark.parametrize("recipe", ["popularity-count", "sims", "ease", "als"])
def test_save_load_round_trip(
    recipe: str, tmp_path: Path, split: tuple[Interactions, Interactions, dict[int, np.ndarray]]
) -> None:
    _, train, _ = split
    model = fit(recipe, train)
    model.save(tmp_path)
    loaded = recipe_class(recipe).load(tmp_path)
    hists = histories(train)
    users = np.array([0, 1, -1, 2])
    given = [hists[0], np.concatenate([hists[1], [3]]), np.array([5, 7]), np.array([], dtype=np.int32)]
    scores = model.score(users, given)
    assert scores.dtype == np.float32 and scores.shape == (4, train.n_items)
    assert np.array_equal(scores, loaded.score(users, given))
    assert np.array_equal(model.similar(np.array([1, 2])), loaded.similar(np.array([1, 2])))
    assert not any(p.suffix == ".pkl" for p in tmp_path.iterdir())


@pytest.mark.parametrize("recipe", ["popularity-count", "sims", "ease", "als", "sequence"])
def test_score_items_equals_the_full_scores_of_those_items(
    recipe: str, split: tuple[Interactions, Interactions, dict[int, np.ndarray]]
) -> None:
    _, train, _ = split
    raw = {"epochs": "1", "dim": "16", "max_len": "16", "device": "cpu"} if recipe == "sequence" else {}
    model = fit(recipe, train, **raw)
    hists = histories(train)
    users = np.array([0, 1, -1, 2])
    given = [hists[0], np.concatenate([hists[1], [3]]), np.array([5, 7]), np.array([], dtype=np.int32)]
    items = np.array([9, 0, 57, 3, 9, train.n_items - 1])
    expected = model.score(users, given)[:, items]
    got = model.score_items(users, given, items)
    assert got.dtype == np.float32 and got.shape == (4, len(items))
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


def test_parse_params_errors() -> None:
    assert parse_params("ease", {"l2": "30"})["l2"] == 30.0
    with pytest.raises(ParamError) as unknown:
        parse_params("ease", {"lambda": "3"})
    assert unknown.value.name == "lambda"
    with pytest.raises(ParamError, match="not a valid int") as bad:
        parse_params("als", {"factors": "many"})
    assert bad.value.name == "factors"
    with pytest.raises(ParamError, match="at least") as low:
        parse_params("sims", {"neighbors": "0"})
    assert low.value.name == "neighbors"


# ---- HPO and train_solution -------------------------------------------------------------


def test_hpo_finds_a_better_l2_than_a_bad_one(split: tuple[Interactions, Interactions, dict[int, np.ndarray]]) -> None:
    _, train, holdout = split
    fixed = parse_params("ease", {"l2": "0.001"})  # overfits badly
    bad = evaluate(fit("ease", train, l2="0.001"), train, holdout)["ndcg_at_10"]
    space = [ContinuousRange("l2", 10.0, 1000.0, True)]
    best, trials = search("ease", train, holdout, fixed, space, max_trials=4)
    assert len(trials) == 4
    assert trials[0].params["l2"] == 10.0  # the fixed value, clipped into the range
    assert all(10.0 <= t.params["l2"] <= 1000.0 for t in trials)
    assert next(t.objective for t in trials if t.params == best) == max(t.objective for t in trials) > bad + 0.1
    worst, low = search("ease", train, holdout, fixed, space, maximize=False, max_trials=3)
    assert next(t.objective for t in low if t.params == worst) == min(t.objective for t in low)


def test_hpo_space_types_and_errors(split: tuple[Interactions, Interactions, dict[int, np.ndarray]]) -> None:
    _, train, holdout = split
    space = [IntegerRange("neighbors", 5, 50), CategoricalRange("alpha", ("0.3", "0.7"))]
    best, trials = search("sims", train, holdout, parse_params("sims", {}), space, max_trials=3)
    assert all(isinstance(t.params["neighbors"], int) and t.params["alpha"] in (0.3, 0.7) for t in trials)
    assert isinstance(best["alpha"], float)
    with pytest.raises(ParamError):
        search("sims", train, holdout, parse_params("sims", {}), [IntegerRange("nope", 1, 2)])
    assert {r.name for r in default_space("ease")} <= set(recipe_class("ease").params)


def test_hpo_spec_reads_the_operation_json() -> None:
    spec = HpoSpec(
        objective_metric="recall_at_25",
        objective_type="OBJECTIVE_TYPE_MINIMIZE",
        integer_ranges=[{"name": "factors", "min_value": "16", "max_value": "64"}],
        continuous_ranges=[{"name": "alpha", "max_value": 3.0}],
    )
    assert spec.objective == "recall_at_25" and not spec.maximize and spec.trials == 8
    assert spec.space("als") == [IntegerRange("factors", 16, 64), ContinuousRange("alpha", 0.0, 3.0, False)]
    assert HpoSpec().maximize and HpoSpec().space("ease") == default_space("ease")


def test_train_solution_progress_is_monotone_and_ends_at_one(
    split: tuple[Interactions, Interactions, dict[int, np.ndarray]],
) -> None:
    data = split[0]
    calls: list[tuple[float, str, dict[str, float]]] = []
    hpo = HpoSpec(
        max_trials=2, continuous_ranges=[{"name": "l2", "min_value": 5.0, "max_value": 200.0, "log_scale": True}]
    )
    result = train_solution(data, "ease", {"recent_half_life": "0"}, hpo, lambda f, m="", **c: calls.append((f, m, c)))
    fractions = [f for f, _, _ in calls]
    assert fractions == sorted(fractions) and fractions[0] == 0.0 and fractions[-1] == 1.0
    messages = " ".join(m for _, m, _ in calls)
    for expected in ("trial 1/2", "trial 2/2", "fitting", "evaluating", "final fit"):
        assert expected in messages
    assert len(result.trials) == 2 and 5.0 <= result.params["l2"] <= 200.0
    assert result.params["recent_half_life"] == 0.0
    assert {"ndcg_at_10", "precision_at_5", "recall_at_25", "mrr", "catalog_coverage"} <= set(result.metrics)
    assert result.metrics["evaluated_users"] > 0
    # The deployed model saw everything, hold-out included.
    assert result.model.score(np.array([0]), [np.array([1])]).shape == (1, data.n_items)

    als_calls: list[tuple[float, str, dict[str, float]]] = []
    train_solution(data, "als", {"iterations": "3"}, None, lambda f, m="", **c: als_calls.append((f, m, c)))
    assert [f for f, _, _ in als_calls] == sorted(f for f, _, _ in als_calls) and als_calls[-1][0] == 1.0
    assert any("iteration" in c for _, _, c in als_calls)  # counters forwarded from the recipe


def test_train_solution_without_a_holdout_still_fits() -> None:
    data = from_arrays(["a", "b", "a"], ["x", "y", "y"])
    result = train_solution(data, "popularity-count", {}, HpoSpec(), no_progress)
    assert result.metrics == {} and result.trials == []
    with pytest.raises(ParamError):
        train_solution(data, "popularity-count", {"half_life_days": "-1"}, None, no_progress)


def test_docs_list_every_recipe_parameter_and_are_current() -> None:
    from click.testing import CliRunner

    from foretell.cli.main import cli
    from foretell.recipes.registry import RECIPES, describe_recipes

    text = describe_recipes()
    for name in RECIPES:
        assert f"## {name}\n" in text
        assert all(f"| `{param}` |" in text for param in recipe_class(name).params)
    docs = Path(__file__).resolve().parents[2] / "docs" / "recipes.md"
    assert docs.read_text() == text, "docs/recipes.md is stale: write describe_recipes() to it"
    result = CliRunner().invoke(cli, ["recipes"])
    assert result.exit_code == 0 and result.output == text
