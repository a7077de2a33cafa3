"""The als recipe on `implicit`: the objective it solves, the warm-started final fit, CPU fallback, artifacts."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp
from test_recipes import planted
from threadpoolctl import threadpool_info, threadpool_limits

from foretell.recipes import als as als_module
from foretell.recipes.als import Als, confidences, solve, use_gpu
from foretell.recipes.artifact import Artifact, load_artifact, save_artifact
from foretell.recipes.base import Interactions
from foretell.recipes.data import from_arrays, histories
from foretell.recipes.evaluation import evaluate, temporal_holdout
from foretell.recipes.registry import parse_params
from foretell.recipes.train import train_solution


@pytest.fixture(scope="module")
def split() -> tuple[Interactions, Interactions, dict[int, np.ndarray]]:
    data = planted()
    train, holdout = temporal_holdout(data, fraction=0.2)
    return data, train, holdout


def _objective(conf: sp.csr_matrix, x: np.ndarray, y: np.ndarray, reg: float) -> float:
    """sum_ui c_ui (p_ui - x_u . y_i)^2 + reg (|X|^2 + |Y|^2), dense (small data only)."""
    s = x.astype(np.float64) @ y.T.astype(np.float64)
    c = np.ones_like(s)
    dense = conf.toarray()
    c[dense > 0] = dense[dense > 0]
    p = (dense > 0).astype(np.float64)
    return float(
        (c * (p - s) ** 2).sum() + reg * ((x.astype(np.float64) ** 2).sum() + (y.astype(np.float64) ** 2).sum())
    )


def _exact_als(conf: sp.csr_matrix, f: int, reg: float, iterations: int) -> tuple[np.ndarray, np.ndarray]:
    """Reference ALS with an exact solve per row (Hu et al. 2008): what implicit's CG approximates."""
    dense = conf.toarray().astype(np.float64)
    c = np.where(dense > 0, dense, 1.0)
    p = (dense > 0).astype(np.float64)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((dense.shape[0], f)) * 0.01
    y = rng.standard_normal((dense.shape[1], f)) * 0.01

    def side(c: np.ndarray, p: np.ndarray, fixed: np.ndarray) -> np.ndarray:
        out = np.empty((c.shape[0], f))
        for u in range(c.shape[0]):
            a = (fixed * c[u][:, None]).T @ fixed + reg * np.eye(f)
            out[u] = np.linalg.solve(a, fixed.T @ (c[u] * p[u]))
        return out

    for _ in range(iterations):
        x = side(c, p, y)
        y = side(c.T, p.T, x)
    return x.astype(np.float32), y.astype(np.float32)


def test_confidences_are_one_plus_alpha_times_recency_weighted_counts() -> None:
    d = from_arrays(["a", "a", "a", "b"], ["x", "y", "x", "y"], [1, 2, 3, 4])
    conf = confidences(d, alpha=10.0, half_life=1.0).toarray()
    # User a: x at ages 2 and 0 (0.25 + 1), y at age 1 (0.5); implicit gets these values as they are.
    assert conf.tolist() == [[1.0 + 10.0 * 1.25, 1.0 + 10.0 * 0.5], [0.0, 11.0]]


def test_implicit_solver_matches_an_exact_als_on_the_same_objective(
    split: tuple[Interactions, Interactions, dict[int, np.ndarray]],
) -> None:
    _, train, holdout = split
    p = parse_params("als", {"factors": "16", "iterations": "10"})
    model = Als.fit(train, p)
    conf = confidences(train, float(p["alpha"]), float(p["recent_half_life"]))
    x, y = _exact_als(conf, 16, float(p["regularization"]), 10)
    reference = Als(x, y, model.train_counts, model.prior, p)
    reg = float(p["regularization"])
    # The objective with recency-weighted confidences, not implicit's own: a wrong matrix (alpha applied
    # twice, no "1 +", counts without recency) would land far from the exact optimum.
    assert _objective(conf, model.user_factors, model.item_factors, reg) <= 1.02 * _objective(conf, x, y, reg)
    ours = evaluate(model, train, holdout)
    exact = evaluate(reference, train, holdout)
    for metric in ("ndcg_at_10", "recall_at_20"):
        assert ours[metric] >= 0.95 * exact[metric], (metric, ours[metric], exact[metric])


def test_warm_started_final_fit_covers_every_user_and_item() -> None:
    # Item "new" is the latest interaction of most users of cluster 0: the hold-out fit never sees it.
    base = planted()
    users = [str(base.user_ids[u]) for u in base.users]
    items = [str(base.item_ids[i]) for i in base.items]
    times = base.timestamps.tolist()
    late = int(base.timestamps.max()) + 86_400
    for k in range(0, 200, 4):  # cluster 0 (test_recipes.planted: cluster = user % 4)
        users.append(f"u{k}")
        items.append("new")
        times.append(late + k)
    data = from_arrays(users, items, times)
    new = int(np.flatnonzero(data.item_ids == "new")[0])
    train, holdout = temporal_holdout(data, 0.1, 5)
    assert not (train.items == new).any() and holdout
    result = train_solution(data, "als", {"factors": "16", "iterations": "8"}, None, lambda *a, **k: None)
    model = result.model
    assert isinstance(model, Als)
    assert model.user_factors.shape == (data.n_users, 16) and model.item_factors.shape == (data.n_items, 16)
    assert np.linalg.norm(model.item_factors[new]) > 0.01  # learnt in the refit
    # Serving uses the trained factors (no fold-in) for exactly the histories the final fit saw.
    assert np.array_equal(model.train_counts, np.bincount(data.users, minlength=data.n_users))
    # As good as a fit from scratch on everything: cluster 0's other users (who never had it) rank "new" high.
    cold = Als.fit(data, result.params)
    hists = histories(data)
    index = {str(u): i for i, u in enumerate(data.user_ids)}
    who = np.array([index[f"u{k}"] for k in range(200, 240, 4)])
    assert not any(new in hists[u] for u in who)
    medians = []
    for m in (model, cold):
        scores = m.score(who, [hists[u] for u in who])
        medians.append(float(np.median((scores > scores[:, [new]]).sum(axis=1))))
    assert medians[0] <= max(medians[1] + 2, 5), medians


def test_refit_from_another_shape_fits_from_scratch(
    split: tuple[Interactions, Interactions, dict[int, np.ndarray]],
) -> None:
    data, train, _ = split
    small = Als.fit(train, parse_params("als", {"factors": "8", "iterations": "2"}))
    bigger = small.refit(data, parse_params("als", {"factors": "12", "iterations": "2"}))
    assert bigger.item_factors.shape == (data.n_items, 12)


def test_gpu_detection_falls_back_to_the_cpu(
    monkeypatch: pytest.MonkeyPatch, split: tuple[Interactions, Interactions, dict[int, np.ndarray]]
) -> None:
    import implicit.gpu

    if implicit.gpu.HAS_CUDA:
        pytest.skip("a usable GPU: nothing to fall back from")
    assert use_gpu() is False
    # A CUDA build whose device query fails (no driver) counts as no GPU.
    monkeypatch.setattr(implicit.gpu, "HAS_CUDA", True, raising=False)

    def no_device() -> int:
        raise RuntimeError("no CUDA-capable device is detected")

    monkeypatch.setattr(implicit.gpu, "get_device_count", no_device, raising=False)
    assert use_gpu() is False
    # Told to use the GPU where implicit cannot: the CPU solver gives the same factors.
    _, train, _ = split
    p = parse_params("als", {"factors": "8", "iterations": "3"})
    conf = confidences(train, 10.0, 10.0)
    rng = np.random.default_rng(0)
    x0 = rng.standard_normal((train.n_users, 8)).astype(np.float32) * 0.01
    y0 = rng.standard_normal((train.n_items, 8)).astype(np.float32) * 0.01
    on_gpu = solve(conf, x0, y0, p, 3, gpu=True)
    on_cpu = solve(conf, x0, y0, p, 3, gpu=False)
    assert np.allclose(on_gpu[0], on_cpu[0], atol=1e-5) and np.allclose(on_gpu[1], on_cpu[1], atol=1e-5)


def test_fit_leaves_the_callers_blas_threads_alone(
    split: tuple[Interactions, Interactions, dict[int, np.ndarray]],
) -> None:
    # The serving process runs one BLAS thread (recommendation.service); a fit there must not change that.
    with threadpool_limits(limits=1, user_api="blas"):
        Als.fit(split[1], parse_params("als", {"factors": "8", "iterations": "1"}))
        assert all(p["num_threads"] == 1 for p in threadpool_info() if p["user_api"] == "blas")
    import implicit.cpu.als  # noqa: F401  (loads its OpenMP runtime, which threadpoolctl then sees)

    assert als_module.cpu_threads() >= 1
    with threadpool_limits(limits=1, user_api="openmp"):
        assert als_module.cpu_threads() == 1  # bounded by the process's OpenMP limit


def test_artifact_round_trip(tmp_path: Path, split: tuple[Interactions, Interactions, dict[int, np.ndarray]]) -> None:
    data = split[0]
    result = train_solution(data, "als", {"factors": "8", "iterations": "3"}, None, lambda *a, **k: None)
    save_artifact(tmp_path, Artifact(result.model, data, "als", result.params, metrics=result.metrics))
    loaded = load_artifact(tmp_path)
    assert isinstance(loaded.model, Als) and loaded.params == result.params
    hists = histories(data)
    users = np.array([0, 1, -1])
    given = [hists[0], np.concatenate([hists[1], [3]]), np.array([5, 7])]
    assert np.array_equal(result.model.score(users, given), loaded.model.score(users, given))
