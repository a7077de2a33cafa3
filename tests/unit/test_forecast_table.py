"""ForecastTable: validation, save/load round trip, CSV export; ForecastIndex look-ups."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from foretell.forecasting.table import ARRAYS, META, ForecastIndex, ForecastTable, level_column

DAY = 86400
START = 1_704_067_200  # 2024-01-01T00:00:00Z


def make_table(**changes: Any) -> ForecastTable:
    n, h = 3, 4
    fields: dict[str, Any] = {
        "item_ids": ["a", "a", "b"],
        "dimensions": [{"store": "1", "region": "n"}, {"store": "2", "region": "n"}, {"store": "1", "region": "s"}],
        "timestamps": START + DAY * np.arange(h)[None, :].repeat(n, 0),
        "mean": np.arange(n * h, dtype=np.float64).reshape(n, h),
        "levels": np.array([0.025, 0.5, 0.9]),
        "values": np.arange(n * 3 * h, dtype=np.float64).reshape(n, 3, h) / 4,
    }
    fields.update(changes)
    return ForecastTable(**fields)


def test_save_and_load_round_trip(tmp_path: Path) -> None:
    table = make_table(mean=np.ones((3, 4), dtype=np.float32))
    table.save(tmp_path / "forecast")
    loaded = ForecastTable.load(tmp_path / "forecast")
    assert loaded.item_ids == table.item_ids and loaded.dimensions == table.dimensions
    for name in ("timestamps", "mean", "levels", "values"):
        np.testing.assert_array_equal(getattr(loaded, name), getattr(table, name))
    assert loaded.mean.dtype == np.float32 and loaded.timestamps.dtype == np.int64
    assert sorted(p.name for p in (tmp_path / "forecast").iterdir()) == sorted([ARRAYS, META])  # no partial files left


def test_save_replaces_an_earlier_table(tmp_path: Path) -> None:
    make_table().save(tmp_path)
    make_table(mean=np.full((3, 4), 7.0)).save(tmp_path)
    assert ForecastTable.load(tmp_path).mean[0, 0] == 7.0


def test_load_needs_a_complete_consistent_table(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        ForecastTable.load(tmp_path)
    make_table().save(tmp_path)
    (tmp_path / ARRAYS).unlink()
    with pytest.raises(FileNotFoundError):
        ForecastTable.load(tmp_path)
    make_table().save(tmp_path)
    meta = json.loads((tmp_path / META).read_text())
    (tmp_path / META).write_text(json.dumps({**meta, "horizon": 5}))
    with pytest.raises(ValueError, match="does not match"):
        ForecastTable.load(tmp_path)


def test_to_csv_writes_one_row_per_series_and_step(tmp_path: Path) -> None:
    table = make_table()
    path = tmp_path / "out" / "forecast.csv"
    assert table.to_csv(path) == 12
    with path.open() as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["item_id", "region", "store", "date", "mean", "p2.5", "p50", "p90"]
    assert len(rows) == 13
    assert rows[1] == ["a", "n", "1", "2024-01-01T00:00:00Z", "0.0", "0.0", "1.0", "2.0"]
    assert rows[6][:4] == ["a", "n", "2", "2024-01-02T00:00:00Z"]
    assert float(rows[6][4]) == table.mean[1, 1] and float(rows[6][7]) == table.values[1, 2, 1]
    assert [p.name for p in path.parent.iterdir()] == ["forecast.csv"]


def test_to_csv_without_dimensions_or_quantiles(tmp_path: Path) -> None:
    table = ForecastTable(["x"], [{}], np.array([[START]]), np.array([[1.5]]), np.array([]), np.zeros((1, 0, 1)))
    assert table.to_csv(tmp_path / "f.csv") == 1
    assert (tmp_path / "f.csv").read_text() == "item_id,date,mean\nx,2024-01-01T00:00:00Z,1.5\n"


def test_level_columns_drop_trailing_zeros() -> None:
    assert [level_column(x) for x in (0.1, 0.5, 0.9, 0.025, 0.99, 0.07)] == ["p10", "p50", "p90", "p2.5", "p99", "p7"]


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"dimensions": [{}, {}]}, "dimension sets"),
        ({"timestamps": np.zeros(3, dtype=np.int64)}, "timestamps"),
        ({"mean": np.zeros((3, 5))}, "mean"),
        ({"levels": np.array([0.5, 0.1, 0.9])}, "levels"),
        ({"levels": np.array([0.0, 0.5, 0.9])}, "levels"),
        ({"levels": np.array([[0.1, 0.5, 0.9]])}, "levels"),
        ({"values": np.zeros((3, 2, 4))}, "values"),
        ({"timestamps": np.full((3, 4), START)}, "increase"),
        ({"dimensions": [{"store": "1"}, {"store": "1"}, {}]}, "share"),
        ({"item_ids": ["a", "a", 3]}, "strings"),
        ({"dimensions": [{"store": 1}, {}, {}]}, "strings"),
    ],
)
def test_bad_shapes_are_value_errors(changes: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        make_table(**changes)


def test_index_finds_rows_by_item_and_dimensions() -> None:
    index = ForecastIndex(make_table())
    assert index.rows("a", {}) == [0, 1]
    assert index.rows("a", {"store": "2"}) == [1]
    assert index.rows("b", {"store": "2"}) == []
    assert index.rows("nope", {}) == []
    assert index.rows(None, {"store": "1"}) == [0, 2]
    assert index.rows(None, {"store": "1", "region": "s"}) == [2]
    assert index.rows(None, {"store": "3"}) == []
    assert index.by_series[("a", (("region", "n"), ("store", "2")))] == 1
    assert index.level_index == {0.025: 0, 0.5: 1, 0.9: 2}
    with pytest.raises(KeyError):
        index.rows(None, {"color": "red"})
