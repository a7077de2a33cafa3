"""The stored artifact of a generated forecast: every series' mean and quantiles over its horizon.

A table is two files in its directory: `forecast.npz` (the numeric arrays, loaded without pickle)
and `forecast.json` (ids, dimensions and the shape). Each is written to a temporary file and
renamed into place, the JSON last: its presence marks a complete table, as `meta.json` does for
recommendation artifacts, and `load` checks the arrays against the shape it records.
"""

from __future__ import annotations

import csv
import json
import os
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from foretell.core import formats

ARRAYS = "forecast.npz"
META = "forecast.json"
# core/formats.py; every table ever written records it.
FORMAT = 1

DimsKey = tuple[tuple[str, str], ...]


def dims_key(dimensions: Mapping[str, str]) -> DimsKey:
    """A hashable, order-free key for one series' dimension values."""
    return tuple(sorted(dimensions.items()))


def level_column(level: float) -> str:
    """The CSV column of a quantile level: 0.1 -> "p10", 0.025 -> "p2.5"."""
    return "p" + f"{level * 100:.6f}".rstrip("0").rstrip(".")


@dataclass(frozen=True)
class ForecastTable:
    item_ids: list[str]  # (n,) one per series
    dimensions: list[dict[str, str]]  # (n,) the series' forecast dimensions ({} when none)
    timestamps: np.ndarray  # (n, h) int64 epoch seconds UTC of each forecast step, increasing per row
    mean: np.ndarray  # (n, h) float
    levels: np.ndarray  # (q,) quantile levels in (0, 1), increasing
    values: np.ndarray  # (n, q, h) float

    def __post_init__(self) -> None:
        # Normalized dtypes keep save/load and the query encoder free of per-caller surprises.
        object.__setattr__(self, "timestamps", np.asarray(self.timestamps, dtype=np.int64))
        object.__setattr__(self, "levels", np.asarray(self.levels, dtype=np.float64))
        for name in ("mean", "values"):
            array = np.asarray(getattr(self, name))
            if not np.issubdtype(array.dtype, np.floating):
                array = array.astype(np.float64)
            object.__setattr__(self, name, array)
        n = len(self.item_ids)
        if len(self.dimensions) != n:
            raise ValueError(f"{len(self.dimensions)} dimension sets for {n} item ids")
        if self.timestamps.ndim != 2 or len(self.timestamps) != n:
            raise ValueError(f"timestamps must be (n={n}, h), got {self.timestamps.shape}")
        h = self.timestamps.shape[1]
        if self.mean.shape != (n, h):
            raise ValueError(f"mean must be {(n, h)}, got {self.mean.shape}")
        if self.levels.ndim != 1:
            raise ValueError(f"levels must be one-dimensional, got {self.levels.shape}")
        q = len(self.levels)
        if q and not (np.all(self.levels > 0) and np.all(self.levels < 1) and np.all(np.diff(self.levels) > 0)):
            raise ValueError(f"levels must be increasing and within (0, 1), got {self.levels.tolist()}")
        if self.values.shape != (n, q, h):
            raise ValueError(f"values must be {(n, q, h)}, got {self.values.shape}")
        if h > 1 and not np.all(np.diff(self.timestamps, axis=1) > 0):
            raise ValueError("timestamps must increase along each series")
        for item_id, dims in zip(self.item_ids, self.dimensions, strict=True):
            if not isinstance(item_id, str) or not all(isinstance(v, str) for kv in dims.items() for v in kv):
                raise ValueError(f"item ids and dimension names and values must be strings: {item_id!r} {dims!r}")
        if len({(i, dims_key(d)) for i, d in zip(self.item_ids, self.dimensions, strict=True)}) != n:
            raise ValueError("two series share an item id and dimension values")

    @property
    def horizon(self) -> int:
        return int(self.timestamps.shape[1])

    def dimension_names(self) -> list[str]:
        return sorted({name for dims in self.dimensions for name in dims})

    # ---- storage ---------------------------------------------------------------------------

    def save(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        with _replacing(directory / ARRAYS) as partial, partial.open("wb") as out:
            # A file object, not a path: np.savez would append ".npz" to the temporary name.
            np.savez(out, timestamps=self.timestamps, mean=self.mean, levels=self.levels, values=self.values)
        meta: dict[str, Any] = {
            "format": FORMAT,
            "series": len(self.item_ids),
            "horizon": self.horizon,
            "levels": self.levels.tolist(),
            "item_ids": list(self.item_ids),
            "dimensions": [dict(d) for d in self.dimensions],
        }
        with _replacing(directory / META) as partial:
            partial.write_text(json.dumps(meta, separators=(",", ":")))

    @classmethod
    def load(cls, directory: Path) -> ForecastTable:
        """FileNotFoundError when `directory` holds no complete table; ValueError when it is inconsistent;
        NewerFormat when a newer server wrote it."""
        meta = json.loads((directory / META).read_text())
        formats.check(meta, FORMAT, "forecast table", missing=None)
        with np.load(directory / ARRAYS, allow_pickle=False) as z:
            arrays = {k: z[k] for k in ("timestamps", "mean", "levels", "values")}
        if arrays["timestamps"].shape != (meta["series"], meta["horizon"]):
            raise ValueError(f"{directory / ARRAYS} does not match {directory / META}")
        return cls(meta["item_ids"], meta["dimensions"], **arrays)

    def to_csv(self, path: Path) -> int:
        """One row per (series, step); returns how many were written."""
        dims = self.dimension_names()
        n, h = self.timestamps.shape
        dates = np.char.add(np.datetime_as_string(self.timestamps.astype("datetime64[s]"), unit="s"), "Z")
        columns = [self.mean[:, :, None], np.moveaxis(self.values, 1, 2)]  # (n, h, 1 + q)
        numbers = np.concatenate(columns, axis=2).tolist()

        def rows() -> Iterator[list[Any]]:
            for row in range(n):
                keys = [self.item_ids[row], *(self.dimensions[row].get(d, "") for d in dims)]
                for step in range(h):
                    yield [*keys, dates[row, step], *numbers[row][step]]

        path.parent.mkdir(parents=True, exist_ok=True)
        with _replacing(path) as partial, partial.open("w", newline="") as out:
            writer = csv.writer(out, lineterminator="\n")
            writer.writerow(["item_id", *dims, "date", "mean", *(level_column(x) for x in self.levels.tolist())])
            writer.writerows(rows())
        return n * h


class _replacing:
    """A temporary sibling of `target` that replaces it on success and is removed on failure."""

    def __init__(self, target: Path) -> None:
        self.target = target
        self.partial = target.with_name(f".{target.name}.{uuid.uuid4().hex[:8]}.partial")

    def __enter__(self) -> Path:
        return self.partial

    def __exit__(self, kind: object, *rest: object) -> None:
        if kind is None:
            os.replace(self.partial, self.target)
        else:
            self.partial.unlink(missing_ok=True)


@dataclass(frozen=True)
class ForecastIndex:
    """Row look-ups of one table, built once: by item id, by (item id, dimensions), by dimension value.

    Row lists are increasing, so filters intersect them in table order and pages resume by row.
    """

    table: ForecastTable
    by_item: dict[str, tuple[int, ...]] = field(init=False)
    by_series: dict[tuple[str, DimsKey], int] = field(init=False)
    # dimension name -> value -> rows holding it
    by_dimension: dict[str, dict[str, np.ndarray]] = field(init=False)
    level_index: dict[float, int] = field(init=False)

    def __post_init__(self) -> None:
        items: dict[str, list[int]] = {}
        postings: dict[str, dict[str, list[int]]] = {}
        series: dict[tuple[str, DimsKey], int] = {}
        for row, (item_id, dims) in enumerate(zip(self.table.item_ids, self.table.dimensions, strict=True)):
            items.setdefault(item_id, []).append(row)
            series[(item_id, dims_key(dims))] = row
            for name, value in dims.items():
                postings.setdefault(name, {}).setdefault(value, []).append(row)
        object.__setattr__(self, "by_item", {k: tuple(v) for k, v in items.items()})
        object.__setattr__(self, "by_series", series)
        object.__setattr__(
            self,
            "by_dimension",
            {n: {v: np.asarray(r, dtype=np.int64) for v, r in vs.items()} for n, vs in postings.items()},
        )
        object.__setattr__(self, "level_index", {level: i for i, level in enumerate(self.table.levels.tolist())})

    def rows(self, item_id: str | None, dimensions: Mapping[str, str]) -> list[int]:
        """Rows of the series with this item id (None: any) whose dimensions include `dimensions`.

        KeyError names an unknown dimension; an unknown item id or value matches nothing.
        """
        for name in dimensions:
            if name not in self.by_dimension:
                raise KeyError(name)
        if item_id is not None:
            rows = self.by_item.get(item_id, ())
            return [r for r in rows if all(self.table.dimensions[r].get(k) == v for k, v in dimensions.items())]
        matched: np.ndarray | None = None
        for name, value in dimensions.items():
            hits = self.by_dimension[name].get(value)
            if hits is None:
                return []
            matched = hits if matched is None else np.intersect1d(matched, hits, assume_unique=True)
        return [] if matched is None else matched.tolist()
