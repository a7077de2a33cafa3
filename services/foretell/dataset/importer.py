"""Bulk CSV import and export, streaming: memory stays flat whatever the file size.

Rows are parsed and validated in order; valid rows are staged in batches. If any row is
bad (or the job is cancelled) the staged rows are discarded and the dataset is untouched;
otherwise they are made visible in one transaction.
"""

from __future__ import annotations

import contextlib
import csv
import io
import os
import queue
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import IO, Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from foretell.core.errors import Cancelled, FieldViolation, InvalidArgument
from foretell.core.file_roots import Place
from foretell.dataset.columns import BatchValidator, arrow_schema, csv_ready
from foretell.dataset.parts import PartWriter
from foretell.dataset.rows import RowMapper
from foretell.dataset.store import DatasetStore

Progress = Callable[[float, str, dict[str, float]], None]

csv.field_size_limit(1 << 20)
# A header names at most 200 fields of 64 characters: a longer first line is not a header (nor read in full).
MAX_HEADER_BYTES = 1 << 16


class CountingReader(io.RawIOBase):
    """Counts bytes read so progress can be reported as a share of the file."""

    def __init__(self, raw: IO[bytes]) -> None:
        self._raw = raw
        self.count = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        data = self._raw.read(len(buffer))
        n = len(data)
        buffer[:n] = data
        self.count += n
        return n


def _decoded_lines(binary: IO[bytes]) -> Iterator[str]:
    first = True
    for line in binary:
        text = line.decode("utf-8")
        if first:
            text, first = text.removeprefix("\ufeff"), False
        yield text


def parse_header(prefix: bytes) -> list[str] | None:
    """The header row from the first bytes of a CSV file; None if no full line arrived yet."""
    end = prefix.find(b"\n", 0, MAX_HEADER_BYTES + 1)
    if end < 0:
        if len(prefix) > MAX_HEADER_BYTES:
            raise InvalidArgument(FieldViolation("header", f"the first line is longer than {MAX_HEADER_BYTES} bytes"))
        return None
    try:
        line = prefix[:end].decode("utf-8-sig")
    except UnicodeDecodeError:
        raise InvalidArgument(FieldViolation("header", "is not valid UTF-8")) from None
    try:
        return next(csv.reader([line.rstrip("\r")]), [])
    except csv.Error as exc:
        raise InvalidArgument(FieldViolation("header", f"is not valid CSV: {exc}")) from None


def read_header(source: Any) -> list[str]:
    """The column names of a CSV file (its header row) or of a Parquet file (its schema)."""
    with source as f:
        prefix = f.read(MAX_HEADER_BYTES + 1)
        if prefix[:4] == PARQUET_MAGIC:
            f.seek(0)
            try:
                return list(pq.ParquetFile(f).schema_arrow.names)
            except (pa.ArrowInvalid, OSError) as exc:
                raise InvalidArgument(FieldViolation("header", f"is not a readable Parquet file: {exc}")) from None
    header = parse_header(prefix if b"\n" in prefix or len(prefix) > MAX_HEADER_BYTES else prefix + b"\n")
    if not header or header == [""]:
        raise InvalidArgument(FieldViolation("header", "the file is empty or has no header row"))
    return header


@dataclass
class ImportOutcome:
    rows: int
    bytes_total: int


PARQUET_MAGIC = b"PAR1"
BLOCK_BYTES = 1 << 24  # CSV bytes parsed per batch: ~500k rows, tens of MB of Arrow memory


class Importer:
    """Reads a CSV or Parquet file a block at a time, validates each block vectorized (dataset/columns.py),
    writes the typed rows into new Parquet parts and makes them visible in one commit (dataset/plane.py).

    Memory stays flat: one block in flight, whatever the file size. If any row is bad (or the job is
    cancelled) the new parts are deleted and the dataset is untouched."""

    def __init__(self, store: DatasetStore, max_violations: int) -> None:
        self._store = store
        self._max_violations = max_violations

    def run(
        self,
        *,
        job: str,
        dataset_name: str,
        mapper: RowMapper,
        source: Callable[[], IO[bytes]],
        mode: str,
        progress: Progress,
        cancelled: Callable[[], bool],
        allow_empty: bool = False,
    ) -> ImportOutcome:
        """Imports the file that `source()` opens (a spooled upload, or a file in the caller's area)."""
        schema = arrow_schema(mapper.fields)
        writer = self._store.plane.files.writer(dataset_name, job, schema)
        try:
            try:
                with source() as raw:
                    total = _size(raw)
                    rows = self._write(mapper, raw, total, writer, progress, cancelled, source, False)
            except _QuotedNewlines:
                # A quoted cell spans lines: read again with the (3x slower) chunker that follows quotes.
                writer.abort()
                writer = self._store.plane.files.writer(dataset_name, job, schema)
                with source() as raw:
                    rows = self._write(mapper, raw, total, writer, progress, cancelled, source, True)
            if rows == 0 and mode == "FULL" and not allow_empty:
                # A header-only file (an export of nothing, a truncated copy) would silently empty the dataset.
                raise InvalidArgument(
                    FieldViolation(
                        "rows",
                        f"the file has no data rows: a FULL import would delete every row of {dataset_name}; "
                        "set allow_empty to empty the dataset",
                    )
                )
            progress(95.0, f"{rows} rows written; committing", {"rows_processed": float(rows)})
            self._store.commit_parts(
                mapper,
                dataset_name,
                job,
                mode,
                writer.finish(),
                state="SUCCEEDED",
                rows_imported=rows,
                bytes_total=total,
            )
        except BaseException:
            writer.abort()
            raise
        return ImportOutcome(rows, total)

    def _write(
        self,
        mapper: RowMapper,
        raw: IO[bytes],
        total: int,
        writer: PartWriter,
        progress: Progress,
        cancelled: Callable[[], bool],
        source: Callable[[], IO[bytes]],
        newlines_in_values: bool,
    ) -> int:
        counter = CountingReader(raw)
        buffered = io.BufferedReader(counter, 1 << 20)
        is_parquet = buffered.peek(4)[:4] == PARQUET_MAGIC
        problems: list[FieldViolation] = []
        rows = 0
        last_report = time.monotonic()
        try:
            header, blocks = _parquet_blocks(raw) if is_parquet else _csv_blocks(buffered, newlines_in_values)
            validator = BatchValidator(mapper, header)
            for cells in _prefetched(blocks):
                table, found = validator.convert(cells, rows + 1)
                rows += table.num_rows
                if found or problems:
                    problems += found
                    if len(problems) >= self._max_violations:
                        break
                    continue  # keep reading to report more bad rows, but write nothing
                writer.write(table)
                if cancelled():
                    raise Cancelled("import cancelled by request")
                if time.monotonic() - last_report > 0.5:
                    last_report = time.monotonic()
                    done = raw.tell() if is_parquet else counter.count
                    progress(
                        95.0 * done / max(total, 1),
                        f"{rows} rows written",
                        {"rows_processed": float(rows), "bytes_read": float(done)},
                    )
        except (pa.ArrowInvalid, UnicodeDecodeError, csv.Error) as exc:
            if "out of sync with chunker" in str(exc) and not newlines_in_values:
                raise _QuotedNewlines from None
            # The file's structure is broken (a row with the wrong number of columns, bytes that are not
            # UTF-8): the row reader says where, in the row parser's words.
            problems = self._row_problems(mapper, source) or [
                FieldViolation("rows", f"is not valid {'Parquet' if is_parquet else 'CSV'}: {exc}")
            ]
        if problems:
            raise InvalidArgument(
                problems[: self._max_violations],
                f"{len(problems)}{'+' if len(problems) >= self._max_violations else ''} bad rows; "
                f"first: {problems[0].field}: {problems[0].description}",
            )
        if cancelled():
            raise Cancelled("import cancelled by request")
        return rows

    def _row_problems(self, mapper: RowMapper, source: Callable[[], IO[bytes]]) -> list[FieldViolation]:
        """The bad rows of a CSV file as the row parser reads it, up to max_violations."""
        problems: list[FieldViolation] = []
        row = 0
        with source() as raw:
            reader = csv.reader(_decoded_lines(io.BufferedReader(CountingReader(raw), 1 << 20)))
            try:
                header = next(reader, None)
                if not header:
                    raise InvalidArgument(FieldViolation("header", "the file is empty or has no header row"))
                mapper.bind_header(header)
                for row, values in enumerate(reader, start=1):
                    if not values:
                        continue
                    parsed = mapper.parse(values, row)
                    if isinstance(parsed, list):
                        problems += parsed
                        if len(problems) >= self._max_violations:
                            break
            except UnicodeDecodeError:
                problems.append(FieldViolation(f"rows[{row + 1}]", "is not valid UTF-8"))
            except csv.Error as exc:
                problems.append(FieldViolation(f"rows[{row + 1}]", f"is not valid CSV: {exc}"))
        return problems


def _prefetched(blocks: Iterator[list[pa.Array]], depth: int = 2) -> Iterator[list[pa.Array]]:
    """`blocks`, parsed by a thread of its own while the caller checks the previous one (pyarrow parses without
    the GIL); at most `depth` blocks wait, so memory stays flat. A parse error arrives where it happened."""
    waiting: queue.Queue[tuple[list[pa.Array] | None, BaseException | None]] = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def parse() -> None:
        try:
            for block in blocks:
                if stop.is_set():
                    return
                waiting.put((block, None))
            waiting.put((None, None))
        except BaseException as exc:  # noqa: BLE001 - handed to the caller
            waiting.put((None, exc))

    thread = threading.Thread(target=parse, name="csv-blocks", daemon=True)
    thread.start()
    try:
        while True:
            block, failure = waiting.get()
            if failure is not None:
                raise failure
            if block is None:
                return
            yield block
    finally:
        stop.set()
        while thread.is_alive():  # unblock a parser waiting for room, then let it see `stop`
            with contextlib.suppress(queue.Empty):
                waiting.get(timeout=0.1)
        thread.join()


def _size(raw: Any) -> int:
    """Bytes in a local file or in pyarrow's S3 input file."""
    if hasattr(raw, "size"):
        return int(raw.size())
    return os.fstat(raw.fileno()).st_size


class _QuotedNewlines(Exception):
    """A block boundary fell inside a quoted cell: the file has cells spanning lines."""


def _csv_blocks(raw: Any, newlines_in_values: bool) -> tuple[list[str], Iterator[list[pa.Array]]]:
    """The header, and the data rows as text columns a block at a time."""
    header = parse_header(raw.peek(MAX_HEADER_BYTES + 1)[: MAX_HEADER_BYTES + 1])
    if header is None:  # one line, no newline: a header alone (or nothing)
        header = parse_header(raw.peek(MAX_HEADER_BYTES + 1) + b"\n")
    if not header or header == [""]:
        raise InvalidArgument(FieldViolation("header", "the file is empty or has no header row"))
    names = [f"c{i}" for i in range(len(header))]
    reader = pacsv.open_csv(
        raw,
        read_options=pacsv.ReadOptions(skip_rows=1, column_names=names, block_size=BLOCK_BYTES),
        # Quoted cells may hold newlines, as Python's csv module allows; the chunker that looks for them is
        # 3x slower, so it is used only once pyarrow found one (it says so: the parser gets out of sync).
        parse_options=pacsv.ParseOptions(newlines_in_values=newlines_in_values),
        convert_options=pacsv.ConvertOptions(
            column_types=dict.fromkeys(names, pa.string()), strings_can_be_null=False, quoted_strings_can_be_null=False
        ),
    )
    return header, (batch.columns for batch in reader)


def _parquet_blocks(raw: IO[bytes]) -> tuple[list[str], Iterator[list[pa.Array]]]:
    """A Parquet file's column names, and its rows as text columns (times as epoch seconds) a batch at a time."""
    parquet = pq.ParquetFile(raw)
    header = list(parquet.schema_arrow.names)

    def blocks() -> Iterator[list[pa.Array]]:
        for batch in parquet.iter_batches(batch_size=100_000):
            yield [pc.fill_null(_as_text(column), "") for column in batch.columns]

    return header, blocks()


def _as_text(column: pa.Array) -> pa.Array:
    if pa.types.is_timestamp(column.type) or pa.types.is_date(column.type):
        seconds = pc.cast(pc.cast(column, pa.timestamp("s"), safe=False), pa.int64())
        return pc.cast(seconds, pa.string())
    return pc.cast(column, pa.string())


def export_csv(
    store: DatasetStore,
    dataset_name: str,
    mapper: RowMapper,
    destination: Place,
    progress: Progress,
    cancelled: Callable[[], bool],
) -> int:
    """Writes the visible rows as CSV (the import format) to a new file, complete or not at all."""
    total = max(store.row_count(dataset_name, mapper), 1)
    written = 0
    options = pacsv.WriteOptions(include_header=False, quoting_style="needed")
    with destination.writing(text=False) as out:
        out.write((",".join(_quoted(f.name) for f in mapper.fields) + "\r\n").encode())
        for table in store.plane.batches(dataset_name, mapper):
            if not table.num_rows:
                continue
            pacsv.write_csv(csv_ready(table, mapper.fields), out, options)
            written += table.num_rows
            if cancelled():
                raise Cancelled("export cancelled by request")
            progress(100.0 * written / total, f"{written} rows written", {"rows_processed": float(written)})
    return written


def _quoted(name: str) -> str:
    return f'"{name}"' if any(c in name for c in ',"\r\n') else name
