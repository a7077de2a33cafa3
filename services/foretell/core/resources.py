"""Get / insert / page rows of a resource table keyed by its `name` column (every store uses these)."""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from google.protobuf import timestamp_pb2
from google.rpc import status_pb2
from sqlalchemy import Column, DateTime, Engine, Table, insert, select
from sqlalchemy.engine import Connection, Row
from sqlalchemy.exc import IntegrityError

from foretell.core.db import transaction
from foretell.core.errors import AlreadyExists, absent


def now() -> datetime:
    return datetime.now(UTC)


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
    query = select(table).where(table.c.name == name)
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
            conn.execute(insert(table).values(create_time=stamp, update_time=stamp, **values))
            return get_row(engine, table, values["name"], conn)
    except IntegrityError:
        raise AlreadyExists(values["name"], f"{what} {values['name']!r} already exists") from None


def in_groups(column: Any, groups: Collection[str] | None) -> list[Any]:
    """The WHERE clause keeping rows of `groups` (None: every group), so lists filter before they page."""
    return [] if groups is None else [column.in_(sorted(groups))]


def page_rows(engine: Engine, table: Table, size: int, after: str | None, *where: Any) -> Page:
    """Rows ordered by name after `after` (keyset pagination)."""
    query = select(table).where(*where).order_by(table.c.name).limit(size + 1)
    if after is not None:
        query = query.where(table.c.name > after)
    with engine.connect() as conn:
        rows = list(conn.execute(query).fetchall())
    return Page(rows[:size], rows[size - 1].name if len(rows) > size else None)
