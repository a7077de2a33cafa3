"""CSV rows <-> storage records for each dataset type, with row-numbered validation.

A `RowMapper` binds a schema to a CSV header once, then turns each row into the column
values of the table that stores that dataset type (interactions, entities or series).
"""

from __future__ import annotations

import copy
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from foretell.core.errors import FieldViolation, InvalidArgument
from foretell.dataset.schema_rules import NUMERIC, RESERVED, Field

MAX_ID_LENGTH = 256
MAX_STRING_LENGTH = 10_000
# TIMESTAMP values: epoch seconds from 1678-01-01 to 2261-12-31 23:59:59 UTC. Training reads snapshot times with
# pandas, whose nanosecond timestamps span September 1677 to April 2262; numbers beyond overflowed later, in the
# job. Before 1970 is fine: items are created then (MovieLens' films from the 1920s).
MIN_TIMESTAMP = -9_214_560_000
MAX_TIMESTAMP = 9_214_646_399
# Numbers of time-series datasets: forecasting sums, squares and fits them in float64, which overflows (or loses
# every digit) far below float64's own limit.
MAX_SERIES_MAGNITUDE = 1e15
# Fields that hold ids (and event types, impressions: lists of item ids): no control characters, as in a
# Personalize id. NUL is refused in every text cell (PostgreSQL cannot store it; SQLite cuts the text there).
ID_FIELDS = frozenset({"USER_ID", "ITEM_ID", "SESSION_ID", "RECOMMENDATION_ID", "EVENT_TYPE", "IMPRESSION"})
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")

TABLE_OF = {
    "INTERACTIONS": "interactions",
    "ITEMS": "entities",
    "USERS": "entities",
    "ITEM_METADATA": "entities",
    "TARGET_TIME_SERIES": "series",
    "RELATED_TIME_SERIES": "series",
}
_ENTITY_KEY = {"ITEMS": "ITEM_ID", "USERS": "USER_ID", "ITEM_METADATA": "ITEM_ID"}
# Reserved field -> storage column, per table.
_COLUMNS = {
    "interactions": {
        "USER_ID": "user_id",
        "ITEM_ID": "item_id",
        "TIMESTAMP": "ts",
        "EVENT_TYPE": "event_type",
        "EVENT_VALUE": "event_value",
        "IMPRESSION": "impression",
        "RECOMMENDATION_ID": "recommendation_id",
        "SESSION_ID": "session_id",
    },
    "entities": {"ITEM_ID": "entity_id", "USER_ID": "entity_id", "CREATION_TIMESTAMP": "creation_ts"},
    "series": {"ITEM_ID": "item_id", "TIMESTAMP": "ts", "TARGET_VALUE": "target_value"},
}


class CellError(Exception):
    """A cell that does not fit its field type (the message says why)."""


def _string(raw: str) -> str:
    if len(raw) > MAX_STRING_LENGTH:
        raise CellError(f"is longer than {MAX_STRING_LENGTH} characters")
    if "\x00" in raw:
        raise CellError("holds a NUL character")
    return raw


def control_problem(value: str) -> str | None:
    found = _CONTROL.search(value)
    if found:
        return f"holds the control character {found.group()!r} at position {found.start()}"
    return None


def id_problem(value: str) -> str | None:
    """Why `value` cannot be an id (too long, or a control character), or None."""
    if len(value) > MAX_ID_LENGTH:
        return f"is longer than {MAX_ID_LENGTH} characters"
    return control_problem(value)


def _identifier(raw: str) -> str:
    problem = id_problem(raw)
    if problem:
        raise CellError(problem)
    return raw


def _id_text(raw: str) -> str:
    """An id-like STRING field (SESSION_ID, EVENT_TYPE...): an id's characters, a string's length."""
    problem = control_problem(raw)
    if problem:
        raise CellError(problem)
    return _string(raw)


def _integer(bits: int) -> Callable[[str], int]:
    low, high = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1

    def convert(raw: str) -> int:
        try:
            value = int(raw)
        except ValueError:
            raise CellError(f"{raw[:40]!r} is not an integer") from None
        if not low <= value <= high:
            raise CellError(f"{value} is outside the {bits}-bit integer range")
        return value

    return convert


def _float(raw: str) -> float:
    try:
        value = float(raw)
    except ValueError:
        raise CellError(f"{raw[:40]!r} is not a number") from None
    if not math.isfinite(value):
        raise CellError(f"{raw[:40]!r} is not a finite number")
    return value


def _bounded(convert: Callable[[str], float]) -> Callable[[str], float]:
    def bounded(raw: str) -> float:
        value = convert(raw)
        if abs(value) > MAX_SERIES_MAGNITUDE:
            raise CellError(f"{raw[:40]!r} is larger in magnitude than {MAX_SERIES_MAGNITUDE:g}")
        return value

    return bounded


def _boolean(raw: str) -> bool:
    lowered = raw.strip().lower()
    if lowered in ("true", "1"):
        return True
    if lowered in ("false", "0"):
        return False
    raise CellError(f"{raw[:40]!r} is not a boolean (true/false)")


def timestamp_problem(seconds: float) -> str | None:
    """Why epoch `seconds` is not a usable time (outside 1970..2261), or None."""
    if not MIN_TIMESTAMP <= seconds <= MAX_TIMESTAMP:
        return f"is outside {MIN_TIMESTAMP}..{MAX_TIMESTAMP} epoch seconds (years 1678 to 2261)"
    return None


def parse_timestamp(raw: str) -> int:
    """Epoch seconds from epoch seconds or ISO 8601 text (naive times are UTC), within 1970..2261."""
    text = raw.strip()
    seconds: float | None = None
    try:
        seconds = int(text)
    except ValueError:
        try:
            number = float(text)
            if math.isfinite(number):
                seconds = number
        except ValueError:
            pass
    if seconds is None:
        try:
            moment = datetime.fromisoformat(text.replace("Z", "+00:00") if text.endswith("Z") else text)
        except ValueError:
            raise CellError(f"{raw[:40]!r} is not epoch seconds or an ISO 8601 time") from None
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)
        seconds = moment.timestamp()
    problem = timestamp_problem(seconds)
    if problem:
        raise CellError(f"{raw[:40]!r} {problem}")
    return int(seconds)


def format_timestamp(seconds: int) -> str:
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%d %H:%M:%S")


_CONVERTERS: dict[str, Callable[[str], Any]] = {
    "STRING": _string,
    "INT": _integer(32),
    "LONG": _integer(64),
    "FLOAT": _float,
    "DOUBLE": _float,
    "BOOLEAN": _boolean,
    "TIMESTAMP": parse_timestamp,
}


def converter_for(f: Field, table: str = "") -> Callable[[str], Any]:
    if f.name in ("USER_ID", "ITEM_ID"):
        return _identifier
    if f.name in ID_FIELDS:
        return _id_text
    if f.name in ("TIMESTAMP", "CREATION_TIMESTAMP"):
        return parse_timestamp  # epoch seconds whatever the declared time type
    if table == "series" and f.type in NUMERIC:
        return _bounded(_CONVERTERS[f.type])
    return _CONVERTERS[f.type]


@dataclass(frozen=True)
class _Slot:
    field: Field
    convert: Callable[[str], Any]
    column: str | None  # storage column, or None for attributes/dimensions
    dimension: bool


class RowMapper:
    """Maps one dataset type's rows to storage records using its schema."""

    def __init__(self, dataset_type: str, fields: list[Field]) -> None:
        self.dataset_type = dataset_type
        self.table = TABLE_OF[dataset_type]
        self.fields = fields
        columns = _COLUMNS[self.table]
        self._slots = {
            f.name: _Slot(
                f,
                converter_for(f, self.table),
                columns.get(f.name) if f.name in RESERVED else None,
                # Forecast dimensions: string fields of time-series datasets.
                dimension=self.table == "series" and f.name not in RESERVED and f.type == "STRING",
            )
            for f in fields
        }
        self.field_names = frozenset(self._slots)
        self._order: list[_Slot | None] = []
        # Whether errors may quote the file's text: yes for bytes the caller sent, no for a file read from a
        # URI (it might not be the caller's to read; errors name columns by number and fields by schema name).
        self.quotes_cells = True

    def without_quotes(self) -> RowMapper:
        """This mapper, with errors that never quote a header or cell."""
        quiet = copy.copy(self)
        quiet.quotes_cells = False
        return quiet

    def bind_header(self, header: list[str]) -> None:
        self._order = self.check_header(header)

    def check_header(self, header: list[str]) -> list[_Slot | None]:
        """Column slots for a CSV header; INVALID_ARGUMENT naming unknown, duplicate or missing columns."""
        problems: list[FieldViolation] = []
        seen: set[str] = set()
        for i, column in enumerate(header):
            name = column.strip()
            shown = repr(name) if self.quotes_cells else str(i + 1)
            if name in seen:
                problems.append(FieldViolation(f"header[{i}]", f"column {shown} appears twice"))
            seen.add(name)
            if name not in self._slots:
                problems.append(FieldViolation(f"header[{i}]", f"column {shown} is not in the schema"))
        for name, slot in self._slots.items():
            if name not in seen and not slot.field.nullable:
                problems.append(FieldViolation("header", f"required column {name!r} is missing"))
        if problems:
            raise InvalidArgument(problems)
        return [self._slots.get(c.strip()) for c in header]

    def parse(
        self, values: list[str], row: int, order: list[_Slot | None] | None = None
    ) -> dict[str, Any] | list[FieldViolation]:
        """A storage record, or the violations of row `row` (1-based data row)."""
        order = self._order if order is None else order
        if len(values) != len(order):
            return [FieldViolation(f"rows[{row}]", f"has {len(values)} columns, the header has {len(order)}")]
        record: dict[str, Any] = {}
        extra: dict[str, Any] = {}
        dims: dict[str, str] = {}
        problems: list[FieldViolation] = []
        for slot, raw in zip(order, values, strict=True):
            assert slot is not None
            if raw == "":
                if not slot.field.nullable:
                    problems.append(FieldViolation(f"rows[{row}].{slot.field.name}", "is required"))
                continue
            try:
                value = slot.convert(raw)
            except CellError as exc:
                why = str(exc) if self.quotes_cells else f"is not a valid {slot.field.type} value for this field"
                problems.append(FieldViolation(f"rows[{row}].{slot.field.name}", why))
                continue
            if slot.column:
                record[slot.column] = value
            elif slot.dimension:
                dims[slot.field.name] = value
            else:
                extra[slot.field.name] = value
        if problems:
            return problems
        return self._finish(record, extra, dims)

    def from_mapping(self, values: Mapping[str, Any], where: str) -> dict[str, Any]:
        """A record from named, possibly typed values (PutItems/PutUsers properties)."""
        problems: list[FieldViolation] = []
        cells: dict[str, str] = {}
        for name, value in values.items():
            if name not in self._slots:
                problems.append(FieldViolation(f"{where}.{name}", "is not in the schema"))
            elif value is None:
                cells[name] = ""
            elif isinstance(value, bool):
                cells[name] = "true" if value else "false"
            elif (
                isinstance(value, float)
                and value.is_integer()
                and self._slots[name].field.type not in ("FLOAT", "DOUBLE")
            ):
                cells[name] = str(int(value))
            else:
                cells[name] = str(value)
        if problems:
            raise InvalidArgument(problems)
        names = list(cells)
        problems = [
            FieldViolation(f"{where}.{n}", "is required")
            for n, s in self._slots.items()
            if not s.field.nullable and n not in cells
        ]
        parsed = self.parse([cells[n] for n in names], 0, [self._slots[n] for n in names])
        if isinstance(parsed, list):
            problems += [FieldViolation(v.field.replace("rows[0]", where), v.description) for v in parsed]
        if problems:
            raise InvalidArgument(problems)
        assert isinstance(parsed, dict)
        return parsed

    def _finish(self, record: dict[str, Any], extra: dict[str, Any], dims: dict[str, str]) -> dict[str, Any]:
        if self.table == "interactions" or self.table == "entities":
            record["attributes"] = extra or None
        else:
            record["dimensions"] = dims or None
            record["attributes"] = extra or None
        return record

    def to_csv(self, record: Mapping[str, Any]) -> list[str]:
        """The CSV cells of a stored record, in schema order (the export format)."""
        return [_cell(f, self.value_of(record, f.name)) for f in self.fields]

    def value_of(self, record: Mapping[str, Any], name: str) -> Any:
        """Field `name`'s typed value in a stored record (a storage column, a dimension or an attribute)."""
        slot = self._slots[name]
        if slot.column:
            return record.get(slot.column)
        if slot.dimension:
            return (record.get("dimensions") or {}).get(name)
        return (record.get("attributes") or {}).get(name)


def _cell(f: Field, value: Any) -> str:
    if value is None:
        return ""
    if f.type == "TIMESTAMP":
        return format_timestamp(int(value))
    if f.type == "BOOLEAN":
        return "true" if value else "false"
    if f.type in NUMERIC and f.type in ("FLOAT", "DOUBLE"):
        return repr(float(value))
    return str(value)


def entity_key(dataset_type: str) -> str:
    return _ENTITY_KEY[dataset_type]
