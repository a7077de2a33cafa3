"""Reading a dataset snapshot: `snapshot.json` names each dataset's Parquet files (training/snapshot.py).

Jobs read the files in place, local or on S3 (pyarrow's own S3 client reads several columns and files at
once). A directory holding `<name>.csv` instead (a snapshot taken by a release before the columnar plane,
or one a test writes by hand) is read as before.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Generator, Iterator, Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from foretell.core.artifacts import is_s3, parse_s3, path_of

MANIFEST = "snapshot.json"


@functools.cache
def _s3(endpoint_url: str, region: str) -> pafs.FileSystem:
    return pafs.S3FileSystem(
        endpoint_override=endpoint_url or None,
        region=region or "us-east-1",
        scheme="http" if endpoint_url.startswith("http://") else "https",
    )


def filesystem(uri: str, s3_endpoint_url: str = "", s3_region: str = "") -> tuple[pafs.FileSystem, str]:
    """pyarrow's filesystem for a file:// (or plain path) or s3:// URI, and the path within it."""
    if is_s3(uri):
        bucket, key = parse_s3(uri)
        return _s3(s3_endpoint_url, s3_region), f"{bucket}/{key}"
    return pafs.LocalFileSystem(), str(path_of(uri))


def _manifest(directory: Path) -> dict[str, Any] | None:
    path = Path(directory) / MANIFEST
    return json.loads(path.read_text()) if path.exists() else None


def _parts(directory: Path, name: str) -> Generator[pq.ParquetFile] | None:
    manifest = _manifest(directory)
    entry = None if manifest is None else manifest["datasets"].get(name)
    if manifest is None or entry is None or not entry["part_uris"]:
        return None
    store = manifest.get("store", {})

    def files() -> Generator[pq.ParquetFile]:
        for uri in entry["part_uris"]:
            fs, path = filesystem(uri, store.get("s3_endpoint_url", ""), store.get("s3_region", ""))
            with fs.open_input_file(path) as f:
                yield pq.ParquetFile(f)

    return files()


def schema(directory: Path, name: str) -> pa.Schema | None:
    """The Arrow schema of dataset `name`'s first part, or None when the snapshot has no Parquet part of it."""
    parts = _parts(directory, name)
    if parts is None:
        return None
    try:
        return next(parts).schema_arrow
    finally:
        parts.close()  # closes the file the generator holds open


def batches(directory: Path, name: str, columns: Sequence[str]) -> Iterator[pa.RecordBatch]:
    """Dataset `name` as record batches of `columns`, one row group at a time: a pass over a large dataset
    in constant memory. Nothing when the snapshot has no Parquet part of it."""
    for parquet in _parts(directory, name) or ():
        for group in range(parquet.num_row_groups):
            yield from parquet.read_row_group(group, columns=list(columns)).to_batches()


def distinct(directory: Path, name: str, columns: Sequence[str]) -> pa.Table | None:
    """The distinct rows of `columns` of dataset `name` (a missing value is a value of its own), in one pass
    of constant memory; None when the snapshot has no Parquet part of it."""
    if _parts(directory, name) is None:
        return None
    keys = list(columns)
    found: list[pa.Table] = []
    for batch in batches(directory, name, keys):
        found.append(pa.Table.from_batches([batch]).group_by(keys).aggregate([]))
        if len(found) >= 16:
            found = [pa.concat_tables(found).group_by(keys).aggregate([])]
    return pa.concat_tables(found).group_by(keys).aggregate([]) if found else None


def min_max(directory: Path, name: str, column: str) -> tuple[Any, Any] | None:
    """(smallest, largest) value of `column` of dataset `name`, nulls left out, in one pass; None when there is
    none or the snapshot has no Parquet part of it."""
    low = high = None
    for batch in batches(directory, name, [column]):
        span = pc.min_max(batch.column(column)).as_py()
        if span["min"] is not None:
            low = span["min"] if low is None else min(low, span["min"])
            high = span["max"] if high is None else max(high, span["max"])
    return None if low is None else (low, high)


def read_table(
    directory: Path, name: str, columns: Sequence[str] | None = None, where: pc.Expression | None = None
) -> pa.Table | None:
    """Dataset `name` of the snapshot as one Arrow table (only `columns` that exist, when given), or None.

    With `where`, only the rows it keeps, filtered one row group at a time: memory follows what is kept."""
    parts = _parts(directory, name)
    if parts is None:
        return None
    tables = []
    for parquet in parts:
        wanted = None if columns is None else [c for c in columns if c in parquet.schema_arrow.names]
        if where is None:
            tables.append(parquet.read(columns=wanted))
            continue
        for group in range(parquet.num_row_groups):
            tables.append(parquet.read_row_group(group, columns=wanted).filter(where))
    return pa.concat_tables(tables, promote_options="default") if tables else None
