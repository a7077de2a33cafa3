"""Statistical forecasters: Naive, SeasonalNaive, Ets, Arima, Theta and Npts (numpy/scipy/statsmodels).

Each one fits one series and forecasts its mean plus quantiles. Models that cannot be fitted to a
series (too short, constant, or a failed optimisation) fall back to a simpler one instead of raising,
so that a predictor over thousands of series never fails on one odd series. Where a model defines
in-sample one-step-ahead predictions they are in `fitted_` (NaN where undefined).
"""

from __future__ import annotations

import functools
import math
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, ClassVar

import numpy as np
from scipy import optimize, signal, stats
from threadpoolctl import ThreadpoolController

from foretell.forecasting.base import DEFAULT_QUANTILES, Forecast, Forecaster

# ---------------------------------------------------------------- validation and shared helpers


def _check_series(y: np.ndarray) -> np.ndarray:
    try:
        arr = np.asarray(y, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"y must be numeric: {exc}") from exc
    if arr.ndim != 1:
        raise ValueError(f"y must be 1-D, got shape {arr.shape}")
    if not len(arr):
        raise ValueError("y is empty")
    if not np.all(np.isfinite(arr)):
        raise ValueError("y contains NaN or infinite values")
    return arr


def _check_season(season_length: int) -> int:
    if isinstance(season_length, bool) or int(season_length) != season_length or season_length < 1:
        raise ValueError(f"season_length must be an integer >= 1, got {season_length!r}")
    return int(season_length)


def _check_request(horizon: int, quantiles: tuple[float, ...]) -> tuple[int, np.ndarray]:
    if isinstance(horizon, bool) or int(horizon) != horizon or horizon < 1:
        raise ValueError(f"horizon must be an integer >= 1, got {horizon!r}")
    levels = np.asarray(quantiles, dtype=np.float64).reshape(-1)
    if not np.all((levels > 0) & (levels < 1)):  # also rejects NaN
        raise ValueError(f"quantile levels must be strictly inside (0, 1), got {list(quantiles)}")
    return int(horizon), np.unique(levels)  # sorted, as Forecast.levels promises


def _is_constant(y: np.ndarray) -> bool:
    return bool(np.ptp(y) <= 1e-12 * max(1.0, float(np.abs(y).max())))


def _normal_forecast(mean: np.ndarray, se: np.ndarray, levels: np.ndarray) -> Forecast:
    """Quantiles mean + z_q * se; se >= 0 keeps the rows ordered."""
    se = np.nan_to_num(np.maximum(se, 0.0), nan=0.0, posinf=0.0)
    z = stats.norm.ppf(levels)
    rows = mean[None, :] + z[:, None] * se[None, :]
    return Forecast(mean=mean.astype(np.float64), levels=levels, quantiles=np.maximum.accumulate(rows, axis=0))


def _residual_scale(y: np.ndarray, fitted: np.ndarray) -> float:
    """Root mean squared one-step residual over the steps where a fitted value exists."""
    resid = (y - fitted)[np.isfinite(fitted)]
    return float(np.sqrt(np.mean(resid**2))) if len(resid) else 0.0


@functools.cache
def _blas_controller() -> ThreadpoolController:
    return ThreadpoolController()  # scanning the loaded libraries costs ~1 ms: once per process


@contextmanager
def _quiet() -> Iterator[None]:
    # statsmodels warns on every hard series (convergence, non-invertible starts); a forecaster over
    # thousands of series would drown the logs, and the fallbacks handle the failures that matter.
    # BLAS runs single-threaded: the optimisers' tiny matrix calls only contend when OpenBLAS spreads
    # them over threads (ETS fits on M4 Weekly ran 7x slower on 2 busy cores).
    with warnings.catch_warnings(), np.errstate(all="ignore"), _blas_controller().limit(limits=1, user_api="blas"):
        warnings.simplefilter("ignore")
        yield


class _Fitted:
    """Mixin: the check that `fit` ran before `predict`."""

    def _require_fit(self) -> None:
        if getattr(self, "y_", None) is None:
            raise RuntimeError(f"{type(self).__name__}.fit must be called before predict")


# ---------------------------------------------------------------- naive family


class SeasonalNaive(_Fitted, Forecaster):
    """The value one season ago; naive when season_length == 1 or the series is shorter than a season.

    Intervals: residual RMS times sqrt(number of whole seasons ahead + 1), the seasonal random walk's.
    """

    name: ClassVar[str] = "seasonal-naive"

    def __init__(self) -> None:
        self.y_: np.ndarray | None = None
        self.fitted_: np.ndarray = np.empty(0)
        self.sigma_: float = 0.0
        self.season_length_: int = 1

    def fit(self, y: np.ndarray, season_length: int = 1) -> SeasonalNaive:
        y = _check_series(y)
        m = _check_season(season_length)
        if len(y) < m:
            m = 1
        self.y_, self.season_length_ = y, m
        self.fitted_ = np.concatenate([np.full(m, np.nan), y[:-m]])
        self.sigma_ = _residual_scale(y, self.fitted_)
        return self

    def predict(self, horizon: int, quantiles: tuple[float, ...] = DEFAULT_QUANTILES) -> Forecast:
        self._require_fit()
        assert self.y_ is not None
        horizon, levels = _check_request(horizon, quantiles)
        m, n = self.season_length_, len(self.y_)
        steps = np.arange(horizon)
        mean = self.y_[n - m + steps % m]
        return _normal_forecast(mean, self.sigma_ * np.sqrt(steps // m + 1.0), levels)


class Naive(SeasonalNaive):
    """The last value; intervals from the one-step residual RMS growing with sqrt(h) (random walk).

    Seasonal naive with a season of one step, whatever season_length says.
    """

    name: ClassVar[str] = "naive"

    def fit(self, y: np.ndarray, season_length: int = 1) -> Naive:
        _check_season(season_length)
        super().fit(y, 1)
        return self


class _WithFallback(_Fitted):
    """Shared plumbing of the models that hand a series they cannot fit to a simpler forecaster."""

    y_: np.ndarray | None
    fitted_: np.ndarray
    fallback_: Forecaster | None

    def _use_fallback(self, model: Naive | SeasonalNaive, y: np.ndarray, season_length: int) -> None:
        model.fit(y, season_length)
        self.fallback_ = model
        self.fitted_ = model.fitted_

    def _start(self, y: np.ndarray, season_length: int, min_length: int) -> tuple[np.ndarray, int] | None:
        """Checks the input and resets the state; None when the series went to the naive fallback
        (shorter than `min_length`, or constant)."""
        y = _check_series(y)
        m = _check_season(season_length)
        self.y_, self.fallback_ = y, None
        if len(y) < min_length or _is_constant(y):
            self._use_fallback(Naive(), y, m)
            return None
        return y, m


# ---------------------------------------------------------------- ETS


class Ets(_WithFallback, Forecaster):
    """Additive-error exponential smoothing (statsmodels ETSModel), the specification chosen by AICc.

    Candidates: trend none / additive / additive damped, times seasonal none / additive when
    season_length > 1 and the series holds at least two seasons. Intervals are the analytical ETS
    forecast variances (Hyndman & Athanasopoulos, FPP3 table 6.8).

    Hyper-parameters:
        damped: also consider the damped additive trend (default True).
        seasonal: consider seasonal models at all (default True).
    """

    name: ClassVar[str] = "ets"

    def __init__(self, damped: bool = True, seasonal: bool = True) -> None:
        self.damped = damped
        self.seasonal = seasonal
        self.y_ = None
        self.fitted_ = np.empty(0)
        self.fallback_ = None
        self.result_: Any = None  # statsmodels ETSResults of the chosen specification
        self.spec_: dict[str, Any] = {}

    def _candidates(self, n: int, m: int) -> list[dict[str, Any]]:
        trends: list[tuple[str | None, bool]] = [(None, False), ("add", False)]
        if self.damped:
            trends.append(("add", True))
        seasonals: list[str | None] = [None]
        if self.seasonal and m > 1 and n >= 2 * m:
            seasonals.append("add")
        specs = []
        for (trend, damped), seasonal in ((t, s) for t in trends for s in seasonals):
            k = 2 + (trend is not None) * 2 + damped + (m if seasonal else 0)  # params incl. initial states
            if n > k + 2:  # AICc needs n - k - 1 > 0; keep a margin
                specs.append(
                    {
                        "error": "add",
                        "trend": trend,
                        "damped_trend": damped,
                        "seasonal": seasonal,
                        "seasonal_periods": m if seasonal else None,
                    }
                )
        return specs

    def fit(self, y: np.ndarray, season_length: int = 1) -> Ets:
        from statsmodels.tsa.exponential_smoothing.ets import ETSModel

        self.result_, self.spec_ = None, {}
        started = self._start(y, season_length, 4)
        if started is None:
            return self
        y, m = started
        # The heuristic initial states (a regression on the first seasons) make each fit ~20x faster
        # than estimating them; every candidate uses the same method so their AICc stay comparable.
        init = "heuristic" if len(y) >= 10 else "estimated"
        best: tuple[float, Any, dict[str, Any]] | None = None
        with _quiet():
            for spec in self._candidates(len(y), m):
                try:
                    res = ETSModel(y, initialization_method=init, **spec).fit(disp=False)
                except Exception:  # statsmodels raises many types on degenerate data
                    continue
                score = float(res.aicc)
                if np.isfinite(score) and np.all(np.isfinite(res.fittedvalues)) and (best is None or score < best[0]):
                    best = (score, res, spec)
        if best is None:
            self._use_fallback(Naive(), y, m)
            return self
        _, self.result_, self.spec_ = best
        self.fitted_ = np.asarray(self.result_.fittedvalues, dtype=np.float64)
        return self

    def predict(self, horizon: int, quantiles: tuple[float, ...] = DEFAULT_QUANTILES) -> Forecast:
        self._require_fit()
        horizon, levels = _check_request(horizon, quantiles)
        if self.fallback_ is not None:
            return self.fallback_.predict(horizon, tuple(levels))
        res = self.result_
        with _quiet():
            mean = np.asarray(res.forecast(horizon), dtype=np.float64)
            # The public get_prediction breaks on plain ndarray input in statsmodels 0.15; this is
            # the exact (analytical) variance it would use.
            var = float(res.mse) * np.asarray(res._relative_forecast_variance(np.arange(1, horizon + 1)))
        return _normal_forecast(mean, np.sqrt(np.maximum(var, 0.0)), levels)


# ---------------------------------------------------------------- ARIMA


def _seasonal_strength(y: np.ndarray, m: int) -> float:
    """Hyndman's F_s = max(0, 1 - var(remainder) / var(seasonal + remainder)) from an STL fit."""
    from statsmodels.tsa.seasonal import STL

    with _quiet():
        res = STL(y, period=m, robust=False).fit()
    detrended = np.asarray(res.seasonal) + np.asarray(res.resid)
    var = float(np.var(detrended))
    return 0.0 if var <= 0 else max(0.0, 1.0 - float(np.var(res.resid)) / var)


def _ndiffs(y: np.ndarray, max_d: int = 2, alpha: float = 0.05) -> int:
    """Differences needed until the KPSS level-stationarity test no longer rejects (auto.arima's rule)."""
    from statsmodels.tsa.stattools import kpss

    d = 0
    while d < max_d and len(y) > 10 and not _is_constant(y):
        with _quiet():
            pvalue = float(kpss(y, regression="c", nlags="auto")[1])
        if pvalue >= alpha:
            break
        y, d = np.diff(y), d + 1
    return d


def _seasonal_poly(coefs: np.ndarray, m: int, sign: float) -> np.ndarray:
    """1 + sign * (c_1 B^m + c_2 B^2m + ...) as coefficients of B^0, B^1, ..."""
    poly = np.zeros(len(coefs) * m + 1)
    poly[0] = 1.0
    poly[m::m] = sign * coefs
    return poly


def _arma_polys(params: np.ndarray, order: tuple[int, int, int, int], m: int) -> tuple[np.ndarray, np.ndarray]:
    """AR polynomial phi(B) Phi(B^m) and MA polynomial theta(B) Theta(B^m) of ARMA(p, q)(P, Q)_m."""
    p, q, sp, sq = order
    ar = np.empty(p + 1)
    ar[0], ar[1:] = 1.0, -params[:p]
    ma = np.empty(q + 1)
    ma[0], ma[1:] = 1.0, params[p : p + q]
    if sp:
        ar = np.convolve(ar, _seasonal_poly(params[p + q : p + q + sp], m, -1.0))
    if sq:
        ma = np.convolve(ma, _seasonal_poly(params[p + q + sp : p + q + sp + sq], m, 1.0))
    return ar, ma


def _inside_unit_circle(coefs: np.ndarray) -> bool:
    """Whether 1 - c_1 x - c_2 x^2 - ... has a root with |x| <= 1.001 (non-stationary / non-invertible)."""
    if not len(coefs) or not np.any(coefs):
        return False
    roots = np.roots(np.r_[-coefs[::-1], 1.0])
    return bool(np.any(np.abs(roots) <= 1.001))


class Arima(_WithFallback, Forecaster):
    """Seasonal ARIMA fitted by conditional sum of squares, orders by auto.arima's stepwise AICc search.

    d from repeated KPSS tests, seasonal D = 1 when the STL seasonal strength exceeds 0.64 (both
    auto.arima's rules). Each candidate ARMA(p, q)(P, Q)_m (plus a mean, or a drift when d + D = 1) is
    fitted to the differenced series by conditional least squares (scipy's Levenberg-Marquardt over
    the residuals of two linear filters), which is what auto.arima's search does on long or seasonal
    series and is ~100x faster than a state-space likelihood. Every candidate conditions on the same
    first max_p + max_P * m differenced values, so their AICc compare like with like. Models whose AR
    or MA polynomial has a root on or inside the unit circle are rejected. Forecasts, standard errors
    (psi weights) and in-sample one-step predictions come from the same recursion on the original scale.

    Hyper-parameters:
        max_p, max_q: highest non-seasonal AR / MA orders (default 3; on M4, auto.arima's 5 overfits Hourly
            (OWA 0.554 against 0.526) and 2 underfits Weekly (0.868 against 0.854)).
        max_P, max_Q: highest seasonal AR / MA orders (default 1: on M4 Hourly, 2 costs time for nothing).
        max_models: most candidate fits per series (default 20; 40 gave the same M4 Weekly accuracy).
    """

    name: ClassVar[str] = "arima"

    def __init__(
        self,
        max_p: int = 3,
        max_q: int = 3,
        max_P: int = 1,  # the conventional names of the seasonal orders
        max_Q: int = 1,
        max_models: int = 20,
    ) -> None:
        if min(max_p, max_q, max_P, max_Q) < 0 or max_models < 1:
            raise ValueError("ARIMA order limits must be >= 0 and max_models >= 1")
        self.max_p, self.max_q, self.max_P, self.max_Q = max_p, max_q, max_P, max_Q
        self.max_models = max_models
        self.y_ = None
        self.fitted_ = np.empty(0)
        self.fallback_ = None
        self.order_: tuple[int, int, int] = (0, 0, 0)
        self.seasonal_order_: tuple[int, int, int, int] = (0, 0, 0, 0)
        self.constant_: bool = False
        self.params_: np.ndarray = np.empty(0)  # phi, theta, Phi, Theta, then the mean when constant_
        self.sigma2_: float = 0.0
        self.aicc_: float = math.inf
        self.resid_: np.ndarray = np.empty(0)  # one-step residuals of the last len(resid_) values of y

    def fit(self, y: np.ndarray, season_length: int = 1) -> Arima:
        started = self._start(y, season_length, 4)
        if started is None:
            return self
        y, m = started
        n = len(y)
        if m > 1 and n < 2 * m:
            m = 1  # too short to estimate any seasonal structure
        big_d = int(m > 1 and n >= 3 * m and _seasonal_strength(y, m) > 0.64)
        z = y[m:] - y[:-m] if big_d else y
        d = _ndiffs(z)
        z = np.diff(z, n=d) if d else z
        if len(z) < 4 or _is_constant(z):
            # Fully explained by differencing: the (seasonal) random walk is the model.
            self._use_fallback(SeasonalNaive() if big_d else Naive(), y, m)
            return self
        seasonal = m > 1
        limits = (self.max_p, self.max_q, self.max_P if seasonal else 0, self.max_Q if seasonal else 0)
        ncond = limits[0] + limits[2] * m
        if len(z) - ncond < 8:  # too short for the widest model: condition on less, search less
            limits = (min(limits[0], 1), min(limits[1], 1), 0, 0)
            ncond = limits[0]
        allow_constant = d + big_d <= 1
        scale = float(np.std(z)) or 1.0
        w = z / scale  # unit scale: the optimiser's tolerances and starting point suit every series

        Key = tuple[int, int, int, int, bool]
        tried: dict[Key, tuple[float, np.ndarray, np.ndarray]] = {}

        def evaluate(key: Key) -> None:
            if key in tried or len(tried) >= self.max_models:
                return
            order, const = key[:4], key[4]
            if any(v < 0 or v > hi for v, hi in zip(order, limits, strict=True)) or (const and not allow_constant):
                return
            tried[key] = _css_fit(w, order, const, m, ncond)

        def best() -> Key:
            return min(tried, key=lambda k: tried[k][0])

        starts: list[Key] = [(2, 2, 1, 1, True), (0, 0, 0, 0, True), (1, 0, 1, 0, True), (0, 1, 0, 1, True)]
        with _quiet():
            for p, q, sp, sq, c in starts:
                evaluate(
                    (min(p, limits[0]), min(q, limits[1]), min(sp, limits[2]), min(sq, limits[3]), c and allow_constant)
                )
            if allow_constant:
                evaluate((0, 0, 0, 0, False))
            current = best()
            while len(tried) < self.max_models:
                p, q, sp, sq, c = current
                moves: list[Key] = [
                    (p, q, sp + ds, sq + dq, c) for ds, dq in ((-1, 0), (1, 0), (0, -1), (0, 1), (-1, -1), (1, 1))
                ] + [(p + dp, q + dq, sp, sq, c) for dp, dq in ((-1, 0), (1, 0), (0, -1), (0, 1), (-1, -1), (1, 1))]
                moves.append((p, q, sp, sq, not c))
                for key in moves:
                    evaluate(key)
                new = best()
                if new == current:
                    break
                current = new
        aicc, params, resid = tried[current]
        if not math.isfinite(aicc):
            self._use_fallback(SeasonalNaive() if big_d else Naive(), y, m)
            return self
        p, q, sp, sq, const = current
        self.order_ = (p, d, q)
        self.seasonal_order_ = (sp, big_d, sq, m) if seasonal else (0, 0, 0, 0)
        self.constant_ = const
        if const:
            params = params.copy()
            params[-1] *= scale  # the mean back on the data's scale (ARMA coefficients are scale-free)
        self.params_, self.aicc_ = params, aicc
        self.resid_ = resid * scale
        self.sigma2_ = float(np.mean(self.resid_**2))
        fitted = np.full(n, np.nan)
        fitted[n - len(resid) :] = y[n - len(resid) :] - self.resid_
        self.fitted_ = fitted
        return self

    def _polys(self) -> tuple[np.ndarray, np.ndarray, float]:
        """The model on y's scale: A(B) y_t = c + M(B) e_t, A including the differences."""
        p, d, q = self.order_
        sp, big_d, sq, m = self.seasonal_order_
        ar, ma = _arma_polys(self.params_, (p, q, sp, sq), max(m, 1))
        c = float(self.params_[-1] * ar.sum()) if self.constant_ else 0.0
        full = ar
        for _ in range(d):
            full = np.convolve(full, [1.0, -1.0])
        if big_d:
            full = np.convolve(full, _seasonal_poly(np.ones(1), m, -1.0))
        return full, ma, c

    def predict(self, horizon: int, quantiles: tuple[float, ...] = DEFAULT_QUANTILES) -> Forecast:
        self._require_fit()
        assert self.y_ is not None
        horizon, levels = _check_request(horizon, quantiles)
        if self.fallback_ is not None:
            return self.fallback_.predict(horizon, tuple(levels))
        a, b, c = self._polys()
        ka, kb = len(a) - 1, len(b) - 1
        history = np.r_[self.y_[-ka:] if ka else np.empty(0), np.zeros(horizon)]
        shocks = np.r_[np.zeros(max(0, kb - len(self.resid_))), self.resid_[-kb:] if kb else np.empty(0)]
        shocks = np.r_[shocks, np.zeros(horizon)]
        for j in range(horizon):
            ar_part = float(a[1:] @ history[ka + j - 1 :: -1][:ka]) if ka else 0.0
            ma_part = float(b[1:] @ shocks[kb + j - 1 :: -1][:kb]) if kb else 0.0
            history[ka + j] = c - ar_part + ma_part
        psi = signal.lfilter(b, a, np.r_[1.0, np.zeros(horizon - 1)])
        se = np.sqrt(self.sigma2_ * np.cumsum(psi**2))
        return _normal_forecast(history[ka:], se, levels)


def _css_fit(
    w: np.ndarray, order: tuple[int, int, int, int], constant: bool, m: int, ncond: int
) -> tuple[float, np.ndarray, np.ndarray]:
    """Conditional-sum-of-squares ARMA fit: (AICc, parameters, residuals after the first ncond values).

    (math.inf, ...) when it fails or the fitted polynomials are not stationary and invertible.
    """
    p, q, sp, sq = order
    k = p + q + sp + sq + constant
    nobs = len(w) - ncond
    failed = (math.inf, np.zeros(k), np.zeros(max(nobs, 0)))
    if nobs <= k + 2:
        return failed

    one = np.ones(1)

    def residuals(params: np.ndarray) -> np.ndarray:
        ar, ma = _arma_polys(params, order, m)
        x = w - params[-1] if constant else w
        v = np.convolve(x, ar)[ncond : len(x)]  # ar(B) x_t for t >= ncond (>= the AR order)
        e = signal.lfilter(one, ma, v) if len(ma) > 1 else v
        # An explosive MA filter overflows: a large finite loss steers the optimiser back.
        return e if np.isfinite(e).all() else np.full(len(e), 1e6)

    x0 = np.zeros(k)
    if constant:
        x0[-1] = float(np.mean(w))
    try:
        if k:
            sol = optimize.least_squares(residuals, x0, method="lm", ftol=1e-4, xtol=1e-4, max_nfev=100 * (k + 1))
            params = np.asarray(sol.x)
        else:
            params = x0
    except (ValueError, np.linalg.LinAlgError):
        return failed
    phi, theta, s_phi, s_theta = np.split(params[: p + q + sp + sq], np.cumsum([p, q, sp]))
    if any(_inside_unit_circle(c) for c in (phi, -theta, s_phi, -s_theta)):
        return failed
    e = residuals(params)
    sigma2 = float(np.mean(e**2))
    if not (math.isfinite(sigma2) and sigma2 > 0):
        return failed
    n_par = k + 1  # and the innovation variance
    loglik = -0.5 * nobs * (math.log(2 * math.pi * sigma2) + 1.0)
    aicc = -2.0 * loglik + 2.0 * n_par + 2.0 * n_par * (n_par + 1) / (nobs - n_par - 1)
    return aicc, params, e


# ---------------------------------------------------------------- Theta


def _acf(y: np.ndarray, max_lag: int) -> np.ndarray:
    """Sample autocorrelations at lags 1..max_lag (R's acf estimator: mean-centred, divided by n * var)."""
    x = y - y.mean()
    denom = float(x @ x)
    if denom <= 0:
        return np.zeros(max_lag)
    return np.array([float(x[k:] @ x[:-k]) / denom for k in range(1, max_lag + 1)])


def seasonality_test(y: np.ndarray, m: int) -> bool:
    """The M4 benchmarks' test: |acf(m)| above the 90% one-sided limit, with Bartlett's variance; n >= 3m."""
    if m <= 1 or len(y) < 3 * m:
        return False
    r = _acf(y, m)
    limit = 1.645 / math.sqrt(len(y)) * math.sqrt(1.0 + 2.0 * float(np.sum(r[:-1] ** 2)))
    return bool(abs(r[-1]) > limit)


def _seasonal_indices(y: np.ndarray, m: int, multiplicative: bool) -> np.ndarray:
    """Classical decomposition's seasonal figure (R's `decompose`), position i is time i mod m."""
    # Even m: the 2 x m centred moving average.
    weights = np.full(m, 1.0 / m) if m % 2 else np.concatenate([[0.5], np.ones(m - 1), [0.5]]) / m
    trend = np.full(len(y), np.nan)
    half = len(weights) // 2
    trend[half : len(y) - half] = np.convolve(y, weights, mode="valid")
    detrended = y / trend if multiplicative else y - trend
    pad = (-len(y)) % m
    table = np.concatenate([detrended, np.full(pad, np.nan)]).reshape(-1, m)
    figure = np.nanmean(table, axis=0)
    return figure / figure.mean() if multiplicative else figure - figure.mean()


def _ses(z: np.ndarray) -> tuple[float, np.ndarray, float]:
    """Simple exponential smoothing, alpha and initial level by least squares.

    Returns alpha, the one-step in-sample forecasts and the final level. For a given alpha the
    forecasts are linear in the initial level, so it has a closed form and only alpha is searched.
    """
    n = len(z)

    def run(alpha: float) -> tuple[float, np.ndarray, float]:
        decay = (1.0 - alpha) ** np.arange(n)  # weight of l0 in the forecast of step t
        # Levels with l0 = 0: l_t = alpha z_t + (1 - alpha) l_{t-1}.
        level0 = signal.lfilter([alpha], [1.0, -(1.0 - alpha)], z)
        base = np.concatenate([[0.0], level0[:-1]])  # forecast of step t = level after step t-1
        l0 = float(decay @ (z - base)) / float(decay @ decay)
        forecasts = base + decay * l0
        final = level0[-1] + (1.0 - alpha) ** n * l0
        return float(np.sum((z - forecasts) ** 2)), forecasts, float(final)

    best = optimize.minimize_scalar(
        lambda a: run(a)[0], bounds=(1e-4, 0.9999), method="bounded", options={"xatol": 1e-5}
    )
    alpha = float(best.x)
    _, forecasts, final = run(alpha)
    return alpha, forecasts, final


class Theta(_WithFallback, Forecaster):
    """The standard Theta method as in the M4 benchmark (Assimakopoulos & Nikolopoulos, 2000).

    When M4's 90% autocorrelation test at lag season_length says the series is seasonal, it is
    deseasonalised by classical multiplicative decomposition (additive when some value is <= 0). The
    theta = 2 line (2 y - linear trend) is forecast by SES and averaged with the extrapolated linear
    trend (theta = 0 line), which equals SES plus half the trend slope; then reseasonalised. Intervals:
    the in-sample one-step residual RMS growing with sqrt(h).
    """

    name: ClassVar[str] = "theta"

    def __init__(self) -> None:
        self.y_ = None
        self.fitted_ = np.empty(0)
        self.fallback_ = None
        self.season_: np.ndarray = np.ones(1)
        self.multiplicative_: bool = True
        self.intercept_: float = 0.0
        self.slope_: float = 0.0
        self.alpha_: float = 0.0
        self.level_: float = 0.0
        self.sigma_: float = 0.0

    def fit(self, y: np.ndarray, season_length: int = 1) -> Theta:
        started = self._start(y, season_length, 3)
        if started is None:
            return self
        y, m = started
        n = len(y)
        self.multiplicative_ = bool(np.all(y > 0))
        if seasonality_test(y, m):
            self.season_ = _seasonal_indices(y, m, self.multiplicative_)
        else:
            self.season_ = np.ones(1) if self.multiplicative_ else np.zeros(1)
        season_in = self.season_[np.arange(n) % len(self.season_)]
        des = y / season_in if self.multiplicative_ else y - season_in
        t = np.arange(1, n + 1, dtype=np.float64)
        self.slope_, self.intercept_ = (float(v) for v in np.polyfit(t, des, 1))
        line0 = self.intercept_ + self.slope_ * t
        self.alpha_, ses_in, self.level_ = _ses(2.0 * des - line0)
        des_fit = 0.5 * ses_in + 0.5 * line0
        self.fitted_ = des_fit * season_in if self.multiplicative_ else des_fit + season_in
        self.sigma_ = _residual_scale(y, self.fitted_)
        return self

    def predict(self, horizon: int, quantiles: tuple[float, ...] = DEFAULT_QUANTILES) -> Forecast:
        self._require_fit()
        assert self.y_ is not None
        horizon, levels = _check_request(horizon, quantiles)
        if self.fallback_ is not None:
            return self.fallback_.predict(horizon, tuple(levels))
        n = len(self.y_)
        t = np.arange(n + 1, n + horizon + 1, dtype=np.float64)
        des = 0.5 * self.level_ + 0.5 * (self.intercept_ + self.slope_ * t)
        season = self.season_[(t.astype(np.int64) - 1) % len(self.season_)]
        mean = des * season if self.multiplicative_ else des + season
        return _normal_forecast(mean, self.sigma_ * np.sqrt(np.arange(1, horizon + 1.0)), levels)


# ---------------------------------------------------------------- NPTS


class Npts(_Fitted, Forecaster):
    """Non-Parametric Time Series forecaster (GluonTS / Amazon Forecast NPTS).

    Each future value is a past value drawn with probability proportional to exp(-feature_scale * age),
    age counted from the step being forecast; each drawn value joins its sample path's history before
    the next step is drawn. Mean and quantiles come from `num_samples` paths. It only ever predicts
    values seen before, which suits intermittent (mostly zero) demand.

    Hyper-parameters:
        num_samples: sample paths (default 200).
        feature_scale: decay of the exponential kernel per step of age (default 0.01 as in Amazon
            Forecast; 0 samples the whole history uniformly).
        context_length: most recent observations to sample from (default None: all of them).
        seed: seed of the sampler, for repeatable forecasts (default 0).
    """

    name: ClassVar[str] = "npts"

    def __init__(
        self, num_samples: int = 200, feature_scale: float = 0.01, context_length: int | None = None, seed: int = 0
    ) -> None:
        if num_samples < 1:
            raise ValueError(f"num_samples must be >= 1, got {num_samples}")
        if not feature_scale >= 0:
            raise ValueError(f"feature_scale must be >= 0, got {feature_scale}")
        if context_length is not None and context_length < 1:
            raise ValueError(f"context_length must be >= 1 or None, got {context_length}")
        self.num_samples = num_samples
        self.feature_scale = feature_scale
        self.context_length = context_length
        self.seed = seed
        self.y_: np.ndarray | None = None

    def fit(self, y: np.ndarray, season_length: int = 1) -> Npts:
        y = _check_series(y)
        _check_season(season_length)
        self.y_ = y if self.context_length is None else y[-self.context_length :]
        return self

    def sample_paths(self, horizon: int) -> np.ndarray:
        """(num_samples, horizon) sample paths; the same for the same seed and series."""
        self._require_fit()
        assert self.y_ is not None
        rng = np.random.default_rng(self.seed)
        n, s = len(self.y_), self.num_samples
        history = np.empty((s, n + horizon))
        history[:, :n] = self.y_
        window = n if self.context_length is None else self.context_length
        for step in range(horizon):
            end = n + step  # index of the value being drawn
            start = max(0, end - window)
            log_w = -self.feature_scale * np.arange(end - start, 0, -1, dtype=np.float64)
            w = np.exp(log_w - log_w.max())
            picks = start + rng.choice(end - start, size=s, p=w / w.sum())
            history[:, end] = history[np.arange(s), picks]
        return history[:, n:]

    def predict(self, horizon: int, quantiles: tuple[float, ...] = DEFAULT_QUANTILES) -> Forecast:
        self._require_fit()
        horizon, levels = _check_request(horizon, quantiles)
        paths = self.sample_paths(horizon)
        rows = np.quantile(paths, levels, axis=0)
        return Forecast(mean=paths.mean(axis=0), levels=levels, quantiles=np.maximum.accumulate(rows, axis=0))


# ---------------------------------------------------------------- registry

FORECASTERS: dict[str, type[Forecaster]] = {cls.name: cls for cls in (Naive, SeasonalNaive, Ets, Arima, Theta, Npts)}


def make_forecaster(name: str, **params: Any) -> Forecaster:
    """A new forecaster of algorithm `name` with hyper-parameters `params`; ValueError for unknown ones."""
    import inspect

    cls = FORECASTERS.get(name)
    if cls is None:
        raise ValueError(f"unknown forecasting algorithm {name!r}; known: {', '.join(sorted(FORECASTERS))}")
    accepted = [p for p in inspect.signature(cls.__init__).parameters if p != "self"]
    unknown = sorted(set(params) - set(accepted))
    if unknown:
        raise ValueError(
            f"unknown parameter(s) {', '.join(unknown)} for {name!r}; accepted: {', '.join(accepted) or 'none'}"
        )
    factory: Callable[..., Forecaster] = cls
    return factory(**params)
