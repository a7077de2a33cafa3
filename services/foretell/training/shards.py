"""Sharded training jobs: one job whose series are split across N worker processes (or N pods).

A job is sharded when its spec.json says `"shards": N` with N > 1 (today only large predictors whose
algorithms all fit series independently; see `plan`). Shard i is the same worker command with the
environment variable JOB_COMPLETION_INDEX=i, the variable Kubernetes sets in an Indexed Job and
`LocalLauncher` sets for its processes. Shard i writes only under JOB_DIR/shards/i/: its progress
file, its result.json (last, by rename) and its output; the training service merges the outputs
once every shard has succeeded (`merge`, called by `foretell.training.jobs`).

This module is imported by the training service and by the worker, so it loads nothing heavy.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from foretell.core.settings import Settings

INDEX_ENV = "JOB_COMPLETION_INDEX"
# Processes a worker may use for its per-series fits; a launcher running several shards on one machine
# sets it so that they share the CPUs instead of each forking a pool as large as the machine.
PROCESSES_ENV = "FORETELL_WORKER_PROCESSES"
SHARDS_DIR = "shards"
OUTPUT = "output"  # JOB_DIR/shards/i/output/: what shard i hands to the merge
# Algorithms whose fits are independent per series, so a predictor made of them splits by series.
# DeepAR is absent on purpose: it is one global model trained on every series (and the only model for
# cold-start items), so splitting its series would train N different, weaker models.
PER_SERIES = frozenset({"naive", "seasonal-naive", "ets", "arima", "theta", "npts"})


def plan(candidates: Sequence[str], n_series: int, series_per_shard: int, max_shards: int) -> int:
    """How many shards a predictor over `n_series` series runs as: 1 (not split) unless every candidate is
    per-series and there are more than `series_per_shard` (0: never split) series."""
    if series_per_shard <= 0 or n_series <= series_per_shard or not set(candidates) <= PER_SERIES:
        return 1
    return max(1, min(max_shards, math.ceil(n_series / series_per_shard)))


def plan_snapshot(spec: dict[str, Any], snapshot_dir: Path, settings: Settings) -> int:
    """`plan` for a predictor spec on a snapshot, counting its series only when it could be split."""
    if settings.forecast_shard_series <= 0 or not set(spec["candidates"]) <= PER_SERIES:
        return 1
    n_series = count_series(snapshot_dir, spec.get("dimensions") or ())
    return plan(spec["candidates"], n_series, settings.forecast_shard_series, settings.forecast_max_shards)


def count_series(snapshot_dir: Path, dimensions: Sequence[str]) -> int:
    """Distinct (item, forecast dimensions) keys of the snapshot's target time series; 0 when they do not read
    (the worker then reports what is wrong with them)."""
    import pandas as pd

    from foretell.core import snapshot_files
    from foretell.forecasting.series import TARGET_FILE

    keys = ["ITEM_ID", *dimensions]
    try:
        schema = snapshot_files.schema(snapshot_dir, "target_time_series")
        if schema is not None:
            if not set(keys) <= set(schema.names):
                return 0
            table = snapshot_files.distinct(snapshot_dir, "target_time_series", keys)  # streamed: constant memory
            return 0 if table is None else table.num_rows
        seen: set[tuple[str, ...]] = set()
        for chunk in pd.read_csv(
            snapshot_dir / TARGET_FILE, usecols=keys, dtype=str, keep_default_na=False, chunksize=1_000_000
        ):
            seen.update(chunk[keys].itertuples(index=False, name=None))
    except (OSError, ValueError):
        return 0
    return len(seen)


def count(spec: dict[str, Any]) -> int:
    return max(1, int(spec.get("shards") or 1))


def count_of(job_dir: Path) -> int:
    """The job's shard count from its spec.json (1 when unreadable: the launcher then fails plainly)."""
    try:
        return count(json.loads((job_dir / "spec.json").read_text()))
    except (OSError, ValueError):
        return 1


def shard_dir(job_dir: Path, index: int) -> Path:
    return job_dir / SHARDS_DIR / str(index)


def output_dir(job_dir: Path, spec: dict[str, Any]) -> Path:
    """Where this worker process writes progress.jsonl and result.json: the job dir, or its shard's dir."""
    n = count(spec)
    if n == 1:
        return job_dir
    raw = os.environ.get(INDEX_ENV, "")
    if not raw.isdigit() or int(raw) >= n:
        raise SystemExit(f"a job of {n} shards needs {INDEX_ENV} in 0..{n - 1}, got {raw!r}")
    out = shard_dir(job_dir, int(raw))
    out.mkdir(parents=True, exist_ok=True)
    return out


def index_of(spec: dict[str, Any]) -> int:
    return int(os.environ[INDEX_ENV]) if count(spec) > 1 else 0


def partition(keys: Sequence[Any], n: int, index: int) -> list[int]:
    """The series (positions in `keys`) of shard `index` of `n`: contiguous, near-equal runs of the keys in
    sorted order, so the split depends on the set of series alone and every shard computes the same one."""
    order = sorted(range(len(keys)), key=lambda i: keys[i])
    return sorted(order[index * len(order) // n : (index + 1) * len(order) // n])


def read_result(job_dir: Path, index: int) -> dict[str, Any] | None:
    try:
        result = json.loads((shard_dir(job_dir, index) / "result.json").read_text())
    except (OSError, ValueError):
        return None
    return result if isinstance(result, dict) else None


def remove_outputs(job_dir: Path) -> None:
    """Drops the shards' outputs once the job's result is recorded (their logs and results stay)."""
    for output in (job_dir / SHARDS_DIR).glob(f"*/{OUTPUT}"):
        shutil.rmtree(output, ignore_errors=True)


def write_json(path: Path, data: dict[str, Any]) -> None:
    """Written whole or not at all (by rename)."""
    partial = path.with_name(path.name + ".partial")
    partial.write_text(json.dumps(data))
    os.replace(partial, path)


def merge(job_dir: Path) -> dict[str, Any]:
    """Combines the outputs of a sharded job whose shards all succeeded into the job's artifact; returns what
    the unsharded worker would have put in result.json (besides "ok")."""
    spec = json.loads((job_dir / "spec.json").read_text())
    dirs = [shard_dir(job_dir, i) for i in range(count(spec))]
    if spec["kind"] == "predictor":
        from foretell.training.predictor_worker import merge_predictor_shards

        return merge_predictor_shards(spec, dirs)
    raise ValueError(f"jobs of kind {spec['kind']!r} are never sharded")
