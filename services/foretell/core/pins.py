"""Which resources are in use by which others across services, so that nothing deletes what is still served.

A campaign pins the solution version it serves (and the one it is switching to); the training service refuses to
delete a pinned version or its solution. One table in the shared database, like operations and leases: the
services need not call each other, and a pin and the row it guards change in the same database.
"""

from __future__ import annotations

from collections.abc import Iterable

from sqlalchemy import Column, Engine, MetaData, PrimaryKeyConstraint, String, Table, delete, insert, select

from foretell.core import tenancy
from foretell.core.db import transaction

metadata = MetaData()

pins_table = Table(
    "resource_pins",
    metadata,
    Column("tenant", String(64), nullable=False),
    Column("resource", String(256), nullable=False),  # what is in use: a solution version
    Column("holder", String(256), nullable=False),  # what uses it: a campaign
    PrimaryKeyConstraint("tenant", "resource", "holder"),
)


class Pins:
    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        metadata.create_all(engine)

    def hold(self, holder: str, resources: Iterable[str]) -> None:
        """`holder` uses exactly `resources` now (of the current tenant): earlier pins of it go."""
        t = pins_table.c
        with transaction(self._engine) as conn:
            conn.execute(delete(pins_table).where(t.tenant == tenancy.current(), t.holder == holder))
            for resource in sorted(set(filter(None, resources))):
                conn.execute(insert(pins_table).values(tenant=tenancy.current(), resource=resource, holder=holder))

    def holders(self, resources: Iterable[str]) -> list[str]:
        """What uses any of `resources` (of the current tenant), sorted."""
        wanted = sorted(set(resources))
        if not wanted:
            return []
        t = pins_table.c
        with self._engine.connect() as conn:
            found = conn.execute(
                select(t.holder).where(t.tenant == tenancy.current(), t.resource.in_(wanted)).distinct()
            ).scalars()
            return sorted(str(h) for h in found)
