"""The production storage pair end to end: PostgreSQL for metadata and events, an S3-compatible store
(moto's standalone server) for every finished artifact (`FORETELL_ARTIFACT_URI=s3://...`).

Training publishes models, predictors, forecasts and exports to the bucket and keeps no local copy;
recommendation and forecast-query read them back from the bucket alone: a server restarted on an
empty artifact cache still serves the campaign and the forecast."""

from __future__ import annotations

import csv
import io
import json
import shutil
from pathlib import Path
from typing import Any

import grpc
import pytest

from foretell.core.artifact_store import MARKER
from foretell.core.settings import Settings
from foretell.v1 import forecast_query_service_pb2, forecast_query_service_pb2_grpc, training_pb2
from foretell.v1 import recommendation_pb2 as rpb
from foretell.v1 import recommendation_service_pb2 as rapi
from foretell.v1 import training_service_pb2 as api

from support import Stubs, daily_csv, interactions_csv, make_forecasting_group, make_recommendation_group, start_stubs
from support import upload as upload_csv


@pytest.fixture
def settings(tmp_path: Path, pg_url: str, endpoint: str, bucket: str) -> Settings:
    return Settings(
        port=0,
        data_dir=tmp_path / "data",
        database_url=pg_url,
        artifact_uri=f"s3://{bucket}/foretell/",
        s3_endpoint_url=endpoint,
        s3_region="us-east-1",
        # The caller's file areas (auth off: the roots themselves) are prefixes of the same bucket.
        import_roots=[f"s3://{bucket}/in"],
        export_roots=[f"s3://{bucket}/out", f"s3://{bucket}/exports"],
    )


def keys(raw: Any, bucket: str, prefix: str) -> set[str]:
    pages = raw.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    return {o["Key"] for page in pages for o in page.get("Contents", [])}


def _ok(stubs: Stubs, operation: Any, timeout: float = 240) -> Any:
    done = stubs.wait(operation, timeout=timeout)
    assert not done.HasField("error"), done.error
    return done


def _train_version(
    stubs: Stubs, solution: str, mode: int = training_pb2.TRAINING_MODE_FULL
) -> training_pb2.SolutionVersion:
    done = _ok(
        stubs,
        stubs.training.CreateSolutionVersion(
            api.CreateSolutionVersionRequest(parent=solution, training_mode=mode), timeout=10
        ),
    )
    version = training_pb2.SolutionVersion()
    done.response.Unpack(version)
    return version


def test_models_are_published_to_s3_served_from_it_and_deleted_from_it(
    stubs: Stubs, settings: Settings, raw: Any, bucket: str
) -> None:
    group = make_recommendation_group(stubs)
    _ok(stubs, upload_csv(stubs, group.interactions, interactions_csv(2000, users=40, items=80)), 60)
    stubs.training.CreateSolution(
        api.CreateSolutionRequest(
            solution_id="ease", solution=training_pb2.Solution(dataset_group=group.name, recipe="ease")
        ),
        timeout=10,
    )
    first = _train_version(stubs, "solutions/ease")
    prefix = f"foretell/models/{first.name}"
    assert first.artifact_uri == f"s3://{bucket}/{prefix}"
    assert f"{prefix}/{MARKER}" in keys(raw, bucket, prefix)
    # Published means moved: no model is left in the local artifact directory.
    assert not any(p.is_file() for p in (settings.artifacts / "models").rglob("*"))

    # UPDATE reads the previous model back from the bucket.
    second = _train_version(stubs, "solutions/ease", training_pb2.TRAINING_MODE_UPDATE)
    assert second.artifact_uri.startswith(f"s3://{bucket}/foretell/models/solutions/ease/versions/")

    done = _ok(
        stubs,
        stubs.recommendations.CreateCampaign(
            rapi.CreateCampaignRequest(campaign_id="shop", campaign=rpb.Campaign(solution_version=second.name)),
            timeout=10,
        ),
        120,
    )
    assert done.done
    answer = stubs.recommendations.GetRecommendations(
        rapi.GetRecommendationsRequest(campaign="campaigns/shop", user_id="u1", num_results=5), timeout=10
    )
    assert len(answer.item_list) == 5

    # Batch inference reads its input from and writes its output to the bucket.
    raw.put_object(Bucket=bucket, Key="in/users.jsonl", Body=b'{"userId": "u1"}\n{"itemId": "i2"}\n')
    _ok(
        stubs,
        stubs.recommendations.CreateBatchInferenceJob(
            rapi.CreateBatchInferenceJobRequest(
                batch_inference_job_id="b1",
                batch_inference_job=rpb.BatchInferenceJob(
                    solution_version=second.name,
                    input_uri=f"s3://{bucket}/in/users.jsonl",
                    output_uri=f"s3://{bucket}/out/b1.jsonl",
                    num_results=3,
                ),
            ),
            timeout=10,
        ),
        60,
    )
    lines = [json.loads(x) for x in raw.get_object(Bucket=bucket, Key="out/b1.jsonl")["Body"].read().splitlines()]
    assert [line["input"] for line in lines] == [{"userId": "u1"}, {"itemId": "i2"}]
    assert all(len(line["output"]["recommendedItems"]) == 3 for line in lines)

    # A restarted server with an empty artifact cache loads the campaign from the bucket alone.
    stubs.channel.close()
    stubs.app.stop(None)
    shutil.rmtree(settings.artifacts / "cache")
    again = start_stubs(settings)
    try:
        answer = again.recommendations.GetRecommendations(
            rapi.GetRecommendationsRequest(campaign="campaigns/shop", user_id="u1", num_results=5), timeout=10
        )
        assert len(answer.item_list) == 5

        again.training.DeleteSolutionVersion(api.DeleteSolutionVersionRequest(name=first.name), timeout=10)
        assert keys(raw, bucket, prefix) == set()
        assert keys(raw, bucket, second.artifact_uri.split("/", 3)[3])  # the other version stays
    finally:
        again.channel.close()
        again.app.stop(None)


def test_predictors_forecasts_and_exports_live_in_s3(stubs: Stubs, settings: Settings, raw: Any, bucket: str) -> None:
    group = make_forecasting_group(stubs, "sales", daily_csv(items=4, days=60))
    _ok(
        stubs,
        stubs.training.CreatePredictor(
            api.CreatePredictorRequest(
                predictor_id="weekly",
                predictor=training_pb2.Predictor(
                    dataset_group=group, algorithm="seasonal-naive", forecast_horizon=7, forecast_frequency="D"
                ),
            ),
            timeout=10,
        ),
    )
    predictor = stubs.training.GetPredictor(api.GetPredictorRequest(name="predictors/weekly"), timeout=5)
    # One prefix per training job: a deleted and re-created namesake never shares it.
    assert predictor.artifact_uri.startswith(f"s3://{bucket}/foretell/predictors/weekly/")
    items = stubs.training.ListItemAccuracies(api.ListItemAccuraciesRequest(parent=predictor.name), timeout=5)
    assert sorted(a.item_id for a in items.item_accuracies) == ["item0", "item1", "item2", "item3"]

    _ok(
        stubs,
        stubs.training.CreateForecast(
            api.CreateForecastRequest(forecast_id="next", forecast=training_pb2.Forecast(predictor=predictor.name)),
            timeout=10,
        ),
    )
    forecast = stubs.training.GetForecast(api.GetForecastRequest(name="forecasts/next"), timeout=5)
    assert forecast.artifact_uri.startswith(f"s3://{bucket}/foretell/forecasts/next/")
    assert not any(p.is_file() for p in (settings.artifacts / "forecasts").rglob("*"))
    query = forecast_query_service_pb2_grpc.ForecastQueryServiceStub(stubs.channel)
    answer = query.QueryForecast(
        forecast_query_service_pb2.QueryForecastRequest(forecast=forecast.name, item_id="item2"), timeout=10
    )
    (series,) = answer.series
    assert len(series.mean) == 7 and all(len(q.points) == 7 for q in series.quantiles)

    done = _ok(
        stubs,
        stubs.training.ExportForecast(
            api.ExportForecastRequest(name=forecast.name, destination_uri=f"s3://{bucket}/exports/next.csv"),
            timeout=10,
        ),
    )
    exported = api.ExportForecastResponse()
    done.response.Unpack(exported)
    body = raw.get_object(Bucket=bucket, Key="exports/next.csv")["Body"].read().decode()
    rows = list(csv.DictReader(io.StringIO(body)))
    assert len(rows) == exported.rows_exported == 4 * 7
    default = _ok(stubs, stubs.training.ExportForecast(api.ExportForecastRequest(name=forecast.name), timeout=10))
    default.response.Unpack(exported)
    assert exported.destination_uri.startswith(f"s3://{bucket}/foretell/exports/next/")

    stubs.training.DeleteForecast(api.DeleteForecastRequest(name=forecast.name), timeout=10)
    stubs.training.DeletePredictor(api.DeletePredictorRequest(name=predictor.name), timeout=10)
    assert keys(raw, bucket, "foretell/forecasts/") == set()
    assert keys(raw, bucket, "foretell/predictors/") == set()


def test_imports_read_csv_and_parquet_from_s3_and_parts_live_there(stubs: Stubs, raw: Any, bucket: str) -> None:
    import io

    import pyarrow as pa
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    from foretell.v1 import dataset_pb2 as dpb
    from foretell.v1 import dataset_service_pb2 as dapi

    group = make_recommendation_group(stubs)
    data = interactions_csv(300, users=20, items=40)
    raw.put_object(Bucket=bucket, Key="in/events.csv", Body=data)
    as_parquet = io.BytesIO()
    pq.write_table(
        pacsv.read_csv(io.BytesIO(data), convert_options=pacsv.ConvertOptions(strings_can_be_null=True)), as_parquet
    )
    raw.put_object(Bucket=bucket, Key="in/events.parquet", Body=as_parquet.getvalue())

    def import_from(key: str, mode: int) -> None:
        _ok(
            stubs,
            stubs.datasets.CreateImportJob(
                dapi.CreateImportJobRequest(
                    parent=group.interactions,
                    import_job=dpb.ImportJob(source_uri=f"s3://{bucket}/in/{key}", import_mode=mode),
                ),
                timeout=10,
            ),
            60,
        )

    import_from("events.csv", dpb.IMPORT_MODE_FULL)
    import_from("events.parquet", dpb.IMPORT_MODE_INCREMENTAL)
    count = stubs.datasets.GetDataset(dapi.GetDatasetRequest(name=group.interactions), timeout=5).row_count
    assert count == 600
    parts = [k for k in keys(raw, bucket, "foretell/data/") if k.endswith(".parquet")]
    assert len(parts) == 2, parts
    stored = pa.concat_tables(
        [pq.read_table(io.BytesIO(raw.get_object(Bucket=bucket, Key=k)["Body"].read())) for k in parts]
    )
    assert stored.num_rows == 600 and stored.schema.field("TIMESTAMP").type == pa.int64()
    # A missing object is the caller's error, named by field, before any job starts.
    with pytest.raises(grpc.RpcError) as info:
        stubs.datasets.CreateImportJob(
            dapi.CreateImportJobRequest(
                parent=group.interactions, import_job=dpb.ImportJob(source_uri=f"s3://{bucket}/in/missing.csv")
            ),
            timeout=10,
        )
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "import_job.source_uri" in info.value.details()
