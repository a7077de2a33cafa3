"""Sharded predictor training (foretell.training.shards + predictor_worker) without a server: three shards
trained one after the other in this process, then merged, against one unsharded run on the same snapshot."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from foretell.core.settings import Settings
from foretell.forecasting.table import ForecastTable
from foretell.training import predictor_worker, shards
from foretell.training.worker import WorkerError

DAY = 86_400
START = 1_700_006_400
CANDIDATES = ["naive", "seasonal-naive", "ets", "theta"]


def write_snapshot(directory: Path, items: int = 23, days: int = 70, seed: int = 0) -> Path:
    """Daily series with a weekly season, trends and noise of their own; a few short ones start late."""
    rng = np.random.default_rng(seed)
    directory.mkdir(parents=True, exist_ok=True)
    lines = ["ITEM_ID,STORE,TIMESTAMP,TARGET_VALUE"]
    for i in range(items):
        level, trend, season = rng.uniform(5, 50), rng.normal(0, 0.3), rng.uniform(0, 0.6)
        first = 40 if i % 7 == 3 else 0
        for d in range(first, days):
            value = max(0.0, level + trend * d) * (1 + season * math.sin(2 * math.pi * d / 7)) + rng.normal(0, 1)
            lines.append(f"item{i:03d},s{i % 2},{START + d * DAY},{value:.4f}")
    (directory / "target_time_series.csv").write_text("\n".join(lines) + "\n")
    return directory


def predictor_spec(snapshot: Path, artifact: Path, **changes: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "kind": "predictor",
        "candidates": CANDIDATES,
        "horizon": 7,
        "frequency": "D",
        "quantiles": [0.1, 0.5, 0.9],
        "dimensions": ["STORE"],
        "backtest_windows": 2,
        "backtest_offset": 7,
        "metric": "average_wql",
        "ensemble": False,
        "fill_policies": [],
        "hyper_parameters": {},
        "snapshot_dir": str(snapshot),
        "artifact_dir": str(artifact),
        "workers": 1,
    }
    spec.update(changes)
    return spec


def _progress(fraction: float, message: str = "", **counters: float) -> None:
    pass


def train_sharded(spec: dict[str, Any], job_dir: Path, monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """Each shard as the worker runs it (its index in JOB_COMPLETION_INDEX); returns their outputs."""
    outputs = []
    for i in range(shards.count(spec)):
        monkeypatch.setenv(shards.INDEX_ENV, str(i))
        out = shards.output_dir(job_dir, spec)
        assert out == job_dir / "shards" / str(i)
        outputs.append(predictor_worker.train_predictor_job({**spec, "output_dir": str(out)}, _progress))
    return outputs


def test_plan_splits_only_large_per_series_predictors() -> None:
    assert shards.plan(CANDIDATES, 1000, 0, 16) == 1  # 0: never
    assert shards.plan(CANDIDATES, 1000, 1000, 16) == 1
    assert shards.plan(CANDIDATES, 1001, 1000, 16) == 2
    assert shards.plan(CANDIDATES, 10**6, 1000, 16) == 16
    assert shards.plan([*CANDIDATES, "deepar"], 10**6, 1000, 16) == 1  # DeepAR is one global model
    assert shards.plan(["npts", "arima"], 10, 3, 16) == 4


def test_the_plan_for_a_snapshot_counts_its_series_only_when_it_could_split(tmp_path: Path) -> None:
    snapshot = write_snapshot(tmp_path / "snapshot", items=23)
    spec = predictor_spec(snapshot, tmp_path / "a")
    assert shards.count_series(snapshot, ["STORE"]) == shards.count_series(snapshot, []) == 23
    assert shards.count_series(snapshot, ["NO_SUCH_FIELD"]) == 0
    assert shards.plan_snapshot(spec, snapshot, Settings(forecast_shard_series=10)) == 3
    assert shards.plan_snapshot(spec, snapshot, Settings(forecast_shard_series=10, forecast_max_shards=2)) == 2
    assert shards.plan_snapshot(spec, snapshot, Settings(forecast_shard_series=0)) == 1
    deep = {**spec, "candidates": ["ets", "deepar"]}
    assert shards.plan_snapshot(deep, tmp_path / "not-read", Settings(forecast_shard_series=10)) == 1


def test_partition_is_a_balanced_disjoint_cover_in_key_order() -> None:
    keys = [(f"item{k}", "") for k in (5, 3, 9, 1, 7, 2, 8)]
    parts = [shards.partition(keys, 3, i) for i in range(3)]
    assert sorted(i for p in parts for i in p) == list(range(len(keys)))
    assert [len(p) for p in parts] == [2, 2, 3]
    assert [sorted(keys[i] for i in p) for p in parts][0] == [("item1", ""), ("item2", "")]
    assert shards.partition(keys, 3, 1) == parts[1]  # the same every time


def test_three_shards_give_the_unsharded_predictor(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    snapshot = write_snapshot(tmp_path / "snapshot")
    whole = predictor_worker.train_predictor_job(
        predictor_spec(snapshot, tmp_path / "whole", output_dir=str(tmp_path)), _progress
    )

    spec = predictor_spec(snapshot, tmp_path / "sharded", shards=3)
    job_dir = tmp_path / "job"
    outputs = train_sharded(spec, job_dir, monkeypatch)
    assert sorted(o["series"] for o in outputs) == [7, 8, 8] and whole["series_count"] == 23
    assert not (tmp_path / "sharded").exists(), "a shard never writes the artifact"
    merged = predictor_worker.merge_predictor_shards(spec, [shards.shard_dir(job_dir, i) for i in range(3)])

    # The same artifact: item accuracies byte for byte, the same per-series choices, and the same spec but
    # for where the artifact was written (no trace of how the job ran).
    assert (tmp_path / "sharded" / "item_accuracy.jsonl").read_bytes() == (
        tmp_path / "whole" / "item_accuracy.jsonl"
    ).read_bytes()
    saved = [json.loads((tmp_path / name / "predictor.json").read_text()) for name in ("whole", "sharded")]
    for predictor in saved:
        assert predictor["spec"].pop("artifact_dir") and set(predictor["spec"]).isdisjoint({"shards", "output_dir"})
    assert saved[0] == saved[1]
    chosen = saved[0]["chosen"]
    assert len({tuple(names) for _, _, names in chosen}) > 1, "the test needs series that choose differently"

    # The same accuracy figures (pooled sums in another order: float tolerance).
    assert merged["series_count"] == whole["series_count"]
    assert numbers_of(merged["accuracy"]) == pytest.approx(numbers_of(whole["accuracy"]), rel=1e-12, abs=1e-12)

    # And the same forecasts from either predictor.
    tables = []
    for name in ("whole", "sharded"):
        forecast_spec = {
            "predictor_dir": str(tmp_path / name),
            "snapshot_dir": str(snapshot),
            "quantiles": [0.1, 0.5, 0.9],
            "artifact_dir": str(tmp_path / f"forecast-{name}"),
        }
        predictor_worker.generate_forecast_job(forecast_spec, _progress)
        tables.append(ForecastTable.load(tmp_path / f"forecast-{name}"))
    assert tables[0].item_ids == tables[1].item_ids and tables[0].dimensions == tables[1].dimensions
    np.testing.assert_array_equal(tables[0].values, tables[1].values)
    np.testing.assert_array_equal(tables[0].mean, tables[1].mean)


def test_merge_through_the_job_dir_and_a_shard_with_no_series(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    snapshot = write_snapshot(tmp_path / "snapshot", items=4)
    whole = predictor_worker.train_predictor_job(predictor_spec(snapshot, tmp_path / "whole"), _progress)
    spec = predictor_spec(snapshot, tmp_path / "sharded", shards=5)  # 4 series, 5 shards: one has none
    job_dir = tmp_path / "job"
    job_dir.mkdir()
    (job_dir / "spec.json").write_text(json.dumps(spec))
    assert sorted(o["series"] for o in train_sharded(spec, job_dir, monkeypatch)) == [0, 1, 1, 1, 1]
    merged = shards.merge(job_dir)
    assert numbers_of(merged["accuracy"]) == pytest.approx(numbers_of(whole["accuracy"]), rel=1e-12, abs=1e-12)
    assert (tmp_path / "sharded" / "item_accuracy.jsonl").read_bytes() == (
        tmp_path / "whole" / "item_accuracy.jsonl"
    ).read_bytes()


def test_a_missing_shard_output_fails_the_merge_and_bad_indexes_are_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    snapshot = write_snapshot(tmp_path / "snapshot", items=6)
    spec = predictor_spec(snapshot, tmp_path / "sharded", shards=3)
    job_dir = tmp_path / "job"
    train_sharded(spec, job_dir, monkeypatch)
    dirs = [shards.shard_dir(job_dir, i) for i in range(3)]
    # Shard 1's series lost: the merge refuses rather than write a predictor without them.
    (dirs[1] / shards.OUTPUT / predictor_worker.SHARD_SERIES).write_text("")
    with pytest.raises(WorkerError, match="do not cover its 6 series"):
        predictor_worker.merge_predictor_shards(spec, dirs)
    assert not (tmp_path / "sharded" / "predictor.json").exists()

    monkeypatch.setenv(shards.INDEX_ENV, "3")
    with pytest.raises(SystemExit, match="JOB_COMPLETION_INDEX in 0..2"):
        shards.output_dir(job_dir, spec)
    monkeypatch.delenv(shards.INDEX_ENV)
    with pytest.raises(SystemExit):
        shards.output_dir(job_dir, spec)


def test_deepar_is_never_trained_on_part_of_the_series(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    snapshot = write_snapshot(tmp_path / "snapshot", items=3)
    spec = predictor_spec(snapshot, tmp_path / "a", shards=2, candidates=["naive", "deepar"])
    monkeypatch.setenv(shards.INDEX_ENV, "0")
    with pytest.raises(WorkerError, match="deep model is global"):
        predictor_worker.train_predictor_job({**spec, "output_dir": str(tmp_path)}, _progress)


def numbers_of(tree: Any) -> list[float]:
    """Every number of a JSON tree in order (None as NaN), for approximate comparison."""
    if isinstance(tree, dict):
        return [x for key in sorted(tree) for x in numbers_of(tree[key])]
    if isinstance(tree, list):
        return [x for item in tree for x in numbers_of(item)]
    if tree is None:
        return [math.nan]
    if isinstance(tree, int | float) and not isinstance(tree, bool):
        return [float(tree)]
    return []
