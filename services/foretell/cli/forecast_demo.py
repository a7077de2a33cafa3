"""The forecasting half of `foretell demo`: import series, train an AutoML predictor, read its backtest
accuracy, generate a forecast, query it and plot it, all through the real client.

Without a path it uses a real dataset that ships inside statsmodels: US quarterly macroeconomic
series (1959-2009; GDP, consumption, investment, ...), one item per series. With `--series PATH`
it reads any CSV in the import format (ITEM_ID, TIMESTAMP, TARGET_VALUE).
"""

from __future__ import annotations

import csv
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc

from foretell.cli.forecast import create_forecast, plot_series, print_accuracy, print_series
from foretell.cli.personalize import train_with_progress
from foretell.cli.progress import import_file
from foretell.client import Client, ForetellError
from foretell.v1 import dataset_pb2 as pb
from foretell.v1 import dataset_service_pb2 as api
from foretell.v1 import training_pb2 as tpb
from foretell.v1 import training_service_pb2 as tapi

GROUP_ID = "forecast-demo"
PREDICTOR = f"predictors/{GROUP_ID}"
FORECAST = f"forecasts/{GROUP_ID}"
SCHEMA_ID = f"{GROUP_ID}-target"
MACRO_SERIES = ("realgdp", "realcons", "realinv", "realgovt", "realdpi", "cpi", "m1", "pop")
FIELDS = [
    pb.SchemaField(name="ITEM_ID", type=pb.FIELD_TYPE_STRING),
    pb.SchemaField(name="TIMESTAMP", type=pb.FIELD_TYPE_TIMESTAMP),
    pb.SchemaField(name="TARGET_VALUE", type=pb.FIELD_TYPE_DOUBLE),
]
# Fast candidates keep the demo at a few seconds; `foretell predictor create --automl` defaults to more.
CANDIDATES = ("ets", "theta", "naive", "seasonal-naive")


@dataclass(frozen=True)
class SeriesSource:
    path: Path
    frequency: str
    horizon: int
    description: str
    plot_item: str


def macro_series(directory: Path) -> SeriesSource:
    """statsmodels' macrodata as an import-format CSV, one row per (series, quarter)."""
    from statsmodels.datasets import macrodata

    frame = macrodata.load_pandas().data
    path = directory / "macro_quarterly.csv"
    directory.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(["ITEM_ID", "TIMESTAMP", "TARGET_VALUE"])
        for row in frame.itertuples(index=False):
            quarter_start = datetime(int(row.year), 3 * (int(row.quarter) - 1) + 1, 1, tzinfo=UTC)
            for name in MACRO_SERIES:
                writer.writerow([name, quarter_start.strftime("%Y-%m-%d"), f"{getattr(row, name):.6g}"])
    description = f"{len(MACRO_SERIES)} US quarterly macro series x {len(frame)} quarters (statsmodels macrodata)"
    return SeriesSource(path, "Q", 8, description, "realgdp")


def _first_item(path: Path) -> str:
    with path.open(newline="", encoding="utf-8") as f:
        return next(csv.DictReader(f))["ITEM_ID"]


def _remove_previous(client: Client, say: Callable[[str], None]) -> None:
    removals: list[tuple[str, Callable[[], object]]] = [
        (FORECAST, lambda: client.call(client.training.DeleteForecast, tapi.DeleteForecastRequest(name=FORECAST))),
        (PREDICTOR, lambda: client.call(client.training.DeletePredictor, tapi.DeletePredictorRequest(name=PREDICTOR))),
        (
            f"datasetGroups/{GROUP_ID}",
            lambda: client.call(
                client.datasets.DeleteDatasetGroup,
                api.DeleteDatasetGroupRequest(name=f"datasetGroups/{GROUP_ID}", force=True),
            ),
        ),
        (
            f"schemas/{SCHEMA_ID}",
            lambda: client.call(client.datasets.DeleteSchema, api.DeleteSchemaRequest(name=f"schemas/{SCHEMA_ID}")),
        ),
    ]
    for name, remove in removals:
        try:
            remove()
            say(f"      removed the previous demo's {name}")
        except ForetellError as error:
            if error.code != grpc.StatusCode.NOT_FOUND:
                raise


def run_forecast_demo(
    client: Client,
    data_dir: Path,
    series: Path | None,
    frequency: str,
    horizon: int,
    show_progress: bool,
    say: Callable[[str], None],
    tables: bool = True,
) -> dict[str, Any]:
    """Import -> AutoML predictor (backtest accuracy) -> forecast -> query -> PNG plot.

    `tables`: print the accuracy and forecast tables (stdout), off when stdout holds the JSON summary."""
    if series is None:
        source = macro_series(data_dir / "input")
    else:
        item = _first_item(series)
        source = SeriesSource(series, frequency, horizon, f"series from {series}", item)
    _remove_previous(client, say)
    group = client.create_dataset_group(GROUP_ID, pb.DOMAIN_FORECASTING, display_name="Forecasting demo")
    schema = client.create_schema(SCHEMA_ID, pb.DOMAIN_FORECASTING, FIELDS)
    dataset = client.create_dataset(group.name, "target", pb.DATASET_TYPE_TARGET_TIME_SERIES, schema.name)
    job = import_file(
        client, dataset.name, str(source.path), mode=pb.IMPORT_MODE_FULL, server_path=False, show=show_progress
    )
    say(f"[F1] forecasting data  {job.rows_imported} rows into {dataset.name}: {source.description}")

    request = tapi.CreatePredictorRequest(
        predictor_id=GROUP_ID,
        predictor=tpb.Predictor(
            dataset_group=group.name,
            perform_automl=True,
            automl_config=tpb.AutoMlConfig(candidate_algorithms=CANDIDATES, ensemble=True),
            forecast_horizon=source.horizon,
            forecast_frequency=source.frequency,
            backtest_windows=2,
            fill_policies=[tpb.FillPolicy(field="TARGET_VALUE", method=tpb.FILL_METHOD_PREVIOUS)],
        ),
    )
    operation = client.call(client.training.CreatePredictor, request)
    predictor = train_with_progress(client, operation, show=show_progress, desc="predictor", response=tpb.Predictor)
    seconds = predictor.training_duration.ToTimedelta().total_seconds()
    say(f"[F2] predictor         {predictor.name}: AutoML over {', '.join(CANDIDATES)} in {seconds:.1f}s")
    accuracy = client.call(client.training.GetAccuracyMetrics, tapi.GetAccuracyMetricsRequest(name=predictor.name))
    say(f"      backtest accuracy over 2 windows of {source.horizon} steps:")
    if tables:
        print_accuracy(accuracy)

    forecast = create_forecast(client, GROUP_ID, predictor.name, (), show_progress)
    say(f"[F3] forecast          {forecast.name}: {forecast.series_count} series x {source.horizon} steps")
    answer = client.query_forecast(forecast.name, source.plot_item)
    say(f"[F4] QueryForecast     {source.plot_item}:")
    if tables:
        print_series(answer.series)
    plot_path = data_dir / "forecast.png"
    plot_series(plot_path, answer.series[0], source.path)
    say(f"[F5] plot              {plot_path}")
    chosen = accuracy.chosen.overall
    return {
        "forecastDatasetGroup": group.name,
        "predictor": predictor.name,
        "forecast": forecast.name,
        "forecastSeries": forecast.series_count,
        "forecastAccuracy": {"averageWql": chosen.average_weighted_quantile_loss, "mase": chosen.mase},
        "forecastPlot": str(plot_path),
    }
