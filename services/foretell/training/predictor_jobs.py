"""Server side of predictor, forecast and forecast-export jobs: what to prepare, how to record the end."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, ClassVar

import grpc
from google.protobuf.message import Message
from google.rpc import status_pb2
from sqlalchemy.engine import Row

from foretell.core.artifact_store import Artifacts
from foretell.core.artifacts import uri_of
from foretell.core.file_roots import Place
from foretell.core.resources import now
from foretell.forecasting.automl import DEFAULT_CANDIDATES, DEFAULT_WINDOWS
from foretell.training import convert, shards
from foretell.training.snapshot import new_snapshot_dir, take_snapshot
from foretell.training.store import TrainingStore
from foretell.v1 import training_pb2 as pb
from foretell.v1 import training_service_pb2 as api

FILL_METHODS = {
    pb.FILL_METHOD_UNSPECIFIED: "zero",
    pb.FILL_METHOD_ZERO: "zero",
    pb.FILL_METHOD_VALUE: "value",
    pb.FILL_METHOD_MEAN: "mean",
    pb.FILL_METHOD_MEDIAN: "median",
    pb.FILL_METHOD_PREVIOUS: "previous",
    pb.FILL_METHOD_NAN: "nan",
}
METRIC_OF = {
    pb.ACCURACY_METRIC_UNSPECIFIED: "average_wql",
    pb.ACCURACY_METRIC_AVERAGE_WQL: "average_wql",
    pb.ACCURACY_METRIC_WAPE: "wape",
    pb.ACCURACY_METRIC_RMSE: "rmse",
    pb.ACCURACY_METRIC_MAPE: "mape",
    pb.ACCURACY_METRIC_MASE: "mase",
    pb.ACCURACY_METRIC_SMAPE: "smape",
}
DEFAULT_QUANTILES = (0.1, 0.5, 0.9)
EXPORT_FILE = "export.csv"  # a forecast export as the worker wrote it, in the job directory


def predictor_spec(p: pb.Predictor) -> dict[str, Any]:
    """What the worker needs of a (validated) Predictor, with every default made explicit."""
    if p.perform_automl:
        candidates = list(p.automl_config.candidate_algorithms) or list(DEFAULT_CANDIDATES)
    else:
        candidates = [p.algorithm]
    return {
        "candidates": candidates,
        "horizon": p.forecast_horizon,
        "frequency": p.forecast_frequency,
        "quantiles": list(p.forecast_quantiles) or list(DEFAULT_QUANTILES),
        "dimensions": list(p.forecast_dimensions),
        "backtest_windows": p.backtest_windows or (DEFAULT_WINDOWS if p.perform_automl else 1),
        "backtest_offset": p.backtest_window_offset or p.forecast_horizon,
        "metric": METRIC_OF[p.automl_config.optimization_metric],
        "ensemble": p.automl_config.ensemble if p.perform_automl else False,
        "fill_policies": [
            {"field": f.field, "method": FILL_METHODS[f.method], "value": f.value} for f in p.fill_policies
        ],
        "hyper_parameters": dict(p.hyper_parameters),
    }


def _aware(moment: Any) -> Any:
    return moment if moment.tzinfo else moment.replace(tzinfo=now().tzinfo)


def _write_spec(job_dir: Path, spec: dict[str, Any]) -> None:
    (job_dir / "spec.json").write_text(json.dumps(spec, indent=2))


class _ModelJobs:
    """What predictor and forecast jobs share: a snapshot to take and an artifact per resource, written by the
    worker into `artifact_dir` and published at `artifact_uri` once the job succeeded."""

    collection: ClassVar[str]

    def __init__(self, store: TrainingStore, dataset_channel: grpc.Channel, artifacts: Artifacts, workers: int) -> None:
        self._store = store
        self._channel = dataset_channel
        self._artifacts = artifacts
        self._workers = workers  # processes per job for per-series fits; 0: every CPU

    def artifact_dir(self, name: str, job: Row[Any]) -> Path:
        # One directory per job: a deleted and re-created namesake never shares (or overwrites) a path with the
        # old one, so a cache that compares URIs (forecast queries) sees the new one.
        return self._artifacts.local_dir(self.collection, name.rsplit("/", 1)[-1], _incarnation(job))

    def artifact_uri(self, name: str, job: Row[Any]) -> str:
        return self._artifacts.uri(self.collection, name.rsplit("/", 1)[-1], _incarnation(job))

    def publish(self, name: str, job: Row[Any]) -> str:
        uri = self.artifact_uri(name, job)
        self._artifacts.publish(self.artifact_dir(name, job), uri)
        return uri

    def discard(self, name: str, job: Row[Any]) -> None:
        """No partial artifact may ever be served: whatever the worker (or a cut-short publish) wrote goes."""
        self._artifacts.discard(self.artifact_dir(name, job), self.artifact_uri(name, job))


def _incarnation(job: Row[Any]) -> str:
    return str(job.name).removeprefix("operations/")


class PredictorJobs(_ModelJobs):
    """The JobKind "predictor"."""

    collection = "predictors"

    def prepare(self, job: Row[Any], job_dir: Path, cancelled: Any) -> None:
        row = self._store.get_predictor(job.target)
        snapshot = new_snapshot_dir(self._artifacts, row.dataset_group)
        take_snapshot(
            self._channel, row.dataset_group, snapshot, cancelled, required="target_time_series", s3=self._artifacts.s3
        )
        self._store.update_predictor(row.name, state="RUNNING", snapshot_uri=uri_of(snapshot))
        spec = predictor_spec(pb.Predictor.FromString(row.spec))
        spec.update(
            kind="predictor",
            snapshot_dir=str(snapshot),
            artifact_dir=str(self.artifact_dir(row.name, job)),
            workers=self._workers,
        )
        # Large per-series predictors run as shards: foretell.training.shards.
        spec["shards"] = shards.plan_snapshot(spec, snapshot, self._artifacts.settings)
        _write_spec(job_dir, spec)

    def succeeded(self, job: Row[Any], job_dir: Path, result: dict[str, Any]) -> Message:
        row = self._store.get_predictor(job.target)
        row = self._store.update_predictor(
            row.name,
            state="SUCCEEDED",
            artifact_uri=self.publish(row.name, job),
            accuracy=result.get("accuracy"),
            training_seconds=(now() - _aware(row.create_time)).total_seconds(),
        )
        return convert.predictor(row)

    def ended(self, job: Row[Any], state: str, error: status_pb2.Status | None) -> None:
        row = self._store.get_predictor(job.target)
        self.discard(row.name, job)
        self._store.update_predictor(
            row.name,
            state=state,
            error=error.SerializeToString() if error is not None else None,
            training_seconds=(now() - _aware(row.create_time)).total_seconds(),
        )


class ForecastJobs(_ModelJobs):
    """The JobKind "forecast": a fresh snapshot, the predictor's choices refitted, a ForecastTable out."""

    collection = "forecasts"

    def prepare(self, job: Row[Any], job_dir: Path, cancelled: Any) -> None:
        row = self._store.get_forecast(job.target)
        predictor = self._store.get_predictor(row.predictor)
        # The latest data: new imports since training are forecast from without retraining.
        snapshot = new_snapshot_dir(self._artifacts, predictor.dataset_group)
        take_snapshot(
            self._channel,
            predictor.dataset_group,
            snapshot,
            cancelled,
            required="target_time_series",
            s3=self._artifacts.s3,
        )
        self._store.update_forecast(row.name, state="RUNNING")
        spec = {
            "kind": "forecast",
            "snapshot_dir": str(snapshot),
            "predictor_dir": str(self._artifacts.fetch(predictor.artifact_uri)),
            "quantiles": list(row.quantiles),
            "artifact_dir": str(self.artifact_dir(row.name, job)),
            "workers": self._workers,
        }
        _write_spec(job_dir, spec)

    def succeeded(self, job: Row[Any], job_dir: Path, result: dict[str, Any]) -> Message:
        row = self._store.update_forecast(
            job.target,
            state="SUCCEEDED",
            artifact_uri=self.publish(job.target, job),
            series_count=int(result.get("series_count", 0)),
        )
        return convert.forecast(row)

    def ended(self, job: Row[Any], state: str, error: status_pb2.Status | None) -> None:
        self.discard(job.target, job)
        self._store.update_forecast(
            job.target, state=state, error=error.SerializeToString() if error is not None else None
        )


class ForecastExportJobs:
    """The JobKind "forecast-export": a forecast's table written as CSV (see ForecastTable.to_csv). The worker
    writes it into the job directory; the service then copies it to a new file in the caller's area (the worker
    never opens a caller's path) or uploads it (s3://, or the server's own exports)."""

    def __init__(self, store: TrainingStore, artifacts: Artifacts) -> None:
        self._store = store
        self._artifacts = artifacts

    def prepare(self, job: Row[Any], job_dir: Path, cancelled: Any) -> None:
        request = json.loads((job_dir / "request.json").read_text())
        row = self._store.get_forecast(job.target)
        destination = request["destination_uri"]
        _write_spec(
            job_dir,
            {
                "kind": "forecast-export",
                "forecast_dir": str(self._artifacts.fetch(row.artifact_uri)),
                "destination": str(job_dir / EXPORT_FILE),
                "destination_uri": destination,
            },
        )

    def succeeded(self, job: Row[Any], job_dir: Path, result: dict[str, Any]) -> Message:
        request = json.loads((job_dir / "request.json").read_text())
        if "place" in request:  # a file in the caller's area: a new file, reached without following links
            Place.from_json(request["place"]).deliver(job_dir / EXPORT_FILE)
        else:
            self._artifacts.upload_file(job_dir / EXPORT_FILE, result["destination_uri"], "destination_uri")
        return api.ExportForecastResponse(
            destination_uri=result["destination_uri"], rows_exported=int(result["rows_exported"])
        )

    def ended(self, job: Row[Any], state: str, error: status_pb2.Status | None) -> None:
        """The table writes its CSV atomically, so a failed export leaves nothing behind to remove."""
