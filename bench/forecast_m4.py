"""Forecast accuracy on M4 (Hourly, Weekly): Naive2 reproduction, statsforecast and Foretell's forecasters.

Data: M4 Train/Test CSVs and the organisers' benchmark files under `--data`/m4 (read, never copied).
Horizon h and seasonal period m are fixed per frequency (Hourly 48/24, Weekly 13/1).
  1. Naive2 reproduction: the official submission (`benchmarks/submission-Naive2.csv.gz`) scored
     with `foretell.forecasting.metrics` must give the published sMAPE and MASE (asserted to 3
     decimals on the full sets), and our own Naive2 (`naive2_forecast`) must match the submission.
  2. Models: statsforecast AutoETS, AutoARIMA and AutoTheta (season_length m, one StatsForecast call
     per model, n_jobs=1), and every Foretell forecaster in `foretell.forecasting.models.FORECASTERS`
     (when that module imports), plus `foretell.forecasting.automl.AutoMl` with its defaults, the
     policy the training service serves; `deepar`, the global model trained across all series
     (`--deepar-epochs`); `predictor-mase` / `predictor-wql`, the training service's own path (series on
     its time grid, `train_predictor` with AutoML choosing by MASE or by mean wQL, `generate_forecast`).
     `--foretell` picks a subset. sMAPE and MASE are M4's
     (means over series); OWA is relative to our Naive2 on the same series; wQL is Amazon Forecast's
     mean over levels 0.1/0.5/0.9 (statsforecast: its 80% interval and the mean). fit s = wall time
     to fit and forecast every series, after a warm-up call that absorbs one-time JIT compilation.
The published M4 rows (Naive2, Theta) are shown for reference; they cover the full sets only.
Cost on 2 cores: statsforecast AutoARIMA with m=24 is very slow on Hourly (over 30 min for 40 series),
so Hourly runs use `--models AutoETS,AutoTheta` (about 12 min with every Foretell model); Weekly, all
models, full set: about 12 min.
A frequency without training data (Yearly) only gets the submission's sMAPE checked.

    python bench/forecast_m4.py [--data ../shared/data] [--frequencies Hourly,Weekly] [--limit 40] [--json out.json]
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT / "services") not in sys.path:
    sys.path.insert(0, str(ROOT / "services"))

from foretell.forecasting.metrics import ErrorMetrics, aggregate, evaluate_forecast, owa, smape  # noqa: E402

HORIZON = {"Hourly": 48, "Weekly": 13, "Daily": 14, "Monthly": 18, "Quarterly": 8, "Yearly": 6}
SEASON = {"Hourly": 24, "Weekly": 1, "Daily": 1, "Monthly": 12, "Quarterly": 4, "Yearly": 1}
LEVELS = (0.1, 0.5, 0.9)
STATSFORECAST_MODELS = ("AutoETS", "AutoARIMA", "AutoTheta")


@dataclass
class Series:
    id: str
    train: np.ndarray
    test: np.ndarray


@dataclass
class Row:
    frequency: str
    model: str
    n_series: int
    smape: float
    mase: float
    owa: float = float("nan")
    mean_wql: float = float("nan")
    seconds: float = float("nan")
    note: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


# ---- data ---------------------------------------------------------------------------------


def load_m4(m4: Path, frequency: str, limit: int | None = None) -> list[Series]:
    """Train and test series of one frequency, in file order (H1, H2, ...), NaN padding dropped."""
    train = pd.read_csv(m4 / "Train" / f"{frequency}-train.csv", index_col=0, nrows=limit)
    test = pd.read_csv(m4 / "Test" / f"{frequency}-test.csv", index_col=0, nrows=limit)
    if list(train.index) != list(test.index):
        raise ValueError(f"{frequency}: train and test ids differ")
    out = []
    for sid, tr, te in zip(train.index, train.to_numpy(np.float64), test.to_numpy(np.float64), strict=True):
        out.append(Series(str(sid), tr[~np.isnan(tr)], te[~np.isnan(te)]))
    return out


def load_naive2_submission(m4: Path, ids: Sequence[str], horizon: int) -> dict[str, np.ndarray]:
    sub = pd.read_csv(m4 / "benchmarks" / "submission-Naive2.csv.gz", index_col=0)
    values = sub.loc[list(ids)].iloc[:, :horizon].to_numpy(np.float64)
    return dict(zip(ids, values, strict=True))


def load_published(m4: Path) -> dict[str, dict[str, dict[str, float]]]:
    """{method: {frequency: {smape, mase, owa}}} from the organisers' "Point Forecasts-Frequency" sheet."""
    path = m4 / "benchmarks" / "EvaluationAndRanks__Point_Forecasts_Frequency.csv"
    if not path.exists():
        return {}
    raw = pd.read_csv(path, header=None, dtype=str)
    metrics, freqs = raw.iloc[0].ffill(), raw.iloc[1]
    out: dict[str, dict[str, dict[str, float]]] = {}
    for _, r in raw.iloc[2:].iterrows():
        by_freq: dict[str, dict[str, float]] = {}
        for col in range(1, raw.shape[1]):
            try:
                value = float(r[col])
            except (TypeError, ValueError):
                continue
            by_freq.setdefault(str(freqs[col]), {})[str(metrics[col]).lower()] = value
        out[str(r[0]).strip()] = by_freq
    return out


# ---- M4 Naive2 ------------------------------------------------------------------------------


def _acf(x: np.ndarray, lags: int) -> np.ndarray:
    """Sample autocorrelations at lags 1..lags (R's `acf`: biased covariances over the variance)."""
    d = x - x.mean()
    den = float(d @ d)
    return np.array([float(d[k:] @ d[:-k]) / den for k in range(1, lags + 1)])


def seasonality_test(x: np.ndarray, m: int) -> bool:
    """M4's 90% test: |acf_m| > 1.645 sqrt((1 + 2 sum_{k<m} acf_k^2) / n); False below 3 seasons."""
    if m <= 1 or x.size < 3 * m:
        return False
    r = _acf(x, m)
    limit = 1.645 * np.sqrt((1.0 + 2.0 * float(np.sum(r[:-1] ** 2))) / x.size)
    return bool(abs(r[-1]) > limit)


def seasonal_indices(x: np.ndarray, m: int) -> np.ndarray:
    """R's `decompose(type="multiplicative")` seasonal figure (m,), position i = time index i mod m.

    Trend: centred moving average (2 x m when m is even); figure: mean of x / trend per position,
    normalised to mean 1.
    """
    weights = np.r_[0.5, np.ones(m - 1), 0.5] / m if m % 2 == 0 else np.ones(m) / m
    half = len(weights) // 2
    trend = np.full(x.size, np.nan)
    trend[half : x.size - half] = np.convolve(x, weights, mode="valid")
    ratio = x / trend
    figure = np.array([np.nanmean(ratio[i::m]) for i in range(m)])
    return figure / figure.mean()


def naive2_forecast(x: np.ndarray, horizon: int, m: int) -> np.ndarray:
    """M4 Naive2: naive on the seasonally adjusted series, reseasonalised (adjusted only if seasonal)."""
    if not seasonality_test(x, m):
        return np.full(horizon, x[-1])
    figure = seasonal_indices(x, m)
    season = figure[np.arange(x.size + horizon) % m]
    return (x[-1] / season[x.size - 1]) * season[x.size :]


# ---- scoring ------------------------------------------------------------------------------


def score(
    series: Sequence[Series],
    means: Sequence[np.ndarray],
    m: int,
    quantiles: Sequence[np.ndarray] | None = None,
) -> ErrorMetrics:
    levels = LEVELS if quantiles is not None else None
    per = [
        evaluate_forecast(s.test, f, levels, quantiles[i] if quantiles is not None else None, s.train, m)
        for i, (s, f) in enumerate(zip(series, means, strict=True))
    ]
    return aggregate(per)


def make_row(
    frequency: str, model: str, agg: ErrorMetrics, naive2: ErrorMetrics | None, seconds: float, note: str = ""
) -> Row:
    ratio = owa(agg.smape, agg.mase, naive2.smape, naive2.mase) if naive2 is not None else float("nan")
    return Row(frequency, model, agg.n_series, agg.smape, agg.mase, ratio, agg.mean_wql, seconds, note)


# ---- models -------------------------------------------------------------------------------


def run_statsforecast(
    series: Sequence[Series], horizon: int, m: int, name: str
) -> tuple[list[np.ndarray], list[np.ndarray] | None, float]:
    """One statsforecast model over every series: (means, quantiles (3, h) or None, seconds)."""
    from statsforecast import StatsForecast
    from statsforecast.models import AutoARIMA, AutoETS, AutoTheta

    make: dict[str, Callable[[], Any]] = {
        "AutoETS": lambda: AutoETS(season_length=m),
        "AutoARIMA": lambda: AutoARIMA(season_length=m),
        "AutoTheta": lambda: AutoTheta(season_length=m),
    }
    df = pd.concat(
        [pd.DataFrame({"unique_id": s.id, "ds": np.arange(s.train.size), "y": s.train}) for s in series],
        ignore_index=True,
    )
    # Warm-up on one short series: numba compiles on first use, which is not model time.
    warm = df[df["unique_id"] == series[0].id].tail(max(3 * m, 60))
    StatsForecast(models=[make[name]()], freq=1, n_jobs=1).forecast(df=warm, h=horizon, level=[80])
    start = time.perf_counter()
    fc = StatsForecast(models=[make[name]()], freq=1, n_jobs=1).forecast(df=df, h=horizon, level=[80])
    seconds = time.perf_counter() - start
    fc = fc.reset_index() if "unique_id" not in fc.columns else fc
    groups = {str(k): g.sort_values("ds") for k, g in fc.groupby("unique_id", sort=False)}
    means: list[np.ndarray] = []
    quantiles: list[np.ndarray] = []
    for s in series:
        g = groups[s.id]
        mean = g[name].to_numpy(np.float64)
        means.append(mean)
        lo, hi = f"{name}-lo-80", f"{name}-hi-80"
        if lo in g.columns and hi in g.columns:
            quantiles.append(np.vstack([g[lo].to_numpy(np.float64), mean, g[hi].to_numpy(np.float64)]))
    return means, (quantiles if len(quantiles) == len(series) else None), seconds


def run_foretell(
    series: Sequence[Series], horizon: int, m: int, make: Callable[[], Any]
) -> tuple[list[np.ndarray], list[np.ndarray] | None, float]:
    """A Foretell forecaster (`make()` builds a fresh one) over every series: means, quantiles, seconds."""
    make().fit(series[0].train, season_length=m).predict(horizon, LEVELS)  # warm-up
    means: list[np.ndarray] = []
    quantiles: list[np.ndarray] = []
    start = time.perf_counter()
    for s in series:
        fc = make().fit(s.train, season_length=m).predict(horizon, LEVELS)
        means.append(np.asarray(fc.mean, dtype=np.float64))
        q = getattr(fc, "quantiles", None)
        levels = getattr(fc, "levels", None)
        if q is not None and levels is not None and np.allclose(np.asarray(levels), LEVELS):
            quantiles.append(np.asarray(q, dtype=np.float64))
    seconds = time.perf_counter() - start
    return means, (quantiles if len(quantiles) == len(series) else None), seconds


def run_deepar(
    series: Sequence[Series], horizon: int, m: int, epochs: int
) -> tuple[list[np.ndarray], list[np.ndarray] | None, float]:
    """Foretell's global DeepAR: one model trained across every series, then a forecast of each."""
    from foretell.forecasting.deepar import DeepAr, GlobalSeries

    inputs = [GlobalSeries(s.train, None, None, (-len(s.train)) % m) for s in series]
    start = time.perf_counter()
    model = DeepAr(horizon=horizon, season_length=m, epochs=epochs).fit(inputs)
    forecasts = model.predict(inputs, LEVELS)
    seconds = time.perf_counter() - start
    return [f.mean for f in forecasts], [f.quantiles for f in forecasts], seconds


def run_predictor(
    series: Sequence[Series], horizon: int, frequency: str, metric: str
) -> tuple[list[np.ndarray], list[np.ndarray] | None, float]:
    """The training service's path without gRPC: the series as a dataset on the service's own grid (so
    Weekly gets the service's 52-week season, not M4's m=1), `train_predictor` with AutoML's default
    candidates and windows, then `generate_forecast`; one process, like the other rows."""
    from foretell.forecasting.automl import DEFAULT_CANDIDATES, DEFAULT_WINDOWS
    from foretell.forecasting.frequency import Frequency
    from foretell.forecasting.predictor import PredictorConfig, generate_forecast, series_key, train_predictor
    from foretell.forecasting.series import build_series

    grid = Frequency.parse({"Hourly": "H", "Weekly": "W", "Daily": "D", "Monthly": "M", "Quarterly": "Q"}[frequency])
    end = int(grid.floor(np.asarray([1_700_000_000]))[0])
    frame = pd.concat(
        [
            pd.DataFrame(
                {"ITEM_ID": s.id, "TIMESTAMP": grid.add(end, np.arange(1 - s.train.size, 1)), "TARGET_VALUE": s.train}
            )
            for s in series
        ],
        ignore_index=True,
    )
    config = PredictorConfig(
        candidates=DEFAULT_CANDIDATES,
        horizon=horizon,
        quantiles=LEVELS,
        backtest_windows=DEFAULT_WINDOWS,
        metric=metric,
        ensemble=True,
        params={name: {} for name in DEFAULT_CANDIDATES},
        workers=1,
    )
    start = time.perf_counter()
    data = build_series(frame, grid, horizon)
    result = train_predictor(data, config)
    chosen = {series_key(data, i): names for i, names in enumerate(result.chosen)}
    table = generate_forecast(data, chosen, config, None, LEVELS)
    seconds = time.perf_counter() - start
    row = {item: i for i, item in enumerate(table.item_ids)}
    return [table.mean[row[s.id]] for s in series], [table.values[row[s.id]] for s in series], seconds


def foretell_registry() -> tuple[dict[str, type], Callable[..., Any]] | None:
    try:
        from foretell.forecasting.models import FORECASTERS, make_forecaster
    except ImportError:
        return None
    return FORECASTERS, make_forecaster


# ---- driver -------------------------------------------------------------------------------


def run_frequency(
    m4: Path,
    frequency: str,
    limit: int | None,
    models: Sequence[str],
    published: dict[str, Any],
    foretell: Sequence[str] | None = None,
    deepar_epochs: int = 10,
) -> tuple[dict[str, Any], list[Row]]:
    h, m = HORIZON[frequency], SEASON[frequency]
    series = load_m4(m4, frequency, limit)
    full = limit is None or limit >= len(pd.read_csv(m4 / "Test" / f"{frequency}-test.csv", usecols=[0]))
    print(f"\n## {frequency}: {len(series)} series, h={h}, m={m}{'' if full else ' (subset)'}")

    # 1. Naive2: official submission and ours.
    submission = load_naive2_submission(m4, [s.id for s in series], h)
    official = score(series, [submission[s.id] for s in series], m)
    start = time.perf_counter()
    ours_f = [naive2_forecast(s.train, h, m) for s in series]
    naive2_s = time.perf_counter() - start
    ours = score(series, ours_f, m)
    diff = max(float(np.max(np.abs(o - submission[s.id]))) for o, s in zip(ours_f, series, strict=True))
    rel = max(
        float(np.max(np.abs(o - submission[s.id]) / np.maximum(np.abs(submission[s.id]), 1e-12)))
        for o, s in zip(ours_f, series, strict=True)
    )
    pub = published.get("Naive2", {}).get(frequency, {})
    print(f"Naive2 submission scored: sMAPE {official.smape:.3f}  MASE {official.mase:.3f}")
    print(f"Naive2 ours:              sMAPE {ours.smape:.3f}  MASE {ours.mase:.3f}  ({naive2_s:.2f} s)")
    nan = float("nan")
    print(f"Naive2 published:         sMAPE {pub.get('smape', nan):.3f}  MASE {pub.get('mase', nan):.3f}")
    print(f"ours vs submission: max |diff| {diff:.4g}, max relative diff {rel:.2e}")
    if full and pub:
        assert round(official.smape, 3) == round(pub["smape"], 3), (official.smape, pub["smape"])
        assert round(official.mase, 3) == round(pub["mase"], 3), (official.mase, pub["mase"])
    assert round(ours.smape, 3) == round(official.smape, 3), (ours.smape, official.smape)
    assert round(ours.mase, 3) == round(official.mase, 3), (ours.mase, official.mase)
    assert rel < 1e-6, f"our Naive2 differs from the submission by up to {rel:.2e} (relative)"
    naive2 = {
        "n_series": len(series),
        "full_set": full,
        "submission": {"smape": official.smape, "mase": official.mase},
        "ours": {"smape": ours.smape, "mase": ours.mase, "seconds": naive2_s},
        "published": pub,
        "max_abs_diff_vs_submission": diff,
        "max_rel_diff_vs_submission": rel,
    }

    rows = [make_row(frequency, "Naive2 (ours)", ours, ours, naive2_s)]
    for name in ("Naive2", "Theta"):
        p = published.get(name, {}).get(frequency)
        if p and full:
            row = Row(frequency, f"M4 {name} (published)", len(series), p["smape"], p["mase"], p["owa"])
            row.note = "published, full set"
            rows.append(row)

    # 2. statsforecast models.
    for name in models:
        try:
            means, quantiles, seconds = run_statsforecast(series, h, m, name)
        except Exception as e:  # a failing peer should not hide the others
            print(f"statsforecast {name}: failed: {e!r}")
            continue
        row = make_row(frequency, f"statsforecast {name}", score(series, means, m, quantiles), ours, seconds)
        print(f"statsforecast {name}: sMAPE {row.smape:.3f} MASE {row.mase:.3f} OWA {row.owa:.3f} ({seconds:.1f} s)")
        rows.append(row)

    # 3. Foretell's forecasters.
    registry = foretell_registry()
    if registry is None:
        print("foretell models: not available yet")
    else:
        forecasters, make_forecaster = registry
        makers: dict[str, Callable[[], Any]] = {name: functools.partial(make_forecaster, name) for name in forecasters}
        from foretell.forecasting.automl import AutoMl

        makers["automl"] = functools.partial(AutoMl, horizon=h)  # the service's defaults
        # Global and service-path rows: not one forecaster per series, so not in `makers`.
        whole: dict[str, Callable[[], tuple[list[np.ndarray], list[np.ndarray] | None, float]]] = {
            "deepar": lambda: run_deepar(series, h, m, deepar_epochs),
            "predictor-mase": lambda: run_predictor(series, h, frequency, "mase"),
            "predictor-wql": lambda: run_predictor(series, h, frequency, "average_wql"),
        }
        for name in foretell if foretell is not None else [*makers, *whole]:
            try:
                if name in whole:
                    means, quantiles, seconds = whole[name]()
                else:
                    means, quantiles, seconds = run_foretell(series, h, m, makers[name])
            except Exception as e:
                print(f"foretell {name}: failed: {e!r}")
                continue
            row = make_row(frequency, f"foretell {name}", score(series, means, m, quantiles), ours, seconds)
            print(f"foretell {name}: sMAPE {row.smape:.3f} MASE {row.mase:.3f} OWA {row.owa:.3f} ({seconds:.1f} s)")
            rows.append(row)
    return naive2, rows


def test_only_frequency(m4: Path, frequency: str, limit: int | None, published: dict[str, Any]) -> dict[str, Any]:
    """A frequency without training data (Yearly here): only the submission's sMAPE can be checked."""
    h = HORIZON[frequency]
    test = pd.read_csv(m4 / "Test" / f"{frequency}-test.csv", index_col=0, nrows=limit)
    ids = [str(i) for i in test.index]
    submission = load_naive2_submission(m4, ids, h)
    values = test.to_numpy(np.float64)
    ours = float(np.mean([smape(v[~np.isnan(v)], submission[i]) for i, v in zip(ids, values, strict=True)]))
    pub = published.get("Naive2", {}).get(frequency, {})
    print(f"\n## {frequency}: {len(ids)} series, test only (no training data: no MASE, no models)")
    print(f"Naive2 submission scored: sMAPE {ours:.3f}   published {pub.get('smape', float('nan')):.3f}")
    if limit is None and pub:
        assert round(ours, 3) == round(pub["smape"], 3), (ours, pub["smape"])
    return {"n_series": len(ids), "full_set": limit is None, "submission": {"smape": ours}, "published": pub}


def markdown(rows: Sequence[Row]) -> str:
    def f(v: float, digits: int = 3) -> str:
        return "" if np.isnan(v) else f"{v:.{digits}f}"

    lines = [
        "| frequency | model | series | sMAPE | MASE | OWA | mean wQL | fit s | note |",
        "|---|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        cells = [r.frequency, r.model, str(r.n_series), f(r.smape), f(r.mase), f(r.owa), f(r.mean_wql, 4)]
        lines.append("| " + " | ".join([*cells, f(r.seconds, 1), r.note]) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument("--frequencies", default="Hourly,Weekly")
    parser.add_argument("--limit", type=int, default=None, help="first N series per frequency (quick runs)")
    parser.add_argument("--models", default=",".join(STATSFORECAST_MODELS), help="statsforecast models ('' for none)")
    parser.add_argument(
        "--foretell", default=None, help="Foretell forecasters to run, comma-separated (default: all and automl)"
    )
    parser.add_argument("--deepar-epochs", type=int, default=10, help="epochs of the global DeepAR row (CPU)")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    try:  # one BLAS thread for every model, as Foretell's fits use: "fit s" is one core's time
        from threadpoolctl import threadpool_limits

        threadpool_limits(limits=1, user_api="blas")
    except ImportError:
        pass

    m4 = args.data / "m4"
    published = load_published(m4)
    models = [m for m in args.models.split(",") if m]
    unknown = set(models) - set(STATSFORECAST_MODELS)
    if unknown:
        parser.error(f"unknown statsforecast models: {sorted(unknown)}")
    started = time.perf_counter()
    reproduction: dict[str, Any] = {}
    rows: list[Row] = []
    for frequency in [f.strip() for f in args.frequencies.split(",") if f.strip()]:
        if not (m4 / "Train" / f"{frequency}-train.csv").exists():
            reproduction[frequency] = test_only_frequency(m4, frequency, args.limit, published)
            continue
        reproduction[frequency], freq_rows = run_frequency(
            m4,
            frequency,
            args.limit,
            models,
            published,
            args.foretell.split(",") if args.foretell else None,
            args.deepar_epochs,
        )
        rows.extend(freq_rows)
    total = time.perf_counter() - started
    print(f"\n{markdown(rows)}\n\ntotal {total:.0f} s")
    if args.json:
        machine = {"python": platform.python_version(), "cpus": os.cpu_count(), "platform": platform.platform()}
        payload = {
            "machine": machine,
            "args": {k: str(v) for k, v in vars(args).items()},
            "naive2_reproduction": reproduction,
            "rows": [r.__dict__ for r in rows],
            "seconds": total,
        }
        args.json.write_text(json.dumps(payload, indent=2, default=float))


if __name__ == "__main__":
    main()
