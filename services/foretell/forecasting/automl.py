"""AutoML for one series: backtest every candidate on the latest windows, then forecast with the best
one (`select`) or with the combination of the best `top` (`ensemble`).

Backtest window w (1 = latest) fits each candidate on the series without its last w * horizon values
and scores the forecast of the next `horizon` values by MASE (scale from that training part, lag
season_length), the M4 measure that compares across series. A candidate's score is its mean over the
windows the series is long enough for. `select_candidates` turns those scores into the names to use,
`combine` merges their forecasts, and the chosen candidates are refitted on the whole series. The
training service calls the same two functions, so the policy measured on M4 is the one it serves.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import ClassVar

import numpy as np

from foretell.forecasting.base import DEFAULT_QUANTILES, Forecast, Forecaster
from foretell.forecasting.metrics import mase
from foretell.forecasting.models import make_forecaster

DEFAULT_CANDIDATES: tuple[str, ...] = ("ets", "arima", "theta", "seasonal-naive")
DEFAULT_MODE: str = "ensemble"
DEFAULT_TOP: int = 2
DEFAULT_TOLERANCE: float = 0.1
DEFAULT_WINDOWS: int = 3
MODES: tuple[str, ...] = ("select", "ensemble")


def select_candidates(
    scores: Mapping[str, float],
    mode: str = DEFAULT_MODE,
    top: int = DEFAULT_TOP,
    tolerance: float = DEFAULT_TOLERANCE,
) -> list[str]:
    """Names of the candidates to use for one series, best first, from its backtest error per candidate.

    Lower is better; inf or NaN marks a failed candidate, used only when every candidate failed (then
    the first in the mapping's order). `select` keeps the best one; `ensemble` keeps up to `top` of the
    best, each within `tolerance` (relative) of the best score: averaging in a candidate that clearly
    lost the backtest hurt on M4 Weekly, and an ensemble of near-ties beat the single best (docs/benchmarks.md).
    Ties keep the mapping's order.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
    if top < 1:
        raise ValueError(f"top must be >= 1, got {top}")
    if not tolerance >= 0:
        raise ValueError(f"tolerance must be >= 0, got {tolerance}")
    if not scores:
        raise ValueError("no candidates to select from")
    names = list(scores)
    ok = sorted((n for n in names if math.isfinite(scores[n])), key=lambda n: scores[n])
    if not ok:
        return names[:1]
    if mode == "select":
        return ok[:1]
    limit = scores[ok[0]] * (1.0 + tolerance)
    return [n for n in ok[:top] if scores[n] <= limit]


def combine(forecasts: Sequence[Forecast], weights: Sequence[float] | None = None) -> Forecast:
    """The weighted mean (equal weights by default) of forecasts of the same horizon and levels.

    A convex combination of non-decreasing quantile rows is non-decreasing, so the result stays ordered.
    """
    if not forecasts:
        raise ValueError("nothing to combine")
    first = forecasts[0]
    for f in forecasts[1:]:
        if f.mean.shape != first.mean.shape or not np.array_equal(f.levels, first.levels):
            raise ValueError("forecasts to combine must share their horizon and quantile levels")
    w = np.ones(len(forecasts)) if weights is None else np.asarray(weights, dtype=np.float64)
    if w.shape != (len(forecasts),) or not np.all(np.isfinite(w)) or np.any(w < 0) or not w.sum() > 0:
        raise ValueError("weights must be one finite, non-negative value per forecast, not all zero")
    w = w / w.sum()
    if len(forecasts) == 1:
        return first
    return Forecast(
        mean=np.tensordot(w, np.stack([f.mean for f in forecasts]), axes=1),
        levels=first.levels,
        quantiles=np.tensordot(w, np.stack([f.quantiles for f in forecasts]), axes=1),
    )


class AutoMl(Forecaster):
    """Chooses among `candidates` per series by a backtest over `windows` windows (see the module docstring)."""

    name: ClassVar[str] = "automl"

    def __init__(
        self,
        horizon: int,
        candidates: tuple[str, ...] = DEFAULT_CANDIDATES,
        mode: str = DEFAULT_MODE,
        top: int = DEFAULT_TOP,
        windows: int = DEFAULT_WINDOWS,
        tolerance: float = DEFAULT_TOLERANCE,
    ) -> None:
        if horizon < 1:
            raise ValueError(f"horizon must be >= 1, got {horizon}")
        if mode not in MODES:
            raise ValueError(f"mode must be select or ensemble, got {mode!r}")
        if not candidates or top < 1 or windows < 1 or not tolerance >= 0:
            raise ValueError("AutoML needs at least one candidate, top >= 1, windows >= 1 and tolerance >= 0")
        for candidate in candidates:
            make_forecaster(candidate)  # ValueError naming an unknown algorithm
        self.horizon = horizon
        self.candidates = tuple(candidates)
        self.mode = mode
        self.top = top
        self.windows = windows
        self.tolerance = tolerance
        self.scores_: dict[str, float] = {}
        self.chosen_: list[str] = []
        self.models_: list[Forecaster] = []

    def fit(self, y: np.ndarray, season_length: int = 1) -> AutoMl:
        y = np.asarray(y, dtype=np.float64)
        h = self.horizon
        keep = 1 if self.mode == "select" else min(self.top, len(self.candidates))
        # A window needs a training part of at least two horizons before it; a series too short for
        # the latest window skips the backtest, and so does an ensemble of every candidate without a
        # tolerance (nothing to choose).
        cuts = [len(y) - w * h for w in range(1, self.windows + 1) if len(y) - w * h >= 2 * h]
        self.scores_ = {}
        if cuts and (keep < len(self.candidates) or math.isfinite(self.tolerance)):
            for name in self.candidates:
                errors = []
                for cut in cuts:
                    train = y[:cut]
                    mean = make_forecaster(name).fit(train, season_length).predict(h).mean
                    errors.append(mase(y[cut : cut + h], mean, train, season_length))
                score = float(np.mean(errors))
                self.scores_[name] = score if math.isfinite(score) else math.inf
            self.chosen_ = select_candidates(self.scores_, self.mode, self.top, self.tolerance)
        else:
            self.chosen_ = list(self.candidates[:keep])
        self.models_ = [make_forecaster(name).fit(y, season_length) for name in self.chosen_]
        return self

    def predict(self, horizon: int, quantiles: tuple[float, ...] = DEFAULT_QUANTILES) -> Forecast:
        if not self.models_:
            raise RuntimeError("AutoMl.fit must be called before predict")
        return combine([model.predict(horizon, quantiles) for model in self.models_])
