"""Row parsing and schema rules: the validation core, without a server."""

from __future__ import annotations

import pytest

from foretell.core.errors import InvalidArgument
from foretell.dataset.rows import RowMapper, parse_timestamp
from foretell.dataset.schema_rules import Field, check_fits, validate_schema

INTERACTIONS = [
    Field("USER_ID", "STRING"),
    Field("ITEM_ID", "STRING"),
    Field("TIMESTAMP", "LONG"),
    Field("EVENT_VALUE", "FLOAT", nullable=True),
    Field("DEVICE", "STRING", nullable=True),
    Field("COUNT", "INT", nullable=True),
    Field("PREMIUM", "BOOLEAN", nullable=True),
]


def test_parse_timestamp_accepts_epoch_and_iso() -> None:
    assert parse_timestamp("1700000000") == 1_700_000_000
    assert parse_timestamp("1700000000.9") == 1_700_000_000
    assert parse_timestamp("2023-11-14 22:13:20") == 1_700_000_000
    assert parse_timestamp("2023-11-14T22:13:20Z") == 1_700_000_000
    assert parse_timestamp("2023-11-14T23:13:20+01:00") == 1_700_000_000
    assert parse_timestamp("2024-01-01") == 1_704_067_200


def test_row_mapping_and_violations() -> None:
    mapper = RowMapper("INTERACTIONS", INTERACTIONS)
    mapper.bind_header(["ITEM_ID", "USER_ID", "TIMESTAMP", "EVENT_VALUE", "DEVICE", "COUNT", "PREMIUM"])
    record = mapper.parse(["i1", "u1", "1700000000", "2.5", "web", "3", "TRUE"], 1)
    assert record == {
        "item_id": "i1", "user_id": "u1", "ts": 1_700_000_000, "event_value": 2.5,
        "attributes": {"DEVICE": "web", "COUNT": 3, "PREMIUM": True},
    }
    assert mapper.parse(["i1", "u1", "1700000000", "", "", "", ""], 2) == {
        "item_id": "i1", "user_id": "u1", "ts": 1_700_000_000, "attributes": None,
    }
    bad = mapper.parse(["i1", "", "soon", "nan", "web", "99999999999", "maybe"], 7)
    assert isinstance(bad, list)
    assert {v.field for v in bad} == {
        "rows[7].USER_ID", "rows[7].TIMESTAMP", "rows[7].EVENT_VALUE", "rows[7].COUNT", "rows[7].PREMIUM",
    }
    short = mapper.parse(["i1"], 8)
    assert isinstance(short, list) and short[0].field == "rows[8]"


def test_header_checks_name_the_column() -> None:
    mapper = RowMapper("INTERACTIONS", INTERACTIONS)
    with pytest.raises(InvalidArgument) as info:
        mapper.bind_header(["USER_ID", "ITEM_ID", "ITEM_ID", "COLOR"])
    fields = {v.field: v.description for v in info.value.violations}
    assert "header[2]" in fields and "header[3]" in fields
    assert any("TIMESTAMP" in d for f, d in fields.items() if f == "header")


def test_export_cells_round_trip() -> None:
    fields = [Field("ITEM_ID", "STRING"), Field("TIMESTAMP", "TIMESTAMP"), Field("TARGET_VALUE", "DOUBLE"),
              Field("store", "STRING")]
    mapper = RowMapper("TARGET_TIME_SERIES", fields)
    mapper.bind_header([f.name for f in fields])
    record = mapper.parse(["sku1", "2024-01-01 00:00:00", "12.5", "berlin"], 1)
    assert isinstance(record, dict) and record["dimensions"] == {"store": "berlin"}
    assert mapper.to_csv(record) == ["sku1", "2024-01-01 00:00:00", "12.5", "berlin"]


def test_schema_rules() -> None:
    validate_schema("RECOMMENDATION", INTERACTIONS)
    check_fits("INTERACTIONS", "RECOMMENDATION", INTERACTIONS, "dataset")
    with pytest.raises(InvalidArgument) as info:
        check_fits("ITEMS", "RECOMMENDATION", [Field("ITEM_ID", "STRING")], "dataset")
    assert "non-reserved" in info.value.violations[0].description
    with pytest.raises(InvalidArgument):
        check_fits("INTERACTIONS", "RECOMMENDATION", [Field("USER_ID", "STRING"), Field("ITEM_ID", "STRING")], "d")
    with pytest.raises(InvalidArgument):
        check_fits("TARGET_TIME_SERIES", "RECOMMENDATION", INTERACTIONS, "d")
    with pytest.raises(InvalidArgument) as info:
        validate_schema("RECOMMENDATION", [Field("user_id", "STRING")])
    assert "upper case" in info.value.violations[0].description


@pytest.mark.parametrize(
    ("column", "cell"),
    [
        ("USER_ID", "\x00x"),
        ("USER_ID", "a\x00b"),
        ("ITEM_ID", "i\x1f"),
        ("ITEM_ID", "i\x7f"),
        ("DEVICE", "we\x00b"),  # NUL in any text cell
    ],
)
def test_control_characters_in_ids_and_nul_anywhere_are_refused_naming_the_row(column: str, cell: str) -> None:
    mapper = RowMapper("INTERACTIONS", INTERACTIONS)
    header = ["USER_ID", "ITEM_ID", "TIMESTAMP", "DEVICE"]
    mapper.bind_header(header)
    values = ["u1", "i1", "1700000000", "web"]
    values[header.index(column)] = cell
    bad = mapper.parse(values, 7)
    assert isinstance(bad, list) and [v.field for v in bad] == [f"rows[7].{column}"]
    assert "character" in bad[0].description
    # Free text may hold tabs and line breaks; ids may not.
    assert isinstance(mapper.parse(["u1", "i1", "1700000000", "a\tb\nc"], 8), dict)


@pytest.mark.parametrize(
    "cell", ["1e30", "9223372036854775808", "-9214560001", "9214646400", "2262-05-01", "1677-06-01", "1e400"]
)
def test_out_of_range_timestamps_are_refused_naming_the_row(cell: str) -> None:
    mapper = RowMapper("INTERACTIONS", INTERACTIONS)
    mapper.bind_header(["USER_ID", "ITEM_ID", "TIMESTAMP"])
    bad = mapper.parse(["u1", "i1", cell], 3)
    assert isinstance(bad, list) and [v.field for v in bad] == ["rows[3].TIMESTAMP"]
    assert parse_timestamp("9214646399") == 9_214_646_399  # 2261-12-31 23:59:59, the last accepted second
    assert parse_timestamp("0") == 0
    assert parse_timestamp("-189388800") == -189_388_800  # 1964: items (films) are older than 1970
    assert parse_timestamp("-9214560000") == -9_214_560_000  # 1678-01-01, the first accepted second


@pytest.mark.parametrize("cell", ["1e308", "-1e308", "1e16", "inf", "nan"])
def test_series_numbers_beyond_the_documented_magnitude_are_refused(cell: str) -> None:
    fields = [Field("ITEM_ID", "STRING"), Field("TIMESTAMP", "TIMESTAMP"), Field("TARGET_VALUE", "DOUBLE")]
    mapper = RowMapper("TARGET_TIME_SERIES", fields)
    mapper.bind_header(["ITEM_ID", "TIMESTAMP", "TARGET_VALUE"])
    bad = mapper.parse(["i1", "1700000000", cell], 4)
    assert isinstance(bad, list) and [v.field for v in bad] == ["rows[4].TARGET_VALUE"]
    assert isinstance(mapper.parse(["i1", "1700000000", "-1e15"], 5), dict)
