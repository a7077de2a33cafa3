"""Server side of a solution-version job: what to prepare for the worker and how to record its end."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import grpc
from google.protobuf import json_format
from google.protobuf.message import Message
from google.rpc import status_pb2
from sqlalchemy.engine import Row

from foretell.core.artifact_store import Artifacts
from foretell.core.artifacts import uri_of
from foretell.core.resources import now
from foretell.training import convert
from foretell.training.snapshot import new_snapshot_dir, take_snapshot
from foretell.training.store import TrainingStore
from foretell.v1 import training_pb2 as pb


class SolutionVersionJobs:
    """The JobKind "solution-version"."""

    def __init__(self, store: TrainingStore, dataset_channel: grpc.Channel, artifacts: Artifacts) -> None:
        self._store = store
        self._channel = dataset_channel
        self._artifacts = artifacts

    def artifact_dir(self, version_name: str) -> Path:
        """Where the worker writes the model; it is published at `artifact_uri` once the job succeeded."""
        return self._artifacts.local_dir("models", version_name)

    def artifact_uri(self, version_name: str) -> str:
        return self._artifacts.uri("models", version_name)

    def prepare(self, job: Row[Any], job_dir: Path, cancelled: Any) -> None:
        version = self._store.get_version(job.target)
        solution = self._store.get_solution(version.solution)
        snapshot_dir = new_snapshot_dir(self._artifacts, solution.dataset_group)
        snapshot_time = int(time.time())
        take_snapshot(self._channel, solution.dataset_group, snapshot_dir, cancelled, s3=self._artifacts.s3)
        self._store.update_version(version.name, state="RUNNING", snapshot_uri=uri_of(snapshot_dir))
        previous = ""
        if version.training_mode == "UPDATE":
            latest = self._store.latest_succeeded_version(solution.name)
            previous = str(self._artifacts.fetch(latest.artifact_uri)) if latest is not None else ""
        hpo = pb.HpoConfig.FromString(solution.hpo_config) if solution.hpo_config else pb.HpoConfig()
        spec = {
            "kind": "solution-version",
            "snapshot_dir": str(snapshot_dir),
            "snapshot_time": snapshot_time,
            "artifact_dir": str(self.artifact_dir(version.name)),
            "recipe": solution.recipe,
            "hyper_parameters": solution.hyper_parameters or {},
            "perform_hpo": solution.perform_hpo,
            "hpo": json_format.MessageToDict(hpo, preserving_proto_field_name=True),
            "event_type": solution.event_type,
            "training_mode": version.training_mode,
            "previous_artifact_dir": previous,
        }
        (job_dir / "spec.json").write_text(json.dumps(spec, indent=2))

    def succeeded(self, job: Row[Any], job_dir: Path, result: dict[str, Any]) -> Message:
        version = self._store.get_version(job.target)
        uri = self.artifact_uri(version.name)
        self._artifacts.publish(self.artifact_dir(version.name), uri)
        row = self._store.update_version(
            version.name,
            state="SUCCEEDED",
            artifact_uri=uri,
            tuned_hyper_parameters=result.get("tuned_hyper_parameters") or {},
            metrics=result.get("metrics") or {},
            training_seconds=(now() - _aware(version.create_time)).total_seconds(),
        )
        return convert.solution_version(row)

    def ended(self, job: Row[Any], state: str, error: status_pb2.Status | None) -> None:
        version = self._store.get_version(job.target)
        # No partial model may ever be served: whatever the worker wrote goes.
        self._artifacts.discard(self.artifact_dir(version.name), self.artifact_uri(version.name))
        self._store.update_version(
            version.name,
            state=state,
            error=error.SerializeToString() if error is not None else None,
            training_seconds=(now() - _aware(version.create_time)).total_seconds(),
        )


def _aware(moment: Any) -> Any:
    return moment if moment.tzinfo else moment.replace(tzinfo=now().tzinfo)
