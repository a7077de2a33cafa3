"""The Client: one channel, the raw stubs, and a few helpers for the common flows."""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from datetime import datetime
from types import TracebackType
from typing import IO, Any, Self, TypeVar

import grpc
from google.longrunning import operations_pb2, operations_pb2_grpc
from google.protobuf import message as _message
from google.protobuf import timestamp_pb2

from foretell.client._channel import ChannelOptions, create_channel
from foretell.client.errors import ForetellError, raise_for_operation
from foretell.v1 import (
    common_pb2,
    dataset_pb2,
    dataset_service_pb2,
    dataset_service_pb2_grpc,
    forecast_query_service_pb2,
    forecast_query_service_pb2_grpc,
    recommendation_service_pb2,
    recommendation_service_pb2_grpc,
    training_service_pb2_grpc,
)

__all__ = ["Client", "operation_response"]

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


def _remaining_size(fileobj: IO[bytes]) -> int:
    """Bytes left in a seekable file, or 0 when the size cannot be known (pipes, sockets)."""
    try:
        start = fileobj.tell()
        end = fileobj.seek(0, os.SEEK_END)
        fileobj.seek(start)
    except (OSError, ValueError, AttributeError):
        return 0
    return max(end - start, 0)


def operation_response(operation: operations_pb2.Operation, message_type: type[_M]) -> _M:
    """The typed result of a finished operation, e.g. ``operation_response(op, dataset_pb2.ImportJob)``.

    Raises ForetellError if the operation failed, ValueError if it is still running.
    """
    raise_for_operation(operation)
    if not operation.done:
        raise ValueError(f"operation {operation.name!r} is not done")
    result = message_type()
    if not operation.response.Unpack(result):
        raise TypeError(f"operation response is {operation.response.type_url}, not {message_type.__name__}")
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
    ) -> None:
        if timeout <= 0 or upload_timeout <= 0:
            raise ValueError("timeouts must be positive")
        self.target = target
        self.timeout = timeout
        self.upload_timeout = upload_timeout
        self.channel: grpc.Channel = create_channel(
            target, timeout=timeout, upload_timeout=upload_timeout, credentials=credentials, options=options
        )
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
    ) -> operations_pb2.Operation:
        """Streams a CSV file (path or binary file object) to ImportData; returns the Operation.

        Streaming keeps memory flat and needs no shared filesystem with the server
        (``import_uri`` is for files the server can read itself). ``progress(sent,
        total)`` is called with byte counts after each chunk is handed to gRPC, from
        gRPC's sending thread; ``total`` is 0 when the size cannot be known. The
        deadline defaults to the client's ``upload_timeout``.
        """
        if chunk_size <= 0:
            raise ValueError("chunk_size must be positive")
        config = dataset_service_pb2.ImportDataConfig(
            dataset=dataset,
            import_mode=import_mode,
            import_job_id=import_job_id,
            request_id=_request_id(request_id),
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
    ) -> operations_pb2.Operation:
        """Imports a CSV file the server can read (``file:///...`` or a path); returns the Operation."""
        request = dataset_service_pb2.CreateImportJobRequest(
            parent=dataset,
            import_job_id=import_job_id,
            import_job=dataset_pb2.ImportJob(source_uri=uri, import_mode=import_mode),
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
    ) -> operations_pb2.Operation:
        """Polls GetOperation until the operation is done and returns it.

        Polling (rather than WaitOperation) keeps each call short, so the normal
        deadline and read retries apply to every poll. ``timeout`` bounds the whole
        wait (None: no bound) and raises DEADLINE_EXCEEDED. ``on_progress`` receives
        the OperationMetadata after every poll. A failed operation is returned, not
        raised: call ``raise_for_operation`` or ``operation_response``.
        """
        operation = self.get_operation(operation_or_name) if isinstance(operation_or_name, str) else operation_or_name
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
            operation = self.get_operation(operation.name)

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
        timeout: float | None = None,
    ) -> recommendation_service_pb2.GetRecommendationsResponse:
        """Items for a user, or related to ``item_id``; ``num_results`` 0 means the server default."""
        request = recommendation_service_pb2.GetRecommendationsRequest(
            campaign=campaign,
            user_id=user_id,
            item_id=item_id,
            num_results=num_results,
            filter=filter,
            filter_values=dict(filter_values or {}),
            context=dict(context or {}),
            session_id=session_id,
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
        timeout: float | None = None,
    ) -> recommendation_service_pb2.GetPersonalizedRankingResponse:
        """Re-orders ``input_list`` for the user."""
        request = recommendation_service_pb2.GetPersonalizedRankingRequest(
            campaign=campaign,
            user_id=user_id,
            input_list=list(input_list),
            filter=filter,
            filter_values=dict(filter_values or {}),
            context=dict(context or {}),
            session_id=session_id,
        )
        return self.call(self.recommendations.GetPersonalizedRanking, request, timeout=timeout)

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
