"""SQLAlchemy storage of the dataset service: metadata tables and the rows of each dataset.

Imports stage rows tagged with their import job; they turn visible in one short
transaction at the end (`commit_import`) or vanish (`discard_import`), so a failed
import leaves the dataset exactly as it was while PutEvents keeps writing.

Metadata rows are keyed by (tenant, name) and every query is limited to the current tenant (core/tenancy.py).
The row tables, far larger, hold a tenant's dataset and import job names with the tenant's prefix (`row_key`):
the default tenant's rows are stored as they were before tenants existed, so no upgrade rewrites them.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Collection, Iterator, Sequence
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Column,
    Engine,
    Float,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    delete,
    func,
    insert,
    select,
    update,
)
from sqlalchemy.engine import Connection, Row
from sqlalchemy.exc import IntegrityError

from foretell.core.db import transaction
from foretell.core.errors import AlreadyExists, FailedPrecondition
from foretell.core.resources import Page, get_row, in_groups, insert_row, name_column, now, page_rows, tenant_key, times
from foretell.core.tenancy import mine
from foretell.dataset.parts import PartCatalog, PartFiles, row_key
from foretell.dataset.rows import RowMapper
from foretell.dataset.schema_rules import Field

metadata = MetaData()
_id = BigInteger().with_variant(Integer, "sqlite")  # SQLite autoincrements INTEGER keys only
_json = JSON(none_as_null=True)  # None is SQL NULL (as COPY writes it), not the JSON text 'null'


dataset_groups = Table(
    "dataset_groups",
    metadata,
    name_column(128),
    Column("domain", String(32), nullable=False),
    Column("display_name", String(256), nullable=False, default=""),
    Column("labels", _json, nullable=True),
    Column("state", String(16), nullable=False),
    *times(),
    *tenant_key(),
)
schemas = Table(
    "schemas",
    metadata,
    name_column(128),
    Column("domain", String(32), nullable=False),
    Column("fields", JSON, nullable=False),
    *times(),
    *tenant_key(),
)
datasets = Table(
    "datasets",
    metadata,
    name_column(256),
    Column("dataset_group", String(128), nullable=False, index=True),
    Column("dataset_type", String(32), nullable=False),
    Column("schema", String(128), nullable=False, index=True),
    # A copy of the schema's fields: rows are read and written without a schema look-up.
    Column("fields", JSON, nullable=False),
    Column("data_frequency", String(16), nullable=False, default=""),
    Column("state", String(16), nullable=False),
    *times(),
    *tenant_key(),
    UniqueConstraint("tenant", "dataset_group", "dataset_type", name="uq_dataset_type_per_group"),
)
import_jobs = Table(
    "import_jobs",
    metadata,
    name_column(384),
    Column("dataset", String(256), nullable=False, index=True),
    Column("source_uri", Text, nullable=False, default=""),
    Column("import_mode", String(16), nullable=False),
    Column("state", String(16), nullable=False),
    Column("rows_imported", BigInteger, nullable=False, default=0),
    Column("bytes_total", BigInteger, nullable=False, default=0),
    Column("error", LargeBinary, nullable=True),
    Column("operation", String(80), nullable=False, default=""),
    *times(),
    *tenant_key(),
)
export_jobs = Table(
    "export_jobs",
    metadata,
    name_column(384),
    Column("dataset", String(256), nullable=False, index=True),
    Column("destination_uri", Text, nullable=False, default=""),
    Column("state", String(16), nullable=False),
    Column("rows_exported", BigInteger, nullable=False, default=0),
    Column("error", LargeBinary, nullable=True),
    Column("operation", String(80), nullable=False, default=""),
    *times(),
    *tenant_key(),
)
# Row tables. `import_job` is NULL for visible rows and the job name for staged ones.
interactions = Table(
    "interactions",
    metadata,
    Column("id", _id, primary_key=True, autoincrement=True),
    Column("dataset", String(256), nullable=False),
    Column("user_id", String(256), nullable=True),
    Column("item_id", String(256), nullable=True),
    Column("ts", BigInteger, nullable=False),
    Column("event_type", String(256), nullable=True),
    Column("event_value", Float, nullable=True),
    Column("impression", Text, nullable=True),
    Column("recommendation_id", String(256), nullable=True),
    Column("session_id", String(256), nullable=True),
    Column("event_id", String(256), nullable=True),
    Column("attributes", _json, nullable=True),
    Column("import_job", String(384), nullable=True),
    Index("ix_interactions_dataset_job", "dataset", "import_job"),
    Index("uq_interactions_event_id", "dataset", "event_id", unique=True),
)
entities = Table(
    "entities",
    metadata,
    Column("id", _id, primary_key=True, autoincrement=True),
    Column("dataset", String(256), nullable=False),
    Column("entity_id", String(256), nullable=False),
    Column("creation_ts", BigInteger, nullable=True),
    Column("attributes", _json, nullable=True),
    Column("import_job", String(384), nullable=True),
    Index("ix_entities_dataset_job_entity", "dataset", "import_job", "entity_id"),
)
series = Table(
    "series",
    metadata,
    Column("id", _id, primary_key=True, autoincrement=True),
    Column("dataset", String(256), nullable=False),
    Column("item_id", String(256), nullable=False),
    Column("ts", BigInteger, nullable=False),
    Column("target_value", Float, nullable=True),
    Column("dimensions", _json, nullable=True),
    # Canonical text of the dimensions, to match points of the same series in SQL.
    Column("dims_key", Text, nullable=False, default=""),
    Column("attributes", _json, nullable=True),
    Column("import_job", String(384), nullable=True),
    Index("ix_series_dataset_job_item_ts", "dataset", "import_job", "item_id", "ts"),
)
ROW_TABLES = {"interactions": interactions, "entities": entities, "series": series}


def dims_key(dimensions: dict[str, str] | None) -> str:
    return json.dumps(dimensions, sort_keys=True, separators=(",", ":")) if dimensions else ""


def _copy_rows(conn: Connection, table: Table, rows: list[dict[str, Any]]) -> None:
    """PostgreSQL COPY: several times faster than multi-row INSERT for bulk staging."""
    columns = [c.name for c in table.columns if c.name != "id"]
    as_json = {c.name for c in table.columns if isinstance(c.type, JSON)}
    statement = f"COPY {table.name} ({', '.join(columns)}) FROM STDIN"
    with conn.connection.driver_connection.cursor() as cursor, cursor.copy(statement) as copy:  # type: ignore[union-attr]
        for row in rows:
            copy.write_row([json.dumps(row[c]) if c in as_json and row[c] is not None else row[c] for c in columns])


class DatasetStore:
    def __init__(self, engine: Engine, files: PartFiles | None = None) -> None:
        from foretell.dataset.plane import DataPlane  # the plane reads the row tables defined here

        self.engine = engine
        metadata.create_all(engine)
        self.plane = DataPlane(engine, PartCatalog(engine), files or PartFiles(""))
        self._templates: dict[str, dict[str, Any]] = {
            name: {c.name: None for c in table.columns if c.name != "id"} for name, table in ROW_TABLES.items()
        }

    # ---- generic helpers -------------------------------------------------------------

    def _get(self, table: Table, name: str, conn: Connection | None = None) -> Row[Any]:
        return get_row(self.engine, table, name, conn)

    def _insert(self, table: Table, values: dict[str, Any], what: str) -> Row[Any]:
        return insert_row(self.engine, table, values, what)

    def _page(self, table: Table, size: int, after: str | None, *where: Any) -> Page:
        return page_rows(self.engine, table, size, after, *where)

    # ---- dataset groups --------------------------------------------------------------

    def create_group(self, name: str, domain: str, display_name: str, labels: dict[str, str]) -> Row[Any]:
        return self._insert(
            dataset_groups,
            {"name": name, "domain": domain, "display_name": display_name, "labels": labels or None, "state": "ACTIVE"},
            "dataset group",
        )

    def get_group(self, name: str) -> Row[Any]:
        return self._get(dataset_groups, name)

    def groups_of(self, tenant: str) -> list[str]:
        """The names of `tenant`'s dataset groups (start-up checks; requests list through `list_groups`)."""
        with self.engine.connect() as conn:
            query = (
                select(dataset_groups.c.name).where(dataset_groups.c.tenant == tenant).order_by(dataset_groups.c.name)
            )
            return [str(name) for name in conn.execute(query).scalars()]

    def list_groups(self, size: int, after: str | None, groups: Collection[str] | None = None) -> Page:
        return self._page(dataset_groups, size, after, *in_groups(dataset_groups.c.name, groups))

    def delete_group(self, name: str, force: bool) -> None:
        self.get_group(name)
        with self.engine.connect() as conn:
            children = (
                conn.execute(select(datasets.c.name).where(mine(datasets), datasets.c.dataset_group == name))
                .scalars()
                .all()
            )
        if children and not force:
            raise FailedPrecondition(
                f"dataset group {name!r} still has datasets {', '.join(children)}; delete them or set force",
                metadata={"resource": name},
            )
        with transaction(self.engine) as conn:
            for child in children:
                self._delete_dataset(conn, child)
            conn.execute(delete(dataset_groups).where(mine(dataset_groups), dataset_groups.c.name == name))

    # ---- schemas ---------------------------------------------------------------------

    def create_schema(self, name: str, domain: str, fields: list[Field]) -> Row[Any]:
        return self._insert(schemas, {"name": name, "domain": domain, "fields": [vars(f) for f in fields]}, "schema")

    def get_schema(self, name: str) -> Row[Any]:
        return self._get(schemas, name)

    def list_schemas(self, size: int, after: str | None) -> Page:
        return self._page(schemas, size, after)

    def delete_schema(self, name: str) -> None:
        self.get_schema(name)
        with transaction(self.engine) as conn:
            users = (
                conn.execute(select(datasets.c.name).where(mine(datasets), datasets.c.schema == name)).scalars().all()
            )
            if users:
                raise FailedPrecondition(f"schema {name!r} is used by {', '.join(users)}", metadata={"resource": name})
            conn.execute(delete(schemas).where(mine(schemas), schemas.c.name == name))

    # ---- datasets --------------------------------------------------------------------

    def create_dataset(
        self, name: str, group: str, dataset_type: str, schema: str, fields: list[Field], data_frequency: str
    ) -> Row[Any]:
        with self.engine.connect() as conn:
            taken = conn.execute(
                select(datasets.c.name).where(
                    mine(datasets), datasets.c.dataset_group == group, datasets.c.dataset_type == dataset_type
                )
            ).scalar()
        if taken and taken != name:
            raise AlreadyExists(taken, f"dataset group {group!r} already has a {dataset_type} dataset: {taken}")
        return self._insert(
            datasets,
            {
                "name": name,
                "dataset_group": group,
                "dataset_type": dataset_type,
                "schema": schema,
                "fields": [vars(f) for f in fields],
                "data_frequency": data_frequency,
                "state": "ACTIVE",
            },
            "dataset",
        )

    def get_dataset(self, name: str) -> Row[Any]:
        return self._get(datasets, name)

    def dataset_of_type(self, group: str, dataset_type: str) -> Row[Any] | None:
        with self.engine.connect() as conn:
            return conn.execute(
                select(datasets).where(
                    mine(datasets), datasets.c.dataset_group == group, datasets.c.dataset_type == dataset_type
                )
            ).first()

    def list_datasets(self, group: str, size: int, after: str | None) -> Page:
        return self._page(datasets, size, after, datasets.c.dataset_group == group)

    def delete_dataset(self, name: str) -> None:
        self.get_dataset(name)
        with transaction(self.engine) as conn:
            self._delete_dataset(conn, name)

    def _delete_dataset(self, conn: Connection, name: str) -> None:
        self.plane.catalog.retire_all(conn, name)
        for table in ROW_TABLES.values():
            conn.execute(delete(table).where(table.c.dataset == row_key(name)))
        conn.execute(delete(import_jobs).where(mine(import_jobs), import_jobs.c.dataset == name))
        conn.execute(delete(export_jobs).where(mine(export_jobs), export_jobs.c.dataset == name))
        conn.execute(delete(datasets).where(mine(datasets), datasets.c.name == name))

    def row_count(self, dataset_name: str, mapper: RowMapper) -> int:
        return self.plane.count(dataset_name, mapper)

    # ---- import / export jobs --------------------------------------------------------

    def create_import_job(self, name: str, dataset_name: str, source_uri: str, mode: str, operation: str) -> Row[Any]:
        return self._insert(
            import_jobs,
            {
                "name": name,
                "dataset": dataset_name,
                "source_uri": source_uri,
                "import_mode": mode,
                "state": "PENDING",
                "operation": operation,
                "rows_imported": 0,
                "bytes_total": 0,
            },
            "import job",
        )

    def update_import_job(self, name: str, **values: Any) -> Row[Any]:
        with transaction(self.engine) as conn:
            conn.execute(
                update(import_jobs)
                .where(mine(import_jobs), import_jobs.c.name == name)
                .values(update_time=now(), **values)
            )
            return self._get(import_jobs, name, conn)

    def get_import_job(self, name: str) -> Row[Any]:
        return self._get(import_jobs, name)

    def list_import_jobs(self, dataset_name: str, size: int, after: str | None) -> Page:
        return self._page(import_jobs, size, after, import_jobs.c.dataset == dataset_name)

    def create_export_job(self, name: str, dataset_name: str, destination_uri: str, operation: str) -> Row[Any]:
        return self._insert(
            export_jobs,
            {
                "name": name,
                "dataset": dataset_name,
                "destination_uri": destination_uri,
                "state": "PENDING",
                "operation": operation,
                "rows_exported": 0,
            },
            "export job",
        )

    def update_export_job(self, name: str, **values: Any) -> Row[Any]:
        with transaction(self.engine) as conn:
            conn.execute(
                update(export_jobs)
                .where(mine(export_jobs), export_jobs.c.name == name)
                .values(update_time=now(), **values)
            )
            return self._get(export_jobs, name, conn)

    def get_export_job(self, name: str) -> Row[Any]:
        return self._get(export_jobs, name)

    def list_export_jobs(self, dataset_name: str, size: int, after: str | None) -> Page:
        return self._page(export_jobs, size, after, export_jobs.c.dataset == dataset_name)

    def unfinished_jobs(self) -> list[tuple[str, str, str, str]]:
        """(tenant, kind, job name, operation) of jobs left PENDING/RUNNING by a stopped server, every tenant's."""
        out: list[tuple[str, str, str, str]] = []
        with self.engine.connect() as conn:
            for kind, table in (("import", import_jobs), ("export", export_jobs)):
                rows = conn.execute(
                    select(table.c.tenant, table.c.name, table.c.operation).where(
                        table.c.state.in_(("PENDING", "RUNNING"))
                    )
                ).fetchall()
                out += [(r.tenant, kind, r.name, r.operation) for r in rows]
        return out

    # ---- rows --------------------------------------------------------------------------

    def _complete(self, table_name: str, dataset_name: str, job: str | None, record: dict[str, Any]) -> dict[str, Any]:
        full = dict(self._templates[table_name])
        full.update(record)
        full["dataset"] = row_key(dataset_name)
        full["import_job"] = None if job is None else row_key(job)
        if table_name == "series":
            full["dims_key"] = dims_key(full.get("dimensions"))
        return full

    def commit_parts(
        self,
        mapper: RowMapper,
        dataset_name: str,
        job: str,
        mode: str,
        written: list[tuple[str, int, int]],
        **job_values: Any,
    ) -> None:
        """Makes an import's Parquet parts visible (dataset/plane.py) and records the job, in one transaction."""

        def finish(conn: Connection) -> None:
            conn.execute(
                update(import_jobs)
                .where(mine(import_jobs), import_jobs.c.name == job)
                .values(update_time=now(), **job_values)
            )
            conn.execute(
                update(datasets).where(mine(datasets), datasets.c.name == dataset_name).values(update_time=now())
            )

        self.plane.commit_import(dataset_name, job, mapper, mode, written, finish)

    def discard_all_staged(self, job: str) -> None:
        """Drops what an import a stopped server left behind: its Parquet parts, and the rows a release before
        the columnar plane staged in SQL."""
        self.plane.files.delete_job(job)
        with transaction(self.engine) as conn:
            for table in ROW_TABLES.values():
                conn.execute(delete(table).where(table.c.import_job == row_key(job)))

    def put_events(self, dataset_name: str, records: list[dict[str, Any]]) -> tuple[int, int]:
        """Stores events whose event_id is new; returns (accepted, duplicates)."""
        try:
            return self._put_events(dataset_name, records)
        except IntegrityError:
            # A concurrent call stored one of these ids between our check and insert; the retry sees it.
            return self._put_events(dataset_name, records)

    def _put_events(self, dataset_name: str, records: list[dict[str, Any]]) -> tuple[int, int]:
        unique: dict[str, dict[str, Any]] = {}
        for record in records:
            unique.setdefault(record["event_id"], record)
        with transaction(self.engine) as conn:
            seen = set(
                conn.execute(
                    select(interactions.c.event_id).where(
                        interactions.c.dataset == row_key(dataset_name), interactions.c.event_id.in_(list(unique))
                    )
                ).scalars()
            )
            fresh = [self._complete("interactions", dataset_name, None, r) for k, r in unique.items() if k not in seen]
            if fresh:
                conn.execute(insert(interactions), fresh)
        return len(fresh), len(records) - len(fresh)

    def events_after(self, dataset_name: str, after_id: int, limit: int) -> Sequence[Row[Any]]:
        """PutEvents events (they alone carry an event_id) with id > after_id, oldest first."""
        with self.engine.connect() as conn:
            return conn.execute(
                select(interactions)
                .where(
                    interactions.c.dataset == row_key(dataset_name),
                    interactions.c.event_id.is_not(None),
                    interactions.c.import_job.is_(None),
                    interactions.c.id > after_id,
                )
                .order_by(interactions.c.id)
                .limit(limit)
            ).fetchall()

    def first_event_id_at(self, dataset_name: str, since_ts: int) -> int:
        """A cursor just before the first PutEvents event at or after `since_ts` (or after the last one)."""
        base = [interactions.c.dataset == row_key(dataset_name), interactions.c.event_id.is_not(None)]
        with self.engine.connect() as conn:
            first = conn.execute(
                select(func.min(interactions.c.id)).where(*base, interactions.c.ts >= since_ts)
            ).scalar()
            if first is not None:
                return int(first) - 1
            last = conn.execute(select(func.max(interactions.c.id)).where(*base)).scalar()
        return int(last or 0)

    def upsert_entities(self, dataset_name: str, records: list[dict[str, Any]]) -> int:
        latest = {r["entity_id"]: r for r in records}
        with transaction(self.engine) as conn:
            conn.execute(
                delete(entities).where(
                    entities.c.dataset == row_key(dataset_name),
                    entities.c.import_job.is_(None),
                    entities.c.entity_id.in_(list(latest)),
                )
            )
            conn.execute(insert(entities), [self._complete("entities", dataset_name, None, r) for r in latest.values()])
        return len(latest)

    def delete_user_data(self, group: str, user_ids: list[str]) -> tuple[int, int]:
        """Deletes the rows of `user_ids` from the group's INTERACTIONS and USERS datasets: each dataset's
        Parquet parts holding them are rewritten and its SQL rows deleted in one commit.
        (interactions, users) deleted. Staged rows are left to their import, which commits or drops them."""
        self.get_group(group)
        counts = {"INTERACTIONS": 0, "USERS": 0}
        with self.engine.connect() as conn:
            found = conn.execute(
                select(datasets).where(
                    mine(datasets), datasets.c.dataset_group == group, datasets.c.dataset_type.in_(list(counts))
                )
            ).fetchall()
        for row in found:
            counts[row.dataset_type] = self._erase_users(row, user_ids)
        return counts["INTERACTIONS"], counts["USERS"]

    def _erase_users(self, dataset: Row[Any], user_ids: list[str]) -> int:
        """One dataset's rows of `user_ids`: its parts rewritten without them, its SQL rows deleted, one commit."""
        table = interactions if dataset.dataset_type == "INTERACTIONS" else entities
        user = interactions.c.user_id if dataset.dataset_type == "INTERACTIONS" else entities.c.entity_id
        where = [table.c.dataset == row_key(dataset.name), table.c.import_job.is_(None), user.in_(user_ids)]
        sql_rows = 0

        @contextlib.contextmanager
        def committing() -> Iterator[Connection]:
            nonlocal sql_rows
            with transaction(self.engine) as conn:
                yield conn
                sql_rows = int(conn.execute(delete(table).where(*where)).rowcount or 0)
                conn.execute(
                    update(datasets).where(mine(datasets), datasets.c.name == dataset.name).values(update_time=now())
                )

        mapper = RowMapper(dataset.dataset_type, [Field(**f) for f in dataset.fields])
        return self.plane.remove_rows(committing, dataset.name, mapper, "USER_ID", user_ids) + sql_rows
