"""AutoML on synthetic series: the backtest ranks candidates, and the forecast follows the winners."""

from __future__ import annotations

import math

import numpy as np
import pytest

from foretell.forecasting.automl import (
    DEFAULT_CANDIDATES,
    DEFAULT_MODE,
    DEFAULT_TOP,
    AutoMl,
    combine,
    select_candidates,
)
from foretell.forecasting.base import Forecast
from foretell.forecasting.metrics import mase
from foretell.forecasting.models import make_forecaster

FAST = ("ets", "theta", "seasonal-naive", "naive")


def seasonal(n: int = 240, m: int = 12, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(n)
    return 50 + 0.05 * t + 10 * np.sin(2 * np.pi * t / m) + rng.normal(0, 0.5, n)


def mae(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.mean(np.abs(a - b)))


@pytest.mark.parametrize("mode", ["select", "ensemble"])
def test_backtest_ranks_the_candidates_and_beats_naive(mode: str) -> None:
    y = seasonal()
    train, future = y[:-24], y[-24:]
    model = AutoMl(horizon=24, candidates=FAST, mode=mode, tolerance=math.inf).fit(train, season_length=12)
    assert set(model.scores_) == set(FAST)
    assert "naive" not in model.chosen_  # a flat line loses the backtest on a seasonal series
    assert model.scores_[model.chosen_[0]] == min(model.scores_.values())
    assert len(model.chosen_) == (1 if mode == "select" else 2)
    forecast = model.predict(24, (0.1, 0.5, 0.9))
    naive = make_forecaster("naive").fit(train, 12).predict(24).mean
    assert mae(future, forecast.mean) < 0.5 * mae(future, naive)
    assert (np.diff(forecast.quantiles, axis=0) >= 0).all()


def test_ensemble_averages_the_chosen_models() -> None:
    y = seasonal(seed=1)
    model = AutoMl(horizon=12, candidates=FAST, mode="ensemble", top=2).fit(y, season_length=12)
    parts = [make_forecaster(name).fit(y, 12).predict(12) for name in model.chosen_]
    np.testing.assert_allclose(model.predict(12).mean, np.mean([p.mean for p in parts], axis=0))


def test_a_short_series_skips_the_backtest_and_still_forecasts() -> None:
    model = AutoMl(horizon=12, candidates=FAST).fit(seasonal(n=30), season_length=12)
    assert model.scores_ == {}
    assert model.predict(12).mean.shape == (12,)


def test_bad_configuration_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="prophet"):
        AutoMl(horizon=12, candidates=("ets", "prophet"))
    with pytest.raises(ValueError, match="mode"):
        AutoMl(horizon=12, mode="vote")
    with pytest.raises(ValueError, match="horizon"):
        AutoMl(horizon=0)
    with pytest.raises(RuntimeError):
        AutoMl(horizon=3).predict(3)


def test_an_ensemble_of_every_candidate_needs_no_backtest() -> None:
    model = AutoMl(horizon=12, candidates=("theta", "seasonal-naive"), top=2, tolerance=math.inf)
    model.fit(seasonal(), season_length=12)
    assert model.scores_ == {} and model.chosen_ == ["theta", "seasonal-naive"]


def test_select_candidates_ranks_and_skips_failures() -> None:
    scores = {"ets": 1.2, "arima": 0.8, "theta": math.inf, "naive": float("nan"), "seasonal-naive": 1.0}
    assert select_candidates(scores, "select") == ["arima"]
    assert select_candidates(scores, "ensemble", top=2, tolerance=0.3) == ["arima", "seasonal-naive"]
    assert select_candidates(scores, "ensemble", top=9, tolerance=math.inf) == ["arima", "seasonal-naive", "ets"]
    # the tolerance drops candidates that lost the backtest clearly: 1.2 > 0.8 * 1.25
    assert select_candidates(scores, "ensemble", top=9, tolerance=0.25) == ["arima", "seasonal-naive"]
    assert select_candidates(scores, "ensemble", top=9, tolerance=0.0) == ["arima"]
    # every candidate failed: nothing to rank by, so the mapping's order
    assert select_candidates({"ets": math.inf, "theta": float("nan")}, "ensemble", top=1) == ["ets"]
    assert select_candidates({"b": 1.0, "a": 1.0}, "select") == ["b"]  # ties keep the mapping's order
    assert DEFAULT_MODE in ("select", "ensemble") and DEFAULT_TOP >= 1 and "arima" in DEFAULT_CANDIDATES
    with pytest.raises(ValueError, match="mode"):
        select_candidates(scores, "vote")
    with pytest.raises(ValueError, match="top"):
        select_candidates(scores, "ensemble", top=0)
    with pytest.raises(ValueError, match="tolerance"):
        select_candidates(scores, "ensemble", tolerance=-0.1)
    with pytest.raises(ValueError):
        select_candidates({})


def forecast(mean: list[float], spread: float) -> Forecast:
    m = np.asarray(mean)
    return Forecast(mean=m, levels=np.array([0.1, 0.9]), quantiles=np.vstack([m - spread, m + spread]))


def test_combine_is_a_weighted_mean_that_keeps_quantiles_ordered() -> None:
    a, b = forecast([1.0, 2.0], 0.5), forecast([3.0, 0.0], 2.0)
    np.testing.assert_allclose(combine([a, b]).mean, [2.0, 1.0])
    merged = combine([a, b], weights=[3.0, 1.0])
    np.testing.assert_allclose(merged.mean, [1.5, 1.5])
    np.testing.assert_allclose(merged.quantiles, [[0.625, 0.625], [2.375, 2.375]])
    assert (np.diff(merged.quantiles, axis=0) >= 0).all()
    assert combine([a]) is a
    with pytest.raises(ValueError, match="horizon"):
        combine([a, forecast([1.0, 2.0, 3.0], 1.0)])
    with pytest.raises(ValueError, match="weights"):
        combine([a, b], weights=[1.0, -1.0])
    with pytest.raises(ValueError, match="weights"):
        combine([a, b], weights=[1.0])
    with pytest.raises(ValueError):
        combine([])


def test_scores_are_the_mean_mase_over_the_backtest_windows() -> None:
    y = seasonal(seed=2)
    model = AutoMl(horizon=12, candidates=("theta", "seasonal-naive", "naive"), windows=2).fit(y, 12)
    assert set(model.scores_) == {"theta", "seasonal-naive", "naive"}
    for name, score in model.scores_.items():
        errors = [
            mase(y[cut : cut + 12], make_forecaster(name).fit(y[:cut], 12).predict(12).mean, y[:cut], 12)
            for cut in (len(y) - 12, len(y) - 24)
        ]
        assert score == pytest.approx(np.mean(errors))
    assert model.chosen_ == select_candidates(model.scores_, model.mode, model.top, model.tolerance)
