"""Where a dataset's bulk rows live: immutable Parquet files ("parts") in the artifact store, listed in SQL.

Why Parquet files rather than SQL rows: at 5M interactions the SQL row path (per-row INSERT, then a CSV
export for every training snapshot) took 148 s to import and 48 s per snapshot; Arrow reads and writes
the same data in seconds, a training job reads the files in place (no export, no copy), and the files
sit on S3 where many workers can read them at once. Parquet through pyarrow rather than DuckDB or
Polars: pyarrow is already what reads the CSV blocks (dataset/importer.py), writes Parquet without an
extra engine, and reads S3 natively; measured in docs/benchmarks.md ("Columnar data plane").

The manifest (`dataset_parts`) is the truth: a part is visible when its row says VISIBLE. An import
writes its parts first, then flips them visible in one transaction (retiring the old ones in FULL
mode), so a failed or cancelled import changes nothing, and readers see all of an import or none of it.
Retired parts stay on disk for `RETAIN_SECONDS`, so a training job holding a snapshot (a list of part
URIs) keeps reading them; `sweep` deletes them afterwards.

Rows that arrive one at a time (PutEvents, PutItems, PutUsers) stay in SQL, where they are cheap to
write and to stream to the recommenders; `compacted_through` records the last such row already folded
into (or superseded by) the parts. Readers take the parts plus the SQL rows after that mark.
"""

from __future__ import annotations

import contextlib
import os
import queue
import tempfile
import threading
import uuid
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
from sqlalchemy import BigInteger, Column, DateTime, Integer, MetaData, String, Table, Text, delete, select, update
from sqlalchemy.engine import Connection, Engine

from foretell.core import tenancy
from foretell.core.artifact_store import _s3_client
from foretell.core.artifacts import is_s3, parse_s3
from foretell.core.resources import now
from foretell.core.snapshot_files import filesystem

RETAIN_SECONDS = 24 * 3600  # a retired part outlives any snapshot job that may still read it
ROWS_PER_PART = 4_000_000  # a part per ~4M rows: parallel reads, bounded rewrite cost
ROW_GROUP_ROWS = 256_000  # readers stream a row group at a time

metadata = MetaData()
_id = BigInteger().with_variant(Integer, "sqlite")
dataset_parts = Table(
    "dataset_parts",
    metadata,
    Column("id", _id, primary_key=True, autoincrement=True),
    Column("dataset", String(320), nullable=False, index=True),  # row_key: the tenant prefix + dataset name
    Column("uri", Text, nullable=False),
    Column("rows", BigInteger, nullable=False),
    Column("bytes", BigInteger, nullable=False),
    Column("state", String(16), nullable=False),  # VISIBLE or RETIRED
    Column("import_job", String(384), nullable=False, default=""),
    Column("retired_at", DateTime(timezone=True), nullable=True),
    Column("create_time", DateTime(timezone=True), nullable=False),
)
dataset_marks = Table(
    "dataset_marks",
    metadata,
    Column("dataset", String(320), primary_key=True),
    Column("compacted_through", BigInteger, nullable=False),
)


def row_key(name: str) -> str:
    """How the row tables and the manifest spell a dataset or import job name of the current tenant."""
    return tenancy.prefix() + name


@dataclass(frozen=True)
class Part:
    id: int
    uri: str
    rows: int


class PartFiles:
    """Reads and writes Parquet parts under one root URI (a local directory or s3://bucket/prefix)."""

    def __init__(self, root_uri: str, s3_endpoint_url: str = "", s3_region: str = "") -> None:
        self.root_uri = root_uri.rstrip("/")
        self._s3_endpoint_url = s3_endpoint_url
        self._s3_region = s3_region

    def new_uri(self, dataset_name: str, job: str, index: int) -> str:
        if not self.root_uri:
            raise RuntimeError("this dataset store was made without a place for Parquet parts")
        tenant = tenancy.prefix().rstrip("/")
        job_id = job.rsplit("/", 1)[-1] or uuid.uuid4().hex[:12]
        return "/".join(
            [
                self.root_uri,
                "data",
                *([tenant] if tenant else []),
                *dataset_name.split("/"),
                f"{job_id}-{index:05d}.parquet",
            ]
        )

    def filesystem(self, uri: str) -> tuple[pafs.FileSystem, str]:
        return filesystem(uri, self._s3_endpoint_url, self._s3_region)

    def delete_job(self, job: str) -> None:
        """Deletes the parts an unfinished import (`<dataset>/importJobs/<id>`) wrote: none is in the manifest."""
        dataset_name, _, job_id = job.rpartition("/importJobs/")
        if not dataset_name or not self.root_uri:
            return
        directory = self.new_uri(dataset_name, job, 0).rsplit("/", 1)[0]
        fs, path = self.filesystem(directory)
        for info in fs.get_file_info(pafs.FileSelector(path, allow_not_found=True)):
            if info.base_name.startswith(f"{job_id}-"):
                fs.delete_file(info.path)

    def writer(self, dataset_name: str, job: str, schema: pa.Schema) -> PartWriter:
        return PartWriter(self, dataset_name, job, schema)

    def read(
        self, uris: Sequence[str], schema: pa.Schema, columns: Sequence[str] | None = None
    ) -> Iterator[pa.RecordBatch]:
        """The parts' rows, a row group at a time, as `schema` (columns a part lacks are null)."""
        for uri in uris:
            fs, path = self.filesystem(uri)
            with fs.open_input_file(path) as f:
                parquet = pq.ParquetFile(f)
                for batch in parquet.iter_batches(
                    batch_size=ROW_GROUP_ROWS, columns=list(columns) if columns else None
                ):
                    yield _conform(batch, schema, columns)

    def read_table(self, uris: Sequence[str], schema: pa.Schema, columns: Sequence[str] | None = None) -> pa.Table:
        wanted = schema if not columns else pa.schema([schema.field(c) for c in columns])
        return pa.Table.from_batches(list(self.read(uris, schema, columns)), schema=wanted)

    def upload(self, local_file: str, uri: str) -> None:
        bucket, key = parse_s3(uri)
        _s3_client(self._s3_endpoint_url, self._s3_region).upload_file(local_file, bucket, key)

    def delete(self, uri: str) -> None:
        fs, path = self.filesystem(uri)
        with contextlib.suppress(FileNotFoundError):
            fs.delete_file(path)


def _conform(batch: pa.RecordBatch, schema: pa.Schema, columns: Sequence[str] | None) -> pa.RecordBatch:
    """A batch with exactly the wanted columns of `schema`: a field added to the schema later reads as null."""
    names = list(columns) if columns else schema.names
    arrays = []
    for name in names:
        target = schema.field(name).type
        index = batch.schema.get_field_index(name)
        arrays.append(pa.nulls(len(batch), target) if index < 0 else batch.column(index).cast(target))
    return pa.RecordBatch.from_arrays(arrays, schema=pa.schema([schema.field(n) for n in names]))


class PartWriter:
    """Writes one import's rows into new parts (a new file every ROWS_PER_PART rows); `abort` deletes them.

    Encoding Parquet takes as long as parsing and checking the CSV, and pyarrow does it without the GIL, so a
    thread of its own writes while the caller reads the next block (at most two blocks wait: memory stays flat).
    """

    def __init__(self, files: PartFiles, dataset_name: str, job: str, schema: pa.Schema) -> None:
        self._files = files
        self._dataset = dataset_name
        self._job = job
        self.schema = schema
        self.written: list[tuple[str, int, int]] = []  # (uri, rows, bytes) of finished parts
        self._writer: pq.ParquetWriter | None = None
        self._sink: Any = None
        self._uri = ""
        self._rows = 0
        self._queue: queue.Queue[pa.Table | None] = queue.Queue(maxsize=2)
        self._failure: BaseException | None = None
        self._thread: threading.Thread | None = None
        self._spool = ""

    def write(self, table: pa.Table) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._drain, name="part-writer", daemon=True)
            self._thread.start()
        self._raise_failure()
        self._queue.put(table)

    def finish(self) -> list[tuple[str, int, int]]:
        self._stop()
        self._raise_failure()
        if self._writer is not None:
            self._close()
        return self.written

    def abort(self) -> None:
        self._stop()
        if self._writer is not None:
            with contextlib.suppress(Exception):  # the files go anyway
                self._writer.close()
                self._sink.close()
            self.written.append((self._uri, 0, 0))
            self._writer = None
        if self._spool:  # an S3-bound part never uploaded: its local file goes too
            os.unlink(self._spool)
            self._spool = ""
        for uri, _, _ in self.written:
            self._files.delete(uri)
        self.written = []

    def _stop(self) -> None:
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join()
            self._thread = None

    def _raise_failure(self) -> None:
        if self._failure is not None:
            raise self._failure

    def _drain(self) -> None:
        while (table := self._queue.get()) is not None:
            if self._failure is None:
                try:
                    self._write(table)
                except BaseException as exc:  # noqa: BLE001 - handed to the caller's thread
                    self._failure = exc

    def _write(self, table: pa.Table) -> None:
        while table.num_rows:
            if self._writer is None:
                self._open()
            assert self._writer is not None
            room = ROWS_PER_PART - self._rows
            piece, table = table.slice(0, room), table.slice(room)
            self._writer.write_table(piece, row_group_size=ROW_GROUP_ROWS)
            self._rows += piece.num_rows
            if self._rows >= ROWS_PER_PART:
                self._close()

    def _open(self) -> None:
        self._uri = self._files.new_uri(self._dataset, self._job, len(self.written))
        if is_s3(self._uri):
            # Written locally, then uploaded whole (boto3, as every artifact): S3-compatible servers differ in
            # how they complete pyarrow's multipart uploads (moto's fails), never in a plain upload.
            spool = tempfile.NamedTemporaryFile(prefix="part-", suffix=".parquet", delete=False)  # noqa: SIM115
            spool.close()
            self._spool = spool.name
            self._sink = pa.OSFile(self._spool, "wb")
        else:
            fs, path = self._files.filesystem(self._uri)
            fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
            self._sink = fs.open_output_stream(path)
        # No dictionary pages: on 1M interactions they doubled the write time and tripled the read time, for
        # the same size once zstd has seen the repeated ids.
        self._writer = pq.ParquetWriter(
            self._sink, self.schema, compression="zstd", compression_level=1, use_dictionary=False
        )
        self._rows = 0

    def _close(self) -> None:
        assert self._writer is not None
        self._writer.close()
        size = self._sink.tell()
        self._sink.close()
        self._writer = None
        if self._spool:
            try:
                self._files.upload(self._spool, self._uri)
            finally:
                os.unlink(self._spool)
                self._spool = ""
        self.written.append((self._uri, self._rows, int(size)))


class PartCatalog:
    """The manifest: which parts each dataset shows, and the mark of its compacted SQL rows."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        metadata.create_all(engine)

    def visible(self, dataset_name: str, conn: Connection | None = None) -> list[Part]:
        query = (
            select(dataset_parts.c.id, dataset_parts.c.uri, dataset_parts.c.rows)
            .where(dataset_parts.c.dataset == row_key(dataset_name), dataset_parts.c.state == "VISIBLE")
            .order_by(dataset_parts.c.id)
        )
        if conn is not None:
            return [Part(r.id, r.uri, r.rows) for r in conn.execute(query)]
        with self.engine.connect() as own:
            return [Part(r.id, r.uri, r.rows) for r in own.execute(query)]

    def mark(self, dataset_name: str, conn: Connection | None = None) -> int:
        query = select(dataset_marks.c.compacted_through).where(dataset_marks.c.dataset == row_key(dataset_name))
        if conn is not None:
            return int(conn.execute(query).scalar() or 0)
        with self.engine.connect() as own:
            return int(own.execute(query).scalar() or 0)

    def commit(
        self,
        conn: Connection,
        dataset_name: str,
        job: str,
        written: Iterable[tuple[str, int, int]],
        *,
        replace: Sequence[int] | None = None,
        through: int | None = None,
    ) -> None:
        """Inside the caller's transaction: `written` parts become visible; `replace` (part ids, or every
        visible part when it is empty) retire; `through` moves the SQL mark."""
        key = row_key(dataset_name)
        at = now()
        if replace is not None:
            retire = update(dataset_parts).where(dataset_parts.c.dataset == key, dataset_parts.c.state == "VISIBLE")
            if replace:
                retire = retire.where(dataset_parts.c.id.in_(list(replace)))
            conn.execute(retire.values(state="RETIRED", retired_at=at))
        rows = [
            {
                "dataset": key,
                "uri": uri,
                "rows": n,
                "bytes": size,
                "state": "VISIBLE",
                "import_job": job,
                "create_time": at,
            }
            for uri, n, size in written
        ]
        if rows:
            conn.execute(dataset_parts.insert(), rows)
        if through is not None:
            self._set_mark(conn, key, through)

    def _set_mark(self, conn: Connection, key: str, through: int) -> None:
        if conn.execute(
            update(dataset_marks).where(dataset_marks.c.dataset == key).values(compacted_through=through)
        ).rowcount:
            return
        conn.execute(dataset_marks.insert().values(dataset=key, compacted_through=through))

    def retire_all(self, conn: Connection, dataset_name: str) -> None:
        """Inside the caller's transaction: the dataset's parts retire and its mark goes (a deleted dataset)."""
        key = row_key(dataset_name)
        conn.execute(
            update(dataset_parts)
            .where(dataset_parts.c.dataset == key, dataset_parts.c.state == "VISIBLE")
            .values(state="RETIRED", retired_at=now())
        )
        conn.execute(delete(dataset_marks).where(dataset_marks.c.dataset == key))

    def expired(self, retain_seconds: float = RETAIN_SECONDS) -> list[tuple[int, str]]:
        """(id, uri) of parts retired longer ago than `retain_seconds`, every tenant's."""
        cutoff = now() - timedelta(seconds=retain_seconds)
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(dataset_parts.c.id, dataset_parts.c.uri).where(
                    dataset_parts.c.state == "RETIRED", dataset_parts.c.retired_at < cutoff
                )
            ).fetchall()
        return [(r.id, r.uri) for r in rows]

    def forget(self, ids: Sequence[int]) -> None:
        with self.engine.begin() as conn:
            conn.execute(delete(dataset_parts).where(dataset_parts.c.id.in_(list(ids))))


def sweep(catalog: PartCatalog, files: PartFiles, retain_seconds: float = RETAIN_SECONDS) -> int:
    """Deletes the files of parts retired more than `retain_seconds` ago, then their rows; the count deleted."""
    expired = catalog.expired(retain_seconds)
    for _, uri in expired:
        files.delete(uri)
    if expired:
        catalog.forget([i for i, _ in expired])
    return len(expired)
