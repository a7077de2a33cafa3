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
from google.longrunning import operations_pb2, operations_pb2_grpc
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
    dataset_service_pb2_grpc,
    forecast_query_service_pb2,
    recommendation_service_pb2_grpc,
    training_pb2,
    training_service_pb2_grpc,
)
from foretell.v1 import recommendation_pb2 as rpb
from foretell.v1 import recommendation_service_pb2 as rapi
from foretell.v1 import training_service_pb2 as tapi

from errors import expect_error, reason_of, violations_of
from support import (
    Stubs,
    daily_csv,
    interactions_csv,
    make_forecasting_group,
    make_recommendation_group,
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
                    {"principal": "reader-a", "key": TOKEN_READER, "dataset_groups": ["shop-a"], "read_only": True},
                    {"principal": "admin", "key": KEY_ADMIN, "dataset_groups": ["*"]},
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


def _stubs(client: Client, app: App) -> Stubs:
    return Stubs(
        client.channel,
        dataset_service_pb2_grpc.DatasetServiceStub(client.channel),
        operations_pb2_grpc.OperationsStub(client.channel),
        app,
        training_service_pb2_grpc.TrainingServiceStub(client.channel),
        recommendation_service_pb2_grpc.RecommendationServiceStub(client.channel),
    )


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
        stubs = _stubs(a, app)
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
        predictor_op = a.training.CreatePredictor(
            tapi.CreatePredictorRequest(
                predictor_id="naive-a",
                predictor=training_pb2.Predictor(
                    dataset_group=sales, algorithm="seasonal-naive", forecast_horizon=7, forecast_frequency="D"
                ),
            ),
            timeout=10,
        )
        assert not stubs.wait(predictor_op, timeout=180).HasField("error")
        forecast_op = a.training.CreateForecast(
            tapi.CreateForecastRequest(
                forecast_id="next-a", forecast=training_pb2.Forecast(predictor="predictors/naive-a")
            ),
            timeout=10,
        )
        assert not stubs.wait(forecast_op, timeout=180).HasField("error")
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
    # The admin key sees every tenant.
    assert set(_list_groups(tenants.admin)) == {tenants.shop, "datasetGroups/sales-a", "datasetGroups/shop-b"}


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


def test_another_tenant_cannot_read_change_or_use_the_owners_resources(tenants: Tenants) -> None:
    b, t = tenants.b, tenants
    calls = {
        "GetDatasetGroup": lambda: b.datasets.GetDatasetGroup(dapi.GetDatasetGroupRequest(name=t.shop), timeout=5),
        "DeleteDatasetGroup": lambda: b.datasets.DeleteDatasetGroup(
            dapi.DeleteDatasetGroupRequest(name=t.shop, force=True), timeout=5
        ),
        "ListDatasets": lambda: b.datasets.ListDatasets(dapi.ListDatasetsRequest(parent=t.shop), timeout=5),
        "GetDataset": lambda: b.datasets.GetDataset(dapi.GetDatasetRequest(name=t.interactions), timeout=5),
        "CreateDataset": lambda: b.datasets.CreateDataset(
            dapi.CreateDatasetRequest(
                parent=t.shop,
                dataset_id="users",
                dataset=dpb.Dataset(dataset_type=dpb.DATASET_TYPE_USERS, schema="schemas/shop-a-items"),
            ),
            timeout=5,
        ),
        "ImportData": lambda: b.import_csv(t.interactions, Path(__file__)),
        "ListImportJobs": lambda: b.datasets.ListImportJobs(
            dapi.ListImportJobsRequest(parent=t.interactions), timeout=5
        ),
        "ExportDataset": lambda: b.datasets.ExportDataset(dapi.ExportDatasetRequest(name=t.interactions), timeout=5),
        "PutEvents": lambda: b.datasets.PutEvents(
            dapi.PutEventsRequest(dataset_group=t.shop, session_id="s", events=[dpb.Event()]), timeout=5
        ),
        "WatchEvents": lambda: next(
            iter(b.datasets.WatchEvents(dapi.WatchEventsRequest(dataset_group=t.shop), timeout=5))
        ),
        "CreateSolution": lambda: b.create_solution("steal", t.shop, "popularity-count"),
        "GetSolution": lambda: b.get_solution("solutions/pop-a"),
        "DeleteSolution": lambda: b.training.DeleteSolution(
            tapi.DeleteSolutionRequest(name="solutions/pop-a"), timeout=5
        ),
        "CreateSolutionVersion": lambda: b.training.CreateSolutionVersion(
            tapi.CreateSolutionVersionRequest(parent="solutions/pop-a"), timeout=5
        ),
        "ListSolutionVersions": lambda: b.training.ListSolutionVersions(
            tapi.ListSolutionVersionsRequest(parent="solutions/pop-a"), timeout=5
        ),
        "GetSolutionVersion": lambda: b.get_solution_version(t.version),
        "GetSolutionMetrics": lambda: b.get_solution_metrics(t.version),
        "DeleteSolutionVersion": lambda: b.training.DeleteSolutionVersion(
            tapi.DeleteSolutionVersionRequest(name=t.version), timeout=5
        ),
        "CreateCampaign": lambda: b.recommendations.CreateCampaign(
            rapi.CreateCampaignRequest(campaign_id="steal", campaign=rpb.Campaign(solution_version=t.version)),
            timeout=5,
        ),
        "GetCampaign": lambda: b.get_campaign(t.campaign),
        "UpdateCampaign": lambda: b.update_campaign(t.campaign, exploration_weight=0.5),
        "DeleteCampaign": lambda: b.recommendations.DeleteCampaign(
            rapi.DeleteCampaignRequest(name=t.campaign), timeout=5
        ),
        "GetRecommendations": lambda: b.get_recommendations(t.campaign, user_id="u1"),
        "GetPersonalizedRanking": lambda: b.get_personalized_ranking(t.campaign, "u1", ["i1", "i2"]),
        "GetSimilarItems": lambda: b.get_similar_items(t.campaign, "i1"),
        "GetFilter": lambda: b.recommendations.GetFilter(rapi.GetFilterRequest(name=t.filter), timeout=5),
        "DeleteFilter": lambda: b.recommendations.DeleteFilter(rapi.DeleteFilterRequest(name=t.filter), timeout=5),
        "CreateFilter": lambda: b.recommendations.CreateFilter(
            rapi.CreateFilterRequest(
                filter_id="steal",
                filter=rpb.Filter(dataset_group=t.shop, filter_expression='EXCLUDE ItemID WHERE Items.GENRES IN ("x")'),
            ),
            timeout=5,
        ),
        "CreateBatchInferenceJob": lambda: b.recommendations.CreateBatchInferenceJob(
            rapi.CreateBatchInferenceJobRequest(
                batch_inference_job_id="steal",
                batch_inference_job=rpb.BatchInferenceJob(solution_version=t.version, input_uri=str(Path(__file__))),
            ),
            timeout=5,
        ),
        "ListBatchInferenceJobs": lambda: b.recommendations.ListBatchInferenceJobs(
            rapi.ListBatchInferenceJobsRequest(solution_version=t.version), timeout=5
        ),
        "GetPredictor": lambda: b.training.GetPredictor(tapi.GetPredictorRequest(name=t.predictor), timeout=5),
        "GetAccuracyMetrics": lambda: b.training.GetAccuracyMetrics(
            tapi.GetAccuracyMetricsRequest(name=t.predictor), timeout=5
        ),
        "ListItemAccuracies": lambda: b.training.ListItemAccuracies(
            tapi.ListItemAccuraciesRequest(parent=t.predictor), timeout=5
        ),
        "DeletePredictor": lambda: b.training.DeletePredictor(tapi.DeletePredictorRequest(name=t.predictor), timeout=5),
        "CreateForecast": lambda: b.training.CreateForecast(
            tapi.CreateForecastRequest(forecast_id="steal", forecast=training_pb2.Forecast(predictor=t.predictor)),
            timeout=5,
        ),
        "GetForecast": lambda: b.training.GetForecast(tapi.GetForecastRequest(name=t.forecast), timeout=5),
        "ListForecasts": lambda: b.training.ListForecasts(tapi.ListForecastsRequest(predictor=t.predictor), timeout=5),
        "ExportForecast": lambda: b.training.ExportForecast(tapi.ExportForecastRequest(name=t.forecast), timeout=5),
        "DeleteForecast": lambda: b.training.DeleteForecast(tapi.DeleteForecastRequest(name=t.forecast), timeout=5),
        "QueryForecast": lambda: b.forecast_query.QueryForecast(
            forecast_query_service_pb2.QueryForecastRequest(forecast=t.forecast, item_id="item1"), timeout=5
        ),
        "GetOperation": lambda: b.operations.GetOperation(
            operations_pb2.GetOperationRequest(name=t.train_operation), timeout=5
        ),
        "WaitOperation": lambda: b.operations.WaitOperation(
            operations_pb2.WaitOperationRequest(name=t.train_operation), timeout=5
        ),
        "CancelOperation": lambda: b.operations.CancelOperation(
            operations_pb2.CancelOperationRequest(name=t.train_operation), timeout=5
        ),
        "DeleteOperation": lambda: b.operations.DeleteOperation(
            operations_pb2.DeleteOperationRequest(name=t.train_operation), timeout=5
        ),
    }
    for rpc, call in calls.items():
        message = expect_code(call, ABSENT)
        # Answers as for an absent resource: nothing of the owner (docs/security.md).
        assert message.endswith(" not found") and "tenant-a" not in message, f"{rpc}: {message}"
    # Nothing changed: the owner still has everything.
    assert tenants.a.get_recommendations(t.campaign, user_id="u1", num_results=3).item_list
    assert tenants.a.get_campaign(t.campaign).exploration_config.exploration_weight != 0.5


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


def test_schemas_are_shared_but_only_all_group_keys_delete_them(tenants: Tenants) -> None:
    b, admin = tenants.b, tenants.admin
    assert b.datasets.GetSchema(dapi.GetSchemaRequest(name="schemas/shop-a-items"), timeout=5).name
    b.create_schema("b-only", dpb.DOMAIN_RECOMMENDATION, [dpb.SchemaField(name="ITEM_ID", type=dpb.FIELD_TYPE_STRING)])
    expect_error(lambda: b.datasets.DeleteSchema(dapi.DeleteSchemaRequest(name="schemas/b-only"), timeout=5), DENIED)
    admin.datasets.DeleteSchema(dapi.DeleteSchemaRequest(name="schemas/b-only"), timeout=5)


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
        stubs = _stubs(client, running[0])
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
