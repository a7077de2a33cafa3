"""AIP-155 request ids: a retried mutating call with the same id gets the first result."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import TypeVar

from google.protobuf.message import Message
from sqlalchemy import Column, DateTime, Engine, LargeBinary, MetaData, String, Table, select
from sqlalchemy.exc import IntegrityError

from foretell.core.db import transaction
from foretell.core.names import check_request_id

M = TypeVar("M", bound=Message)

metadata = MetaData()

idempotency_table = Table(
    "idempotency_keys",
    metadata,
    Column("method", String(128), primary_key=True),
    Column("request_id", String(128), primary_key=True),
    Column("response", LargeBinary, nullable=False),
    Column("create_time", DateTime(timezone=True), nullable=False),
)


class IdempotencyStore:
    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        metadata.create_all(engine)

    def run(self, method: str, request_id: str, response_type: type[M], call: Callable[[], M]) -> M:
        """Run `call` once per (method, request_id); without a request id, always run it."""
        if not check_request_id(request_id):
            return call()
        stored = self._lookup(method, request_id, response_type)
        if stored is not None:
            return stored
        response = call()
        try:
            with transaction(self._engine) as conn:
                conn.execute(
                    idempotency_table.insert().values(
                        method=method,
                        request_id=request_id,
                        response=response.SerializeToString(),
                        create_time=datetime.now(UTC),
                    )
                )
        except IntegrityError:
            # A concurrent retry won the race; both did the work, the first answer stands.
            stored = self._lookup(method, request_id, response_type)
            assert stored is not None
            return stored
        return response

    def _lookup(self, method: str, request_id: str, response_type: type[M]) -> M | None:
        with self._engine.connect() as conn:
            data = conn.execute(
                select(idempotency_table.c.response).where(
                    idempotency_table.c.method == method, idempotency_table.c.request_id == request_id
                )
            ).scalar()
        return None if data is None else response_type.FromString(data)
