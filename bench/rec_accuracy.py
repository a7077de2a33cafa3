"""Recommendation accuracy: Foretell's recipes against `implicit` ALS and plain popularity on MovieLens.

Every rating is an implicit interaction. One split for everyone (`recipes.evaluation`):
  test        the latest 10% of each user's interactions (users with >= 5), `temporal_holdout`;
  validation  the same split applied again to the training part: all tuning happens here.
Models, fitted on the training part and scored on the test hold-out with a full ranking over
the catalogue (training items masked), by the same `evaluate`:
  foretell <recipe>        its default parameters;
  foretell <recipe> +hpo   `hpo.search` over `default_space(recipe)` on validation (--trials);
  implicit-als             `implicit.cpu.als.AlternatingLeastSquares`, a grid over factors,
                           regularization and alpha on validation (GRID, far more trials than
                           Foretell's search gets), refitted on train with the best;
  popularity               item counts (numpy), the same list for everyone.
"best foretell" is the Foretell row with the best VALIDATION ndcg@10 (no peeking at the test);
the goal check compares it with the best baseline on each test metric.
fit s = wall time of the fit on the training part (tuning time separately, in the JSON).

    python bench/rec_accuracy.py [--data ../shared/data] [--json out.json] [--trials 8]
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT / "services") not in sys.path:
    sys.path.insert(0, str(ROOT / "services"))

from foretell.recipes.base import Interactions, Param, Progress, Recommender, no_progress  # noqa: E402
from foretell.recipes.data import from_frame, user_item_matrix  # noqa: E402
from foretell.recipes.evaluation import PROTOCOLS, evaluate, has_time_signal, holdout  # noqa: E402
from foretell.recipes.hpo import default_space, search  # noqa: E402
from foretell.recipes.registry import recipe_class  # noqa: E402
from foretell.recipes.train import solution_params  # noqa: E402

RECIPES = ("popularity-count", "sims", "ease", "als", "sequence")
REPORTED = ("ndcg_at_10", "recall_at_20", "mrr", "catalog_coverage")
# implicit's confidence is alpha * value (value 1 here). A first, wider pass on MovieLens-100K
# validation (factors 32-256, regularization 0.01-50, alpha 1-50) peaked at alpha 1 and
# regularization 10: this grid brackets that region.
GRID = {"factors": (64, 128, 256), "regularization": (1.0, 10.0, 50.0, 200.0), "alpha": (1.0, 2.0, 5.0, 20.0)}


# ---- data ---------------------------------------------------------------------------------


def load(root: Path, name: str, timestamps: bool = True) -> Interactions:
    """A data set; without `timestamps`, its pairs in the file's order, as a file without a TIMESTAMP column."""
    if name == "movielens-100k":
        df = pd.read_csv(root / name / "u.data", sep="\t", names=["USER_ID", "ITEM_ID", "RATING", "TIMESTAMP"])
        return from_frame(df if timestamps else df.drop(columns="TIMESTAMP"))
    ratings = pd.read_csv(root / name / "ratings.csv")
    movies = pd.read_csv(root / name / "movies.csv")
    df = ratings.rename(columns={"userId": "USER_ID", "movieId": "ITEM_ID", "timestamp": "TIMESTAMP"})
    items = movies.rename(columns={"movieId": "ITEM_ID", "genres": "GENRES"})[["ITEM_ID", "GENRES"]]
    return from_frame(df if timestamps else df.drop(columns="TIMESTAMP"), items)


# ---- peers (wrapped as Recommenders so the same `evaluate` scores them) ---------------------


class Peer(Recommender):
    """A baseline scored by the same `evaluate`; never saved."""

    def save(self, directory: Path) -> None:
        raise NotImplementedError

    @classmethod
    def load(cls, directory: Path) -> Peer:
        raise NotImplementedError


class FactorPeer(Peer):
    name: ClassVar[str] = "implicit-als"
    params: ClassVar[dict[str, Param]] = {}

    def __init__(self, users: np.ndarray, items: np.ndarray) -> None:
        self.users, self.items, self.n_items = users, items, len(items)

    @classmethod
    def fit(cls, data: Interactions, params: dict[str, Any], progress: Progress = no_progress) -> FactorPeer:
        from implicit.cpu.als import AlternatingLeastSquares

        model = AlternatingLeastSquares(**params, iterations=15, random_state=0)
        model.fit(user_item_matrix(data), show_progress=False)
        return cls(np.asarray(model.user_factors), np.asarray(model.item_factors))

    def score(self, users: np.ndarray, histories: Sequence[np.ndarray]) -> np.ndarray:
        out: np.ndarray = self.users[users] @ self.items.T
        return out


class TextbookEase(Peer):
    """EASE as published (Steck, WWW 2019): B = I - P / diag(P), P = (X'X + l2 I)^-1, binary X, scores X_u B."""

    name: ClassVar[str] = "textbook-ease"
    params: ClassVar[dict[str, Param]] = {}

    def __init__(self, weights: np.ndarray) -> None:
        self.weights, self.n_items = weights, len(weights)

    @classmethod
    def fit(cls, data: Interactions, params: dict[str, Any], progress: Progress = no_progress) -> TextbookEase:
        x = user_item_matrix(data, binary=True)
        gram = (x.T @ x).toarray().astype(np.float64)
        gram[np.diag_indices_from(gram)] += float(params["l2"])
        p = np.linalg.inv(gram)
        b = -p / np.diag(p)
        b[np.diag_indices_from(b)] = 0.0
        return cls(b.astype(np.float32))

    def score(self, users: np.ndarray, histories: Sequence[np.ndarray]) -> np.ndarray:
        rows = np.zeros((len(histories), self.n_items), dtype=np.float32)
        for r, h in enumerate(histories):
            rows[r, np.asarray(h, dtype=np.int64)] = 1.0
        out: np.ndarray = rows @ self.weights
        return out


EASE_L2 = (50.0, 100.0, 200.0, 500.0, 1000.0, 2000.0, 5000.0)  # the textbook's lambda, picked on validation


class PopularityPeer(Peer):
    name: ClassVar[str] = "popularity"
    params: ClassVar[dict[str, Param]] = {}

    def __init__(self, counts: np.ndarray) -> None:
        self.counts, self.n_items = counts.astype(np.float32), len(counts)

    @classmethod
    def fit(cls, data: Interactions, params: dict[str, Any], progress: Progress = no_progress) -> PopularityPeer:
        return cls(np.bincount(data.items, minlength=data.n_items))

    def score(self, users: np.ndarray, histories: Sequence[np.ndarray]) -> np.ndarray:
        return np.tile(self.counts, (len(users), 1))


# ---- runs ---------------------------------------------------------------------------------


def timed_fit(fit: Callable[[], Recommender]) -> tuple[Recommender, float]:
    began = time.perf_counter()
    model = fit()
    return model, time.perf_counter() - began


def row(
    name: str,
    kind: str,
    model: Recommender,
    seconds: float,
    train: Interactions,
    test: dict[int, np.ndarray],
    **extra: Any,
) -> dict[str, Any]:
    metrics = evaluate(model, train, test)
    out = {"model": name, "kind": kind, "fit_seconds": seconds, **{m: metrics[m] for m in REPORTED}, **extra}
    print(f"  {name:28s} " + " ".join(f"{m}={out[m]:.4f}" for m in REPORTED) + f" fit={seconds:.1f}s", flush=True)
    return out


def foretell_rows(
    recipe: str,
    trials: int,
    train: Interactions,
    test: dict[int, np.ndarray],
    val_train: Interactions,
    val: dict[int, np.ndarray],
    overrides: dict[str, str],
) -> list[dict[str, Any]]:
    cls = recipe_class(recipe)
    defaults = solution_params(recipe, overrides, train)  # what training takes for this data out of the box
    validation = evaluate(cls.fit(val_train, defaults), val_train, val)
    model, seconds = timed_fit(lambda: cls.fit(train, defaults))
    label = f"foretell {recipe}" + "".join(f" {k}={v}" for k, v in overrides.items())
    rows = [row(label, "foretell", model, seconds, train, test, params=defaults, validation=validation)]
    space = default_space(recipe)
    if trials > 1 and space and recipe != "sequence":  # sequence: one CPU fit is minutes; defaults only
        began = time.perf_counter()
        best, tried = search(recipe, val_train, val, defaults, space, max_trials=trials)
        tuning = time.perf_counter() - began
        validation = next(t.metrics for t in tried if t.params == best)
        model, seconds = timed_fit(lambda: cls.fit(train, best))
        rows.append(
            row(
                f"foretell {recipe} +hpo",
                "foretell",
                model,
                seconds,
                train,
                test,
                params=best,
                validation=validation,
                tuning_seconds=tuning,
            )
        )
    return rows


def implicit_row(
    train: Interactions, test: dict[int, np.ndarray], val_train: Interactions, val: dict[int, np.ndarray]
) -> dict[str, Any]:
    began = time.perf_counter()
    best: tuple[float, dict[str, Any], dict[str, float]] | None = None
    for values in itertools.product(*GRID.values()):
        params = dict(zip(GRID, values, strict=True))
        metrics = evaluate(FactorPeer.fit(val_train, params), val_train, val)
        if best is None or metrics["ndcg_at_10"] > best[0]:
            best = (metrics["ndcg_at_10"], params, metrics)
    assert best is not None
    tuning = time.perf_counter() - began
    model, seconds = timed_fit(lambda: FactorPeer.fit(train, best[1]))
    return row(
        "implicit-als (tuned)",
        "peer",
        model,
        seconds,
        train,
        test,
        params=best[1],
        validation=best[2],
        tuning_seconds=tuning,
    )


def textbook_ease_row(
    train: Interactions, test: dict[int, np.ndarray], val_train: Interactions, val: dict[int, np.ndarray]
) -> dict[str, Any]:
    began = time.perf_counter()
    tried = [(evaluate(TextbookEase.fit(val_train, {"l2": l2}), val_train, val), l2) for l2 in EASE_L2]
    validation, l2 = max(tried, key=lambda t: t[0]["ndcg_at_10"])
    tuning = time.perf_counter() - began
    model, seconds = timed_fit(lambda: TextbookEase.fit(train, {"l2": l2}))
    return row("textbook ease (tuned)", "peer", model, seconds, train, test, params={"l2": l2},
               validation=validation, tuning_seconds=tuning)  # fmt: skip


def run(
    root: Path,
    name: str,
    trials: int,
    sequence_epochs: int,
    protocol: str = "auto",
    timestamps: bool = True,
    recipes: tuple[str, ...] = RECIPES,
) -> dict[str, Any]:
    data = load(root, name, timestamps)
    if protocol == "auto":  # as training chooses: by the times, when they order anything
        protocol = "time" if has_time_signal(data) else "random"
    train, test = holdout(data, protocol, 0.1, 5, None, 0)
    val_train, val = holdout(train, protocol, 0.1, 5, None, 1)
    name = f"{name}{'' if timestamps else ' without timestamps'}, {protocol} hold-out"
    print(f"{name}: {data.n_users} users, {data.n_items} items, {len(data.users)} interactions, {len(test)} test users")
    rows = []
    for recipe in recipes:
        try:
            recipe_class(recipe)
        except ImportError as exc:
            print(f"  foretell {recipe}: skipped ({exc})")
            continue
        overrides = {"epochs": str(sequence_epochs)} if recipe == "sequence" and sequence_epochs else {}
        rows += foretell_rows(recipe, trials, train, test, val_train, val, overrides)
    rows.append(implicit_row(train, test, val_train, val))
    rows.append(textbook_ease_row(train, test, val_train, val))
    model, seconds = timed_fit(lambda: PopularityPeer.fit(train, {}))
    rows.append(row("popularity", "peer", model, seconds, train, test))
    return {
        "dataset": name,
        "users": data.n_users,
        "items": data.n_items,
        "interactions": len(data.users),
        "test_users": len(test),
        "rows": rows,
    }


def goal(result: dict[str, Any]) -> tuple[str, dict[str, bool]]:
    ours = [r for r in result["rows"] if r["kind"] == "foretell"]
    best = max(ours, key=lambda r: r["validation"]["ndcg_at_10"])
    peers = [r for r in result["rows"] if r["kind"] == "peer"]
    return best["model"], {m: best[m] >= max(p[m] for p in peers) for m in REPORTED}


def table(result: dict[str, Any]) -> str:
    size = f"{result['users']} users, {result['items']} items, {result['interactions']} interactions"
    lines = [
        f"**{result['dataset']}** ({size}, {result['test_users']} test users)",
        "",
        "| model | NDCG@10 | Recall@20 | MRR | coverage@10 | fit s |",
        "|---|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        cells = [f"{r[m]:.4f}" for m in REPORTED] + [f"{r['fit_seconds']:.1f}"]
        lines.append(f"| {r['model']} | " + " | ".join(cells) + " |")
    best, checks = goal(result)
    verdict = ", ".join(f"{m} {'>=' if ok else '<'}" for m, ok in checks.items())
    lines += ["", f"best foretell (by validation ndcg@10): {best}; vs best baseline: {verdict}"]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument("--datasets", default="movielens-100k,movielens-latest-small")
    parser.add_argument("--trials", type=int, default=8, help="HPO trials per Foretell recipe (<= 1: defaults only)")
    parser.add_argument(
        "--sequence-epochs",
        type=int,
        default=10,
        help="epochs of the sequence recipe (0: its default; ~1 min each on 2 CPU cores)",
    )
    parser.add_argument(
        "--protocol",
        choices=("auto", *PROTOCOLS),
        default="auto",
        help="hold-out: each user's latest 10%% (time) or a random 10%% (random); auto: time where the times order "
        "anything, as training does",
    )
    parser.add_argument("--no-timestamps", action="store_true", help="drop TIMESTAMP: the pairs in file order")
    parser.add_argument("--recipes", default=",".join(RECIPES), help="Foretell recipes to run (comma-separated)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    recipes = tuple(args.recipes.split(","))
    results = [
        run(args.data, name, args.trials, args.sequence_epochs, args.protocol, not args.no_timestamps, recipes)
        for name in args.datasets.split(",")
    ]
    print()
    print("\n\n".join(table(r) for r in results))
    if args.json:
        machine = {"python": platform.python_version(), "cpus": os.cpu_count(), "platform": platform.platform()}
        args.json.write_text(json.dumps({"machine": machine, "results": results}, indent=2, default=_plain))


def _plain(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(type(value).__name__)


if __name__ == "__main__":
    main()
