"""Forecast accuracy measures: M4 definitions (sMAPE, MASE, OWA) and Amazon Forecast's (wQL, WAPE, RMSE, MAPE).

Notation for one series: actuals y_t and point forecasts f_t over the horizon t = 1..h, in-sample
(training) values x_1..x_n, seasonal period m, quantile forecasts q_t(tau) at levels tau in (0, 1).
Quantile forecasts use the layout of `base.Forecast`: `levels` (k,) and `quantiles` (k, h).

Per series (`evaluate_forecast`) and over many series (`aggregate`), the aggregation follows each
measure's source:
  sMAPE, MASE      the M4 way: computed per series, then the plain mean over series;
  WAPE, wQL        the Amazon Forecast way: numerator and denominator summed over every series
                   and time point, then divided (large series weigh more);
  RMSE             the square root of the mean squared error over every series and time point;
  MAPE             the mean of |y - f| / |y| over every series and time point with y != 0.
OWA is computed from aggregated sMAPE and MASE and those of Naive2 on the same series (M4 rule).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike

_NAN = float("nan")


def _as_float(a: ArrayLike) -> np.ndarray:
    return np.asarray(a, dtype=np.float64)


def _pair(y: ArrayLike, f: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    ya, fa = _as_float(y), _as_float(f)
    if ya.shape != fa.shape:
        raise ValueError(f"actuals {ya.shape} and forecasts {fa.shape} differ in shape")
    if ya.size == 0:
        raise ValueError("empty horizon")
    return ya, fa


def smape(y: ArrayLike, f: ArrayLike) -> float:
    """Symmetric MAPE in percent, as in M4: mean_t 200 |y_t - f_t| / (|y_t| + |f_t|), in [0, 200].

    A step where y_t = f_t = 0 counts as 0 (perfect); the M4 code would give NaN there.
    """
    ya, fa = _pair(y, f)
    num = 200.0 * np.abs(ya - fa)
    den = np.abs(ya) + np.abs(fa)
    terms = np.divide(num, den, out=np.zeros_like(num), where=den > 0)
    return float(terms.mean())


def mase_scale(insample: ArrayLike, season_length: int = 1) -> float:
    """M4's MASE scale: mean_{t>m} |x_t - x_{t-m}| (in-sample seasonal-naive MAE at lag m).

    As in the M4 evaluation code, from `insample[m:] - insample[:-m]`. When the series has no
    more than m values (never the case in M4) the lag falls back to 1; NaN for a single value.
    """
    x = _as_float(insample)
    m = season_length if season_length >= 1 and x.size > season_length else 1
    if x.size <= m:
        return _NAN
    return float(np.mean(np.abs(x[m:] - x[:-m])))


def mase(y: ArrayLike, f: ArrayLike, insample: ArrayLike, season_length: int = 1) -> float:
    """Mean absolute scaled error, as in M4: mean_t |y_t - f_t| / mase_scale(insample, m).

    NaN when the scale is 0 (an in-sample series constant at lag m) or undefined.
    """
    ya, fa = _pair(y, f)
    scale = mase_scale(insample, season_length)
    if not scale > 0:
        return _NAN
    return float(np.mean(np.abs(ya - fa)) / scale)


def owa(smape: float, mase: float, smape_naive2: float, mase_naive2: float) -> float:
    """Overall weighted average, as in M4: (sMAPE / sMAPE_Naive2 + MASE / MASE_Naive2) / 2."""
    return 0.5 * (smape / smape_naive2 + mase / mase_naive2)


def wape(y: ArrayLike, f: ArrayLike) -> float:
    """Weighted absolute percentage error: sum_t |y_t - f_t| / sum_t |y_t| (a ratio, not percent).

    NaN when every actual is 0.
    """
    ya, fa = _pair(y, f)
    den = float(np.abs(ya).sum())
    return float(np.abs(ya - fa).sum()) / den if den > 0 else _NAN


def rmse(y: ArrayLike, f: ArrayLike) -> float:
    """Root mean squared error: sqrt(mean_t (y_t - f_t)^2)."""
    ya, fa = _pair(y, f)
    return float(np.sqrt(np.mean((ya - fa) ** 2)))


def mape(y: ArrayLike, f: ArrayLike) -> float:
    """Mean absolute percentage error (a ratio, not percent): mean_{t: y_t != 0} |y_t - f_t| / |y_t|.

    Steps with a zero actual are left out; NaN when every actual is 0.
    """
    ya, fa = _pair(y, f)
    nz = ya != 0
    if not nz.any():
        return _NAN
    return float(np.mean(np.abs(ya[nz] - fa[nz]) / np.abs(ya[nz])))


def pinball_loss(y: ArrayLike, q: ArrayLike, level: float) -> np.ndarray:
    """Quantile (pinball) loss per step: tau max(y - q, 0) + (1 - tau) max(q - y, 0)."""
    ya, qa = _pair(y, q)
    if not 0.0 < level < 1.0:
        raise ValueError(f"quantile level must be in (0, 1), got {level}")
    diff = ya - qa
    loss: np.ndarray = np.maximum(level * diff, (level - 1.0) * diff)
    return loss


def wql(y: ArrayLike, q_forecast: ArrayLike, level: float) -> float:
    """Weighted quantile loss at `level` tau, as Amazon Forecast defines it:

    wQL[tau] = 2 sum_t [tau max(y_t - q_t, 0) + (1 - tau) max(q_t - y_t, 0)] / sum_t |y_t|.
    NaN when every actual is 0. wQL[0.5] equals WAPE of the median.
    """
    ya = _as_float(y)
    den = float(np.abs(ya).sum())
    return 2.0 * float(pinball_loss(ya, q_forecast, level).sum()) / den if den > 0 else _NAN


def mean_wql(y: ArrayLike, quantiles: ArrayLike, levels: ArrayLike) -> float:
    """Average wQL over the levels: mean_tau wQL[tau]; `quantiles` is (k, h), `levels` (k,)."""
    qa, la = _as_float(quantiles), _as_float(levels)
    if qa.ndim != 2 or qa.shape[0] != la.size or la.size == 0:
        raise ValueError(f"quantiles {qa.shape} must be (len(levels)={la.size}, h)")
    return float(np.mean([wql(y, qa[i], float(la[i])) for i in range(la.size)]))


@dataclass(frozen=True)
class ErrorMetrics:
    """Accuracy of one series' forecast, or of many (`aggregate`), with the sums behind it.

    smape is in percent; wape, mape and wql are ratios. `wql` holds one value per level in
    `levels` (empty when no quantiles were scored; mean_wql is then NaN). The `sum_*` and `n_*`
    fields are the additive parts that `aggregate` pools over series.
    """

    smape: float
    mase: float
    wape: float
    rmse: float
    mape: float
    levels: tuple[float, ...]
    wql: tuple[float, ...]
    mean_wql: float
    n_series: int
    n_points: int
    sum_abs_error: float
    sum_abs_actual: float
    sum_sq_error: float
    sum_ape: float
    n_ape: int
    sum_pinball: tuple[float, ...]


def evaluate_forecast(
    y_true: ArrayLike,
    mean: ArrayLike,
    levels: ArrayLike | None = None,
    quantiles: ArrayLike | None = None,
    insample: ArrayLike | None = None,
    season_length: int = 1,
) -> ErrorMetrics:
    """Every measure for one series: point measures on `mean`, wQL on `quantiles` (k, h) at `levels` (k,).

    MASE needs `insample` (the training series); without it MASE is NaN.
    """
    ya, fa = _pair(y_true, mean)
    err = ya - fa
    nz = ya != 0
    lv: tuple[float, ...] = ()
    pin: tuple[float, ...] = ()
    if levels is not None and quantiles is not None:
        la, qa = _as_float(levels).ravel(), _as_float(quantiles)
        if qa.ndim == 1:
            qa = qa[None, :]
        if qa.shape != (la.size, ya.size):
            raise ValueError(f"quantiles {qa.shape} must be (len(levels)={la.size}, h={ya.size})")
        lv = tuple(float(v) for v in la)
        pin = tuple(float(pinball_loss(ya, qa[i], lv[i]).sum()) for i in range(la.size))
    sum_abs_actual = float(np.abs(ya).sum())
    return _finish(
        smape=smape(ya, fa),
        mase=mase(ya, fa, insample, season_length) if insample is not None else _NAN,
        n_series=1,
        n_points=ya.size,
        sum_abs_error=float(np.abs(err).sum()),
        sum_abs_actual=sum_abs_actual,
        sum_sq_error=float((err**2).sum()),
        sum_ape=float((np.abs(err[nz]) / np.abs(ya[nz])).sum()),
        n_ape=int(nz.sum()),
        levels=lv,
        sum_pinball=pin,
    )


def aggregate(per_series: Sequence[ErrorMetrics]) -> ErrorMetrics:
    """Pools per-series results (see the module docstring for each measure's rule).

    sMAPE and MASE: plain mean over the series where they are finite (M4 has none that are not).
    wQL needs every series scored at the same levels.
    """
    if not per_series:
        raise ValueError("nothing to aggregate")
    levels = per_series[0].levels
    if any(s.levels != levels for s in per_series):
        raise ValueError("every series must be scored at the same quantile levels")
    return _finish(
        smape=_finite_mean([s.smape for s in per_series]),
        mase=_finite_mean([s.mase for s in per_series]),
        n_series=sum(s.n_series for s in per_series),
        n_points=sum(s.n_points for s in per_series),
        sum_abs_error=sum(s.sum_abs_error for s in per_series),
        sum_abs_actual=sum(s.sum_abs_actual for s in per_series),
        sum_sq_error=sum(s.sum_sq_error for s in per_series),
        sum_ape=sum(s.sum_ape for s in per_series),
        n_ape=sum(s.n_ape for s in per_series),
        levels=levels,
        sum_pinball=tuple(float(sum(s.sum_pinball[i] for s in per_series)) for i in range(len(levels))),
    )


def _finite_mean(values: Sequence[float]) -> float:
    a = np.asarray(values, dtype=np.float64)
    a = a[np.isfinite(a)]
    return float(a.mean()) if a.size else _NAN


def _finish(
    *,
    smape: float,
    mase: float,
    n_series: int,
    n_points: int,
    sum_abs_error: float,
    sum_abs_actual: float,
    sum_sq_error: float,
    sum_ape: float,
    n_ape: int,
    levels: tuple[float, ...],
    sum_pinball: tuple[float, ...],
) -> ErrorMetrics:
    """Derives the ratio measures from the sums."""
    wql_values = tuple(2.0 * p / sum_abs_actual if sum_abs_actual > 0 else _NAN for p in sum_pinball)
    return ErrorMetrics(
        smape=smape,
        mase=mase,
        wape=sum_abs_error / sum_abs_actual if sum_abs_actual > 0 else _NAN,
        rmse=float(np.sqrt(sum_sq_error / n_points)),
        mape=sum_ape / n_ape if n_ape else _NAN,
        levels=levels,
        wql=wql_values,
        mean_wql=float(np.mean(wql_values)) if wql_values else _NAN,
        n_series=n_series,
        n_points=n_points,
        sum_abs_error=sum_abs_error,
        sum_abs_actual=sum_abs_actual,
        sum_sq_error=sum_sq_error,
        sum_ape=sum_ape,
        n_ape=n_ape,
        sum_pinball=sum_pinball,
    )
