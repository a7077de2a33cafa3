"""A trained solution version on disk: the model plus the interactions it was trained on.

Layout of an artifact directory (written once, then read-only):
  meta.json         format, recipe, params, snapshot_time, metrics
  interactions.npz  the training `Interactions` (serving derives histories, popularity and
                    item metadata from it)
  model/            whatever the recipe's `save` writes
A directory is complete only once meta.json exists: it is written last, via rename.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from foretell.core import formats
from foretell.recipes.base import Interactions, Recommender
from foretell.recipes.registry import recipe_class

_FEATURE = "feature:"
# Of meta.json and everything beside it (core/formats.py). Artifacts from before formats were recorded are 1.
FORMAT = 1


@dataclass
class Artifact:
    model: Recommender
    data: Interactions
    recipe: str
    params: dict[str, Any]
    # Epoch seconds when the dataset snapshot was taken; later events come from WatchEvents.
    snapshot_time: int = 0
    metrics: dict[str, float] = field(default_factory=dict)


def save_interactions(data: Interactions, path: Path) -> None:
    arrays: dict[str, np.ndarray] = {
        "user_ids": np.asarray(data.user_ids, dtype=str),
        "item_ids": np.asarray(data.item_ids, dtype=str),
        "users": data.users.astype(np.int32),
        "items": data.items.astype(np.int32),
        "timestamps": data.timestamps.astype(np.int64),
        "event_types": data.event_types.astype(np.int16),
        "event_type_names": np.asarray(data.event_type_names, dtype=str),
    }
    if data.values is not None:
        arrays["values"] = data.values.astype(np.float32)
    if data.item_created is not None:
        arrays["item_created"] = data.item_created.astype(np.float64)
    for name, column in data.item_features.items():
        arrays[_FEATURE + name] = np.asarray(column, dtype=str)
    with path.open("wb") as out:
        np.savez(out, allow_pickle=False, **arrays)


def load_interactions(path: Path) -> Interactions:
    with np.load(path, allow_pickle=False) as z:
        return Interactions(
            user_ids=z["user_ids"].astype(object),
            item_ids=z["item_ids"].astype(object),
            users=z["users"],
            items=z["items"],
            timestamps=z["timestamps"],
            event_types=z["event_types"],
            event_type_names=tuple(str(n) for n in z["event_type_names"]),
            values=z["values"] if "values" in z.files else None,
            item_features={k[len(_FEATURE) :]: z[k].astype(object) for k in z.files if k.startswith(_FEATURE)},
            item_created=z["item_created"] if "item_created" in z.files else None,
        )


def save_artifact(directory: Path, artifact: Artifact) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "model").mkdir(exist_ok=True)
    artifact.model.save(directory / "model")
    save_interactions(artifact.data, directory / "interactions.npz")
    meta = {
        "format": FORMAT,
        "recipe": artifact.recipe,
        "params": artifact.params,
        "snapshot_time": artifact.snapshot_time,
        "metrics": artifact.metrics,
    }
    partial = directory / "meta.json.partial"
    partial.write_text(json.dumps(meta, indent=2, sort_keys=True))
    os.replace(partial, directory / "meta.json")


def load_artifact(directory: Path) -> Artifact:
    """FileNotFoundError when the directory holds no complete artifact; NewerFormat when a newer server wrote it."""
    meta = json.loads((directory / "meta.json").read_text())
    formats.check(meta, FORMAT, "model artifact", missing=1)
    model = recipe_class(meta["recipe"]).load(directory / "model")
    return Artifact(
        model=model,
        data=load_interactions(directory / "interactions.npz"),
        recipe=meta["recipe"],
        params=meta["params"],
        snapshot_time=int(meta.get("snapshot_time", 0)),
        metrics={k: float(v) for k, v in meta.get("metrics", {}).items()},
    )
