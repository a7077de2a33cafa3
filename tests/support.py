"""Test helpers: start a real server and stubs, make synthetic data (imported by tests and conftest)."""

from __future__ import annotations

import csv
import importlib
import io
import math
import pkgutil
import random
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import numpy as np
from google.longrunning import operations_pb2, operations_pb2_grpc
from google.protobuf import message_factory
from google.protobuf.descriptor import MethodDescriptor
from google.protobuf.message import Message

import foretell.v1
from foretell.core.settings import Settings
from foretell.runtime.server import App, create_server
from foretell.v1 import dataset_pb2 as pb
from foretell.v1 import dataset_service_pb2 as api
from foretell.v1 import dataset_service_pb2_grpc, recommendation_service_pb2_grpc, training_service_pb2_grpc


@dataclass
class Stubs:
    channel: grpc.Channel
    datasets: dataset_service_pb2_grpc.DatasetServiceStub
    operations: operations_pb2_grpc.OperationsStub
    app: App
    training: training_service_pb2_grpc.TrainingServiceStub
    recommendations: recommendation_service_pb2_grpc.RecommendationServiceStub

    def wait(self, operation: operations_pb2.Operation, timeout: float = 60) -> operations_pb2.Operation:
        deadline = time.monotonic() + timeout
        while not operation.done:
            assert time.monotonic() < deadline, f"operation {operation.name} did not finish"
            time.sleep(0.02)
            operation = self.operations.GetOperation(operations_pb2.GetOperationRequest(name=operation.name), timeout=5)
        return operation


def stubs_of(client: Any, app: App) -> Stubs:
    """The stubs of a `foretell.client.Client` (its channel sends its key), as Stubs for the helpers here."""
    return Stubs(client.channel, client.datasets, client.operations, app, client.training, client.recommendations)


def start_stubs(settings: Settings) -> Stubs:
    app = create_server(settings)
    app.start()
    channel = grpc.insecure_channel(f"127.0.0.1:{app.port}")
    return Stubs(
        channel,
        dataset_service_pb2_grpc.DatasetServiceStub(channel),
        operations_pb2_grpc.OperationsStub(channel),
        app,
        training_service_pb2_grpc.TrainingServiceStub(channel),
        recommendation_service_pb2_grpc.RecommendationServiceStub(channel),
    )


def stopped(proc: subprocess.Popen[str], timeout: float = 30) -> int:
    """SIGTERM, then the exit code; a process still running after `timeout` fails the test with its output (a stop
    that overruns its grace dumps its threads' stacks there, runtime/main.py)."""
    proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        try:  # whether SIGTERM is pending, blocked, ignored or caught, and what the process is doing
            status = [
                line
                for line in Path(f"/proc/{proc.pid}/status").read_text().splitlines()
                if line.startswith(("Sig", "ShdPnd", "State", "Threads"))
            ]
        except OSError:
            status = []
        proc.kill()
        output = proc.communicate()[0] or ""
        raise AssertionError(
            f"still running {timeout:.0f} s after SIGTERM ({status}); its output:\n{output[-20_000:]}"
        ) from None


# ---- synthetic data -------------------------------------------------------------------

INTERACTION_FIELDS = [
    pb.SchemaField(name="USER_ID", type=pb.FIELD_TYPE_STRING),
    pb.SchemaField(name="ITEM_ID", type=pb.FIELD_TYPE_STRING),
    pb.SchemaField(name="TIMESTAMP", type=pb.FIELD_TYPE_LONG),
    pb.SchemaField(name="EVENT_TYPE", type=pb.FIELD_TYPE_STRING, nullable=True),
    pb.SchemaField(name="EVENT_VALUE", type=pb.FIELD_TYPE_FLOAT, nullable=True),
    pb.SchemaField(name="DEVICE", type=pb.FIELD_TYPE_STRING, nullable=True, categorical=True),
]
ITEM_FIELDS = [
    pb.SchemaField(name="ITEM_ID", type=pb.FIELD_TYPE_STRING),
    pb.SchemaField(name="GENRES", type=pb.FIELD_TYPE_STRING, categorical=True),
    pb.SchemaField(name="PRICE", type=pb.FIELD_TYPE_DOUBLE, nullable=True),
    pb.SchemaField(name="CREATION_TIMESTAMP", type=pb.FIELD_TYPE_LONG, nullable=True),
]


def interactions_csv(rows: int, seed: int = 0, users: int = 50, items: int = 200) -> bytes:
    rng = random.Random(seed)
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["USER_ID", "ITEM_ID", "TIMESTAMP", "EVENT_TYPE", "EVENT_VALUE", "DEVICE"])
    for i in range(rows):
        writer.writerow(
            [
                f"u{rng.randrange(users)}",
                f"i{rng.randrange(items)}",
                1_700_000_000 + i,
                rng.choice(["click", "watch"]),
                rng.choice(["", f"{rng.uniform(1, 5):.1f}"]),
                rng.choice(["", "mobile", "web"]),
            ]
        )
    return out.getvalue().encode()


def upload(
    stubs: Stubs, dataset: str, data: bytes, mode: int = pb.IMPORT_MODE_FULL, chunk: int = 1000, request_id: str = ""
) -> operations_pb2.Operation:
    def messages() -> Iterator[api.ImportDataRequest]:
        yield api.ImportDataRequest(
            config=api.ImportDataConfig(dataset=dataset, import_mode=mode, request_id=request_id)
        )
        for start in range(0, len(data), chunk):
            yield api.ImportDataRequest(chunk=data[start : start + chunk])

    return stubs.datasets.ImportData(messages(), timeout=30)


@dataclass
class Group:
    name: str
    interactions: str
    items: str


def make_recommendation_group(stubs: Stubs, group_id: str = "shop") -> Group:
    d = stubs.datasets
    group = d.CreateDatasetGroup(
        api.CreateDatasetGroupRequest(
            dataset_group_id=group_id, dataset_group=pb.DatasetGroup(domain=pb.DOMAIN_RECOMMENDATION)
        ),
        timeout=5,
    )
    d.CreateSchema(
        api.CreateSchemaRequest(
            schema_id=f"{group_id}-interactions",
            schema=pb.Schema(domain=pb.DOMAIN_RECOMMENDATION, fields=INTERACTION_FIELDS),
        ),
        timeout=5,
    )
    d.CreateSchema(
        api.CreateSchemaRequest(
            schema_id=f"{group_id}-items", schema=pb.Schema(domain=pb.DOMAIN_RECOMMENDATION, fields=ITEM_FIELDS)
        ),
        timeout=5,
    )
    inter = d.CreateDataset(
        api.CreateDatasetRequest(
            parent=group.name,
            dataset_id="interactions",
            dataset=pb.Dataset(dataset_type=pb.DATASET_TYPE_INTERACTIONS, schema=f"schemas/{group_id}-interactions"),
        ),
        timeout=5,
    )
    items = d.CreateDataset(
        api.CreateDatasetRequest(
            parent=group.name,
            dataset_id="items",
            dataset=pb.Dataset(dataset_type=pb.DATASET_TYPE_ITEMS, schema=f"schemas/{group_id}-items"),
        ),
        timeout=5,
    )
    return Group(group.name, inter.name, items.name)


# ---- forecasting ------------------------------------------------------------------------

DAY = 86_400
START = 1_700_006_400  # 2023-11-15 00:00 UTC
TARGET_FIELDS = [
    pb.SchemaField(name="ITEM_ID", type=pb.FIELD_TYPE_STRING),
    pb.SchemaField(name="TIMESTAMP", type=pb.FIELD_TYPE_TIMESTAMP),
    pb.SchemaField(name="TARGET_VALUE", type=pb.FIELD_TYPE_DOUBLE),
    pb.SchemaField(name="store", type=pb.FIELD_TYPE_STRING),
]


def daily_csv(items: int = 6, days: int = 120, seed: int = 0, shuffle: bool = True) -> bytes:
    """Weekly-seasonal daily sales with a level per item, rows in random order (order must not matter)."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(items):
        level = 20.0 + 10 * i
        for d in range(days):
            value = level * (1 + 0.4 * math.sin(2 * math.pi * d / 7)) + rng.normal(0, 1.5)
            rows.append([f"item{i}", _iso(START + d * DAY), f"{value:.3f}", "north" if i % 2 else "south"])
    if shuffle:
        rng.shuffle(rows)
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["ITEM_ID", "TIMESTAMP", "TARGET_VALUE", "store"])
    writer.writerows(rows)
    return out.getvalue().encode()


def _iso(epoch: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))


def make_forecasting_group(stubs: Stubs, group_id: str, data: bytes) -> str:
    d = stubs.datasets
    group = d.CreateDatasetGroup(
        api.CreateDatasetGroupRequest(
            dataset_group_id=group_id, dataset_group=pb.DatasetGroup(domain=pb.DOMAIN_FORECASTING)
        ),
        timeout=5,
    )
    d.CreateSchema(
        api.CreateSchemaRequest(
            schema_id=f"{group_id}-target", schema=pb.Schema(domain=pb.DOMAIN_FORECASTING, fields=TARGET_FIELDS)
        ),
        timeout=5,
    )
    dataset = d.CreateDataset(
        api.CreateDatasetRequest(
            parent=group.name,
            dataset_id="sales",
            dataset=pb.Dataset(dataset_type=pb.DATASET_TYPE_TARGET_TIME_SERIES, schema=f"schemas/{group_id}-target"),
        ),
        timeout=5,
    )
    done = stubs.wait(upload(stubs, dataset.name, data, chunk=1 << 16))
    assert not done.HasField("error"), done.error
    return str(group.name)


# ---- the contract -----------------------------------------------------------------------


def send(channel: grpc.Channel, method: MethodDescriptor, request: Message, timeout: float = 5) -> Message:
    """Calls any RPC by its descriptor: a client stream sends `request` alone, a server stream's first answer
    comes back."""
    path = f"/{method.containing_service.full_name}/{method.name}"
    response = message_factory.GetMessageClass(method.output_type).FromString
    kind = {(False, False): "unary_unary", (False, True): "unary_stream", (True, False): "stream_unary"}[
        (method.client_streaming, method.server_streaming)
    ]
    call = getattr(channel, kind)(path, request_serializer=_serialize, response_deserializer=response)
    if method.client_streaming:
        return call(iter([request]), timeout=timeout)
    if method.server_streaming:
        return next(iter(call(request, timeout=timeout)))
    return call(request, timeout=timeout)


def _serialize(message: Message) -> bytes:
    return message.SerializeToString()


def rpc_methods() -> dict[str, MethodDescriptor]:
    """Every RPC of every generated foretell.v1 module and of google.longrunning.Operations, by full name
    ("/package.Service/Method"): tests generated from it cover a new RPC or service without being touched."""
    files = [operations_pb2.DESCRIPTOR]
    for module in pkgutil.iter_modules(foretell.v1.__path__):
        if module.name.endswith("_pb2"):
            files.append(importlib.import_module(f"foretell.v1.{module.name}").DESCRIPTOR)
    return {
        f"/{service.full_name}/{method.name}": method
        for file in files
        for service in file.services_by_name.values()
        for method in service.methods
    }


def make_forecast(stubs: Stubs, group: str, predictor_id: str, forecast_id: str) -> tuple[str, str]:
    """A seasonal-naive daily predictor (horizon 7) on forecasting group `group`, then its forecast: their names."""
    from foretell.v1 import training_pb2
    from foretell.v1 import training_service_pb2 as tapi

    predictor = stubs.training.CreatePredictor(
        tapi.CreatePredictorRequest(
            predictor_id=predictor_id,
            predictor=training_pb2.Predictor(
                dataset_group=group, algorithm="seasonal-naive", forecast_horizon=7, forecast_frequency="D"
            ),
        ),
        timeout=10,
    )
    assert not stubs.wait(predictor, timeout=180).HasField("error")
    forecast = stubs.training.CreateForecast(
        tapi.CreateForecastRequest(
            forecast_id=forecast_id, forecast=training_pb2.Forecast(predictor=f"predictors/{predictor_id}")
        ),
        timeout=10,
    )
    assert not stubs.wait(forecast, timeout=180).HasField("error")
    return f"predictors/{predictor_id}", f"forecasts/{forecast_id}"
