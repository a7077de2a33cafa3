"""The statistical forecasters on synthetic series with known structure."""

from __future__ import annotations

import numpy as np
import pytest

from foretell.forecasting.base import Forecaster
from foretell.forecasting.models import (
    FORECASTERS,
    Arima,
    Ets,
    Naive,
    Npts,
    SeasonalNaive,
    Theta,
    make_forecaster,
    seasonality_test,
)

H = 12
M = 12


def seasonal_series(n: int = 120, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(n)
    return 50 + 10 * np.sin(2 * np.pi * t / M) + rng.normal(0, 1, n)


def trended_series(n: int = 100, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return 10 + 0.8 * np.arange(n) + rng.normal(0, 1, n)


def mae(model: Forecaster, y: np.ndarray, season_length: int) -> float:
    forecast = model.fit(y[:-H], season_length).predict(H)
    return float(np.mean(np.abs(forecast.mean - y[-H:])))


@pytest.mark.parametrize("cls", [SeasonalNaive, Ets, Arima, Theta])
def test_seasonal_models_beat_naive_on_a_seasonal_series(cls: type[Forecaster]) -> None:
    y = seasonal_series()
    assert mae(cls(), y, M) < 0.5 * mae(Naive(), y, M)


@pytest.mark.parametrize("cls", [Ets, Arima, Theta])
def test_trend_models_beat_naive_on_a_trended_series(cls: type[Forecaster]) -> None:
    y = trended_series()
    assert mae(cls(), y, 1) < 0.5 * mae(Naive(), y, 1)


def test_npts_on_an_intermittent_series() -> None:
    rng = np.random.default_rng(3)
    rate = 0.2
    y = (rng.random(300) < rate).astype(np.float64)
    y[-1] = 1.0  # the naive forecast then says "demand every step"
    future = (rng.random(200) < rate).astype(np.float64)
    forecast = Npts(feature_scale=0.0).fit(y).predict(len(future), (0.5, 0.9))
    assert np.all(forecast.quantile(0.5) == 0.0)
    assert np.mean(np.abs(forecast.quantile(0.5) - future)) < np.mean(np.abs(y[-1] - future))
    assert abs(float(forecast.mean.mean()) - rate) < 0.06
    assert set(np.unique(forecast.quantiles)) <= {0.0, 1.0}  # only values seen before


def test_npts_is_deterministic_given_a_seed() -> None:
    y = np.random.default_rng(0).poisson(2.0, 80).astype(np.float64)
    a = Npts(seed=7).fit(y).predict(10)
    b = Npts(seed=7).fit(y).predict(10)
    c = Npts(seed=8).fit(y).predict(10)
    np.testing.assert_array_equal(a.quantiles, b.quantiles)
    np.testing.assert_array_equal(a.mean, b.mean)
    assert not np.array_equal(Npts(seed=7).fit(y).sample_paths(10), Npts(seed=8).fit(y).sample_paths(10))
    assert c.mean.shape == (10,)


@pytest.mark.parametrize("name", sorted(FORECASTERS))
def test_output_shape_and_ordered_quantiles(name: str) -> None:
    y = seasonal_series(60, seed=1)
    levels = (0.9, 0.05, 0.5, 0.25)  # any order in; sorted out
    forecast = make_forecaster(name).fit(y, M).predict(7, levels)
    assert forecast.mean.shape == (7,)
    np.testing.assert_array_equal(forecast.levels, sorted(levels))
    assert forecast.quantiles.shape == (4, 7)
    assert np.all(np.diff(forecast.quantiles, axis=0) >= 0)
    assert np.all(np.isfinite(forecast.quantiles)) and np.all(np.isfinite(forecast.mean))


@pytest.mark.parametrize("cls", [Naive, Theta, Ets])
def test_80_percent_band_covers_about_80_percent_of_a_random_walk(cls: type[Forecaster]) -> None:
    rng = np.random.default_rng(11)
    covered = []
    for _ in range(25):
        y = np.cumsum(rng.normal(0, 1, 80 + H))
        forecast = cls().fit(y[:-H]).predict(H, (0.1, 0.9))
        covered.append((forecast.quantile(0.1) <= y[-H:]) & (y[-H:] <= forecast.quantile(0.9)))
    assert 0.65 <= float(np.mean(covered)) <= 0.92


@pytest.mark.parametrize("cls", [Naive, Arima])
def test_80_percent_band_covers_about_80_percent_of_white_noise(cls: type[Forecaster]) -> None:
    rng = np.random.default_rng(12)
    covered = []
    for _ in range(10):
        y = 5 + rng.normal(0, 1, 60 + H)
        forecast = cls().fit(y[:-H]).predict(H, (0.1, 0.9))
        covered.append((forecast.quantile(0.1) <= y[-H:]) & (y[-H:] <= forecast.quantile(0.9)))
    coverage = float(np.mean(covered))
    # Naive's random-walk bands widen with sqrt(h) on a stationary series: over-covering is expected.
    assert 0.65 <= coverage <= (1.0 if cls is Naive else 0.92)


@pytest.mark.parametrize("cls", [Naive, SeasonalNaive])
def test_fitted_values_are_one_step_forecasts_of_the_naive_models(cls: type[Forecaster]) -> None:
    y = seasonal_series(40, seed=2)
    fitted = cls().fit(y, M).fitted_  # type: ignore[attr-defined]
    for t in range(M, len(y)):
        assert cls().fit(y[:t], M).predict(1).mean[0] == pytest.approx(fitted[t])
    assert np.all(np.isnan(fitted[:1]))


def test_fitted_values_are_one_step_forecasts_of_ets() -> None:
    # Exact check with the chosen model's parameters fixed: filter y[:t] with them, forecast 1 step.
    from statsmodels.tsa.exponential_smoothing.ets import ETSModel

    y = seasonal_series(72, seed=4) + 0.3 * np.arange(72)
    ets = Ets().fit(y, M)
    res = ets.result_
    assert ets.fallback_ is None and ets.spec_["seasonal"] == "add"
    known = {"initial_level": res.initial_level, "initial_seasonal": res.initial_seasonal}
    if ets.spec_["trend"]:
        known["initial_trend"] = res.initial_trend
    for t in (30, 50, 71):
        model = ETSModel(y[:t], initialization_method="known", **ets.spec_, **known)
        assert model.smooth(res.params).forecast(1)[0] == pytest.approx(ets.fitted_[t])
    # and the full series' fitted values are those of the fitted model
    assert ets.predict(1).mean[0] == pytest.approx(res.forecast(1)[0])


def test_theta_fitted_values_are_its_one_step_recursion() -> None:
    y = trended_series(50, seed=5)
    theta = Theta().fit(y)
    assert np.all(np.isfinite(theta.fitted_)) and theta.fitted_.shape == y.shape
    # One step past the end, the same formula gives the forecast.
    assert theta.predict(1).mean[0] == pytest.approx(0.5 * theta.level_ + 0.5 * (theta.intercept_ + theta.slope_ * 51))


def test_seasonality_test_m4() -> None:
    assert seasonality_test(seasonal_series(), M)
    assert not seasonality_test(np.random.default_rng(0).normal(size=120), M)
    assert not seasonality_test(seasonal_series(30), M)  # fewer than 3 seasons


@pytest.mark.parametrize("name", sorted(FORECASTERS))
@pytest.mark.parametrize(
    "y", [np.array([3.0]), np.array([1.0, 2.0, 4.0]), np.full(30, 7.5)], ids=["one", "three", "const"]
)
def test_short_and_constant_series_do_not_raise(name: str, y: np.ndarray) -> None:
    forecast = make_forecaster(name).fit(y, M).predict(5)
    assert np.all(np.isfinite(forecast.quantiles))
    if np.ptp(y) == 0:
        np.testing.assert_allclose(forecast.mean, y[0])
        np.testing.assert_allclose(forecast.quantiles, y[0])


def test_short_seasonal_series_drop_seasonality() -> None:
    y = seasonal_series(20)  # fewer than two seasons of 12
    ets, arima = Ets().fit(y, M), Arima().fit(y, M)
    assert np.all(np.isfinite(ets.predict(3).mean)) and np.all(np.isfinite(arima.predict(3).mean))
    assert ets.spec_.get("seasonal") is None
    assert arima.seasonal_order_ == (0, 0, 0, 0)


@pytest.mark.parametrize("name", sorted(FORECASTERS))
def test_bad_input_raises_value_error(name: str) -> None:
    model = make_forecaster(name)
    with pytest.raises(ValueError, match="NaN"):
        model.fit(np.array([1.0, np.nan, 3.0]))
    with pytest.raises(ValueError, match="1-D"):
        model.fit(np.ones((3, 2)))
    with pytest.raises(ValueError, match="empty"):
        model.fit(np.array([]))
    with pytest.raises(ValueError, match="season_length"):
        model.fit(np.ones(5), 0)
    model.fit(np.arange(10.0))
    with pytest.raises(ValueError, match="horizon"):
        model.predict(0)
    with pytest.raises(ValueError, match="quantile"):
        model.predict(3, (0.5, 1.0))
    with pytest.raises(ValueError, match="quantile"):
        model.predict(3, (0.0,))


def test_predict_before_fit_raises() -> None:
    with pytest.raises(RuntimeError, match="fit"):
        Theta().predict(3)


def test_registry_and_factory() -> None:
    assert set(FORECASTERS) == {"naive", "seasonal-naive", "ets", "arima", "theta", "npts"}
    assert all(FORECASTERS[name].name == name for name in FORECASTERS)
    assert isinstance(make_forecaster("npts", num_samples=50, seed=3), Npts)
    with pytest.raises(ValueError, match="prophet"):
        make_forecaster("prophet")
    with pytest.raises(ValueError, match="alpha"):
        make_forecaster("ets", alpha=0.3)
    with pytest.raises(ValueError, match="num_samples"):
        make_forecaster("npts", num_samples=0)


def test_arima_forecast_is_the_state_space_forecast_of_its_parameters() -> None:
    # ARMA(1, 1) around a mean: our recursion and statsmodels' Kalman filter, run with the parameters
    # Arima estimated, must give the same forecast and standard errors (up to how the first residuals
    # are started, which has died out by the end of the series).
    from statsmodels.tsa.statespace.sarimax import SARIMAX

    rng = np.random.default_rng(21)
    e = rng.normal(0, 1, 401)
    x = np.zeros(400)
    for t in range(1, 400):
        x[t] = 0.7 * x[t - 1] + e[t] + 0.4 * e[t - 1]
    y = 10 + x
    model = Arima().fit(y)
    p, d, q = model.order_
    assert d == 0 and model.constant_ and p + q >= 1
    mu = model.params_[-1]
    assert abs(mu - 10) < 0.5
    res = SARIMAX(y - mu, order=(p, 0, q)).filter(np.r_[model.params_[: p + q], model.sigma2_])
    expected = res.get_forecast(H)
    forecast = model.predict(H, (0.5, 0.9))
    np.testing.assert_allclose(forecast.mean, expected.predicted_mean + mu, rtol=1e-6, atol=1e-6)
    se = (forecast.quantile(0.9) - forecast.mean) / 1.2815515655446004
    np.testing.assert_allclose(se, expected.se_mean, rtol=1e-3)
    # in-sample one-step predictions are y minus the residuals
    np.testing.assert_allclose(model.fitted_[-5:], y[-5:] - model.resid_[-5:])


def test_arima_finds_the_seasonal_difference_and_the_order_limits_hold() -> None:
    y = seasonal_series(144, seed=6)
    model = Arima(max_p=1, max_q=1, max_P=0, max_Q=0).fit(y, M)
    p, _, q = model.order_
    sp, big_d, sq, m = model.seasonal_order_
    assert big_d == 1 and m == M and sp == sq == 0 and p <= 1 and q <= 1
    with pytest.raises(ValueError, match="max_models"):
        Arima(max_models=0)
