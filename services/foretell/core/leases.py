"""Which process owns a piece of background work, so that replicas sharing a database never fail or redo each
other's jobs.

A process takes a lease when it starts a job (an import, a training job, a campaign deployment, a batch job) and
gives it back when the job ends; a thread renews every lease the process holds, all in one UPDATE, every third of
the TTL. Recovery (at start and then once per TTL, `sweep`) touches only work whose lease is missing or expired:
its process died. So a replica that starts while another runs an import leaves the import alone, and a job whose
replica was killed is failed (or resumed) by a survivor within about two TTLs.

With SQLite (one process per service and data directory) every lease of a service at start is a dead process's:
`clear()` drops them.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import uuid
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta

from sqlalchemy import (
    Column,
    DateTime,
    Engine,
    MetaData,
    PrimaryKeyConstraint,
    String,
    Table,
    delete,
    insert,
    select,
    update,
)
from sqlalchemy.exc import IntegrityError

from foretell.core import tenancy
from foretell.core.db import transaction
from foretell.core.errors import AlreadyExists
from foretell.core.logs import failure

log = logging.getLogger("foretell.leases")

metadata = MetaData()

leases_table = Table(
    "work_leases",
    metadata,
    Column("kind", String(32), nullable=False),  # "import", "export", "training", "deploy", "batch"
    Column("tenant", String(64), nullable=False),
    Column("name", String(512), nullable=False),  # the job's resource (or operation) name
    Column("owner", String(128), nullable=False),
    Column("expires_at", DateTime(timezone=True), nullable=False),
    PrimaryKeyConstraint("kind", "tenant", "name"),
)


def _now() -> datetime:
    return datetime.now(UTC)


class Leases:
    """This process's leases on one database."""

    def __init__(self, engine: Engine, ttl_seconds: float = 30.0) -> None:
        self._engine = engine
        self._ttl = timedelta(seconds=ttl_seconds)
        self.owner = f"{socket.gethostname()[:64]}/{os.getpid()}/{uuid.uuid4().hex[:12]}"
        self._sweeps: list[Callable[[], object]] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        metadata.create_all(engine)

    @property
    def ttl_seconds(self) -> float:
        return self._ttl.total_seconds()

    def acquire(self, kind: str, name: str) -> bool:
        """Takes the lease on the current tenant's `name` unless a live process holds it; True when taken."""
        key = (leases_table.c.kind == kind, leases_table.c.tenant == tenancy.current(), leases_table.c.name == name)
        expires = _now() + self._ttl
        with transaction(self._engine) as conn:
            taken = conn.execute(
                update(leases_table)
                .where(*key, (leases_table.c.owner == self.owner) | (leases_table.c.expires_at < _now()))
                .values(owner=self.owner, expires_at=expires)
            ).rowcount
        if taken:
            return True
        try:
            with transaction(self._engine) as conn:
                conn.execute(
                    insert(leases_table).values(
                        kind=kind, tenant=tenancy.current(), name=name, owner=self.owner, expires_at=expires
                    )
                )
            return True
        except IntegrityError:
            return False  # a live process holds it

    @contextmanager
    def for_new(self, kind: str, name: str, what: str) -> Iterator[None]:
        """Holds the lease on a job or resource about to be created (`what`, e.g. "campaign") while the block
        creates its row, so that no sweep ever sees the row unowned; ALREADY_EXISTS when a live process holds it.
        Released if the block fails (the row was not created); else kept until the work is done."""
        if not self.acquire(kind, name):
            raise AlreadyExists(name, f"{what} {name!r} already exists")
        try:
            yield
        except BaseException:
            self.release(kind, name)
            raise

    def release(self, kind: str, name: str) -> None:
        with transaction(self._engine) as conn:
            conn.execute(
                delete(leases_table).where(
                    leases_table.c.kind == kind,
                    leases_table.c.tenant == tenancy.current(),
                    leases_table.c.name == name,
                    leases_table.c.owner == self.owner,
                )
            )

    def held(self, kind: str, name: str) -> bool:
        """Whether a live process (this one included) holds the lease on the current tenant's `name`."""
        with self._engine.connect() as conn:
            row = conn.execute(
                select(leases_table.c.owner).where(
                    leases_table.c.kind == kind,
                    leases_table.c.tenant == tenancy.current(),
                    leases_table.c.name == name,
                    leases_table.c.expires_at >= _now(),
                )
            ).first()
        return row is not None

    def clear(self, kinds: Iterable[str]) -> None:
        """Drops every lease of `kinds`: for a process that is, by its lock, the only one running the services that
        take them on this database (SQLite, core/data_lock.py). Other services' leases may be another process's."""
        with transaction(self._engine) as conn:
            conn.execute(delete(leases_table).where(leases_table.c.kind.in_(sorted(kinds))))

    def renew(self) -> None:
        with transaction(self._engine) as conn:
            conn.execute(
                update(leases_table).where(leases_table.c.owner == self.owner).values(expires_at=_now() + self._ttl)
            )

    def on_sweep(self, sweep: Callable[[], object]) -> None:
        """Runs `sweep` (a service's recovery of orphaned work) once per TTL while the process runs."""
        self._sweeps.append(sweep)

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="leases", daemon=True)
            self._thread.start()

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(5.0)

    def _run(self) -> None:
        period = self._ttl.total_seconds() / 3
        beats = 0
        while not self._stop.wait(period):
            beats += 1
            try:
                self.renew()
                if beats % 3 == 0:
                    for sweep in self._sweeps:
                        sweep()
            except Exception as exc:  # the database may be briefly away: try again next beat
                log.warning("lease renewal or sweep failed", extra=failure(exc))
