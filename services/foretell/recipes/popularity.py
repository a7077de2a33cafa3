"""popularity-count: how often each item was interacted with, optionally decayed with age.

The same scores for every user: the baseline every other recipe must beat, and the fallback for
users without a history.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from foretell.recipes.base import Interactions, Param, Progress, Recommender, no_progress

_DAY = 86_400.0


class Popularity(Recommender):
    name: ClassVar[str] = "popularity-count"
    params: ClassVar[dict[str, Param]] = {
        "half_life_days": Param(
            float,
            0.0,
            "Weight of an interaction halves every this many days before the latest one; 0 = plain counts.",
            0.0,
            36_500.0,
        ),
    }

    def __init__(self, counts: np.ndarray, config: dict[str, Any]) -> None:
        self.counts = counts.astype(np.float32)
        self.n_items = len(counts)
        self.config = config

    @classmethod
    def fit(cls, data: Interactions, params: dict[str, Any], progress: Progress = no_progress) -> Popularity:
        half_life = float(params.get("half_life_days", 0.0))
        weights = None
        if half_life > 0 and len(data.timestamps):
            age_days = (data.timestamps.max() - data.timestamps).astype(np.float64) / _DAY
            weights = np.exp2(-age_days / half_life)
        counts = np.bincount(data.items, weights=weights, minlength=data.n_items)
        top = counts.max() if len(counts) else 0.0
        progress(1.0, "counted", items=float(data.n_items))
        return cls(counts / top if top > 0 else counts, {"half_life_days": half_life})

    def score(self, users: np.ndarray, histories: Sequence[np.ndarray]) -> np.ndarray:
        return np.tile(self.counts, (len(histories), 1))

    def score_items(self, users: np.ndarray, histories: Sequence[np.ndarray], items: np.ndarray) -> np.ndarray:
        return np.tile(self.counts[np.asarray(items, dtype=np.int64)], (len(histories), 1)).astype(np.float32)

    def similar(self, items: np.ndarray) -> np.ndarray:
        return np.tile(self.counts, (len(items), 1))

    def save(self, directory: Path) -> None:
        np.save(directory / "counts.npy", self.counts, allow_pickle=False)
        (directory / "config.json").write_text(json.dumps(self.config))

    @classmethod
    def load(cls, directory: Path) -> Popularity:
        counts = np.load(directory / "counts.npy", allow_pickle=False)
        return cls(counts, json.loads((directory / "config.json").read_text()))
