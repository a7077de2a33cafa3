"""Predictor training and forecast generation over synthetic series (no server)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from foretell.forecasting.frequency import Frequency
from foretell.forecasting.predictor import (
    ParamError,
    PredictorConfig,
    generate_forecast,
    parse_hyper_parameters,
    series_key,
    train_predictor,
)
from foretell.forecasting.series import build_series

DAY = 86_400
START = 1_700_006_400  # 2023-11-15 00:00 UTC


def _frame(days: int = 84, items: int = 4, seed: int = 0) -> pd.DataFrame:
    """Weekly-seasonal daily series; item0 a steady trend where "naive" beats "seasonal-naive"."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(items):
        for d in range(days):
            if i == 0:
                value = 100 + 2.0 * d + rng.normal(0, 0.1)
            else:
                value = 30 * i * (1 + 0.5 * math.sin(2 * math.pi * d / 7)) + rng.normal(0, 0.5)
            rows.append((f"item{i}", START + d * DAY, value))
    return pd.DataFrame(rows, columns=["ITEM_ID", "TIMESTAMP", "TARGET_VALUE"])


def _config(**changes: object) -> PredictorConfig:
    values: dict[str, object] = {
        "candidates": ("naive", "seasonal-naive"),
        "horizon": 7,
        "quantiles": (0.1, 0.5, 0.9),
        "backtest_windows": 2,
        "metric": "wape",
        "ensemble": False,
        "params": {"naive": {}, "seasonal-naive": {}},
        "workers": 1,
    }
    values.update(changes)
    return PredictorConfig(**values)  # type: ignore[arg-type]


def test_backtest_windows_metrics_and_per_series_choice() -> None:
    series = build_series(_frame(), Frequency.parse("D"), 7)
    result = train_predictor(series, _config())
    # Two windows of 7 days, the latest ending on the last day (day 83).
    assert result.windows == [(START + 70 * DAY, START + 76 * DAY), (START + 77 * DAY, START + 83 * DAY)]
    assert set(result.by_algorithm) == {"naive", "seasonal-naive"}
    for per_window in result.by_algorithm.values():
        assert len(per_window) == 2 and all(m is not None and m.n_series == 4 for m in per_window)
    # Seasonal items pick seasonal-naive; the random walk is left to naive.
    assert result.chosen[1:] == [["seasonal-naive"]] * 3
    assert result.chosen[0] == ["naive"]
    # The per-series pick is at least as good as either candidate alone, window by window.
    for w in range(2):
        chosen = result.chosen_windows[w]
        assert chosen is not None
        for per_window in result.by_algorithm.values():
            assert chosen.wape <= per_window[w].wape + 1e-12  # type: ignore[union-attr]
    assert all(m is not None and m.n_points == 14 for m in result.item_metrics)


def test_the_horizon_must_fit_the_history() -> None:
    series = build_series(_frame(days=20), Frequency.parse("D"), 7)
    with pytest.raises(ValueError, match="forecast_horizon 7 with 2 backtest window"):
        train_predictor(series, _config())  # 7 + 7 + 7 > 20
    train_predictor(series, _config(backtest_windows=1))


def test_forecast_refits_the_chosen_algorithms_on_all_the_history() -> None:
    series = build_series(_frame(), Frequency.parse("D"), 7)
    config = _config()
    result = train_predictor(series, config)
    chosen = {series_key(series, i): names for i, names in enumerate(result.chosen)}
    table = generate_forecast(series, chosen, config, None, (0.05, 0.5, 0.95))
    assert table.item_ids == ["item0", "item1", "item2", "item3"]
    assert table.values.shape == (4, 3, 7) and list(table.levels) == [0.05, 0.5, 0.95]
    assert (table.timestamps[0] == START + DAY * np.arange(84, 91)).all()
    # item2 (seasonal-naive) repeats its last week; item0 (naive) its last value.
    y2 = series.targets[2]
    assert np.allclose(table.mean[2], y2[-7:])
    assert np.allclose(table.mean[0], series.targets[0][-1])
    assert (np.diff(table.values, axis=1) >= 0).all()


def test_hyper_parameters_are_typed_and_checked() -> None:
    assert parse_hyper_parameters(["ets"], {"damped": "false"}) == {"ets": {"damped": False}}
    both = parse_hyper_parameters(["ets", "deepar"], {"deepar.epochs": "3", "ets.seasonal": "true"})
    assert both == {"ets": {"seasonal": True}, "deepar": {"epochs": 3}}
    with pytest.raises(ParamError, match="not a hyper-parameter of ets") as info:
        parse_hyper_parameters(["ets"], {"alpha": "1"})
    assert info.value.name == "alpha"
    with pytest.raises(ParamError, match="not a valid int"):
        parse_hyper_parameters(["deepar"], {"epochs": "many"})
    for value in ("nan", "inf"):
        with pytest.raises(ParamError, match="not a valid float"):
            parse_hyper_parameters(["deepar"], {"learning_rate": value})
    with pytest.raises(ParamError, match="<algorithm>.<parameter>"):
        parse_hyper_parameters(["ets", "theta"], {"damped": "true"})
