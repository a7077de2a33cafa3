"""Stored rows -> protos, and proto enums <-> the plain names the core uses."""

from __future__ import annotations

import math
from typing import Any

from google.protobuf import json_format, struct_pb2, timestamp_pb2
from sqlalchemy.engine import Row

from foretell.core.errors import FieldViolation, InvalidArgument
from foretell.core.resources import status_of, timestamp_of
from foretell.dataset.rows import RowMapper
from foretell.dataset.schema_rules import Field
from foretell.v1 import dataset_pb2 as pb
from foretell.v1 import dataset_service_pb2 as api


def enum_name(enum: Any, value: int, prefix: str) -> str:
    """ "DATASET_TYPE_ITEMS" -> "ITEMS"; "" for UNSPECIFIED or an unknown number."""
    try:
        name: str = enum.Name(value)
    except ValueError:
        return ""
    short = name.removeprefix(prefix)
    return "" if short == "UNSPECIFIED" else short


def enum_value(enum: Any, name: str, prefix: str) -> Any:
    return int(enum.Value(prefix + name)) if name else 0


def _not_finite(value: struct_pb2.Value) -> bool:
    kind = value.WhichOneof("kind")
    if kind == "number_value":
        return not math.isfinite(value.number_value)
    if kind == "struct_value":
        return any(_not_finite(v) for v in value.struct_value.fields.values())
    if kind == "list_value":
        return any(_not_finite(v) for v in value.list_value.values)
    return False


def properties(struct: struct_pb2.Struct, where: str) -> dict[str, Any]:
    """A Struct as a dict; INVALID_ARGUMENT naming each property that holds NaN or Infinity (JSON has neither)."""
    bad = [
        FieldViolation(f"{where}.{key}", "is not a finite number") for key, v in struct.fields.items() if _not_finite(v)
    ]
    if bad:
        raise InvalidArgument(bad)
    return json_format.MessageToDict(struct) if struct.ByteSize() else {}


def fields_from_proto(fields: Any) -> list[Field]:
    return [
        Field(f.name, enum_name(pb.FieldType, f.type, "FIELD_TYPE_"), f.nullable, f.categorical, f.textual)
        for f in fields
    ]


def fields_from_row(row: Row[Any]) -> list[Field]:
    return [Field(**f) for f in row.fields]


def mapper_of(dataset: Row[Any]) -> RowMapper:
    """How a dataset's rows are read and written (its type and schema fields)."""
    return RowMapper(dataset.dataset_type, fields_from_row(dataset))


def dataset_group(row: Row[Any]) -> pb.DatasetGroup:
    return pb.DatasetGroup(
        name=row.name,
        domain=enum_value(pb.Domain, row.domain, "DOMAIN_"),
        display_name=row.display_name,
        state=pb.DatasetGroup.State.Value("STATE_" + row.state),
        labels=row.labels or {},
        create_time=timestamp_of(row.create_time),
        update_time=timestamp_of(row.update_time),
    )


def schema(row: Row[Any]) -> pb.Schema:
    return pb.Schema(
        name=row.name,
        domain=enum_value(pb.Domain, row.domain, "DOMAIN_"),
        fields=[
            pb.SchemaField(
                name=f.name,
                type=enum_value(pb.FieldType, f.type, "FIELD_TYPE_"),
                nullable=f.nullable,
                categorical=f.categorical,
                textual=f.textual,
            )
            for f in fields_from_row(row)
        ],
        create_time=timestamp_of(row.create_time),
        update_time=timestamp_of(row.update_time),
    )


def dataset(row: Row[Any], row_count: int) -> pb.Dataset:
    return pb.Dataset(
        name=row.name,
        dataset_type=enum_value(pb.DatasetType, row.dataset_type, "DATASET_TYPE_"),
        schema=row.schema,
        data_frequency=row.data_frequency,
        state=pb.Dataset.State.Value("STATE_" + row.state),
        row_count=row_count,
        create_time=timestamp_of(row.create_time),
        update_time=timestamp_of(row.update_time),
    )


def import_job(row: Row[Any]) -> pb.ImportJob:
    return pb.ImportJob(
        name=row.name,
        source_uri=row.source_uri,
        import_mode=enum_value(pb.ImportMode, row.import_mode, "IMPORT_MODE_"),
        state=enum_value(pb.JobState, row.state, "JOB_STATE_"),
        rows_imported=row.rows_imported,
        bytes_total=row.bytes_total,
        error=status_of(row.error),
        operation=row.operation,
        create_time=timestamp_of(row.create_time),
        update_time=timestamp_of(row.update_time),
    )


def export_job(row: Row[Any]) -> pb.ExportJob:
    return pb.ExportJob(
        name=row.name,
        destination_uri=row.destination_uri,
        state=enum_value(pb.JobState, row.state, "JOB_STATE_"),
        rows_exported=row.rows_exported,
        error=status_of(row.error),
        operation=row.operation,
        create_time=timestamp_of(row.create_time),
        update_time=timestamp_of(row.update_time),
    )


def watched_event(row: Row[Any]) -> api.WatchedEvent:
    event = api.WatchedEvent(
        user_id=row.user_id or "",
        session_id=row.session_id or "",
        item_id=row.item_id or "",
        event_type=row.event_type or "",
        sent_at=timestamp_pb2.Timestamp(seconds=row.ts),
    )
    if row.event_value is not None:
        event.event_value = row.event_value
    return event
