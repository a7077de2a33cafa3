"""Artifacts record a format version; a server refuses one a newer server wrote (FAILED_PRECONDITION: upgrade)."""

from __future__ import annotations

import json
from pathlib import Path

import grpc
import numpy as np
import pytest

from foretell.core.artifacts import path_of
from foretell.core.formats import NewerFormat
from foretell.forecasting.table import META, ForecastTable
from foretell.recipes.artifact import FORMAT, load_artifact
from foretell.training import predictor_worker, worker
from foretell.v1 import recommendation_pb2 as pb
from foretell.v1 import recommendation_service_pb2 as api
from foretell.v1 import training_pb2, training_service_pb2

from support import Stubs, interactions_csv, make_recommendation_group, upload

NEWER = "format 99 is newer than this server understands (1); upgrade the server"


def bump(path: Path, version: int | None = 99) -> None:
    meta = json.loads(path.read_text())
    if version is None:
        meta.pop("format", None)
    else:
        meta["format"] = version
    path.write_text(json.dumps(meta))


def test_a_campaign_on_a_model_a_newer_server_wrote_fails_with_failed_precondition(stubs: Stubs) -> None:
    group = make_recommendation_group(stubs)
    assert not stubs.wait(upload(stubs, group.interactions, interactions_csv(300, users=20, items=40))).error.code
    stubs.training.CreateSolution(
        training_service_pb2.CreateSolutionRequest(
            solution_id="pop", solution=training_pb2.Solution(dataset_group=group.name, recipe="popularity-count")
        ),
        timeout=10,
    )
    done = stubs.wait(
        stubs.training.CreateSolutionVersion(
            training_service_pb2.CreateSolutionVersionRequest(parent="solutions/pop"), timeout=10
        ),
        timeout=240,
    )
    version = training_pb2.SolutionVersion()
    done.response.Unpack(version)
    directory = path_of(version.artifact_uri)
    assert json.loads((directory / "meta.json").read_text())["format"] == FORMAT
    # Written before formats were recorded: still format 1, still loads.
    bump(directory / "meta.json", None)
    assert load_artifact(directory).recipe == "popularity-count"

    bump(directory / "meta.json")
    operation = stubs.recommendations.CreateCampaign(
        api.CreateCampaignRequest(campaign_id="c", campaign=pb.Campaign(solution_version=version.name)), timeout=10
    )
    failed = stubs.wait(operation, timeout=120)
    assert failed.error.code == grpc.StatusCode.FAILED_PRECONDITION.value[0]
    assert f"model artifact {NEWER}" in failed.error.message


def test_a_forecast_from_a_predictor_a_newer_server_wrote_fails_with_failed_precondition(tmp_path: Path) -> None:
    (tmp_path / predictor_worker.PREDICTOR_FILE).write_text(json.dumps({"format": 99, "spec": {}, "chosen": []}))
    with pytest.raises(NewerFormat) as refused:
        predictor_worker.generate_forecast_job({"predictor_dir": str(tmp_path)}, lambda *a, **k: None)
    # What the worker records as the job's error, and so the CreateForecast operation's.
    assert worker._error(refused.value) == {"code": "FAILED_PRECONDITION", "message": f"predictor artifact {NEWER}"}


def test_forecast_tables_record_their_format_and_a_missing_one_is_not_guessed(tmp_path: Path) -> None:
    table = ForecastTable(["a"], [{}], np.array([[0]]), np.array([[1.0]]), np.array([0.5]), np.array([[[1.0]]]))
    table.save(tmp_path)
    assert ForecastTable.load(tmp_path).item_ids == ["a"]
    bump(tmp_path / META, None)  # every table ever written has one: without it the file is damaged
    with pytest.raises(ValueError, match="no valid format"):
        ForecastTable.load(tmp_path)
