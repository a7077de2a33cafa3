"""AIP-155 request ids: a retried mutating call with the same id gets the first result.

A request id is scoped by the calling principal (auth off: one anonymous scope), so another tenant's id is
simply another key, and bound to a fingerprint of the request: the same id with a different request is
refused (INVALID_ARGUMENT naming request_id) instead of answered with the first request's result. Stored
answers are kept for `retention` seconds (FORETELL_REQUEST_ID_RETENTION_SECONDS) and pruned as calls come in.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from google.protobuf.message import Message
from sqlalchemy import Column, DateTime, Engine, LargeBinary, MetaData, String, Table, delete, select, tuple_
from sqlalchemy.exc import IntegrityError

from foretell.core import auth
from foretell.core.db import transaction
from foretell.core.errors import Aborted, invalid
from foretell.core.names import check_request_id

M = TypeVar("M", bound=Message)
# How long a retry waits for a first call with the same request id that is still running.
WAIT_SECONDS = 30.0
DEFAULT_RETENTION_SECONDS = 7 * 24 * 3600.0
# Expired rows deleted per prune, and the most often one process prunes: bounded work on the call path.
PRUNE_BATCH = 500
PRUNE_INTERVAL_SECONDS = 60.0

metadata = MetaData()

idempotency_table = Table(
    "idempotency_keys",
    metadata,
    # SHA-256 hex of the principal's name; "" when authentication is off.
    Column("principal", String(64), primary_key=True),
    Column("method", String(128), primary_key=True),
    Column("request_id", String(128), primary_key=True),
    # SHA-256 hex of the request with request_id cleared (`fingerprint`).
    Column("fingerprint", String(64), nullable=False),
    # NULL while the first call with this id runs.
    Column("response", LargeBinary, nullable=True),
    Column("create_time", DateTime(timezone=True), nullable=False, index=True),
)


def fingerprint(request: Message, *parts: bytes) -> str:
    """SHA-256 of `request` serialized deterministically with `request_id` cleared, and of `parts`
    (e.g. the digest of a streamed upload)."""
    copy = type(request)()
    copy.CopyFrom(request)
    if "request_id" in copy.DESCRIPTOR.fields_by_name:
        copy.ClearField("request_id")
    digest = hashlib.sha256(copy.SerializeToString(deterministic=True))
    for part in parts:
        digest.update(part)
    return digest.hexdigest()


def _scope() -> str:
    who = auth.identity()
    return hashlib.sha256(who.encode()).hexdigest() if who else ""


def _now() -> datetime:
    return datetime.now(UTC)


def _aware(moment: datetime) -> datetime:
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)  # SQLite returns naive UTC


class IdempotencyStore:
    def __init__(self, engine: Engine, retention_seconds: float = DEFAULT_RETENTION_SECONDS) -> None:
        self._engine = engine
        self._retention = timedelta(seconds=retention_seconds)
        self._prune_every = min(PRUNE_INTERVAL_SECONDS, retention_seconds)
        self._next_prune = 0.0
        metadata.create_all(engine)

    def run(self, method: str, request: Any, response_type: type[M], call: Callable[[], M], *parts: bytes) -> M:
        """Run `call` once per (principal, method, request.request_id); without a request id, always run it.

        The id is reserved before `call` runs, so concurrent first calls cannot both start a job: the later
        ones wait for the first answer (or run themselves if the first call failed). `parts` join the
        request in the fingerprint.
        """
        request_id = check_request_id(request.request_id)
        if not request_id:
            return call()
        key = (_scope(), method, request_id)
        printed = fingerprint(request, *parts)
        self._prune()
        deadline = time.monotonic() + WAIT_SECONDS
        while True:
            row = self._lookup(key)
            if row is not None and row.fingerprint != printed:
                raise invalid(
                    "request_id", "was already used with a different request; use a new request_id for a new request"
                )
            if row is not None and row.response is not None:
                return response_type.FromString(row.response)
            if row is None and self._reserve(key, printed):
                break
            if time.monotonic() > deadline:
                raise Aborted(f"a call with request_id {request_id!r} is still running; retry later")
            time.sleep(0.02)
        try:
            response = call()
        except BaseException:
            self._release(key)
            raise
        with transaction(self._engine) as conn:
            conn.execute(
                idempotency_table.update().where(*self._match(key)).values(response=response.SerializeToString())
            )
        return response

    @staticmethod
    def _match(key: tuple[str, str, str]) -> list[Any]:
        t = idempotency_table.c
        return [t.principal == key[0], t.method == key[1], t.request_id == key[2]]

    def _reserve(self, key: tuple[str, str, str], printed: str) -> bool:
        principal, method, request_id = key
        try:
            with transaction(self._engine) as conn:
                conn.execute(
                    idempotency_table.insert().values(
                        principal=principal,
                        method=method,
                        request_id=request_id,
                        fingerprint=printed,
                        response=None,
                        create_time=_now(),
                    )
                )
        except IntegrityError:
            return False
        return True

    def _release(self, key: tuple[str, str, str]) -> None:
        with transaction(self._engine) as conn:
            conn.execute(idempotency_table.delete().where(*self._match(key), idempotency_table.c.response.is_(None)))

    def _lookup(self, key: tuple[str, str, str]) -> Any:
        """The row of `key`, None when there is none or it outlived the retention (then it is deleted)."""
        t = idempotency_table.c
        with self._engine.connect() as conn:
            row = conn.execute(select(t.fingerprint, t.response, t.create_time).where(*self._match(key))).first()
        if row is None or _aware(row.create_time) >= _now() - self._retention:
            return row
        with transaction(self._engine) as conn:
            conn.execute(idempotency_table.delete().where(*self._match(key), t.create_time == row.create_time))
        return None

    def _prune(self) -> None:
        """Deletes up to PRUNE_BATCH expired rows, at most once per interval per process. Plain deletes by
        key: concurrent prunes in other processes (SQLite or PostgreSQL) at worst delete nothing."""
        if time.monotonic() < self._next_prune:
            return
        self._next_prune = time.monotonic() + self._prune_every
        t = idempotency_table.c
        expired = (
            select(t.principal, t.method, t.request_id)
            .where(t.create_time < _now() - self._retention)
            .limit(PRUNE_BATCH)
        )
        with transaction(self._engine) as conn:
            conn.execute(delete(idempotency_table).where(tuple_(t.principal, t.method, t.request_id).in_(expired)))
