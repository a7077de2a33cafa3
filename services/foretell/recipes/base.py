"""What every recipe trains on (`Interactions`) and what serving calls (`Recommender`)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

# progress(fraction_done in [0, 1], message, **counters) — e.g. progress(0.4, "epoch 4/10", epoch=4, loss=0.31)
Progress = Callable[..., None]


def no_progress(fraction: float, message: str = "", **counters: float) -> None:
    """A Progress that reports nowhere."""


@dataclass(frozen=True)
class Param:
    """One documented hyper-parameter of a recipe. Values arrive as strings (the proto map)."""

    kind: type  # int, float, bool or str
    default: Any
    doc: str
    low: float | None = None  # inclusive bounds for numbers
    high: float | None = None
    choices: tuple[str, ...] = ()


@dataclass(frozen=True)
class Factors:
    """A factor model's scores as inner products, so that serving can search them approximately (recommendation/ann.py).

    score(users, histories) == queries(users, histories) @ items.T + bias, and
    similar(items) == cosine of items[items] with every row of items, + bias.
    """

    items: np.ndarray  # (n_items, f) float32
    bias: np.ndarray  # (n_items,) float32
    queries: Callable[[np.ndarray, Sequence[np.ndarray]], np.ndarray]  # (users, histories) -> (len(users), f)


@dataclass
class Interactions:
    """Interactions of one dataset group with users and items indexed 0..n-1, sorted by time.

    The item index covers the whole catalogue: items that only appear in the items dataset
    (cold items, no interactions yet) have an index too.
    """

    user_ids: np.ndarray  # (n_users,) object array of external ids
    item_ids: np.ndarray  # (n_items,) object array of external ids
    users: np.ndarray  # (n,) int32 user index per interaction
    items: np.ndarray  # (n,) int32 item index per interaction
    timestamps: np.ndarray  # (n,) int64 epoch seconds, non-decreasing
    event_types: np.ndarray  # (n,) int16 code into event_type_names
    event_type_names: tuple[str, ...] = ("",)
    values: np.ndarray | None = None  # (n,) float32 EVENT_VALUE, NaN where absent
    # Item metadata column -> (n_items,) object array of strings ("" where missing).
    item_features: dict[str, np.ndarray] = field(default_factory=dict)
    # (n_items,) float64 CREATION_TIMESTAMP epoch seconds, NaN where unknown.
    item_created: np.ndarray | None = None

    @property
    def n_users(self) -> int:
        return len(self.user_ids)

    @property
    def n_items(self) -> int:
        return len(self.item_ids)


class Recommender(ABC):
    """A trained model. Every method is pure numpy in, numpy out; no I/O but save/load."""

    name: ClassVar[str]
    params: ClassVar[dict[str, Param]]
    # True when scores depend on the order of the latest events (the sequence recipe):
    # serving then passes histories that include events received through PutEvents.
    uses_recent_events: ClassVar[bool] = False

    n_items: int

    @classmethod
    @abstractmethod
    def fit(cls, data: Interactions, params: dict[str, Any], progress: Progress = no_progress) -> Recommender:
        """Trains on `data` with typed, validated `params` (see `registry.parse_params`)."""

    def refit(self, data: Interactions, params: dict[str, Any], progress: Progress = no_progress) -> Recommender:
        """The model fitted on `data`: the data this one was fitted on plus more, in the same index spaces.

        train.py's final fit on everything after the hold-out fit. By default a fit from scratch;
        an iterative recipe overrides it to start from this model (als: a few passes, not a full fit).
        """
        return type(self).fit(data, params, progress)

    @abstractmethod
    def score(self, users: np.ndarray, histories: Sequence[np.ndarray]) -> np.ndarray:
        """(len(users), n_items) float32 scores, higher is better.

        `users[i]` is a training user index or -1 for a user the model has not seen;
        `histories[i]` is that user's item indices in time order (training interactions
        followed by real-time events). Scores of items in the history are not masked here.
        """

    def score_items(self, users: np.ndarray, histories: Sequence[np.ndarray], items: np.ndarray) -> np.ndarray:
        """(len(users), len(items)) float32 scores of just `items` (GetPersonalizedRanking).

        The same values as `score(users, histories)[:, items]`; recipes override it to avoid
        scoring the whole catalogue for a short input list.
        """
        return np.asarray(self.score(users, histories)[:, np.asarray(items, dtype=np.int64)], dtype=np.float32)

    def similar(self, items: np.ndarray) -> np.ndarray:
        """(len(items), n_items) item-to-item scores; by default the score of a one-item history."""
        return self.score(np.full(len(items), -1), [np.array([i]) for i in items])

    def factors(self) -> Factors | None:
        """The model as inner products (see Factors) when it is a factor model; None otherwise."""
        return None

    @abstractmethod
    def save(self, directory: Path) -> None:
        """Writes the model's own files into an existing `directory`."""

    @classmethod
    @abstractmethod
    def load(cls, directory: Path) -> Recommender:
        """Reads what `save` wrote."""
