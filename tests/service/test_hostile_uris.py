"""Hostile URIs through every RPC field that takes one, on a real server with two tenants (auth on).

The URI fields are found in the proto descriptors (string fields named *_uri in request messages, walked
recursively, OUTPUT_ONLY ones left out: the server ignores them), so a new one is attacked without touching this
file; it only needs a base request in BASE below. Each attack must be refused on the call itself with
INVALID_ARGUMENT (or PERMISSION_DENIED) naming the field, with nothing read (no planted content in the error or
the logs), nothing written or created, nothing changed.
"""

from __future__ import annotations

import csv
import hashlib
import io
import itertools
import logging
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from google.api import field_behavior_pb2
from google.protobuf.descriptor import Descriptor, FieldDescriptor, MethodDescriptor
from google.protobuf.message import Message
from grpc_status import rpc_status

from foretell.client import Client, operation_response
from foretell.core.settings import Settings
from foretell.runtime.server import App, create_server
from foretell.v1 import (
    dataset_pb2,
    dataset_service_pb2,
    forecast_query_service_pb2,
    recommendation_pb2,
    recommendation_service_pb2,
    training_pb2,
    training_service_pb2,
)

from errors import violations_of
from support import (
    daily_csv,
    interactions_csv,
    make_forecasting_group,
    make_recommendation_group,
    stubs_of,
    upload,
)

KEY_A = "hostile-tenant-a-key-0123456789"
KEY_B = "hostile-tenant-b-key-9876543210"
CANARY = "CANARY-SECRET-7f3a"
FILES = (dataset_service_pb2, recommendation_service_pb2, training_service_pb2, forecast_query_service_pb2)
REFUSED = {grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.PERMISSION_DENIED}


def _uri_fields(message: Descriptor, prefix: str = "", seen: frozenset[str] = frozenset()) -> Iterator[str]:
    for field in message.fields:
        behaviors = field.GetOptions().Extensions[field_behavior_pb2.field_behavior]
        if field_behavior_pb2.OUTPUT_ONLY in behaviors:
            continue
        path = prefix + field.name
        if field.type == FieldDescriptor.TYPE_STRING and field.name.endswith("_uri"):
            yield path
        elif (
            field.type == FieldDescriptor.TYPE_MESSAGE
            and not field.message_type.GetOptions().map_entry
            and field.message_type.full_name not in seen
        ):
            yield from _uri_fields(field.message_type, path + ".", seen | {field.message_type.full_name})


METHODS: list[MethodDescriptor] = [m for f in FILES for s in f.DESCRIPTOR.services_by_name.values() for m in s.methods]
URI_FIELDS = [(m, path) for m in METHODS for path in _uri_fields(m.input_type)]


def test_the_uri_fields_are_found() -> None:
    found = {(m.name, path) for m, path in URI_FIELDS}
    assert {
        ("CreateImportJob", "import_job.source_uri"),
        ("ExportDataset", "destination_uri"),
        ("ExportForecast", "destination_uri"),
        ("CreateBatchInferenceJob", "batch_inference_job.input_uri"),
        ("CreateBatchInferenceJob", "batch_inference_job.output_uri"),
    } <= found


# ---- the world: two tenants, tenant A with data, a model and a forecast ---------------------------------------


@dataclass
class World:
    root: Path  # the one import and export root
    data: Path  # the server's data directory (outside the root)
    outside: Path  # a directory no root holds
    a: Client
    b: Client
    app: App
    interactions: str
    version: str
    forecast: str

    @property
    def area_a(self) -> Path:
        return self.root / "tenant-a"

    @property
    def area_b(self) -> Path:
        return self.root / "tenant-b"


def _keys(path: Path) -> Path:
    digest = hashlib.sha256(KEY_B.encode()).hexdigest()
    path.write_text(
        '{"keys": ['
        f'{{"principal": "tenant-a", "key": "{KEY_A}", "dataset_groups": ["shop-a", "sales-a"]}},'
        f'{{"principal": "tenant-b", "key_sha256": "{digest}", "dataset_groups": ["shop-b"]}}]}}'
    )
    return path


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    tmp = tmp_path_factory.mktemp("hostile").resolve()
    root, data, outside = tmp / "files", tmp / "data", tmp / "outside"
    outside.mkdir()
    settings = Settings(
        port=0, data_dir=data, api_keys_file=_keys(tmp / "keys.json"), import_roots=[root], export_roots=[root]
    )
    app = create_server(settings)
    app.start()
    target = f"127.0.0.1:{app.port}"
    a, b = Client(target, api_key=KEY_A, timeout=20), Client(target, api_key=KEY_B, timeout=20)
    try:
        stubs = stubs_of(a, app)
        group = make_recommendation_group(stubs, "shop-a")
        assert not stubs.wait(upload(stubs, group.interactions, interactions_csv(600, users=30, items=40))).error.code
        a.create_solution("pop-a", group.name, "popularity-count")
        version = operation_response(
            a.wait_operation(a.create_solution_version("solutions/pop-a"), timeout=180), training_pb2.SolutionVersion
        )
        sales = make_forecasting_group(stubs, "sales-a", daily_csv(items=2, days=40))
        predictor = a.training.CreatePredictor(
            training_service_pb2.CreatePredictorRequest(
                predictor_id="naive-a",
                predictor=training_pb2.Predictor(
                    dataset_group=sales, algorithm="naive", forecast_horizon=3, forecast_frequency="D"
                ),
            ),
            timeout=10,
        )
        assert not stubs.wait(predictor, timeout=180).error.code
        forecast = a.training.CreateForecast(
            training_service_pb2.CreateForecastRequest(
                forecast_id="next-a", forecast=training_pb2.Forecast(predictor="predictors/naive-a")
            ),
            timeout=10,
        )
        assert not stubs.wait(forecast, timeout=180).error.code
        world = World(root, data, outside, a, b, app, group.interactions, version.name, "forecasts/next-a")
        _plant(world)
        yield world
    finally:
        a.close()
        b.close()
        app.stop(None)


def _plant(w: World) -> None:
    """Files an attacker would like to read or overwrite, each holding the canary."""
    w.area_a.mkdir(parents=True, exist_ok=True)
    w.area_b.mkdir(parents=True, exist_ok=True)
    (w.outside / "victim.csv").write_text(f"USER_ID,ITEM_ID,TIMESTAMP\n{CANARY},i,1\n")
    (w.area_b / "secret.csv").write_text(f"USER_ID,ITEM_ID,TIMESTAMP\n{CANARY},i,1\n")
    (w.area_a / "existing.csv").write_text(f"{CANARY} keep me\n")
    (w.area_a / "users.jsonl").write_text('{"userId": "u1"}\n')
    (w.area_a / "link.csv").symlink_to(w.outside / "victim.csv")
    (w.area_a / "dangling.csv").symlink_to(w.outside / "not-yet.csv")
    (w.area_a / "linkdir").symlink_to(w.outside, target_is_directory=True)
    os.mkfifo(w.area_a / "fifo.csv")
    uploads = w.data / "artifacts" / "uploads"
    uploads.mkdir(parents=True, exist_ok=True)
    (uploads / "in-flight.csv").write_text(f"USER_ID,ITEM_ID,TIMESTAMP\n{CANARY},i,1\n")


def _server_file(w: World, under: str) -> Path:
    found = sorted(p for p in (w.data / "artifacts" / under).rglob("*") if p.is_file())
    assert found, f"no server file under artifacts/{under}"
    return found[0]


# Each attack: a name and the URI it sends (some relative to tenant A's area, most absolute).
ATTACKS: dict[str, Callable[[World], str]] = {
    "absolute path outside the roots": lambda w: str(w.outside / "victim.csv"),
    "file:// URI outside the roots": lambda w: (w.outside / "victim.csv").as_uri(),
    "'..' out of the area": lambda w: "../tenant-b/secret.csv",
    "'..' in an absolute path": lambda w: f"{w.area_a}/../tenant-b/secret.csv",
    "'..' past the root": lambda w: "../../outside/victim.csv",
    "symlink in the area to a file outside": lambda w: "link.csv",
    "dangling symlink in the area": lambda w: "dangling.csv",
    "symlinked directory in the area": lambda w: "linkdir/victim.csv",
    "/proc/self/environ": lambda w: "/proc/self/environ",
    "/etc/passwd": lambda w: "/etc/passwd",
    "a FIFO in the area": lambda w: "fifo.csv",
    "a device": lambda w: "/dev/zero",
    "another tenant's area": lambda w: str(w.area_b / "secret.csv"),
    "a training snapshot": lambda w: str(_server_file(w, "snapshots")),
    "a training job file": lambda w: str(_server_file(w, "jobs")),
    "an upload being imported": lambda w: str(w.data / "artifacts" / "uploads" / "in-flight.csv"),
    "a model artifact": lambda w: str(_server_file(w, "models")),
    "the SQLite database": lambda w: str(w.data / "foretell.db"),
    "the API keys file": lambda w: str(w.root.parent / "keys.json"),
    "an unknown scheme": lambda w: "http://example.invalid/x.csv",
    "an s3:// bucket that is no root": lambda w: "s3://someone-elses-bucket/x.csv",
}
# Writes only: a file that is already there, in the tenant's own area.
WRITE_ATTACKS: dict[str, Callable[[World], str]] = {
    "overwrite an existing file in the area": lambda w: "existing.csv",
    "overwrite an existing file by absolute path": lambda w: str(w.area_a / "existing.csv"),
}
WRITTEN = {"destination_uri", "output_uri"}
_ids = itertools.count()


def _request(w: World, method: MethodDescriptor, path: str, uri: str) -> Message:
    """A request tenant A could send that works with a good URI, with `uri` at `path`."""
    n = next(_ids)
    base: dict[str, Callable[[], Message]] = {
        "CreateImportJob": lambda: dataset_service_pb2.CreateImportJobRequest(parent=w.interactions),
        "ExportDataset": lambda: dataset_service_pb2.ExportDatasetRequest(name=w.interactions),
        "ExportForecast": lambda: training_service_pb2.ExportForecastRequest(name=w.forecast),
        "CreateBatchInferenceJob": lambda: recommendation_service_pb2.CreateBatchInferenceJobRequest(
            batch_inference_job_id=f"hostile-{n}",
            batch_inference_job=recommendation_pb2.BatchInferenceJob(
                solution_version=w.version, input_uri="users.jsonl", output_uri=f"out-{n}.jsonl"
            ),
        ),
    }
    assert method.name in base, f"a new URI field {method.name}.{path}: add a base request for it here"
    request = base[method.name]()
    *parents, leaf = path.split(".")
    target = request
    for name in parents:
        target = getattr(target, name)
    setattr(target, leaf, uri)
    return request


def _call(w: World, method: MethodDescriptor, request: Message) -> None:
    service = method.containing_service.full_name
    rpc = w.a.channel.unary_unary(
        f"/{service}/{method.name}",
        request_serializer=lambda m: m.SerializeToString(),
        response_deserializer=lambda b: b,
    )
    rpc(request, timeout=20, metadata=(("x-api-key", KEY_A),))


def _state(w: World) -> dict[str, bytes | str]:
    """Every file under the root and the outside directory (content), and what links point at."""
    out: dict[str, bytes | str] = {}
    for top in (w.root, w.outside):
        for path in sorted(top.rglob("*")):
            if path.is_symlink():
                out[str(path)] = f"-> {os.readlink(path)}"
            elif path.is_fifo():
                out[str(path)] = "fifo"
            elif path.is_file():
                out[str(path)] = path.read_bytes()
    for path in (w.data / "foretell.db", w.root.parent / "keys.json"):
        out[str(path)] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


CASES = [
    (method, path, attack)
    for method, path in URI_FIELDS
    for attack in [*ATTACKS, *(WRITE_ATTACKS if path.rsplit(".", 1)[-1] in WRITTEN else ())]
]


@pytest.mark.parametrize(("method", "path", "attack"), CASES, ids=[f"{m.name}.{p}: {a}" for m, p, a in CASES])
def test_a_hostile_uri_is_refused_and_touches_nothing(
    world: World, method: MethodDescriptor, path: str, attack: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    uri = {**ATTACKS, **WRITE_ATTACKS}[attack](world)
    before = _state(world)
    with pytest.raises(grpc.RpcError) as info:
        _call(world, method, _request(world, method, path, uri))
    error = info.value
    assert error.code() in REFUSED, f"{attack}: {error.code()} {error.details()}"
    status = rpc_status.from_call(error)
    assert status is not None
    assert path in violations_of(status), f"{attack}: the error does not name {path}: {error.details()}"
    # Nothing read: no planted content, no line of /etc/passwd or of the environment.
    told = error.details() + "".join(violations_of(status).values()) + caplog.text
    for leaked in (CANARY, "root:x:", "PATH=", KEY_A, KEY_B, "keep me"):
        assert leaked not in told, f"{attack}: {leaked!r} leaked"
    assert _state(world) == before, f"{attack}: a file was written, created or changed"
    if os.environ.get("FORETELL_SHOW_REFUSALS"):
        print(f"\nREFUSAL {method.name}.{path} | {attack} | {error.code().name}: {error.details()}")


# ---- the happy path, in each tenant's own area -------------------------------------------------------------


def _wait(client: Client, operation: object) -> object:
    done = client.wait_operation(operation, timeout=120)  # type: ignore[arg-type]
    assert not done.error.code, done.error
    return done


def test_each_tenant_imports_and_exports_inside_its_own_area(world: World) -> None:
    a, b = world.a, world.b
    (world.area_a / "more.csv").write_bytes(interactions_csv(50, seed=3))
    _wait(
        a,
        a.datasets.CreateImportJob(
            dataset_service_pb2.CreateImportJobRequest(
                parent=world.interactions, import_job=dataset_pb2.ImportJob(source_uri="more.csv")
            )
        ),
    )
    done = _wait(
        a,
        a.datasets.ExportDataset(
            dataset_service_pb2.ExportDatasetRequest(name=world.interactions, destination_uri="exported.csv")
        ),
    )
    job = operation_response(done, dataset_pb2.ExportJob)  # type: ignore[arg-type]
    assert job.destination_uri == (world.area_a / "exported.csv").as_uri()
    assert len((world.area_a / "exported.csv").read_text().splitlines()) == 51
    # The same relative name from tenant B means B's own area, where there is no such file.
    b.create_dataset_group("shop-b", dataset_pb2.DOMAIN_RECOMMENDATION)
    with pytest.raises(grpc.RpcError) as info:
        b.datasets.ExportDataset(
            dataset_service_pb2.ExportDatasetRequest(name=world.interactions, destination_uri="exported.csv")
        )
    assert info.value.code() == grpc.StatusCode.NOT_FOUND  # not B's dataset at all: answered as an absent one
    # A second export to the same name is refused: exports never replace a file.
    with pytest.raises(grpc.RpcError) as info:
        a.datasets.ExportDataset(
            dataset_service_pb2.ExportDatasetRequest(name=world.interactions, destination_uri="exported.csv")
        )
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "already exists" in (info.value.details() or "")


def test_a_uri_import_names_columns_by_number_never_by_their_text(world: World) -> None:
    (world.area_a / "bad-header.csv").write_text(f"USER_ID,ITEM_ID,TIMESTAMP,{CANARY}\nu,i,1,x\n")
    with pytest.raises(grpc.RpcError) as info:
        world.a.datasets.CreateImportJob(
            dataset_service_pb2.CreateImportJobRequest(
                parent=world.interactions, import_job=dataset_pb2.ImportJob(source_uri="bad-header.csv")
            )
        )
    status = rpc_status.from_call(info.value)
    assert status is not None
    assert violations_of(status) == {"import_job.source_uri.header[3]": "column 4 is not in the schema"}
    (world.area_a / "bad-cell.csv").write_text(f"USER_ID,ITEM_ID,TIMESTAMP\nu,i,{CANARY}\n")
    done = world.a.wait_operation(
        world.a.datasets.CreateImportJob(
            dataset_service_pb2.CreateImportJobRequest(
                parent=world.interactions, import_job=dataset_pb2.ImportJob(source_uri="bad-cell.csv")
            )
        ),
        timeout=60,
    )
    assert done.error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert "rows[1].TIMESTAMP" in done.error.message and CANARY not in str(done.error)


def test_forecast_export_and_batch_inference_write_new_files_in_the_area(world: World) -> None:
    a = world.a
    done = _wait(
        a,
        a.training.ExportForecast(
            training_service_pb2.ExportForecastRequest(name=world.forecast, destination_uri="next.csv")
        ),
    )
    exported = operation_response(done, training_service_pb2.ExportForecastResponse)  # type: ignore[arg-type]
    assert exported.destination_uri == (world.area_a / "next.csv").as_uri()
    assert len(list(csv.DictReader(io.StringIO((world.area_a / "next.csv").read_text())))) == 2 * 3
    _wait(
        a,
        a.recommendations.CreateBatchInferenceJob(
            recommendation_service_pb2.CreateBatchInferenceJobRequest(
                batch_inference_job_id="happy-batch",
                batch_inference_job=recommendation_pb2.BatchInferenceJob(
                    solution_version=world.version, input_uri="users.jsonl", output_uri="batch-out.jsonl"
                ),
            )
        ),
    )
    lines = (world.area_a / "batch-out.jsonl").read_text().splitlines()
    assert len(lines) == 1 and '"u1"' in lines[0]


# ---- authentication off, a root that holds the server's data directory -------------------------------------


def test_with_auth_off_a_root_holding_the_data_dir_still_keeps_the_servers_files_out(tmp_path: Path) -> None:
    from foretell.core.errors import InvalidArgument
    from foretell.core.file_roots import FileRoots

    data = tmp_path / "data"
    (data / "artifacts" / "snapshots" / "g" / "s1").mkdir(parents=True)
    (data / "artifacts" / "jobs").mkdir(parents=True)
    (data / "foretell.db").write_text(CANARY)
    (data / "artifacts" / "snapshots" / "g" / "s1" / "interactions.csv").write_text(CANARY)
    roots = FileRoots(Settings(data_dir=data, import_roots=[tmp_path], export_roots=[tmp_path]))
    for uri in ("data/foretell.db", str(data / "foretell.db-wal"), "data/artifacts/jobs/spec.json"):
        with pytest.raises(InvalidArgument, match="server's own files"):
            roots.destination(uri, "destination_uri")
    snapshot = data / "artifacts" / "snapshots" / "g" / "s1" / "interactions.csv"
    for uri in (str(snapshot), "data/artifacts/snapshots/g/s1/interactions.csv"):
        with pytest.raises(InvalidArgument):
            roots.source(uri, "import_job.source_uri")
    # Snapshots are the training service's lists of Parquet parts now: nobody exports into the artifact area.
    for uri in (str(snapshot.with_name("items.csv")), "data/artifacts/snapshots/g/s1/items.csv"):
        with pytest.raises(InvalidArgument, match="server's own files"):
            roots.destination(uri, "destination_uri")
    assert (data / "foretell.db").read_text() == CANARY and snapshot.read_text() == CANARY
