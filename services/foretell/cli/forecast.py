"""`foretell predictor|accuracy|forecast|query`: the Forecast half of the CLI.

Resource arguments accept short forms: `daily` for `predictors/daily` or `forecasts/daily`.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

import click
import numpy as np

from foretell.cli import output as out
from foretell.cli.output import CliError, json_option, quiet_option, state
from foretell.cli.personalize import train_with_progress
from foretell.cli.progress import wait_with_progress
from foretell.client import Client, operation_response
from foretell.forecasting.predictor import ALGORITHMS
from foretell.v1 import forecast_query_service_pb2 as qpb
from foretell.v1 import training_pb2 as tpb
from foretell.v1 import training_service_pb2 as tapi

FILL_METHODS = {
    "zero": tpb.FILL_METHOD_ZERO,
    "value": tpb.FILL_METHOD_VALUE,
    "mean": tpb.FILL_METHOD_MEAN,
    "median": tpb.FILL_METHOD_MEDIAN,
    "previous": tpb.FILL_METHOD_PREVIOUS,
    "nan": tpb.FILL_METHOD_NAN,
}
METRICS = {
    "wql": tpb.ACCURACY_METRIC_AVERAGE_WQL,
    "wape": tpb.ACCURACY_METRIC_WAPE,
    "rmse": tpb.ACCURACY_METRIC_RMSE,
    "mape": tpb.ACCURACY_METRIC_MAPE,
    "mase": tpb.ACCURACY_METRIC_MASE,
    "smape": tpb.ACCURACY_METRIC_SMAPE,
}


def predictor_name(value: str) -> str:
    return value if value.startswith("predictors/") else f"predictors/{value}"


def forecast_name(value: str) -> str:
    return value if value.startswith("forecasts/") else f"forecasts/{value}"


def fill_policy(spec: str) -> tpb.FillPolicy:
    """`FIELD=METHOD` or `FIELD=value:NUMBER`."""
    field, sep, method = spec.partition("=")
    how, _, number = method.partition(":")
    if not sep or how not in FILL_METHODS or (how == "value") != bool(number):
        raise CliError(f"--fill {spec!r}: use FIELD=METHOD ({', '.join(FILL_METHODS)}) or FIELD=value:NUMBER")
    try:
        value = float(number) if number else 0.0
    except ValueError:
        raise CliError(f"--fill {spec!r}: {number!r} is not a number") from None
    return tpb.FillPolicy(field=field, method=FILL_METHODS[how], value=value)


def _training_state(value: int) -> str:
    return out.enum_label(tpb.TrainingState, value, "TRAINING_STATE_")


def _num(value: float) -> str:
    return "-" if value != value else f"{value:.4f}"  # NaN: not computable (e.g. MAPE on zeros)


def print_accuracy(accuracy: tapi.GetAccuracyMetricsResponse) -> None:
    rows = [*accuracy.algorithms]
    if accuracy.HasField("chosen") and accuracy.chosen.algorithm not in {a.algorithm for a in rows}:
        rows.append(accuracy.chosen)
    out.print_table(
        ["ALGORITHM", "WINDOWS", "AVG wQL", "WAPE", "RMSE", "MAPE", "MASE", "sMAPE"],
        [
            (
                a.algorithm,
                len(a.windows),
                _num(a.overall.average_weighted_quantile_loss),
                _num(a.overall.wape),
                _num(a.overall.rmse),
                _num(a.overall.mape),
                _num(a.overall.mase),
                _num(a.overall.smape),
            )
            for a in rows
        ],
    )


def register(cli: click.Group) -> None:
    """Adds this module's commands to the root `foretell` group."""
    for command in (predictor, accuracy, forecast, query):
        cli.add_command(command)


# ---- predictors --------------------------------------------------------------------------


@click.group()
def predictor() -> None:
    """Predictors: forecasting models trained (and backtested) on a dataset group."""


@predictor.command("create")
@click.argument("predictor_id")
@click.option("--group", "dataset_group", required=True, help="A FORECASTING dataset group: `sales` or its name.")
@click.option("--algorithm", type=click.Choice(ALGORITHMS), help="One algorithm (or --automl).")
@click.option("--automl", is_flag=True, help="Backtest candidates and choose per series.")
@click.option(
    "--candidate",
    "candidates",
    multiple=True,
    type=click.Choice(ALGORITHMS),
    help="AutoML candidate; repeatable [default: the statistical ones].",
)
@click.option("--ensemble/--select", default=True, show_default=True, help="AutoML: merge the best or pick one.")
@click.option(
    "--metric", type=click.Choice(list(METRICS)), default="wql", show_default=True, help="AutoML's choice metric."
)
@click.option("--horizon", type=int, required=True, help="Steps to forecast.")
@click.option("--frequency", required=True, help='e.g. "15min", "H", "D", "W", "M", "Q", "Y".')
@click.option("--quantile", "quantiles", type=float, multiple=True, help="Repeatable [default 0.1, 0.5, 0.9].")
@click.option("--dimension", "dimensions", multiple=True, help="A forecast dimension field; repeatable.")
@click.option("--backtest-windows", type=int, default=0, help="1 to 5 [default: 1; with --automl 3].")
@click.option("--fill", "fills", multiple=True, metavar="FIELD=METHOD", help="Fill policy, e.g. TARGET_VALUE=previous.")
@click.option("--param", "params", multiple=True, metavar="NAME=VALUE", help="A hyper-parameter; repeatable.")
@click.option("--no-wait", is_flag=True, help="Print the operation without waiting.")
@json_option
@quiet_option
def predictor_create(
    predictor_id: str,
    dataset_group: str,
    algorithm: str | None,
    automl: bool,
    candidates: Sequence[str],
    ensemble: bool,
    metric: str,
    horizon: int,
    frequency: str,
    quantiles: Sequence[float],
    dimensions: Sequence[str],
    backtest_windows: int,
    fills: Sequence[str],
    params: Sequence[str],
    no_wait: bool,
) -> None:
    """Train a predictor; shows progress, then its backtest accuracy."""
    if bool(algorithm) == automl:
        raise CliError("give exactly one of --algorithm and --automl")
    hyper: dict[str, str] = {}
    for spec in params:
        key, sep, value = spec.partition("=")
        if not sep:
            raise CliError(f"--param {spec!r}: use NAME=VALUE")
        hyper[key] = value
    s = state()
    client = s.client
    request = tapi.CreatePredictorRequest(
        predictor_id=predictor_id,
        predictor=tpb.Predictor(
            dataset_group=out.group_name(dataset_group),
            algorithm=algorithm or "",
            perform_automl=automl,
            automl_config=tpb.AutoMlConfig(
                candidate_algorithms=candidates, optimization_metric=METRICS[metric], ensemble=ensemble
            ),
            forecast_horizon=horizon,
            forecast_frequency=frequency,
            forecast_quantiles=quantiles,
            forecast_dimensions=dimensions,
            backtest_windows=backtest_windows,
            fill_policies=[fill_policy(f) for f in fills],
            hyper_parameters=hyper,
        ),
    )
    operation = client.call(client.training.CreatePredictor, request)
    if no_wait:
        out.print_json(operation) if s.json else click.echo(f"{predictor_name(predictor_id)}: {operation.name}")
        return
    trained = train_with_progress(client, operation, show=s.progress, response=tpb.Predictor)
    result = client.call(client.training.GetAccuracyMetrics, tapi.GetAccuracyMetricsRequest(name=trained.name))
    if s.json:
        out.print_json(result)
        return
    click.echo(f"{trained.name}: {_training_state(trained.state)}")
    print_accuracy(result)


@predictor.command("list")
@click.option("--group", "dataset_group", default="", help="Only this dataset group's predictors.")
@json_option
def predictor_list(dataset_group: str) -> None:
    s = state()
    request = tapi.ListPredictorsRequest(dataset_group=out.group_name(dataset_group) if dataset_group else "")
    found = list(s.client.list_all(s.client.training.ListPredictors, request, "predictors"))
    if s.json:
        for p in found:
            out.print_json(p)
        return
    out.print_table(
        ["NAME", "GROUP", "ALGORITHM", "HORIZON", "FREQ", "STATE"],
        [
            (
                p.name,
                p.dataset_group,
                "automl" if p.perform_automl else p.algorithm,
                p.forecast_horizon,
                p.forecast_frequency,
                _training_state(p.state),
            )
            for p in found
        ],
    )


@predictor.command("describe")
@click.argument("name")
@json_option
def predictor_describe(name: str) -> None:
    s = state()
    found = s.client.call(s.client.training.GetPredictor, tapi.GetPredictorRequest(name=predictor_name(name)))
    out.print_json(found)


@predictor.command("delete")
@click.argument("name")
def predictor_delete(name: str) -> None:
    s = state()
    s.client.call(s.client.training.DeletePredictor, tapi.DeletePredictorRequest(name=predictor_name(name)))
    click.echo(f"deleted {predictor_name(name)}")


@click.command()
@click.argument("name", metavar="PREDICTOR")
@click.option("--items", is_flag=True, help="Per-series accuracy instead of per algorithm.")
@json_option
def accuracy(name: str, items: bool) -> None:
    """Backtest accuracy of a predictor: per algorithm (default) or per series."""
    s = state()
    client = s.client
    if items:
        request = tapi.ListItemAccuraciesRequest(parent=predictor_name(name))
        found = list(client.list_all(client.training.ListItemAccuracies, request, "item_accuracies"))
        if s.json:
            for item in found:
                out.print_json(item)
            return
        out.print_table(
            ["ITEM", "DIMENSIONS", "ALGORITHM", "AVG wQL", "WAPE", "MASE"],
            [
                (
                    i.item_id,
                    ",".join(f"{k}={v}" for k, v in sorted(i.dimensions.items())) or "-",
                    i.algorithm,
                    _num(i.metrics.average_weighted_quantile_loss),
                    _num(i.metrics.wape),
                    _num(i.metrics.mase),
                )
                for i in found
            ],
        )
        return
    result = client.call(client.training.GetAccuracyMetrics, tapi.GetAccuracyMetricsRequest(name=predictor_name(name)))
    out.print_json(result) if s.json else print_accuracy(result)


# ---- forecasts ---------------------------------------------------------------------------


@click.group()
def forecast() -> None:
    """Forecasts: predictions for every series, generated from a predictor."""


def create_forecast(
    client: Client, forecast_id: str, predictor: str, quantiles: Sequence[float], show: bool
) -> tpb.Forecast:
    request = tapi.CreateForecastRequest(
        forecast_id=forecast_id, forecast=tpb.Forecast(predictor=predictor_name(predictor), quantiles=quantiles)
    )
    operation = client.call(client.training.CreateForecast, request)
    return train_with_progress(client, operation, show=show, desc="forecast", response=tpb.Forecast)


@forecast.command("create")
@click.argument("forecast_id")
@click.option("--predictor", required=True, help="A trained predictor.")
@click.option("--quantile", "quantiles", type=float, multiple=True, help="Repeatable [default: the predictor's].")
@json_option
@quiet_option
def forecast_create(forecast_id: str, predictor: str, quantiles: Sequence[float]) -> None:
    s = state()
    made = create_forecast(s.client, forecast_id, predictor, quantiles, s.progress)
    out.print_json(made) if s.json else click.echo(f"{made.name}: {made.series_count} series")


@forecast.command("list")
@click.option("--predictor", default="", help="Only this predictor's forecasts.")
@json_option
def forecast_list(predictor: str) -> None:
    s = state()
    request = tapi.ListForecastsRequest(predictor=predictor_name(predictor) if predictor else "")
    found = list(s.client.list_all(s.client.training.ListForecasts, request, "forecasts"))
    if s.json:
        for f in found:
            out.print_json(f)
        return
    out.print_table(
        ["NAME", "PREDICTOR", "SERIES", "QUANTILES", "STATE"],
        [
            (f.name, f.predictor, f.series_count, ",".join(f"{q:g}" for q in f.quantiles), _training_state(f.state))
            for f in found
        ],
    )


@forecast.command("describe")
@click.argument("name")
def forecast_describe(name: str) -> None:
    s = state()
    out.print_json(s.client.call(s.client.training.GetForecast, tapi.GetForecastRequest(name=forecast_name(name))))


@forecast.command("delete")
@click.argument("name")
def forecast_delete(name: str) -> None:
    s = state()
    s.client.call(s.client.training.DeleteForecast, tapi.DeleteForecastRequest(name=forecast_name(name)))
    click.echo(f"deleted {forecast_name(name)}")


@forecast.command("export")
@click.argument("name")
@click.option(
    "--to",
    "destination",
    default="",
    help="A new .csv file in your file area on the server (relative to it) [default: its artifact store].",
)
@quiet_option
def forecast_export(name: str, destination: str) -> None:
    """Write a forecast as CSV (one row per series and step)."""
    s = state()
    request = tapi.ExportForecastRequest(name=forecast_name(name), destination_uri=destination)
    operation = s.client.call(s.client.training.ExportForecast, request)
    done = wait_with_progress(s.client, operation, desc="export", show=s.progress)
    result = operation_response(done, tapi.ExportForecastResponse)
    click.echo(f"{result.rows_exported} rows in {result.destination_uri}")


# ---- queries -----------------------------------------------------------------------------


def _when(value: datetime | None) -> datetime | None:
    return value.replace(tzinfo=UTC) if value is not None and value.tzinfo is None else value


@click.command()
@click.argument("name", metavar="FORECAST")
@click.option("--item", "item_id", default="", help="The series' item id.")
@click.option("--dim", "dims", multiple=True, metavar="FIELD=VALUE", help="Dimension filter; repeatable.")
@click.option("--start", type=click.DateTime(), default=None, help="First time to return (UTC).")
@click.option("--end", type=click.DateTime(), default=None, help="Last time to return (UTC).")
@click.option("--quantile", "quantiles", type=float, multiple=True, help="Only these quantiles; repeatable.")
@click.option(
    "--plot",
    "plot_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Also save a PNG of the (first) series' forecast and its outer quantile band.",
)
@click.option(
    "--history",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="With --plot: a CSV (ITEM_ID,TIMESTAMP,TARGET_VALUE) whose rows for the item are drawn too.",
)
@json_option
def query(
    name: str,
    item_id: str,
    dims: Sequence[str],
    start: datetime | None,
    end: datetime | None,
    quantiles: Sequence[float],
    plot_path: Path | None,
    history: Path | None,
) -> None:
    """Query a forecast by item (and dimensions), time window and quantiles."""
    s = state()
    dimensions = {}
    for spec in dims:
        key, sep, value = spec.partition("=")
        if not sep:
            raise CliError(f"--dim {spec!r}: use FIELD=VALUE")
        dimensions[key] = value
    answer = s.client.query_forecast(
        forecast_name(name),
        item_id,
        quantiles=quantiles,
        dimensions=dimensions,
        start_time=_when(start),
        end_time=_when(end),
    )
    if s.json:
        out.print_json(answer)
    else:
        print_series(answer.series)
    if plot_path is not None and answer.series:
        plot_series(plot_path, answer.series[0], history)
        out.info(f"plot saved to {plot_path}")


def print_series(series: Sequence[qpb.SeriesForecast]) -> None:
    for one in series:
        dims = ",".join(f"{k}={v}" for k, v in sorted(one.dimensions.items()))
        click.echo(f"{one.item_id}" + (f" ({dims})" if dims else ""))
        headers = ["TIME", "MEAN", *(f"p{q.quantile * 100:g}" for q in one.quantiles)]
        rows = [
            (out.timestamp(point.timestamp), f"{point.value:.4g}", *(f"{q.points[t].value:.4g}" for q in one.quantiles))
            for t, point in enumerate(one.mean)
        ]
        out.print_table(headers, rows)


def read_history(path: Path, item_id: str) -> tuple[np.ndarray, np.ndarray]:
    """(epoch seconds, values) of `item_id` in an import-format CSV, oldest first."""
    from foretell.dataset.rows import parse_timestamp

    times, values = [], []
    with path.open(newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            if row.get("ITEM_ID") == item_id and row.get("TARGET_VALUE"):
                times.append(parse_timestamp(row["TIMESTAMP"]))
                values.append(float(row["TARGET_VALUE"]))
    order = np.argsort(times)
    return np.asarray(times, dtype=np.int64)[order], np.asarray(values, dtype=np.float64)[order]


def plot_series(path: Path, series: qpb.SeriesForecast, history: Path | None) -> None:
    from foretell.forecasting.plot import plot_forecast

    times = np.array([p.timestamp.seconds for p in series.mean], dtype=np.int64)
    mean = np.array([p.value for p in series.mean])
    lower = upper = None
    label = ""
    if len(series.quantiles) >= 2:
        low, high = series.quantiles[0], series.quantiles[-1]
        lower = np.array([p.value for p in low.points])
        upper = np.array([p.value for p in high.points])
        label = f"p{low.quantile * 100:g}–p{high.quantile * 100:g}"
    past_t, past_y = read_history(history, series.item_id) if history else (np.zeros(0, np.int64), np.zeros(0))
    plot_forecast(path, past_t, past_y, times, mean, lower, upper, band_label=label, title=series.item_id)
