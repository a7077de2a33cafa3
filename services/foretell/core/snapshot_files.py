"""Reading a dataset snapshot: `snapshot.json` names each dataset's Parquet files (training/snapshot.py).

Jobs read the files in place, local or on S3 (pyarrow's own S3 client reads several columns and files at
once). A directory holding `<name>.csv` instead (a snapshot taken by a release before the columnar plane,
or one a test writes by hand) is read as before.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
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


def read_table(directory: Path, name: str, columns: Sequence[str] | None = None) -> pa.Table | None:
    """Dataset `name` of the snapshot as one Arrow table (only `columns` that exist, when given), or None."""
    manifest = _manifest(directory)
    entry = None if manifest is None else manifest["datasets"].get(name)
    if entry is None or not entry["part_uris"]:
        return None
    store = manifest.get("store", {}) if manifest else {}
    tables = []
    for uri in entry["part_uris"]:
        fs, path = filesystem(uri, store.get("s3_endpoint_url", ""), store.get("s3_region", ""))
        with fs.open_input_file(path) as f:
            parquet = pq.ParquetFile(f)
            wanted = None if columns is None else [c for c in columns if c in parquet.schema_arrow.names]
            tables.append(parquet.read(columns=wanted))
    return pa.concat_tables(tables, promote_options="default")
