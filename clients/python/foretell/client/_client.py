"""The Client: one channel, the raw stubs, and a few helpers for the common flows."""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from types import TracebackType
from typing import IO, Any, NamedTuple, Self, TypeVar, cast, overload

import grpc
from google.longrunning import operations_pb2, operations_pb2_grpc
from google.protobuf import descriptor_pool, field_mask_pb2, message_factory, timestamp_pb2
from google.protobuf import message as _message
from google.protobuf.descriptor import MethodDescriptor

from foretell.client._auth import MetadataInterceptor, auth_metadata, tls_credentials
from foretell.client._channel import ChannelOptions, create_channel
from foretell.client.errors import ForetellError, raise_for_operation
from foretell.v1 import (
    common_pb2,
    dataset_pb2,
    dataset_service_pb2,
    dataset_service_pb2_grpc,
    forecast_query_service_pb2,
    forecast_query_service_pb2_grpc,
    recommendation_pb2,
    recommendation_service_pb2,
    recommendation_service_pb2_grpc,
    training_pb2,
    training_service_pb2,
    training_service_pb2_grpc,
)

__all__ = ["Client", "OperationTypes", "operation_response", "operation_types"]

_T = TypeVar("_T")
_M = TypeVar("_M", bound=_message.Message)


def _request_id(request_id: str | None) -> str:
    """A fresh idempotency key unless the caller retries with its own."""
    return request_id if request_id is not None else str(uuid.uuid4())


def _timestamp(value: datetime | None) -> timestamp_pb2.Timestamp | None:
    if value is None:
        return None
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(value)
    return stamp


_TRAINING_MODES: dict[str, training_pb2.TrainingMode.ValueType] = {
    "FULL": training_pb2.TRAINING_MODE_FULL,
    "UPDATE": training_pb2.TRAINING_MODE_UPDATE,
}


def _name(resource: str | _message.Message) -> str:
    """A resource name, or the ``name`` of a resource message (so a helper's result can be passed on)."""
    if isinstance(resource, str):
        return resource
    name = getattr(resource, "name", None)
    if not isinstance(name, str) or not name:
        raise ValueError(f"expected a resource name or a resource message with a name, got {type(resource).__name__}")
    return name


def _training_mode(mode: str | training_pb2.TrainingMode.ValueType) -> training_pb2.TrainingMode.ValueType:
    if isinstance(mode, str):
        key = mode.upper().removeprefix("TRAINING_MODE_")
        if key not in _TRAINING_MODES:
            raise ValueError(f"training_mode {mode!r} is not one of {', '.join(_TRAINING_MODES)}")
        return _TRAINING_MODES[key]
    return mode


def _exploration(
    weight: float | None, cutoff_days: float | None
) -> tuple[recommendation_pb2.ExplorationConfig | None, list[str]]:
    """The ExplorationConfig to send and the update-mask paths of the parts that were given."""
    if weight is None and cutoff_days is None:
        return None, []
    config = recommendation_pb2.ExplorationConfig()
    paths = []
    if weight is not None:
        config.exploration_weight = weight
        paths.append("exploration_config.exploration_weight")
    if cutoff_days is not None:
        config.exploration_item_age_cutoff_days = cutoff_days
        paths.append("exploration_config.exploration_item_age_cutoff_days")
    return config, paths


def _operation_target(operation: operations_pb2.Operation) -> str:
    """The resource an operation works on (OperationMetadata.target)."""
    metadata = common_pb2.OperationMetadata()
    if not operation.metadata.Unpack(metadata) or not metadata.target:
        raise ValueError(f"operation {operation.name!r} does not name its target resource")
    return metadata.target


def _remaining_size(fileobj: IO[bytes]) -> int:
    """Bytes left in a seekable file, or 0 when the size cannot be known (pipes, sockets)."""
    try:
        start = fileobj.tell()
        end = fileobj.seek(0, os.SEEK_END)
        fileobj.seek(start)
    except (OSError, ValueError, AttributeError):
        return 0
    return max(end - start, 0)


class OperationTypes(NamedTuple):
    """What a long-running RPC's Operation carries: its ``response`` and ``metadata`` message classes."""

    response: type[_message.Message]
    metadata: type[_message.Message]


def _message_class(type_name: str, method: MethodDescriptor) -> type[_message.Message]:
    """The class of an operation_info type name: fully qualified, or relative to the method's package (AIP-151)."""
    file = method.containing_service.file
    pool, package = file.pool, file.package
    for candidate in (type_name, f"{package}.{type_name}"):
        try:
            return message_factory.GetMessageClass(pool.FindMessageTypeByName(candidate))
        except KeyError:
            continue
    raise LookupError(f"{method.full_name}: operation_info names {type_name!r}, which is not a known message")


def operation_types(method: str | MethodDescriptor) -> OperationTypes:
    """The response and metadata types of a long-running RPC, read from its ``google.longrunning.operation_info``.

    ``method`` is a method descriptor or a full name: ``foretell.v1.TrainingService.CreateSolutionVersion`` or
    the gRPC path ``/foretell.v1.TrainingService/CreateSolutionVersion``. Raises LookupError for an unknown
    method or one that does not return an annotated Operation.
    """
    if isinstance(method, str):
        try:
            method = descriptor_pool.Default().FindMethodByName(method.lstrip("/").replace("/", "."))
        except KeyError:
            raise LookupError(f"unknown RPC {method!r}") from None
    info = method.GetOptions().Extensions[operations_pb2.operation_info]
    if not info.response_type or not info.metadata_type:
        raise LookupError(f"{method.full_name} has no google.longrunning.operation_info")
    return OperationTypes(_message_class(info.response_type, method), _message_class(info.metadata_type, method))


@overload
def operation_response(operation: operations_pb2.Operation, message_type: type[_M]) -> _M: ...
@overload
def operation_response(
    operation: operations_pb2.Operation, message_type: str | MethodDescriptor
) -> _message.Message: ...
def operation_response(
    operation: operations_pb2.Operation, message_type: type[_M] | str | MethodDescriptor
) -> _M | _message.Message:
    """The typed result of a finished operation.

    ``message_type`` is the response class (``operation_response(op, dataset_pb2.ImportJob)``) or the RPC that
    returned the operation (``operation_response(op, "foretell.v1.DatasetService.ImportData")``), whose
    ``google.longrunning.operation_info`` names the class. Raises ForetellError if the operation failed,
    ValueError if it is still running.
    """
    raise_for_operation(operation)
    if not operation.done:
        raise ValueError(f"operation {operation.name!r} is not done")
    cls = operation_types(message_type).response if isinstance(message_type, str | MethodDescriptor) else message_type
    result = cls()
    if not operation.response.Unpack(result):
        raise TypeError(f"operation response is {operation.response.type_url}, not {cls.DESCRIPTOR.full_name}")
    return result


class Client:
    """A Foretell client over one gRPC channel.

    Create one per target and reuse it (channels are thread-safe and expensive to
    open). Every call has a deadline: helpers pass ``timeout=`` (``upload_timeout``
    for the streamed CSV upload), and the channel's service config bounds raw stub
    calls too, at about the same value (see ``_channel``). A per-call timeout can
    shorten the configured one, never extend it.

    Reads (Get*/List*/Query*, GetRecommendations, GetPersonalizedRanking,
    GetSimilarItems, QueryForecast, Operations Get/List/Wait) are retried
    transparently on UNAVAILABLE, also through the raw stubs. Mutating calls are
    not, because a replay could do the work twice. To retry one, call it again with
    the same ``request_id``: the server returns the first result instead of creating
    a second resource or launching a second job. Helpers default ``request_id`` to a
    fresh uuid4, so pass your own if you intend to retry.

    The raw stubs are ``datasets``, ``training``, ``recommendations``,
    ``forecast_query`` and ``operations``; they raise ``grpc.RpcError``, the helpers
    raise ForetellError.
    """

    def __init__(
        self,
        target: str,
        *,
        timeout: float = 30.0,
        upload_timeout: float = 3600.0,
        credentials: grpc.ChannelCredentials | None = None,
        options: ChannelOptions = (),
        tls: bool = False,
        root_certificates: bytes | str | Path | None = None,
        certificate_chain: bytes | str | Path | None = None,
        private_key: bytes | str | Path | None = None,
        api_key: str | None = None,
        bearer_token: str | None = None,
        unavailable_wait: float = 60.0,
    ) -> None:
        """``tls=True`` (implied by any of the PEM arguments, bytes or a file path) connects over TLS,
        trusting ``root_certificates`` (default: the system roots); ``certificate_chain`` and
        ``private_key`` are the client certificate for mutual TLS. ``api_key`` (sent as ``x-api-key``)
        or ``bearer_token`` (``authorization: Bearer``) goes with every call. ``credentials`` replaces
        the TLS arguments with any channel credentials. ``unavailable_wait`` is how long
        ``wait_operation`` keeps polling through UNAVAILABLE (a server draining or restarting).
        """
        if timeout <= 0 or upload_timeout <= 0:
            raise ValueError("timeouts must be positive")
        if unavailable_wait < 0:
            raise ValueError("unavailable_wait must not be negative")
        self.unavailable_wait = unavailable_wait
        self.target = target
        self.timeout = timeout
        self.upload_timeout = upload_timeout
        if credentials is None and (tls or root_certificates or certificate_chain or private_key):
            credentials = tls_credentials(root_certificates, certificate_chain, private_key)
        metadata = auth_metadata(api_key, bearer_token)
        self.channel: grpc.Channel = create_channel(
            target, timeout=timeout, upload_timeout=upload_timeout, credentials=credentials, options=options
        )
        if metadata:
            self.channel = grpc.intercept_channel(self.channel, MetadataInterceptor(metadata))
        self.datasets = dataset_service_pb2_grpc.DatasetServiceStub(self.channel)
        self.training = training_service_pb2_grpc.TrainingServiceStub(self.channel)
        self.recommendations = recommendation_service_pb2_grpc.RecommendationServiceStub(self.channel)
        self.forecast_query = forecast_query_service_pb2_grpc.ForecastQueryServiceStub(self.channel)
        self.operations = operations_pb2_grpc.OperationsStub(self.channel)

    def close(self) -> None:
        """Closes the channel; calls in flight are cancelled."""
        self.channel.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- generic -------------------------------------------------------------------------

    def call(
        self,
        method: Callable[..., _T],
        request: Any,
        *,
        timeout: float | None = None,
        metadata: Sequence[tuple[str, str]] | None = None,
    ) -> _T:
        """Calls any stub method with the client's deadline, raising ForetellError on failure.

        E.g. ``client.call(client.datasets.GetDataset, GetDatasetRequest(name=...))``.
        """
        try:
            return method(request, timeout=self.timeout if timeout is None else timeout, metadata=metadata)
        except grpc.RpcError as error:
            raise ForetellError.from_rpc_error(error) from error

    def list_all(
        self,
        list_method: Callable[..., Any],
        request: _message.Message,
        field: str,
        *,
        timeout: float | None = None,
    ) -> Iterator[Any]:
        """Yields every element of ``field`` across all pages, following ``next_page_token``.

        Pages are fetched lazily; ``request`` is copied, not modified. Each page
        gets its own deadline.
        """
        page: Any = type(request)()
        page.CopyFrom(request)
        while True:
            response = self.call(list_method, page, timeout=timeout)
            yield from getattr(response, field)
            if not response.next_page_token:
                return
            page.page_token = response.next_page_token

    # -- datasets ------------------------------------------------------------------------

    def create_dataset_group(
        self,
        dataset_group_id: str,
        domain: dataset_pb2.Domain.ValueType,
        *,
        display_name: str = "",
        request_id: str | None = None,
        timeout: float | None = None,
    ) -> dataset_pb2.DatasetGroup:
        """Creates ``datasetGroups/{dataset_group_id}``."""
        request = dataset_service_pb2.CreateDatasetGroupRequest(
            dataset_group_id=dataset_group_id,
            dataset_group=dataset_pb2.DatasetGroup(domain=domain, display_name=display_name),
            request_id=_request_id(request_id),
        )
        return self.call(self.datasets.CreateDatasetGroup, request, timeout=timeout)

    def create_schema(
        self,
        schema_id: str,
        domain: dataset_pb2.Domain.ValueType,
        fields: Iterable[dataset_pb2.SchemaField],
        *,
        request_id: str | None = None,
        timeout: float | None = None,
    ) -> dataset_pb2.Schema:
        """Creates ``schemas/{schema_id}``; bad fields come back as ForetellError.field_violations."""
        request = dataset_service_pb2.CreateSchemaRequest(
            schema_id=schema_id,
            schema=dataset_pb2.Schema(domain=domain, fields=list(fields)),
            request_id=_request_id(request_id),
        )
        return self.call(self.datasets.CreateSchema, request, timeout=timeout)

    def create_dataset(
        self,
        parent: str,
        dataset_id: str,
        dataset_type: dataset_pb2.DatasetType.ValueType,
        schema: str,
        *,
        data_frequency: str = "",
        request_id: str | None = None,
        timeout: float | None = None,
    ) -> dataset_pb2.Dataset:
        """Creates ``{parent}/datasets/{dataset_id}``; ``data_frequency`` only for time series."""
        request = dataset_service_pb2.CreateDatasetRequest(
            parent=parent,
            dataset_id=dataset_id,
            dataset=dataset_pb2.Dataset(dataset_type=dataset_type, schema=schema, data_frequency=data_frequency),
            request_id=_request_id(request_id),
        )
        return self.call(self.datasets.CreateDataset, request, timeout=timeout)

    def import_csv(
        self,
        dataset: str,
        path_or_fileobj: str | os.PathLike[str] | IO[bytes],
        *,
        import_mode: dataset_pb2.ImportMode.ValueType = dataset_pb2.IMPORT_MODE_FULL,
        import_job_id: str = "",
        chunk_size: int = 1 << 20,
        progress: Callable[[int, int], None] | None = None,
        request_id: str | None = None,
        timeout: float | None = None,
        allow_empty: bool = False,
    ) -> operations_pb2.Operation:
        """Streams a CSV file (path or binary file object) to ImportData; returns the Operation.

        Streaming keeps memory flat and needs no shared filesystem with the server
        (``import_uri`` is for files the server can read itself). ``progress(sent,
        total)`` is called with byte counts after each chunk is handed to gRPC, from
        gRPC's sending thread; ``total`` is 0 when the size cannot be known. The
        deadline defaults to the client's ``upload_timeout``. A FULL import of a file without rows fails (it would
        empty the dataset) unless ``allow_empty``.
        """
        if chunk_size <= 0:
            raise ValueError("chunk_size must be positive")
        config = dataset_service_pb2.ImportDataConfig(
            dataset=dataset,
            import_mode=import_mode,
            import_job_id=import_job_id,
            request_id=_request_id(request_id),
            allow_empty=allow_empty,
        )
        deadline = self.upload_timeout if timeout is None else timeout

        def upload(fileobj: IO[bytes]) -> operations_pb2.Operation:
            total = _remaining_size(fileobj)

            def requests() -> Iterator[dataset_service_pb2.ImportDataRequest]:
                yield dataset_service_pb2.ImportDataRequest(config=config)
                sent = 0
                while piece := fileobj.read(chunk_size):
                    yield dataset_service_pb2.ImportDataRequest(chunk=piece)
                    sent += len(piece)
                    if progress is not None:
                        progress(sent, total)

            return self.call(self.datasets.ImportData, requests(), timeout=deadline)

        if isinstance(path_or_fileobj, str | os.PathLike):
            with open(path_or_fileobj, "rb") as fileobj:
                return upload(fileobj)
        return upload(path_or_fileobj)

    def import_uri(
        self,
        dataset: str,
        uri: str,
        *,
        import_mode: dataset_pb2.ImportMode.ValueType = dataset_pb2.IMPORT_MODE_FULL,
        import_job_id: str = "",
        request_id: str | None = None,
        timeout: float | None = None,
        allow_empty: bool = False,
    ) -> operations_pb2.Operation:
        """Imports a CSV file the server can read (``file:///...`` or a path); returns the Operation."""
        request = dataset_service_pb2.CreateImportJobRequest(
            parent=dataset,
            import_job_id=import_job_id,
            import_job=dataset_pb2.ImportJob(source_uri=uri, import_mode=import_mode, allow_empty=allow_empty),
            request_id=_request_id(request_id),
        )
        return self.call(self.datasets.CreateImportJob, request, timeout=timeout)

    def put_events(
        self,
        dataset_group: str,
        session_id: str,
        events: Iterable[dataset_pb2.Event],
        *,
        user_id: str = "",
        timeout: float | None = None,
    ) -> dataset_service_pb2.PutEventsResponse:
        """Records real-time interactions (1 to 100 per call).

        PutEvents has no request_id: set ``Event.event_id`` yourself if you may
        retry, since the server drops ids it has already stored.
        """
        request = dataset_service_pb2.PutEventsRequest(
            dataset_group=dataset_group, session_id=session_id, user_id=user_id, events=list(events)
        )
        return self.call(self.datasets.PutEvents, request, timeout=timeout)

    # -- operations ----------------------------------------------------------------------

    def get_operation(self, name: str, *, timeout: float | None = None) -> operations_pb2.Operation:
        """Fetches the current state of a long-running operation."""
        return self.call(self.operations.GetOperation, operations_pb2.GetOperationRequest(name=name), timeout=timeout)

    def cancel_operation(self, name: str, *, timeout: float | None = None) -> None:
        """Asks the server to stop an operation; it still ends through ``wait_operation``."""
        self.call(self.operations.CancelOperation, operations_pb2.CancelOperationRequest(name=name), timeout=timeout)

    def wait_operation(
        self,
        operation_or_name: operations_pb2.Operation | str,
        *,
        timeout: float | None = None,
        poll: float = 0.2,
        on_progress: Callable[[common_pb2.OperationMetadata], None] | None = None,
        unavailable_wait: float | None = None,
        on_unavailable: Callable[[ForetellError], None] | None = None,
    ) -> operations_pb2.Operation:
        """Polls GetOperation until the operation is done and returns it.

        Polling (rather than WaitOperation) keeps each call short, so the normal
        deadline and read retries apply to every poll. ``timeout`` bounds the whole
        wait (None: no bound) and raises DEADLINE_EXCEEDED. ``on_progress`` receives
        the OperationMetadata after every poll. A failed operation is returned, not
        raised: call ``raise_for_operation`` or ``operation_response``.

        A server that drains or restarts answers UNAVAILABLE while the operation goes on
        (it is durable); polls keep trying with backoff for ``unavailable_wait`` seconds
        (default: the client's) from the first UNAVAILABLE in a row, calling
        ``on_unavailable`` once per outage, and raise UNAVAILABLE only after that.
        """
        wait = self.unavailable_wait if unavailable_wait is None else unavailable_wait

        def poll_once(name: str) -> operations_pb2.Operation:
            return self._get_through_outage(name, wait, on_unavailable)

        operation = poll_once(operation_or_name) if isinstance(operation_or_name, str) else operation_or_name
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            if on_progress is not None and operation.metadata.Is(common_pb2.OperationMetadata.DESCRIPTOR):
                metadata = common_pb2.OperationMetadata()
                operation.metadata.Unpack(metadata)
                on_progress(metadata)
            if operation.done:
                return operation
            delay = poll
            if deadline is not None:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise ForetellError(
                        grpc.StatusCode.DEADLINE_EXCEEDED,
                        f"operation {operation.name!r} not done after {timeout}s",
                    )
                delay = min(poll, remaining)
            time.sleep(delay)
            operation = poll_once(operation.name)

    def _get_through_outage(
        self, name: str, wait: float, on_unavailable: Callable[[ForetellError], None] | None
    ) -> operations_pb2.Operation:
        """GetOperation, retried on UNAVAILABLE with backoff for up to ``wait`` seconds."""
        started: float | None = None
        backoff = 0.25
        while True:
            try:
                return self.get_operation(name)
            except ForetellError as error:
                if error.code != grpc.StatusCode.UNAVAILABLE:
                    raise
                now = time.monotonic()
                if started is None:
                    started = now
                    if on_unavailable is not None:
                        on_unavailable(error)
                if now + backoff - started > wait:
                    raise
                time.sleep(backoff)
                backoff = min(backoff * 2, 5.0)

    # -- training ------------------------------------------------------------------------

    def create_solution(
        self,
        solution_id: str,
        dataset_group: str,
        recipe: str,
        hyper_parameters: Mapping[str, object] | None = None,
        perform_hpo: bool = False,
        hpo_config: training_pb2.HpoConfig | None = None,
        event_type: str = "",
        *,
        request_id: str | None = None,
        timeout: float | None = None,
    ) -> training_pb2.Solution:
        """Creates ``solutions/{solution_id}``: a recipe and its settings for ``dataset_group``.

        Hyper-parameter values may be any type; they travel as strings (``{"epochs": 20}``).
        An unknown recipe or parameter is INVALID_ARGUMENT naming the field.
        """
        request = training_service_pb2.CreateSolutionRequest(
            solution_id=solution_id,
            solution=training_pb2.Solution(
                dataset_group=dataset_group,
                recipe=recipe,
                hyper_parameters={k: str(v) for k, v in (hyper_parameters or {}).items()},
                perform_hpo=perform_hpo,
                hpo_config=hpo_config,
                event_type=event_type,
            ),
            request_id=_request_id(request_id),
        )
        return self.call(self.training.CreateSolution, request, timeout=timeout)

    def get_solution(self, name: str, *, timeout: float | None = None) -> training_pb2.Solution:
        return self.call(self.training.GetSolution, training_service_pb2.GetSolutionRequest(name=name), timeout=timeout)

    def get_solution_version(
        self, name: str | training_pb2.SolutionVersion, *, timeout: float | None = None
    ) -> training_pb2.SolutionVersion:
        request = training_service_pb2.GetSolutionVersionRequest(name=_name(name))
        return self.call(self.training.GetSolutionVersion, request, timeout=timeout)

    def create_solution_version(
        self,
        solution: str | training_pb2.Solution,
        *,
        training_mode: str | training_pb2.TrainingMode.ValueType = "FULL",
        solution_version_id: str = "",
        request_id: str | None = None,
        timeout: float | None = None,
    ) -> operations_pb2.Operation:
        """Starts training a version; returns the Operation (``train`` also waits for it).

        ``training_mode`` is "FULL" or "UPDATE" (or the TrainingMode value); the
        metadata's ``target`` names the new version.
        """
        request = training_service_pb2.CreateSolutionVersionRequest(
            parent=_name(solution),
            solution_version_id=solution_version_id,
            training_mode=_training_mode(training_mode),
            request_id=_request_id(request_id),
        )
        return self.call(self.training.CreateSolutionVersion, request, timeout=timeout)

    def train(
        self,
        solution: str | training_pb2.Solution,
        *,
        training_mode: str | training_pb2.TrainingMode.ValueType = "FULL",
        wait: bool = True,
        on_progress: Callable[[common_pb2.OperationMetadata], None] | None = None,
        timeout: float | None = None,
        solution_version_id: str = "",
        poll: float = 0.5,
        request_id: str | None = None,
    ) -> training_pb2.SolutionVersion:
        """Trains a new version of ``solution`` and returns it once it SUCCEEDED.

        ``on_progress`` gets the OperationMetadata after every poll (progress_percent,
        status_message such as "epoch 3/10", counters such as loss). A failed training
        raises ForetellError with the worker's error. ``timeout`` bounds the whole wait
        and raises DEADLINE_EXCEEDED; training goes on (stop it with
        ``cancel_operation(version.operation)``). With ``wait=False`` the version is
        returned at once (PENDING); its ``operation`` is the one to wait on.
        """
        operation = self.create_solution_version(
            solution, training_mode=training_mode, solution_version_id=solution_version_id, request_id=request_id
        )
        if not wait:
            return self.get_solution_version(_operation_target(operation))
        done = self.wait_operation(operation, timeout=timeout, poll=poll, on_progress=on_progress)
        return cast(
            training_pb2.SolutionVersion, operation_response(done, "foretell.v1.TrainingService.CreateSolutionVersion")
        )

    def get_solution_metrics(
        self, version: str | training_pb2.SolutionVersion, *, timeout: float | None = None
    ) -> training_pb2.SolutionMetrics:
        """Offline metrics of a SUCCEEDED version (precision/recall/NDCG at 5, 10, 25; MRR; coverage)."""
        request = training_service_pb2.GetSolutionMetricsRequest(name=_name(version))
        return self.call(self.training.GetSolutionMetrics, request, timeout=timeout).metrics

    # -- campaigns and filters -----------------------------------------------------------

    def create_campaign(
        self,
        campaign_id: str,
        solution_version: str | training_pb2.SolutionVersion,
        *,
        exploration_weight: float | None = None,
        item_age_cutoff_days: float | None = None,
        metadata: bool = False,
        wait: bool = True,
        timeout: float | None = None,
        request_id: str | None = None,
    ) -> recommendation_pb2.Campaign:
        """Deploys a SUCCEEDED solution version as ``campaigns/{campaign_id}``.

        ``metadata`` lets requests ask for item columns (``metadata_columns``). With
        ``wait`` (the default) returns the ACTIVE campaign, raising ForetellError if
        loading failed; ``timeout`` bounds that wait. Without, returns it PENDING.
        """
        exploration, _ = _exploration(exploration_weight, item_age_cutoff_days)
        request = recommendation_service_pb2.CreateCampaignRequest(
            campaign_id=campaign_id,
            campaign=recommendation_pb2.Campaign(
                solution_version=_name(solution_version),
                exploration_config=exploration,
                enable_metadata_with_recommendations=metadata,
            ),
            request_id=_request_id(request_id),
        )
        operation = self.call(self.recommendations.CreateCampaign, request)
        return self._campaign_result(operation, "CreateCampaign", f"campaigns/{campaign_id}", wait, timeout)

    def update_campaign(
        self,
        campaign: str | recommendation_pb2.Campaign,
        solution_version: str | training_pb2.SolutionVersion = "",
        *,
        exploration_weight: float | None = None,
        item_age_cutoff_days: float | None = None,
        metadata: bool | None = None,
        wait: bool = True,
        timeout: float | None = None,
        request_id: str | None = None,
    ) -> recommendation_pb2.Campaign:
        """Changes only what is given: a new solution version is loaded, then hot-swapped in.

        Requests in flight keep being answered by the old version until the swap.
        """
        name = _name(campaign)
        exploration, paths = _exploration(exploration_weight, item_age_cutoff_days)
        changed = recommendation_pb2.Campaign(name=name, exploration_config=exploration)
        if solution_version:
            changed.solution_version = _name(solution_version)
            paths.append("solution_version")
        if metadata is not None:
            changed.enable_metadata_with_recommendations = metadata
            paths.append("enable_metadata_with_recommendations")
        if not paths:
            raise ValueError("nothing to update: give a solution_version or a setting")
        request = recommendation_service_pb2.UpdateCampaignRequest(
            campaign=changed, update_mask=field_mask_pb2.FieldMask(paths=paths), request_id=_request_id(request_id)
        )
        operation = self.call(self.recommendations.UpdateCampaign, request)
        return self._campaign_result(operation, "UpdateCampaign", name, wait, timeout)

    def _campaign_result(
        self, operation: operations_pb2.Operation, method: str, name: str, wait: bool, timeout: float | None
    ) -> recommendation_pb2.Campaign:
        if not wait:
            return self.get_campaign(name)
        done = self.wait_operation(operation, timeout=timeout, poll=0.1)
        # The type comes from the RPC's operation_info; the cast only tells mypy what the contract says.
        return cast(
            recommendation_pb2.Campaign, operation_response(done, f"foretell.v1.RecommendationService.{method}")
        )

    def get_campaign(self, name: str, *, timeout: float | None = None) -> recommendation_pb2.Campaign:
        request = recommendation_service_pb2.GetCampaignRequest(name=name)
        return self.call(self.recommendations.GetCampaign, request, timeout=timeout)

    def create_filter(
        self,
        filter_id: str,
        dataset_group: str,
        filter_expression: str,
        *,
        request_id: str | None = None,
        timeout: float | None = None,
    ) -> recommendation_pb2.Filter:
        """Creates ``filters/{filter_id}`` from an Amazon Personalize filter expression.

        E.g. ``EXCLUDE ItemID WHERE Items.GENRES IN ($GENRES)``; pass the parameter
        values with each request (``filter_values={"GENRES": '"Horror"'}``).
        """
        request = recommendation_service_pb2.CreateFilterRequest(
            filter_id=filter_id,
            filter=recommendation_pb2.Filter(dataset_group=dataset_group, filter_expression=filter_expression),
            request_id=_request_id(request_id),
        )
        return self.call(self.recommendations.CreateFilter, request, timeout=timeout)

    # -- serving -------------------------------------------------------------------------

    def get_recommendations(
        self,
        campaign: str,
        *,
        user_id: str = "",
        item_id: str = "",
        num_results: int = 0,
        filter: str = "",
        filter_values: Mapping[str, str] | None = None,
        context: Mapping[str, str] | None = None,
        session_id: str = "",
        include_interacted: bool = False,
        metadata_columns: Iterable[str] = (),
        timeout: float | None = None,
    ) -> recommendation_service_pb2.GetRecommendationsResponse:
        """Items for a user, or related to ``item_id``; ``num_results`` 0 means the server default.

        Items the user already interacted with are left out unless ``include_interacted``;
        ``session_id`` adds that session's PutEvents events to the user's history.
        """
        request = recommendation_service_pb2.GetRecommendationsRequest(
            campaign=campaign,
            user_id=user_id,
            item_id=item_id,
            num_results=num_results,
            filter=filter,
            filter_values=dict(filter_values or {}),
            context=dict(context or {}),
            session_id=session_id,
            include_interacted=include_interacted,
            metadata_columns=list(metadata_columns),
        )
        return self.call(self.recommendations.GetRecommendations, request, timeout=timeout)

    def get_personalized_ranking(
        self,
        campaign: str,
        user_id: str,
        input_list: Iterable[str],
        *,
        filter: str = "",
        filter_values: Mapping[str, str] | None = None,
        context: Mapping[str, str] | None = None,
        session_id: str = "",
        metadata_columns: Iterable[str] = (),
        timeout: float | None = None,
    ) -> recommendation_service_pb2.GetPersonalizedRankingResponse:
        """Re-orders ``input_list`` for the user; unknown items come last, unscored."""
        request = recommendation_service_pb2.GetPersonalizedRankingRequest(
            campaign=campaign,
            user_id=user_id,
            input_list=list(input_list),
            filter=filter,
            filter_values=dict(filter_values or {}),
            context=dict(context or {}),
            session_id=session_id,
            metadata_columns=list(metadata_columns),
        )
        return self.call(self.recommendations.GetPersonalizedRanking, request, timeout=timeout)

    def get_similar_items(
        self,
        campaign: str,
        item_id: str,
        *,
        num_results: int = 0,
        filter: str = "",
        filter_values: Mapping[str, str] | None = None,
        timeout: float | None = None,
    ) -> recommendation_service_pb2.GetSimilarItemsResponse:
        """Items similar to ``item_id``; NOT_FOUND when the model does not know the item."""
        request = recommendation_service_pb2.GetSimilarItemsRequest(
            campaign=campaign,
            item_id=item_id,
            num_results=num_results,
            filter=filter,
            filter_values=dict(filter_values or {}),
        )
        return self.call(self.recommendations.GetSimilarItems, request, timeout=timeout)

    def query_forecast(
        self,
        forecast: str,
        item_id: str = "",
        *,
        quantiles: Iterable[float] = (),
        dimensions: Mapping[str, str] | None = None,
        start_time: datetime | None = None,
        end_time: datetime | None = None,
        page_size: int = 0,
        page_token: str = "",
        timeout: float | None = None,
    ) -> forecast_query_service_pb2.QueryForecastResponse:
        """One page of predictions; ``quantiles`` empty means all. Naive datetimes are UTC.

        For every page: ``list_all(client.forecast_query.QueryForecast, request, "series")``.
        """
        request = forecast_query_service_pb2.QueryForecastRequest(
            forecast=forecast,
            item_id=item_id,
            dimensions=dict(dimensions or {}),
            start_time=_timestamp(start_time),
            end_time=_timestamp(end_time),
            quantiles=list(quantiles),
            page_size=page_size,
            page_token=page_token,
        )
        return self.call(self.forecast_query.QueryForecast, request, timeout=timeout)
