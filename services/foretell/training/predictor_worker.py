"""Worker side of predictors and forecasts: snapshot in, accuracy / forecast table / CSV out (no gRPC).

A predictor's artifact directory holds `predictor.json` (its configuration and the algorithms
chosen per series), `item_accuracy.jsonl` (one line per series) and, when the deep model is
used, `deepar/`. A forecast's artifact directory is a `ForecastTable`.
"""

from __future__ import annotations

import contextlib
import heapq
import json
import math
import os
import shutil
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from foretell.core import formats
from foretell.forecasting.frequency import Frequency
from foretell.forecasting.metrics import ErrorMetrics
from foretell.forecasting.predictor import (
    DEEP,
    Pooled,
    PredictorConfig,
    PredictorPart,
    PredictorResult,
    Progress,
    average_windows,
    backtest_part,
    generate_forecast,
    merge_parts,
    name_key,
    parse_hyper_parameters,
    series_key,
    train_predictor,
)
from foretell.forecasting.series import FillPolicy, SeriesError, SeriesName, SeriesSet, Shard, load_shard, load_snapshot
from foretell.forecasting.table import ForecastTable
from foretell.training import shards
from foretell.training.worker import WorkerError

if TYPE_CHECKING:
    from foretell.forecasting.deepar import DeepAr

PREDICTOR_FILE = "predictor.json"
# Of predictor.json and everything beside it (core/formats.py); predictors from before formats were recorded are 1.
PREDICTOR_FORMAT = 1
ITEM_ACCURACY_FILE = "item_accuracy.jsonl"
SHARD_SERIES = "series.jsonl"
SHARD_PART = "part.json"
# spec.json keys that say how the job ran, not what the predictor is: kept out of predictor.json, so a
# sharded predictor's artifact is the unsharded one's.
RUN_KEYS = ("shards", "output_dir")


def config_of(spec: dict[str, Any]) -> PredictorConfig:
    candidates = tuple(spec["candidates"])
    return PredictorConfig(
        candidates=candidates,
        horizon=int(spec["horizon"]),
        quantiles=tuple(float(q) for q in spec["quantiles"]),
        backtest_windows=int(spec["backtest_windows"]),
        backtest_offset=int(spec["backtest_offset"]),
        metric=spec["metric"],
        ensemble=bool(spec["ensemble"]),
        params=parse_hyper_parameters(candidates, spec.get("hyper_parameters") or {}),
        workers=int(spec.get("workers") or os.environ.get(shards.PROCESSES_ENV) or 0),
    )


def _series(spec: dict[str, Any], snapshot_dir: str) -> SeriesSet:
    try:
        return load_snapshot(
            Path(snapshot_dir),
            Frequency.parse(spec["frequency"]),
            int(spec["horizon"]),
            spec.get("dimensions") or (),
            [FillPolicy(**p) for p in spec.get("fill_policies") or ()],
        )
    except SeriesError as exc:
        raise WorkerError("FAILED_PRECONDITION", f"{exc.field}: {exc}") from None


def metrics_json(m: ErrorMetrics | None) -> dict[str, Any] | None:
    """JSON-safe metrics: NaN becomes None (PostgreSQL's JSON has no NaN)."""
    if m is None:
        return None

    def clean(v: float) -> float | None:
        return float(v) if math.isfinite(v) else None

    return {
        "wql": [[level, clean(loss)] for level, loss in zip(m.levels, m.wql, strict=True)],
        "average_wql": clean(m.mean_wql),
        "wape": clean(m.wape),
        "rmse": clean(m.rmse),
        "mape": clean(m.mape),
        "mase": clean(m.mase),
        "smape": clean(m.smape),
    }


def _item_line(series: SeriesSet, i: int, names: list[str], metrics: ErrorMetrics | None) -> dict[str, Any]:
    return {
        "item_id": series.item_ids[i],
        "dimensions": series.dimensions[i],
        "algorithm": names[0] if len(names) == 1 else "ensemble",
        "algorithms": names,
        "metrics": metrics_json(metrics),
    }


def _write_predictor(
    spec: dict[str, Any], entries: Iterable[tuple[list[Any], dict[str, Any]]], deepar: DeepAr | None
) -> None:
    """The artifact from (chosen entry [item, dimensions key, names], item accuracy line) per series in series
    order; predictor.json last, by rename, so a reader never takes a half-written predictor for one."""
    artifact = Path(spec["artifact_dir"])
    artifact.mkdir(parents=True, exist_ok=True)
    if deepar is not None:
        deepar.save(artifact / DEEP)
    chosen = []
    with (artifact / ITEM_ACCURACY_FILE).open("w", encoding="utf-8") as out:
        for entry, line in entries:
            out.write(json.dumps(line) + "\n")
            chosen.append(entry)
    saved = {k: v for k, v in spec.items() if k not in RUN_KEYS}
    partial = artifact / (PREDICTOR_FILE + ".partial")
    partial.write_text(json.dumps({"format": PREDICTOR_FORMAT, "spec": saved, "chosen": chosen}))
    os.replace(partial, artifact / PREDICTOR_FILE)


def _summary(config: PredictorConfig, result: PredictorResult, series_count: int) -> dict[str, Any]:
    def accuracy(name: str, per_window: list[ErrorMetrics | None]) -> dict[str, Any]:
        return {
            "algorithm": name,
            "windows": [
                {"start": start, "end": end, "metrics": metrics_json(m)}
                for (start, end), m in zip(result.windows, per_window, strict=True)
            ],
            "overall": metrics_json(average_windows(per_window)),
        }

    served = "automl" if config.automl else config.candidates[0]
    return {
        "accuracy": {
            "algorithms": [accuracy(a, ms) for a, ms in result.by_algorithm.items()],
            "chosen": accuracy(served, result.chosen_windows),
        },
        "series_count": series_count,
    }


def train_predictor_job(spec: dict[str, Any], progress: Progress) -> dict[str, Any]:
    config = config_of(spec)
    if shards.count(spec) > 1:
        return _train_shard(spec, config, progress)
    series = _series(spec, spec["snapshot_dir"])
    try:
        result = train_predictor(series, config, progress)
    except ValueError as exc:
        raise WorkerError("INVALID_ARGUMENT", str(exc)) from None
    entries = (
        ([*series_key(series, i), names], _item_line(series, i, names, metrics))
        for i, (names, metrics) in enumerate(zip(result.chosen, result.item_metrics, strict=True))
    )
    _write_predictor(spec, entries, result.deepar)
    return _summary(config, result, len(series.targets))


# ---- sharded predictors -------------------------------------------------------------------
# Shard i writes JOB_DIR/shards/i/output/: series.jsonl (per series of its partition, ascending position in
# the whole set: {"index", "chosen", "item"}) and part.json (its per-window scores as pooled sums). A shard
# reads only its own series' rows (`load_shard`); the partition comes from every series' name, which all
# shards read alike.


def _shard_series(spec: dict[str, Any], n: int, index: int) -> Shard:
    def choose(names: list[SeriesName]) -> list[int]:
        return shards.partition([name_key(item, dims) for item, dims in names], n, index)

    try:
        return load_shard(
            Path(spec["snapshot_dir"]),
            Frequency.parse(spec["frequency"]),
            int(spec["horizon"]),
            spec.get("dimensions") or (),
            [FillPolicy(**p) for p in spec.get("fill_policies") or ()],
            choose,
        )
    except SeriesError as exc:
        raise WorkerError("FAILED_PRECONDITION", f"{exc.field}: {exc}") from None


def _train_shard(spec: dict[str, Any], config: PredictorConfig, progress: Progress) -> dict[str, Any]:
    shard = _shard_series(spec, shards.count(spec), shards.index_of(spec))
    series = shard.series
    try:
        part = backtest_part(series, config, None, progress, longest=shard.longest)
    except ValueError as exc:
        raise WorkerError("INVALID_ARGUMENT", str(exc)) from None
    output = Path(spec["output_dir"]) / shards.OUTPUT
    staging = output.with_name(shards.OUTPUT + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    with (staging / SHARD_SERIES).open("w", encoding="utf-8") as out:
        for i, names, metrics in zip(part.indices, part.chosen, part.item_metrics, strict=True):
            entry = {
                "index": shard.positions[i],
                "chosen": [*series_key(series, i), names],
                "item": _item_line(series, i, names, metrics),
            }
            out.write(json.dumps(entry) + "\n")

    def pooled(values: list[Pooled | None]) -> list[dict[str, Any] | None]:
        return [None if v is None else v.to_json() for v in values]

    scores = {
        "series_count": shard.total,
        "windows": part.windows,
        "by_algorithm": {a: pooled(v) for a, v in part.by_algorithm.items()},
        "chosen_windows": pooled(part.chosen_windows),
    }
    (staging / SHARD_PART).write_text(json.dumps(scores))
    # A retried shard (a pod evicted and replaced) replaces what an earlier attempt left.
    shutil.rmtree(output, ignore_errors=True)
    os.replace(staging, output)
    return {"series": len(series)}


def merge_predictor_shards(spec: dict[str, Any], shard_dirs: list[Path]) -> dict[str, Any]:
    """The predictor artifact and result of a sharded job from its shards' outputs: the same files and
    figures as one unsharded run (the per-window scores add up as pooled sums, see `Pooled`)."""
    config = config_of(spec)
    outputs = [d / shards.OUTPUT for d in shard_dirs]
    saved = [json.loads((o / SHARD_PART).read_text()) for o in outputs]
    series_count = int(saved[0]["series_count"])
    if any(int(s["series_count"]) != series_count for s in saved):
        raise WorkerError("INTERNAL", "the shards of this predictor read different numbers of series")

    def pooled(values: list[dict[str, Any] | None]) -> list[Pooled | None]:
        return [None if v is None else Pooled.from_json(v) for v in values]

    parts = [
        PredictorPart(
            indices=[],  # the per-series results stream from series.jsonl below instead of memory
            windows=[(int(a), int(b)) for a, b in s["windows"]],
            by_algorithm={a: pooled(v) for a, v in s["by_algorithm"].items()},
            chosen_windows=pooled(s["chosen_windows"]),
            chosen=[],
            item_metrics=[],
        )
        for s in saved
    ]
    result = merge_parts(parts)
    with contextlib.ExitStack() as files:
        streams = [_series_entries(files.enter_context((o / SHARD_SERIES).open(encoding="utf-8"))) for o in outputs]

        def entries() -> Iterator[tuple[list[Any], dict[str, Any]]]:
            expected = 0
            for entry in heapq.merge(*streams, key=lambda e: int(e["index"])):
                if int(entry["index"]) != expected:
                    break
                expected += 1
                yield entry["chosen"], entry["item"]
            # Checked before predictor.json is written: a predictor missing series is never made.
            if expected != series_count:
                raise WorkerError("INTERNAL", f"the shards of this predictor do not cover its {series_count} series")

        _write_predictor(spec, entries(), None)
    return _summary(config, result, series_count)


def _series_entries(lines: IO[str]) -> Iterator[dict[str, Any]]:
    for line in lines:
        yield json.loads(line)


def generate_forecast_job(spec: dict[str, Any], progress: Progress) -> dict[str, Any]:
    predictor_dir = Path(spec["predictor_dir"])
    saved = json.loads((predictor_dir / PREDICTOR_FILE).read_text())
    formats.check(saved, PREDICTOR_FORMAT, "predictor artifact", missing=1)
    predictor_spec = saved["spec"]
    series = _series(predictor_spec, spec["snapshot_dir"])
    config = config_of(predictor_spec)
    chosen = {(item, dims): names for item, dims, names in saved["chosen"]}
    deepar = None
    if (predictor_dir / DEEP).exists():
        from foretell.forecasting.deepar import DeepAr

        def deepar() -> DeepAr:
            return DeepAr.load(predictor_dir / DEEP)

    table = generate_forecast(series, chosen, config, deepar, tuple(spec["quantiles"]), progress)
    table.save(Path(spec["artifact_dir"]))
    return {"series_count": len(table.item_ids)}


def export_forecast_job(spec: dict[str, Any], progress: Progress) -> dict[str, Any]:
    progress(0.1, "reading the forecast")
    table = ForecastTable.load(Path(spec["forecast_dir"]))
    rows = table.to_csv(Path(spec["destination"]))
    return {"rows_exported": rows, "destination_uri": spec["destination_uri"]}
