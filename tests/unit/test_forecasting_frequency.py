"""Frequency grids: parsing, season lengths, flooring, calendar arithmetic (month ends, leap years)."""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np
import pytest

from foretell.forecasting.frequency import Frequency, iso


def ts(text: str) -> int:
    return int(datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp())


def texts(values: np.ndarray) -> list[str]:
    return [iso(int(v)) for v in np.atleast_1d(values)]


@pytest.mark.parametrize(
    ("text", "unit", "multiple"),
    [
        ("1min", "min", 1),
        ("5min", "min", 5),
        ("15min", "min", 15),
        ("30min", "min", 30),
        ("H", "H", 1),
        ("1H", "H", 1),
        ("2H", "H", 2),
        ("6H", "H", 6),
        ("h", "H", 1),
        ("D", "D", 1),
        ("1D", "D", 1),
        ("d", "D", 1),
        ("W", "W", 1),
        ("w", "W", 1),
        ("M", "M", 1),
        ("MS", "M", 1),
        ("Q", "Q", 1),
        ("QS", "Q", 1),
        ("Y", "Y", 1),
        ("y", "Y", 1),
        ("YS", "Y", 1),
    ],
)
def test_parse_accepts_the_documented_forms(text: str, unit: str, multiple: int) -> None:
    assert Frequency.parse(text) == Frequency(unit, multiple)


@pytest.mark.parametrize("text", ["", "m", "7min", "5H", "2D", "fortnight", "0min", "-1H", "15 minutes"])
def test_parse_rejects_others_listing_the_accepted_forms(text: str) -> None:
    with pytest.raises(ValueError, match="15min.*H.*D.*W.*M.*Q.*Y"):
        Frequency.parse(text)


def test_text_round_trips() -> None:
    for text in ("1min", "15min", "H", "6H", "D", "W", "M", "Q", "Y"):
        assert str(Frequency.parse(text)) == text


@pytest.mark.parametrize(
    ("text", "season"),
    [("1min", 60), ("5min", 12), ("10min", 6), ("15min", 96), ("30min", 48), ("H", 24), ("2H", 12), ("6H", 4)]
    + [("D", 7), ("W", 52), ("M", 12), ("Q", 4), ("Y", 1)],
)
def test_season_lengths(text: str, season: int) -> None:
    assert Frequency.parse(text).season_length == season


def test_fixed_units_floor_to_their_buckets() -> None:
    t = np.array([ts("2024-03-05 13:47:59"), ts("2024-03-05 00:00:00")])
    assert texts(Frequency.parse("15min").floor(t)) == ["2024-03-05 13:45:00", "2024-03-05 00:00:00"]
    assert texts(Frequency.parse("H").floor(t)) == ["2024-03-05 13:00:00", "2024-03-05 00:00:00"]
    assert texts(Frequency.parse("6H").floor(t)) == ["2024-03-05 12:00:00", "2024-03-05 00:00:00"]
    assert texts(Frequency.parse("D").floor(t)) == ["2024-03-05 00:00:00", "2024-03-05 00:00:00"]


def test_floor_before_1970() -> None:
    t = np.array([ts("1969-12-31 23:59:59")])
    assert texts(Frequency.parse("H").floor(t)) == ["1969-12-31 23:00:00"]
    assert texts(Frequency.parse("M").floor(t)) == ["1969-12-01 00:00:00"]
    assert texts(Frequency.parse("Q").floor(t)) == ["1969-10-01 00:00:00"]


def test_weekly_anchor_keeps_the_weekday() -> None:
    week = Frequency.parse("W")
    monday = ts("2024-01-01 00:00:00")  # a Monday
    t = np.array([ts("2024-01-07 23:59:59"), ts("2024-01-08 00:00:00"), ts("2024-01-10 12:00:00")])
    floored = week.floor(t, anchor=monday)
    assert texts(floored) == ["2024-01-01 00:00:00", "2024-01-08 00:00:00", "2024-01-08 00:00:00"]
    assert {datetime.fromtimestamp(int(v), UTC).weekday() for v in floored} == {0}
    sunday = ts("2023-12-31 00:00:00")
    assert texts(week.floor(t, anchor=sunday)) == ["2024-01-07 00:00:00"] * 2 + ["2024-01-07 00:00:00"]
    # Anchor 0 is the epoch, a Thursday.
    assert datetime.fromtimestamp(int(week.floor(t)[0]), UTC).weekday() == 3
    assert texts(week.add(monday, np.arange(3))) == [
        "2024-01-01 00:00:00",
        "2024-01-08 00:00:00",
        "2024-01-15 00:00:00",
    ]


def test_calendar_units_floor_to_period_starts() -> None:
    t = np.array([ts("2024-01-31 23:59:59"), ts("2024-02-29 12:00:00"), ts("2024-12-31 23:59:59")])
    assert texts(Frequency.parse("M").floor(t)) == ["2024-01-01 00:00:00", "2024-02-01 00:00:00", "2024-12-01 00:00:00"]
    assert texts(Frequency.parse("Q").floor(t)) == ["2024-01-01 00:00:00", "2024-01-01 00:00:00", "2024-10-01 00:00:00"]
    assert texts(Frequency.parse("Y").floor(t)) == ["2024-01-01 00:00:00"] * 3


def test_monthly_add_and_count_across_month_ends_and_leap_years() -> None:
    month = Frequency.parse("M")
    jan = ts("2024-01-01 00:00:00")
    assert texts(month.add(jan, np.arange(4))) == [
        "2024-01-01 00:00:00",
        "2024-02-01 00:00:00",
        "2024-03-01 00:00:00",
        "2024-04-01 00:00:00",
    ]
    assert texts(month.add(jan, 13)) == ["2025-02-01 00:00:00"]
    assert texts(month.add(jan, -1)) == ["2023-12-01 00:00:00"]
    assert month.count(jan, ts("2025-02-01 00:00:00")) == 13
    assert month.count(jan, jan) == 0
    quarter, year = Frequency.parse("Q"), Frequency.parse("Y")
    assert texts(quarter.add(jan, np.arange(1, 5))) == [
        "2024-04-01 00:00:00",
        "2024-07-01 00:00:00",
        "2024-10-01 00:00:00",
        "2025-01-01 00:00:00",
    ]
    assert quarter.count(jan, ts("2026-07-01 00:00:00")) == 10
    assert texts(year.add(jan, np.arange(3))) == ["2024-01-01 00:00:00", "2025-01-01 00:00:00", "2026-01-01 00:00:00"]
    assert year.count(ts("2020-01-01 00:00:00"), jan) == 4
    with pytest.raises(ValueError, match="not on the M grid"):
        month.add(ts("2024-01-31 00:00:00"), 1)
    with pytest.raises(ValueError, match="not on the Q grid"):
        quarter.add(ts("2024-02-01 00:00:00"), 1)


def test_daily_and_hourly_add_across_a_leap_day() -> None:
    day, hour = Frequency.parse("D"), Frequency.parse("H")
    start = ts("2024-02-28 00:00:00")
    assert texts(day.add(start, np.arange(3))) == ["2024-02-28 00:00:00", "2024-02-29 00:00:00", "2024-03-01 00:00:00"]
    assert day.count(start, ts("2024-03-01 00:00:00")) == 2
    assert day.count(ts("2023-02-28 00:00:00"), ts("2023-03-01 00:00:00")) == 1
    assert hour.count(start, ts("2024-03-01 00:00:00")) == 48
    assert texts(Frequency.parse("15min").add(start, 5)) == ["2024-02-28 01:15:00"]


def test_index_is_the_vector_form_of_count() -> None:
    month = Frequency.parse("M")
    jan = ts("2023-11-01 00:00:00")
    grid = month.add(jan, np.arange(30))
    assert month.index(jan, grid).tolist() == list(range(30))
    assert [month.count(jan, int(g)) for g in grid] == list(range(30))


def test_season_and_seconds_of_calendar_units() -> None:
    assert Frequency.parse("6H").seconds == 6 * 3600
    assert Frequency.parse("W").seconds == 7 * 86400
    with pytest.raises(ValueError, match="no fixed length"):
        _ = Frequency.parse("M").seconds
