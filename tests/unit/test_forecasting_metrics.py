"""Forecast accuracy metrics: hand-computed values, properties and aggregation (synthetic data only)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from foretell.forecasting.base import Forecast
from foretell.forecasting.metrics import (
    aggregate,
    evaluate_forecast,
    mape,
    mase,
    mase_scale,
    mean_wql,
    owa,
    pinball_loss,
    rmse,
    smape,
    wape,
    wql,
)

Y = np.array([1.0, 2.0, 3.0, 4.0])
F = np.array([2.0, 2.0, 2.0, 2.0])


def test_smape_hand_computed() -> None:
    # 200*|y-f|/(|y|+|f|): 200/3, 0, 40, 200/3 -> mean 130/3
    assert smape(Y, F) == pytest.approx(130 / 3)
    assert smape([0.0, 1.0], [0.0, 0.0]) == pytest.approx(100.0)  # 0/0 step counts as 0
    assert smape([5.0, -3.0], [5.0, -3.0]) == 0.0


def test_smape_bounds() -> None:
    rng = np.random.default_rng(0)
    for _ in range(20):
        y, f = rng.normal(size=30) * 10, rng.normal(size=30) * 10
        assert 0.0 <= smape(y, f) <= 200.0
    assert smape([1.0, 2.0], [-1.0, 0.0]) == pytest.approx(200.0)


def test_mase_hand_computed() -> None:
    x = np.array([1.0, 3.0, 2.0, 5.0, 4.0])
    assert mase_scale(x, 1) == pytest.approx(7 / 4)  # |2|,|1|,|3|,|1|
    assert mase_scale(x, 2) == pytest.approx(5 / 3)  # x[2:] - x[:-2] = 1, 2, 2
    # forecast MAE (1 + 2) / 2 = 1.5
    assert mase([5.0, 6.0], [4.0, 4.0], x, 1) == pytest.approx(1.5 / 1.75)
    assert mase([5.0, 6.0], [4.0, 4.0], x, 2) == pytest.approx(0.9)


def test_mase_of_in_sample_seasonal_naive_is_one() -> None:
    rng = np.random.default_rng(1)
    m = 7
    x = 10 + np.sin(np.arange(80) * 2 * np.pi / m) + rng.normal(size=80)
    assert mase(x[m:], x[:-m], x, m) == pytest.approx(1.0)


def test_mase_edge_cases() -> None:
    assert math.isnan(mase([1.0], [2.0], [3.0, 3.0, 3.0], 1))  # zero scale
    assert mase_scale([1.0, 2.0, 4.0], 5) == pytest.approx(1.5)  # too short for lag 5: lag 1
    assert math.isnan(mase_scale([1.0], 1))


def test_owa() -> None:
    assert owa(10.0, 2.0, 20.0, 4.0) == pytest.approx(0.5)
    assert owa(12.0, 1.5, 12.0, 1.5) == pytest.approx(1.0)
    assert owa(18.138, 2.455, 18.383, 2.395) == pytest.approx(1.006, abs=5e-4)  # published M4 Hourly Theta


def test_wape_rmse_mape() -> None:
    assert wape(Y, F) == pytest.approx(0.4)  # (1 + 0 + 1 + 2) / 10
    assert rmse(Y, F) == pytest.approx(math.sqrt(1.5))  # (1 + 0 + 1 + 4) / 4
    assert mape([0.0, 2.0, 4.0], [1.0, 1.0, 1.0]) == pytest.approx(0.625)  # zero actual left out
    assert math.isnan(mape([0.0, 0.0], [1.0, 1.0]))
    assert math.isnan(wape([0.0, 0.0], [1.0, 1.0]))


def test_wql_hand_computed() -> None:
    # y - q = -1, 0, 1, 2
    assert pinball_loss(Y, F, 0.9) == pytest.approx([0.1, 0.0, 0.9, 1.8])
    assert wql(Y, F, 0.9) == pytest.approx(2 * 2.8 / 10)
    assert wql(Y, F, 0.1) == pytest.approx(2 * 1.2 / 10)
    assert wql(Y, F, 0.5) == pytest.approx(wape(Y, F))
    assert mean_wql(Y, np.vstack([F, F, F]), [0.1, 0.5, 0.9]) == pytest.approx((0.24 + 0.4 + 0.56) / 3)


def test_wql_of_perfect_forecast_is_zero() -> None:
    assert wql(Y, Y, 0.1) == 0.0
    assert mean_wql(Y, np.vstack([Y, Y]), [0.25, 0.75]) == 0.0


def test_shape_errors() -> None:
    with pytest.raises(ValueError):
        smape([1.0, 2.0], [1.0])
    with pytest.raises(ValueError):
        wql(Y, F, 1.0)
    with pytest.raises(ValueError):
        mean_wql(Y, np.vstack([F, F]), [0.1, 0.5, 0.9])
    with pytest.raises(ValueError):
        evaluate_forecast(Y, F, [0.1, 0.9], np.vstack([F]))


def test_evaluate_forecast_from_forecast_object() -> None:
    levels = np.array([0.1, 0.5, 0.9])
    fc = Forecast(mean=F, levels=levels, quantiles=np.vstack([F - 1, F, F + 1]))
    x = np.array([1.0, 3.0, 2.0, 5.0, 4.0])
    e = evaluate_forecast(Y, fc.mean, fc.levels, fc.quantiles, insample=x, season_length=1)
    assert e.smape == pytest.approx(130 / 3)
    assert e.mase == pytest.approx(1.0 / 1.75)  # MAE 1
    assert e.wape == pytest.approx(0.4)
    assert e.rmse == pytest.approx(math.sqrt(1.5))
    assert e.mape == pytest.approx((1 + 0 + 1 / 3 + 1 / 2) / 4)
    assert e.levels == (0.1, 0.5, 0.9)
    for level, value in zip(e.levels, e.wql, strict=True):
        assert value == pytest.approx(wql(Y, fc.quantile(level), level))
    assert e.mean_wql == pytest.approx(mean_wql(Y, fc.quantiles, fc.levels))
    assert e.n_series == 1 and e.n_points == 4


def test_evaluate_forecast_without_quantiles_or_insample() -> None:
    e = evaluate_forecast(Y, F)
    assert math.isnan(e.mase) and math.isnan(e.mean_wql)
    assert e.levels == () and e.wql == ()


def test_aggregate_m4_means_and_pooled_ratios() -> None:
    levels = [0.5]
    a = evaluate_forecast([1.0, 1.0], [2.0, 2.0], levels, [[2.0, 2.0]], insample=[0.0, 1.0, 0.0], season_length=1)
    b = evaluate_forecast([10.0, 10.0], [10.0, 10.0], levels, [[10.0, 10.0]], insample=[0.0, 2.0, 4.0], season_length=1)
    total = aggregate([a, b])
    assert total.n_series == 2 and total.n_points == 4
    # M4: sMAPE and MASE are plain means over series
    assert total.smape == pytest.approx((200 / 3 + 0) / 2)
    assert total.mase == pytest.approx((1.0 + 0.0) / 2)
    # Amazon Forecast: pooled sums, so the large, accurate series weighs more than in a mean of ratios
    assert total.wape == pytest.approx(2 / 22)
    assert (a.wape + b.wape) / 2 == pytest.approx(0.5)
    assert total.wql == pytest.approx((2 * 1.0 / 22,))
    assert total.mean_wql == pytest.approx(2 / 22)
    assert total.rmse == pytest.approx(math.sqrt(2 / 4))
    assert total.mape == pytest.approx((1 + 1 + 0 + 0) / 4)
    # aggregating is associative
    assert aggregate([aggregate([a]), b]) == total


def test_aggregate_skips_undefined_mase_and_checks_levels() -> None:
    a = evaluate_forecast([1.0], [2.0], insample=[3.0, 3.0])  # zero scale -> NaN
    b = evaluate_forecast([1.0], [2.0], insample=[3.0, 5.0])
    assert aggregate([a, b]).mase == pytest.approx(0.5)
    c = evaluate_forecast([1.0], [2.0], [0.5], [[2.0]])
    with pytest.raises(ValueError):
        aggregate([b, c])
    with pytest.raises(ValueError):
        aggregate([])
