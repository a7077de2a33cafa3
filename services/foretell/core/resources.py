"""Get / insert / page rows of a resource table keyed by its `tenant` and `name` columns (every store uses these).

Every call is limited to the current tenant (core/tenancy.py): a name is looked up, inserted and listed in the
tenant's namespace only, so two tenants may own the same name and neither ever sees the other's row.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from google.protobuf import timestamp_pb2
from google.rpc import status_pb2
from sqlalchemy import Column, DateTime, Engine, PrimaryKeyConstraint, String, Table, insert, select
from sqlalchemy.engine import Connection, Row
from sqlalchemy.exc import IntegrityError

from foretell.core import tenancy
from foretell.core.db import transaction
from foretell.core.errors import AlreadyExists, absent


def now() -> datetime:
    return datetime.now(UTC)


def name_column(length: int) -> Column[Any]:
    """The `name` column of a resource table (unique per tenant: see `tenant_key`)."""
    return Column("name", String(length), nullable=False)


def tenant_key() -> list[Any]:
    """The `tenant` column and the table's key (tenant, name): names are unique per tenant. Last in every table:
    where migration 0003 added it."""
    return [Column("tenant", String(64), nullable=False), PrimaryKeyConstraint("tenant", "name")]


def times() -> list[Column[Any]]:
    """create_time and update_time columns."""
    return [
        Column("create_time", DateTime(timezone=True), nullable=False),
        Column("update_time", DateTime(timezone=True), nullable=False),
    ]


def timestamp_of(moment: datetime) -> timestamp_pb2.Timestamp:
    """A stored time as a proto Timestamp. SQLite returns naive datetimes; everything stored is UTC."""
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(moment if moment.tzinfo else moment.replace(tzinfo=UTC))
    return stamp


def status_of(data: bytes | None) -> status_pb2.Status | None:
    """A stored (serialized) error Status, or None where there is none."""
    return status_pb2.Status.FromString(data) if data else None


@dataclass
class Page:
    rows: list[Row[Any]]
    last: str | None  # name of the last row when another page follows


def get_row(engine: Engine, table: Table, name: str, conn: Connection | None = None) -> Row[Any]:
    """The row named `name`, or `absent(name)` (the answer another tenant's resource gets too)."""
    query = select(table).where(tenancy.mine(table), table.c.name == name)
    if conn is not None:
        row = conn.execute(query).first()
    else:
        with engine.connect() as c:
            row = c.execute(query).first()
    if row is None:
        raise absent(name)
    return row


def insert_row(engine: Engine, table: Table, values: dict[str, Any], what: str) -> Row[Any]:
    """Inserts with create/update times; AlreadyExists when the name is taken."""
    stamp = now()
    try:
        with transaction(engine) as conn:
            conn.execute(insert(table).values(tenant=tenancy.current(), create_time=stamp, update_time=stamp, **values))
            return get_row(engine, table, values["name"], conn)
    except IntegrityError:
        raise AlreadyExists(values["name"], f"{what} {values['name']!r} already exists") from None


def in_groups(column: Any, groups: Collection[str] | None) -> list[Any]:
    """The WHERE clause keeping rows of `groups` (None: every group), so lists filter before they page."""
    return [] if groups is None else [column.in_(sorted(groups))]


def page_rows(engine: Engine, table: Table, size: int, after: str | None, *where: Any) -> Page:
    """Rows ordered by name after `after` (keyset pagination)."""
    query = select(table).where(tenancy.mine(table), *where).order_by(table.c.name).limit(size + 1)
    if after is not None:
        query = query.where(table.c.name > after)
    with engine.connect() as conn:
        rows = list(conn.execute(query).fetchall())
    return Page(rows[:size], rows[size - 1].name if len(rows) > size else None)
