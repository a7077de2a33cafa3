"""The vectorized validator gives the row parser's values and messages, cell for cell (dataset/columns.py)."""

from __future__ import annotations

import itertools

import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from foretell.dataset.columns import BatchValidator
from foretell.dataset.rows import RowMapper
from foretell.dataset.schema_rules import Field

FIELDS = [
    Field("ITEM_ID", "STRING"),
    Field("TIMESTAMP", "LONG"),
    Field("TARGET_VALUE", "DOUBLE", nullable=True),
    Field("COUNT", "INT", nullable=True),
    Field("BIG", "LONG", nullable=True),
    Field("RATE", "FLOAT", nullable=True),
    Field("FLAG", "BOOLEAN", nullable=True),
    Field("STORE", "STRING", nullable=True),
]
TRICKY = {
    "ITEM_ID": ["a", "", "x" * 256, "x" * 257, "é" * 200, "tab\there", "bell\x07", "del\x7f", "ok id"],
    "TIMESTAMP": [
        "1700000000",
        "-100",
        " 17 ",
        "1700000000.5",
        "2024-01-31 12:00:00",
        "2024-01-31T12:00:00",
        "2024-01-31T12:00:00Z",
        "2024-01-31",
        "2024-1-31",
        "2024-01-31 1:2:3",
        " 2024-01-31 ",
        "2024-02-30",
        "0001-01-01",
        "9999999999999",
        "soon",
        "",
        "+5",
        "1e9",
    ],
    "TARGET_VALUE": ["1", "1.5", "-.5", "5.", "1e3", "1E+3", "nan", "inf", "1e16", "1e999", " 2 ", "x", "", "0x10"],
    "COUNT": ["0", "-7", "2147483647", "2147483648", "1_000", "+3", " 4", "4.0", "", "007"],
    "BIG": ["9223372036854775807", "9223372036854775808", "-1", "12345678901234567890", ""],
    "RATE": ["0.25", "1e-300", "-1e308", "1e309", "NaN", ""],
    "FLAG": ["true", "FALSE", " 1 ", "0", "yes", ""],
    "STORE": ["", "plain", "nul\x00inside", "z" * 10_001, "newline\ninside", "ünïcode"],
}


def _expected(mapper: RowMapper, header: list[str], row: list[str], number: int) -> object:
    mapper.bind_header(header)
    return mapper.parse(row, number)


def _compare(table_name: str, rows: list[list[str]]) -> None:
    mapper = RowMapper("TARGET_TIME_SERIES", FIELDS)
    header = [f.name for f in FIELDS]
    validator = BatchValidator(mapper, header)
    columns = [pa.array([r[i] for r in rows], pa.string()) for i in range(len(header))]
    table, problems = validator.convert(columns, 1)
    got_problems = {(v.field, v.description) for v in problems}
    want_problems = set()
    for n, row in enumerate(rows, start=1):
        parsed = _expected(mapper, header, row, n)
        if isinstance(parsed, list):
            want_problems |= {(v.field, v.description) for v in parsed}
            continue
        typed = table.slice(n - 1, 1).to_pylist()[0]
        for f in FIELDS:
            assert typed[f.name] == mapper.value_of(parsed, f.name), (f.name, row)
    assert got_problems == want_problems


@pytest.mark.parametrize("name", list(TRICKY))
def test_each_tricky_cell_gets_the_row_parsers_value_or_message(name: str) -> None:
    base = {"ITEM_ID": "i", "TIMESTAMP": "1700000000"}
    rows = []
    for cell in TRICKY[name]:
        values = dict(base, **{name: cell})
        rows.append([values.get(f.name, "") for f in FIELDS])
    _compare("series", rows)


def test_mixed_columns_of_good_and_bad_cells() -> None:
    rows = [
        [item, ts, value, "", "", "", flag, ""]
        for item, ts, value, flag in itertools.product(
            ["a", "b\x01"], ["1700000000", "2024-01-31 12:00:00", "bad"], ["1.5", "x"], ["true", "maybe"]
        )
    ]
    _compare("series", rows)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.text(max_size=12), st.text(max_size=12), st.text(max_size=12)), min_size=1, max_size=20))
def test_random_cells(cells: list[tuple[str, str, str]]) -> None:
    rows = [["i", ts, value, count, "", "", "", store] for ts, value, count in cells for store in ("s",)]
    _compare("series", rows)


@pytest.mark.parametrize(
    "dates",
    [
        ["2024-01-31", "1999-12-31", "2024-02-29", "0001-01-01"],  # a daily series: the one-cast path
        ["2024-01-31", "2024-02-30"],  # a day that does not exist: the row parser's message
        ["2024-01-31", "2024-1-31", "2024-01-31 "],  # not the exact shape
        ["2024-01-31", ""],  # a missing cell
        ["2024-01-31", "1700000000"],
    ],
)
def test_columns_of_dates_get_the_row_parsers_values(dates: list[str]) -> None:
    _compare("series", [["i", ts, "1", "", "", "", "", ""] for ts in dates])
