"""One forecaster per series: the interface every forecasting algorithm implements.

Conventions (statsforecast-like, typed): the constructor only stores hyper-parameters; `fit`
learns from one series and returns self, with fitted state in attributes ending in `_`;
`predict` returns a `Forecast` holding the mean and any requested quantiles.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

DEFAULT_QUANTILES: tuple[float, ...] = (0.1, 0.5, 0.9)


@dataclass(frozen=True)
class Forecast:
    """`horizon` future steps of one series: the mean and one row per requested quantile."""

    mean: np.ndarray  # (h,) float64
    levels: np.ndarray  # (q,) quantile levels in (0, 1), increasing
    quantiles: np.ndarray  # (q, h) float64, non-decreasing along axis 0

    def quantile(self, level: float) -> np.ndarray:
        """The (h,) row of `level`; KeyError when it was not requested."""
        hits = np.flatnonzero(np.isclose(self.levels, level))
        if not len(hits):
            raise KeyError(level)
        row: np.ndarray = self.quantiles[hits[0]]
        return row


class Forecaster(ABC):
    """Fits one univariate series (float64, no NaN, oldest first) and forecasts it."""

    name: ClassVar[str]

    @abstractmethod
    def fit(self, y: np.ndarray, season_length: int = 1) -> Forecaster:
        """Learns from `y`; `season_length` is the number of steps in one season (1: none)."""

    @abstractmethod
    def predict(self, horizon: int, quantiles: tuple[float, ...] = DEFAULT_QUANTILES) -> Forecast:
        """The next `horizon` steps after the fitted series."""
