"""TrainingService (forecasting half): predictors, their accuracy, forecasts and their export."""

from __future__ import annotations

import json
import math
import re
import uuid
from typing import Any

import grpc
from google.longrunning import operations_pb2

from foretell.core import auth, names, pagination
from foretell.core.artifact_store import Artifacts
from foretell.core.errors import FailedPrecondition, Violations, invalid
from foretell.core.file_roots import FileRoots, Place
from foretell.core.idempotency import IdempotencyStore
from foretell.core.operations import OperationStore
from foretell.forecasting.frequency import Frequency
from foretell.forecasting.predictor import ALGORITHMS, ParamError, parse_hyper_parameters
from foretell.training import convert
from foretell.training.jobs import TrainingJobs
from foretell.training.predictor_jobs import predictor_spec
from foretell.training.predictor_worker import ITEM_ACCURACY_FILE
from foretell.training.store import TrainingStore
from foretell.v1 import dataset_pb2, dataset_service_pb2, dataset_service_pb2_grpc
from foretell.v1 import training_pb2 as pb
from foretell.v1 import training_service_pb2 as api

PREDICTOR = ("predictors",)
FORECAST = ("forecasts",)
MAX_HORIZON = 1000
MAX_QUANTILES = 20
MAX_BACKTEST_WINDOWS = 5
_FIELD = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}\Z")  # not "$": it matches before a final "\n"


def check_quantiles(values: Any, path: str, problems: Violations) -> None:
    if len(values) > MAX_QUANTILES:
        problems.add(path, f"at most {MAX_QUANTILES} quantiles")
    for i, q in enumerate(values):
        if not (0.0 < q < 1.0):
            problems.add(f"{path}[{i}]", "must lie strictly between 0 and 1")
        elif i and q <= values[i - 1]:
            problems.add(f"{path}[{i}]", "quantiles must be increasing and unique")


def check_predictor(p: pb.Predictor) -> None:
    """Everything about a Predictor that can be checked without its data (INVALID_ARGUMENT)."""
    problems = Violations()
    if p.perform_automl:
        candidates = list(p.automl_config.candidate_algorithms)
        for i, name in enumerate(candidates):
            if name not in ALGORITHMS:
                problems.add(f"predictor.automl_config.candidate_algorithms[{i}]", f"one of {', '.join(ALGORITHMS)}")
            elif name in candidates[:i]:
                problems.add(f"predictor.automl_config.candidate_algorithms[{i}]", f"{name} is listed twice")
        if p.automl_config.optimization_metric not in pb.AccuracyMetric.values():
            problems.add("predictor.automl_config.optimization_metric", "is not a known metric")
    elif p.algorithm not in ALGORITHMS:
        problems.add("predictor.algorithm", f"one of {', '.join(ALGORITHMS)} (or set perform_automl)")
    if not 1 <= p.forecast_horizon <= MAX_HORIZON:
        problems.add("predictor.forecast_horizon", f"must be 1 to {MAX_HORIZON} steps")
    try:
        Frequency.parse(p.forecast_frequency)
    except ValueError as exc:
        problems.add("predictor.forecast_frequency", str(exc))
    check_quantiles(list(p.forecast_quantiles), "predictor.forecast_quantiles", problems)
    for i, dim in enumerate(p.forecast_dimensions):
        if not _FIELD.match(dim) or dim in p.forecast_dimensions[:i]:
            problems.add(f"predictor.forecast_dimensions[{i}]", "must be a distinct schema field name")
    if not 0 <= p.backtest_windows <= MAX_BACKTEST_WINDOWS:
        problems.add("predictor.backtest_windows", f"must be 1 to {MAX_BACKTEST_WINDOWS} (0 means 1)")
    if p.backtest_window_offset and not p.forecast_horizon <= p.backtest_window_offset <= 100 * MAX_HORIZON:
        problems.add("predictor.backtest_window_offset", "must be at least forecast_horizon (0 means the horizon)")
    seen: set[str] = set()
    for i, policy in enumerate(p.fill_policies):
        where = f"predictor.fill_policies[{i}]"
        if not _FIELD.match(policy.field):
            problems.add(f"{where}.field", "must be TARGET_VALUE or a related time-series field")
        elif policy.field in seen:
            problems.add(f"{where}.field", f"{policy.field} has two fill policies")
        seen.add(policy.field)
        if policy.method not in pb.FillMethod.values():
            problems.add(f"{where}.method", "is not a known fill method")
        if policy.method == pb.FILL_METHOD_VALUE and not math.isfinite(policy.value):
            problems.add(f"{where}.value", "must be a finite number")
    problems.raise_if_any()
    spec = predictor_spec(p)
    try:
        parse_hyper_parameters(spec["candidates"], dict(p.hyper_parameters))
    except ParamError as exc:
        raise invalid(f"predictor.hyper_parameters[{exc.name[:64]}]", str(exc)) from None


def _inputs_only(p: pb.Predictor) -> pb.Predictor:
    kept = pb.Predictor()
    kept.CopyFrom(p)
    for output in (
        "name", "state", "dataset_snapshot_uri", "artifact_uri", "error",
        "training_duration", "create_time", "update_time", "operation",
    ):  # fmt: skip
        kept.ClearField(output)
    return kept


class ForecastingRpcs:
    """Mixed into TrainingServicer: the predictor and forecast RPCs."""

    _store: TrainingStore
    _jobs: TrainingJobs
    _ops: OperationStore
    _idem: IdempotencyStore
    _datasets: dataset_service_pb2_grpc.DatasetServiceStub
    _artifacts: Artifacts
    _tokens: pagination.PageTokens
    _files: FileRoots

    def _check_group(
        self, group: str, field_name: str, domain: dataset_pb2.Domain.ValueType = dataset_pb2.DOMAIN_RECOMMENDATION
    ) -> None:
        raise NotImplementedError  # TrainingServicer's

    # ---- predictors --------------------------------------------------------------------

    def CreatePredictor(  # noqa: N802
        self, request: api.CreatePredictorRequest, context: grpc.ServicerContext
    ) -> operations_pb2.Operation:
        predictor_id = names.check_id(request.predictor_id, "predictor_id")
        p = request.predictor
        group = auth.allowed(names.check_name(p.dataset_group, "predictor.dataset_group", "datasetGroups"))
        check_predictor(p)
        names.check_request_id(request.request_id)
        self._check_group(group, "predictor.dataset_group", dataset_pb2.DOMAIN_FORECASTING)
        self._check_target_series(group)

        def start() -> operations_pb2.Operation:
            name = f"predictors/{predictor_id}"
            operation = self._ops.create(name, "train", group)
            self._store.create_predictor(
                {
                    "name": name,
                    "dataset_group": group,
                    "spec": _inputs_only(p).SerializeToString(),
                    "state": "PENDING",
                    "operation": operation.name,
                }
            )
            self._jobs.submit(operation.name, "predictor", name)
            return operation

        return self._idem.run("CreatePredictor", request, operations_pb2.Operation, start)

    def _check_target_series(self, group: str) -> None:
        listed = self._datasets.ListDatasets(
            dataset_service_pb2.ListDatasetsRequest(parent=group, page_size=100), timeout=10
        )
        rows = sum(
            d.row_count for d in listed.datasets if d.dataset_type == dataset_pb2.DATASET_TYPE_TARGET_TIME_SERIES
        )
        if rows == 0:
            raise FailedPrecondition(f"dataset group {group!r} has no target time series yet; import some first")

    def GetPredictor(self, request: api.GetPredictorRequest, context: grpc.ServicerContext) -> pb.Predictor:  # noqa: N802
        row = self._store.get_predictor(names.check_name(request.name, "name", *PREDICTOR))
        auth.authorize(row.dataset_group, row.name)
        return convert.predictor(row)

    def ListPredictors(  # noqa: N802
        self, request: api.ListPredictorsRequest, context: grpc.ServicerContext
    ) -> api.ListPredictorsResponse:
        group = request.dataset_group
        if group:
            auth.authorize(names.check_name(group, "dataset_group", "datasetGroups"))
        groups = auth.visible_groups()
        rows, token = self._tokens.paged(
            request, f"predictors:{group}", lambda n, after: self._store.list_predictors(group, n, after, groups)
        )
        return api.ListPredictorsResponse(predictors=[convert.predictor(r) for r in rows], next_page_token=token)

    def DeletePredictor(  # noqa: N802
        self, request: api.DeletePredictorRequest, context: grpc.ServicerContext
    ) -> api.DeletePredictorResponse:
        name = self._authorized_predictor(names.check_name(request.name, "name", *PREDICTOR))

        def delete() -> api.DeletePredictorResponse:
            self._artifacts.delete(self._store.delete_predictor(name).artifact_uri)
            return api.DeletePredictorResponse()

        return self._idem.run("DeletePredictor", request, api.DeletePredictorResponse, delete)

    def _authorized_predictor(self, name: str) -> str:
        """`name` of a predictor, once the caller may use its dataset group."""
        if auth.restricted():
            auth.authorize(self._store.get_predictor(name).dataset_group, name)
        return name

    def _authorized_forecast(self, name: str) -> str:
        """`name` of a forecast, once the caller may use its predictor's dataset group."""
        if auth.restricted():
            auth.authorize(self._store.get_predictor(self._store.get_forecast(name).predictor).dataset_group, name)
        return name

    def _succeeded_predictor(self, name: str) -> Any:
        row = self._store.get_predictor(name)
        auth.authorize(row.dataset_group, name)
        if row.state != "SUCCEEDED":
            raise FailedPrecondition(f"predictor {name!r} is {row.state}; this needs it SUCCEEDED")
        return row

    def GetAccuracyMetrics(  # noqa: N802
        self, request: api.GetAccuracyMetricsRequest, context: grpc.ServicerContext
    ) -> api.GetAccuracyMetricsResponse:
        row = self._succeeded_predictor(names.check_name(request.name, "name", *PREDICTOR))
        accuracy = row.accuracy or {}
        return api.GetAccuracyMetricsResponse(
            algorithms=[convert.algorithm_accuracy(a) for a in accuracy.get("algorithms", [])],
            chosen=convert.algorithm_accuracy(accuracy["chosen"]) if "chosen" in accuracy else None,
        )

    def ListItemAccuracies(  # noqa: N802
        self, request: api.ListItemAccuraciesRequest, context: grpc.ServicerContext
    ) -> api.ListItemAccuraciesResponse:
        parent = names.check_name(request.parent, "parent", *PREDICTOR)
        row = self._succeeded_predictor(parent)
        size = pagination.page_size(request.page_size)
        start = int(self._tokens.decode(request.page_token, parent) or 0)
        # One object, read whole: the item accuracies are one short line per series.
        lines = self._artifacts.read_bytes(row.artifact_uri, ITEM_ACCURACY_FILE).decode("utf-8").splitlines()
        items = [convert.item_accuracy(json.loads(line)) for line in lines[start : start + size]]
        token = self._tokens.encode(str(start + size), parent) if len(lines) > start + size else ""
        return api.ListItemAccuraciesResponse(item_accuracies=items, next_page_token=token)

    # ---- forecasts ---------------------------------------------------------------------

    def CreateForecast(  # noqa: N802
        self, request: api.CreateForecastRequest, context: grpc.ServicerContext
    ) -> operations_pb2.Operation:
        forecast_id = names.check_id(request.forecast_id, "forecast_id")
        f = request.forecast
        predictor = names.check_name(f.predictor, "forecast.predictor", *PREDICTOR)
        problems = Violations()
        check_quantiles(list(f.quantiles), "forecast.quantiles", problems)
        problems.raise_if_any()
        names.check_request_id(request.request_id)
        row = self._succeeded_predictor(predictor)
        quantiles = list(f.quantiles) or predictor_spec(pb.Predictor.FromString(row.spec))["quantiles"]

        def start() -> operations_pb2.Operation:
            name = f"forecasts/{forecast_id}"
            operation = self._ops.create(name, "forecast", row.dataset_group)
            self._store.create_forecast(
                {
                    "name": name,
                    "predictor": predictor,
                    "quantiles": quantiles,
                    "state": "PENDING",
                    "operation": operation.name,
                }
            )
            self._jobs.submit(operation.name, "forecast", name)
            return operation

        return self._idem.run("CreateForecast", request, operations_pb2.Operation, start)

    def GetForecast(self, request: api.GetForecastRequest, context: grpc.ServicerContext) -> pb.Forecast:  # noqa: N802
        name = self._authorized_forecast(names.check_name(request.name, "name", *FORECAST))
        return convert.forecast(self._store.get_forecast(name))

    def ListForecasts(  # noqa: N802
        self, request: api.ListForecastsRequest, context: grpc.ServicerContext
    ) -> api.ListForecastsResponse:
        predictor = request.predictor
        if predictor:
            self._authorized_predictor(names.check_name(predictor, "predictor", *PREDICTOR))
        groups = auth.visible_groups()
        rows, token = self._tokens.paged(
            request, f"forecasts:{predictor}", lambda n, after: self._store.list_forecasts(predictor, n, after, groups)
        )
        return api.ListForecastsResponse(forecasts=[convert.forecast(r) for r in rows], next_page_token=token)

    def DeleteForecast(  # noqa: N802
        self, request: api.DeleteForecastRequest, context: grpc.ServicerContext
    ) -> api.DeleteForecastResponse:
        name = self._authorized_forecast(names.check_name(request.name, "name", *FORECAST))

        def delete() -> api.DeleteForecastResponse:
            self._artifacts.delete(self._store.delete_forecast(name).artifact_uri)
            return api.DeleteForecastResponse()

        return self._idem.run("DeleteForecast", request, api.DeleteForecastResponse, delete)

    def ExportForecast(  # noqa: N802
        self, request: api.ExportForecastRequest, context: grpc.ServicerContext
    ) -> operations_pb2.Operation:
        name = self._authorized_forecast(names.check_name(request.name, "name", *FORECAST))
        names.check_request_id(request.request_id)
        uri = request.destination_uri
        if uri and (not uri.endswith(".csv") or "\x00" in uri):
            raise invalid("destination_uri", "must name a .csv file")
        row = self._store.get_forecast(name)
        if row.state != "SUCCEEDED":
            raise FailedPrecondition(f"forecast {name!r} is {row.state}; export needs it SUCCEEDED")
        group = self._store.get_predictor(row.predictor).dataset_group

        def start() -> operations_pb2.Operation:
            # The destination is checked inside the idempotent call: a retry of a finished export finds its file.
            destination = self._export_destination(request.destination_uri, name)
            operation = self._ops.create(name, "export", group)
            self._jobs.submit(operation.name, "forecast-export", name, destination)
            return operation

        return self._idem.run("ExportForecast", request, operations_pb2.Operation, start)

    def _export_destination(self, uri: str, name: str) -> dict[str, Any]:
        """The forecast-export job's request: a new file in the caller's area, an s3:// key in it, or (no URI)
        the server's own exports directory."""
        if not uri:
            return {
                "destination_uri": self._artifacts.uri(
                    "exports", name.rsplit("/", 1)[-1], f"{uuid.uuid4().hex[:12]}.csv"
                )
            }
        place = self._files.destination(uri, "destination_uri")
        if isinstance(place, Place):
            return {"destination_uri": place.uri, "place": place.to_json()}
        return {"destination_uri": place}
