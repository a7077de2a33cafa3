"""AutoML on synthetic series: the backtest ranks candidates, and the forecast follows the winners."""

from __future__ import annotations

import numpy as np
import pytest

from foretell.forecasting.automl import AutoMl
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
    model = AutoMl(horizon=24, candidates=FAST, mode=mode).fit(train, season_length=12)
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
    model = AutoMl(horizon=12, candidates=("theta", "seasonal-naive"), top=2).fit(seasonal(), season_length=12)
    assert model.scores_ == {} and model.chosen_ == ["theta", "seasonal-naive"]
