"""Series building: grid, aggregation, fill policies, related/metadata alignment, validation, the export files, plots."""

from __future__ import annotations

import csv
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from foretell.dataset.rows import RowMapper
from foretell.dataset.schema_rules import Field
from foretell.forecasting.frequency import Frequency, iso
from foretell.forecasting.series import FILL_METHODS, FillPolicy, SeriesError, build_series, load_snapshot

DAY = Frequency.parse("D")
NAN = float("nan")


def ts(text: str) -> int:
    return int(datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp())


def day(n: int, hour: int = 0) -> int:
    """2024-01-01 (a Monday) plus n days and `hour` hours."""
    return ts("2024-01-01 00:00:00") + n * 86400 + hour * 3600


def frame(rows: list[tuple[Any, ...]], extra: tuple[str, ...] = ()) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=["ITEM_ID", "TIMESTAMP", "TARGET_VALUE", *extra])


def series_of(result: Any, item: str, **dims: str) -> np.ndarray:
    for i, (name, values) in enumerate(zip(result.item_ids, result.dimensions, strict=True)):
        if name == item and values == dims:
            target: np.ndarray = result.targets[i]
            return target
    raise KeyError((item, dims))


def same(actual: np.ndarray, expected: list[float]) -> bool:
    return bool(np.array_equal(np.asarray(actual, dtype=np.float64), np.asarray(expected), equal_nan=True))


# ---------------------------------------------------------------- grid and aggregation


def test_finer_data_is_summed_into_buckets_and_missing_values_are_left_out() -> None:
    rows = [("a", day(0, h), float(h)) for h in range(24)]  # 0 + 1 + ... + 23 = 276 on day 0
    rows += [("a", day(1, 3), NAN), ("a", day(1, 5), 4.0), ("a", day(2, 1), NAN)]
    result = build_series(frame(rows), DAY, horizon=1, fill_policies=[FillPolicy("TARGET_VALUE", "nan")])
    assert result.item_ids == ["a"]
    assert same(result.targets[0], [276.0, 4.0, NAN])  # day 2 holds only a missing value
    assert result.starts.tolist() == [day(0)]
    assert result.end == day(2)


def test_row_order_does_not_matter_and_series_are_sorted_by_item_then_dimensions() -> None:
    rows = [
        ("b", day(2), 3.0, "s2"),
        ("a", day(1), 2.0, "s1"),
        ("b", day(0), 1.0, "s1"),
        ("a", day(0), 1.0, "s1"),
        ("b", day(1), 5.0, "s2"),
    ]
    shuffled = build_series(frame(rows, ("store",)), DAY, 1, dimensions=["store"])
    ordered = build_series(frame(sorted(rows), ("store",)), DAY, 1, dimensions=["store"])
    assert shuffled.item_ids == ["a", "b", "b"]
    assert shuffled.dimensions == [{"store": "s1"}, {"store": "s1"}, {"store": "s2"}]
    assert shuffled.dimension_fields == ["store"]
    for left, right in zip(shuffled.targets, ordered.targets, strict=True):
        assert same(left, right.tolist())
    assert same(series_of(shuffled, "b", store="s2"), [5.0, 3.0])
    assert shuffled.starts.tolist() == [day(0), day(0), day(1)]


def test_dimensions_not_requested_are_summed_over() -> None:
    rows = [("a", day(0), 1.0, "s1"), ("a", day(0), 2.0, "s2"), ("a", day(1), 4.0, "s2")]
    result = build_series(frame(rows, ("store",)), DAY, 1)
    assert result.dimensions == [{}]
    assert same(result.targets[0], [3.0, 4.0])


def test_duplicate_rows_are_an_error_naming_item_and_time() -> None:
    rows = [("a", day(0), 1.0), ("b", day(0, 6), 1.0), ("a", day(1), 2.0), ("b", day(0, 6), 5.0)]
    with pytest.raises(SeriesError, match=r"item 'b' has two rows at 2024-01-01 06:00:00 \(rows 2 and 4\)") as err:
        build_series(frame(rows), DAY, 1)
    assert err.value.field == "TIMESTAMP"


def test_duplicates_include_the_dimension_values() -> None:
    rows = [("a", day(0), 1.0, "s1"), ("a", day(0), 1.0, "s2"), ("a", day(0), 1.0, "s2")]
    with pytest.raises(SeriesError, match=r"item 'a' \(store='s2'\) has two rows at 2024-01-01 00:00:00"):
        build_series(frame(rows, ("store",)), DAY, 1)


def test_weekly_grid_starts_on_the_first_timestamps_weekday() -> None:
    # Mondays (and a Wednesday, summed into its Monday week); no row on the third Monday.
    rows = [("a", day(0), 1.0), ("a", day(2), 2.0), ("a", day(7), 4.0), ("a", day(21), 8.0)]
    result = build_series(frame(rows), Frequency.parse("W"), horizon=2)
    assert same(result.targets[0], [3.0, 4.0, 0.0, 8.0])
    stamps = result.timestamps(0)
    assert [datetime.fromtimestamp(int(t), UTC).weekday() for t in stamps] == [0, 0, 0, 0]
    assert [iso(int(t)) for t in result.future(0, 2)] == ["2024-01-29 00:00:00", "2024-02-05 00:00:00"]


def test_monthly_grid_over_a_leap_february() -> None:
    rows = [("a", ts("2024-01-31 23:00:00"), 1.0), ("a", ts("2024-02-29 12:00:00"), 2.0)]
    rows += [("a", ts("2024-02-01 00:00:00"), 3.0), ("a", ts("2024-04-30 00:00:00"), 5.0)]
    result = build_series(frame(rows), Frequency.parse("M"), horizon=3)
    assert same(result.targets[0], [1.0, 5.0, 0.0, 5.0])
    assert [iso(int(t)) for t in result.timestamps(0)] == [
        "2024-01-01 00:00:00",
        "2024-02-01 00:00:00",
        "2024-03-01 00:00:00",
        "2024-04-01 00:00:00",
    ]
    assert [iso(int(t)) for t in result.future(0, 3)][-1] == "2024-07-01 00:00:00"


def test_sub_hourly_grid() -> None:
    rows = [("a", day(0) + 60 * m, 1.0) for m in (0, 5, 14, 15, 44)]
    result = build_series(frame(rows), Frequency.parse("15min"), horizon=4)
    assert same(result.targets[0], [3.0, 1.0, 1.0])
    assert result.end == day(0) + 30 * 60


# ---------------------------------------------------------------- filling


GAPPY = [("a", day(0), 1.0), ("a", day(1), NAN), ("a", day(3), 4.0), ("a", day(4), 10.0)]
# Series b runs to day 6, so a is back-filled on days 5 and 6.
LONG = [("b", day(0), 1.0), ("b", day(6), 1.0)]


@pytest.mark.parametrize(
    ("policy", "expected"),
    [
        (FillPolicy("TARGET_VALUE", "zero"), [1, 0, 0, 4, 10, 0, 0]),
        (FillPolicy("TARGET_VALUE", "value", 7.5), [1, 7.5, 7.5, 4, 10, 7.5, 7.5]),
        (FillPolicy("TARGET_VALUE", "mean"), [1, 5, 5, 4, 10, 5, 5]),
        (FillPolicy("TARGET_VALUE", "median"), [1, 4, 4, 4, 10, 4, 4]),
        (FillPolicy("TARGET_VALUE", "previous"), [1, 1, 1, 4, 10, 10, 10]),
        (FillPolicy("TARGET_VALUE", "nan"), [1, NAN, NAN, 4, 10, NAN, NAN]),
    ],
)
def test_each_fill_method_fills_gaps_and_the_back(policy: FillPolicy, expected: list[float]) -> None:
    result = build_series(frame(GAPPY + LONG), DAY, 1, fill_policies=[policy])
    assert same(series_of(result, "a"), expected)
    assert result.end == day(6)
    assert len(series_of(result, "b")) == 7


def test_default_fill_is_zero_and_there_is_no_front_fill() -> None:
    rows = [("a", day(0), 1.0), ("a", day(5), 1.0), ("late", day(3), 2.0)]
    result = build_series(frame(rows), DAY, 1)
    assert same(series_of(result, "late"), [2.0, 0.0, 0.0])
    assert result.starts.tolist() == [day(0), day(3)]
    assert [iso(int(t)) for t in result.timestamps(1)] == [iso(day(n)) for n in (3, 4, 5)]


@pytest.mark.parametrize("method", ["zero", "mean", "median", "previous", "value"])
def test_a_series_with_only_missing_values_is_still_a_series(method: str) -> None:
    rows = [("a", day(0), 1.0), ("a", day(2), 1.0), ("empty", day(1), NAN)]
    result = build_series(frame(rows), DAY, 1, fill_policies=[FillPolicy("TARGET_VALUE", method, 3.0)])
    assert same(series_of(result, "empty"), [3.0, 3.0] if method == "value" else [0.0, 0.0])
    nan = build_series(frame(rows), DAY, 1, fill_policies=[FillPolicy("TARGET_VALUE", "nan")])
    assert same(series_of(nan, "empty"), [NAN, NAN])


def test_previous_does_not_cross_into_the_next_series() -> None:
    rows = [("a", day(0), 9.0), ("b", day(0), NAN), ("b", day(1), 2.0), ("a", day(2), 1.0)]
    result = build_series(frame(rows), DAY, 1, fill_policies=[FillPolicy("TARGET_VALUE", "previous")])
    assert same(series_of(result, "a"), [9.0, 9.0, 1.0])
    assert same(series_of(result, "b"), [0.0, 2.0, 2.0])


# ---------------------------------------------------------------- validation


def test_bad_requests_name_their_field() -> None:
    target = frame([("a", day(0), 1.0, "s1")], ("store",))
    cases: list[tuple[dict[str, Any], str, str]] = [
        ({"horizon": 0}, "forecast_horizon", "horizon"),
        ({"dimensions": ["region"]}, "forecast_dimensions", "'region'.*dimensions: store"),
        ({"dimensions": ["store", "store"]}, "forecast_dimensions", "twice"),
        ({"fill_policies": [FillPolicy("price", "zero")]}, "price", "unknown field 'price'"),
        ({"fill_policies": [FillPolicy("TARGET_VALUE", "backfill")]}, "TARGET_VALUE", "not one of zero, value"),
        ({"fill_policies": [FillPolicy("TARGET_VALUE", "value", NAN)]}, "TARGET_VALUE", "finite"),
    ]
    for kwargs, field, message in cases:
        args: dict[str, Any] = {"horizon": 1, **kwargs}
        with pytest.raises(SeriesError, match=message) as err:
            build_series(target, DAY, **args)
        assert err.value.field == field, kwargs


def test_non_numeric_target_value_names_row_and_item() -> None:
    target = pd.DataFrame({"ITEM_ID": ["a", "b", "c"], "TIMESTAMP": [day(0)] * 3, "TARGET_VALUE": ["1", "", "lots"]})
    with pytest.raises(SeriesError, match=r"row 3 \(item 'c'\) has TARGET_VALUE 'lots'") as err:
        build_series(target, DAY, 1)
    assert err.value.field == "TARGET_VALUE"
    target["TARGET_VALUE"] = ["1", None, "2.5"]  # text numbers are fine; empty is missing
    assert same(build_series(target, DAY, 1).targets[2], [2.5])


@pytest.mark.parametrize("huge", [1e308, -1e308, "1e300", 2e15])
def test_values_beyond_the_magnitude_bound_are_a_series_error_not_a_crash(huge: object) -> None:
    # Stored before imports bounded them, values near float64's limit made statsmodels fail with
    # "cannot convert float NaN to integer" (INTERNAL); now the predictor fails naming the row.
    target = pd.DataFrame({"ITEM_ID": ["a", "a"], "TIMESTAMP": [day(0), day(1)], "TARGET_VALUE": [1.0, huge]})
    with pytest.raises(SeriesError, match=r"row 2 \(item 'a'\) has TARGET_VALUE .* at most 1e\+15") as err:
        build_series(target, DAY, 1)
    assert err.value.field == "TARGET_VALUE"


def test_missing_columns_ids_and_times() -> None:
    with pytest.raises(SeriesError, match="no TARGET_VALUE column"):
        build_series(pd.DataFrame({"ITEM_ID": ["a"], "TIMESTAMP": [0]}), DAY, 1)
    with pytest.raises(SeriesError, match="no rows"):
        build_series(frame([]), DAY, 1)
    with pytest.raises(SeriesError, match="row 2 has no ITEM_ID") as err:
        build_series(frame([("a", day(0), 1.0), (None, day(0), 1.0)]), DAY, 1)
    assert err.value.field == "ITEM_ID"
    with pytest.raises(SeriesError, match=r"row 1 \(item 'a'\) has no TIMESTAMP") as err:
        build_series(frame([("a", None, 1.0)]), DAY, 1)
    assert err.value.field == "TIMESTAMP"


def test_timestamps_may_be_text() -> None:
    target = frame([("a", "2024-01-02 00:00:00", 1.0), ("a", "2024-01-01T10:00:00Z", 2.0)])
    result = build_series(target, DAY, 1)
    assert same(result.targets[0], [2.0, 1.0])
    assert result.starts.tolist() == [day(0)]


# ---------------------------------------------------------------- related time series


def related_frame(rows: list[tuple[Any, ...]], columns: tuple[str, ...]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=["ITEM_ID", "TIMESTAMP", *columns])


def test_related_fields_align_with_the_target_and_extend_past_the_end() -> None:
    target = frame([("a", day(1), 1.0), ("a", day(2), 1.0), ("b", day(2), 1.0)])
    related = related_frame(
        [
            ("a", day(0), 10.0, 0),  # before a starts: carried into its first step
            ("a", day(2), 12.0, 1),
            ("a", day(4), 14.0, NAN),  # a future value; promo missing there
            ("b", day(2), 5.0, 1),
            ("b", day(3, 6), 7.0, 0),  # finer than daily: averaged into the day
            ("b", day(3, 18), 8.0, 0),
            ("z", day(0), 1.0, 1),  # an item without target rows: ignored
        ],
        ("price", "promo"),
    )
    result = build_series(target, DAY, horizon=3, related=related)
    assert result.related_fields == ["price", "promo"]
    assert result.related is not None
    a, b = result.related
    assert a.shape == (2 + 3, 2) and b.shape == (1 + 3, 2)
    assert same(a[:, 0], [10.0, 12.0, 12.0, 14.0, 14.0])
    assert same(a[:, 1], [0.0, 1.0, 1.0, 1.0, 1.0])
    assert same(b[:, 0], [5.0, 7.5, 7.5, 7.5])
    assert result.horizon == 3


def test_related_fill_policies_also_fill_the_future() -> None:
    target = frame([("a", day(0), 1.0), ("a", day(3), 1.0), ("b", day(0), 1.0)])
    related = related_frame([("a", day(0), 2.0), ("a", day(2), 4.0)], ("price",))
    cases = {
        "previous": [2.0, 2.0, 4.0, 4.0, 4.0, 4.0],
        "zero": [2.0, 0.0, 4.0, 0.0, 0.0, 0.0],
        "value": [2.0, -1.0, 4.0, -1.0, -1.0, -1.0],
        "mean": [2.0, 3.0, 4.0, 3.0, 3.0, 3.0],
        "median": [2.0, 3.0, 4.0, 3.0, 3.0, 3.0],
        "nan": [2.0, NAN, 4.0, NAN, NAN, NAN],
    }
    assert set(cases) == set(FILL_METHODS)
    for method, expected in cases.items():
        policies = [FillPolicy("price", method, -1.0)]
        result = build_series(target, DAY, 2, fill_policies=policies, related=related)
        assert result.related is not None
        assert same(result.related[0][:, 0], expected), method
        # b has no related rows at all: zeros, or NaN with "nan" (and the constant with "value").
        fill = {"nan": NAN, "value": -1.0}.get(method, 0.0)
        assert same(result.related[1][:, 0], [fill] * 6), method


def test_related_per_item_applies_to_every_store_and_per_store_matches_its_store() -> None:
    target = frame(
        [("a", day(0), 1.0, "s1", "north"), ("a", day(0), 2.0, "s2", "south"), ("a", day(1), 2.0, "s2", "north")],
        ("store", "region"),
    )
    per_item = related_frame([("a", day(0), 3.0)], ("price",))
    result = build_series(target, DAY, 1, dimensions=["store", "region"], related=per_item)
    assert result.related is not None
    assert [r[:, 0].tolist() for r in result.related] == [[3.0, 3.0, 3.0], [3.0, 3.0], [3.0, 3.0, 3.0]]
    per_store = related_frame([("a", day(0), "s1", 1.0), ("a", day(0), "s2", 2.0)], ("store", "price"))
    result = build_series(target, DAY, 1, dimensions=["store", "region"], related=per_store)
    assert result.related is not None and result.related_fields == ["price"]
    got = {(d["store"], d["region"]): r[:, 0].tolist() for d, r in zip(result.dimensions, result.related, strict=True)}
    assert got == {("s1", "north"): [1.0, 1.0, 1.0], ("s2", "north"): [2.0, 2.0], ("s2", "south"): [2.0, 2.0, 2.0]}


def test_related_errors() -> None:
    target = frame([("a", day(0), 1.0, "s1")], ("store",))
    per_store = related_frame([("a", day(0), "s1", 1.0)], ("store", "price"))
    with pytest.raises(SeriesError, match="per 'store', which is not a forecast dimension") as err:
        build_series(target, DAY, 1, related=per_store)
    assert err.value.field == "store"
    colour = related_frame([("a", day(0), "red", 1.0)], ("colour", "price"))
    with pytest.raises(SeriesError, match="'colour' is text but not a forecast dimension") as err:
        build_series(target, DAY, 1, related=colour)
    assert err.value.field == "colour"
    bad = related_frame([("a", day(0), "1.5"), ("a", day(1), "cheap")], ("price",))
    with pytest.raises(SeriesError, match=r"related time series: row 2 \(item 'a'\) has price 'cheap'") as err:
        build_series(target, DAY, 1, related=bad)
    assert err.value.field == "price"
    twice = related_frame([("a", day(0), 1.0), ("a", day(0), 2.0)], ("price",))
    with pytest.raises(SeriesError, match="related time series: item 'a' has two rows at 2024-01-01") as err:
        build_series(target, DAY, 1, related=twice)
    assert err.value.field == "TIMESTAMP"


def test_related_booleans_are_numbers() -> None:
    target = frame([("a", day(0), 1.0), ("a", day(1), 1.0)])
    related = related_frame([("a", day(0), "true"), ("a", day(1), "False")], ("promo",))
    result = build_series(target, DAY, 1, related=related)
    assert result.related is not None
    assert same(result.related[0][:, 0], [1.0, 0.0, 0.0])


# ---------------------------------------------------------------- item metadata


def test_metadata_codes_and_cold_start_items() -> None:
    target = frame([("a", day(0), 1.0), ("b", day(0), 1.0), ("c", day(0), 1.0)])
    metadata = pd.DataFrame(
        {
            "ITEM_ID": ["c", "a", "new", "old"],
            "colour": ["red", "blue", None, "red"],
            "size": ["L", "", "S", "M"],
            "weight": [1.5, 2.0, 3.0, 4.0],  # numeric: ignored
        }
    )
    result = build_series(target, DAY, 1, item_metadata=metadata)
    assert result.static_fields == ["colour", "size"]
    assert result.cardinalities == [3, 4]  # blue, red; L, M, S; plus 0
    assert result.static is not None
    assert result.static.tolist() == [[1, 0], [0, 0], [2, 1]]  # a: blue, no size; b: no row; c: red, L
    assert result.cold_items == ["new", "old"]
    assert result.cold_static is not None
    assert result.cold_static.tolist() == [[0, 3], [2, 2]]


def test_cold_start_items_get_their_future_covariates() -> None:
    target = frame([("a", day(0), 1.0), ("a", day(1), 2.0)])
    related = pd.DataFrame(
        {
            "ITEM_ID": ["a", "a", "a", "new", "new", "new"],
            "TIMESTAMP": [day(0), day(1), day(2), day(1), day(2), day(3)],
            "price": [5.0, 6.0, 7.0, 9.0, 8.0, 7.5],
        }
    )
    metadata = pd.DataFrame({"ITEM_ID": ["a", "new", "bare"], "colour": ["red", "blue", "red"]})
    result = build_series(target, DAY, 2, related=related, item_metadata=metadata)
    assert result.cold_items == ["bare", "new"] and result.cold_related is not None
    # Only the two steps after the end (days 2 and 3); "bare" has no related rows: the fill is 0.
    assert same(result.cold_related[1][:, 0], [8.0, 7.5])
    assert same(result.cold_related[0][:, 0], [0.0, 0.0])
    assert build_series(target, DAY, 2, item_metadata=metadata).cold_related is None


def test_metadata_errors_and_absence() -> None:
    target = frame([("a", day(0), 1.0)])
    plain = build_series(target, DAY, 1)
    assert plain.static is None and plain.static_fields == [] and plain.cold_items == [] and plain.cold_static is None
    assert plain.related is None and plain.related_fields == []
    with pytest.raises(SeriesError, match="item 'a' has two rows") as err:
        build_series(target, DAY, 1, item_metadata=pd.DataFrame({"ITEM_ID": ["a", "a"], "colour": ["x", "y"]}))
    assert err.value.field == "ITEM_ID"


# ---------------------------------------------------------------- the export files


def write_export(path: Path, dataset_type: str, fields: list[Field], rows: list[list[str]]) -> None:
    """CSV cells as the dataset service exports them: parsed by its RowMapper, written by to_csv."""
    mapper = RowMapper(dataset_type, fields)
    mapper.bind_header([f.name for f in fields])
    with path.open("w", encoding="utf-8", newline="") as out:
        writer = csv.writer(out)
        writer.writerow([f.name for f in fields])
        for i, row in enumerate(rows):
            record = mapper.parse(row, i + 1)
            assert isinstance(record, dict), record
            writer.writerow(mapper.to_csv(record))


def test_load_snapshot_reads_the_export_format(tmp_path: Path) -> None:
    write_export(
        tmp_path / "target_time_series.csv",
        "TARGET_TIME_SERIES",
        [
            Field("ITEM_ID", "STRING"),
            Field("TIMESTAMP", "TIMESTAMP"),
            Field("TARGET_VALUE", "FLOAT"),
            Field("store", "STRING", nullable=True),
            Field("weight", "DOUBLE", nullable=True),
        ],
        [
            ["007", "2024-01-02T00:00:00", "2", "01", "1.5"],
            ["007", "1704067200", "1", "01", ""],
            ["007", "2024-01-04 00:00:00", "3", "01", "2"],
            ["008", "2024-01-01 00:00:00", "5", "", "3"],
        ],
    )
    write_export(
        tmp_path / "related_time_series.csv",
        "RELATED_TIME_SERIES",
        [
            Field("ITEM_ID", "STRING"),
            Field("TIMESTAMP", "TIMESTAMP"),
            Field("store", "STRING", nullable=True),
            Field("price", "DOUBLE", nullable=True),
            Field("units", "INT", nullable=True),
            Field("promo", "BOOLEAN", nullable=True),
        ],
        [
            ["007", "2024-01-01 00:00:00", "01", "9.5", "3", "true"],
            ["007", "2024-01-04 00:00:00", "01", "", "4", "false"],
        ],
    )
    write_export(
        tmp_path / "item_metadata.csv",
        "ITEM_METADATA",
        [Field("ITEM_ID", "STRING"), Field("brand", "STRING", nullable=True), Field("size", "FLOAT", nullable=True)],
        [["007", "acme", "1.5"], ["009", "", "2"]],
    )
    text = (tmp_path / "target_time_series.csv").read_text().splitlines()
    assert text[0] == "ITEM_ID,TIMESTAMP,TARGET_VALUE,store,weight"
    assert text[1] == "007,2024-01-02 00:00:00,2.0,01,1.5"  # the export's own format

    result = load_snapshot(tmp_path, DAY, 2, dimensions=["store"], fill_policies=[FillPolicy("units", "zero")])
    assert result.item_ids == ["007", "008"]  # leading zeros kept
    assert result.dimensions == [{"store": "01"}, {"store": ""}]
    assert same(result.targets[0], [1.0, 2.0, 0.0, 3.0])
    assert same(result.targets[1], [5.0, 0.0, 0.0, 0.0])
    assert result.related_fields == ["price", "units", "promo"]
    assert result.related is not None
    assert (
        result.related[0].tolist()
        == [[9.5, 3.0, 1.0], [9.5, 0.0, 1.0], [9.5, 0.0, 1.0], [9.5, 4.0, 0.0]] + [[9.5, 0.0, 0.0]] * 2
    )
    assert result.related[1].tolist() == [[0.0, 0.0, 0.0]] * 6  # no related rows for store ""
    assert result.static_fields == ["brand"]  # size is a FLOAT: ignored
    assert result.static is not None and result.static.tolist() == [[1], [0]]
    assert result.cold_items == ["009"]


def test_load_snapshot_without_optional_files_and_without_target(tmp_path: Path) -> None:
    with pytest.raises(SeriesError, match="no target_time_series.csv"):
        load_snapshot(tmp_path, DAY, 1)
    (tmp_path / "target_time_series.csv").write_text(
        "ITEM_ID,TIMESTAMP,TARGET_VALUE\na,2024-01-01 00:00:00,1.0\na,2024-01-01 00:00:00,2.0\n"
    )
    with pytest.raises(SeriesError, match="item 'a' has two rows at 2024-01-01 00:00:00"):
        load_snapshot(tmp_path, DAY, 1)
    (tmp_path / "target_time_series.csv").write_text(
        "ITEM_ID,TIMESTAMP,TARGET_VALUE\na,2024-01-01 00:00:00,1.0\na,2024-01-03 00:00:00,x\n"
    )
    with pytest.raises(SeriesError, match=r"row 2 \(item 'a'\) has TARGET_VALUE 'x'"):
        load_snapshot(tmp_path, DAY, 1)
    (tmp_path / "target_time_series.csv").write_text(
        "ITEM_ID,TIMESTAMP,TARGET_VALUE\na,2024-01-01 00:00:00,1.0\na,2024-01-03 00:00:00,3\n"
    )
    result = load_snapshot(tmp_path, DAY, 1)
    assert same(result.targets[0], [1.0, 0.0, 3.0])
    assert result.related is None and result.static is None


# ---------------------------------------------------------------- scale


@pytest.mark.slow
def test_ten_thousand_series_of_a_thousand_steps_build_in_seconds() -> None:
    rng = np.random.default_rng(0)
    n, steps = 10_000, 1_000
    keep = rng.random(n * steps) > 0.05  # 5% of the days missing
    codes = np.repeat(np.arange(n), steps)[keep]
    ids = pd.Categorical.from_codes(codes, [f"item_{i:05d}" for i in range(n)])  # as load_snapshot reads ids
    stamps = np.tile(day(0) + 86400 * np.arange(steps), n)[keep]
    target = pd.DataFrame({"ITEM_ID": ids, "TIMESTAMP": stamps, "TARGET_VALUE": rng.random(len(codes))})
    started = time.perf_counter()
    result = build_series(target, DAY, 28, fill_policies=[FillPolicy("TARGET_VALUE", "previous")])
    elapsed = time.perf_counter() - started
    assert len(result.targets) == n and sum(len(t) for t in result.targets) >= n * (steps - 20)
    assert not any(np.isnan(t).any() for t in result.targets)
    assert elapsed < 20, elapsed  # about 2 s on an idle 2-core machine; generous for a loaded CI box


# ---------------------------------------------------------------- plots


def test_plot_forecast_writes_a_png(tmp_path: Path) -> None:
    from foretell.forecasting.plot import plot_forecast

    history_ts = Frequency.parse("D").add(day(0), np.arange(60))
    forecast_ts = Frequency.parse("D").add(day(60), np.arange(14))
    history = 10 + np.sin(np.arange(60) / 3)
    mean = np.full(14, 10.0)
    path = tmp_path / "forecast.png"
    plot_forecast(path, history_ts, history, forecast_ts, mean, mean - 1, mean + 1, title="item 007")
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(data) > 10_000  # a drawn figure, not an empty canvas
    plain = tmp_path / "no-band.png"
    plot_forecast(plain, history_ts, history, forecast_ts, mean, None, None)
    assert plain.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError, match="upper needs one value per forecast step"):
        plot_forecast(tmp_path / "bad.png", history_ts, history, forecast_ts, mean, mean, mean[:3])
    assert not (tmp_path / "bad.png").exists()


# ---- one shard's series from Parquet parts ------------------------------------------------------


def _parquet_snapshot(directory: Path, seed: int = 0) -> int:
    """Target (two part files, small row groups) and related Parquet parts as a snapshot manifest lists them;
    returns the target's row count. Items with two stores, a missing store, gaps, late starts, early ends,
    and related rows that start before any target row."""
    import json

    import pyarrow as pa
    import pyarrow.parquet as pq

    from foretell.core.snapshot_files import MANIFEST

    rng = np.random.default_rng(seed)
    t0 = 1_700_006_400 + 3 * 86_400  # not a Monday: weekly buckets keep the first timestamp's weekday
    rows: list[tuple[str, str | None, int, float]] = []
    for i in range(14):
        stores: list[str | None] = ["a", "b"] if i % 3 == 0 else [None] if i == 5 else ["a"]
        for store in stores:
            # The last items start late and end early: a shard of only those still needs the whole set's grid.
            first, last = (20 if i >= 11 or i % 4 == 1 else 0), (60 if i >= 11 or i % 5 == 2 else 90)
            for d in range(first, last):
                if rng.random() < 0.85:  # gaps
                    rows.append((f"item{i:02d}", store, t0 + d * 86_400 + int(rng.integers(0, 3600)), float(d % 7 + i)))
    order = rng.permutation(len(rows))
    table = pa.table(
        {
            "ITEM_ID": pa.array([rows[k][0] for k in order], pa.string()),
            "store": pa.array([rows[k][1] for k in order], pa.string()),
            "TIMESTAMP": pa.array([rows[k][2] for k in order], pa.int64()),
            "TARGET_VALUE": pa.array([rows[k][3] for k in order], pa.float64()),
        }
    )
    half = len(table) // 2
    parts = [directory / "t0.parquet", directory / "t1.parquet"]
    pq.write_table(table.slice(0, half), parts[0], row_group_size=97)
    pq.write_table(table.slice(half), parts[1], row_group_size=97)
    priced = range(8)  # the other items have no related rows
    related = pa.table(
        {
            "ITEM_ID": pa.array([f"item{i:02d}" for i in priced for _ in range(0, 100, 3)], pa.string()),
            "TIMESTAMP": pa.array([t0 + (d - 10) * 86_400 for _ in priced for d in range(0, 100, 3)], pa.int64()),
            "price": pa.array([float(i + d / 10) for i in priced for d in range(0, 100, 3)], pa.float64()),
        }
    )
    pq.write_table(related, directory / "r.parquet", row_group_size=50)
    datasets = {
        "target_time_series": {"part_uris": [str(p) for p in parts], "row_count": len(table)},
        "related_time_series": {"part_uris": [str(directory / "r.parquet")], "row_count": len(related)},
    }
    (directory / MANIFEST).write_text(json.dumps({"store": {}, "datasets": datasets}))
    return len(table)


@pytest.mark.parametrize("frequency", ["D", "W"])
def test_each_shard_reads_its_own_rows_and_builds_the_whole_sets_series(
    tmp_path: Path, frequency: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from foretell.core import snapshot_files
    from foretell.forecasting.predictor import name_key
    from foretell.forecasting.series import load_shard
    from foretell.training.shards import partition

    total_rows = _parquet_snapshot(tmp_path)
    policies = [FillPolicy("TARGET_VALUE", "previous"), FillPolicy("price", "previous")]
    freq = Frequency.parse(frequency)
    whole = load_snapshot(tmp_path, freq, 3, ["store"], policies)
    assert len(whole) == 19 and "" in {d["store"] for d in whole.dimensions}
    read: list[int] = []
    real_read = snapshot_files.read_table

    def counting(*args: Any, **kwargs: Any) -> Any:
        table = real_read(*args, **kwargs)
        if args[1] == "target_time_series" and table is not None:
            read.append(table.num_rows)
        return table

    monkeypatch.setattr(snapshot_files, "read_table", counting)
    for n in (1, 2, 3, 5):
        seen: list[int] = []
        read.clear()
        for index in range(n):
            shard = load_shard(
                tmp_path,
                freq,
                3,
                ["store"],
                policies,
                lambda names, n=n, index=index: partition([name_key(*name) for name in names], n, index),
            )
            assert shard.total == len(whole) and shard.longest == max(len(t) for t in whole.targets)
            assert shard.series.end == whole.end and len(shard.series) == len(shard.positions)
            for local, position in enumerate(shard.positions):
                assert shard.series.item_ids[local] == whole.item_ids[position]
                assert shard.series.dimensions[local] == whole.dimensions[position]
                assert shard.series.starts[local] == whole.starts[position]
                np.testing.assert_array_equal(shard.series.targets[local], whole.targets[position])
                assert shard.series.related is not None and whole.related is not None
                np.testing.assert_array_equal(shard.series.related[local], whole.related[position])
            seen += shard.positions
        assert sorted(seen) == list(range(len(whole)))
        # Each shard read its items' rows only (an item whose stores straddle two shards is read by both).
        assert len(read) == n and (n == 1 or max(read) < total_rows) and sum(read) < total_rows + total_rows // 3


def test_a_bad_row_in_a_shard_is_named_as_the_whole_set_names_it(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from foretell.core import snapshot_files
    from foretell.forecasting.series import load_shard

    _parquet_snapshot(tmp_path)
    part = tmp_path / "t1.parquet"
    table = pq.read_table(part)
    pq.write_table(pa.concat_tables([table, table.slice(0, 1)]), part)  # a repeated (item, store, time)
    with pytest.raises(SeriesError) as whole:
        load_snapshot(tmp_path, DAY, 3, ["store"])
    item = str(whole.value).split("'")[1]
    names = [n for n in snapshot_files.distinct(tmp_path, "target_time_series", ["ITEM_ID"]).column(0).to_pylist()]
    assert item in names
    with pytest.raises(SeriesError) as shard:
        load_shard(tmp_path, DAY, 3, ["store"], [], lambda found: [i for i, n in enumerate(found) if n[0] == item])
    assert str(shard.value) == str(whole.value) and shard.value.field == "TIMESTAMP"
