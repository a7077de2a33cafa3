"""Long-running operations (AIP-151): a table of operations and the google.longrunning servicer.

Jobs report progress into the row; clients poll Operations.GetOperation/WaitOperation.
Cancellation only sets a flag: jobs check it between batches, so it works the same for
in-process threads and for workers in other processes.
"""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Collection
from datetime import UTC, datetime

import grpc
from google.longrunning import operations_pb2, operations_pb2_grpc
from google.protobuf import any_pb2, empty_pb2
from google.protobuf.message import Message
from google.rpc import status_pb2
from sqlalchemy import Boolean, Column, DateTime, Engine, LargeBinary, MetaData, String, Table, select

from foretell.core import auth, pagination, tenancy
from foretell.core.db import transaction
from foretell.core.errors import absent, invalid
from foretell.core.resources import Page, in_groups
from foretell.v1 import common_pb2

metadata = MetaData()

operations_table = Table(
    "operations",
    metadata,
    Column("name", String(80), primary_key=True),
    Column("target", String(512), nullable=False, index=True),
    Column("verb", String(32), nullable=False),
    Column("done", Boolean, nullable=False, default=False),
    Column("cancel_requested", Boolean, nullable=False, default=False),
    Column("metadata", LargeBinary, nullable=False),
    Column("response", LargeBinary, nullable=True),
    Column("error", LargeBinary, nullable=True),
    Column("create_time", DateTime(timezone=True), nullable=False),
    # The target's dataset group ("" where unknown: only callers of every group see it), for lists filtered
    # in SQL before they page. Last: where migration 0002 added it.
    Column("dataset_group", String(128), nullable=False, default="", index=True),
    # The tenant whose call started it: operations of other tenants are absent for a caller.
    Column("tenant", String(64), nullable=False, default="", index=True),
)


def _now() -> datetime:
    return datetime.now(UTC)


def _pack(message: Message) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(message)
    return packed


class OperationStore:
    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        metadata.create_all(engine)

    def create(self, target: str, verb: str, dataset_group: str = "", job: str = "") -> operations_pb2.Operation:
        """A new operation on `target`; `dataset_group` decides who lists it ("": callers of every group only)."""
        now = _now()
        meta = common_pb2.OperationMetadata(target=target, verb=verb, job=job)
        meta.create_time.FromDatetime(now)
        meta.update_time.FromDatetime(now)
        name = f"operations/{uuid.uuid4().hex}"
        with transaction(self._engine) as conn:
            conn.execute(
                operations_table.insert().values(
                    name=name,
                    tenant=tenancy.current(),
                    target=target,
                    dataset_group=dataset_group,
                    verb=verb,
                    done=False,
                    cancel_requested=False,
                    metadata=_pack(meta).SerializeToString(),
                    create_time=now,
                )
            )
        return operations_pb2.Operation(name=name, metadata=_pack(meta))

    def get(self, name: str) -> operations_pb2.Operation:
        with self._engine.connect() as conn:
            row = conn.execute(select(operations_table).where(operations_table.c.name == name)).first()
        if row is None:
            raise absent(name)
        return to_proto(row)

    def owner(self, name: str) -> tuple[str, str]:
        """(tenant, dataset group) whose callers may see operation `name` (group "": callers of every group)."""
        with self._engine.connect() as conn:
            row = conn.execute(
                select(operations_table.c.tenant, operations_table.c.dataset_group).where(
                    operations_table.c.name == name
                )
            ).first()
        if row is None:
            raise absent(name)
        return str(row.tenant), str(row.dataset_group)

    def metadata(self, name: str) -> common_pb2.OperationMetadata:
        meta = common_pb2.OperationMetadata()
        self.get(name).metadata.Unpack(meta)
        return meta

    def _update_metadata(self, name: str, **changes: object) -> common_pb2.OperationMetadata:
        meta = self.metadata(name)
        counters: dict[str, float] | None = changes.pop("counters", None)  # type: ignore[assignment]
        for key, value in changes.items():
            setattr(meta, key, value)
        if counters:
            meta.counters.update(counters)
        meta.update_time.FromDatetime(_now())
        return meta

    def report_progress(
        self, name: str, percent: float, message: str = "", counters: dict[str, float] | None = None
    ) -> None:
        meta = self._update_metadata(
            name, progress_percent=max(0.0, min(100.0, percent)), status_message=message, counters=counters
        )
        with transaction(self._engine) as conn:
            conn.execute(
                operations_table.update()
                .where(operations_table.c.name == name)
                .values(metadata=_pack(meta).SerializeToString())
            )

    def set_job(self, name: str, job: str) -> None:
        """Records where the work runs (a worker pid, a Kubernetes Job)."""
        meta = self._update_metadata(name, job=job)
        with transaction(self._engine) as conn:
            conn.execute(
                operations_table.update()
                .where(operations_table.c.name == name)
                .values(metadata=_pack(meta).SerializeToString())
            )

    def finish(self, name: str, response: Message) -> None:
        self._complete(name, response=_pack(response).SerializeToString(), percent=100.0)

    def fail(self, name: str, error: status_pb2.Status) -> None:
        self._complete(name, error=error.SerializeToString())

    def _complete(self, name: str, *, percent: float | None = None, **values: bytes) -> None:
        meta = self.metadata(name)
        now = _now()
        meta.end_time.FromDatetime(now)
        meta.update_time.FromDatetime(now)
        if percent is not None:
            meta.progress_percent = percent
        with transaction(self._engine) as conn:
            conn.execute(
                operations_table.update()
                .where(operations_table.c.name == name)
                .values(done=True, metadata=_pack(meta).SerializeToString(), **values)
            )

    def request_cancel(self, name: str) -> None:
        operation = self.get(name)
        if operation.done:
            return
        meta = self._update_metadata(name, requested_cancellation=True)
        with transaction(self._engine) as conn:
            conn.execute(
                operations_table.update()
                .where(operations_table.c.name == name)
                .values(cancel_requested=True, metadata=_pack(meta).SerializeToString())
            )

    def cancel_requested(self, name: str) -> bool:
        with self._engine.connect() as conn:
            flag = conn.execute(
                select(operations_table.c.cancel_requested).where(operations_table.c.name == name)
            ).scalar()
        return bool(flag)

    def list(self, filter_text: str, size: int, after: str | None, groups: Collection[str] | None = None) -> Page:
        """Operations matching `filter_text` (done=, verb=, target=) of `groups`, by name after `after`."""
        query = select(operations_table).where(
            tenancy.mine(operations_table), *in_groups(operations_table.c.dataset_group, groups)
        )
        for clause in filter(None, (c.strip() for c in filter_text.split(" AND "))):
            key, _, value = (s.strip() for s in clause.partition("="))
            if key == "done" and value in ("true", "false"):
                query = query.where(operations_table.c.done == (value == "true"))
            elif key == "verb" and value:
                query = query.where(operations_table.c.verb == value.strip('"'))
            elif key == "target" and value:
                query = query.where(operations_table.c.target == value.strip('"'))
            else:
                raise invalid("filter", f"unsupported clause {clause!r}; use done=true|false, verb=..., target=...")
        if after is not None:
            query = query.where(operations_table.c.name > after)
        with self._engine.connect() as conn:
            rows = list(conn.execute(query.order_by(operations_table.c.name).limit(size + 1)).fetchall())
        return Page(rows[:size], rows[size - 1].name if len(rows) > size else None)

    def delete(self, name: str) -> None:
        with transaction(self._engine) as conn:
            deleted = conn.execute(operations_table.delete().where(operations_table.c.name == name)).rowcount
        if not deleted:
            raise absent(name)


def to_proto(row: object) -> operations_pb2.Operation:
    op = operations_pb2.Operation(name=row.name, done=row.done)  # type: ignore[attr-defined]
    op.metadata.ParseFromString(row.metadata)  # type: ignore[attr-defined]
    if row.response is not None:  # type: ignore[attr-defined]
        op.response.ParseFromString(row.response)  # type: ignore[attr-defined]
    elif row.error is not None:  # type: ignore[attr-defined]
        op.error.ParseFromString(row.error)  # type: ignore[attr-defined]
    return op


def error_status(code: int, message: str, details: list[any_pb2.Any] | None = None) -> status_pb2.Status:
    return status_pb2.Status(code=code, message=message, details=details or [])


class OperationsServicer(operations_pb2_grpc.OperationsServicer):
    """google.longrunning.Operations over the shared store (one per process)."""

    def __init__(self, store: OperationStore, tokens: pagination.PageTokens) -> None:
        self._store = store
        self._tokens = tokens

    def _authorized(self, name: str) -> str:
        """The checked operation name, once the caller may access the resource it works on."""
        name = _op_name(name)
        if auth.current() is None:
            return name  # auth off: one tenant, every group; no read needed (operations are polled)
        # Tenant and group are stored with the operation, so no peer needs asking; group "" (an operation whose
        # resource was gone when the column was added) is for callers of every group only.
        tenant, group = self._store.owner(name)
        if tenant != tenancy.current():
            raise absent(name)
        auth.authorize(group, name)
        return name

    def GetOperation(self, request: operations_pb2.GetOperationRequest, context: grpc.ServicerContext):  # noqa: N802
        return self._store.get(self._authorized(request.name))

    def ListOperations(self, request: operations_pb2.ListOperationsRequest, context: grpc.ServicerContext):  # noqa: N802
        if request.name not in ("", "operations"):
            raise invalid("name", 'must be "operations" or empty')
        rows, token = self._tokens.paged(
            request,
            f"operations:{request.filter}",
            lambda size, after: self._store.list(request.filter, size, after, auth.visible_groups()),
        )
        return operations_pb2.ListOperationsResponse(operations=[to_proto(r) for r in rows], next_page_token=token)

    def DeleteOperation(self, request: operations_pb2.DeleteOperationRequest, context: grpc.ServicerContext):  # noqa: N802
        self._store.delete(self._authorized(request.name))
        return empty_pb2.Empty()

    def CancelOperation(self, request: operations_pb2.CancelOperationRequest, context: grpc.ServicerContext):  # noqa: N802
        self._store.request_cancel(self._authorized(request.name))
        return empty_pb2.Empty()

    def WaitOperation(self, request: operations_pb2.WaitOperationRequest, context: grpc.ServicerContext):  # noqa: N802
        name = self._authorized(request.name)
        # Not ToTimedelta(): a Duration may hold more seconds than a timedelta (OverflowError, INTERNAL).
        timeout = request.timeout
        budget = timeout.seconds + timeout.nanos / 1e9 if request.HasField("timeout") else 60.0
        remaining = context.time_remaining()
        deadline = time.monotonic() + min(budget, remaining - 0.05 if remaining is not None else budget)
        operation = self._store.get(name)
        while not operation.done and time.monotonic() < deadline and context.is_active():
            time.sleep(0.05)
            operation = self._store.get(name)
        return operation


def _op_name(name: str) -> str:
    # The id's alphabet is checked too: a NUL reaching PostgreSQL is an error there (INTERNAL), not a miss.
    if not _OPERATION_NAME.fullmatch(name):
        raise invalid("name", "must be an operation name of the form operations/{id}")
    return name


# This store makes operations/{32 hex digits}; any id of letters, digits, '-', '_' and '.' is looked up.
_OPERATION_NAME = re.compile(r"operations/[A-Za-z0-9._-]{1,69}")
