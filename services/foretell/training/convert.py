"""Training rows -> protos."""

from __future__ import annotations

from typing import Any

from google.protobuf import duration_pb2
from google.rpc import status_pb2
from sqlalchemy.engine import Row

from foretell.core.resources import timestamp_of
from foretell.v1 import training_pb2 as pb

METRIC_KS = (5, 10, 25)


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
    if row.training_seconds is not None:
        out.training_duration.CopyFrom(
            duration_pb2.Duration(seconds=int(row.training_seconds), nanos=int(row.training_seconds % 1 * 1e9))
        )
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
