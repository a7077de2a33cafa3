"""A dataset's rows as Arrow columns: one typed column per schema field, validated a batch at a time.

The Arrow schema of a dataset is its schema's fields, in schema order, typed: STRING text, INT int32,
LONG int64, FLOAT/DOUBLE float64, BOOLEAN bool, and every time field (TIMESTAMP, CREATION_TIMESTAMP,
whatever its declared type) int64 epoch seconds. Parquet files of a dataset (dataset/parts.py) hold
exactly these columns, so a training job reads them as they are.

`BatchValidator` turns a batch of text cells (a CSV block, or a Parquet batch cast to text) into typed
columns with vectorized checks. A cell the fast checks cannot vouch for (a malformed number, an ISO
time with a zone, an id with a control character) goes to the row parser's own converter
(dataset/rows.py), so the values and the error messages are exactly the row parser's, at the cost of
Python only for such cells.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from foretell.core.errors import FieldViolation
from foretell.dataset.rows import (
    ID_FIELDS,
    MAX_ID_LENGTH,
    MAX_SERIES_MAGNITUDE,
    MAX_STRING_LENGTH,
    MAX_TIMESTAMP,
    MIN_TIMESTAMP,
    CellError,
    RowMapper,
    converter_for,
)
from foretell.dataset.schema_rules import NUMERIC, Field

TIME_FIELDS = ("TIMESTAMP", "CREATION_TIMESTAMP")
_ARROW = {
    "STRING": pa.string(),
    "INT": pa.int32(),
    "LONG": pa.int64(),
    "FLOAT": pa.float64(),
    "DOUBLE": pa.float64(),
    "BOOLEAN": pa.bool_(),
    "TIMESTAMP": pa.int64(),
}
# Cells the fast path converts; anything else goes to the row parser's converter.
_INTEGER = r"^-?[0-9]{1,18}$"
_EPOCH = r"^-?[0-9]{1,12}$"
_DECIMAL = r"^-?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][-+]?[0-9]{1,3})?$"
_CONTROL = "[\x00-\x1f\x7f]"
_DATE_SHAPE = r"^\d{4}-\d{2}-\d{2}$"
# (strptime format, the exact shape it may read): Arrow's strptime also takes "2024-1-5" and "1:2:3", which the row
# parser (datetime.fromisoformat) refuses, so only cells of the exact shape are parsed here; the rest go to it.
_ISO_FORMATS = (
    ("%Y-%m-%d %H:%M:%S", r"^\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}$"),
    ("%Y-%m-%dT%H:%M:%S", r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}$"),
    ("%Y-%m-%d", _DATE_SHAPE),  # a date: midnight UTC
)


def arrow_type(f: Field) -> pa.DataType:
    return pa.int64() if f.name in TIME_FIELDS else _ARROW[f.type]


def arrow_schema(fields: Sequence[Field]) -> pa.Schema:
    return pa.schema([pa.field(f.name, arrow_type(f), nullable=True) for f in fields])


def _kind(f: Field, table: str) -> str:
    """Which fast check a field's cells get (the same split as rows.converter_for)."""
    if f.name in ("USER_ID", "ITEM_ID"):
        return "identifier"
    if f.name in ID_FIELDS:
        return "id_text"
    if f.name in TIME_FIELDS:
        return "time"
    if f.type in ("FLOAT", "DOUBLE"):
        return "bounded_float" if table == "series" else "float"
    if f.type in ("INT", "LONG"):
        return f"bounded_{f.type.lower()}" if table == "series" else f.type.lower()
    return f.type.lower()  # string, boolean


@dataclass(frozen=True)
class _Column:
    field: Field
    kind: str
    position: int  # column of the file, or -1 when the file lacks this (nullable) field


class BatchValidator:
    """Typed Arrow tables from batches of text cells laid out as `header`, with the row parser's errors."""

    def __init__(self, mapper: RowMapper, header: Sequence[str]) -> None:
        mapper.check_header(list(header))
        positions = {name.strip(): i for i, name in enumerate(header)}
        self.mapper = mapper
        self.schema = arrow_schema(mapper.fields)
        self._columns = [_Column(f, _kind(f, mapper.table), positions.get(f.name, -1)) for f in mapper.fields]
        self._converters = {f.name: converter_for(f, mapper.table) for f in mapper.fields}

    def convert(self, cells: Sequence[pa.Array], first_row: int) -> tuple[pa.Table, list[FieldViolation]]:
        """The typed table of one batch (`cells`: the file's columns as text, "" for empty), and the
        violations of its rows, numbered from `first_row`, in row order then field order."""
        length = len(cells[0]) if cells else 0
        arrays: list[pa.Array] = []
        found: list[tuple[int, int, FieldViolation]] = []
        for order, column in enumerate(self._columns):
            if column.position < 0:
                arrays.append(pa.nulls(length, arrow_type(column.field)))
                continue
            text = cells[column.position]
            if isinstance(text, pa.ChunkedArray):
                text = text.combine_chunks()
            values, problems = self._column(column, text, first_row)
            arrays.append(values)
            found += [(row, order, problem) for row, problem in problems]
        found.sort(key=lambda t: (t[0], t[1]))
        return pa.Table.from_arrays(arrays, schema=self.schema), [v for _, _, v in found]

    def _column(
        self, column: _Column, text: pa.Array, first_row: int
    ) -> tuple[pa.Array, list[tuple[int, FieldViolation]]]:
        f = column.field
        # Empty cells by the offsets (a zero-length cell), without comparing any text.
        empty = pc.fill_null(pc.equal(pc.binary_length(text), 0), True)
        any_empty = pc.any(empty).as_py()
        problems: list[tuple[int, FieldViolation]] = []
        if not f.nullable and any_empty:
            for i in np.flatnonzero(empty.to_numpy(zero_copy_only=False)):
                problems.append(
                    (first_row + int(i), FieldViolation(f"rows[{first_row + int(i)}].{f.name}", "is required"))
                )
        present = pc.invert(empty)
        values, doubtful = _fast(column.kind, text, present)
        if any_empty:
            doubtful = pc.and_(doubtful, present)
        if pc.any(doubtful).as_py():
            values, slow = self._slow(column, text, values, doubtful, first_row)
            problems += slow
        if not any_empty:
            return values, problems  # no cell to turn into null: no copy of the column
        return pc.if_else(present, values, pa.scalar(None, values.type)), problems

    def _slow(
        self, column: _Column, text: pa.Array, values: pa.Array, doubtful: pa.Array, first_row: int
    ) -> tuple[pa.Array, list[tuple[int, FieldViolation]]]:
        """The row parser's converter on the cells the fast path doubted: their values, or its messages."""
        f = column.field
        convert = self._converters[f.name]
        indices = np.flatnonzero(doubtful.to_numpy(zero_copy_only=False))
        cells = text.take(pa.array(indices)).to_pylist()
        replacements: list[Any] = []
        problems: list[tuple[int, FieldViolation]] = []
        for i, raw in zip(indices, cells, strict=True):
            row = first_row + int(i)
            try:
                replacements.append(convert(raw))
            except CellError as exc:
                why = str(exc) if self.mapper.quotes_cells else f"is not a valid {f.type} value for this field"
                problems.append((row, FieldViolation(f"rows[{row}].{f.name}", why)))
                replacements.append(None)
        patched = pc.replace_with_mask(values, doubtful, pa.array(replacements, values.type))
        return patched, problems


def _fast(kind: str, text: pa.Array, present: pa.Array) -> tuple[pa.Array, pa.Array]:
    """(values, doubtful): the cells converted where the vectorized checks vouch for them, and a mask of
    those they do not (their values are placeholders until the row parser's converter sees them)."""
    if kind in ("identifier", "id_text", "string"):
        return text, _text_doubts(kind, text)
    if kind == "boolean":
        lowered = pc.utf8_lower(pc.utf8_trim_whitespace(text))
        true = pc.is_in(lowered, pa.array(["true", "1"]))
        false = pc.is_in(lowered, pa.array(["false", "0"]))
        return true, pc.invert(pc.or_(true, false))
    if kind == "time":
        return _times(text, present)
    if kind in ("int", "long", "bounded_int", "bounded_long"):
        values, ok = _cast(text, present, pa.int64(), _INTEGER)
        bits = 32 if kind.endswith("int") else 64
        low, high = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
        if kind.startswith("bounded"):
            low, high = max(low, -int(MAX_SERIES_MAGNITUDE)), min(high, int(MAX_SERIES_MAGNITUDE))
        inside = pc.and_(pc.greater_equal(values, low), pc.less_equal(values, high))
        doubtful = pc.invert(pc.and_(ok, inside))
        values = pc.if_else(doubtful, 0, values)
        return (pc.cast(values, pa.int32()) if bits == 32 else values), doubtful
    if kind in ("float", "double", "bounded_float"):
        values, ok = _cast(text, present, pa.float64(), _DECIMAL)
        bound = float(MAX_SERIES_MAGNITUDE if kind == "bounded_float" else np.finfo(np.float64).max)
        inside = pc.less_equal(pc.abs(values), bound)  # false for inf and NaN: the row parser says why
        doubtful = pc.invert(pc.fill_null(pc.and_(ok, inside), False))
        return pc.if_else(doubtful, 0.0, values), doubtful
    raise ValueError(f"no fast check for {kind}")


def _cast(text: pa.Array, present: pa.Array, target: pa.DataType, pattern: str) -> tuple[pa.Array, pa.Array]:
    """(values, ok): Arrow's own cast of the whole column when every cell parses (the common case, one pass);
    else the cells matching `pattern` cast and the rest marked not ok."""
    filled = text if pc.all(present).as_py() else pc.if_else(present, text, "0")
    try:
        return pc.cast(filled, target), pc.fill_null(present, True)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        ok = pc.match_substring_regex(text, pattern)
        return pc.cast(pc.if_else(ok, text, "0"), target), ok


def _text_doubts(kind: str, text: pa.Array) -> pa.Array:
    """Cells that may be too long or hold a control character (a NUL, for free text). Both are checked on the
    column's bytes first: a cell of at most `limit` bytes has at most `limit` characters, and in UTF-8 a byte
    below 0x20 (or 0x7f) is always that ASCII control character."""
    limit = MAX_ID_LENGTH if kind == "identifier" else MAX_STRING_LENGTH
    doubtful = pc.greater(pc.binary_length(text), limit)
    data = text.buffers()[2]
    if data is not None and len(data):
        start, end = text.offset, text.offset + len(text)
        offsets = np.frombuffer(text.buffers()[1], dtype=np.int32)[start : end + 1]
        chunk = np.frombuffer(data, dtype=np.uint8)[offsets[0] : offsets[-1]]
        suspect = (chunk == 0).any() if kind == "string" else ((chunk < 0x20) | (chunk == 0x7F)).any()
        if suspect:
            pattern = "\x00" if kind == "string" else _CONTROL
            doubtful = pc.or_(doubtful, pc.match_substring_regex(text, pattern))
    return doubtful


def _times(text: pa.Array, present: pa.Array) -> tuple[pa.Array, pa.Array]:
    """Epoch seconds from epoch-second cells, "YYYY-MM-DD[ T]HH:MM:SS" or "YYYY-MM-DD" (UTC) cells, within range."""
    values, known = _dates(text, present) or _cast(text, present, pa.int64(), _EPOCH)
    for pattern, shape in _ISO_FORMATS:
        rest = pc.and_(pc.invert(known), present)
        if not pc.any(rest).as_py():
            break
        rest = pc.and_(rest, pc.match_substring_regex(text, shape))
        cells = pc.if_else(rest, text, "")
        parsed = pc.strptime(cells, format=pattern, unit="s", error_is_null=True)
        seconds = pc.cast(pc.cast(parsed, pa.timestamp("s")), pa.int64())
        # strptime rolls "2024-02-30" over into March: the day must come back as written.
        day = pc.cast(pc.if_else(rest, pc.utf8_slice_codeunits(cells, 8, 10), "0"), pa.int64())
        hit = pc.fill_null(pc.and_(rest, pc.equal(pc.day(parsed), day)), False)
        values = pc.if_else(hit, pc.fill_null(seconds, 0), values)
        known = pc.or_(known, hit)
    inside = pc.and_(pc.greater_equal(values, MIN_TIMESTAMP), pc.less_equal(values, MAX_TIMESTAMP))
    doubtful = pc.invert(pc.and_(known, inside))
    return pc.if_else(doubtful, 0, values), doubtful


def _dates(text: pa.Array, present: pa.Array) -> tuple[pa.Array, pa.Array] | None:
    """A column of dates only (daily time series): one strict cast, 80x the strptime path (which checks
    each format's shape and the day for every cell); None for any other column."""
    first = text[0].as_py() if len(text) and text[0].is_valid else None
    if first is None or len(first) != 10 or first[4] != "-":
        return None
    filled = text if pc.all(present).as_py() else pc.if_else(present, text, "2000-01-01")
    if not pc.all(pc.match_substring_regex(filled, _DATE_SHAPE)).as_py():
        return None
    try:  # Arrow's date parser refuses "2024-02-30" as the row parser does
        days = pc.cast(filled, pa.date32())
    except pa.ArrowInvalid:
        return None
    return pc.multiply(pc.cast(pc.cast(days, pa.int32()), pa.int64()), 86_400), pc.fill_null(present, True)


# ---- stored records (PutEvents, PutItems, PutUsers rows) <-> Arrow ----------------------------


def record_values(mapper: RowMapper, record: Mapping[str, Any]) -> dict[str, Any]:
    """A stored record (storage columns, attributes, dimensions) as {field name: typed value}."""
    out: dict[str, Any] = {}
    for f in mapper.fields:
        out[f.name] = mapper.value_of(record, f.name)
    return out


def table_of_records(mapper: RowMapper, records: Sequence[Mapping[str, Any]]) -> pa.Table:
    schema = arrow_schema(mapper.fields)
    return pa.Table.from_pylist([record_values(mapper, r) for r in records], schema=schema)


def csv_ready(table: pa.Table, fields: Sequence[Field]) -> pa.Table:
    """The columns as the export writes them: times as "YYYY-MM-DD HH:MM:SS" UTC, booleans true/false."""
    columns = []
    for f in fields:
        column = table.column(f.name)
        if f.name in TIME_FIELDS or f.type == "TIMESTAMP":
            column = pc.strftime(pc.cast(column, pa.timestamp("s", tz="UTC")), format="%Y-%m-%d %H:%M:%S")
        elif f.type == "BOOLEAN":
            column = pc.if_else(column, "true", "false")
        elif f.type in NUMERIC and f.type in ("FLOAT", "DOUBLE"):
            column = pc.cast(column, pa.string())
        columns.append(column)
    return pa.table(columns, names=[f.name for f in fields])
