"""Predictors: backtest candidate algorithms over every series, choose per series, generate forecasts.

Pure computation over a `SeriesSet` (no gRPC, no files): the training worker loads the snapshot,
calls `train_predictor`, stores what it returns, and later calls `generate_forecast`.

Backtest windows (Amazon Forecast's rule): with horizon h, `offset` (default h) and `windows` n,
window w (0 = latest) trains on each series up to `L - offset - w*h` and scores the next h steps.
Every series is back-filled to the dataset end, so the windows are the same dates for every series.
A series too short for a window (fewer than `MIN_TRAIN` points before it) sits that window out.

AutoML ranks the candidates per series by the chosen metric averaged over the windows and serves
`automl.select_candidates` of them (one, or an ensemble merged by `automl.combine`). The "chosen"
accuracy scores that served choice on the same windows it was chosen on, so it is optimistic by
construction, as Amazon Forecast's own AutoML figures are.

Statistical models are fitted per series (in worker processes when there are many series); the
deep model ("deepar") is one global model per window, plus a final one on all the data, which
alone can forecast cold-start items (items with metadata and no history).
"""

from __future__ import annotations

import inspect
import math
import multiprocessing
import os
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from typing import TYPE_CHECKING, Any

import numpy as np

from foretell.forecasting import automl
from foretell.forecasting.base import Forecast
from foretell.forecasting.metrics import ErrorMetrics, aggregate, evaluate_forecast
from foretell.forecasting.models import FORECASTERS, make_forecaster
from foretell.forecasting.series import SeriesSet
from foretell.forecasting.table import ForecastTable

if TYPE_CHECKING:  # torch loads only for jobs that use the deep model
    from foretell.forecasting.deepar import DeepAr, GlobalSeries

DEEP = "deepar"
ALGORITHMS: tuple[str, ...] = (*FORECASTERS, DEEP)
METRICS: tuple[str, ...] = ("average_wql", "wape", "rmse", "mape", "mase", "smape")
MIN_TRAIN = 2
# Below this many series a process pool costs more than it saves.
PARALLEL_MIN_SERIES = 64

Progress = Callable[..., None]


def _no_progress(fraction: float, message: str = "", **counters: float) -> None:
    pass


class ParamError(ValueError):
    """A hyper-parameter that does not exist or does not parse; `.name` is its key as given."""

    def __init__(self, name: str, message: str) -> None:
        super().__init__(message)
        self.name = name


# ---- configuration ---------------------------------------------------------------------


def _param_types(algorithm: str) -> dict[str, type]:
    if algorithm == DEEP:
        from foretell.forecasting.deepar import DeepAr

        return dict(DeepAr.PARAMS)
    signature = inspect.signature(FORECASTERS[algorithm].__init__)
    return {name: _kind(p) for name, p in signature.parameters.items() if name != "self"}


def _kind(p: inspect.Parameter) -> type:
    """The type a constructor parameter takes, from its default (or its annotation when that is None)."""
    if p.default is not None and p.default is not inspect.Parameter.empty:
        return type(p.default)
    text = str(p.annotation)
    return int if "int" in text else float if "float" in text else str


def _coerce(kind: type, raw: str) -> Any:
    if kind is bool:
        if raw.lower() not in ("true", "false", "1", "0"):
            raise ValueError
        return raw.lower() in ("true", "1")
    value = kind(raw)
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError  # NaN passes every range check
    return value


def parse_hyper_parameters(algorithms: Sequence[str], raw: Mapping[str, str]) -> dict[str, dict[str, Any]]:
    """Typed hyper-parameters per algorithm. With one algorithm keys are plain ("epochs"); with several
    (AutoML) they are prefixed by the algorithm ("deepar.epochs")."""
    out: dict[str, dict[str, Any]] = {a: {} for a in algorithms}
    for key, value in raw.items():
        if len(algorithms) == 1 and "." not in key:
            algorithm, name = algorithms[0], key
        else:
            algorithm, _, name = key.partition(".")
            if algorithm not in out:
                raise ParamError(
                    key, f"must be <algorithm>.<parameter> with an algorithm among {', '.join(algorithms)}"
                )
        types = _param_types(algorithm)
        if name not in types:
            known = ", ".join(sorted(types)) or "none"
            raise ParamError(key, f"is not a hyper-parameter of {algorithm}; known: {known}")
        try:
            out[algorithm][name] = _coerce(types[name], value)
        except ValueError:
            raise ParamError(key, f"{value[:40]!r} is not a valid {types[name].__name__}") from None
        if algorithm != DEEP:
            try:
                make_forecaster(algorithm, **out[algorithm])
            except (ValueError, TypeError) as exc:
                raise ParamError(key, str(exc)) from None
    if DEEP in out and out[DEEP]:
        from foretell.forecasting.deepar import DeepAr

        try:
            DeepAr(horizon=1, **out[DEEP])
        except (ValueError, TypeError) as exc:
            raise ParamError(f"{DEEP}." if len(algorithms) > 1 else "", str(exc)) from None
    return out


@dataclass(frozen=True)
class PredictorConfig:
    candidates: tuple[str, ...]  # one algorithm, or AutoML's candidates
    horizon: int
    quantiles: tuple[float, ...]
    backtest_windows: int = 1
    backtest_offset: int = 0  # 0: the horizon
    metric: str = "average_wql"
    ensemble: bool = True  # AutoML only: merge the best candidates instead of picking one
    params: dict[str, dict[str, Any]] = field(default_factory=dict)
    workers: int = 0  # processes for per-series fitting; 0: every CPU
    seed: int = 0

    @property
    def offset(self) -> int:
        return self.backtest_offset or self.horizon

    @property
    def automl(self) -> bool:
        return len(self.candidates) > 1


def check_history(lengths: Sequence[int], config: PredictorConfig) -> None:
    """ValueError (naming forecast_horizon) when even the longest series cannot hold the backtest."""
    needed = config.offset + (config.backtest_windows - 1) * config.horizon + max(MIN_TRAIN, config.horizon)
    longest = max(lengths, default=0)
    if longest < needed:
        raise ValueError(
            f"forecast_horizon {config.horizon} with {config.backtest_windows} backtest window(s) and offset "
            f"{config.offset} needs series of at least {needed} steps at this frequency; the longest has {longest}"
        )


# ---- results ---------------------------------------------------------------------------


@dataclass
class PredictorResult:
    windows: list[tuple[int, int]]  # (first, last) forecast timestamp of each window, oldest first
    by_algorithm: dict[str, list[ErrorMetrics | None]]  # pooled over series, per window
    chosen_windows: list[ErrorMetrics | None]  # what the predictor serves, per window
    chosen: list[list[str]]  # per series: the algorithms it is forecast with
    item_metrics: list[ErrorMetrics | None]  # per series, the served choice over every window
    deepar: DeepAr | None  # trained on all the data when any series uses it


def metric_value(m: ErrorMetrics, metric: str) -> float:
    value = {
        "average_wql": m.mean_wql,
        "wape": m.wape,
        "rmse": m.rmse,
        "mape": m.mape,
        "mase": m.mase,
        "smape": m.smape,
    }[metric]
    return float(value) if np.isfinite(value) else float("inf")


def average_windows(per_window: Sequence[ErrorMetrics | None]) -> ErrorMetrics | None:
    """Metrics over several windows: Amazon Forecast reports their plain average."""
    present = [m for m in per_window if m is not None]
    if not present:
        return None
    if len(present) == 1:
        return present[0]
    first = present[0]

    def mean(attr: str) -> float:
        values = np.array([getattr(m, attr) for m in present], dtype=np.float64)
        values = values[np.isfinite(values)]
        return float(values.mean()) if values.size else float("nan")

    wql = tuple(float(np.mean([m.wql[i] for m in present])) for i in range(len(first.levels)))
    return ErrorMetrics(
        smape=mean("smape"),
        mase=mean("mase"),
        wape=mean("wape"),
        rmse=mean("rmse"),
        mape=mean("mape"),
        levels=first.levels,
        wql=wql,
        mean_wql=mean("mean_wql"),
        n_series=max(m.n_series for m in present),
        n_points=sum(m.n_points for m in present),
        sum_abs_error=sum(m.sum_abs_error for m in present),
        sum_abs_actual=sum(m.sum_abs_actual for m in present),
        sum_sq_error=sum(m.sum_sq_error for m in present),
        sum_ape=sum(m.sum_ape for m in present),
        n_ape=sum(m.n_ape for m in present),
        sum_pinball=tuple(sum(m.sum_pinball[i] for m in present) for i in range(len(first.levels))),
    )


# ---- per-series statistical fits (run in worker processes) ----------------------------

# (series index, algorithm, train values, season length, horizon, quantiles, params)
_Task = tuple[int, str, np.ndarray, int, int, tuple[float, ...], dict[str, Any]]


def _fit_predict(task: _Task) -> tuple[int, str, Forecast]:
    index, algorithm, y, season, horizon, quantiles, params = task
    return index, algorithm, make_forecaster(algorithm, **params).fit(y, season).predict(horizon, quantiles)


def _run_tasks(tasks: list[_Task], workers: int, progress: Callable[[int], None]) -> dict[tuple[int, str], Forecast]:
    out: dict[tuple[int, str], Forecast] = {}
    n_workers = workers or os.cpu_count() or 1
    if n_workers <= 1 or len(tasks) < PARALLEL_MIN_SERIES:
        for i, task in enumerate(tasks):
            index, algorithm, forecast = _fit_predict(task)
            out[index, algorithm] = forecast
            progress(i + 1)
        return out
    # fork: the children inherit the loaded modules instead of importing them again.
    with ProcessPoolExecutor(n_workers, mp_context=multiprocessing.get_context("fork")) as pool:
        chunk = max(1, min(32, len(tasks) // (n_workers * 8)))
        for i, (index, algorithm, forecast) in enumerate(pool.map(_fit_predict, tasks, chunksize=chunk)):
            out[index, algorithm] = forecast
            progress(i + 1)
    return out


# ---- the deep model ------------------------------------------------------------------


def _global(series: SeriesSet, cut: Sequence[int] | None, horizon: int) -> list[GlobalSeries]:
    """The series as DeepAR inputs, truncated to `cut[i]` points when given (a backtest window)."""
    from foretell.forecasting.deepar import GlobalSeries

    m = series.frequency.season_length
    out = []
    for i, target in enumerate(series.targets):
        n = len(target) if cut is None else cut[i]
        related = None if series.related is None else series.related[i][: n + horizon]
        static = None if series.static is None else series.static[i]
        # Every series ends at the same date, so phases counted back from the end line up.
        out.append(GlobalSeries(np.nan_to_num(target[:n]), related, static, (-n) % m))
    return out


def _fit_deepar(inputs: list[GlobalSeries], series: SeriesSet, config: PredictorConfig, progress: Progress) -> DeepAr:
    from foretell.forecasting.deepar import DeepAr

    params = {"seed": config.seed, **config.params[DEEP]}
    model = DeepAr(horizon=config.horizon, season_length=series.frequency.season_length, **params)
    return model.fit(inputs, series.cardinalities, progress)


# ---- training ------------------------------------------------------------------------


@dataclass(frozen=True)
class Pooled:
    """Per-series metrics of a group of series in a form where groups (shards) add up to what `aggregate`
    gives over all of them: WAPE, RMSE, MAPE and wQL are ratios of sums, which `aggregate` pools, but sMAPE
    and MASE are plain means over the series where they are finite, so they are kept as a sum and a count
    (a mean of the groups' means would weigh a small group like a large one)."""

    sums: ErrorMetrics  # aggregate() over the group
    smape_sum: float
    smape_n: int
    mase_sum: float
    mase_n: int

    @classmethod
    def of(cls, per_series: Sequence[ErrorMetrics]) -> Pooled:
        smape = [m.smape for m in per_series if np.isfinite(m.smape)]
        mase = [m.mase for m in per_series if np.isfinite(m.mase)]
        return cls(aggregate(per_series), float(sum(smape)), len(smape), float(sum(mase)), len(mase))

    def __add__(self, other: Pooled) -> Pooled:
        return Pooled(
            aggregate([self.sums, other.sums]),
            self.smape_sum + other.smape_sum,
            self.smape_n + other.smape_n,
            self.mase_sum + other.mase_sum,
            self.mase_n + other.mase_n,
        )

    def metrics(self) -> ErrorMetrics:
        nan = float("nan")
        return replace(
            self.sums,
            smape=self.smape_sum / self.smape_n if self.smape_n else nan,
            mase=self.mase_sum / self.mase_n if self.mase_n else nan,
        )

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> Pooled:
        tuples = {k: tuple(raw["sums"][k]) for k in ("levels", "wql", "sum_pinball")}
        return cls(**{**raw, "sums": ErrorMetrics(**{**raw["sums"], **tuples})})


@dataclass
class PredictorPart:
    """The backtest of some of the series (a shard's, or all of them): per-series results for those series
    and the per-window scores as `Pooled` sums, so that parts over disjoint series merge (`merge_parts`)
    into the result of one backtest over all of them."""

    indices: list[int]  # positions of the covered series in the whole SeriesSet, ascending
    windows: list[tuple[int, int]]  # (first, last) forecast timestamp of each window, oldest first
    by_algorithm: dict[str, list[Pooled | None]]  # per window, oldest first
    chosen_windows: list[Pooled | None]
    chosen: list[list[str]]  # per covered series
    item_metrics: list[ErrorMetrics | None]  # per covered series


def backtest_part(
    series: SeriesSet,
    config: PredictorConfig,
    indices: Sequence[int] | None = None,
    progress: Progress = _no_progress,
    longest: int | None = None,
) -> PredictorPart:
    """Backtests every candidate on the series at `indices` (default all) and chooses per series.

    The history check is made on the whole set (`longest`: its longest series when `series` holds one
    shard's series only), so every shard of a predictor accepts or refuses it alike. The deep model is
    global (one model over every series), so it is backtested only when `indices` covers every series.
    """
    h, season = config.horizon, series.frequency.season_length
    lengths = [len(t) for t in series.targets]
    check_history(lengths if longest is None else [longest], config)
    covered = list(range(len(lengths))) if indices is None else sorted(indices)
    n_windows = config.backtest_windows
    statistical = [c for c in config.candidates if c != DEEP]
    has_deep = DEEP in config.candidates
    if has_deep and (len(covered) != len(lengths) or longest is not None):
        raise ValueError("the deep model is global: a predictor using it cannot be trained on part of the series")
    # cuts[w][i]: training points of series i in window w (0 = latest).
    cuts = [[length - config.offset - w * h for length in lengths] for w in range(n_windows)]
    steps = n_windows * (len(statistical) * len(covered) + (1 if has_deep else 0)) + (1 if has_deep else 0)
    done = 0

    def advance(count: int, message: str) -> None:
        progress(min(0.99, (done + count) / max(steps, 1)), message)

    forecasts: list[dict[tuple[int, str], Forecast]] = []
    for w in range(n_windows):
        tasks: list[_Task] = [
            (i, algorithm, series.targets[i][: cuts[w][i]], season, h, config.quantiles, config.params[algorithm])
            for i in covered
            if cuts[w][i] >= MIN_TRAIN
            for algorithm in statistical
        ]
        window_label = f"backtest window {n_windows - w} of {n_windows}"
        forecasts.append(
            _run_tasks(tasks, config.workers, lambda k, label=window_label: advance(k, label))  # type: ignore[misc]
        )
        done += len(statistical) * len(covered)
    # The deep model after every statistical fit: the fit pool forks, and a fork after torch's threads
    # have started is not safe.
    for w in range(n_windows if has_deep else 0):
        eligible = [i for i in covered if cuts[w][i] >= MIN_TRAIN]
        inputs = _global(series, cuts[w], h)
        model = _fit_deepar([inputs[i] for i in eligible], series, config, _sub(progress, done, steps))
        for i, forecast in zip(eligible, model.predict([inputs[i] for i in eligible], config.quantiles), strict=True):
            forecasts[w][i, DEEP] = forecast
        done += 1

    # Every backtest forecast scored once: scored[w][i, algorithm].
    scored = [
        {key: _window_score(series.targets[key[0]], cuts[w][key[0]], h, f, season) for key, f in got.items()}
        for w, got in enumerate(forecasts)
    ]

    chosen: list[list[str]] = []
    for i in covered:
        per_algorithm: dict[str, list[ErrorMetrics]] = {}
        for w in range(n_windows):
            for algorithm in config.candidates:
                if (i, algorithm) in scored[w]:
                    per_algorithm.setdefault(algorithm, []).append(scored[w][i, algorithm])
        if not config.automl or not per_algorithm:
            chosen.append(list(config.candidates[:1]) if not config.automl else _fallback(config))
            continue
        scores = {a: float(np.mean([metric_value(m, config.metric) for m in ms])) for a, ms in per_algorithm.items()}
        chosen.append(automl.select_candidates(scores, "ensemble" if config.ensemble else "select"))

    by_algorithm: dict[str, list[Pooled | None]] = {a: [] for a in config.candidates}
    chosen_windows: list[Pooled | None] = []
    item_windows: list[list[ErrorMetrics]] = [[] for _ in covered]
    for w in range(n_windows):
        for algorithm in config.candidates:
            ms = [m for (i, a), m in sorted(scored[w].items()) if a == algorithm]
            by_algorithm[algorithm].insert(0, Pooled.of(ms) if ms else None)
        served = []
        for k, (i, names) in enumerate(zip(covered, chosen, strict=True)):
            parts = [forecasts[w][i, a] for a in names if (i, a) in forecasts[w]]
            if not parts:
                continue
            m = _window_score(series.targets[i], cuts[w][i], h, automl.combine(parts), season)
            served.append(m)
            item_windows[k].append(m)
        chosen_windows.insert(0, Pooled.of(served) if served else None)

    windows = []
    for w in reversed(range(n_windows)):
        last_step = -config.offset - w * h  # relative to the dataset end + 1 step
        first = series.frequency.add(series.end, last_step + 1)
        last = series.frequency.add(series.end, last_step + h)
        windows.append((int(np.asarray(first).item()), int(np.asarray(last).item())))
    return PredictorPart(
        indices=covered,
        windows=windows,
        by_algorithm=by_algorithm,
        chosen_windows=chosen_windows,
        chosen=chosen,
        item_metrics=[aggregate(ms) if ms else None for ms in item_windows],
    )


def merge_parts(parts: Sequence[PredictorPart]) -> PredictorResult:
    """One result from parts over disjoint series (shards), as if one backtest had covered them all; the
    per-series lists follow the series' positions. No deep model: that is trained only unsplit."""
    order = sorted((i, p, k) for p, part in enumerate(parts) for k, i in enumerate(part.indices))
    first = parts[0]

    def pooled(per_part: Sequence[Pooled | None]) -> ErrorMetrics | None:
        present = [p for p in per_part if p is not None]
        if not present:
            return None
        total = present[0]
        for p in present[1:]:
            total = total + p
        return total.metrics()

    return PredictorResult(
        windows=first.windows,
        by_algorithm={
            a: [pooled([part.by_algorithm[a][w] for part in parts]) for w in range(len(first.windows))]
            for a in first.by_algorithm
        },
        chosen_windows=[pooled([part.chosen_windows[w] for part in parts]) for w in range(len(first.windows))],
        chosen=[parts[p].chosen[k] for _, p, k in order],
        item_metrics=[parts[p].item_metrics[k] for _, p, k in order],
        deepar=None,
    )


def train_predictor(series: SeriesSet, config: PredictorConfig, progress: Progress = _no_progress) -> PredictorResult:
    """Backtests every candidate, chooses per series, and trains the final deep model if one is used."""
    result = merge_parts([backtest_part(series, config, None, progress)])
    if DEEP in config.candidates and (any(DEEP in names for names in result.chosen) or series.cold_items):
        steps = config.backtest_windows * (len(config.candidates) - 1) * len(series.targets)
        steps += config.backtest_windows + 1
        done = steps - 1
        progress(done / max(steps, 1), "training the deep model on all the data")
        result.deepar = _fit_deepar(_global(series, None, config.horizon), series, config, _sub(progress, done, steps))
    return result


def _fallback(config: PredictorConfig) -> list[str]:
    """A series too short to backtest gets the simplest candidate available."""
    for simple in ("seasonal-naive", "naive", "ets", "theta"):
        if simple in config.candidates:
            return [simple]
    return list(config.candidates[:1])


def _window_score(target: np.ndarray, cut: int, horizon: int, f: Forecast, season: int) -> ErrorMetrics:
    """Metrics of a forecast made from target[:cut] against the `horizon` values that follow."""
    insample = target[:cut]
    m = season if len(insample) > season else 1
    return evaluate_forecast(target[cut : cut + horizon], f.mean, f.levels, f.quantiles, insample, m)


def _sub(progress: Progress, done: int, steps: int) -> Progress:
    """Maps a sub-task's 0..1 progress into its share of the whole."""

    def report(fraction: float, message: str = "", **counters: float) -> None:
        progress(min(0.99, (done + fraction) / max(steps, 1)), message, **counters)

    return report


# ---- forecasting ---------------------------------------------------------------------


def generate_forecast(
    series: SeriesSet,
    chosen: Mapping[tuple[str, str], Sequence[str]],
    config: PredictorConfig,
    deepar: Callable[[], DeepAr] | None,
    quantiles: tuple[float, ...],
    progress: Progress = _no_progress,
) -> ForecastTable:
    """Refits each series' chosen algorithms on all its history and forecasts `config.horizon` steps.

    `chosen` maps (item id, dimensions key) to algorithm names; series absent from it (new since the
    predictor was trained) get AutoML's fallback. Cold-start items are forecast only by the deep model.
    `deepar` loads the predictor's deep model; it is called after the statistical fits (see train_predictor).
    """
    h, season = config.horizon, series.frequency.season_length
    names = [list(chosen.get(series_key(series, i)) or _fallback(config)) for i in range(len(series.targets))]
    if deepar is None:
        names = [[a for a in n if a != DEEP] or _fallback_statistical(config) for n in names]
    tasks: list[_Task] = [
        (i, a, series.targets[i], season, h, quantiles, config.params.get(a, {}))
        for i, n in enumerate(names)
        for a in n
        if a != DEEP
    ]
    total = max(len(tasks), 1)
    got = _run_tasks(tasks, config.workers, lambda k: progress(0.9 * k / total, f"{k} of {total} fits"))
    model = deepar() if deepar is not None else None
    if model is not None:
        wanted = [i for i, n in enumerate(names) if DEEP in n]
        inputs = _global(series, None, h)
        for i, f in zip(wanted, model.predict([inputs[i] for i in wanted], quantiles), strict=True):
            got[i, DEEP] = f
    merged = [automl.combine([got[i, a] for a in n]) for i, n in enumerate(names)]
    item_ids = list(series.item_ids)
    dimensions = [dict(d) for d in series.dimensions]
    if model is not None and series.cold_items:
        from foretell.forecasting.deepar import GlobalSeries

        cold = [
            GlobalSeries(
                np.zeros(0),
                None if series.cold_related is None else series.cold_related[j],
                None if series.cold_static is None else series.cold_static[j],
                0,
            )
            for j in range(len(series.cold_items))
        ]
        merged += model.predict(cold, quantiles)
        item_ids += list(series.cold_items)
        dimensions += [{d: "" for d in series.dimension_fields} for _ in series.cold_items]
    future = np.asarray(series.future(0, h), dtype=np.int64)
    n = len(merged)
    return ForecastTable(
        item_ids=item_ids,
        dimensions=dimensions,
        timestamps=np.tile(future, (n, 1)),
        mean=np.array([f.mean for f in merged], dtype=np.float64).reshape(n, h),
        levels=np.asarray(quantiles, dtype=np.float64),
        values=np.array([f.quantiles for f in merged], dtype=np.float64).reshape(n, len(quantiles), h),
    )


def _fallback_statistical(config: PredictorConfig) -> list[str]:
    names = [a for a in _fallback(config) if a != DEEP]
    return names or ["seasonal-naive"]


def series_key(series: SeriesSet, i: int) -> tuple[str, str]:
    return name_key(series.item_ids[i], series.dimensions[i])


def name_key(item_id: str, dims: dict[str, str]) -> tuple[str, str]:
    """A series' key in artifacts: its item and its dimension values as "name=value&..." (names sorted)."""
    return item_id, "&".join(f"{k}={dims[k]}" for k in sorted(dims))
