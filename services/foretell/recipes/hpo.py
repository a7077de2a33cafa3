"""Bounded hyper-parameter search on a validation hold-out.

Every range maps to a coordinate in [0, 1] (linear or log scale; a categorical range picks
value floor(u * len)). Trial 1 is the fixed parameters projected into the ranges (so the search
never does worse than the starting point on validation); the first half of the trials then
spreads over the space as a Latin hypercube (each range cut into equal strata, one sample per
stratum), the second half samples around the best trial so far with a shrinking radius.
Configurations already tried are not fitted again (their result is reused).
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from foretell.recipes.base import Interactions, Progress, no_progress
from foretell.recipes.evaluation import evaluate
from foretell.recipes.registry import ParamError, parse_params, recipe_class


@dataclass(frozen=True)
class IntegerRange:
    name: str
    low: int
    high: int


@dataclass(frozen=True)
class ContinuousRange:
    name: str
    low: float
    high: float
    log_scale: bool = False


@dataclass(frozen=True)
class CategoricalRange:
    name: str
    values: tuple[str, ...]


ParamRange = IntegerRange | ContinuousRange | CategoricalRange


@dataclass
class Trial:
    number: int  # 1-based
    params: dict[str, Any]
    metrics: dict[str, float] = field(default_factory=dict)
    objective: float = math.nan
    seconds: float = 0.0
    error: str = ""  # why the trial failed (its parameters were refused); empty when it ran


# Ranges searched when HPO is asked for without any: the parameters that matter most on
# MovieLens-like data, each within its Param bounds. Names a recipe lacks are skipped.
_DEFAULT_SPACES: dict[str, list[ParamRange]] = {
    "popularity-count": [ContinuousRange("half_life_days", 1.0, 3650.0, True)],
    "sims": [
        IntegerRange("neighbors", 20, 500),
        ContinuousRange("shrink", 1.0, 200.0, True),
        ContinuousRange("alpha", 0.3, 0.8),
        ContinuousRange("recent_half_life", 1.0, 100.0, True),
    ],
    "ease": [ContinuousRange("l2", 10.0, 5000.0, True), ContinuousRange("recent_half_life", 1.0, 100.0, True)],
    "als": [
        IntegerRange("factors", 32, 256),
        ContinuousRange("regularization", 0.01, 100.0, True),
        ContinuousRange("alpha", 0.1, 50.0, True),
        ContinuousRange("recent_half_life", 1.0, 100.0, True),
    ],
    "sequence": [ContinuousRange("learning_rate", 3e-4, 3e-3, True), ContinuousRange("dropout", 0.0, 0.5)],
}


def default_space(recipe: str) -> list[ParamRange]:
    """The ranges searched when none are given (empty for an unknown recipe)."""
    known = recipe_class(recipe).params
    return [r for r in _DEFAULT_SPACES.get(recipe, []) if r.name in known]


def _is_log(r: ParamRange) -> bool:
    if isinstance(r, ContinuousRange):
        return r.log_scale
    # Integer ranges spanning an order of magnitude (factors, neighbours) are searched in log scale.
    return isinstance(r, IntegerRange) and r.low > 0 and r.high >= 8 * r.low


def _value(r: ParamRange, u: float) -> Any:
    """The value at coordinate u in [0, 1]."""
    if isinstance(r, CategoricalRange):
        return r.values[min(int(u * len(r.values)), len(r.values) - 1)]
    lo, hi = float(r.low), float(r.high)
    x = math.exp(math.log(lo) + u * (math.log(hi) - math.log(lo))) if _is_log(r) else lo + u * (hi - lo)
    if isinstance(r, IntegerRange):
        return int(min(max(round(x), r.low), r.high))
    return float(min(max(x, lo), hi))


def _coordinate(r: ParamRange, value: Any) -> float:
    """The coordinate of `value` (clipped into the range)."""
    if isinstance(r, CategoricalRange):
        text = str(value).lower() if isinstance(value, bool) else str(value)
        at = r.values.index(text) if text in r.values else 0
        return (at + 0.5) / len(r.values)
    lo, hi = float(r.low), float(r.high)
    if hi <= lo:
        return 0.5
    x = min(max(float(value), lo), hi)
    if _is_log(r):
        return (math.log(x) - math.log(lo)) / (math.log(hi) - math.log(lo))
    return (x - lo) / (hi - lo)


def _check(recipe: str, space: Sequence[ParamRange]) -> None:
    specs = recipe_class(recipe).params
    for r in space:
        if r.name not in specs:
            raise ParamError(r.name, f"unknown hyper-parameter of {recipe}")
        if isinstance(r, CategoricalRange):
            if not r.values:
                raise ParamError(r.name, "a categorical range needs at least one value")
        elif r.high < r.low:
            raise ParamError(r.name, "the range's maximum is below its minimum")
        elif _is_log(r) and r.low <= 0:
            raise ParamError(r.name, "a log-scale range must be positive")


def _clipped(r: ParamRange, value: Any) -> Any:
    """`value` moved into the range (a categorical value not listed becomes the first one)."""
    if isinstance(r, CategoricalRange):
        return r.values[int(_coordinate(r, value) * len(r.values))]
    clipped = min(max(value, r.low), r.high)
    return int(clipped) if isinstance(r, IntegerRange) else float(clipped)


def _params(
    recipe: str, fixed: dict[str, Any], space: Sequence[ParamRange], point: np.ndarray | None
) -> dict[str, Any]:
    """`fixed` with the range values at `point` (None: the fixed values clipped into the ranges)."""
    params = dict(fixed)
    for i, r in enumerate(space):
        value = _clipped(r, fixed.get(r.name)) if point is None else _value(r, float(point[i]))
        # Categorical values are text: parse them like the request's hyper-parameters.
        params[r.name] = parse_params(recipe, {r.name: value})[r.name] if isinstance(value, str) else value
    return params


def _objective(metrics: dict[str, float], name: str) -> float:
    if name not in metrics:
        raise ValueError(f"unknown objective metric {name!r}; known: {', '.join(sorted(metrics))}")
    return float(metrics[name])


def search(
    recipe: str,
    train: Interactions,
    validation_holdout: dict[int, np.ndarray],
    fixed_params: dict[str, Any],
    space: Sequence[ParamRange],
    objective: str = "ndcg_at_10",
    maximize: bool = True,
    max_trials: int = 8,
    progress: Progress = no_progress,
    seed: int = 0,
) -> tuple[dict[str, Any], list[Trial]]:
    """Fits up to `max_trials` configurations on `train`, scores them on `validation_holdout`.

    `fixed_params` are typed (see `registry.parse_params`); ranges in `space` override them.
    Returns the best parameters (all of them, typed) and every trial in order. A trial whose
    parameters the recipe refuses (ValueError) is recorded with its error; if all fail, the last
    error is raised.
    """
    _check(recipe, space)
    cls = recipe_class(recipe)
    n = max(int(max_trials), 1)
    rng = np.random.default_rng(seed)
    dims = len(space)
    n_spread = max(math.ceil(n / 2) - 1, 0)
    # Latin hypercube: per dimension, one sample in each of n_spread strata, strata shuffled.
    spread = (rng.permuted(np.tile(np.arange(n_spread), (dims, 1)), axis=1).T + rng.random((n_spread, dims))) / max(
        n_spread, 1
    )
    start = np.array([_coordinate(r, fixed_params.get(r.name)) for r in space])
    trials: list[Trial] = []
    done: dict[str, Trial] = {}
    best: Trial | None = None
    best_point = start
    last_error: Exception | None = None
    sign = 1.0 if maximize else -1.0
    for t in range(n):
        if t == 0:
            point = start
        elif t <= n_spread:
            point = spread[t - 1]
        else:
            radius = 0.25 * 0.7 ** (t - n_spread - 1)
            point = np.clip(best_point + rng.normal(0.0, radius, dims), 0.0, 1.0)
        params = _params(recipe, fixed_params, space, None if t == 0 else point)
        trial = Trial(number=t + 1, params=params)
        key = repr(sorted(params.items()))
        base = t / n

        def inner(fraction: float, message: str = "", base: float = base, at: int = t + 1, **counters: float) -> None:
            progress(base + min(max(fraction, 0.0), 1.0) / n, f"trial {at}/{n}: {message}", trial=at, **counters)

        progress(base, f"trial {t + 1}/{n}", trial=t + 1)
        began = time.perf_counter()
        if key in done:
            previous = done[key]
            trial.metrics, trial.objective, trial.error = previous.metrics, previous.objective, previous.error
        else:
            try:
                model = cls.fit(train, params, inner)
                trial.metrics = evaluate(model, train, validation_holdout)
                trial.objective = _objective(trial.metrics, objective)
            except ParamError as exc:
                trial.error, last_error = f"{exc.name}: {exc}", exc
            except ValueError as exc:
                if "objective metric" in str(exc):
                    raise
                trial.error, last_error = str(exc), exc
            done[key] = trial
        trial.seconds = time.perf_counter() - began
        trials.append(trial)
        if not trial.error and (best is None or sign * trial.objective > sign * best.objective):
            best, best_point = trial, point
        progress((t + 1) / n, f"trial {t + 1}/{n} done", trial=t + 1, objective=trial.objective)
    if best is None:
        assert last_error is not None
        raise last_error
    return dict(best.params), trials
