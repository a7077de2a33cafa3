"""Training rows -> protos."""

from __future__ import annotations

from typing import Any, TypeVar

from google.protobuf import duration_pb2, timestamp_pb2
from google.rpc import status_pb2
from sqlalchemy.engine import Row

from foretell.core.resources import timestamp_of
from foretell.v1 import training_pb2 as pb

METRIC_KS = (5, 10, 25)
M = TypeVar("M", pb.SolutionVersion, pb.Predictor)


def solution(row: Row[Any]) -> pb.Solution:
    out = pb.Solution(
        name=row.name,
        dataset_group=row.dataset_group,
        recipe=row.recipe,
        hyper_parameters=row.hyper_parameters or {},
        perform_hpo=row.perform_hpo,
        event_type=row.event_type,
        create_time=timestamp_of(row.create_time),
        update_time=timestamp_of(row.update_time),
        latest_solution_version=row.latest_solution_version,
    )
    if row.hpo_config:
        out.hpo_config.ParseFromString(row.hpo_config)
    return out


def solution_version(row: Row[Any]) -> pb.SolutionVersion:
    out = pb.SolutionVersion(
        name=row.name,
        training_mode=pb.TrainingMode.Value(f"TRAINING_MODE_{row.training_mode}"),
        state=pb.TrainingState.Value(f"TRAINING_STATE_{row.state}"),
        dataset_snapshot_uri=row.snapshot_uri,
        artifact_uri=row.artifact_uri,
        tuned_hyper_parameters=row.tuned_hyper_parameters or {},
        create_time=timestamp_of(row.create_time),
        update_time=timestamp_of(row.update_time),
        operation=row.operation,
    )
    return _ended(out, row)


def _ended(out: M, row: Row[Any]) -> M:
    """Sets what a training resource reports once it ran: its duration and its error, if any."""
    took = _duration(row.training_seconds)
    if took is not None:
        out.training_duration.CopyFrom(took)
    if row.error:
        out.error.CopyFrom(status_pb2.Status.FromString(row.error))
    return out


def solution_metrics(row: Row[Any]) -> pb.SolutionMetrics:
    metrics: dict[str, float] = row.metrics or {}
    return pb.SolutionMetrics(
        solution_version=row.name,
        at_k=[
            pb.RankingMetricsAtK(
                k=k,
                precision=metrics.get(f"precision_at_{k}", 0.0),
                recall=metrics.get(f"recall_at_{k}", 0.0),
                ndcg=metrics.get(f"ndcg_at_{k}", 0.0),
            )
            for k in METRIC_KS
        ],
        mean_reciprocal_rank=metrics.get("mrr", 0.0),
        catalog_coverage=metrics.get("catalog_coverage", 0.0),
        evaluated_users=int(metrics.get("evaluated_users", 0)),
        metrics=metrics,
    )


def _duration(seconds: float | None) -> duration_pb2.Duration | None:
    if seconds is None:
        return None
    return duration_pb2.Duration(seconds=int(seconds), nanos=int(seconds % 1 * 1e9))


def predictor(row: Row[Any]) -> pb.Predictor:
    out = pb.Predictor.FromString(row.spec)
    out.name = row.name
    out.state = pb.TrainingState.Value(f"TRAINING_STATE_{row.state}")
    out.dataset_snapshot_uri = row.snapshot_uri
    out.artifact_uri = row.artifact_uri
    out.create_time.CopyFrom(timestamp_of(row.create_time))
    out.update_time.CopyFrom(timestamp_of(row.update_time))
    out.operation = row.operation
    return _ended(out, row)


def forecast(row: Row[Any]) -> pb.Forecast:
    out = pb.Forecast(
        name=row.name,
        predictor=row.predictor,
        quantiles=row.quantiles,
        state=pb.TrainingState.Value(f"TRAINING_STATE_{row.state}"),
        artifact_uri=row.artifact_uri,
        series_count=row.series_count,
        create_time=timestamp_of(row.create_time),
        update_time=timestamp_of(row.update_time),
        operation=row.operation,
    )
    if row.error:
        out.error.CopyFrom(status_pb2.Status.FromString(row.error))
    return out


def error_metrics(data: dict[str, Any] | None) -> pb.ErrorMetrics:
    """ErrorMetrics from the JSON the worker stores (None marks a value that could not be computed)."""
    if not data:
        return pb.ErrorMetrics()

    def value(key: str) -> float:
        v = data.get(key)
        return float("nan") if v is None else float(v)

    return pb.ErrorMetrics(
        weighted_quantile_losses=[
            pb.WeightedQuantileLoss(quantile=float(q), loss=float("nan") if loss is None else float(loss))
            for q, loss in data.get("wql", [])
        ],
        average_weighted_quantile_loss=value("average_wql"),
        wape=value("wape"),
        rmse=value("rmse"),
        mape=value("mape"),
        mase=value("mase"),
        smape=value("smape"),
    )


def algorithm_accuracy(data: dict[str, Any]) -> pb.AlgorithmAccuracy:
    return pb.AlgorithmAccuracy(
        algorithm=data["algorithm"],
        windows=[
            pb.WindowMetrics(
                start_time=_seconds(w["start"]), end_time=_seconds(w["end"]), metrics=error_metrics(w.get("metrics"))
            )
            for w in data.get("windows", [])
        ],
        overall=error_metrics(data.get("overall")),
    )


def item_accuracy(data: dict[str, Any]) -> pb.ItemAccuracy:
    return pb.ItemAccuracy(
        item_id=data["item_id"],
        dimensions=data.get("dimensions") or {},
        algorithm=data["algorithm"],
        metrics=error_metrics(data.get("metrics")),
    )


def _seconds(epoch: int) -> timestamp_pb2.Timestamp:
    return timestamp_pb2.Timestamp(seconds=int(epoch))
