"""`foretell solution|train|metrics|campaign|filter|recommend|rank|similar` and the full demo, against a real
in-process server on port 0 whose training runs real worker processes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from foretell.client import Client
from foretell.v1 import training_pb2
from foretell.v1 import training_service_pb2 as tapi

from support import Group, Stubs, interactions_csv, make_recommendation_group, upload

GENRES = ["rock", "jazz", "pop"]


def invoke(*args: str, stubs: Stubs | None = None) -> Result:
    from foretell.cli.main import cli

    target = ["--target", f"127.0.0.1:{stubs.app.port}"] if stubs is not None else []
    result = CliRunner().invoke(cli, [*target, *args], prog_name="foretell")
    # Failures are reported, never raised: the only exception a run may end with is SystemExit.
    assert result.exception is None or isinstance(result.exception, SystemExit), result.output
    assert "Traceback" not in result.output
    return result


def ok(*args: str, stubs: Stubs | None = None) -> Result:
    result = invoke(*args, stubs=stubs)
    assert result.exit_code == 0, result.output
    return result


def rows(result: Result) -> list[list[str]]:
    """The body of a printed table, split on whitespace."""
    return [line.split() for line in result.stdout.splitlines()[1:]]


@pytest.fixture
def shop(stubs: Stubs, tmp_path: Path) -> Group:
    """Group "shop": 1500 interactions of 40 users on 120 items; item k has genre GENRES[k % 3]."""
    group = make_recommendation_group(stubs)
    done = stubs.wait(upload(stubs, group.interactions, interactions_csv(1500, users=40, items=120)))
    assert not done.HasField("error"), done.error
    items = tmp_path / "items.csv"
    items.write_text("ITEM_ID,GENRES\n" + "".join(f"i{k},{GENRES[k % 3]}\n" for k in range(120)))
    ok("import", "shop/items", str(items), "-q", stubs=stubs)
    return group


def test_train_deploy_and_serve_from_the_cli(stubs: Stubs, shop: Group) -> None:
    result = ok("solution", "create", "movies", "--group", "shop", "--recipe", "ease", stubs=stubs)
    assert "created solutions/movies (recipe ease on datasetGroups/shop)" in result.stdout
    assert rows(ok("solution", "list", stubs=stubs))[0][:2] == ["solutions/movies", "ease"]

    result = ok("train", "movies", "--version-id", "v1", stubs=stubs)  # with its progress bar
    assert "trained solutions/movies/versions/v1 in " in result.stdout and "(SUCCEEDED)" in result.stdout
    assert "train: 100%" in result.stderr

    table = ok("metrics", "movies/v1", stubs=stubs).stdout
    assert "K   PRECISION  RECALL  NDCG" in table and "MRR:" in table and "catalog coverage:" in table
    assert [line.split()[0] for line in table.splitlines()[2:5]] == ["5", "10", "25"]
    metrics = json.loads(ok("--json", "metrics", "movies", stubs=stubs).stdout)  # `movies`: its latest version
    assert metrics["solutionVersion"] == "solutions/movies/versions/v1" and len(metrics["atK"]) == 3
    described = ok("solution", "describe", "movies", stubs=stubs).stdout
    assert "v1" in described and "SUCCEEDED" in described and "latest version:" in described
    assert "tuned parameters:" in ok("solution", "describe", "movies/v1", stubs=stubs).stdout

    result = ok("campaign", "create", "shop", "movies", "--metadata", stubs=stubs)
    assert "deployed solutions/movies/versions/v1 as campaigns/shop (ACTIVE)" in result.stdout
    assert rows(ok("campaign", "list", stubs=stubs))[0][:3] == ["campaigns/shop", "movies/v1", "ACTIVE"]

    recommended = rows(ok("recommend", "shop", "--user", "u1", "-n", "5", "--column", "GENRES", stubs=stubs))
    assert [r[0] for r in recommended] == ["1", "2", "3", "4", "5"]
    assert all(r[3] == "model" and r[4] in GENRES for r in recommended)
    answer = json.loads(ok("--json", "recommend", "shop", "--user", "u1", "-n", "5", stubs=stubs).stdout)
    assert [i["itemId"] for i in answer["itemList"]] == [r[1] for r in recommended] and answer["recommendationId"]

    ranked = rows(ok("rank", "shop", "--user", "u1", "i1", "nope", "i2", stubs=stubs))
    assert sorted(r[1] for r in ranked[:2]) == ["i1", "i2"] and ranked[2][1:3] == ["nope", "-"]
    assert len(rows(ok("similar", "shop", "i1", "-n", "3", stubs=stubs))) == 3

    ok("filter", "create", "no-genre", "--group", "shop", "EXCLUDE ItemID WHERE Items.GENRES IN ($GENRES)", stubs=stubs)
    assert "filters/no-genre" in ok("filter", "list", stubs=stubs).stdout
    filtered = rows(
        ok(
            "recommend",
            "shop",
            "--user",
            "u1",
            "-n",
            "20",
            "--column",
            "GENRES",
            "--filter",
            "no-genre",
            "--filter-value",
            'GENRES="rock"',
            stubs=stubs,
        )
    )
    assert len(filtered) == 20 and "rock" not in {r[4] for r in filtered}

    # An UPDATE version, then a hot swap to it (`movies` = the latest version).
    assert "(SUCCEEDED)" in ok("train", "movies", "--update", "--version-id", "v2", "-q", stubs=stubs).stdout
    result = ok("campaign", "update", "shop", "movies", stubs=stubs)
    assert "serving solutions/movies/versions/v2 (ACTIVE)" in result.stdout
    ok("campaign", "update", "shop", "--exploration-weight", "0.2", stubs=stubs)
    described = dict(line.split(":", 1) for line in ok("campaign", "describe", "shop", stubs=stubs).stdout.splitlines())
    assert described["exploration_weight"].strip() == "0.2"
    assert described["solution_version"].strip() == "solutions/movies/versions/v2"

    ok("filter", "delete", "no-genre", stubs=stubs)
    ok("campaign", "delete", "shop", stubs=stubs)
    ok("solution", "delete", "movies", stubs=stubs)
    assert "no solutions" in ok("solution", "list", stubs=stubs).stdout


def test_bad_input_is_an_error_message(stubs: Stubs) -> None:
    make_recommendation_group(stubs)
    result = invoke("solution", "create", "s", "--group", "shop", "--recipe", "nope", stubs=stubs)
    assert result.exit_code == 1
    assert (
        result.stderr.startswith("error: INVALID_ARGUMENT: ")
        and "  - solution.recipe: unknown recipe 'nope'" in result.stderr
    )

    result = invoke("recommend", "nope", "--user", "u1", stubs=stubs)
    assert (
        result.exit_code == 1 and result.stderr.startswith("error: NOT_FOUND: ") and "campaigns/nope" in result.stderr
    )
    result = invoke("metrics", "nope", stubs=stubs)
    assert (
        result.exit_code == 1 and result.stderr.startswith("error: NOT_FOUND: ") and "solutions/nope" in result.stderr
    )
    result = invoke("train", "nope", stubs=stubs)
    assert result.exit_code == 1 and result.stderr.startswith("error: NOT_FOUND: ")

    for args, message in [
        (("recommend", "shop"), "error: give exactly one of --user USER and --item ITEM"),
        (("recommend", "shop", "--user", "u1", "--filter-value", "G=x"), "error: --filter-value needs --filter"),
        (
            ("recommend", "shop", "--user", "u1", "--filter", "f", "--filter-value", "G"),
            "error: --filter-value 'G': use KEY=VALUE",
        ),
        (
            ("solution", "create", "s", "--group", "shop", "--recipe", "ease", "--param", "lambda"),
            "error: --param 'lambda'",
        ),
        (("campaign", "update", "shop"), "error: nothing to update"),
    ]:
        result = invoke(*args, stubs=stubs)
        assert result.exit_code == 1 and result.stderr.startswith(message), (args, result.output)


def test_ctrl_c_cancels_the_training(stubs: Stubs, shop: Group, monkeypatch: pytest.MonkeyPatch) -> None:
    ok("solution", "create", "slow", "--group", "shop", "--recipe", "sequence", "--param", "epochs=500", stubs=stubs)
    original = Client.wait_operation
    interrupted = []

    def wait_then_interrupt(self, operation, **kwargs):  # type: ignore[no-untyped-def]
        if interrupted or kwargs.get("on_progress") is None:
            return original(self, operation, **kwargs)
        watch = kwargs["on_progress"]

        def on_progress(meta):  # type: ignore[no-untyped-def]
            watch(meta)
            if meta.job:  # the worker is running: press Ctrl-C
                interrupted.append(meta.target)
                raise KeyboardInterrupt

        return original(self, operation, **{**kwargs, "on_progress": on_progress})

    monkeypatch.setattr(Client, "wait_operation", wait_then_interrupt)
    result = invoke("train", "slow", stubs=stubs)

    assert result.exit_code == 130, result.output
    assert (
        f"interrupted: cancelling {interrupted[0]}" in result.stderr and f"cancelled {interrupted[0]}" in result.stderr
    )
    version = stubs.training.GetSolutionVersion(tapi.GetSolutionVersionRequest(name=interrupted[0]), timeout=5)
    assert version.state == training_pb2.TRAINING_STATE_CANCELLED


@pytest.mark.slow
def test_demo_trains_deploys_and_recommends(tmp_path: Path) -> None:
    data_dir = tmp_path / "demo"
    result = ok("demo", "--data-dir", str(data_dir), "--rows", "3000", "-q")

    out = result.stdout
    for step in (
        "[8/15] CreateSolution",
        "[9/15] trained",
        "[10/15] offline metrics",
        "[11/15] CreateCampaign",
        "[12/15] GetRecommendations",
        "[13/15] GetPersonalizedRanking",
        "[14/15] GetSimilarItems",
        "[15/15] PutEvents",
    ):
        assert step in out, step
    recommendations = out.split("[12/15]", 1)[1].split("[13/15]", 1)[0]
    assert recommendations.count("mostly") == 2 and recommendations.count(" The ") >= 10  # titles, 5 per user
    assert " is gone " in out.split("[15/15]", 1)[1]
    assert "serving as campaigns/movielens-demo" in out.split("Summary", 1)[1]
    # Forecasting: statsmodels' quarterly macro series, AutoML with its backtest table, a query, a plot.
    for step in ("[F1] forecasting data", "[F2] predictor", "[F3] forecast", "[F4] QueryForecast", "[F5] plot"):
        assert step in out, step
    assert "8 series x 8 steps" in out and "realgdp" in out.split("[F4]", 1)[1]
    assert (data_dir / "forecast.png").read_bytes()[:4] == b"\x89PNG"

    # Again, as JSON, with another recipe: the previous campaign and solution are replaced.
    again = ok("--json", "demo", "--data-dir", str(data_dir), "--rows", "1000", "--recipe", "popularity-count")
    report = json.loads(again.stdout)
    assert report["recipe"] == "popularity-count" and report["campaign"] == "campaigns/movielens-demo"
    assert len(report["recommendations"]) == 2 and all(len(v) == 5 for v in report["recommendations"].values())
    assert report["realtime"]["clicked"] not in report["realtime"]["after"]
    assert {d["type"]: d["rows"] for d in report["datasets"]}["INTERACTIONS"] == 1000 + 5 + 1
    assert report["forecast"] == "forecasts/forecast-demo" and report["forecastSeries"] == 8
    assert 0 < report["forecastAccuracy"]["averageWql"] < 0.2
