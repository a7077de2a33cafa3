"""AIP-155 request ids: a retried mutating call with the same id gets the first result."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TypeVar

from google.protobuf.message import Message
from sqlalchemy import Column, DateTime, Engine, LargeBinary, MetaData, String, Table, select
from sqlalchemy.exc import IntegrityError

from foretell.core.db import transaction
from foretell.core.errors import Aborted
from foretell.core.names import check_request_id

M = TypeVar("M", bound=Message)
# How long a retry waits for a first call with the same request id that is still running.
WAIT_SECONDS = 30.0

metadata = MetaData()

idempotency_table = Table(
    "idempotency_keys",
    metadata,
    Column("method", String(128), primary_key=True),
    Column("request_id", String(128), primary_key=True),
    # NULL while the first call with this id runs.
    Column("response", LargeBinary, nullable=True),
    Column("create_time", DateTime(timezone=True), nullable=False),
)


class IdempotencyStore:
    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        metadata.create_all(engine)

    def run(self, method: str, request_id: str, response_type: type[M], call: Callable[[], M]) -> M:
        """Run `call` once per (method, request_id); without a request id, always run it.

        The id is reserved before `call` runs, so concurrent first calls cannot both start a job:
        the later ones wait for the first answer (or run themselves if the first call failed).
        """
        if not check_request_id(request_id):
            return call()
        deadline = time.monotonic() + WAIT_SECONDS
        while True:
            found, stored = self._lookup(method, request_id, response_type)
            if stored is not None:
                return stored
            if not found and self._reserve(method, request_id):
                break
            if time.monotonic() > deadline:
                raise Aborted(f"a call with request_id {request_id!r} is still running; retry later")
            time.sleep(0.02)
        try:
            response = call()
        except BaseException:
            self._release(method, request_id)
            raise
        with transaction(self._engine) as conn:
            conn.execute(
                idempotency_table.update()
                .where(idempotency_table.c.method == method, idempotency_table.c.request_id == request_id)
                .values(response=response.SerializeToString())
            )
        return response

    def _reserve(self, method: str, request_id: str) -> bool:
        try:
            with transaction(self._engine) as conn:
                conn.execute(
                    idempotency_table.insert().values(
                        method=method, request_id=request_id, response=None, create_time=datetime.now(UTC)
                    )
                )
        except IntegrityError:
            return False
        return True

    def _release(self, method: str, request_id: str) -> None:
        with transaction(self._engine) as conn:
            conn.execute(
                idempotency_table.delete().where(
                    idempotency_table.c.method == method,
                    idempotency_table.c.request_id == request_id,
                    idempotency_table.c.response.is_(None),
                )
            )

    def _lookup(self, method: str, request_id: str, response_type: type[M]) -> tuple[bool, M | None]:
        """(whether the id is known, its answer once the first call has finished)."""
        with self._engine.connect() as conn:
            row = conn.execute(
                select(idempotency_table.c.response).where(
                    idempotency_table.c.method == method, idempotency_table.c.request_id == request_id
                )
            ).first()
        if row is None:
            return False, None
        return True, None if row.response is None else response_type.FromString(row.response)
