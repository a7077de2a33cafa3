"""Security over real servers on port 0: TLS and mutual TLS (throwaway CAs made with `cryptography`),
API keys and bearer tokens, per-dataset-group authorization between two tenants, no key in any log,
and request size limits."""

from __future__ import annotations

import datetime
import hashlib
import ipaddress
import json
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from click.testing import CliRunner
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from google.longrunning import operations_pb2
from google.protobuf import message_factory
from google.protobuf.descriptor import FieldDescriptor, MethodDescriptor
from google.protobuf.message import Message
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from pydantic import SecretStr

from foretell.cli.main import cli
from foretell.client import Client, ForetellError, operation_response
from foretell.core import auth
from foretell.core.settings import ServiceName, Settings
from foretell.runtime.server import App, create_server
from foretell.v1 import dataset_pb2 as dpb
from foretell.v1 import dataset_service_pb2 as dapi
from foretell.v1 import (
    forecast_query_service_pb2,
    training_pb2,
)
from foretell.v1 import recommendation_pb2 as rpb
from foretell.v1 import recommendation_service_pb2 as rapi
from foretell.v1 import training_service_pb2 as tapi

from errors import expect_error, reason_of, violations_of
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

UNAVAILABLE = grpc.StatusCode.UNAVAILABLE
UNAUTHENTICATED = grpc.StatusCode.UNAUTHENTICATED
DENIED = grpc.StatusCode.PERMISSION_DENIED
ABSENT = grpc.StatusCode.NOT_FOUND  # another tenant's resource answers as an absent one


def expect_code(call: Callable[[], object], code: grpc.StatusCode) -> str:
    """Runs `call` (a raw stub or a Client helper) and returns the error message, asserting its code."""
    try:
        call()
    except ForetellError as error:
        assert error.code == code, f"expected {code}, got {error}"
        return error.message
    except grpc.RpcError as error:
        assert error.code() == code, f"expected {code}, got {error.code()}: {error.details()}"
        return error.details() or ""
    raise AssertionError(f"expected {code}, the call succeeded")


# ---- a throwaway PKI ------------------------------------------------------------------------------


@dataclass
class Pki:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    stranger_cert: Path  # a client certificate from another CA
    stranger_key: Path


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _certificate(
    subject: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: x509.Name,
    issuer_key: ec.EllipticCurvePrivateKey,
    *,
    ca: bool = False,
    usages: list[x509.ObjectIdentifier] | None = None,
    sans: list[x509.GeneralName] | None = None,
) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if ca:
        builder = builder.add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
        )
    if usages:
        builder = builder.add_extension(x509.ExtendedKeyUsage(usages), critical=False)
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def _write(directory: Path, stem: str, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> tuple[Path, Path]:
    cert_path, key_path = directory / f"{stem}.crt", directory / f"{stem}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return cert_path, key_path


def make_pki(directory: Path) -> Pki:
    directory.mkdir(parents=True, exist_ok=True)
    ca_key, other_key = _key(), _key()
    ca = _certificate("foretell test CA", ca_key, _name("foretell test CA"), ca_key, ca=True)
    other = _certificate("another CA", other_key, _name("another CA"), other_key, ca=True)
    ca_path, _ = _write(directory, "ca", ca, ca_key)
    server_key = _key()
    # Server and client use: under mutual TLS the services present it on their peer channels.
    server = _certificate(
        "foretell",
        server_key,
        ca.subject,
        ca_key,
        usages=[ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH],
        sans=[x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))],
    )
    server_cert, server_key_path = _write(directory, "server", server, server_key)
    client_key, stranger_key = _key(), _key()
    client = _certificate("tenant-a", client_key, ca.subject, ca_key, usages=[ExtendedKeyUsageOID.CLIENT_AUTH])
    stranger = _certificate(
        "stranger", stranger_key, other.subject, other_key, usages=[ExtendedKeyUsageOID.CLIENT_AUTH]
    )
    client_cert, client_key_path = _write(directory, "client", client, client_key)
    stranger_cert, stranger_key_path = _write(directory, "stranger", stranger, stranger_key)
    return Pki(ca_path, server_cert, server_key_path, client_cert, client_key_path, stranger_cert, stranger_key_path)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture
def running(request: pytest.FixtureRequest) -> Iterator[list[App]]:
    apps: list[App] = []
    yield apps
    for app in apps:
        app.stop(None)


def _start(apps: list[App], settings: Settings) -> str:
    app = create_server(settings)
    app.start()
    apps.append(app)
    return f"127.0.0.1:{app.port}"


def _list_groups(client: Client) -> list[str]:
    response = client.datasets.ListDatasetGroups(dapi.ListDatasetGroupsRequest(), timeout=5)
    return [g.name for g in response.dataset_groups]


def _create_solution_through_peers(client: Client) -> None:
    """CreateSolution checks the group with DatasetService.GetDatasetGroup on the peer channel."""
    client.create_dataset_group("tls-shop", dpb.DOMAIN_RECOMMENDATION)
    solution = client.create_solution("tls-pop", "datasetGroups/tls-shop", "popularity-count")
    assert solution.dataset_group == "datasetGroups/tls-shop"


# ---- TLS -----------------------------------------------------------------------------------------


def test_tls_serves_tls_clients_and_peer_calls_and_refuses_plaintext(
    tmp_path: Path, pki: Pki, running: list[App]
) -> None:
    settings = Settings(
        port=0, data_dir=tmp_path / "d", tls_cert_file=pki.server_cert, tls_key_file=pki.server_key, tls_ca_file=pki.ca
    )
    target = _start(running, settings)
    with Client(target, root_certificates=pki.ca, timeout=10) as client:
        assert _list_groups(client) == []
        _create_solution_through_peers(client)
    with Client(target, timeout=3) as plain:
        expect_code(lambda: _list_groups(plain), UNAVAILABLE)
    # A client that does not trust the issuing CA (system roots only) refuses the server.
    with Client(target, tls=True, timeout=3) as untrusting:
        expect_code(lambda: _list_groups(untrusting), UNAVAILABLE)


def test_mutual_tls_requires_a_client_certificate_from_the_configured_ca(
    tmp_path: Path, pki: Pki, running: list[App]
) -> None:
    target = _start(
        running,
        Settings(
            port=0,
            data_dir=tmp_path / "d",
            tls_cert_file=pki.server_cert,
            tls_key_file=pki.server_key,
            tls_client_ca_file=pki.ca,
            tls_ca_file=pki.ca,
        ),
    )
    with Client(
        target,
        root_certificates=pki.ca,
        certificate_chain=pki.client_cert,
        private_key=pki.client_key,
        timeout=10,
    ) as client:
        assert _list_groups(client) == []
        _create_solution_through_peers(client)  # the peer channel presents the service's certificate
    with Client(target, root_certificates=pki.ca, timeout=3) as no_cert:
        expect_code(lambda: _list_groups(no_cert), UNAVAILABLE)
    with Client(
        target,
        root_certificates=pki.ca.read_bytes(),
        certificate_chain=pki.stranger_cert.read_bytes(),
        private_key=pki.stranger_key.read_bytes(),
        timeout=3,
    ) as stranger:
        expect_code(lambda: _list_groups(stranger), UNAVAILABLE)
    with Client(target, timeout=3) as plain:
        expect_code(lambda: _list_groups(plain), UNAVAILABLE)
    files = ["--ca-file", str(pki.ca), "--cert-file", str(pki.client_cert), "--key-file", str(pki.client_key)]
    listed = CliRunner().invoke(cli, ["--target", target, *files, "dataset-group", "list"], prog_name="foretell")
    assert listed.exit_code == 0 and "datasetGroups/tls-shop" in listed.stdout, listed.output
    refused = CliRunner().invoke(
        cli, ["--target", target, "--timeout", "3", "--ca-file", str(pki.ca), "dataset-group", "list"]
    )
    assert refused.exit_code == 1 and "UNAVAILABLE" in refused.output


def test_tls_settings_are_checked_at_start(tmp_path: Path, pki: Pki) -> None:
    with pytest.raises(ValueError, match="tls_cert_file and tls_key_file go together"):
        Settings(port=0, data_dir=tmp_path, tls_cert_file=pki.server_cert)
    with pytest.raises(ValueError, match="need tls_cert_file"):
        Settings(port=0, data_dir=tmp_path, tls_client_ca_file=pki.ca)
    missing = Settings(port=0, data_dir=tmp_path, tls_cert_file=tmp_path / "none.crt", tls_key_file=pki.server_key)
    with pytest.raises(SystemExit, match="cannot read the TLS certificate"):
        create_server(missing)


# ---- API keys -------------------------------------------------------------------------------------

KEY_A = "tenant-a-key-0123456789abcdef"
KEY_B = "tenant-b-key-fedcba9876543210"
TOKEN_READER = "reader-token-00112233445566778899"
KEY_ADMIN = "admin-key-aabbccddeeff00112233"
SECRETS = (KEY_A, KEY_B, TOKEN_READER, KEY_ADMIN)


def write_keys(path: Path) -> Path:
    path.write_text(
        json.dumps(
            {
                "keys": [
                    {"principal": "tenant-a", "key": KEY_A, "dataset_groups": ["shop-a", "datasetGroups/sales-a"]},
                    {
                        "principal": "tenant-b",
                        "key_sha256": hashlib.sha256(KEY_B.encode()).hexdigest(),
                        "dataset_groups": ["shop-b", "sales-b"],
                    },
                    {
                        "principal": "reader-a",
                        "tenant": "tenant-a",
                        "key": TOKEN_READER,
                        "dataset_groups": ["shop-a"],
                        "read_only": True,
                    },
                    {"principal": "admin", "tenant": "tenant-a", "key": KEY_ADMIN, "dataset_groups": ["*"]},
                ]
            }
        )
    )
    return path


@dataclass
class Tenants:
    target: str
    a: Client
    b: Client
    reader: Client
    admin: Client
    anonymous: Client
    app: App
    # tenant A's resources, made end to end
    shop: str
    interactions: str
    version: str
    campaign: str
    filter: str
    predictor: str
    forecast: str
    train_operation: str
    sales: str
    items: str
    import_job: str
    export_job: str
    batch_job: str
    directory: Path


@pytest.fixture(scope="module")
def tenants(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Tenants]:
    """Tenant A imports, trains a popularity-count model, deploys it, trains a seasonal-naive predictor
    and forecasts, all with its own key; tenant B has groups of its own."""
    directory = tmp_path_factory.mktemp("tenants")
    settings = Settings(port=0, data_dir=directory / "data", api_keys_file=write_keys(directory / "keys.json"))
    app = create_server(settings)
    app.start()
    target = f"127.0.0.1:{app.port}"
    a = Client(target, api_key=KEY_A, timeout=20)
    b = Client(target, api_key=KEY_B, timeout=20)
    reader = Client(target, bearer_token=TOKEN_READER, timeout=20)
    admin = Client(target, bearer_token=KEY_ADMIN, timeout=20)
    anonymous = Client(target, timeout=20)
    try:
        stubs = stubs_of(a, app)
        group = make_recommendation_group(stubs, "shop-a")
        done = stubs.wait(upload(stubs, group.interactions, interactions_csv(800, users=30, items=40)))
        assert not done.HasField("error"), done.error
        a.create_solution("pop-a", group.name, "popularity-count")
        operation = a.create_solution_version("solutions/pop-a")
        version = operation_response(a.wait_operation(operation, timeout=180), training_pb2.SolutionVersion)
        campaign = a.create_campaign("rec-a", version.name, timeout=120)
        flt = a.recommendations.CreateFilter(
            rapi.CreateFilterRequest(
                filter_id="only-a",
                filter=rpb.Filter(
                    dataset_group=group.name, filter_expression='EXCLUDE ItemID WHERE Items.GENRES IN ("x")'
                ),
            ),
            timeout=10,
        )
        sales = make_forecasting_group(stubs, "sales-a", daily_csv(items=3, days=60))
        make_forecast(stubs, sales, "naive-a", "next-a")
        import_job = dpb.ImportJob()
        assert done.response.Unpack(import_job)
        exported = stubs.wait(
            a.datasets.ExportDataset(
                # Paths are relative to the caller's own file area (docs/security.md).
                dapi.ExportDatasetRequest(name=group.interactions, destination_uri="a-export.csv"),
                timeout=10,
            )
        )
        export_job = dpb.ExportJob()
        assert not exported.HasField("error") and exported.response.Unpack(export_job), exported.error
        area = settings.data_dir / "files" / "tenant-a"
        area.mkdir(parents=True, exist_ok=True)
        (area / "users.jsonl").write_text('{"userId": "u1"}\n')
        batch = stubs.wait(
            a.recommendations.CreateBatchInferenceJob(
                rapi.CreateBatchInferenceJobRequest(
                    batch_inference_job_id="batch-a",
                    batch_inference_job=rpb.BatchInferenceJob(
                        solution_version=version.name, input_uri="users.jsonl", num_results=2
                    ),
                ),
                timeout=10,
            )
        )
        batch_job = rpb.BatchInferenceJob()
        assert not batch.HasField("error") and batch.response.Unpack(batch_job), batch.error
        b.create_dataset_group("shop-b", dpb.DOMAIN_RECOMMENDATION)
        yield Tenants(
            target,
            a,
            b,
            reader,
            admin,
            anonymous,
            app,
            group.name,
            group.interactions,
            version.name,
            campaign.name,
            flt.name,
            "predictors/naive-a",
            "forecasts/next-a",
            operation.name,
            sales,
            group.items,
            import_job.name,
            export_job.name,
            batch_job.name,
            directory,
        )
    finally:
        for client in (a, b, reader, admin, anonymous):
            client.close()
        app.stop(None)


def test_the_owner_works_end_to_end(tenants: Tenants) -> None:
    a = tenants.a
    items = a.get_recommendations(tenants.campaign, user_id="u1", num_results=5).item_list
    assert len(items) == 5
    answer = a.forecast_query.QueryForecast(
        forecast_query_service_pb2.QueryForecastRequest(forecast=tenants.forecast, item_id="item1"), timeout=10
    )
    (series,) = answer.series
    assert len(series.mean) == 7
    assert a.get_operation(tenants.train_operation).done
    assert set(_list_groups(a)) == {tenants.shop, "datasetGroups/sales-a"}
    # An all-groups key sees every group of its own tenant, and no other tenant's.
    assert set(_list_groups(tenants.admin)) == {tenants.shop, "datasetGroups/sales-a"}


def test_missing_wrong_and_malformed_credentials_are_unauthenticated(tenants: Tenants) -> None:
    status = expect_error(lambda: _list_groups(tenants.anonymous), UNAUTHENTICATED)
    assert reason_of(status) == "UNAUTHENTICATED"
    with Client(tenants.target, api_key="not-a-key-at-all-0000", timeout=5) as wrong:
        expect_error(lambda: _list_groups(wrong), UNAUTHENTICATED)
    with Client(tenants.target, bearer_token=KEY_A + "x", timeout=5) as wrong:
        expect_error(lambda: _list_groups(wrong), UNAUTHENTICATED)
    with Client(tenants.target, timeout=5) as basic:
        expect_error(
            lambda: basic.datasets.ListDatasetGroups(
                dapi.ListDatasetGroupsRequest(), metadata=[("authorization", f"Basic {KEY_A}")], timeout=5
            ),
            UNAUTHENTICATED,
        )
    # The same key works as a bearer token.
    with Client(tenants.target, bearer_token=KEY_A, timeout=5) as bearer:
        assert tenants.shop in _list_groups(bearer)


def test_the_cli_sends_the_api_key_from_the_environment(tenants: Tenants) -> None:
    command = ["--target", tenants.target, "dataset-group", "list"]
    listed = CliRunner(env={"FORETELL_API_KEY": KEY_B}).invoke(cli, command, prog_name="foretell")
    assert listed.exit_code == 0 and "datasetGroups/shop-b" in listed.stdout and "shop-a" not in listed.stdout
    refused = CliRunner(env={"FORETELL_API_KEY": ""}).invoke(cli, command, prog_name="foretell")
    assert refused.exit_code == 1 and "UNAUTHENTICATED" in refused.output


def test_health_and_reflection_stay_open(tenants: Tenants) -> None:
    channel = tenants.anonymous.channel
    health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
    assert health.status == health_pb2.HealthCheckResponse.SERVING
    answers = reflection_pb2_grpc.ServerReflectionStub(channel).ServerReflectionInfo(
        iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=5
    )
    services = {s.name for answer in answers for s in answer.list_services_response.service}
    assert "foretell.v1.DatasetService" in services


# ---- another tenant, through every RPC of the contract -------------------------------------------
# The RPCs come from the generated descriptors, so a new RPC is covered without touching this file. Each request
# names tenant A's resources wherever a field refers to a resource (by the field's name, or for `name`/`parent`
# by the method's resource), with plausible values elsewhere, and is sent with tenant B's key.

METHODS = {f"{m.containing_service.name}.{m.name}": m for m in rpc_methods().values()}
VERBS = ("Create", "Get", "List", "Delete", "Update", "Cancel", "Wait", "Export", "Import", "Put", "Watch", "Query", "Snapshot")
READS = ("Get", "List", "Query", "Watch", "Wait")
# Reference fields of foretell.v1 messages -> the kind of resource they name.
REFERENCES = {
    "dataset_group": "DatasetGroup",
    "dataset_group_id": "DatasetGroupId",  # taking another tenant's group id
    "dataset": "Dataset",
    "schema": "Schema",
    "solution_version": "SolutionVersion",
    "campaign": "Campaign",
    "filter": "Filter",
    "predictor": "Predictor",
    "forecast": "Forecast",
}
# What `name` of these methods' requests names, where it is not the resource in the method's own name.
NAME_OF = {"SolutionMetrics": "SolutionVersion", "AccuracyMetrics": "Predictor", "Data": "Dataset"}
PARENT_OF = {
    "Dataset": "DatasetGroup",
    "ImportJob": "Dataset",
    "ExportJob": "Dataset",
    "SolutionVersion": "Solution",
    "ItemAccuracy": "Predictor",
}
SHARED: set[str] = set()  # nothing is shared between tenants, schemas included (docs/security.md)
PLAUSIBLE: dict[str, object] = {
    "user_id": "u1",
    "item_id": "i1",
    "session_id": "s1",
    "event_type": "click",
    "input_list": "i1",
    "recipe": "popularity-count",
    "algorithm": "seasonal-naive",
    "forecast_frequency": "D",
    "filter_expression": 'EXCLUDE ItemID WHERE Items.GENRES IN ("x")',
    "forecast_horizon": 7,
    "num_results": 2,
    "page_size": 10,
}


def _noun(method: str) -> str:
    verb = next(v for v in VERBS if method.startswith(v))
    noun = method.removeprefix(verb)
    if verb == "List":
        noun = noun[:-3] + "y" if noun.endswith("ies") else noun.removesuffix("s")
    return noun


class _Owner:
    """Tenant A's resources by kind, and which of them a request was made to name."""

    def __init__(self, t: Tenants, method: MethodDescriptor) -> None:
        self.method = method.name
        forecasting = any(w in method.name for w in ("Predictor", "Forecast", "AccuracyMetrics", "ItemAccuracies"))
        self.kinds = {
            "DatasetGroup": t.sales if forecasting else t.shop,
            "DatasetGroupId": t.shop.removeprefix("datasetGroups/"),
            "Dataset": t.items if method.name == "PutItems" else t.interactions,
            "Schema": "schemas/shop-a-items",
            "ImportJob": t.import_job,
            "ExportJob": t.export_job,
            "Solution": "solutions/pop-a",
            "SolutionVersion": t.version,
            "Campaign": t.campaign,
            "Filter": t.filter,
            "BatchInferenceJob": t.batch_job,
            "Predictor": t.predictor,
            "Forecast": t.forecast,
            "Operation": t.train_operation,
        }
        self.named: set[str] = set()
        self.directory = t.directory

    def name(self, kind: str) -> str:
        assert kind in self.kinds, f"{self.method}: no resource of kind {kind!r} to aim at; add one to the fixture"
        self.named.add(kind)
        return self.kinds[kind]

    def fill(self, message: Message, top: bool) -> None:
        for field in message.DESCRIPTOR.fields:
            self._fill_field(message, field, top)

    def _fill_field(self, message: Message, field: FieldDescriptor, top: bool) -> None:
        name, verb_update = field.name, self.method.startswith("Update")
        if field.type == FieldDescriptor.TYPE_MESSAGE:
            if field.message_type.GetOptions().map_entry or not field.message_type.full_name.startswith("foretell."):
                return
            target = getattr(message, name).add() if field.is_repeated else None
            self.fill(target if target is not None else getattr(message, name), top=False)
            return
        if field.type == FieldDescriptor.TYPE_ENUM:
            if not field.is_repeated:
                setattr(message, name, field.enum_type.values[1].number if len(field.enum_type.values) > 1 else 0)
            return
        if field.type != FieldDescriptor.TYPE_STRING:
            if name in PLAUSIBLE and not field.is_repeated:
                setattr(message, name, PLAUSIBLE[name])
            return
        value = self._string(message, name, top, verb_update)
        if value is None:
            return
        if field.is_repeated:
            getattr(message, name).append(value)
        else:
            setattr(message, name, value)

    def _string(self, message: Message, name: str, top: bool, verb_update: bool) -> str | None:
        foretell = message.DESCRIPTOR.full_name.startswith("foretell.")
        if name == "name" and top and self.method.startswith("List"):
            return None  # google.longrunning's collection name ("operations"), not a resource
        if name == "name" and (top or verb_update):
            noun = message.DESCRIPTOR.name if not top else _noun(self.method)
            return self.name(NAME_OF.get(noun, noun))
        if name == "parent" and top:
            noun = _noun(self.method)
            return self.name(PARENT_OF.get(noun, "DatasetGroup"))
        if foretell and name in REFERENCES:
            return self.name(REFERENCES[name])
        if name.endswith("_uri"):
            return f"b-{self.method}.csv"  # in B's own file area: refused for naming A's resources, not the path
        if name.endswith("_id") and name not in PLAUSIBLE and name != "request_id":
            return "b-takes"
        value = PLAUSIBLE.get(name)
        return value if isinstance(value, str) else None

    @property
    def private(self) -> set[str]:
        return {k for k in self.named if k not in SHARED}


def _owners_names(t: Tenants) -> list[str]:
    return [t.shop, t.sales, t.campaign, t.version, t.filter, t.predictor, t.forecast, t.batch_job, "shop-a", "pop-a"]


@pytest.mark.parametrize("rpc", sorted(METHODS))
def test_another_tenant_cannot_read_change_or_use_the_owners_resources(tenants: Tenants, rpc: str) -> None:
    method = METHODS[rpc]
    owner = _Owner(tenants, method)
    request = message_factory.GetMessageClass(method.input_type)()
    owner.fill(request, top=True)
    if method.name == "ImportData":  # its first message is the config; a chunk would follow
        request = dapi.ImportDataRequest(config=request.config)
    if owner.private:
        # Refused as if A's resources did not exist (tests/service/test_tenant_answers.py compares each answer with
        # an absent twin's byte for byte), or denied where B's key alone decides (a group it does not list):
        # nothing says who owns what.
        with pytest.raises(grpc.RpcError) as refused:
            send(tenants.b.channel, method, request)
        code, message = refused.value.code(), str(refused.value.details())
        assert code in (ABSENT, DENIED), f"{rpc}: {code} {message}"
        assert "tenant-a" not in message and (code == DENIED or message.endswith(" not found")), f"{rpc}: {message}"
        return
    # Nothing of A's is named (a list of everything): answered (or refused for B's own bad input), without any of
    # A's resources.
    try:
        text = str(send(tenants.b.channel, method, request))
    except grpc.RpcError as exc:
        assert exc.code() == grpc.StatusCode.INVALID_ARGUMENT, f"{rpc}: {exc.code()} {exc.details()}"
        text = str(exc.details())
    assert not any(name in text for name in _owners_names(tenants)), f"{rpc} showed tenant A's resources: {text}"


def test_after_every_other_tenants_call_the_owner_still_has_everything(tenants: Tenants) -> None:
    a, t = tenants.a, tenants
    assert a.get_recommendations(t.campaign, user_id="u1", num_results=3).item_list
    assert a.get_campaign(t.campaign).exploration_config.exploration_weight != 0.5
    assert a.datasets.GetExportJob(dapi.GetExportJobRequest(name=t.export_job), timeout=5).name == t.export_job
    assert a.datasets.GetImportJob(dapi.GetImportJobRequest(name=t.import_job), timeout=5).name == t.import_job
    assert a.recommendations.GetBatchInferenceJob(rapi.GetBatchInferenceJobRequest(name=t.batch_job), timeout=5).name
    assert a.training.GetPredictor(tapi.GetPredictorRequest(name=t.predictor), timeout=5).name == t.predictor
    assert a.training.GetForecast(tapi.GetForecastRequest(name=t.forecast), timeout=5).name == t.forecast
    assert a.recommendations.GetFilter(rapi.GetFilterRequest(name=t.filter), timeout=5).name == t.filter
    assert a.get_solution("solutions/pop-a").name == "solutions/pop-a"
    assert a.get_operation(t.train_operation).done
    assert not list((t.directory / "data" / "files").rglob("b-*")), "another tenant's call wrote a file"


def test_lists_show_only_the_callers_groups(tenants: Tenants) -> None:
    b = tenants.b
    assert _list_groups(b) == ["datasetGroups/shop-b"]
    assert not b.training.ListSolutions(tapi.ListSolutionsRequest(), timeout=5).solutions
    assert not b.training.ListPredictors(tapi.ListPredictorsRequest(), timeout=5).predictors
    assert not b.training.ListForecasts(tapi.ListForecastsRequest(), timeout=5).forecasts
    assert not b.recommendations.ListCampaigns(rapi.ListCampaignsRequest(), timeout=5).campaigns
    assert not b.recommendations.ListFilters(rapi.ListFiltersRequest(), timeout=5).filters
    assert not b.operations.ListOperations(operations_pb2.ListOperationsRequest(), timeout=5).operations
    expect_error(
        lambda: b.training.ListSolutions(tapi.ListSolutionsRequest(dataset_group=tenants.shop), timeout=5), ABSENT
    )
    a = tenants.a
    assert [s.name for s in a.training.ListSolutions(tapi.ListSolutionsRequest(), timeout=5).solutions] == [
        "solutions/pop-a"
    ]
    assert a.operations.ListOperations(operations_pb2.ListOperationsRequest(), timeout=5).operations
    assert [c.name for c in a.recommendations.ListCampaigns(rapi.ListCampaignsRequest(), timeout=5).campaigns] == [
        tenants.campaign
    ]


def test_read_only_keys_read_but_change_nothing(tenants: Tenants) -> None:
    reader = tenants.reader
    assert reader.datasets.GetDatasetGroup(dapi.GetDatasetGroupRequest(name=tenants.shop), timeout=5).name
    assert reader.get_recommendations(tenants.campaign, user_id="u2", num_results=2).item_list
    status = expect_error(
        lambda: reader.datasets.PutEvents(
            dapi.PutEventsRequest(dataset_group=tenants.shop, session_id="s", events=[dpb.Event()]), timeout=5
        ),
        DENIED,
    )
    assert reason_of(status) == "PERMISSION_DENIED"
    expect_code(lambda: reader.create_solution("x", tenants.shop, "popularity-count"), DENIED)


def test_schemas_are_per_tenant_and_only_all_group_keys_delete_them(tenants: Tenants) -> None:
    a, b, admin = tenants.a, tenants.b, tenants.admin
    expect_error(lambda: b.datasets.GetSchema(dapi.GetSchemaRequest(name="schemas/shop-a-items"), timeout=5), ABSENT)
    fields = [dpb.SchemaField(name="ITEM_ID", type=dpb.FIELD_TYPE_STRING)]
    b.create_schema("shop-a-items", dpb.DOMAIN_RECOMMENDATION, fields)  # the same id as A's: another namespace
    assert len(a.datasets.GetSchema(dapi.GetSchemaRequest(name="schemas/shop-a-items"), timeout=5).fields) > 1
    a.create_schema("a-only", dpb.DOMAIN_RECOMMENDATION, fields)
    expect_error(lambda: a.datasets.DeleteSchema(dapi.DeleteSchemaRequest(name="schemas/a-only"), timeout=5), DENIED)
    admin.datasets.DeleteSchema(dapi.DeleteSchemaRequest(name="schemas/a-only"), timeout=5)  # tenant A's "*" key


def test_no_key_or_token_appears_in_the_logs(tenants: Tenants, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    tenants.a.datasets.GetDatasetGroup(dapi.GetDatasetGroupRequest(name=tenants.shop), timeout=5)
    tenants.reader.datasets.GetDatasetGroup(dapi.GetDatasetGroupRequest(name=tenants.shop), timeout=5)
    expect_error(lambda: _list_groups(tenants.anonymous), UNAUTHENTICATED)
    expect_code(lambda: tenants.b.get_campaign(tenants.campaign), ABSENT)
    expect_code(lambda: tenants.reader.create_solution("y", tenants.shop, "popularity-count"), DENIED)
    with Client(tenants.target, bearer_token=KEY_ADMIN[::-1], timeout=5) as wrong:
        expect_error(lambda: _list_groups(wrong), UNAUTHENTICATED)
    assert any(r.name == "foretell.rpc" for r in caplog.records), "the server's logs were not captured"
    everything = "\n".join(f"{r.getMessage()} {r.__dict__}" for r in caplog.records)
    for secret in (*SECRETS, KEY_ADMIN[::-1], hashlib.sha256(KEY_A.encode()).hexdigest()):
        assert secret not in everything


# ---- key files ------------------------------------------------------------------------------------


def test_key_files_are_checked_and_errors_never_quote_a_key(tmp_path: Path) -> None:
    table = auth.load_keys(write_keys(tmp_path / "keys.json"))
    assert len(table) == 4
    found = table.lookup(KEY_B)
    assert found is not None and found.name == "tenant-b"
    assert found.dataset_groups == frozenset({"datasetGroups/shop-b", "datasetGroups/sales-b"})
    assert table.lookup(KEY_B[:-1]) is None
    secret = "supersecret-value-123456"
    bad_documents = [
        ({"keys": []}, "at least one entry"),
        ({"keys": [{"principal": "p", "key": secret}]}, "dataset_groups"),
        ({"keys": [{"principal": "p", "key": secret, "key_sha256": "0" * 64, "dataset_groups": ["*"]}]}, "exactly one"),
        ({"keys": [{"principal": "p", "key_sha256": secret, "dataset_groups": ["*"]}]}, "64 hex digits"),
        ({"keys": [{"principal": "p", "key": secret, "dataset_groups": ["Bad Group"]}]}, "dataset_groups[0]"),
        ({"keys": [{"principal": "p", "key": "short", "dataset_groups": ["*"]}]}, "at least 16"),
        ({"keys": [{"principal": "p", "key": secret, "dataset_groups": ["*"], "admin": True}]}, "unknown fields"),
        (
            {
                "keys": [
                    {"principal": "p", "key": secret, "dataset_groups": ["*"]},
                    {"principal": "q", "key": secret, "dataset_groups": ["*"]},
                ]
            },
            "repeats",
        ),
    ]
    for document, expected in bad_documents:
        with pytest.raises(ValueError) as info:
            auth.parse_keys(document)
        assert expected in str(info.value) and secret not in str(info.value)
    broken = tmp_path / "broken.json"
    broken.write_text('{"keys": [{"principal": "p", "key": "' + secret + '" oops')
    settings = Settings(port=0, data_dir=tmp_path / "d", api_keys_file=broken)
    with pytest.raises(SystemExit) as exit_info:
        create_server(settings)
    assert "not valid JSON" in str(exit_info.value) and secret not in str(exit_info.value)


# ---- size limits ---------------------------------------------------------------------------------------


def test_oversized_messages_and_uploads_are_refused_and_the_server_keeps_serving(
    tmp_path: Path, running: list[App]
) -> None:
    target = _start(
        running, Settings(port=0, data_dir=tmp_path / "d", max_message_bytes=64 * 1024, max_upload_bytes=4000)
    )
    with Client(target, timeout=10) as client:
        stubs = stubs_of(client, running[0])
        group = make_recommendation_group(stubs, "small")
        huge = dapi.PutEventsRequest(
            dataset_group=group.name,
            session_id="s",
            events=[dpb.Event(event_type="click", item_id="i" * 200, event_id=str(i)) for i in range(400)],
        )
        assert huge.ByteSize() > 64 * 1024
        # Refused by gRPC itself before any handler runs, so with a plain status.
        message = expect_code(lambda: client.datasets.PutEvents(huge, timeout=5), grpc.StatusCode.RESOURCE_EXHAUSTED)
        assert "larger than max" in message
        status = expect_error(
            lambda: upload(stubs, group.interactions, interactions_csv(300), chunk=1000),
            grpc.StatusCode.INVALID_ARGUMENT,
        )
        assert "chunk" in violations_of(status)
        assert _list_groups(client) == [group.name]


# ---- services in separate servers --------------------------------------------------------------------


def test_services_apart_call_each_other_with_the_shared_internal_key(tmp_path: Path, running: list[App]) -> None:
    keys = write_keys(tmp_path / "keys.json")

    def start(name: str, services: list[ServiceName], internal: str, dataset_target: str = "") -> str:
        settings = Settings(
            port=0,
            data_dir=tmp_path / name,
            api_keys_file=keys,
            internal_api_key=SecretStr(internal),
            dataset_target=dataset_target,
        )
        app = create_server(settings, services)
        app.start()
        running.append(app)
        return f"127.0.0.1:{app.port}"

    dataset = start("dataset", ["dataset"], "shared-internal-key-0123456789")
    training = start("training", ["training"], "shared-internal-key-0123456789", dataset_target=dataset)
    stale = start("stale", ["training"], "another-internal-key-987654321", dataset_target=dataset)
    with Client(dataset, api_key=KEY_A, timeout=10) as data:
        data.create_dataset_group("shop-a", dpb.DOMAIN_RECOMMENDATION)
    # CreateSolution checks the group with DatasetService.GetDatasetGroup on the peer channel.
    with Client(training, api_key=KEY_A, timeout=10) as client:
        assert client.create_solution("pop", "datasetGroups/shop-a", "popularity-count").name == "solutions/pop"
        expect_code(lambda: client.create_solution("pop-b", "datasetGroups/shop-b", "popularity-count"), ABSENT)
    # A service with another internal key is refused by its peer: INTERNAL (the caller's key was fine, not
    # UNKNOWN with the peer's text), and neither key shows in the answer.
    with Client(stale, api_key=KEY_A, timeout=10) as client, pytest.raises(ForetellError) as refused:
        client.create_solution("pop", "datasetGroups/shop-a", "popularity-count")
    assert refused.value.code == grpc.StatusCode.INTERNAL and "refused this service's credentials" in str(refused.value)
    assert "internal-key" not in str(refused.value)
