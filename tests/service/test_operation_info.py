"""Every long-running RPC says what its Operation carries (google.longrunning.operation_info), and says it truly.

The RPCs come from the descriptors, so a new RPC returning an Operation is covered (and fails here until it is
annotated and has a request below). The server's operations are then run for real, once each, and what they
pack is compared with what the annotation names, which is what clients now read instead of hard-coding it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from google.longrunning import operations_pb2
from google.protobuf.descriptor import MethodDescriptor
from google.protobuf.message import Message

from foretell.client import operation_response, operation_types
from foretell.core.settings import Settings
from foretell.v1 import (
    common_pb2,
    dataset_pb2,
    dataset_service_pb2,
    forecast_query_service_pb2,
    recommendation_pb2,
    recommendation_service_pb2,
    training_pb2,
    training_service_pb2,
)

from support import Stubs, daily_csv, interactions_csv, make_forecasting_group, make_recommendation_group, start_stubs

FILES = (dataset_service_pb2, recommendation_service_pb2, training_service_pb2, forecast_query_service_pb2)
OPERATION = operations_pb2.Operation.DESCRIPTOR.full_name
LONG_RUNNING = [
    m
    for f in FILES
    for s in f.DESCRIPTOR.services_by_name.values()
    for m in s.methods
    if m.output_type.full_name == OPERATION
]


def test_the_descriptors_have_long_running_rpcs() -> None:
    assert len(LONG_RUNNING) >= 10, [m.full_name for m in LONG_RUNNING]


@pytest.mark.parametrize("method", LONG_RUNNING, ids=[m.full_name for m in LONG_RUNNING])
def test_every_long_running_rpc_names_existing_types(method: MethodDescriptor) -> None:
    info = method.GetOptions().Extensions[operations_pb2.operation_info]
    assert info.response_type and info.metadata_type, f"{method.full_name} lacks google.longrunning.operation_info"
    types = operation_types(method)  # resolves both names in the descriptor pool, or raises
    assert types.response.DESCRIPTOR.full_name in (info.response_type, f"foretell.v1.{info.response_type}")
    assert types.metadata is common_pb2.OperationMetadata, "every Foretell operation reports OperationMetadata"


# ---- what the server packs -------------------------------------------------------------------------------

GROUP, SALES = "datasetGroups/oi-shop", "datasetGroups/oi-sales"


def _wait(stubs: Stubs, operation: operations_pb2.Operation) -> operations_pb2.Operation:
    done = stubs.wait(operation, timeout=120)
    assert not done.HasField("error"), done.error
    return done


def _run_every_long_running_rpc(stubs: Stubs, tmp: Path) -> dict[str, operations_pb2.Operation]:
    """One finished operation per long-running RPC, keyed by the RPC's full name (cheap recipes and data)."""
    d, t, r = stubs.datasets, stubs.training, stubs.recommendations
    group = make_recommendation_group(stubs, "oi-shop")
    ran: dict[str, operations_pb2.Operation] = {}

    def run(method: str, call: Callable[[], operations_pb2.Operation]) -> operations_pb2.Operation:
        ran[method] = _wait(stubs, call())
        return ran[method]

    data = interactions_csv(300, seed=3)

    def upload() -> Iterator[dataset_service_pb2.ImportDataRequest]:
        yield dataset_service_pb2.ImportDataRequest(
            config=dataset_service_pb2.ImportDataConfig(dataset=group.interactions)
        )
        yield dataset_service_pb2.ImportDataRequest(chunk=data)

    run("foretell.v1.DatasetService.ImportData", lambda: d.ImportData(upload(), timeout=30))
    (tmp / "more.csv").write_bytes(interactions_csv(50, seed=4))
    run(
        "foretell.v1.DatasetService.CreateImportJob",
        lambda: d.CreateImportJob(
            dataset_service_pb2.CreateImportJobRequest(
                parent=group.interactions,
                import_job=dataset_pb2.ImportJob(
                    source_uri=(tmp / "more.csv").as_uri(), import_mode=dataset_pb2.IMPORT_MODE_INCREMENTAL
                ),
            ),
            timeout=10,
        ),
    )
    run(
        "foretell.v1.DatasetService.ExportDataset",
        lambda: d.ExportDataset(dataset_service_pb2.ExportDatasetRequest(name=group.interactions), timeout=10),
    )
    t.CreateSolution(
        training_service_pb2.CreateSolutionRequest(
            solution_id="oi-pop", solution=training_pb2.Solution(dataset_group=GROUP, recipe="popularity-count")
        ),
        timeout=10,
    )
    trained = run(
        "foretell.v1.TrainingService.CreateSolutionVersion",
        lambda: t.CreateSolutionVersion(
            training_service_pb2.CreateSolutionVersionRequest(parent="solutions/oi-pop"), timeout=10
        ),
    )
    version = operation_response(trained, training_pb2.SolutionVersion).name
    campaign = recommendation_pb2.Campaign(solution_version=version)
    run(
        "foretell.v1.RecommendationService.CreateCampaign",
        lambda: r.CreateCampaign(
            recommendation_service_pb2.CreateCampaignRequest(campaign_id="oi-pop", campaign=campaign), timeout=10
        ),
    )
    changed = recommendation_pb2.Campaign(name="campaigns/oi-pop", enable_metadata_with_recommendations=True)
    run(
        "foretell.v1.RecommendationService.UpdateCampaign",
        lambda: r.UpdateCampaign(
            recommendation_service_pb2.UpdateCampaignRequest(
                campaign=changed, update_mask={"paths": ["enable_metadata_with_recommendations"]}
            ),
            timeout=10,
        ),
    )
    (tmp / "users.jsonl").write_text('{"userId": "u1"}\n')
    job = recommendation_pb2.BatchInferenceJob(
        solution_version=version, input_uri=(tmp / "users.jsonl").as_uri(), num_results=3
    )
    run(
        "foretell.v1.RecommendationService.CreateBatchInferenceJob",
        lambda: r.CreateBatchInferenceJob(
            recommendation_service_pb2.CreateBatchInferenceJobRequest(
                batch_inference_job_id="oi-batch", batch_inference_job=job
            ),
            timeout=10,
        ),
    )
    make_forecasting_group(stubs, "oi-sales", daily_csv(items=2, days=35))
    predictor = training_pb2.Predictor(
        dataset_group=SALES, algorithm="seasonal-naive", forecast_horizon=7, forecast_frequency="D"
    )
    run(
        "foretell.v1.TrainingService.CreatePredictor",
        lambda: t.CreatePredictor(
            training_service_pb2.CreatePredictorRequest(predictor_id="oi-daily", predictor=predictor), timeout=10
        ),
    )
    forecast = training_pb2.Forecast(predictor="predictors/oi-daily")
    run(
        "foretell.v1.TrainingService.CreateForecast",
        lambda: t.CreateForecast(
            training_service_pb2.CreateForecastRequest(forecast_id="oi-next", forecast=forecast), timeout=10
        ),
    )
    run(
        "foretell.v1.TrainingService.ExportForecast",
        lambda: t.ExportForecast(training_service_pb2.ExportForecastRequest(name="forecasts/oi-next"), timeout=10),
    )
    return ran


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, operations_pb2.Operation]]:
    tmp = tmp_path_factory.mktemp("operation-info")
    settings = Settings(
        port=0, data_dir=tmp / "data", import_batch_rows=500, training_workers=1, import_roots=[tmp], export_roots=[tmp]
    )
    stubs = start_stubs(settings)
    try:
        yield _run_every_long_running_rpc(stubs, tmp)
    finally:
        stubs.channel.close()
        stubs.app.stop(None)


def test_every_long_running_rpc_was_run(finished: dict[str, operations_pb2.Operation]) -> None:
    assert sorted(finished) == sorted(m.full_name for m in LONG_RUNNING), "add the new RPC's request above"


@pytest.mark.parametrize("method", LONG_RUNNING, ids=[m.full_name for m in LONG_RUNNING])
def test_the_server_packs_what_the_annotation_names(
    finished: dict[str, operations_pb2.Operation], method: MethodDescriptor
) -> None:
    operation = finished[method.full_name]
    types = operation_types(method)
    assert operation.response.Is(types.response.DESCRIPTOR), (operation.response.type_url, types.response)
    assert operation.metadata.Is(types.metadata.DESCRIPTOR), (operation.metadata.type_url, types.metadata)
    # What a client gets when it asks by the RPC alone, as the ergonomic client now does.
    result: Any = operation_response(operation, method.full_name)
    assert isinstance(result, types.response) and isinstance(result, Message)
