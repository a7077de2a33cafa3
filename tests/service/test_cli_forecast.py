"""`foretell predictor|accuracy|forecast|query` against a real in-process server whose jobs run in real workers."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
from test_cli_personalize import invoke, ok, rows

from support import Stubs, daily_csv, make_forecasting_group


@pytest.mark.slow
def test_train_forecast_query_plot_and_export_from_the_cli(stubs: Stubs, tmp_path: Path) -> None:
    make_forecasting_group(stubs, "sales", daily_csv(items=4, days=90))
    result = ok(
        "predictor", "create", "daily", "--group", "sales", "--automl", "--candidate", "naive",
        "--candidate", "seasonal-naive", "--horizon", "7", "--frequency", "D", "--dimension", "store",
        "--backtest-windows", "2", "--fill", "TARGET_VALUE=previous", stubs=stubs,
    )  # fmt: skip
    assert "predictors/daily: SUCCEEDED" in result.stdout
    table = {r[0]: r for r in rows(ok("accuracy", "daily", stubs=stubs)) if r}
    assert {"naive", "seasonal-naive", "automl"} <= set(table)
    assert float(table["seasonal-naive"][3]) < float(table["naive"][3])  # WAPE: the weekly pattern matters
    items = ok("accuracy", "daily", "--items", stubs=stubs).stdout
    assert all(f"item{i}" in items for i in range(4))
    assert rows(ok("predictor", "list", stubs=stubs))[0][:3] == ["predictors/daily", "datasetGroups/sales", "automl"]

    assert "forecasts/week: 4 series" in ok("forecast", "create", "week", "--predictor", "daily", stubs=stubs).stdout
    history = tmp_path / "history.csv"
    history.write_bytes(daily_csv(items=4, days=90))
    plot = tmp_path / "item1.png"
    result = ok(
        "query", "week", "--item", "item1", "--quantile", "0.1", "--quantile", "0.9",
        "--plot", str(plot), "--history", str(history), stubs=stubs,
    )  # fmt: skip
    lines = result.stdout.splitlines()
    assert lines[0] == "item1 (store=north)" and lines[1].split() == ["TIME", "MEAN", "p10", "p90"]
    assert len(lines) == 2 + 7 and plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    destination = tmp_path / "data" / "files" / "week.csv"  # in the caller's area (auth off: the default root)
    assert "28 rows in file://" in ok("forecast", "export", "week", "--to", "week.csv", stubs=stubs).stdout
    assert len(list(csv.DictReader(destination.open()))) == 28

    bad = invoke("predictor", "create", "x", "--group", "sales", "--algorithm", "ets", "--horizon", "0",
                 "--frequency", "D", stubs=stubs)  # fmt: skip
    assert bad.exit_code == 1 and "predictor.forecast_horizon" in bad.stderr
    bad = invoke("query", "week", "--item", "nope", stubs=stubs)
    assert bad.exit_code == 1 and "NOT_FOUND" in bad.stderr and "nope" in bad.stderr
    assert invoke("predictor", "create", "x", "--group", "sales", "--horizon", "7", "--frequency", "D").exit_code
