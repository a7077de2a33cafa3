"""Bulk CSV import and export, streaming: memory stays flat whatever the file size.

Rows are parsed and validated in order; valid rows are staged in batches. If any row is
bad (or the job is cancelled) the staged rows are discarded and the dataset is untouched;
otherwise they are made visible in one transaction.
"""

from __future__ import annotations

import csv
import io
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import IO, Any

from foretell.core.errors import Cancelled, FieldViolation, InvalidArgument
from foretell.core.file_roots import Place
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


def read_header(source: IO[bytes]) -> list[str]:
    with source as f:
        prefix = f.read(MAX_HEADER_BYTES + 1)
    header = parse_header(prefix if b"\n" in prefix or len(prefix) > MAX_HEADER_BYTES else prefix + b"\n")
    if not header or header == [""]:
        raise InvalidArgument(FieldViolation("header", "the file is empty or has no header row"))
    return header


@dataclass
class ImportOutcome:
    rows: int
    bytes_total: int


class Importer:
    def __init__(self, store: DatasetStore, batch_rows: int, max_violations: int) -> None:
        self._store = store
        self._batch_rows = batch_rows
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
        """Imports the CSV that `source()` opens (a spooled upload, or a file in the caller's area)."""
        with source() as raw:
            total = os.fstat(raw.fileno()).st_size
            try:
                rows = self._stage(job, dataset_name, mapper, raw, total, progress, cancelled)
                if rows == 0 and mode == "FULL" and not allow_empty:
                    # A header-only file (an export of nothing, a truncated copy) would silently empty the dataset.
                    raise InvalidArgument(
                        FieldViolation(
                            "rows",
                            f"the file has no data rows: a FULL import would delete every row of {dataset_name}; "
                            "set allow_empty to empty the dataset",
                        )
                    )
                self._store.commit_import(
                    mapper.table, dataset_name, job, mode, state="SUCCEEDED", rows_imported=rows, bytes_total=total
                )
            except BaseException:
                self._store.discard_import(mapper.table, job)
                raise
        return ImportOutcome(rows, total)

    def _stage(
        self,
        job: str,
        dataset_name: str,
        mapper: RowMapper,
        raw: IO[bytes],
        total: int,
        progress: Progress,
        cancelled: Callable[[], bool],
    ) -> int:
        problems: list[FieldViolation] = []
        batch: list[dict[str, Any]] = []
        rows = 0
        last_report = time.monotonic()
        counter = CountingReader(raw)
        # Decode line by line (not in big blocks) so a UTF-8 error is pinned to its row.
        reader = csv.reader(_decoded_lines(io.BufferedReader(counter, 1 << 20)))
        row = 0
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
                    continue
                if problems:
                    continue  # keep reading to report more bad rows, but stage nothing
                batch.append(parsed)
                rows += 1
                if len(batch) >= self._batch_rows:
                    self._store.stage_rows(mapper.table, dataset_name, job, batch)
                    batch = []
                    if cancelled():
                        raise Cancelled("import cancelled by request")
                    if time.monotonic() - last_report > 0.5:
                        last_report = time.monotonic()
                        progress(
                            95.0 * counter.count / max(total, 1),
                            f"{rows} rows staged",
                            {"rows_processed": float(rows), "bytes_read": float(counter.count)},
                        )
        except UnicodeDecodeError:
            problems.append(FieldViolation(f"rows[{row + 1}]", "is not valid UTF-8"))
        except csv.Error as exc:
            problems.append(FieldViolation(f"rows[{row + 1}]", f"is not valid CSV: {exc}"))
        if problems:
            raise InvalidArgument(
                problems[: self._max_violations],
                f"{len(problems)}{'+' if len(problems) >= self._max_violations else ''} bad rows; "
                f"first: {problems[0].field}: {problems[0].description}",
            )
        self._store.stage_rows(mapper.table, dataset_name, job, batch)
        if cancelled():
            raise Cancelled("import cancelled by request")
        progress(95.0, f"{rows} rows staged; committing", {"rows_processed": float(rows)})
        return rows


def export_csv(
    store: DatasetStore,
    dataset_name: str,
    mapper: RowMapper,
    destination: Place,
    progress: Progress,
    cancelled: Callable[[], bool],
) -> int:
    """Writes the visible rows as CSV (the import format) to a new file, complete or not at all."""
    total = max(store.row_count(dataset_name, mapper.table), 1)
    written = 0
    with destination.writing() as out:
        writer = csv.writer(out)
        writer.writerow([f.name for f in mapper.fields])
        for record in store.iter_rows(dataset_name, mapper.table):
            writer.writerow(mapper.to_csv(record))
            written += 1
            if written % 50_000 == 0:
                if cancelled():
                    raise Cancelled("export cancelled by request")
                progress(100.0 * written / total, f"{written} rows written", {"rows_processed": float(written)})
    return written
