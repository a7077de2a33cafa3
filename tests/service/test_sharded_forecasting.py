"""A large predictor split into shards over a real server: FORETELL_FORECAST_SHARD_SERIES small enough that 30
series make 3 shards, run as 3 local worker processes. The operation reports progress over the shards, the
accuracy equals an unsharded predictor trained on the same snapshot, and forecasts and queries work."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from google.longrunning import operations_pb2
from google.protobuf import json_format

from foretell.core.artifacts import path_of
from foretell.core.settings import Settings
from foretell.training import convert, predictor_worker, shards
from foretell.v1 import common_pb2, forecast_query_service_pb2, forecast_query_service_pb2_grpc, training_pb2
from foretell.v1 import training_service_pb2 as api

from support import Stubs, daily_csv, make_forecasting_group

ITEMS = 30


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(port=0, data_dir=tmp_path / "data", forecast_shard_series=10)


def _numbers(message: Any) -> list[float]:
    """Every number of a message in field order, NaN included, for approximate comparison."""
    out: list[float] = []

    def walk(tree: Any) -> None:
        if isinstance(tree, dict):
            for key in sorted(tree):
                walk(tree[key])
        elif isinstance(tree, list):
            for item in tree:
                walk(item)
        elif (isinstance(tree, int | float) and not isinstance(tree, bool)) or tree in ("NaN", "Infinity"):
            out.append(float(tree))

    walk(json_format.MessageToDict(message, preserving_proto_field_name=True))
    return out


@pytest.mark.slow
def test_a_sharded_automl_predictor_trains_forecasts_and_matches_the_unsharded_one(
    stubs: Stubs, settings: Settings
) -> None:
    group = make_forecasting_group(stubs, "many", daily_csv(items=ITEMS, days=70))
    t = stubs.training
    predictor = training_pb2.Predictor(
        dataset_group=group,
        perform_automl=True,
        automl_config=training_pb2.AutoMlConfig(candidate_algorithms=["naive", "seasonal-naive", "ets"]),
        forecast_horizon=7,
        forecast_frequency="D",
        forecast_dimensions=["store"],
        backtest_windows=2,
        forecast_quantiles=[0.1, 0.5, 0.9],
    )
    op = t.CreatePredictor(api.CreatePredictorRequest(predictor_id="many", predictor=predictor), timeout=10)
    seen: list[common_pb2.OperationMetadata] = []
    deadline = time.monotonic() + 240
    while not op.done:
        assert time.monotonic() < deadline, "the sharded predictor never finished"
        time.sleep(0.05)
        op = stubs.operations.GetOperation(operations_pb2.GetOperationRequest(name=op.name), timeout=5)
        meta = common_pb2.OperationMetadata()
        op.metadata.Unpack(meta)
        seen.append(meta)
    assert not op.HasField("error"), op.error
    assert seen[-1].progress_percent == 100

    # It ran as 3 shards, and the operation said so while they ran.
    job_dir = settings.artifacts / "jobs" / op.name.removeprefix("operations/")
    spec = json.loads((job_dir / "spec.json").read_text())
    assert spec["shards"] == 3
    assert all(json.loads((shards.shard_dir(job_dir, i) / "result.json").read_text())["ok"] for i in range(3))
    running = [m for m in seen if m.status_message.startswith("shard ")]
    assert running and all(0 < m.progress_percent < 100 for m in running)
    assert {m.status_message.split(":")[0] for m in running} <= {"shard 0 of 3", "shard 1 of 3", "shard 2 of 3"}
    # Counters persist through the merge's report, so the end says all 3 shards were done (polling may miss
    # the moment between the last shard's line and the merge).
    assert seen[-1].counters["shards_done"] == 3 and seen[-1].counters["shards"] == 3

    # The same predictor unsharded, on the snapshot the sharded one was trained on.
    trained = t.GetPredictor(api.GetPredictorRequest(name="predictors/many"), timeout=5)
    whole_dir = job_dir.parent / "whole"
    whole_spec = {k: v for k, v in spec.items() if k != "shards"} | {"artifact_dir": str(whole_dir)}
    assert whole_spec["snapshot_dir"] == str(path_of(trained.dataset_snapshot_uri))
    whole = predictor_worker.train_predictor_job(whole_spec, lambda *a, **k: None)
    assert whole["series_count"] == ITEMS

    accuracy = t.GetAccuracyMetrics(api.GetAccuracyMetricsRequest(name=trained.name), timeout=5)
    expected = [convert.algorithm_accuracy(a) for a in whole["accuracy"]["algorithms"]]
    assert [a.algorithm for a in accuracy.algorithms] == [a.algorithm for a in expected]
    for got, want in zip(
        [*accuracy.algorithms, accuracy.chosen],
        [*expected, convert.algorithm_accuracy(whole["accuracy"]["chosen"])],
        strict=True,
    ):
        assert _numbers(got) == pytest.approx(_numbers(want), rel=1e-9, nan_ok=True)
    listed = t.ListItemAccuracies(api.ListItemAccuraciesRequest(parent=trained.name, page_size=100), timeout=5)
    lines = (whole_dir / predictor_worker.ITEM_ACCURACY_FILE).read_text().splitlines()
    assert list(listed.item_accuracies) == [convert.item_accuracy(json.loads(line)) for line in lines]

    # Forecast and query from the sharded predictor.
    op = t.CreateForecast(
        api.CreateForecastRequest(forecast_id="next", forecast=training_pb2.Forecast(predictor=trained.name)),
        timeout=10,
    )
    done = stubs.wait(op, timeout=180)
    assert not done.HasField("error"), done.error
    forecast = t.GetForecast(api.GetForecastRequest(name="forecasts/next"), timeout=5)
    assert forecast.series_count == ITEMS
    query = forecast_query_service_pb2_grpc.ForecastQueryServiceStub(stubs.channel)
    answer = query.QueryForecast(
        forecast_query_service_pb2.QueryForecastRequest(forecast=forecast.name, item_id="item17"), timeout=5
    )
    (series,) = answer.series
    assert len(series.mean) == 7 and np.all(np.isfinite([p.value for p in series.mean]))
