"""The one training entry point the worker calls: split, (tune), fit, evaluate, refit on everything.

Interactions whose times order nothing (no TIMESTAMP column, one time for all, or the file's order:
`evaluation.has_time_signal`) are held out at random, and the recipes' `recent_half_life` is 0 unless
the solution sets it: weighing "recent" items by file position would be noise, and a time-based
hold-out would reward exactly that noise.

Stages and their share of the progress bar, proportional to their expected cost (one unit is
one fit on the training part):
  1. hold-out: the latest 10% of each user's interactions (users with >= 5, at most EVAL_MAX_USERS
     sampled users) become the test hold-out; a random 10% without a time signal;
  2. with HPO: the training part is split the same way again (validation, at most
     HPO_MAX_USERS users) and `hpo.search` runs its trials on it (one unit each);
  3. fit on the training part with the chosen parameters, evaluate on the test hold-out
     (a full ranking over the catalogue) -> metrics;
  4. refit on ALL interactions with the same parameters: the model that gets deployed. It starts
     from the model of step 3 (`Recommender.refit`): for als a fifth of the iterations instead
     of a second full fit (the hold-out is a few percent of the data, the factors barely move).
A dataset too small for a hold-out (no user with >= 5 interactions) skips 2-3: no metrics.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from foretell.recipes.base import Interactions, Progress, Recommender
from foretell.recipes.evaluation import evaluate, has_time_signal, holdout
from foretell.recipes.hpo import (
    CategoricalRange,
    ContinuousRange,
    IntegerRange,
    ParamRange,
    Trial,
    default_space,
    search,
)
from foretell.recipes.registry import parse_params, recipe_class

HOLDOUT_FRACTION = 0.1
MIN_INTERACTIONS = 5
EVAL_MAX_USERS = 10_000  # metrics on a sample: a full ranking costs users x items
HPO_MAX_USERS = 5_000
DEFAULT_TRIALS = 8
DEFAULT_OBJECTIVE = "ndcg_at_10"


@dataclass
class HpoSpec:
    """The solution's HpoConfig as JSON (`MessageToDict(..., preserving_proto_field_name=True)`).

    Fields left at their proto default are absent there and take the defaults here; int64 values
    arrive as strings. Without any range, `default_space(recipe)` is searched.
    """

    objective_metric: str = ""
    objective_type: str | int = ""  # OBJECTIVE_TYPE_MINIMIZE (or 2) minimises; anything else maximises
    max_trials: int | str = 0  # 0: DEFAULT_TRIALS
    max_parallel_trials: int | str = 0  # accepted, trials run one after another
    integer_ranges: list[dict[str, Any]] = field(default_factory=list)
    continuous_ranges: list[dict[str, Any]] = field(default_factory=list)
    categorical_ranges: list[dict[str, Any]] = field(default_factory=list)

    @property
    def objective(self) -> str:
        return self.objective_metric or DEFAULT_OBJECTIVE

    @property
    def maximize(self) -> bool:
        return not (self.objective_type == 2 or "MINIMIZE" in str(self.objective_type).upper())

    @property
    def trials(self) -> int:
        return int(self.max_trials) or DEFAULT_TRIALS

    def space(self, recipe: str) -> list[ParamRange]:
        ranges: list[ParamRange] = [
            *(
                IntegerRange(r["name"], int(r.get("min_value", 0)), int(r.get("max_value", 0)))
                for r in self.integer_ranges
            ),
            *(
                ContinuousRange(
                    r["name"], float(r.get("min_value", 0.0)), float(r.get("max_value", 0.0)), bool(r.get("log_scale"))
                )
                for r in self.continuous_ranges
            ),
            *(CategoricalRange(r["name"], tuple(str(v) for v in r.get("values", []))) for r in self.categorical_ranges),
        ]
        return ranges or default_space(recipe)


@dataclass
class TrainResult:
    model: Recommender  # fitted on all the data: deploy this
    params: dict[str, Any]  # typed, complete (defaults filled in, tuned values when HPO ran)
    metrics: dict[str, float]  # on the test hold-out; empty when the data was too small for one
    trials: list[Trial] = field(default_factory=list)


class _Monotone:
    """Forwards progress so that the fraction never goes back, mapping stages onto sub-ranges."""

    def __init__(self, progress: Progress) -> None:
        self._progress = progress
        self._done = 0.0

    def __call__(self, fraction: float, message: str = "", **counters: float) -> None:
        self._done = max(self._done, min(max(fraction, 0.0), 1.0))
        self._progress(self._done, message, **counters)

    def stage(self, lo: float, hi: float, label: str = "") -> Progress:
        def report(fraction: float, message: str = "", **counters: float) -> None:
            text = f"{label}: {message}" if label and message else label or message
            self(lo + (hi - lo) * min(max(fraction, 0.0), 1.0), text, **counters)

        return report


def solution_params(recipe: str, raw_params: dict[str, str], data: Interactions) -> dict[str, Any]:
    """`parse_params` with the defaults the data calls for: `recent_half_life` 0 (unless set) where the
    interactions' times order nothing (see the module docstring)."""
    unset = "recent_half_life" in recipe_class(recipe).params and "recent_half_life" not in raw_params
    if unset and not has_time_signal(data):
        raw_params = {**raw_params, "recent_half_life": "0"}
    return parse_params(recipe, raw_params)


def train_solution(
    data: Interactions,
    recipe: str,
    raw_params: dict[str, str],
    hpo: HpoSpec | None,
    progress: Progress,
    seed: int = 0,
) -> TrainResult:
    """Tuned (optionally), evaluated and finally fitted model of `recipe` on `data`.

    Raises `registry.ParamError` for bad hyper-parameters or ranges and ValueError when the
    recipe refuses the data (e.g. ease above max_items).
    """
    cls = recipe_class(recipe)
    timed = has_time_signal(data)
    params = solution_params(recipe, raw_params, data)
    protocol = "time" if timed else "random"
    report = _Monotone(progress)
    report(0.0, "splitting off the hold-out" + ("" if timed else " at random: the interactions' times order nothing"))
    train, held = holdout(data, protocol, HOLDOUT_FRACTION, MIN_INTERACTIONS, EVAL_MAX_USERS, seed)
    trials: list[Trial] = []
    n_trials = hpo.trials if hpo is not None and held else 0
    # Cost units: each trial and the evaluation fit ~1, evaluation 0.2, the final fit ~1 (warm-started
    # recipes take less; the bar then jumps at the end, which is harmless).
    total = 0.05 + n_trials + (1.2 if held else 0.0) + 1.0
    at = 0.05 / total
    if hpo is not None and held:
        space = hpo.space(recipe)
        val_train, val_holdout = holdout(train, protocol, HOLDOUT_FRACTION, MIN_INTERACTIONS, HPO_MAX_USERS, seed + 1)
        end = at + n_trials / total
        if val_holdout and space:
            params, trials = search(
                recipe,
                val_train,
                val_holdout,
                params,
                space,
                hpo.objective,
                hpo.maximize,
                n_trials,
                report.stage(at, end),
                seed,
            )
        else:
            report(end, "hyper-parameter search skipped: too few interactions to validate on")
        at = end
    metrics: dict[str, float] = {}
    model: Recommender | None = None
    if held:
        model = cls.fit(train, params, report.stage(at, at + 1.0 / total, "fitting"))
        at += 1.0 / total
        report(at, "evaluating")
        metrics = evaluate(model, train, held)
        at += 0.2 / total
    report(at, "final fit")
    final_progress = report.stage(at, 1.0, "final fit")
    final = cls.fit(data, params, final_progress) if model is None else model.refit(data, params, final_progress)
    report(1.0, "done")
    return TrainResult(model=final, params=params, metrics=metrics, trials=trials)
