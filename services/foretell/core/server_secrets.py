"""Random secrets made once per database, so that every replica sharing it agrees on them.

The first process that needs a secret inserts 32 random bytes; one that loses the race to another
process reads the winner's. To rotate one, delete its row and restart every replica (tokens issued
under the old secret are then refused).
"""

from __future__ import annotations

import secrets
from datetime import UTC, datetime

from sqlalchemy import Column, DateTime, Engine, LargeBinary, MetaData, String, Table, insert, select
from sqlalchemy.exc import IntegrityError

from foretell.core.db import transaction

metadata = MetaData()

server_secrets = Table(
    "server_secrets",
    metadata,
    Column("name", String(64), primary_key=True),
    Column("value", LargeBinary, nullable=False),
    Column("create_time", DateTime(timezone=True), nullable=False),
)

#: Keys page tokens (core/pagination.py).
PAGE_TOKENS = "page-tokens"


def shared_secret(engine: Engine, name: str) -> bytes:
    """The secret `name` of this database, made on first use."""
    metadata.create_all(engine)
    for _ in range(2):
        with engine.connect() as conn:
            found = conn.execute(select(server_secrets.c.value).where(server_secrets.c.name == name)).scalar()
        if found is not None:
            return bytes(found)
        try:
            with transaction(engine) as conn:
                conn.execute(
                    insert(server_secrets).values(
                        name=name, value=secrets.token_bytes(32), create_time=datetime.now(UTC)
                    )
                )
        except IntegrityError:
            continue  # another process made it first: read theirs
    raise RuntimeError(f"could not read or create the server secret {name!r}")
