"""Tenant namespaces: two tenants own the very same names and never see, block or get each other's answers.

A real server on port 0 with API keys for two tenants, alice (and her read-only key) and bob. Each builds the same
resources under the same names from different data: dataset groups `shop` and `sales`, schemas, a popularity
solution `solutions/movies` with a version, a campaign and a filter, a seasonal-naive predictor and the forecast
`forecasts/next`. Then every answer must come from the caller's own data: recommendations, forecasts (the query
service's cache included), lists, exports, operations, deletes. Also: the tenant header is honoured from the
internal key only, keys files name valid tenants, and `foretell db move-group` hands an upgraded deployment's
data to a tenant.
"""

from __future__ import annotations

import csv
import io
import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from click.testing import CliRunner
from google.longrunning import operations_pb2
from pydantic import SecretStr

from foretell.cli.main import cli
from foretell.client import Client, operation_response
from foretell.core import auth, tenancy
from foretell.core.db import make_engine
from foretell.core.settings import Settings
from foretell.dataset.store import DatasetStore
from foretell.runtime.move_group import MoveRefused, move_group
from foretell.runtime.server import App, create_server
from foretell.v1 import dataset_service_pb2 as dapi
from foretell.v1 import forecast_query_service_pb2 as qapi
from foretell.v1 import recommendation_pb2 as rpb
from foretell.v1 import recommendation_service_pb2 as rapi
from foretell.v1 import training_pb2
from foretell.v1 import training_service_pb2 as tapi

from errors import expect_error, violations_of
from support import (
    daily_csv,
    interactions_csv,
    make_forecast,
    make_forecasting_group,
    make_recommendation_group,
    stubs_of,
    upload,
)

KEY_ALICE = "alice-key-0123456789abcdef"
KEY_ALICE_READER = "alice-reader-key-0123456789"
KEY_BOB = "bob-key-fedcba9876543210"
INTERNAL_KEY = "internal-key-for-the-services-0123456789"
ABSENT = grpc.StatusCode.NOT_FOUND
INVALID = grpc.StatusCode.INVALID_ARGUMENT


def keys_document() -> dict[str, object]:
    return {
        "keys": [
            {"principal": "alice", "key": KEY_ALICE, "dataset_groups": ["*"]},  # tenant: the principal's name
            {
                "principal": "alice-dashboard",
                "tenant": "alice",
                "key": KEY_ALICE_READER,
                "dataset_groups": ["*"],
                "read_only": True,
            },
            {"principal": "bob", "key": KEY_BOB, "dataset_groups": ["shop", "sales"]},
        ]
    }


def bob_interactions() -> bytes:
    """The same shape as alice's, with items b0..b59 instead of i0..i59."""
    return interactions_csv(200, seed=2, users=10, items=60).replace(b",i", b",b")


@dataclass
class Owned:
    version: str
    campaign: str
    operations: list[str]


@dataclass
class Two:
    alice: Client
    reader: Client
    bob: Client
    app: App
    files: Path
    owned: dict[str, Owned]


def build(client: Client, app: App, interactions: bytes, forecast_items: int) -> Owned:
    """The same names for every tenant: shop, sales, solutions/movies, campaigns/movies, filters/recent, ..."""
    stubs = stubs_of(client, app)
    group = make_recommendation_group(stubs, "shop")
    imported = stubs.wait(upload(stubs, group.interactions, interactions))
    client.create_solution("movies", group.name, "popularity-count")
    trained = client.wait_operation(client.create_solution_version("solutions/movies"), timeout=180)
    version = operation_response(trained, training_pb2.SolutionVersion)
    campaign = client.create_campaign("movies", version.name, timeout=120)
    client.recommendations.CreateFilter(
        rapi.CreateFilterRequest(
            filter_id="recent",
            filter=rpb.Filter(dataset_group=group.name, filter_expression='EXCLUDE ItemID WHERE Items.GENRES IN ("x")'),
        ),
        timeout=10,
    )
    sales = make_forecasting_group(stubs, "sales", daily_csv(items=forecast_items, days=40))
    make_forecast(stubs, sales, "naive", "next")
    return Owned(version.name, campaign.name, [imported.name, trained.name])


@pytest.fixture(scope="module")
def two(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Two]:
    directory = tmp_path_factory.mktemp("namespaces")
    keys = directory / "keys.json"
    keys.write_text(json.dumps(keys_document()))
    settings = Settings(
        port=0, data_dir=directory / "data", api_keys_file=keys, internal_api_key=SecretStr(INTERNAL_KEY)
    )
    app = create_server(settings)
    app.start()
    target = f"127.0.0.1:{app.port}"
    alice, bob = Client(target, api_key=KEY_ALICE, timeout=20), Client(target, api_key=KEY_BOB, timeout=20)
    reader = Client(target, api_key=KEY_ALICE_READER, timeout=20)
    try:
        owned = {
            "alice": build(alice, app, interactions_csv(200, seed=1, users=10, items=60), forecast_items=2),
            "bob": build(bob, app, bob_interactions(), forecast_items=3),
        }
        yield Two(alice, reader, bob, app, directory / "data" / "files", owned)
    finally:
        for client in (alice, reader, bob):
            client.close()
        app.stop(None)


def test_both_tenants_own_every_name(two: Two) -> None:
    for client in (two.alice, two.bob):
        assert client.get_solution("solutions/movies").dataset_group == "datasetGroups/shop"
        assert client.get_campaign("campaigns/movies").state == rpb.DEPLOYMENT_STATE_ACTIVE
        assert client.recommendations.GetFilter(rapi.GetFilterRequest(name="filters/recent"), timeout=5).name
        assert client.training.GetForecast(tapi.GetForecastRequest(name="forecasts/next"), timeout=5).name
        assert client.datasets.GetSchema(dapi.GetSchemaRequest(name="schemas/shop-items"), timeout=5).name
        solutions = client.training.ListSolutions(tapi.ListSolutionsRequest(), timeout=5).solutions
        assert [s.name for s in solutions] == ["solutions/movies"]
    # Two models in two places: artifacts are per tenant.
    uris = {
        who: c.training.GetSolutionVersion(tapi.GetSolutionVersionRequest(name=two.owned[who].version), timeout=5)
        for who, c in (("alice", two.alice), ("bob", two.bob))
    }
    assert uris["alice"].artifact_uri != uris["bob"].artifact_uri
    assert "/tenants/bob/" in uris["bob"].artifact_uri


def test_recommendations_come_from_the_callers_own_data(two: Two) -> None:
    for _ in range(2):  # the second round is served from each replica's loaded campaign
        mine = [i.item_id for i in two.alice.get_recommendations("campaigns/movies", user_id="u1").item_list]
        theirs = [i.item_id for i in two.bob.get_recommendations("campaigns/movies", user_id="u1").item_list]
        assert mine and all(item.startswith("i") for item in mine), mine
        assert theirs and all(item.startswith("b") for item in theirs), theirs
    # The read-only key of alice's tenant reads alice's campaign.
    read = [i.item_id for i in two.reader.get_recommendations("campaigns/movies", user_id="u1").item_list]
    assert read and all(item.startswith("i") for item in read)


def _query(client: Client, item: str) -> qapi.QueryForecastResponse:
    request = qapi.QueryForecastRequest(forecast="forecasts/next", item_id=item)
    return client.forecast_query.QueryForecast(request, timeout=30)


def test_forecast_queries_never_answer_from_another_tenants_cached_table(two: Two) -> None:
    for _ in range(2):
        assert len(_query(two.alice, "item0").series[0].mean) == 7
        assert len(_query(two.bob, "item2").series[0].mean) == 7  # bob's forecast has a third series
        with pytest.raises(grpc.RpcError) as info:
            _query(two.alice, "item2")  # alice's does not, whatever the cache holds for bob
        assert info.value.code() != grpc.StatusCode.OK


def test_names_are_taken_within_a_tenant_only(two: Two) -> None:
    with pytest.raises(Exception, match="already exists"):
        two.alice.create_solution("movies", "datasetGroups/shop", "popularity-count")
    two.bob.create_solution("only-bob", "datasetGroups/shop", "popularity-count")
    expect_error(lambda: two.alice.training.GetSolution(tapi.GetSolutionRequest(name="solutions/only-bob")), ABSENT)
    two.alice.create_solution("only-bob", "datasetGroups/shop", "popularity-count")  # free in alice's namespace
    for client in (two.alice, two.bob):
        client.training.DeleteSolution(tapi.DeleteSolutionRequest(name="solutions/only-bob"), timeout=5)


def test_operations_belong_to_the_tenant_that_started_them(two: Two) -> None:
    def listed(client: Client) -> set[str]:
        return {op.name for op in client.operations.ListOperations(operations_pb2.ListOperationsRequest()).operations}

    alice, bob = listed(two.alice), listed(two.bob)
    assert alice and bob and not alice & bob
    assert set(two.owned["alice"].operations) <= alice
    for name in two.owned["alice"].operations:
        status = expect_error(
            lambda name=name: two.bob.operations.GetOperation(operations_pb2.GetOperationRequest(name=name)), ABSENT
        )
        assert status.message == f"operation {name!r} not found"


def _items(path: Path) -> set[str]:
    return {row["ITEM_ID"] for row in csv.DictReader(io.StringIO(path.read_text()))}


def test_exports_of_the_same_dataset_name_write_each_tenants_rows_in_its_own_area(two: Two) -> None:
    dataset = "datasetGroups/shop/datasets/interactions"
    for client in (two.alice, two.bob):
        exported = client.datasets.ExportDataset(
            dapi.ExportDatasetRequest(name=dataset, destination_uri="shop-export.csv"), timeout=10
        )
        done = client.wait_operation(exported, timeout=60)
        assert not done.HasField("error"), done.error
    assert {i[0] for i in _items(two.files / "alice" / "shop-export.csv")} == {"i"}
    assert {i[0] for i in _items(two.files / "bob" / "shop-export.csv")} == {"b"}


def test_a_tenant_header_from_a_tenants_key_changes_nothing(two: Two) -> None:
    request = rapi.GetRecommendationsRequest(campaign="campaigns/movies", user_id="u1", num_results=5)
    answer = two.alice.recommendations.GetRecommendations(request, metadata=[(tenancy.HEADER, "bob")], timeout=10)
    assert all(item.item_id.startswith("i") for item in answer.item_list)


def test_the_internal_key_acts_for_the_tenant_it_names_and_refuses_a_malformed_one(two: Two) -> None:
    target = f"127.0.0.1:{two.app.port}"
    with Client(target, bearer_token=INTERNAL_KEY, timeout=10) as internal:
        request = tapi.GetSolutionRequest(name="solutions/movies")
        assert internal.training.GetSolution(request, metadata=[(tenancy.HEADER, "bob")]).name
        expect_error(lambda: internal.training.GetSolution(request), ABSENT)  # the default tenant has none
        for bad in ("../alice", "", "x" * 64, "foretell internal"):
            status = expect_error(
                lambda bad=bad: internal.training.GetSolution(request, metadata=[(tenancy.HEADER, bad)]), INVALID
            )
            assert list(violations_of(status)) == [tenancy.HEADER]
        status = expect_error(
            lambda: internal.training.GetSolution(
                request, metadata=[(tenancy.HEADER, "alice"), (tenancy.HEADER, "bob")]
            ),
            INVALID,
        )
        assert list(violations_of(status)) == [tenancy.HEADER]


def test_deleting_a_tenants_resources_leaves_the_other_tenants_namesakes(two: Two) -> None:
    two.bob.recommendations.DeleteFilter(rapi.DeleteFilterRequest(name="filters/recent"), timeout=5)
    assert two.alice.recommendations.GetFilter(rapi.GetFilterRequest(name="filters/recent"), timeout=5).name
    expect_error(lambda: two.bob.recommendations.GetFilter(rapi.GetFilterRequest(name="filters/recent")), ABSENT)
    two.bob.recommendations.DeleteCampaign(rapi.DeleteCampaignRequest(name="campaigns/movies"), timeout=10)
    assert two.alice.get_recommendations("campaigns/movies", user_id="u2").item_list
    request = rapi.GetRecommendationsRequest(campaign="campaigns/movies", user_id="u2")
    expect_error(lambda: two.bob.recommendations.GetRecommendations(request, timeout=5), ABSENT)


# ---- keys files ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("entry", "expected"),
    [
        ({"principal": "team one"}, "tenant (default: the principal)"),
        ({"principal": "p", "tenant": "../etc"}, "keys[0].tenant must be a tenant id"),
        ({"principal": "p", "tenant": ""}, "keys[0].tenant must be a tenant id"),
        ({"principal": "p", "tenant": auth.INTERNAL_PRINCIPAL}, "keys[0].tenant must be a tenant id"),
        ({"principal": "p", "tenant": 7}, "keys[0].tenant must be a tenant id"),
    ],
)
def test_keys_files_name_valid_tenants(entry: dict[str, object], expected: str) -> None:
    document = {"keys": [{**entry, "key": "k" * 20, "dataset_groups": ["*"]}]}
    with pytest.raises(ValueError, match="") as info:
        auth.parse_keys(document)
    assert expected in str(info.value)


def test_a_key_without_a_tenant_is_its_principals_tenant() -> None:
    table = auth.parse_keys({"keys": [{"principal": "shop-team", "key": "k" * 20, "dataset_groups": ["*"]}]})
    principal = table.lookup("k" * 20)
    assert principal is not None and principal.tenant == "shop-team"


# ---- moving an upgraded deployment's data to a tenant ----------------------------------------------------


def test_move_group_hands_a_deployments_data_to_a_tenant(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    data = tmp_path / "data"
    # Before tenants: a server without keys (the default tenant) trains and deploys.
    app = create_server(Settings(port=0, data_dir=data))
    app.start()
    with Client(f"127.0.0.1:{app.port}", timeout=20) as anyone:
        stubs = stubs_of(anyone, app)
        group = make_recommendation_group(stubs, "shop")
        stubs.wait(upload(stubs, group.interactions, interactions_csv(200, seed=1, users=10, items=60)))
        anyone.create_solution("movies", group.name, "popularity-count")
        version = anyone.wait_operation(anyone.create_solution_version("solutions/movies"), timeout=180)
        anyone.create_campaign("movies", operation_response(version, training_pb2.SolutionVersion).name, timeout=120)
        before = [i.item_id for i in anyone.get_recommendations("campaigns/movies", user_id="u1").item_list]
        make_recommendation_group(stubs, "other")  # stays behind
    app.stop(None)

    database = f"sqlite:///{data / 'foretell.db'}"
    result = CliRunner().invoke(cli, ["db", "move-group", "shop", "--to", "alice", "--database-url", database])
    assert result.exit_code == 0, result.output
    assert "moved datasetGroups/shop to tenant 'alice'" in result.output and "1 campaigns" in result.output

    keys = tmp_path / "keys.json"
    keys.write_text(json.dumps(keys_document()))
    with caplog.at_level(logging.WARNING, logger="foretell.dataset"):
        app = create_server(Settings(port=0, data_dir=data, api_keys_file=keys))
    warned = [r for r in caplog.records if "belong to no tenant" in r.getMessage()]
    assert [r.__dict__["dataset_groups"] for r in warned] == [["datasetGroups/other"]]  # the one not moved
    app.start()
    target = f"127.0.0.1:{app.port}"
    try:
        with Client(target, api_key=KEY_ALICE, timeout=20) as alice, Client(target, api_key=KEY_BOB) as bob:
            after = [i.item_id for i in alice.get_recommendations("campaigns/movies", user_id="u1").item_list]
            assert after == before  # the model on disk, found through the row's URI
            rows = alice.datasets.ExportDataset(
                dapi.ExportDatasetRequest(name=group.interactions, destination_uri="moved.csv"), timeout=10
            )
            assert not alice.wait_operation(rows, timeout=60).HasField("error")
            assert len((data / "files" / "alice" / "moved.csv").read_text().splitlines()) == 201
            groups = alice.datasets.ListDatasetGroups(dapi.ListDatasetGroupsRequest(), timeout=5).dataset_groups
            assert [g.name for g in groups] == ["datasetGroups/shop"]
            request = tapi.GetSolutionRequest(name="solutions/movies")
            expect_error(lambda: bob.training.GetSolution(request, timeout=5), ABSENT)
    finally:
        app.stop(None)

    # A move into a tenant that has the name already changes nothing.
    engine = make_engine(database)
    try:
        with pytest.raises(MoveRefused, match="has no dataset group"):
            move_group(engine, "datasetGroups/shop", "alice")  # gone from the default tenant
        store = DatasetStore(engine)
        store.create_group("datasetGroups/shop", "RECOMMENDATION", "", {})  # a new one in the default tenant
        with pytest.raises(MoveRefused, match="'alice' already has datasetGroups/shop"):
            move_group(engine, "datasetGroups/shop", "alice")
        assert store.get_group("datasetGroups/shop").tenant == tenancy.DEFAULT
        with tenancy.acting_as("alice"):
            assert store.get_dataset(group.interactions).tenant == "alice"
    finally:
        engine.dispose()
