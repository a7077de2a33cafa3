"""Worker side of a solution version: snapshot in, artifact and metrics out (no gRPC here)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from foretell.recipes.artifact import Artifact, load_artifact, save_artifact
from foretell.recipes.base import Progress
from foretell.recipes.data import load_snapshot
from foretell.recipes.registry import ParamError
from foretell.recipes.train import HpoSpec, train_solution
from foretell.training.worker import WorkerError


def _hpo(spec: dict[str, Any]) -> HpoSpec | None:
    if not spec.get("perform_hpo"):
        return None
    return HpoSpec(**spec.get("hpo") or {})


def train_solution_version(spec: dict[str, Any], progress: Progress) -> dict[str, Any]:
    event_type = spec.get("event_type", "")
    data = load_snapshot(Path(spec["snapshot_dir"]), event_type)
    if len(data.users) == 0:
        what = f" of event type {event_type!r}" if event_type else ""
        raise WorkerError("FAILED_PRECONDITION", f"the dataset snapshot holds no interactions{what}")
    raw_params: dict[str, str] = dict(spec.get("hyper_parameters") or {})
    hpo = _hpo(spec)
    if spec.get("training_mode") == "UPDATE" and spec.get("previous_artifact_dir"):
        # An update refreshes the model on new data with the tuned parameters of the last version.
        previous = load_artifact(Path(spec["previous_artifact_dir"]))
        raw_params = {k: str(v) for k, v in previous.params.items()}
        hpo = None
    try:
        result = train_solution(data, spec["recipe"], raw_params, hpo, progress)
    except ParamError as exc:
        raise WorkerError("INVALID_ARGUMENT", f"hyper_parameters[{exc.name}]: {exc}") from None
    except ValueError as exc:
        raise WorkerError("FAILED_PRECONDITION", str(exc)) from None
    metrics = {k: float(v) for k, v in result.metrics.items()}
    save_artifact(
        Path(spec["artifact_dir"]),
        Artifact(
            model=result.model,
            data=data,
            recipe=spec["recipe"],
            params=result.params,
            snapshot_time=int(spec.get("snapshot_time", 0)),
            metrics=metrics,
        ),
    )
    return {"tuned_hyper_parameters": {k: _text(v) for k, v in result.params.items()}, "metrics": metrics}


def _text(value: Any) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)
