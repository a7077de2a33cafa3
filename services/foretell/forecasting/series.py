"""Model-ready series from a forecasting dataset group: frequency grid, aggregation, filling, validation.

The input is what the dataset service exports (`target_time_series.csv`, `related_time_series.csv`,
`item_metadata.csv`; see `load_snapshot`) or the same columns as data frames (`build_series`). The
rules follow Amazon Forecast's featurization:

Series. One series per ITEM_ID and value of the requested forecast dimensions (STRING fields of the
target; a missing dimension value is the value ""). Dimensions that are not requested are summed
over (forecasting per item a target kept per item and store sums the stores). Series are ordered by
item id, then dimension values.

Grid. Every timestamp is floored to the frequency grid (`Frequency.floor`; weekly buckets start on
the weekday of the dataset's first timestamp). Values that fall in one bucket are summed (data finer
than the forecast frequency); missing values (NaN, empty cells) are left out of the sum, and a bucket
whose rows are all missing is missing. Two rows of one item and dimension values (all the target's
dimension fields, requested or not) at the exact same timestamp are an error (SeriesError naming the
item and the time, field "TIMESTAMP"); the order of the rows does not matter.

Target filling. A series starts at its first row (no front fill; a row with a missing value counts)
and ends at the dataset's `end`, the last bucket of any series: missing buckets inside a series and
after its last row (back fill) take the TARGET_VALUE policy, "zero" by default as in Amazon Forecast.
"value" is a constant; "mean"/"median" are over the series' observed buckets; "previous" carries the
last observed bucket forward; "nan" leaves NaN for the caller. Where there is nothing to take from
(a series with no observed value at all, or "previous" before the first one) the fill is 0, except
with "nan". A series whose values are all missing is still a series (of fills).

Related time series. Numeric fields (and BOOLEAN "true"/"false" as 1/0) are covariates. A related
row is keyed by item and the forecast dimensions it has; it applies to every series that matches
on those (a related dataset per item serves all stores of the item). A related STRING field that is
not a requested forecast dimension is an error naming it (its values would have to be aggregated
away, and no aggregate fits every covariate). Values in one bucket are averaged (a price per day
over a week is its mean); the exact same (item, dimensions, timestamp) twice is an error. Each series'
covariates run from its first target step to `horizon` steps past `end`: the future the forecast
needs. Missing steps take the field's policy, "previous" by default, which carries the last value
known for that key, also from before the series starts; where no earlier value exists (or the series
has no related rows at all) the fill is 0. The future steps are filled the same way, so related data
that stops at `end` is carried forward by "previous" and left NaN by "nan" (the caller must then
refuse or drop the field: models take no NaN). "mean"/"median" use all rows of the key.

Item metadata. STRING fields become category codes 1..K in sorted value order; 0 is a missing value
or an item without a metadata row. Numeric fields are ignored (they are not categories, and the
forecasters take no static reals). Items with metadata but no target rows are cold-start items:
listed in `cold_items` with their codes in `cold_static` and their future covariates in `cold_related`,
not among the series. Two metadata rows for
one item are an error.

Vectorised throughout: rows are grouped by factorised keys, aggregated with one sort and
`reduceat`, and placed on the grid with one `searchsorted` per field.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from foretell.core import snapshot_files
from foretell.forecasting.frequency import Frequency, iso
from foretell.recipes.data import parse_times

FILL_METHODS = ("zero", "value", "mean", "median", "previous", "nan")
TARGET = "TARGET_VALUE"
TARGET_FILE = "target_time_series.csv"
RELATED_FILE = "related_time_series.csv"
METADATA_FILE = "item_metadata.csv"
_KEYS = ("ITEM_ID", "TIMESTAMP")
_RELATED_DEFAULT = "previous"
_TARGET_DEFAULT = "zero"
# A cell the export writes for a FLOAT/DOUBLE value (Python's repr of a finite float).
_FLOAT_CELL = r"-?\d+\.\d+(?:e[+-]\d+)?|-?\d+(?:\.\d+)?e[+-]\d+"
_DAY = Frequency("D")


@dataclass(frozen=True)
class FillPolicy:
    field: str  # "TARGET_VALUE" or a related field name
    method: str  # one of FILL_METHODS
    value: float = 0.0  # for "value"


# The largest magnitude of a value (imports refuse larger ones too, dataset/rows.py): backtests sum and square
# values in float64, and statsmodels' fits turn values near float64's limit into NaN and then fail.
MAX_MAGNITUDE = 1e15


class SeriesError(ValueError):
    """Bad data the user must fix; `field` names where (e.g. "TARGET_VALUE", "TIMESTAMP", "forecast_dimensions")."""

    def __init__(self, message: str, field: str = "") -> None:
        super().__init__(message)
        self.field = field


@dataclass(frozen=True)
class TimeBounds:
    """The earliest and latest target TIMESTAMP and the earliest related one (None: no related rows), in
    epoch seconds: what fixes the grid's origin and the series' common end."""

    target_min: int
    target_max: int
    related_min: int | None

    @property
    def anchor(self) -> int:
        """Weekly buckets keep the weekday of the first timestamp: the day it falls on."""
        return int(_DAY.floor(np.asarray(self.target_min)))

    def target_buckets(self, frequency: Frequency) -> tuple[int, int]:
        """The grid timestamps of the first and the last target bucket."""
        low, high = frequency.floor(np.array([self.target_min, self.target_max]), self.anchor)
        return int(low), int(high)

    def longest(self, frequency: Frequency) -> int:
        """Steps of the longest target series: from the first bucket to the last."""
        low, high = self.target_buckets(frequency)
        return int(frequency.index(low, np.asarray(high))) + 1


@dataclass
class SeriesSet:
    frequency: Frequency
    item_ids: list[str]  # (n,)
    dimensions: list[dict[str, str]]  # (n,) values of the requested forecast dimensions
    starts: np.ndarray  # (n,) int64 grid timestamp of each series' first value
    targets: list[np.ndarray]  # float64, one per series, on the grid, gaps filled (NaN only with method "nan")
    end: int  # grid timestamp of the dataset's last step; every series is back-filled up to it
    related_fields: list[str]
    related: list[np.ndarray] | None  # per series (len(target) + horizon, k) float64; None without related data
    static_fields: list[str]
    static: np.ndarray | None  # (n, c) int64 category codes of the item metadata (0 = missing/unknown)
    cardinalities: list[int]  # per static column, codes incl. 0
    cold_items: list[str] = field(default_factory=list)  # items with metadata and no target rows, sorted
    cold_static: np.ndarray | None = None  # (len(cold_items), c) their codes; None without static fields
    cold_related: list[np.ndarray] | None = None  # their (horizon, k) covariates; None without related data
    dimension_fields: list[str] = field(default_factory=list)  # the requested forecast dimensions, in order
    horizon: int = 0  # steps `related` extends past `end`

    def __len__(self) -> int:
        return len(self.targets)

    def take(self, positions: Sequence[int]) -> SeriesSet:
        """The series at `positions`, in that order; what is not per series stays as it is."""
        at = list(positions)
        return dataclasses.replace(
            self,
            item_ids=[self.item_ids[i] for i in at],
            dimensions=[self.dimensions[i] for i in at],
            starts=self.starts[at],
            targets=[self.targets[i] for i in at],
            related=None if self.related is None else [self.related[i] for i in at],
            static=None if self.static is None else self.static[at],
        )

    def timestamps(self, i: int) -> np.ndarray:
        """Grid timestamps of series i's target."""
        return self.frequency.add(int(self.starts[i]), np.arange(len(self.targets[i])))

    def future(self, i: int, horizon: int) -> np.ndarray:
        """The `horizon` grid timestamps after `end` (the same for every series)."""
        return self.frequency.add(self.end, np.arange(1, horizon + 1))


# ---------------------------------------------------------------- column checks and conversions


@dataclass(frozen=True)
class _Factor:
    """A key column as codes into its sorted distinct values as text (a missing value is "")."""

    codes: np.ndarray  # int64, one per row
    texts: np.ndarray  # object, sorted, every one used


def _factor(column: pd.Series, required: str = "") -> _Factor:
    """The column's factor; with `required` (a message prefix), a missing value is a SeriesError."""
    found, uniques = pd.factorize(column)  # a categorical column (load_snapshot reads ids so) is not rehashed
    codes = np.asarray(found, dtype=np.int64)
    texts = [str(u) for u in uniques]
    missing = codes < 0
    if missing.any():
        if required:
            row = int(np.argmax(missing))
            raise SeriesError(f"{required}: row {row + 1} has no {column.name}", str(column.name))
        codes = codes.copy()  # never the column's own codes
        codes[missing] = len(texts)
        texts.append("")
    remap, ordered = pd.factorize(np.asarray(texts, dtype=object), sort=True)
    return _Factor(remap.astype(np.int64)[codes], np.asarray(ordered, dtype=object))


def _combine(factors: Sequence[_Factor]) -> tuple[np.ndarray, np.ndarray]:
    """(group of each row by all factors, numbered in sorted key order; one row index per group)."""
    groups = factors[0].codes
    bound = len(factors[0].texts)
    for f in factors[1:]:
        if bound * len(f.texts) >= 2**62:  # renumber densely (order kept) so the product cannot overflow
            groups = pd.factorize(groups, sort=True)[0].astype(np.int64)
            bound = int(groups.max()) + 1
        groups, bound = groups * len(f.texts) + f.codes, bound * len(f.texts)
    if len(factors) > 1:
        groups = pd.factorize(groups, sort=True)[0].astype(np.int64)
    rep = np.empty(int(groups.max()) + 1 if len(groups) else 0, dtype=np.int64)
    rep[groups] = np.arange(len(groups))
    return groups, rep


def _key_table(factors: dict[str, _Factor], rows: np.ndarray) -> pd.DataFrame:
    """The key values (text) of `rows`, one column per factor."""
    return pd.DataFrame({name: f.texts[f.codes[rows]] for name, f in factors.items()})


def _describe(factors: dict[str, _Factor], row: int) -> str:
    values = {name: str(f.texts[f.codes[row]]) for name, f in factors.items()}
    item = values.pop("ITEM_ID")
    extra = ", ".join(f"{k}={v!r}" for k, v in values.items())
    return f"item {item!r}" + (f" ({extra})" if extra else "")


def _times(column: pd.Series, items: _Factor, what: str) -> np.ndarray:
    """int64 epoch seconds of TIMESTAMP (numbers or ISO 8601 text); SeriesError for missing or bad cells."""
    try:
        if isinstance(column.dtype, pd.CategoricalDtype):  # parse each distinct time once
            distinct = parse_times(pd.Series(np.asarray(column.cat.categories, dtype=object)))
            seconds = np.append(distinct, np.nan)[column.cat.codes.to_numpy()]  # code -1 (missing) -> NaN
        else:
            seconds = parse_times(column)
    except ValueError as exc:
        raise SeriesError(f"{what}: {exc}", "TIMESTAMP") from None
    bad = np.flatnonzero(~np.isfinite(seconds))
    if len(bad):
        row = int(bad[0])
        raise SeriesError(f"{what}: row {row + 1} ({_describe({'ITEM_ID': items}, row)}) has no TIMESTAMP", "TIMESTAMP")
    return np.floor(seconds).astype(np.int64)


def _numbers(column: pd.Series, items: _Factor, what: str) -> np.ndarray:
    """float64 values of a numeric field (NaN where missing; "true"/"false" are 1/0); SeriesError on a bad cell."""
    name = str(column.name)
    if isinstance(column.dtype, pd.CategoricalDtype):
        column = column.astype(object)
    if column.dtype == bool:
        return column.to_numpy(dtype=np.float64)
    if pd.api.types.is_numeric_dtype(column.dtype):
        values = np.array(column.to_numpy(dtype=np.float64, na_value=np.nan))
        bad = np.flatnonzero(np.isinf(values))
    else:
        values = np.array(pd.to_numeric(column, errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan))
        suspect = np.flatnonzero(np.isnan(values) & column.notna().to_numpy())
        words = column.iloc[suspect].astype(str).str.strip().str.lower().to_numpy()
        values[suspect[words == "true"]] = 1.0
        values[suspect[words == "false"]] = 0.0
        bad = np.sort(np.r_[suspect[~np.isin(words, ("true", "false", ""))], np.flatnonzero(np.isinf(values))])
    bad = np.union1d(bad, np.flatnonzero(np.abs(values) > MAX_MAGNITUDE))  # NaN compares False: missing stays
    if len(bad):
        row = int(bad[0])
        raise SeriesError(
            f"{what}: row {row + 1} ({_describe({'ITEM_ID': items}, row)}) has {name} {column.iloc[row]!r},"
            f" not a finite number of magnitude at most {MAX_MAGNITUDE:g}",
            name,
        )
    return values


def _is_text(column: pd.Series) -> bool:
    return not pd.api.types.is_numeric_dtype(column.dtype) and column.dtype != bool


# ---------------------------------------------------------------- sorting, aggregation, grid placement


def _ascending(keys: np.ndarray) -> np.ndarray | slice:
    """The order that sorts `keys`: an index array, or slice(None) when they already are sorted (exports
    usually are), which indexes without a copy."""
    if len(keys) < 2 or bool(np.all(keys[1:] >= keys[:-1])):
        return slice(None)
    return np.argsort(keys)


def _sorted_rows(groups: np.ndarray, ts: np.ndarray, factors: dict[str, _Factor], what: str) -> np.ndarray | slice:
    """Row order by (group, timestamp); SeriesError naming the item and time where one repeats."""
    low = int(ts.min())
    span = int(ts.max()) - low + 1
    order: np.ndarray | slice
    if (int(groups.max()) + 1) * span < 2**62:
        keys = groups * span + (ts - low)
        order = _ascending(keys)
        ordered = keys[order]
        same = np.flatnonzero(ordered[1:] == ordered[:-1])
    else:
        order = np.lexsort((ts, groups))
        g, t = groups[order], ts[order]
        same = np.flatnonzero((g[1:] == g[:-1]) & (t[1:] == t[:-1]))
    if len(same):
        rows = np.arange(len(ts))[order][same[0] : same[0] + 2]
        a, b = sorted(int(r) for r in rows)
        raise SeriesError(
            f"{what}: {_describe(factors, b)} has two rows at {iso(int(ts[b]))} (rows {a + 1} and {b + 1})",
            "TIMESTAMP",
        )
    return order


@dataclass(frozen=True)
class _Observed:
    """Bucket aggregates (NaN-free), sorted by key = group * width + step."""

    keys: np.ndarray
    values: np.ndarray


def _aggregate(keys: np.ndarray, values: np.ndarray, how: str) -> _Observed:
    """Sum ("sum") or mean ("mean") of the non-NaN `values` per key; `keys` sorted ascending."""
    valid = ~np.isnan(values)
    if not valid.all():
        keys, values = keys[valid], values[valid]
    if not len(keys):
        return _Observed(keys, values)
    starts = np.r_[True, keys[1:] != keys[:-1]]
    if starts.all():  # one row per bucket: data at the forecast frequency
        return _Observed(keys, values)
    firsts = np.flatnonzero(starts)
    totals = np.add.reduceat(values, firsts)
    if how == "mean":
        totals = totals / np.diff(np.r_[firsts, len(keys)])
    return _Observed(keys[firsts], totals)


def _group_stats(obs: _Observed, width: int, n_groups: int, method: str) -> np.ndarray:
    """(n_groups + 1,) mean or median of each group's observations; 0 for a group without any (and the last slot)."""
    stats = np.zeros(n_groups + 1)
    if len(obs.keys):
        grouped = pd.Series(obs.values).groupby(obs.keys // width)
        found = grouped.mean() if method == "mean" else grouped.median()
        stats[found.index.to_numpy()] = found.to_numpy()
    return stats


def _place_series(obs: _Observed, width: int, first: np.ndarray, offsets: np.ndarray, policy: FillPolicy) -> np.ndarray:
    """The flat cells of series g = steps first[g].. (at offsets[g]..offsets[g + 1]), observed buckets
    placed and gaps filled by `policy`. Nothing is observed before a series' first step."""
    groups = obs.keys // width
    at = offsets[groups] + (obs.keys - groups * width) - first[groups]
    lengths = np.diff(offsets)
    if policy.method in ("mean", "median"):
        out = np.repeat(_group_stats(obs, width, len(first), policy.method)[:-1], lengths)
    elif policy.method == "previous":
        last = np.full(int(offsets[-1]), -1, dtype=np.int64)
        last[at] = at
        np.maximum.accumulate(last, out=last)
        values = np.zeros(len(last))
        values[at] = obs.values
        return np.where(last >= np.repeat(offsets[:-1], lengths), values[np.maximum(last, 0)], 0.0)
    else:
        out = np.full(int(offsets[-1]), {"zero": 0.0, "value": policy.value, "nan": np.nan}[policy.method])
    out[at] = obs.values
    return out


def _place(obs: _Observed, cells: np.ndarray, width: int, n_groups: int, policy: FillPolicy) -> np.ndarray:
    """Values at grid cells (key = group * width + step; -1 for a cell with no group), gaps filled by `policy`."""
    out = np.full(len(cells), np.nan)
    groups = cells // width
    if len(obs.keys):
        pos = np.searchsorted(obs.keys, cells, side="right") - 1
        safe = np.maximum(pos, 0)
        before = (pos >= 0) & (cells >= 0) & (obs.keys[safe] // width == groups)  # an observation at or before
        exact = before & (obs.keys[safe] == cells)
        out[exact] = obs.values[safe[exact]]
    else:
        safe = np.zeros(len(cells), dtype=np.int64)
        before = exact = np.zeros(len(cells), dtype=bool)
    gaps = ~exact
    method = policy.method
    if method in ("zero", "value"):
        out[gaps] = 0.0 if method == "zero" else policy.value
    elif method == "previous":
        out[gaps & before] = obs.values[safe[gaps & before]]
        out[gaps & ~before] = 0.0
    elif method in ("mean", "median"):  # the last slot of the stats serves cells with no group
        stats = _group_stats(obs, width, n_groups, method)
        out[gaps] = stats[np.where(groups[gaps] >= 0, groups[gaps], n_groups)]
    return out  # "nan": gaps stay NaN


def _cells(first: np.ndarray, last_step: int) -> tuple[np.ndarray, np.ndarray]:
    """(offsets (n + 1,), step of each cell) of series g running from step first[g] to last_step."""
    lengths = last_step - first + 1
    offsets = np.r_[0, np.cumsum(lengths)].astype(np.int64)
    steps = np.arange(int(offsets[-1]), dtype=np.int64) + np.repeat(first - offsets[:-1], lengths)
    return offsets, steps


# ---------------------------------------------------------------- the build


def _policies(fill_policies: Sequence[FillPolicy], related_fields: list[str]) -> dict[str, FillPolicy]:
    chosen = {TARGET: FillPolicy(TARGET, _TARGET_DEFAULT)}
    chosen.update({name: FillPolicy(name, _RELATED_DEFAULT) for name in related_fields})
    seen: set[str] = set()
    for policy in fill_policies:
        if policy.field not in chosen:
            known = ", ".join(chosen)
            raise SeriesError(f"fill policy for unknown field {policy.field!r} (the fields are: {known})", policy.field)
        if policy.field in seen:
            raise SeriesError(f"two fill policies for {policy.field!r}", policy.field)
        if policy.method not in FILL_METHODS:
            raise SeriesError(
                f"fill method {policy.method!r} for {policy.field!r} is not one of {', '.join(FILL_METHODS)}",
                policy.field,
            )
        if policy.method == "value" and not np.isfinite(policy.value):
            raise SeriesError(f"fill value for {policy.field!r} must be a finite number", policy.field)
        seen.add(policy.field)
        chosen[policy.field] = policy
    return chosen


def _check_dimensions(target: pd.DataFrame, dimensions: Sequence[str]) -> list[str]:
    dims = [str(d) for d in dimensions]
    available = [str(c) for c in target.columns if c not in (*_KEYS, TARGET)]
    for d in dims:
        if d not in available:
            have = ", ".join(c for c in available if _is_text(target[c])) or "none"
            raise SeriesError(
                f"forecast dimension {d!r} is not a field of the target time series (its dimensions: {have})",
                "forecast_dimensions",
            )
    if len(set(dims)) != len(dims):
        raise SeriesError("a forecast dimension is listed twice", "forecast_dimensions")
    return dims


def build_series(
    target: pd.DataFrame,
    frequency: Frequency,
    horizon: int,
    dimensions: Sequence[str] = (),
    fill_policies: Sequence[FillPolicy] = (),
    related: pd.DataFrame | None = None,
    item_metadata: pd.DataFrame | None = None,
    bounds: TimeBounds | None = None,
) -> SeriesSet:
    """The series of a dataset group (see the module docstring for the rules); SeriesError for bad data.

    `bounds` (default: those of `target` and `related`) place a part of the rows on the grid of the whole
    data set: `load_shard` builds one shard's series with the whole set's grid and end.

    `target` has ITEM_ID, TIMESTAMP (int64 epoch seconds, or ISO 8601 text), TARGET_VALUE (NaN =
    missing) and dimension columns (its non-numeric columns; numeric ones are ignored); `related`
    ITEM_ID, TIMESTAMP, dimension columns and numeric fields; `item_metadata` ITEM_ID and attributes.
    """
    if isinstance(horizon, bool) or int(horizon) != horizon or horizon < 1:
        raise SeriesError(
            f"the forecast horizon must be a whole number of steps >= 1, got {horizon!r}", "forecast_horizon"
        )
    horizon = int(horizon)
    what = "target time series"
    for required in (*_KEYS, TARGET):
        if required not in target.columns:
            raise SeriesError(f"the {what} has no {required} column", required)
    if not len(target):
        raise SeriesError(f"the {what} has no rows", TARGET)
    dims = _check_dimensions(target, dimensions)
    if not target.index.equals(pd.RangeIndex(len(target))):  # a copy of every column: only where needed
        target = target.reset_index(drop=True)
    items = _factor(target["ITEM_ID"], what)
    ts = _times(target["TIMESTAMP"], items, what)
    values = _numbers(target[TARGET], items, what)
    # Requested dimensions first, so that the series' order is the rows' order by all dimensions.
    all_dims = dims + [str(c) for c in target.columns if c not in (*_KEYS, TARGET, *dims) and _is_text(target[c])]
    factors = {"ITEM_ID": items, **{d: _factor(target[d]) for d in all_dims}}
    full, full_rep = _combine(list(factors.values()))
    order = _sorted_rows(full, ts, factors, what)
    same = len(all_dims) == len(dims)
    sid, rep = (full, full_rep) if same else _combine([factors[c] for c in ("ITEM_ID", *dims)])
    n = len(rep)

    # The grid: weekly buckets keep the weekday of the first timestamp; steps count from `origin`.
    if bounds is None:
        bounds = TimeBounds(int(ts.min()), int(ts.max()), None)
    anchor = bounds.anchor
    floored = frequency.floor(ts, anchor)
    rel = _related_rows(related, dims, all_dims, anchor, frequency) if related is not None else None
    low, high = bounds.target_buckets(frequency)
    origin = low
    if bounds.related_min is not None:
        origin = min(origin, int(frequency.floor(np.asarray(bounds.related_min), anchor)))
    elif rel is not None and len(rel.floored):
        origin = min(origin, int(rel.floored.min()))
    steps = frequency.index(origin, floored)
    end_step = int(frequency.index(origin, np.asarray(high)))
    rel_steps = frequency.index(origin, rel.floored) if rel is not None else np.zeros(0, dtype=np.int64)
    width = max(end_step + horizon, int(rel_steps.max()) if len(rel_steps) else 0) + 1
    policies = _policies(fill_policies, rel.fields if rel is not None else [])

    # Target cells: series g runs from its first step to end_step.
    first = np.full(n, end_step, dtype=np.int64)
    np.minimum.at(first, sid, steps)
    keys = sid * width + steps
    if not same:
        order = _ascending(keys)
    observed = _aggregate(keys[order], values[order], "sum")
    offsets = np.r_[0, np.cumsum(end_step - first + 1)].astype(np.int64)
    flat = _place_series(observed, width, first, offsets, policies[TARGET])

    series_keys = _key_table({c: factors[c] for c in ("ITEM_ID", *dims)}, rep)
    item_ids = [str(x) for x in series_keys["ITEM_ID"]]
    dim_values = series_keys[dims].to_dict("records") if dims else [{} for _ in range(n)]
    related_arrays = None
    if rel is not None:
        related_arrays = _related_series(rel, rel_steps, series_keys, first, end_step + horizon, width, policies)
    static_fields, static, cards, cold, cold_static = _static(item_metadata, item_ids)
    cold_related = None
    if rel is not None and cold:
        # A cold-start item has only a future: its covariates for the `horizon` steps after `end`.
        cold_keys = pd.DataFrame({"ITEM_ID": cold, **{d: [""] * len(cold) for d in dims}})
        cold_first = np.full(len(cold), end_step + 1, dtype=np.int64)
        cold_related = _related_series(rel, rel_steps, cold_keys, cold_first, end_step + horizon, width, policies)
    return SeriesSet(
        frequency=frequency,
        item_ids=item_ids,
        dimensions=[{str(k): str(v) for k, v in d.items()} for d in dim_values],
        starts=frequency.add(origin, first).astype(np.int64),
        targets=np.split(flat, offsets[1:-1]),
        end=int(frequency.add(origin, end_step)),
        related_fields=rel.fields if rel is not None else [],
        related=related_arrays,
        static_fields=static_fields,
        static=static,
        cardinalities=cards,
        cold_items=cold,
        cold_static=cold_static,
        cold_related=cold_related,
        dimension_fields=dims,
        horizon=horizon,
    )


@dataclass(frozen=True)
class _RelatedRows:
    factors: dict[str, _Factor]  # ITEM_ID and the forecast dimensions the related data has
    groups: np.ndarray  # key group of each row
    rep: np.ndarray  # one row per group
    order: np.ndarray | slice  # rows sorted by (group, timestamp)
    floored: np.ndarray  # grid timestamp of each row
    fields: list[str]
    values: np.ndarray  # (rows, k)


def _related_rows(
    related: pd.DataFrame, dims: list[str], target_dims: list[str], anchor: int, frequency: Frequency
) -> _RelatedRows:
    what = "related time series"
    for required in _KEYS:
        if required not in related.columns:
            raise SeriesError(f"the {what} has no {required} column", required)
    related = related.reset_index(drop=True)
    items = _factor(related["ITEM_ID"], what)
    columns = [str(c) for c in related.columns if c not in _KEYS]
    for c in columns:
        if c in target_dims and c not in dims:
            raise SeriesError(
                f"the {what} is per {c!r}, which is not a forecast dimension: add it to the forecast dimensions"
                " or remove it from the related data",
                c,
            )
    rdims = [c for c in columns if c in dims]
    fields = [c for c in columns if c not in rdims]
    if not fields:
        raise SeriesError(f"the {what} has no numeric field", "related_time_series")
    matrix = np.empty((len(related), len(fields)))
    for j, name in enumerate(fields):
        column = related[name]
        try:
            matrix[:, j] = _numbers(column, items, what)
        except SeriesError:
            if pd.to_numeric(column.astype(object), errors="coerce").isna().all():  # no number at all: text
                raise SeriesError(
                    f"the {what} field {name!r} is text but not a forecast dimension: add it to the forecast"
                    " dimensions (if the target has it too) or remove it",
                    name,
                ) from None
            raise
    ts = _times(related["TIMESTAMP"], items, what)
    factors = {"ITEM_ID": items, **{d: _factor(related[d]) for d in rdims}}
    groups, rep = _combine(list(factors.values()))
    order = _sorted_rows(groups, ts, factors, what) if len(ts) else slice(None)
    return _RelatedRows(factors, groups, rep, order, frequency.floor(ts, anchor), fields, matrix)


def _related_series(
    rel: _RelatedRows,
    steps: np.ndarray,
    series_keys: pd.DataFrame,
    first: np.ndarray,
    last_step: int,
    width: int,
    policies: dict[str, FillPolicy],
) -> list[np.ndarray]:
    """Per series (steps first..last_step, k) covariates of the related group matching the series' key."""
    table = _key_table(rel.factors, rel.rep)
    on = list(table.columns)
    table["_group"] = np.arange(len(table), dtype=np.float64)
    matched = series_keys[on].merge(table, how="left", on=on)["_group"].to_numpy(dtype=np.float64, na_value=-1.0)
    offsets, cell_steps = _cells(first, last_step)
    cell_groups = np.repeat(np.nan_to_num(matched, nan=-1.0).astype(np.int64), np.diff(offsets))
    cells = np.where(cell_groups >= 0, cell_groups * width + cell_steps, -1)
    keys = (rel.groups * width + steps)[rel.order]  # sorted: the floor keeps the timestamps' order
    flat = np.empty((len(cells), len(rel.fields)))
    for j, name in enumerate(rel.fields):
        observed = _aggregate(keys, rel.values[rel.order, j], "mean")
        flat[:, j] = _place(observed, cells, width, len(rel.rep), policies[name])
    return np.split(flat, offsets[1:-1])


def _static(
    metadata: pd.DataFrame | None, item_ids: list[str]
) -> tuple[list[str], np.ndarray | None, list[int], list[str], np.ndarray | None]:
    """(fields, codes per series, cardinalities, cold-start items, their codes) of the item metadata."""
    if metadata is None:
        return [], None, [], [], None
    what = "item metadata"
    if "ITEM_ID" not in metadata.columns:
        raise SeriesError(f"the {what} has no ITEM_ID column", "ITEM_ID")
    metadata = metadata.reset_index(drop=True)
    ids = _factor(metadata["ITEM_ID"], what)
    items = ids.texts[ids.codes]
    repeated = np.flatnonzero(pd.Series(items).duplicated().to_numpy())
    if len(repeated):
        raise SeriesError(f"{what}: item {items[int(repeated[0])]!r} has two rows", "ITEM_ID")
    fields = [str(c) for c in metadata.columns if c != "ITEM_ID" and _is_text(metadata[c])]
    cold = sorted(set(items) - set(item_ids))
    if not fields:
        return [], None, [], cold, None
    codes = np.zeros((len(metadata), len(fields)), dtype=np.int64)
    cards = []
    for j, name in enumerate(fields):
        column = metadata[name].astype("string").str.strip()
        found, uniques = pd.factorize(column.mask(column == "", pd.NA).to_numpy(dtype=object, na_value=None), sort=True)
        codes[:, j] = found + 1  # factorize gives -1 to missing values
        cards.append(len(uniques) + 1)
    index = pd.Index(items)
    padded = np.vstack([codes, np.zeros((1, len(fields)), dtype=np.int64)])  # row -1: an item without metadata
    return fields, padded[index.get_indexer(item_ids)], cards, cold, padded[index.get_indexer(cold)]


# ---------------------------------------------------------------- the dataset export


def _read(path: Path, text: Sequence[str] | None, inferred: Sequence[str] = ()) -> pd.DataFrame:
    """A CSV of the export: empty cells missing, `inferred` columns typed by pandas,
    the others (or only `text`, when given) categorical text (ids like "007" keep their zeros, and
    ids are hashed once per distinct value)."""
    header = [str(c) for c in pd.read_csv(path, nrows=0, dtype=str).columns]
    categorical = [c for c in header if c not in inferred and (text is None or c in text)]
    categorical += [] if "TIMESTAMP" in categorical else ["TIMESTAMP"]  # parsed once per distinct time
    # Read as text, then made categorical: pandas 3 infers a "category" column's categories from the cells,
    # so "007" would become the integer 7.
    frame = pd.read_csv(path, dtype=dict.fromkeys(categorical, str), keep_default_na=False, na_values=[""], engine="c")
    for c in categorical:
        if c in frame:
            frame[c] = frame[c].astype("category")
    if text is None:  # tell the FLOAT/DOUBLE fields from the STRING ones
        for c in header:
            if c not in inferred and c not in ("ITEM_ID", "TIMESTAMP") and _float_cells(frame[c]):
                frame[c] = pd.to_numeric(frame[c].astype(object))
    return frame


def _snapshot_frame(
    directory: Path,
    name: str,
    text: Sequence[str] | None,
    inferred: Sequence[str] = (),
    where: pc.Expression | None = None,
) -> pd.DataFrame | None:
    """Dataset `name` of a snapshot as `_read` gives a CSV: from its CSV, or typed from its Parquet files
    (text columns categorical, booleans 1/0, times epoch seconds), or None when the snapshot lacks it.
    `where` keeps only some rows of Parquet files (a shard's)."""
    csv = directory / f"{name}.csv"
    if csv.exists():
        return _read(csv, text, inferred)
    table = snapshot_files.read_table(directory, name, where=where)
    if table is None:
        return None
    frame = {}
    for spec in table.schema:
        column = table.column(spec.name)
        if pa.types.is_string(spec.type) and (text is None or spec.name in text or spec.name == "ITEM_ID"):
            # Categorical straight from Arrow: the cells never become Python strings (73M of them at 100k series).
            frame[spec.name] = pc.dictionary_encode(column).to_pandas()
        elif pa.types.is_boolean(spec.type):
            frame[spec.name] = column.cast(pa.float64()).to_pandas()
        else:
            frame[spec.name] = column.to_pandas()
    return pd.DataFrame(frame)


def _float_cells(column: pd.Series) -> bool:
    """Whether every value is a float as the export writes one (Python's repr: with a "." or an exponent).

    The export has no schema, so FLOAT/DOUBLE fields are told from STRING ones by their cells; INT and
    LONG cells look like digit strings and stay text.
    """
    values = pd.Series(column.cat.categories, dtype=object)
    return bool(len(values)) and bool(values.str.fullmatch(_FLOAT_CELL).all())


def load_snapshot(
    directory: Path,
    frequency: Frequency,
    horizon: int,
    dimensions: Sequence[str] = (),
    fill_policies: Sequence[FillPolicy] = (),
) -> SeriesSet:
    """The series of a dataset snapshot: `target_time_series.csv` plus the optional
    `related_time_series.csv` and `item_metadata.csv` as the dataset service exports them.

    Cells are read as text. FLOAT/DOUBLE columns of the target and the metadata are recognised by
    their cells (see `_float_cells`): they are neither dimensions nor categories. Related columns
    other than ITEM_ID and the target's dimensions are typed by pandas (numbers, true/false).
    """
    directory = Path(directory)
    target = _snapshot_frame(directory, "target_time_series", None, (TARGET,))
    if target is None:
        raise SeriesError(f"the snapshot has no {TARGET_FILE}: the dataset group needs a target time series", TARGET)
    keys = ["ITEM_ID", *dimensions, *(str(c) for c in target.columns if c not in _KEYS and _is_text(target[c]))]
    related = _snapshot_frame(directory, "related_time_series", keys)
    metadata = _snapshot_frame(directory, "item_metadata", None)
    return build_series(target, frequency, horizon, dimensions, fill_policies, related, metadata)


# ---------------------------------------------------------------- one shard's series


@dataclass(frozen=True)
class Shard:
    """One shard's part of a snapshot's series (`load_shard`)."""

    series: SeriesSet  # the shard's series only, in the whole set's order
    positions: list[int]  # each one's position in the whole set
    total: int  # series in the whole set
    longest: int  # steps of the whole set's longest series


SeriesName = tuple[str, dict[str, str]]  # (item id, requested dimension values)


def load_shard(
    directory: Path,
    frequency: Frequency,
    horizon: int,
    dimensions: Sequence[str],
    fill_policies: Sequence[FillPolicy],
    choose: Callable[[list[SeriesName]], Sequence[int]],
) -> Shard:
    """The series `choose` picks (positions in the whole set's order, given every series' name), reading
    only their rows.

    One streamed pass over the key and time columns gives every series' name and the whole set's
    `TimeBounds`; the chosen items' rows are then read (filtered one row group at a time) and built on
    the whole set's grid, so each series equals its namesake in `load_snapshot`'s set and memory follows
    the shard, not the data set. Item metadata is not read: it serves the global deep model alone,
    which is never sharded. A snapshot that this pass cannot vouch for (CSV files, text times, rows
    without ITEM_ID or TIMESTAMP, a dimension it lacks) is loaded whole, which reports what is wrong.
    """
    directory = Path(directory)
    dims = list(dimensions)
    scanned = _scan_keys(directory, dims)
    if scanned is not None:
        names, bounds = scanned
        positions = sorted(int(p) for p in choose(names))
        try:
            built = _build_part(
                directory, frequency, horizon, dims, fill_policies, [names[p] for p in positions], bounds
            )
        except SeriesError:
            built = None  # the whole set's load below names the row as it counts rows
        if built is not None:
            return Shard(built, positions, len(names), bounds.longest(frequency))
    whole = load_snapshot(directory, frequency, horizon, dims, fill_policies)
    names = [(whole.item_ids[i], whole.dimensions[i]) for i in range(len(whole))]
    positions = sorted(int(p) for p in choose(names))
    return Shard(whole.take(positions), positions, len(whole), max((len(t) for t in whole.targets), default=0))


def _build_part(
    directory: Path,
    frequency: Frequency,
    horizon: int,
    dims: list[str],
    fill_policies: Sequence[FillPolicy],
    chosen: list[SeriesName],
    bounds: TimeBounds,
) -> SeriesSet:
    """The `chosen` series (in the whole set's order) from their items' rows, on the whole set's grid."""
    where = pc.field("ITEM_ID").isin(pa.array(sorted({item for item, _ in chosen}), pa.string()))
    target = _snapshot_frame(directory, "target_time_series", None, (TARGET,), where)
    if target is None or not len(target):
        raise SeriesError("the shard's rows do not read", TARGET)
    keys = ["ITEM_ID", *dims, *(str(c) for c in target.columns if c not in _KEYS and _is_text(target[c]))]
    related = _snapshot_frame(directory, "related_time_series", keys, where=where)
    built = build_series(target, frequency, horizon, dims, fill_policies, related, None, bounds)
    # An item's series can straddle two shards (with dimensions): keep the chosen ones.
    at = {_name_key(name): i for i, name in enumerate(zip(built.item_ids, built.dimensions, strict=True))}
    return built.take([at[_name_key(name)] for name in chosen])


def _name_key(name: SeriesName) -> tuple[str, tuple[tuple[str, str], ...]]:
    return name[0], tuple(sorted(name[1].items()))


def _scan_keys(directory: Path, dims: list[str]) -> tuple[list[SeriesName], TimeBounds] | None:
    """Every series' name in the whole set's order and the `TimeBounds`, from one pass over the Parquet key
    and time columns; None when the snapshot is not one this pass can vouch for."""
    target = snapshot_files.schema(directory, "target_time_series")
    related = snapshot_files.schema(directory, "related_time_series")
    related_csv = (directory / "related_time_series.csv").exists()
    if target is None or len(set(dims)) != len(dims) or (related is None and related_csv):
        return None
    for name in ("ITEM_ID", *dims):
        if target.get_field_index(name) < 0 or not pa.types.is_string(target.field(name).type):
            return None
    for schema in (target, related):
        if schema is not None and (
            schema.get_field_index("TIMESTAMP") < 0 or not pa.types.is_integer(schema.field("TIMESTAMP").type)
        ):
            return None
    keys = ["ITEM_ID", *dims]
    whole = snapshot_files.distinct(directory, "target_time_series", keys)
    span = snapshot_files.min_max(directory, "target_time_series", "TIMESTAMP")
    if whole is None or span is None or whole.column("ITEM_ID").null_count:
        return None  # build_series names the row without an ITEM_ID or TIMESTAMP
    related_span = snapshot_files.min_max(directory, "related_time_series", "TIMESTAMP") if related else None
    columns = [[("" if v is None else v) for v in whole.column(k).to_pylist()] for k in keys]
    # build_series's order: item, then each dimension; a missing dimension value is "".
    rows = sorted(set(zip(*columns, strict=True)))
    names = [(row[0], dict(zip(dims, row[1:], strict=True))) for row in rows]
    return names, TimeBounds(int(span[0]), int(span[1]), None if related_span is None else int(related_span[0]))
