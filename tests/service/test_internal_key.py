"""The internal key is a credential for services, not for people, and no RPC or log line gives it away
(issue 14, "Secrets"); log lines quote nothing from a caller's files.

- Every RPC in the proto descriptors (foretell.v1 and google.longrunning), called with the internal key, is
  refused unless core/internal_calls.py lists it; the services run apart call exactly the listed methods.
- Through a whole training and serving flow of separate servers, the key shows in no log record and no error;
  /proc/self/environ and the keys file are refused as import, export and batch URIs, for an admin key too.
- A secret planted in an imported file (upload stream and URI) that fails to import shows in no log record.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest
from google.longrunning import operations_pb2, operations_pb2_grpc
from google.protobuf import message_factory
from pydantic import SecretStr

from foretell.client import Client, ForetellError, operation_response
from foretell.client._auth import MetadataInterceptor
from foretell.core import auth, logs, tenancy
from foretell.core.internal_calls import INTERNAL_METHODS, PREVIOUS_RELEASE_METHODS
from foretell.core.peers import Peers
from foretell.core.settings import ServiceName, Settings
from foretell.runtime.server import App, create_server
from foretell.training.snapshot import take_snapshot
from foretell.v1 import dataset_pb2 as dpb
from foretell.v1 import dataset_service_pb2 as dapi
from foretell.v1 import (
    dataset_service_pb2_grpc,
    forecast_query_service_pb2,
    forecast_query_service_pb2_grpc,
    training_pb2,
    training_service_pb2_grpc,
)
from foretell.v1 import recommendation_pb2 as rpb
from foretell.v1 import recommendation_service_pb2 as rapi

from support import (
    daily_csv,
    interactions_csv,
    make_forecast,
    make_forecasting_group,
    make_recommendation_group,
    rpc_methods,
    send,
    stubs_of,
    upload,
)

DENIED = grpc.StatusCode.PERMISSION_DENIED
INTERNAL_KEY = "internal-key-for-services-only-0123456789"
KEY_A = "tenant-a-key-0123456789abcdef"
KEY_B = "tenant-b-key-fedcba9876543210"
KEY_ADMIN = "admin-key-aabbccddeeff00112233"


METHODS = rpc_methods()


def write_keys(path: Path) -> Path:
    path.write_text(
        json.dumps(
            {
                "keys": [
                    {"principal": "tenant-a", "key": KEY_A, "dataset_groups": ["shop-a", "sales-a"]},
                    {"principal": "tenant-b", "key": KEY_B, "dataset_groups": ["shop-b"]},
                    {"principal": "admin", "tenant": "tenant-a", "key": KEY_ADMIN, "dataset_groups": ["*"]},
                ]
            }
        )
    )
    return path


# ---- one server, every method --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path, App]]:
    directory = tmp_path_factory.mktemp("internal")
    settings = Settings(
        port=0,
        data_dir=directory / "data",
        api_keys_file=write_keys(directory / "keys.json"),
        internal_api_key=SecretStr(INTERNAL_KEY),
    )
    app = create_server(settings)
    app.start()
    try:
        yield f"127.0.0.1:{app.port}", settings.data_dir, app
    finally:
        app.stop(None)


def test_every_listed_method_exists() -> None:
    listed = INTERNAL_METHODS | PREVIOUS_RELEASE_METHODS
    assert set(METHODS) >= listed, sorted(listed - set(METHODS))


@pytest.mark.parametrize("rpc", sorted(METHODS))
def test_the_internal_key_is_refused_every_method_no_service_calls(server: tuple[str, Path, App], rpc: str) -> None:
    method = METHODS[rpc]
    request = message_factory.GetMessageClass(method.input_type)()
    with Client(server[0], bearer_token=INTERNAL_KEY, timeout=5) as internal:
        try:
            send(internal.channel, method, request)
            code, details = grpc.StatusCode.OK, ""
        except grpc.RpcError as exc:
            code, details = exc.code(), str(exc.details())
    assert INTERNAL_KEY not in details
    if rpc in INTERNAL_METHODS | PREVIOUS_RELEASE_METHODS:
        # Allowed through: the empty request is the handler's to judge (INVALID_ARGUMENT, NOT_FOUND...).
        assert code not in (DENIED, grpc.StatusCode.UNAUTHENTICATED), f"{rpc}: {code} {details}"
    else:
        assert code == DENIED, f"{rpc}: the internal key got {code} {details}"


def internal_client(target: str, tenant: str) -> Client:
    """A client with the internal key, acting for `tenant` as a peer service does (core/tenancy.HEADER)."""
    client = Client(target, bearer_token=INTERNAL_KEY, timeout=10)
    client.channel = grpc.intercept_channel(client.channel, MetadataInterceptor([(tenancy.HEADER, tenant)]))
    client.datasets = dataset_service_pb2_grpc.DatasetServiceStub(client.channel)
    client.training = training_service_pb2_grpc.TrainingServiceStub(client.channel)
    client.operations = operations_pb2_grpc.OperationsStub(client.channel)
    return client


def test_a_leaked_internal_key_lists_and_changes_nothing(server: tuple[str, Path, App]) -> None:
    target = server[0]
    with (
        Client(target, bearer_token=KEY_ADMIN, timeout=10) as admin,
        internal_client(target, "tenant-a") as internal,
    ):
        group = make_recommendation_group(stubs_of(admin, server[2]), "shop-a")
        imported = upload(stubs_of(admin, server[2]), group.interactions, interactions_csv(50))
        refused = [
            lambda: internal.datasets.ListDatasetGroups(dapi.ListDatasetGroupsRequest(), timeout=5),
            lambda: internal.datasets.DeleteDatasetGroup(dapi.DeleteDatasetGroupRequest(name=group.name), timeout=5),
            lambda: internal.create_solution("x", group.name, "popularity-count"),
            lambda: internal.operations.ListOperations(operations_pb2.ListOperationsRequest(), timeout=5),
            # An operation that is no snapshot export: peers never follow one.
            lambda: internal.operations.GetOperation(operations_pb2.GetOperationRequest(name=imported.name), timeout=5),
            lambda: internal.operations.CancelOperation(
                operations_pb2.CancelOperationRequest(name=imported.name), timeout=5
            ),
        ]
        for call in refused:
            with pytest.raises(Exception) as info:
                call()
            code = getattr(info.value, "code", None)
            code = code() if callable(code) else code
            assert code == DENIED, info.value
        # An admin key handed to a person keeps its power.
        assert group.name in [
            g.name for g in admin.datasets.ListDatasetGroups(dapi.ListDatasetGroupsRequest()).dataset_groups
        ]
        # Peers no longer export (snapshots are SnapshotDataset's file lists): the internal key may not export.
        for destination in ("", (server[1] / "files" / "admin" / "x.csv").as_uri(), "a/b.csv"):
            with pytest.raises(grpc.RpcError) as info:
                internal.datasets.ExportDataset(
                    dapi.ExportDatasetRequest(name=group.interactions, destination_uri=destination), timeout=5
                )
            assert info.value.code() == DENIED, info.value.details()


# ---- a planted secret in a file that fails to import ---------------------------------------------------

PLANTED = "planted-secret-7f3a9c1e"


def _failing_files() -> dict[str, bytes]:
    header = b"USER_ID,ITEM_ID,TIMESTAMP,EVENT_TYPE,EVENT_VALUE,DEVICE\n"
    return {
        "column.csv": f"USER_ID,ITEM_ID,TIMESTAMP,{PLANTED}\nu1,i1,1700000000,x\n".encode(),
        "value.csv": header + f"u1,i1,{PLANTED},click,,web\n".encode(),
        "number.csv": header + f"u1,i1,1700000000,click,{PLANTED},web\n".encode(),
        "binary.csv": header + b"u1,\xff\xfe" + PLANTED.encode() + b",1700000000,click,,web\n",
        "quote.csv": header + f'u1,"i1{PLANTED},1700000000,click,,web\n'.encode(),
        "nul.csv": header + f"u1,i1\x00{PLANTED},1700000000,click,,web\n".encode(),
    }


def test_a_secret_in_a_file_that_fails_to_import_is_in_no_log_line(
    server: tuple[str, Path, App], caplog: pytest.LogCaptureFixture
) -> None:
    target, data_dir, app = server
    caplog.set_level(logging.DEBUG)
    area = data_dir / "files" / "tenant-a"
    area.mkdir(parents=True, exist_ok=True)
    answers = []
    with Client(target, api_key=KEY_A, timeout=20) as a:
        stubs = stubs_of(a, app)
        try:
            dataset = "datasetGroups/shop-a/datasets/interactions"
            a.datasets.GetDataset(dapi.GetDatasetRequest(name=dataset), timeout=5)
        except grpc.RpcError:
            dataset = make_recommendation_group(stubs, "shop-a").interactions
        for name, data in _failing_files().items():
            (area / name).write_bytes(data)
            for start in (
                lambda data=data: upload(stubs, dataset, data),
                lambda name=name: a.datasets.CreateImportJob(
                    dapi.CreateImportJobRequest(parent=dataset, import_job=dpb.ImportJob(source_uri=name)), timeout=10
                ),
            ):
                try:
                    done = stubs.wait(start())
                    answers.append(f"{name}: {done.error.code} {done.error.message}")
                except grpc.RpcError as exc:
                    answers.append(f"{name}: {exc.code()} {exc.details()}")
    assert sum(PLANTED in answer for answer in answers) >= 2, answers  # the owner is told what is wrong
    records = [r for r in caplog.records if r.name.startswith("foretell")]
    assert any(r.getMessage() == "rejected" or r.levelno >= logging.WARNING for r in records) or answers
    formatter = logs.JsonFormatter()
    text = "\n".join(f"{formatter.format(r)} {r.__dict__}" for r in records)
    assert PLANTED not in text


# ---- services apart: exactly the allowlist, and the key nowhere -----------------------------------------


def _code(call: Callable[[], object]) -> tuple[grpc.StatusCode, str]:
    try:
        call()
    except grpc.RpcError as exc:
        return exc.code(), str(exc.details())
    except ForetellError as exc:  # the client's helpers raise its own error
        return exc.code, str(exc)
    return grpc.StatusCode.OK, ""


def test_services_apart_call_exactly_the_allowlist_and_never_show_the_internal_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    # What /proc/self/environ would show, were it readable.
    monkeypatch.setenv("FORETELL_INTERNAL_API_KEY", INTERNAL_KEY)
    called: set[str] = set()
    permit = auth.AuthInterceptor.permit

    def recording(self: auth.AuthInterceptor, principal: auth.Principal, method: str) -> object:
        if principal.name == auth.INTERNAL_PRINCIPAL:
            called.add(method)
        return permit(self, principal, method)

    monkeypatch.setattr(auth.AuthInterceptor, "permit", recording)
    keys = write_keys(tmp_path / "keys.json")
    apps: list[App] = []
    settings: dict[str, Settings] = {}

    def start(name: str, services: list[ServiceName], **targets: str) -> str:
        settings[name] = Settings(
            port=0,
            data_dir=tmp_path / name,
            artifact_dir=tmp_path / "artifacts",  # one shared volume, as in k8s/
            api_keys_file=keys,
            internal_api_key=SecretStr(INTERNAL_KEY),
            **targets,
        )
        app = create_server(settings[name], services)
        app.start()
        apps.append(app)
        return f"127.0.0.1:{app.port}"

    errors: list[str] = []
    clients: list[Client] = []

    def client(target: str, key: str) -> Client:
        made = Client(target, api_key=key, timeout=30)
        clients.append(made)
        return made

    try:
        dataset = start("dataset", ["dataset"])
        training = start("training", ["training"], dataset_target=dataset)
        recommendation = start("recommendation", ["recommendation"], dataset_target=dataset, training_target=training)
        query = start("query", ["forecast-query"], training_target=training)
        data, train, rec = client(dataset, KEY_A), client(training, KEY_A), client(recommendation, KEY_A)
        data_stubs = stubs_of(data, apps[0])
        group = make_recommendation_group(data_stubs, "shop-a")
        assert not data_stubs.wait(upload(data_stubs, group.interactions, interactions_csv(400, users=20))).HasField(
            "error"
        )
        train.create_solution("pop-a", group.name, "popularity-count")
        operation = train.create_solution_version("solutions/pop-a")
        version = operation_response(train.wait_operation(operation, timeout=180), training_pb2.SolutionVersion)
        campaign = rec.create_campaign("rec-a", version.name, timeout=120)
        rec.recommendations.CreateFilter(
            rapi.CreateFilterRequest(
                filter_id="only-a",
                filter=rpb.Filter(
                    dataset_group=group.name, filter_expression='EXCLUDE ItemID WHERE Items.GENRES IN ("x")'
                ),
            ),
            timeout=10,
        )
        area = settings["recommendation"].data_dir / "files" / "tenant-a"
        area.mkdir(parents=True, exist_ok=True)
        (area / "users.jsonl").write_text('{"userId": "u1"}\n')
        rec_stubs = stubs_of(rec, apps[2])
        batch = rec_stubs.wait(
            rec.recommendations.CreateBatchInferenceJob(
                rapi.CreateBatchInferenceJobRequest(
                    batch_inference_job_id="batch-a",
                    batch_inference_job=rpb.BatchInferenceJob(
                        solution_version=version.name, input_uri="users.jsonl", num_results=2
                    ),
                ),
                timeout=10,
            ),
            timeout=120,
        )
        assert not batch.HasField("error"), batch.error
        assert rec.get_recommendations(campaign.name, user_id="u1", num_results=3).item_list
        sales = make_forecasting_group(data_stubs, "sales-a", daily_csv(items=2, days=40))
        train_stubs = stubs_of(train, apps[1])
        make_forecast(train_stubs, sales, "naive-a", "next-a")
        with Client(query, api_key=KEY_A, timeout=30) as asker:
            answer = forecast_query_service_pb2_grpc.ForecastQueryServiceStub(asker.channel).QueryForecast(
                forecast_query_service_pb2.QueryForecastRequest(forecast="forecasts/next-a", item_id="item0"),
                timeout=30,
            )
            assert answer.ByteSize()

        # A training job cancelled while it takes its snapshot stops there (training/snapshot.py).
        peers = Peers(settings["training"], training)
        try:
            with pytest.raises(Exception, match="cancelled"), tenancy.acting_as("tenant-a"):
                take_snapshot(
                    peers.channel("dataset"), group.name, tmp_path / "artifacts" / "snapshots" / "probe", lambda: True
                )
        finally:
            peers.close()

        # The keys file and the environment, through every URI, for a tenant and for an admin key.
        secrets_files = ["/proc/self/environ", "file:///proc/self/environ", str(keys), f"file://{keys}"]
        for key in (KEY_A, KEY_ADMIN):
            d = client(dataset, key)
            r = client(recommendation, key)
            for uri in secrets_files:
                for call in (
                    lambda d=d, uri=uri: d.datasets.CreateImportJob(
                        dapi.CreateImportJobRequest(
                            parent=group.interactions, import_job=dpb.ImportJob(source_uri=uri)
                        ),
                        timeout=10,
                    ),
                    lambda d=d, uri=uri: d.datasets.ExportDataset(
                        dapi.ExportDatasetRequest(name=group.interactions, destination_uri=uri), timeout=10
                    ),
                    lambda r=r, uri=uri: r.recommendations.CreateBatchInferenceJob(
                        rapi.CreateBatchInferenceJobRequest(
                            batch_inference_job=rpb.BatchInferenceJob(
                                solution_version=version.name, input_uri=uri, output_uri="out.jsonl", num_results=1
                            )
                        ),
                        timeout=10,
                    ),
                ):
                    code, details = _code(call)
                    assert code == grpc.StatusCode.INVALID_ARGUMENT, f"{uri}: {code} {details}"
                    errors.append(details)
        # Another tenant, a wrong key: the answers the key could hide in.
        b_rec = client(recommendation, KEY_B)
        errors.append(_code(lambda: b_rec.get_campaign(campaign.name))[1])
        errors.append(
            _code(
                lambda: Client(dataset, api_key=INTERNAL_KEY[::-1]).datasets.ListDatasetGroups(
                    dapi.ListDatasetGroupsRequest(), timeout=5
                )
            )[1]
        )
        for stub_client in (data, train, rec):
            listed = stub_client.operations.ListOperations(operations_pb2.ListOperationsRequest(), timeout=10)
            errors.extend(op.error.message for op in listed.operations)
    finally:
        for made in clients:
            made.close()
        for app in reversed(apps):
            app.stop(None)

    assert called == INTERNAL_METHODS, (
        f"called but not listed: {sorted(called - INTERNAL_METHODS)}; listed but never called: "
        f"{sorted(INTERNAL_METHODS - called)}"
    )
    records = [r for r in caplog.records if r.name.startswith("foretell")]
    assert any(r.name == "foretell.rpc" for r in records), "the servers' logs were not captured"
    formatter = logs.JsonFormatter()
    text = "\n".join(f"{formatter.format(r)} {r.__dict__}" for r in records)
    assert INTERNAL_KEY not in text
    assert INTERNAL_KEY not in "\n".join(errors)
    assert "FORETELL_INTERNAL_API_KEY" not in "\n".join(errors)
    assert not any(repr(s).find(INTERNAL_KEY) >= 0 for s in settings.values())
