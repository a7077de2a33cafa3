"""A dataset's rows as one Arrow view: its Parquet parts (dataset/parts.py) plus its SQL tail.

The SQL tail is the rows written one at a time after the parts' mark: PutEvents events in
`interactions`, PutItems/PutUsers rows in `entities` (and, after an upgrade, the rows an older release
imported into SQL, until the first compaction folds them in). Keyed rows (entities by id, series by
item, time and dimensions) in the tail replace those of the parts; interactions are only appended.

Writes here are "new immutable files, then one metadata commit": an import's parts, a compaction of
the tail, a rewrite without a user's rows. Commits that replace parts they read first check that
nothing else changed the dataset meanwhile, and redo their work if it did.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
from sqlalchemy import func, select

from foretell.core.db import transaction
from foretell.dataset.columns import arrow_schema, table_of_records
from foretell.dataset.parts import Part, PartCatalog, PartFiles
from foretell.dataset.rows import RowMapper, entity_key
from foretell.dataset.store import ROW_TABLES, row_key

_TAIL_BATCH = 50_000
MAX_RETRIES = 5


class Conflict(Exception):
    """The dataset's parts changed while a rewrite read them."""


def tail_table(mapper: RowMapper) -> Any:
    # Series rows come only from imports; their SQL tail is what a release before the columnar plane stored.
    return ROW_TABLES[mapper.table]


def merge_keys(mapper: RowMapper) -> list[str]:
    """The fields that identify a row an INCREMENTAL import replaces (none: interactions append)."""
    if mapper.table == "entities":
        return [entity_key(mapper.dataset_type)]
    if mapper.table == "series":
        dims = [f.name for f in mapper.fields if f.name not in ("ITEM_ID", "TIMESTAMP") and f.type == "STRING"]
        return ["ITEM_ID", "TIMESTAMP", *dims]
    return []


def _key_columns(table: pa.Table, keys: Sequence[str]) -> pa.Table:
    """The key columns as text with nulls spelled out, so that missing dimensions match each other."""
    return pa.table({f"k{i}": pc.fill_null(pc.cast(table.column(k), pa.string()), "\x00") for i, k in enumerate(keys)})


def without_keys_of(old: pa.Table, new: pa.Table, keys: Sequence[str]) -> pa.Table:
    """The rows of `old` whose key no row of `new` has."""
    if not old.num_rows or not new.num_rows:
        return old
    names = [f"k{i}" for i in range(len(keys))]
    left = _key_columns(old, keys).append_column("__row", pa.array(range(old.num_rows), pa.int64()))
    right = _key_columns(new, keys).group_by(names).aggregate([])
    kept = left.join(right, names, join_type="left anti")
    return old.take(_ascending(kept.column("__row")))


def last_of_each(table: pa.Table, keys: Sequence[str]) -> pa.Table:
    """One row per key: the last one (within one import, the last row of an id wins)."""
    if table.num_rows < 2:
        return table
    names = [f"k{i}" for i in range(len(keys))]
    indexed = _key_columns(table, keys).append_column("__row", pa.array(range(table.num_rows), pa.int64()))
    last = indexed.group_by(names).aggregate([("__row", "max")]).column("__row_max")
    return table.take(_ascending(last))


def _ascending(positions: pa.ChunkedArray) -> pa.Array:
    """Row positions in storage order (joins and group-bys return them in any order)."""
    return pc.take(positions, pc.sort_indices(positions))


class DataPlane:
    def __init__(self, engine: Any, catalog: PartCatalog, files: PartFiles) -> None:
        self.engine = engine
        self.catalog = catalog
        self.files = files

    # ---- reading ----------------------------------------------------------------------------------------------

    def tail_bounds(self, dataset_name: str, mapper: RowMapper) -> tuple[int, int]:
        """(mark, last id) of the SQL tail: its rows have mark < id <= last."""
        with self.engine.connect() as conn:
            return self.catalog.mark(dataset_name, conn), self._last_tail_id(conn, dataset_name, mapper)

    def tail(self, dataset_name: str, mapper: RowMapper, after: int, through: int) -> Iterator[pa.Table]:
        table = tail_table(mapper)
        if through <= after:
            return
        last = after
        while True:
            with self.engine.connect() as conn:
                rows = conn.execute(
                    select(table)
                    .where(
                        table.c.dataset == row_key(dataset_name),
                        table.c.import_job.is_(None),
                        table.c.id > last,
                        table.c.id <= through,
                    )
                    .order_by(table.c.id)
                    .limit(_TAIL_BATCH)
                ).fetchall()
            if not rows:
                return
            last = rows[-1].id
            yield table_of_records(mapper, [dict(r._mapping) for r in rows])

    def batches(self, dataset_name: str, mapper: RowMapper) -> Iterator[pa.Table]:
        """Every visible row, in storage order, a batch at a time (entities: the tail's upserts replace)."""
        parts = self.catalog.visible(dataset_name)
        mark, last = self.tail_bounds(dataset_name, mapper)
        schema = mapper_schema(mapper)
        if merge_keys(mapper) and last > mark:
            tail = pa.concat_tables(list(self.tail(dataset_name, mapper, mark, last)))
            keys = merge_keys(mapper)
            tail = last_of_each(tail, keys)
            for batch in self.files.read([p.uri for p in parts], schema):
                yield without_keys_of(pa.Table.from_batches([batch]), tail, keys)
            yield tail
            return
        for batch in self.files.read([p.uri for p in parts], schema):
            yield pa.Table.from_batches([batch])
        yield from self.tail(dataset_name, mapper, mark, last)

    def count(self, dataset_name: str, mapper: RowMapper) -> int:
        parts = self.catalog.visible(dataset_name)
        mark, last = self.tail_bounds(dataset_name, mapper)
        rows = sum(p.rows for p in parts)
        if last <= mark:
            return rows
        if merge_keys(mapper):
            return sum(t.num_rows for t in self.batches(dataset_name, mapper))
        table = ROW_TABLES[mapper.table]
        with self.engine.connect() as conn:
            tail = conn.execute(
                select(func.count())
                .select_from(table)
                .where(table.c.dataset == row_key(dataset_name), table.c.import_job.is_(None), table.c.id > mark)
            ).scalar_one()
        return rows + int(tail)

    # ---- writing ----------------------------------------------------------------------------------------------

    def read_all(self, parts: Sequence[Part], mapper: RowMapper) -> pa.Table:
        return self.files.read_table([p.uri for p in parts], mapper_schema(mapper))

    def rewrite(self, dataset_name: str, job: str, mapper: RowMapper, table: pa.Table) -> list[tuple[str, int, int]]:
        writer = self.files.writer(dataset_name, job, mapper_schema(mapper))
        try:
            writer.write(table)
            return writer.finish()
        except BaseException:
            writer.abort()
            raise

    def commit_import(
        self,
        dataset_name: str,
        job: str,
        mapper: RowMapper,
        mode: str,
        written: list[tuple[str, int, int]],
        finish: Callable[[Any], None],
    ) -> None:
        """Makes an import's parts visible in one transaction (`finish(conn)` records the job in it).

        FULL replaces every part and the SQL tail. INCREMENTAL appends interactions; keyed rows (entities,
        series) are merged: the new rows replace the stored rows with their keys, so the dataset's parts
        are rewritten (the parts the import wrote go, replaced by the merged ones)."""
        keys = merge_keys(mapper)
        if not keys or (mode == "FULL" and mapper.table != "entities"):
            # Nothing to merge: interactions are appended or replaced as written, and so are the rows of a FULL
            # series import (its repeated keys are the predictor's to name). Not reading them back keeps the
            # commit of a 73M-row series file at the server's flat import memory (it rose 1.6 GB reading them).
            with transaction(self.engine) as conn:
                full = mode == "FULL"
                through = self._last_tail_id(conn, dataset_name, mapper) if full else None
                self.catalog.commit(conn, dataset_name, job, written, replace=[] if full else None, through=through)
                finish(conn)
            return
        new = self.files.read_table([uri for uri, _, _ in written], mapper_schema(mapper))
        if mapper.table == "entities":
            new = last_of_each(new, keys)  # within one import, the last row of an id wins
        for _ in range(MAX_RETRIES):
            parts = self.catalog.visible(dataset_name)
            mark, last = self.tail_bounds(dataset_name, mapper)
            if mode == "FULL":
                merged = new
            else:
                base = self.read_all(parts, mapper)
                if last > mark:
                    tail = last_of_each(pa.concat_tables(list(self.tail(dataset_name, mapper, mark, last))), keys)
                    base = pa.concat_tables([without_keys_of(base, tail, keys), tail])
                merged = pa.concat_tables([without_keys_of(base, new, keys), new])
            own = merged.num_rows == sum(n for _, n, _ in written) and mode == "FULL"
            final = written if own else self.rewrite(dataset_name, f"{job.rsplit('/', 1)[-1]}-merged", mapper, merged)
            try:
                with transaction(self.engine) as conn:
                    if mode == "FULL":
                        self.catalog.commit(
                            conn,
                            dataset_name,
                            job,
                            final,
                            replace=[],
                            through=self._last_tail_id(conn, dataset_name, mapper),
                        )
                    else:
                        self._unchanged(conn, dataset_name, parts, mark)
                        self.catalog.commit(conn, dataset_name, job, final, replace=[p.id for p in parts], through=last)
                    finish(conn)
            except Conflict:
                if not own:
                    self._drop(final)
                continue
            if not own:
                self._drop(written)
            return
        raise Conflict(f"{dataset_name} kept changing while the import was merged into it")

    def _last_tail_id(self, conn: Any, dataset_name: str, mapper: RowMapper) -> int:
        """The id of the dataset's newest SQL row, or its mark when the parts already hold every such row."""
        table = tail_table(mapper)
        last = conn.execute(
            select(func.max(table.c.id)).where(table.c.dataset == row_key(dataset_name), table.c.import_job.is_(None))
        ).scalar()
        return max(int(last or 0), self.catalog.mark(dataset_name, conn))

    def compact(self, dataset_name: str, mapper: RowMapper) -> list[Part]:
        """Folds the SQL tail into parts (one commit); the visible parts afterwards: a snapshot's file list."""
        for _ in range(MAX_RETRIES):
            parts = self.catalog.visible(dataset_name)
            mark, last = self.tail_bounds(dataset_name, mapper)
            if last <= mark:
                return parts
            job = f"compact-{last}"
            tail = pa.concat_tables(list(self.tail(dataset_name, mapper, mark, last)))
            keys = merge_keys(mapper)
            if keys:
                tail = last_of_each(tail, keys)
                merged = pa.concat_tables([without_keys_of(self.read_all(parts, mapper), tail, keys), tail])
                written, replace = self.rewrite(dataset_name, job, mapper, merged), [p.id for p in parts]
            else:
                written, replace = self.rewrite(dataset_name, job, mapper, tail), None
            try:
                with transaction(self.engine) as conn:
                    self._unchanged(conn, dataset_name, parts, mark)
                    self.catalog.commit(conn, dataset_name, job, written, replace=replace, through=last)
            except Conflict:
                self._drop(written)
                continue
            return self.catalog.visible(dataset_name)
        raise Conflict(f"{dataset_name} kept changing while its new rows were compacted")

    def _unchanged(self, conn: Any, dataset_name: str, parts: Sequence[Part], mark: int) -> None:
        if [p.id for p in self.catalog.visible(dataset_name, conn)] != [p.id for p in parts]:
            raise Conflict(dataset_name)
        if self.catalog.mark(dataset_name, conn) != mark:
            raise Conflict(dataset_name)

    def _drop(self, written: Sequence[tuple[str, int, int]]) -> None:
        for uri, _, _ in written:
            self.files.delete(uri)

    def remove_rows(
        self, conn_factory: Any, dataset_name: str, mapper: RowMapper, column: str, values: Sequence[str]
    ) -> int:
        """Rewrites the parts holding rows whose `column` is in `values` without them; the rows removed.
        `conn_factory()` opens the transaction that commits the rewrite (the caller deletes its SQL rows in it)."""
        wanted = pa.array(list(values), pa.string())
        for _ in range(MAX_RETRIES):
            parts = self.catalog.visible(dataset_name)
            mark = self.catalog.mark(dataset_name)
            removed, written, replaced = 0, [], []
            try:
                for part in parts:
                    keys = self.files.read_table([part.uri], mapper_schema(mapper), [column]).column(column)
                    hits = pc.is_in(keys, wanted)
                    if not pc.any(hits).as_py():
                        continue
                    table = self.read_all([part], mapper)
                    kept = table.filter(pc.invert(pc.fill_null(hits, False)))
                    removed += table.num_rows - kept.num_rows
                    replaced.append(part.id)
                    written += self.rewrite(dataset_name, f"erase-{part.id}", mapper, kept)
                with conn_factory() as conn:
                    self._unchanged(conn, dataset_name, parts, mark)
                    if replaced:
                        self.catalog.commit(conn, dataset_name, "erase", written, replace=replaced)
                    return removed
            except Conflict:
                self._drop(written)
        raise Conflict(f"{dataset_name} kept changing while rows were removed")


def mapper_schema(mapper: RowMapper) -> pa.Schema:
    return arrow_schema(mapper.fields)
