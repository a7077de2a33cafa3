"""DatasetService: checks requests, calls the store and jobs, maps rows to protos."""

from __future__ import annotations

import hashlib
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
from google.longrunning import operations_pb2
from sqlalchemy.engine import Row

from foretell.core import auth, names, pagination, tenancy
from foretell.core.errors import FailedPrecondition, FieldViolation, InvalidArgument, Violations, invalid
from foretell.core.file_roots import FileRoots, Place
from foretell.core.idempotency import IdempotencyStore
from foretell.dataset import convert, uploads
from foretell.dataset.importer import PARQUET_MAGIC, parse_header, read_header
from foretell.dataset.jobs import DatasetJobs
from foretell.dataset.rows import RowMapper, entity_key, id_problem, timestamp_problem
from foretell.dataset.schema_rules import DOMAIN_TYPES, RESERVED, check_fits, validate_schema
from foretell.dataset.store import DatasetStore
from foretell.dataset.watch import EventBell
from foretell.v1 import dataset_pb2 as pb
from foretell.v1 import dataset_service_pb2 as api
from foretell.v1 import dataset_service_pb2_grpc, event_feed_service_pb2_grpc
from foretell.v1 import event_feed_service_pb2 as feed_api

MAX_PUT = 100
MAX_DELETE_USERS = 1000
WATCH_BATCH = 500
# How often a WatchEvents stream looks for events written by other processes.
WATCH_POLL_SECONDS = 0.25
# After a short batch, a stream lets this long pass before its next query: under steady PutEvents traffic that is
# one query per 50 ms rather than one per call (each query costs the serving process about a millisecond of GIL).
WATCH_GATHER_SECONDS = 0.05
MAX_LABELS = 64
GROUP = ("datasetGroups",)
DATASET = ("datasetGroups", "datasets")
SCHEMA = ("schemas",)


def _domain(value: int, field_name: str) -> str:
    domain = convert.enum_name(pb.Domain, value, "DOMAIN_")
    if domain not in DOMAIN_TYPES:
        raise invalid(field_name, "must be DOMAIN_RECOMMENDATION or DOMAIN_FORECASTING")
    return domain


def _import_mode(value: int, field_name: str) -> str:
    mode = convert.enum_name(pb.ImportMode, value, "IMPORT_MODE_")
    if value and not mode:
        raise invalid(field_name, "is not a known import mode")
    return mode or "FULL"


class DatasetServicer(dataset_service_pb2_grpc.DatasetServiceServicer):
    def __init__(
        self,
        store: DatasetStore,
        jobs: DatasetJobs,
        idempotency: IdempotencyStore,
        upload_dir: Path,
        export_dir: Path,
        max_upload_bytes: int,
        bell: EventBell,
        tokens: pagination.PageTokens,
        files: FileRoots,
    ) -> None:
        self._files = files
        self._store = store
        self._tokens = tokens
        self._bell = bell
        self._jobs = jobs
        self._idem = idempotency
        self._uploads = upload_dir
        self._exports = export_dir
        self._max_upload = max_upload_bytes
        self._uploads.mkdir(parents=True, exist_ok=True)
        self._exports.mkdir(parents=True, exist_ok=True)

    # ---- dataset groups ------------------------------------------------------------------

    def CreateDatasetGroup(
        self, request: api.CreateDatasetGroupRequest, context: grpc.ServicerContext
    ) -> pb.DatasetGroup:  # noqa: N802
        group_id = names.check_id(request.dataset_group_id, "dataset_group_id")
        auth.authorize_new_group(f"datasetGroups/{group_id}")
        domain = _domain(request.dataset_group.domain, "dataset_group.domain")
        labels = dict(request.dataset_group.labels)
        if len(labels) > MAX_LABELS or any(len(k) > 63 or len(v) > 256 for k, v in labels.items()):
            raise invalid(
                "dataset_group.labels", f"at most {MAX_LABELS} labels, keys <= 63 and values <= 256 characters"
            )
        if len(request.dataset_group.display_name) > 256:
            raise invalid("dataset_group.display_name", "is longer than 256 characters")
        return self._idem.run(
            "CreateDatasetGroup",
            request,
            pb.DatasetGroup,
            lambda: convert.dataset_group(
                self._store.create_group(
                    f"datasetGroups/{group_id}", domain, request.dataset_group.display_name, labels
                )
            ),
        )

    def GetDatasetGroup(self, request: api.GetDatasetGroupRequest, context: grpc.ServicerContext) -> pb.DatasetGroup:  # noqa: N802
        return convert.dataset_group(
            self._store.get_group(auth.allowed(names.check_name(request.name, "name", *GROUP)))
        )

    def ListDatasetGroups(
        self, request: api.ListDatasetGroupsRequest, context: grpc.ServicerContext
    ) -> api.ListDatasetGroupsResponse:  # noqa: N802
        groups = auth.visible_groups()
        rows, token = self._tokens.paged(
            request, "groups", lambda size, after: self._store.list_groups(size, after, groups)
        )
        return api.ListDatasetGroupsResponse(
            dataset_groups=[convert.dataset_group(r) for r in rows], next_page_token=token
        )

    def DeleteDatasetGroup(
        self, request: api.DeleteDatasetGroupRequest, context: grpc.ServicerContext
    ) -> api.DeleteDatasetGroupResponse:  # noqa: N802
        name = auth.allowed(names.check_name(request.name, "name", *GROUP))
        names.check_request_id(request.request_id)
        self._store.delete_group(name, request.force)
        return api.DeleteDatasetGroupResponse()

    # ---- schemas -----------------------------------------------------------------------

    def CreateSchema(self, request: api.CreateSchemaRequest, context: grpc.ServicerContext) -> pb.Schema:  # noqa: N802
        schema_id = names.check_id(request.schema_id, "schema_id")
        domain = _domain(request.schema.domain, "schema.domain")
        fields = convert.fields_from_proto(request.schema.fields)
        validate_schema(domain, fields, "schema")
        return self._idem.run(
            "CreateSchema",
            request,
            pb.Schema,
            lambda: convert.schema(self._store.create_schema(f"schemas/{schema_id}", domain, fields)),
        )

    def GetSchema(self, request: api.GetSchemaRequest, context: grpc.ServicerContext) -> pb.Schema:  # noqa: N802
        return convert.schema(self._store.get_schema(names.check_name(request.name, "name", *SCHEMA)))

    def ListSchemas(self, request: api.ListSchemasRequest, context: grpc.ServicerContext) -> api.ListSchemasResponse:  # noqa: N802
        rows, token = self._tokens.paged(request, "schemas", self._store.list_schemas)
        return api.ListSchemasResponse(schemas=[convert.schema(r) for r in rows], next_page_token=token)

    def DeleteSchema(self, request: api.DeleteSchemaRequest, context: grpc.ServicerContext) -> api.DeleteSchemaResponse:  # noqa: N802
        names.check_request_id(request.request_id)
        auth.authorize_all_groups()  # a schema is shared by every group of the tenant
        self._store.delete_schema(names.check_name(request.name, "name", *SCHEMA))
        return api.DeleteSchemaResponse()

    # ---- datasets ----------------------------------------------------------------------

    def CreateDataset(self, request: api.CreateDatasetRequest, context: grpc.ServicerContext) -> pb.Dataset:  # noqa: N802
        parent = auth.allowed(names.check_name(request.parent, "parent", *GROUP))
        dataset_id = names.check_id(request.dataset_id, "dataset_id")
        dataset_type = convert.enum_name(pb.DatasetType, request.dataset.dataset_type, "DATASET_TYPE_")
        if not dataset_type:
            raise invalid("dataset.dataset_type", "is required")
        schema_name = names.check_name(request.dataset.schema, "dataset.schema", *SCHEMA)
        frequency = request.dataset.data_frequency
        if len(frequency) > 16:
            raise invalid("dataset.data_frequency", "is longer than 16 characters")
        group = self._store.get_group(parent)
        schema = self._store.get_schema(schema_name)
        if schema.domain != group.domain:
            raise invalid("dataset.schema", f"is a {schema.domain} schema; the group's domain is {group.domain}")
        fields = convert.fields_from_row(schema)
        check_fits(dataset_type, group.domain, fields, "dataset")
        return self._idem.run(
            "CreateDataset",
            request,
            pb.Dataset,
            lambda: convert.dataset(
                self._store.create_dataset(
                    f"{parent}/datasets/{dataset_id}", parent, dataset_type, schema_name, fields, frequency
                ),
                0,
            ),
        )

    def _dataset(self, name: str, field_name: str) -> tuple[Row[Any], RowMapper]:
        row = self._store.get_dataset(auth.allowed(names.check_name(name, field_name, *DATASET)))
        return row, convert.mapper_of(row)

    def GetDataset(self, request: api.GetDatasetRequest, context: grpc.ServicerContext) -> pb.Dataset:  # noqa: N802
        row, mapper = self._dataset(request.name, "name")
        return convert.dataset(row, self._store.row_count(row.name, mapper))

    def ListDatasets(self, request: api.ListDatasetsRequest, context: grpc.ServicerContext) -> api.ListDatasetsResponse:  # noqa: N802
        parent = auth.allowed(names.check_name(request.parent, "parent", *GROUP))
        self._store.get_group(parent)
        rows, token = self._tokens.paged(request, parent, lambda n, after: self._store.list_datasets(parent, n, after))
        return api.ListDatasetsResponse(
            datasets=[convert.dataset(r, self._store.row_count(r.name, convert.mapper_of(r))) for r in rows],
            next_page_token=token,
        )

    def DeleteDataset(
        self, request: api.DeleteDatasetRequest, context: grpc.ServicerContext
    ) -> api.DeleteDatasetResponse:  # noqa: N802
        names.check_request_id(request.request_id)
        self._store.delete_dataset(auth.allowed(names.check_name(request.name, "name", *DATASET)))
        return api.DeleteDatasetResponse()

    # ---- import ------------------------------------------------------------------------

    def ImportData(
        self, request_iterator: Iterator[api.ImportDataRequest], context: grpc.ServicerContext
    ) -> operations_pb2.Operation:  # noqa: N802
        first = next(request_iterator, None)
        if first is None or first.WhichOneof("payload") != "config":
            raise invalid("config", "the first message must carry the import config")
        config = first.config
        dataset, mapper = self._dataset(config.dataset, "config.dataset")
        mode = _import_mode(config.import_mode, "config.import_mode")
        job_id = (
            names.check_id(config.import_job_id, "config.import_job_id") if config.import_job_id else names.new_id()
        )
        names.check_request_id(config.request_id, "config.request_id")
        # Spooled first: the upload is part of the request a request_id is bound to.
        spooled = uploads.spool_path(self._uploads, tenancy.current(), f"{dataset.name}/importJobs/{job_id}")
        path, upload_digest = self._spool(request_iterator, mapper, spooled)
        started: list[bool] = []

        def start() -> operations_pb2.Operation:
            operation = self._jobs.start_import(
                dataset=dataset,
                job_id=job_id,
                mapper=mapper,
                source=lambda: path.open("rb"),
                mode=mode,
                source_uri="",
                remove_file=path,
                allow_empty=config.allow_empty,
            )
            started.append(True)
            return operation

        try:
            return self._idem.run("ImportData", config, operations_pb2.Operation, start, upload_digest)
        finally:
            if not started:  # refused, failed, or a retry answered with the first call's operation
                path.unlink(missing_ok=True)

    def _spool(self, chunks: Iterator[api.ImportDataRequest], mapper: RowMapper, path: Path) -> tuple[Path, bytes]:
        """Writes the upload to `path`, checking the header as soon as it has arrived; (file, SHA-256)."""
        digest = hashlib.sha256()
        size = 0
        prefix = b""
        header_checked = False
        try:
            with path.open("wb") as out:
                for message in chunks:
                    if message.WhichOneof("payload") != "chunk":
                        raise invalid("config", "only the first message may carry the import config")
                    size += len(message.chunk)
                    if size > self._max_upload:
                        raise invalid("chunk", f"the upload is larger than {self._max_upload} bytes")
                    out.write(message.chunk)
                    digest.update(message.chunk)
                    if not header_checked and prefix[:4] != PARQUET_MAGIC:
                        prefix += message.chunk
                        header = None if prefix[:4] == PARQUET_MAGIC else parse_header(prefix)
                        if header is not None:
                            mapper.check_header(header)
                            header_checked = True
            if size == 0:
                raise invalid("chunk", "the upload is empty")
            if prefix[:4] == PARQUET_MAGIC:  # a Parquet file's column names are in its footer
                mapper.check_header(read_header(path.open("rb")))
            elif not header_checked:
                mapper.check_header(parse_header(prefix + b"\n") or [])
        except BaseException:
            path.unlink(missing_ok=True)
            raise
        return path, digest.digest()

    def CreateImportJob(
        self, request: api.CreateImportJobRequest, context: grpc.ServicerContext
    ) -> operations_pb2.Operation:  # noqa: N802
        dataset, mapper = self._dataset(request.parent, "parent")
        job_id = names.check_id(request.import_job_id, "import_job_id") if request.import_job_id else names.new_id()
        mode = _import_mode(request.import_job.import_mode, "import_job.import_mode")
        field = "import_job.source_uri"
        place = self._files.source(request.import_job.source_uri, field)
        source, source_uri = (place.open_read, place.uri) if isinstance(place, Place) else (self._s3_file(place), place)
        # The file may not be the caller's own text to see: errors name columns by number, not by content.
        mapper = mapper.without_quotes()
        try:
            mapper.check_header(read_header(source()))
        except OSError:
            raise invalid(field, "cannot be read: no such object, or the server may not read it") from None
        except InvalidArgument as exc:
            raise InvalidArgument(
                [FieldViolation(f"{field}.{v.field}", v.description) for v in exc.violations]
            ) from None
        return self._idem.run(
            "CreateImportJob",
            request,
            operations_pb2.Operation,
            lambda: self._jobs.start_import(
                dataset=dataset,
                job_id=job_id,
                mapper=mapper,
                source=source,
                mode=mode,
                source_uri=source_uri,
                remove_file=None,
                allow_empty=request.import_job.allow_empty,
            ),
        )

    def _s3_file(self, uri: str) -> Callable[[], Any]:
        """Opens an s3:// object of the caller's bucket area (core/file_roots.py checked the key) for reading."""
        fs, path = self._store.plane.files.filesystem(uri)
        return lambda: fs.open_input_file(path)

    def GetImportJob(self, request: api.GetImportJobRequest, context: grpc.ServicerContext) -> pb.ImportJob:  # noqa: N802
        auth.authorize_resource(names.check_name(request.name, "name", "datasetGroups", "datasets", "importJobs"))
        return convert.import_job(self._store.get_import_job(request.name))

    def ListImportJobs(
        self, request: api.ListImportJobsRequest, context: grpc.ServicerContext
    ) -> api.ListImportJobsResponse:  # noqa: N802
        dataset, _ = self._dataset(request.parent, "parent")
        rows, token = self._tokens.paged(
            request, dataset.name, lambda size, after: self._store.list_import_jobs(dataset.name, size, after)
        )
        return api.ListImportJobsResponse(import_jobs=[convert.import_job(r) for r in rows], next_page_token=token)

    # ---- export ------------------------------------------------------------------------

    def ExportDataset(
        self, request: api.ExportDatasetRequest, context: grpc.ServicerContext
    ) -> operations_pb2.Operation:  # noqa: N802
        dataset, mapper = self._dataset(request.name, "name")
        job_id = names.check_id(request.export_job_id, "export_job_id") if request.export_job_id else names.new_id()

        def start() -> operations_pb2.Operation:
            # Checked inside the idempotent call: a retry of a finished export finds its file there.
            return self._jobs.start_export(
                dataset=dataset, job_id=job_id, mapper=mapper, destination=self._destination(request, dataset, job_id)
            )

        return self._idem.run("ExportDataset", request, operations_pb2.Operation, start)

    def _destination(self, request: api.ExportDatasetRequest, dataset: Row[Any], job_id: str) -> Place:
        if not request.destination_uri:
            parts = (dataset.name.replace("/", "_"), f"{job_id}.csv")
            return Place.server_chosen(self._exports, parts, "destination_uri")
        place = self._files.destination(request.destination_uri, "destination_uri")
        if not isinstance(place, Place):
            raise invalid("destination_uri", "dataset exports write files only; name a path in your file area")
        return place

    def GetExportJob(self, request: api.GetExportJobRequest, context: grpc.ServicerContext) -> pb.ExportJob:  # noqa: N802
        auth.authorize_resource(names.check_name(request.name, "name", "datasetGroups", "datasets", "exportJobs"))
        return convert.export_job(self._store.get_export_job(request.name))

    def ListExportJobs(
        self, request: api.ListExportJobsRequest, context: grpc.ServicerContext
    ) -> api.ListExportJobsResponse:  # noqa: N802
        dataset, _ = self._dataset(request.parent, "parent")
        rows, token = self._tokens.paged(
            request, dataset.name, lambda size, after: self._store.list_export_jobs(dataset.name, size, after)
        )
        return api.ListExportJobsResponse(export_jobs=[convert.export_job(r) for r in rows], next_page_token=token)

    # ---- real-time data ----------------------------------------------------------------

    def _typed_dataset(self, group: str, dataset_type: str) -> tuple[Row[Any], RowMapper]:
        row = self._store.dataset_of_type(group, dataset_type)
        if row is None:
            self._store.get_group(group)  # NOT_FOUND for an unknown group
            raise FailedPrecondition(
                f"dataset group {group!r} has no {dataset_type} dataset", metadata={"resource": group}
            )
        return row, convert.mapper_of(row)

    def PutEvents(self, request: api.PutEventsRequest, context: grpc.ServicerContext) -> api.PutEventsResponse:  # noqa: N802
        group = auth.allowed(names.check_name(request.dataset_group, "dataset_group", *GROUP))
        problems = Violations()
        problems.require(request.session_id, "session_id")
        if not 1 <= len(request.events) <= MAX_PUT:
            problems.add("events", f"must hold 1 to {MAX_PUT} events")
        for key, value in (("session_id", request.session_id), ("user_id", request.user_id)):
            if problem := id_problem(value):
                problems.add(key, problem)
        problems.raise_if_any()
        dataset, mapper = self._typed_dataset(group, "INTERACTIONS")
        records = []
        for i, event in enumerate(request.events):
            where = f"events[{i}]"
            bad: set[str] = set()
            if not event.HasField("sent_at"):
                problems.add(f"{where}.sent_at", "is required")
            elif problem := timestamp_problem(event.sent_at.seconds):
                problems.add(f"{where}.sent_at", problem)
                bad.add("sent_at")
            for key in ("event_type", "item_id"):
                if not getattr(event, key):
                    problems.add(f"{where}.{key}", "is required")
            for key in ("event_id", "event_type", "item_id", "recommendation_id"):
                if problem := id_problem(getattr(event, key)):
                    problems.add(f"{where}.{key}", problem)
                    bad.add(key)
            if len(event.impression) > 500:
                problems.add(f"{where}.impression", "holds more than 500 items")
            for j, shown in enumerate(event.impression):
                if problem := id_problem(shown):
                    problems.add(f"{where}.impression[{j}]", problem)
            try:
                props = convert.properties(event.properties, f"{where}.properties")
            except InvalidArgument as exc:
                for v in exc.violations:
                    problems.add(v.field, v.description)
                continue
            reserved = [k for k in props if k.upper() in RESERVED]
            for key in reserved:
                problems.add(f"{where}.properties.{key}", "is a reserved field; use the event's own field")
            # The event's own fields stand in for the schema's reserved columns (checked above;
            # "-" keeps a missing or bad one from being reported twice).
            own: dict[str, Any] = {
                "USER_ID": request.user_id or request.session_id,
                "ITEM_ID": "-" if "item_id" in bad else event.item_id or "-",
                "TIMESTAMP": "0" if "sent_at" in bad else str(event.sent_at.seconds),
                "EVENT_TYPE": "-" if "event_type" in bad else event.event_type or "-",
            }
            if event.HasField("event_value"):
                own["EVENT_VALUE"] = event.event_value
            cells = {k: v for k, v in own.items() if k in mapper.field_names}
            cells.update((k, v) for k, v in props.items() if k not in reserved)
            try:
                attributes = mapper.from_mapping(cells, f"{where}.properties").get("attributes")
            except InvalidArgument as exc:
                for v in exc.violations:
                    problems.add(v.field, v.description)
                continue
            records.append(
                {
                    "event_id": event.event_id or uuid.uuid4().hex,
                    "user_id": request.user_id or None,
                    "session_id": request.session_id,
                    "item_id": event.item_id,
                    "ts": event.sent_at.seconds,
                    "event_type": event.event_type,
                    "event_value": event.event_value if event.HasField("event_value") else None,
                    "impression": "|".join(event.impression) or None,
                    "recommendation_id": event.recommendation_id or None,
                    "attributes": attributes,
                }
            )
        problems.raise_if_any()
        accepted, duplicates = self._store.put_events(dataset.name, records)
        if accepted:
            self._bell.ring()
        return api.PutEventsResponse(accepted=accepted, duplicates=duplicates)

    def WatchEvents(  # noqa: N802
        self, request: api.WatchEventsRequest, context: grpc.ServicerContext
    ) -> Iterator[api.WatchEventsResponse]:
        """Deprecated twin of EventFeedService.WatchEvents, kept for wire compatibility: internal callers only."""
        auth.authorize_internal()
        return self.watch_events(request, context)

    def snapshot(self, name: str) -> feed_api.DatasetSnapshot:
        """The dataset's parts after folding in its SQL tail (dataset/plane.py): what a job reads in place."""
        row = self._store.get_dataset(names.check_name(name, "name", *DATASET))
        parts = self._store.plane.compact(row.name, convert.mapper_of(row))
        return feed_api.DatasetSnapshot(
            dataset=row.name,
            dataset_type=pb.DatasetType.Value(f"DATASET_TYPE_{row.dataset_type}"),
            part_uris=[p.uri for p in parts],
            row_count=sum(p.rows for p in parts),
        )

    def watch_events(
        self, request: api.WatchEventsRequest, context: grpc.ServicerContext
    ) -> Iterator[api.WatchEventsResponse]:
        """The events of a group as PutEvents stores them (EventFeedService.WatchEvents; internal callers only)."""
        group = auth.allowed(names.check_name(request.dataset_group, "dataset_group", *GROUP))
        dataset, _ = self._typed_dataset(group, "INTERACTIONS")
        if request.cursor:
            if not request.cursor.isdigit() or len(request.cursor) > 19:
                raise invalid("cursor", "is not a cursor returned by WatchEvents")
            cursor = int(request.cursor)
        else:
            since = request.start_time.seconds if request.HasField("start_time") else int(time.time())
            cursor = self._store.first_event_id_at(dataset.name, since)
        while context.is_active() and not self._bell.closed:
            rings = self._bell.rings
            rows = self._store.events_after(dataset.name, cursor, WATCH_BATCH)
            if not rows:
                self._bell.wait(rings, WATCH_POLL_SECONDS)
                continue
            cursor = rows[-1].id
            yield api.WatchEventsResponse(events=[convert.watched_event(r) for r in rows], cursor=str(cursor))
            if len(rows) < WATCH_BATCH:
                self._bell.wait_closed(WATCH_GATHER_SECONDS)

    def _put_entities(self, dataset_name: str, field_name: str, expected: str, entries: Any) -> int:
        dataset, mapper = self._dataset(dataset_name, "dataset")
        if dataset.dataset_type not in expected.split("|"):
            raise invalid("dataset", f"is a {dataset.dataset_type} dataset; expected {expected.replace('|', ' or ')}")
        if not 1 <= len(entries) <= MAX_PUT:
            raise invalid(field_name, f"must hold 1 to {MAX_PUT} entries")
        key = entity_key(dataset.dataset_type)
        problems = Violations()
        records = []
        for i, (entity_id, properties) in enumerate(entries):
            where = f"{field_name}[{i}]"
            if not entity_id:
                problems.add(f"{where}.{key.lower()}", "is required")
                continue
            if problem := id_problem(entity_id):
                problems.add(f"{where}.{key.lower()}", problem)
                continue
            try:
                props = convert.properties(properties, f"{where}.properties")
                record = mapper.from_mapping({key: entity_id, **props}, f"{where}.properties")
            except InvalidArgument as exc:
                for v in exc.violations:
                    problems.add(v.field, v.description)
                continue
            records.append(record)
        problems.raise_if_any()
        return self._store.upsert_entities(dataset.name, records)

    def PutItems(self, request: api.PutItemsRequest, context: grpc.ServicerContext) -> api.PutItemsResponse:  # noqa: N802
        entries = [(item.item_id, item.properties) for item in request.items]
        return api.PutItemsResponse(
            accepted=self._put_entities(request.dataset, "items", "ITEMS|ITEM_METADATA", entries)
        )

    def PutUsers(self, request: api.PutUsersRequest, context: grpc.ServicerContext) -> api.PutUsersResponse:  # noqa: N802
        entries = [(user.user_id, user.properties) for user in request.users]
        return api.PutUsersResponse(accepted=self._put_entities(request.dataset, "users", "USERS", entries))

    def DeleteUserData(
        self, request: api.DeleteUserDataRequest, context: grpc.ServicerContext
    ) -> api.DeleteUserDataResponse:  # noqa: N802
        group = auth.allowed(names.check_name(request.dataset_group, "dataset_group", *GROUP))
        names.check_request_id(request.request_id)
        problems = Violations()
        if not 1 <= len(request.user_ids) <= MAX_DELETE_USERS:
            problems.add("user_ids", f"must hold 1 to {MAX_DELETE_USERS} user ids")
        for i, user_id in enumerate(request.user_ids):
            if problem := "is required" if not user_id else id_problem(user_id):
                problems.add(f"user_ids[{i}]", problem)
        problems.raise_if_any()

        def delete() -> api.DeleteUserDataResponse:
            deleted, users = self._store.delete_user_data(group, list(request.user_ids))
            return api.DeleteUserDataResponse(interactions_deleted=deleted, users_deleted=users)

        return self._idem.run("DeleteUserData", request, api.DeleteUserDataResponse, delete)


class EventFeedServicer(event_feed_service_pb2_grpc.EventFeedServiceServicer):
    """The internal event feed (recommendation's campaigns follow it): only the internal principal may call it."""

    def __init__(self, datasets: DatasetServicer) -> None:
        self._datasets = datasets

    def WatchEvents(  # noqa: N802
        self, request: api.WatchEventsRequest, context: grpc.ServicerContext
    ) -> Iterator[api.WatchEventsResponse]:
        auth.authorize_internal()
        return self._datasets.watch_events(request, context)

    def SnapshotDataset(  # noqa: N802
        self, request: feed_api.SnapshotDatasetRequest, context: grpc.ServicerContext
    ) -> feed_api.DatasetSnapshot:
        auth.authorize_internal()
        return self._datasets.snapshot(request.name)
