"""AutoML for one series: backtest every candidate on the latest `horizon` steps, then forecast with
the best one (`select`) or with the average of the best `top` (`ensemble`).

The backtest fits each candidate on the series without its last `horizon` values and scores the
forecast of those values by MASE (scale from the truncated series, lag season_length), the M4
measure that compares across series. The chosen candidates are then refitted on the whole series.
Averaging keeps quantile rows ordered (a mean of non-decreasing rows is non-decreasing); the
ensemble is what M4's strong entries did, and it is steadier than a pick on one short window.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import ClassVar

import numpy as np

from foretell.forecasting.base import DEFAULT_QUANTILES, Forecast, Forecaster
from foretell.forecasting.metrics import mase
from foretell.forecasting.models import make_forecaster

DEFAULT_CANDIDATES: tuple[str, ...] = ("ets", "arima", "theta", "seasonal-naive")


class AutoMl(Forecaster):
    """Chooses among `candidates` per series by a one-window backtest (see the module docstring)."""

    name: ClassVar[str] = "automl"

    def __init__(
        self,
        horizon: int,
        candidates: tuple[str, ...] = DEFAULT_CANDIDATES,
        mode: str = "ensemble",
        top: int = 2,
    ) -> None:
        if horizon < 1:
            raise ValueError(f"horizon must be >= 1, got {horizon}")
        if mode not in ("select", "ensemble"):
            raise ValueError(f"mode must be select or ensemble, got {mode!r}")
        if not candidates or top < 1:
            raise ValueError("AutoML needs at least one candidate and top >= 1")
        for candidate in candidates:
            make_forecaster(candidate)  # ValueError naming an unknown algorithm
        self.horizon = horizon
        self.candidates = tuple(candidates)
        self.mode = mode
        self.top = top
        self.scores_: dict[str, float] = {}
        self.chosen_: list[str] = []
        self.models_: list[Forecaster] = []

    def fit(self, y: np.ndarray, season_length: int = 1) -> AutoMl:
        y = np.asarray(y, dtype=np.float64)
        h = self.horizon
        self.scores_ = {}
        keep = 1 if self.mode == "select" else min(self.top, len(self.candidates))
        # A backtest needs a training part of at least two windows; shorter series skip it, and so
        # does an ensemble of every candidate (nothing to choose).
        if len(y) >= 3 * h and keep < len(self.candidates):
            train, held = y[:-h], y[-h:]
            for name in self.candidates:
                mean = make_forecaster(name).fit(train, season_length).predict(h).mean
                score = mase(held, mean, train, season_length)
                self.scores_[name] = score if np.isfinite(score) else np.inf
            ranked = sorted(self.candidates, key=lambda n: self.scores_[n])
        else:
            ranked = list(self.candidates)
        self.chosen_ = ranked[:keep]
        self.models_ = [make_forecaster(name).fit(y, season_length) for name in self.chosen_]
        return self

    def predict(self, horizon: int, quantiles: tuple[float, ...] = DEFAULT_QUANTILES) -> Forecast:
        if not self.models_:
            raise RuntimeError("AutoMl.fit must be called before predict")
        forecasts = [model.predict(horizon, quantiles) for model in self.models_]
        return Forecast(
            mean=np.mean([f.mean for f in forecasts], axis=0),
            levels=forecasts[0].levels,
            quantiles=np.mean([f.quantiles for f in forecasts], axis=0),
        )


DEFAULT_MODE = "ensemble"
DEFAULT_TOP = 2


def select_candidates(scores: Mapping[str, float], mode: str = DEFAULT_MODE, top: int = DEFAULT_TOP) -> list[str]:
    """The candidates to serve one series with, given its backtest error per candidate (lower is better;
    inf or NaN means the candidate failed and ranks last)."""
    ranked = sorted(scores, key=lambda n: scores[n] if np.isfinite(scores[n]) else np.inf)
    return ranked[: 1 if mode == "select" else max(1, top)]


def combine(forecasts: Sequence[Forecast], weights: Sequence[float] | None = None) -> Forecast:
    """The (weighted) mean of forecasts; a mean of non-decreasing quantile rows stays non-decreasing."""
    if len(forecasts) == 1:
        return forecasts[0]
    w = np.full(len(forecasts), 1.0 / len(forecasts)) if weights is None else np.asarray(weights, dtype=np.float64)
    w = w / w.sum()
    return Forecast(
        mean=np.tensordot(w, np.array([f.mean for f in forecasts]), axes=1),
        levels=forecasts[0].levels,
        quantiles=np.tensordot(w, np.array([f.quantiles for f in forecasts]), axes=1),
    )
