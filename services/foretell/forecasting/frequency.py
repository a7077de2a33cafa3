"""Forecast frequencies: the time grid a dataset is aggregated onto, and arithmetic on it.

A `Frequency` is a unit ("min", "H", "D", "W", "M", "Q", "Y") and a multiple ("15min", "6H").
Timestamps are int64 epoch seconds, UTC. The grid of a fixed-size unit (min, H, D, W) is every
`multiple * unit` seconds counted from an anchor (default the epoch; weekly data passes the first
timestamp floored to the day, so that its weeks start on that weekday). The grid of a calendar unit
(M, Q, Y) is the start of each calendar month, quarter (Jan/Apr/Jul/Oct 1st) or year, 00:00 UTC,
so month ends and leap years need no special care: February is simply one step.

`season_length` is the number of steps in the frequency's natural season, which the forecasters use
as their seasonal period: sub-hourly data uses a day when that is at most 96 steps (15min, 20min,
30min) and an hour otherwise (1min: 60, 5min: 12), since a longer season is too slow to fit;
hourly data a day, daily data a week, weekly data a year (52), monthly 12, quarterly 4, yearly 1.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime

import numpy as np

# Seconds of one step of each fixed-size unit; months of one step of each calendar unit.
_SECONDS = {"min": 60, "H": 3600, "D": 86_400, "W": 7 * 86_400}
_MONTHS = {"M": 1, "Q": 3, "Y": 12}
# Multiples each unit accepts: those that divide the next unit up, so buckets never straddle it.
_MULTIPLES = {
    "min": (1, 2, 3, 4, 5, 6, 10, 12, 15, 20, 30),
    "H": (1, 2, 3, 4, 6, 8, 12),
    "D": (1,),
    "W": (1,),
    "M": (1,),
    "Q": (1,),
    "Y": (1,),
}
_ALIASES = {
    "min": "min",
    "h": "H",
    "H": "H",
    "d": "D",
    "D": "D",
    "w": "W",
    "W": "W",
    "M": "M",
    "MS": "M",
    "Q": "Q",
    "QS": "Q",
    "y": "Y",
    "Y": "Y",
    "YS": "Y",
}
_TEXT = re.compile(r"^\s*(\d*)\s*([A-Za-z]+)\s*$")
ACCEPTED = (
    "1min, 5min, 10min, 15min, 30min (any of 1-6, 10, 12, 15, 20, 30 min), H, 2H, 3H, 4H, 6H, 8H, 12H, D, W, M, Q, Y"
)
# Sub-hourly seasons longer than this many steps fall back to an hour.
_MAX_DAILY_SEASON = 96


def iso(seconds: int) -> str:
    """ "YYYY-MM-DD HH:MM:SS" of epoch seconds (UTC): the dataset export's timestamp format."""
    return datetime.fromtimestamp(int(seconds), UTC).strftime("%Y-%m-%d %H:%M:%S")


def _months(ts: np.ndarray) -> np.ndarray:
    """Months since January 1970 of each epoch second (floored)."""
    return np.asarray(ts, dtype=np.int64).astype("datetime64[s]").astype("datetime64[M]").astype(np.int64)


def _month_start(months: np.ndarray) -> np.ndarray:
    """Epoch seconds of the first instant of each month (months since January 1970)."""
    return np.asarray(months, dtype=np.int64).astype("datetime64[M]").astype("datetime64[s]").astype(np.int64)


@dataclass(frozen=True)
class Frequency:
    unit: str  # "min", "H", "D", "W", "M", "Q", "Y"
    multiple: int = 1  # e.g. 15 for "15min"

    def __post_init__(self) -> None:
        if self.unit not in _MULTIPLES or self.multiple not in _MULTIPLES[self.unit]:
            raise ValueError(f"{self.multiple}{self.unit} is not a supported frequency; use one of: {ACCEPTED}")

    @classmethod
    def parse(cls, text: str) -> Frequency:
        """A frequency from text such as "15min", "H", "1H", "6H", "D", "W", "M", "Q", "Y".

        Lower-case "h", "d", "w", "y" and the pandas start aliases "MS", "QS", "YS" are accepted;
        a bare "m" is not (minute or month?). ValueError lists the accepted forms.
        """
        match = _TEXT.match(text) if isinstance(text, str) else None
        unit = _ALIASES.get(match.group(2)) if match else None
        if match is None or unit is None:
            raise ValueError(f"{text!r} is not a frequency; use one of: {ACCEPTED}")
        digits = match.group(1)
        multiple = int(digits) if digits else 1
        if multiple not in _MULTIPLES[unit]:
            raise ValueError(f"{text!r} is not a supported frequency; use one of: {ACCEPTED}")
        return cls(unit, multiple)

    def __str__(self) -> str:
        if self.unit == "min":
            return f"{self.multiple}min"
        return self.unit if self.multiple == 1 else f"{self.multiple}{self.unit}"

    @property
    def calendar(self) -> bool:
        """True for months, quarters and years (steps of varying length)."""
        return self.unit in _MONTHS

    @property
    def seconds(self) -> int:
        """Length of one step in seconds; ValueError for calendar units, whose steps vary."""
        if self.calendar:
            raise ValueError(f"a {self} step has no fixed length")
        return _SECONDS[self.unit] * self.multiple

    @property
    def season_length(self) -> int:
        """Steps per natural season (see the module docstring)."""
        if self.unit == "min":
            per_day = 1440 // self.multiple
            return per_day if per_day <= _MAX_DAILY_SEASON else 60 // self.multiple
        return {"H": 24 // self.multiple, "D": 7, "W": 52, "M": 12, "Q": 4, "Y": 1}[self.unit]

    def floor(self, ts: np.ndarray, anchor: int = 0) -> np.ndarray:
        """The grid timestamp of the bucket holding each of `ts` (int64 epoch seconds)."""
        ts = np.asarray(ts, dtype=np.int64)
        if self.calendar:
            months = _months(ts)
            step = _MONTHS[self.unit]
            return _month_start(months - months % step)  # numpy's % floors, also before 1970
        step = self.seconds
        floored: np.ndarray = ts - (ts - anchor) % step
        return floored

    def add(self, start: int, steps: np.ndarray | int) -> np.ndarray:
        """The grid timestamps `steps` steps after `start` (which must be on the grid for calendar units)."""
        steps = np.asarray(steps, dtype=np.int64)
        if not self.calendar:
            moved: np.ndarray = int(start) + steps * self.seconds
            return moved
        months = int(_months(np.asarray(start)))
        if int(_month_start(np.asarray(months))) != int(start) or months % _MONTHS[self.unit]:
            raise ValueError(f"{iso(start)} is not on the {self} grid")
        return _month_start(months + steps * _MONTHS[self.unit])

    def index(self, start: int, ts: np.ndarray) -> np.ndarray:
        """Steps from `start` to each of `ts` (all on one grid): the vector form of `count`."""
        ts = np.asarray(ts, dtype=np.int64)
        if self.calendar:
            steps: np.ndarray = (_months(ts) - int(_months(np.asarray(start)))) // _MONTHS[self.unit]
            return steps
        return (ts - int(start)) // self.seconds

    def count(self, start: int, end: int) -> int:
        """Grid steps from `start` to `end` (both on the grid): 0 when they are equal."""
        return int(self.index(start, np.asarray(end)))
