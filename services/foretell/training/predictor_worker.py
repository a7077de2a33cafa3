"""Worker side of predictors and forecasts: snapshot in, accuracy / forecast table / CSV out (no gRPC).

A predictor's artifact directory holds `predictor.json` (its configuration and the algorithms
chosen per series), `item_accuracy.jsonl` (one line per series) and, when the deep model is
used, `deepar/`. A forecast's artifact directory is a `ForecastTable`.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from foretell.forecasting.frequency import Frequency
from foretell.forecasting.metrics import ErrorMetrics
from foretell.forecasting.predictor import (
    DEEP,
    PredictorConfig,
    Progress,
    average_windows,
    generate_forecast,
    parse_hyper_parameters,
    series_key,
    train_predictor,
)
from foretell.forecasting.series import FillPolicy, SeriesError, SeriesSet, load_snapshot
from foretell.forecasting.table import ForecastTable
from foretell.training.worker import WorkerError

PREDICTOR_FILE = "predictor.json"
ITEM_ACCURACY_FILE = "item_accuracy.jsonl"


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
        workers=int(spec.get("workers") or 0),
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


def train_predictor_job(spec: dict[str, Any], progress: Progress) -> dict[str, Any]:
    series = _series(spec, spec["snapshot_dir"])
    config = config_of(spec)
    try:
        result = train_predictor(series, config, progress)
    except ValueError as exc:
        raise WorkerError("INVALID_ARGUMENT", str(exc)) from None
    artifact = Path(spec["artifact_dir"])
    artifact.mkdir(parents=True, exist_ok=True)
    if result.deepar is not None:
        result.deepar.save(artifact / DEEP)
    with (artifact / ITEM_ACCURACY_FILE).open("w", encoding="utf-8") as out:
        for i, metrics in enumerate(result.item_metrics):
            names = result.chosen[i]
            line = {
                "item_id": series.item_ids[i],
                "dimensions": series.dimensions[i],
                "algorithm": names[0] if len(names) == 1 else "ensemble",
                "algorithms": names,
                "metrics": metrics_json(metrics),
            }
            out.write(json.dumps(line) + "\n")
    chosen = [[*series_key(series, i), names] for i, names in enumerate(result.chosen)]
    (artifact / PREDICTOR_FILE).write_text(json.dumps({"spec": spec, "chosen": chosen}))

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
        "series_count": len(series.targets),
    }


def generate_forecast_job(spec: dict[str, Any], progress: Progress) -> dict[str, Any]:
    predictor_dir = Path(spec["predictor_dir"])
    saved = json.loads((predictor_dir / PREDICTOR_FILE).read_text())
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
