"""The Node.js and C++ clients' examples against a live Foretell server on port 0.

One server for the module (SQLite): an EASE campaign trained on synthetic interactions and a
seasonal-naive forecast of synthetic daily sales. Each example runs as a subprocess and prints the
proto3 JSON of GetRecommendations, GetPersonalizedRanking and QueryForecast; it must equal what the
Python client gets for the same requests (MessageToDict), apart from the per-answer recommendation ids.

Without node (and clients/node's `npm ci`) or the C++ toolchain (g++, make, protoc, grpc_cpp_plugin,
libgrpc++-dev) these tests skip locally and FAIL in CI (CI set), where .ci/run installs them.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from google.protobuf.json_format import MessageToDict

from foretell.client import Client
from foretell.core.settings import Settings
from foretell.v1 import training_pb2
from foretell.v1 import training_service_pb2 as tapi

from support import (
    Stubs,
    daily_csv,
    interactions_csv,
    make_forecasting_group,
    make_recommendation_group,
    start_stubs,
    upload,
)

pytestmark = pytest.mark.clients

REPO = Path(__file__).resolve().parents[2]
NODE_DIR = REPO / "clients" / "node"
CPP_DIR = REPO / "clients" / "cpp"
CAMPAIGN = "campaigns/shop"
FORECAST = "forecasts/next-week"
QUANTILES = [0.1, 0.5, 0.9]
HORIZON = 7


def need(condition: bool, reason: str) -> None:
    """Skip locally when a toolchain is missing; in CI that is a broken setup, so fail."""
    if condition:
        return
    if os.environ.get("CI"):
        pytest.fail(f"{reason} (CI must have it: see .ci/run)")
    pytest.skip(reason)


@dataclass
class Served:
    stubs: Stubs
    client: Client
    target: str


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    stubs = start_stubs(Settings(port=0, data_dir=tmp_path_factory.mktemp("polyglot") / "data"))
    target = f"127.0.0.1:{stubs.app.port}"
    client = Client(target, timeout=30)
    try:
        group = make_recommendation_group(stubs)
        done = stubs.wait(upload(stubs, group.interactions, interactions_csv(3000, users=60, items=120)))
        assert not done.HasField("error"), done.error
        client.create_solution("shop", group.name, "ease")
        version = client.train("solutions/shop", timeout=240)
        client.create_campaign("shop", version, timeout=120)

        sales = make_forecasting_group(stubs, "sales", daily_csv())
        predictor = training_pb2.Predictor(
            dataset_group=sales,
            algorithm="seasonal-naive",
            forecast_horizon=HORIZON,
            forecast_frequency="D",
            forecast_dimensions=["store"],
            forecast_quantiles=QUANTILES,
        )
        done = stubs.wait(
            stubs.training.CreatePredictor(
                tapi.CreatePredictorRequest(predictor_id="daily", predictor=predictor), timeout=10
            ),
            timeout=180,
        )
        assert not done.HasField("error"), done.error
        forecast = training_pb2.Forecast(predictor="predictors/daily", quantiles=QUANTILES)
        done = stubs.wait(
            stubs.training.CreateForecast(
                tapi.CreateForecastRequest(forecast_id="next-week", forecast=forecast), timeout=10
            ),
            timeout=120,
        )
        assert not done.HasField("error"), done.error
        yield Served(stubs, client, target)
    finally:
        client.close()
        stubs.channel.close()
        stubs.app.stop(None)


def expected(served: Served, user: str, rank: list[str] | None, item: str, quantiles: list[float]) -> dict[str, Any]:
    """What the Python client answers, as proto3 JSON without the per-answer recommendation ids."""
    recommended = served.client.get_recommendations(CAMPAIGN, user_id=user, num_results=10)
    inputs = rank if rank is not None else [i.item_id for i in reversed(recommended.item_list)]
    ranked = served.client.get_personalized_ranking(CAMPAIGN, user, inputs)
    forecast = served.client.query_forecast(FORECAST, item, quantiles=quantiles)
    return {
        "recommendations": MessageToDict(recommended),
        "ranking": MessageToDict(ranked),
        "forecast": MessageToDict(forecast),
    }


def check_against_python(
    served: Served, output: dict[str, Any], user: str, rank: list[str] | None, item: str, quantiles: list[float]
) -> None:
    want = expected(served, user, rank, item, quantiles)
    assert set(output) == {"recommendations", "ranking", "forecast"}
    for key in ("recommendations", "ranking"):
        assert output[key].pop("recommendationId"), f"{key} has no recommendation id"
        want[key].pop("recommendationId")

    items = output["recommendations"]["itemList"]
    assert len(items) == 10 and all(i["itemId"].startswith("i") for i in items)
    assert all("score" in i for i in items)
    ranking = output["ranking"]["personalizedRanking"]
    assert {i["itemId"] for i in ranking} == set(rank if rank is not None else [i["itemId"] for i in items])
    (series,) = output["forecast"]["series"]
    assert series["itemId"] == item and series["dimensions"] == {"store": "north" if int(item[-1]) % 2 else "south"}
    assert [q["quantile"] for q in series["quantiles"]] == (quantiles or QUANTILES)
    assert all(len(q["points"]) == HORIZON for q in series["quantiles"]) and len(series["mean"]) == HORIZON
    assert all(p["timestamp"].endswith("Z") for p in series["mean"])

    # Same items, scores, order, timestamps and values as the Python client, field for field.
    assert output == want


@dataclass
class Example:
    command: list[str]
    cwd: Path

    def run(self, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*self.command, *args], cwd=self.cwd, env=env, capture_output=True, text=True, timeout=60, check=False
        )


def node_example() -> Example:
    found = shutil.which("node")
    need(found is not None, "node is not installed (apt-get install nodejs npm)")
    assert found is not None
    modules = NODE_DIR / "node_modules" / "@grpc" / "grpc-js"
    need(modules.is_dir(), "clients/node has no node_modules: run npm ci there")
    return Example([found, str(NODE_DIR / "examples" / "query.js")], NODE_DIR)


def cpp_example() -> Example:
    tools = {
        "g++": "g++",
        "make": "make",
        "pkg-config": "pkgconf",
        "protoc": "protobuf-compiler",
        "grpc_cpp_plugin": "protobuf-compiler-grpc",
    }
    for tool, package in tools.items():
        need(shutil.which(tool) is not None, f"{tool} is not installed (apt-get install {package})")
    libs = subprocess.run(["pkg-config", "--exists", "grpc++", "protobuf"], check=False).returncode == 0
    need(libs, "libgrpc++-dev / libprotobuf-dev are not installed")
    # Generates the code from protos/ and compiles it (incremental: only what changed since the last run).
    built = subprocess.run(["make", "-j2"], cwd=CPP_DIR, capture_output=True, text=True, timeout=600, check=False)
    assert built.returncode == 0, built.stdout + built.stderr
    return Example([str(CPP_DIR / "build" / "query")], CPP_DIR)


@pytest.fixture(scope="module", params=["node", "cpp"])
def example(request: pytest.FixtureRequest) -> Example:
    return node_example() if request.param == "node" else cpp_example()


def test_example_matches_the_python_client(served: Served, example: Example) -> None:
    result = example.run(
        "--target",
        served.target,
        "--campaign",
        CAMPAIGN,
        "--user",
        "u3",
        "--num-results",
        "10",
        "--forecast",
        FORECAST,
        "--item",
        "item3",
    )
    assert result.returncode == 0, result.stderr
    check_against_python(served, json.loads(result.stdout), "u3", None, "item3", [])


def test_example_reads_env_ranks_given_items_and_picks_quantiles(served: Served, example: Example) -> None:
    env = {
        **os.environ,
        "FORETELL_TARGET": served.target,
        "FORETELL_CAMPAIGN": CAMPAIGN,
        "FORETELL_USER": "u8",
        "FORETELL_FORECAST": FORECAST,
        "FORETELL_ITEM": "item0",
    }
    rank = ["i5", "nope", "i17", "i2"]
    result = example.run(
        "--num-results", "10", "--rank", ",".join(rank), "--quantile", "0.9", "--quantile", "0.1", env=env
    )
    assert result.returncode == 0, result.stderr
    output = json.loads(result.stdout)
    assert output["ranking"]["personalizedRanking"][-1] == {"itemId": "nope"}  # unknown items last, unscored
    check_against_python(served, output, "u8", rank, "item0", [0.9, 0.1])


def test_example_reports_the_servers_error_details(served: Served, example: Example) -> None:
    result = example.run("--target", served.target, "--campaign", "campaigns/nope", "--user", "u1")
    assert result.returncode == 1 and result.stdout == ""
    error = json.loads(result.stderr)["error"]
    assert error["code"] == "NOT_FOUND" and error["message"] == "campaign 'campaigns/nope' not found"
    (info,) = error["details"]
    assert info == {
        "@type": "type.googleapis.com/google.rpc.ErrorInfo",
        "reason": "RESOURCE_NOT_FOUND",
        "domain": "foretell.v1",
        "metadata": {"resource": "campaigns/nope"},
    }

    result = example.run("--target", served.target, "--forecast", FORECAST, "--item", "item0", "--quantile", "0.3")
    assert result.returncode == 1
    error = json.loads(result.stderr)["error"]
    assert error["code"] == "INVALID_ARGUMENT"
    bad = next(d for d in error["details"] if d["@type"] == "type.googleapis.com/google.rpc.BadRequest")
    assert [v["field"] for v in bad["fieldViolations"]] == ["quantiles[0]"], bad


def test_example_rejects_bad_arguments_before_calling(example: Example) -> None:
    result = example.run("--target", "127.0.0.1:1", "--campaign", CAMPAIGN)
    assert result.returncode == 2 and "--campaign needs --user" in result.stderr
    result = example.run("--target", "127.0.0.1:1", "--forecast", FORECAST, "--quantile", "half")
    assert result.returncode == 2 and "half is not a number" in result.stderr


def test_example_reports_an_unreachable_server(example: Example) -> None:
    result = example.run("--target", "127.0.0.1:1", "--forecast", FORECAST, "--timeout-ms", "3000")
    assert result.returncode == 1
    assert json.loads(result.stderr)["error"]["code"] == "UNAVAILABLE"
