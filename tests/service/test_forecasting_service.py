"""Forecasting end to end over a real server: import series, train predictors in real workers, read
backtest accuracy, generate, query and export forecasts; bad requests and bad data get clear errors."""

from __future__ import annotations

import csv
import math
import time
from pathlib import Path

import grpc
import numpy as np
import pytest
from google.longrunning import operations_pb2

from foretell.core.artifacts import path_of
from foretell.core.settings import Settings
from foretell.forecast_query import forecasts as forecasts_module
from foretell.v1 import common_pb2, forecast_query_service_pb2, forecast_query_service_pb2_grpc, training_pb2
from foretell.v1 import dataset_pb2 as dpb
from foretell.v1 import dataset_service_pb2 as dapi
from foretell.v1 import training_service_pb2 as api

from errors import expect_error
from support import DAY, START, Stubs, daily_csv, make_forecasting_group, start_stubs, upload

INVALID = grpc.StatusCode.INVALID_ARGUMENT
PRECONDITION = grpc.StatusCode.FAILED_PRECONDITION


def _predictor(group: str, **fields: object) -> training_pb2.Predictor:
    values: dict[str, object] = {
        "dataset_group": group,
        "algorithm": "seasonal-naive",
        "forecast_horizon": 7,
        "forecast_frequency": "D",
    }
    values.update(fields)
    return training_pb2.Predictor(**values)  # type: ignore[arg-type]


def _train(stubs: Stubs, predictor_id: str, predictor: training_pb2.Predictor) -> operations_pb2.Operation:
    op = stubs.training.CreatePredictor(
        api.CreatePredictorRequest(predictor_id=predictor_id, predictor=predictor), timeout=10
    )
    return stubs.wait(op, timeout=180)


def _meta(op: operations_pb2.Operation) -> common_pb2.OperationMetadata:
    meta = common_pb2.OperationMetadata()
    op.metadata.Unpack(meta)
    return meta


@pytest.mark.databases("sqlite", "postgres")
@pytest.mark.slow
def test_automl_predictor_accuracy_forecast_query_and_export(stubs: Stubs, settings: Settings) -> None:
    group = make_forecasting_group(stubs, "sales", daily_csv())
    t = stubs.training
    done = _train(
        stubs,
        "daily",
        _predictor(
            group,
            algorithm="",
            perform_automl=True,
            automl_config=training_pb2.AutoMlConfig(candidate_algorithms=["naive", "seasonal-naive", "ets"]),
            forecast_dimensions=["store"],
            backtest_windows=2,
            forecast_quantiles=[0.1, 0.5, 0.9],
        ),
    )
    assert not done.HasField("error"), done.error
    assert _meta(done).progress_percent == 100
    predictor = t.GetPredictor(api.GetPredictorRequest(name="predictors/daily"), timeout=5)
    assert predictor.state == training_pb2.TRAINING_STATE_SUCCEEDED and predictor.artifact_uri
    assert predictor.training_duration.seconds >= 0 and predictor.dataset_snapshot_uri

    accuracy = t.GetAccuracyMetrics(api.GetAccuracyMetricsRequest(name=predictor.name), timeout=5)
    by_name = {a.algorithm: a for a in accuracy.algorithms}
    assert set(by_name) == {"naive", "seasonal-naive", "ets"}
    for a in accuracy.algorithms:
        assert len(a.windows) == 2
        # Window 2 is the latest 7 days; window 1 the 7 before (data ends on day 119).
        assert [w.start_time.seconds for w in a.windows] == [START + 106 * DAY, START + 113 * DAY]
        assert [w.end_time.seconds for w in a.windows] == [START + 112 * DAY, START + 119 * DAY]
        assert [q.quantile for q in a.overall.weighted_quantile_losses] == [0.1, 0.5, 0.9]
    # A weekly pattern: last week beats yesterday, and AutoML's choice is no worse than its best candidate.
    assert by_name["seasonal-naive"].overall.wape < by_name["naive"].overall.wape
    best = min(a.overall.average_weighted_quantile_loss for a in accuracy.algorithms)
    assert accuracy.chosen.algorithm == "automl"
    assert accuracy.chosen.overall.average_weighted_quantile_loss <= best + 1e-9
    assert 0 < accuracy.chosen.overall.mase < 1.5

    first = t.ListItemAccuracies(api.ListItemAccuraciesRequest(parent=predictor.name, page_size=4), timeout=5)
    second = t.ListItemAccuracies(
        api.ListItemAccuraciesRequest(parent=predictor.name, page_size=4, page_token=first.next_page_token), timeout=5
    )
    items = [*first.item_accuracies, *second.item_accuracies]
    assert not second.next_page_token
    assert sorted(i.item_id for i in items) == [f"item{i}" for i in range(6)]
    assert {i.dimensions["store"] for i in items} == {"north", "south"}
    assert all(i.algorithm in ("naive", "seasonal-naive", "ets", "ensemble") for i in items)

    op = t.CreateForecast(
        api.CreateForecastRequest(
            forecast_id="next-week", forecast=training_pb2.Forecast(predictor=predictor.name, quantiles=[0.05, 0.5])
        ),
        timeout=10,
    )
    done = stubs.wait(op, timeout=120)
    assert not done.HasField("error"), done.error
    forecast = t.GetForecast(api.GetForecastRequest(name="forecasts/next-week"), timeout=5)
    assert forecast.state == training_pb2.TRAINING_STATE_SUCCEEDED and forecast.series_count == 6
    assert list(forecast.quantiles) == [0.05, 0.5]

    query = forecast_query_service_pb2_grpc.ForecastQueryServiceStub(stubs.channel)
    answer = query.QueryForecast(
        forecast_query_service_pb2.QueryForecastRequest(forecast=forecast.name, item_id="item3"), timeout=5
    )
    (series,) = answer.series
    assert series.dimensions["store"] == "north"
    assert [p.timestamp.seconds for p in series.mean] == [START + (120 + d) * DAY for d in range(7)]
    low, median = (np.array([p.value for p in q.points]) for q in series.quantiles)
    assert np.all(low <= median)
    # item3's level is 50 with a +-40% weekly swing: the forecast must follow the pattern, not a flat line.
    mean = np.array([p.value for p in series.mean])
    expected = np.array([50 * (1 + 0.4 * math.sin(2 * math.pi * (120 + d) / 7)) for d in range(7)])
    assert np.abs(mean - expected).mean() < 5

    destination = settings.data_dir / "files" / "next-week.csv"  # the default export root, the caller's area
    done = stubs.wait(
        t.ExportForecast(api.ExportForecastRequest(name=forecast.name, destination_uri=str(destination)), timeout=10)
    )
    assert not done.HasField("error"), done.error
    exported = api.ExportForecastResponse()
    done.response.Unpack(exported)
    assert exported.rows_exported == 6 * 7 and path_of(exported.destination_uri) == destination.resolve()
    rows = list(csv.DictReader(destination.open()))
    assert len(rows) == 42 and {"item_id", "store", "date", "mean", "p5", "p50"} <= set(rows[0])

    # A predictor with forecasts cannot go; the forecast first, then the predictor and its artifact.
    expect_error(lambda: t.DeletePredictor(api.DeletePredictorRequest(name=predictor.name), timeout=5), PRECONDITION)
    t.DeleteForecast(api.DeleteForecastRequest(name=forecast.name), timeout=5)
    t.DeletePredictor(api.DeletePredictorRequest(name=predictor.name), timeout=5)
    assert not path_of(predictor.artifact_uri).exists()
    listed = t.ListPredictors(api.ListPredictorsRequest(dataset_group=group), timeout=5)
    assert not listed.predictors


def test_bad_predictor_requests_name_the_field(stubs: Stubs) -> None:
    group = make_forecasting_group(stubs, "bad", daily_csv(items=2, days=30))
    t = stubs.training
    # Regression: a NUL in the destination path made Path.resolve() raise ValueError (INTERNAL).
    expect_error(
        lambda: t.ExportForecast(api.ExportForecastRequest(name="forecasts/x", destination_uri="\x00"), timeout=5),
        INVALID,
        "destination_uri",
    )

    def create(**fields: object) -> object:
        return t.CreatePredictor(api.CreatePredictorRequest(predictor_id="p", predictor=_predictor(group, **fields)))

    expect_error(lambda: create(forecast_horizon=0), INVALID, "predictor.forecast_horizon")
    expect_error(lambda: create(forecast_frequency="fortnight"), INVALID, "predictor.forecast_frequency")
    expect_error(lambda: create(forecast_quantiles=[0.5, 1.5]), INVALID, "predictor.forecast_quantiles[1]")
    expect_error(lambda: create(forecast_quantiles=[0.5, 0.1]), INVALID, "predictor.forecast_quantiles[1]")
    expect_error(lambda: create(algorithm="prophet"), INVALID, "predictor.algorithm")
    expect_error(
        lambda: create(hyper_parameters={"alpha": "1"}, algorithm="ets"), INVALID, "predictor.hyper_parameters[alpha]"
    )
    expect_error(lambda: create(forecast_dimensions=["store\n"]), INVALID, "predictor.forecast_dimensions[0]")
    expect_error(
        lambda: create(fill_policies=[training_pb2.FillPolicy(field="TARGET_VALUE\n")]),
        INVALID,
        "predictor.fill_policies[0].field",
    )
    expect_error(lambda: create(backtest_windows=9), INVALID, "predictor.backtest_windows")
    expect_error(lambda: create(backtest_window_offset=3), INVALID, "predictor.backtest_window_offset")
    expect_error(
        lambda: create(fill_policies=[training_pb2.FillPolicy(field="TARGET_VALUE", method=42)]),
        INVALID,
        "predictor.fill_policies[0].method",
    )
    expect_error(
        lambda: create(perform_automl=True, automl_config=training_pb2.AutoMlConfig(candidate_algorithms=["ets", "x"])),
        INVALID,
        "predictor.automl_config.candidate_algorithms[1]",
    )
    expect_error(
        lambda: t.CreatePredictor(
            api.CreatePredictorRequest(predictor_id="p", predictor=_predictor("datasetGroups/none"))
        ),
        grpc.StatusCode.NOT_FOUND,
    )
    expect_error(
        lambda: t.CreateForecast(
            api.CreateForecastRequest(forecast_id="f", forecast=training_pb2.Forecast(predictor="predictors/none"))
        ),
        grpc.StatusCode.NOT_FOUND,
    )
    expect_error(
        lambda: t.CreateForecast(
            api.CreateForecastRequest(forecast_id="f", forecast=training_pb2.Forecast(predictor="bad/name"))
        ),
        INVALID,
        "forecast.predictor",
    )
    expect_error(
        lambda: t.GetAccuracyMetrics(api.GetAccuracyMetricsRequest(name="predictors/none")), grpc.StatusCode.NOT_FOUND
    )


@pytest.mark.databases("sqlite", "postgres")
def test_bad_data_fails_the_job_with_a_clear_reason(stubs: Stubs) -> None:
    # 30 days cannot hold a 20-day horizon with 2 backtest windows.
    group = make_forecasting_group(stubs, "short", daily_csv(items=2, days=30))
    done = _train(stubs, "long", _predictor(group, forecast_horizon=20, backtest_windows=2))
    assert done.error.code == INVALID.value[0] and "forecast_horizon" in done.error.message, done.error
    predictor = stubs.training.GetPredictor(api.GetPredictorRequest(name="predictors/long"), timeout=5)
    assert predictor.state == training_pb2.TRAINING_STATE_FAILED and not predictor.artifact_uri
    expect_error(
        lambda: stubs.training.CreateForecast(
            api.CreateForecastRequest(forecast_id="f", forecast=training_pb2.Forecast(predictor=predictor.name))
        ),
        PRECONDITION,
    )

    # The same item twice at the same time is an error that names both.
    data = daily_csv(items=1, days=20, shuffle=False)
    duplicate = data + data.splitlines(keepends=True)[5]
    group = make_forecasting_group(stubs, "dupes", duplicate)
    done = _train(stubs, "dupes", _predictor(group))
    assert done.error.code == PRECONDITION.value[0], done.error
    assert "TIMESTAMP" in done.error.message and "item0" in done.error.message

    # A target that is not a number is refused at import, naming the row and the field.
    bad = b"ITEM_ID,TIMESTAMP,TARGET_VALUE,store\nitem0,2024-01-01,12,north\nitem0,2024-01-02,twelve,north\n"
    datasets = stubs.datasets.ListDatasets(dapi.ListDatasetsRequest(parent=group), timeout=5).datasets
    done = stubs.wait(upload(stubs, datasets[0].name, bad))
    assert done.HasField("error") and "rows[2].TARGET_VALUE" in str(done.error), done.error
    # So is one that would overflow the forecasting models (it failed the predictor job with INTERNAL).
    for huge in (b"1e308", b"-1e308", b"1e16"):
        data = (
            b"ITEM_ID,TIMESTAMP,TARGET_VALUE,store\nitem0,2024-01-01,12,north\nitem0,2024-01-02," + huge + b",north\n"
        )
        done = stubs.wait(upload(stubs, datasets[0].name, data))
        assert done.HasField("error") and "rows[2].TARGET_VALUE" in str(done.error), done.error


@pytest.mark.slow
def test_a_training_predictor_reports_progress_and_can_be_cancelled(stubs: Stubs) -> None:
    group = make_forecasting_group(stubs, "slow", daily_csv(items=4, days=60))
    op = stubs.training.CreatePredictor(
        api.CreatePredictorRequest(
            predictor_id="deep",
            predictor=_predictor(group, algorithm="deepar", hyper_parameters={"epochs": "1000"}),
        ),
        timeout=10,
    )
    deadline = time.monotonic() + 90
    while "epoch" not in _meta(op).counters:
        assert time.monotonic() < deadline and not op.done, f"no epoch progress: {_meta(op)} {op.error}"
        time.sleep(0.1)
        op = stubs.operations.GetOperation(operations_pb2.GetOperationRequest(name=op.name), timeout=5)
    assert 0 < _meta(op).progress_percent < 100
    stubs.operations.CancelOperation(operations_pb2.CancelOperationRequest(name=op.name), timeout=5)
    done = stubs.wait(op, timeout=30)
    assert done.error.code == grpc.StatusCode.CANCELLED.value[0]
    predictor = stubs.training.GetPredictor(api.GetPredictorRequest(name="predictors/deep"), timeout=5)
    assert predictor.state == training_pb2.TRAINING_STATE_CANCELLED and not predictor.artifact_uri


@pytest.mark.slow
def test_deepar_with_related_series_and_metadata_forecasts_a_cold_start_item(stubs: Stubs) -> None:
    group = make_forecasting_group(stubs, "deep", daily_csv(items=6, days=60))
    d = stubs.datasets
    d.CreateSchema(
        dapi.CreateSchemaRequest(
            schema_id="deep-meta",
            schema=dpb.Schema(
                domain=dpb.DOMAIN_FORECASTING,
                fields=[
                    dpb.SchemaField(name="ITEM_ID", type=dpb.FIELD_TYPE_STRING),
                    dpb.SchemaField(name="size", type=dpb.FIELD_TYPE_STRING, categorical=True),
                ],
            ),
        ),
        timeout=5,
    )
    meta = d.CreateDataset(
        dapi.CreateDatasetRequest(
            parent=group,
            dataset_id="meta",
            dataset=dpb.Dataset(dataset_type=dpb.DATASET_TYPE_ITEM_METADATA, schema="schemas/deep-meta"),
        ),
        timeout=5,
    )
    # item0-2 are small (levels 20-40), item3-5 large (50-70); "newbie" has metadata and no history.
    sizes = "ITEM_ID,size\n" + "".join(f"item{i},{'small' if i < 3 else 'large'}\n" for i in range(6))
    done = stubs.wait(upload(stubs, meta.name, (sizes + "newbie,large\n").encode()))
    assert not done.HasField("error"), done.error

    # A known-future covariate for every item, the cold one included, through the forecast horizon.
    d.CreateSchema(
        dapi.CreateSchemaRequest(
            schema_id="deep-related",
            schema=dpb.Schema(
                domain=dpb.DOMAIN_FORECASTING,
                fields=[
                    dpb.SchemaField(name="ITEM_ID", type=dpb.FIELD_TYPE_STRING),
                    dpb.SchemaField(name="TIMESTAMP", type=dpb.FIELD_TYPE_TIMESTAMP),
                    dpb.SchemaField(name="promo", type=dpb.FIELD_TYPE_DOUBLE),
                ],
            ),
        ),
        timeout=5,
    )
    related = d.CreateDataset(
        dapi.CreateDatasetRequest(
            parent=group,
            dataset_id="related",
            dataset=dpb.Dataset(dataset_type=dpb.DATASET_TYPE_RELATED_TIME_SERIES, schema="schemas/deep-related"),
        ),
        timeout=5,
    )
    promo = "ITEM_ID,TIMESTAMP,promo\n" + "".join(
        f"{item},{START + day * DAY},{float(day % 10 == 0)}\n"
        for item in [*(f"item{i}" for i in range(6)), "newbie"]
        for day in range(67)
    )
    done = stubs.wait(upload(stubs, related.name, promo.encode(), chunk=1 << 16))
    assert not done.HasField("error"), done.error

    params = {"epochs": "3", "hidden_size": "16", "num_samples": "50"}
    done = _train(stubs, "deep", _predictor(group, algorithm="deepar", hyper_parameters=params))
    assert not done.HasField("error"), done.error
    accuracy = stubs.training.GetAccuracyMetrics(api.GetAccuracyMetricsRequest(name="predictors/deep"), timeout=5)
    assert [a.algorithm for a in accuracy.algorithms] == ["deepar"] and accuracy.chosen.overall.wape > 0

    done = stubs.wait(
        stubs.training.CreateForecast(
            api.CreateForecastRequest(forecast_id="deep", forecast=training_pb2.Forecast(predictor="predictors/deep")),
            timeout=10,
        ),
        timeout=120,
    )
    assert not done.HasField("error"), done.error
    forecast = stubs.training.GetForecast(api.GetForecastRequest(name="forecasts/deep"), timeout=5)
    assert forecast.series_count == 7
    query = forecast_query_service_pb2_grpc.ForecastQueryServiceStub(stubs.channel)
    answer = query.QueryForecast(
        forecast_query_service_pb2.QueryForecastRequest(forecast=forecast.name, item_id="newbie"), timeout=5
    )
    (series,) = answer.series
    mean = np.array([p.value for p in series.mean])
    low, mid, high = (np.array([p.value for p in q.points]) for q in series.quantiles)
    assert len(mean) == 7 and np.isfinite(mean).all() and (low <= mid).all() and (mid <= high).all()


def test_a_deleted_and_recreated_forecast_is_never_answered_from_the_old_table(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Found: after delete and re-create (from another predictor) QueryForecast kept the old numbers for minutes,
    because both had the same artifact path. Each forecast job writes a path of its own now."""
    monkeypatch.setattr(forecasts_module, "RECHECK_SECONDS", 0.2)
    stubs = start_stubs(Settings(port=0, data_dir=tmp_path / "data"))
    try:
        group = make_forecasting_group(stubs, "sales", daily_csv(items=2, days=40))
        query = forecast_query_service_pb2_grpc.ForecastQueryServiceStub(stubs.channel)

        def mean() -> list[float]:
            answer = query.QueryForecast(
                forecast_query_service_pb2.QueryForecastRequest(forecast="forecasts/next", item_id="item1"), timeout=10
            )
            return [p.value for p in answer.series[0].mean]

        uris = []
        for algorithm in ("seasonal-naive", "naive"):
            done = stubs.wait(
                stubs.training.CreatePredictor(
                    api.CreatePredictorRequest(
                        predictor_id=algorithm,
                        predictor=training_pb2.Predictor(
                            dataset_group=group, algorithm=algorithm, forecast_horizon=7, forecast_frequency="D"
                        ),
                    ),
                    timeout=10,
                ),
                timeout=180,
            )
            assert not done.HasField("error"), done.error
            if uris:
                stubs.training.DeleteForecast(api.DeleteForecastRequest(name="forecasts/next"), timeout=10)
            done = stubs.wait(
                stubs.training.CreateForecast(
                    api.CreateForecastRequest(
                        forecast_id="next", forecast=training_pb2.Forecast(predictor=f"predictors/{algorithm}")
                    ),
                    timeout=10,
                ),
                timeout=180,
            )
            assert not done.HasField("error"), done.error
            uris.append(stubs.training.GetForecast(api.GetForecastRequest(name="forecasts/next")).artifact_uri)
            if algorithm == "seasonal-naive":
                weekly = mean()
                assert len(set(weekly)) > 1  # last week's pattern
        assert uris[0] != uris[1]
        time.sleep(0.3)  # one recheck period
        flat = mean()
        assert len(set(flat)) == 1 and flat != weekly  # the naive forecast repeats the last value
    finally:
        stubs.channel.close()
        stubs.app.stop(None)
