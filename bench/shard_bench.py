"""Wall time of one predictor job unsharded vs split into shards, through the real LocalLauncher and worker.

A synthetic snapshot (`--series` daily series of `--days` days: level, trend, weekly season, noise) and one
AutoML predictor spec (`--candidates`, 2 backtest windows, horizon 7) are trained as:
  - 1 process, fits in-process (`workers=1`): the single-core baseline;
  - 1 process, fits in its process pool over every CPU (`workers=0`): what an unsharded job does today;
  - N shards (`--shards`, LocalLauncher running them `--parallel` at a time, the CPUs shared among them),
    then the merge the training service runs (timed on its own).
Each run starts the worker command the way the training service does and ends when its result is there; the
sharded run's artifact is checked to be the unsharded one (choices and item accuracies byte for byte).

    PYTHONPATH=services python bench/shard_bench.py [--series 400] [--shards 2] [--repeat 2] [--out table.md]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT / "services") not in sys.path:
    sys.path.insert(0, str(ROOT / "services"))

# Loaded here as the training service has it loaded: the merge's time is then the merge alone.
from foretell.training import predictor_worker, shards  # noqa: E402, F401
from foretell.training.launcher import LocalLauncher  # noqa: E402

DAY = 86_400
START = 1_700_006_400


def write_snapshot(directory: Path, series: int, days: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    directory.mkdir(parents=True)
    lines = ["ITEM_ID,TIMESTAMP,TARGET_VALUE"]
    for i in range(series):
        level, trend, season = rng.uniform(5, 80), rng.normal(0, 0.2), rng.uniform(0, 0.6)
        for d in range(days):
            value = max(0.0, level + trend * d) * (1 + season * math.sin(2 * math.pi * d / 7)) + rng.normal(0, 1.5)
            lines.append(f"s{i:05d},{START + d * DAY},{value:.4f}")
    (directory / "target_time_series.csv").write_text("\n".join(lines) + "\n")


def spec_for(snapshot: Path, artifact: Path, candidates: list[str], workers: int, n_shards: int) -> dict[str, Any]:
    return {
        "kind": "predictor",
        "candidates": candidates,
        "horizon": 7,
        "frequency": "D",
        "quantiles": [0.1, 0.5, 0.9],
        "dimensions": [],
        "backtest_windows": 2,
        "backtest_offset": 7,
        "metric": "average_wql",
        "ensemble": False,
        "fill_policies": [],
        "hyper_parameters": {},
        "snapshot_dir": str(snapshot),
        "artifact_dir": str(artifact),
        "workers": workers,
        "shards": n_shards,
    }


def run_job(job_dir: Path, spec: dict[str, Any], launcher: LocalLauncher) -> tuple[float, float, float]:
    """(seconds until every worker ended, seconds of the merge, CPU seconds of the workers and their fit pools)."""
    job_dir.mkdir(parents=True)
    (job_dir / "spec.json").write_text(json.dumps(spec))
    cpu = _children_cpu()
    started = time.perf_counter()
    handle = launcher.start(job_dir)
    while (status := launcher.status(handle, job_dir)).running:
        time.sleep(0.05)
    workers_done = time.perf_counter()
    cpu = _children_cpu() - cpu
    if status.exit_code != 0:
        raise SystemExit(f"{job_dir.name}: worker failed ({status.reason or status.exit_code})")
    merge = 0.0
    if shards.count(spec) > 1:
        shards.merge(job_dir)
        merge = time.perf_counter() - workers_done
    else:
        result = json.loads((job_dir / "result.json").read_text())
        assert result["ok"], result
    return workers_done - started, merge, cpu


def _children_cpu() -> float:
    """User + system CPU of ended child processes (LocalLauncher reaps its workers; they reap their pools)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--series", type=int, default=400)
    parser.add_argument("--days", type=int, default=120)
    parser.add_argument("--shards", type=int, default=2)
    parser.add_argument("--parallel", type=int, default=0, help="shards at a time; 0: the CPU count")
    parser.add_argument("--candidates", default="naive,seasonal-naive,ets,theta")
    parser.add_argument("--repeat", type=int, default=2, help="runs of each setting; the table shows the best")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    candidates = args.candidates.split(",")

    root = Path(tempfile.mkdtemp(prefix="shard-bench-"))
    try:
        snapshot = root / "snapshot"
        write_snapshot(snapshot, args.series, args.days)
        parallel = args.parallel or os.cpu_count() or 1
        launcher = LocalLauncher(max_parallel_shards=parallel)
        settings = [
            ("1 process, fits in-process (workers=1)", 1, 1),
            ("1 process, fit pool over every CPU (workers=0)", 0, 1),
            (
                f"{args.shards} shards, {min(args.shards, parallel)} at a time",
                0,
                args.shards,
            ),
        ]
        best: dict[str, tuple[float, float, float]] = {}
        for run in range(args.repeat):
            for label, workers, n in settings:
                name = f"{run}-{workers}-{n}"
                spec = spec_for(snapshot, root / "artifacts" / name, candidates, workers, n)
                seconds, merge, cpu = run_job(root / "jobs" / name, spec, launcher)
                load = os.getloadavg()[0]
                print(f"run {run}: {label}: {seconds:.2f} s, merge {merge:.3f} s, CPU {cpu:.1f} s, load {load:.1f}")
                if label not in best or seconds + merge < best[label][0] + best[label][1]:
                    best[label] = (seconds, merge, cpu)
        # The sharded artifact is the unsharded one.
        whole, sharded = root / "artifacts" / "0-0-1", root / "artifacts" / f"0-0-{args.shards}"
        same = (whole / "item_accuracy.jsonl").read_bytes() == (sharded / "item_accuracy.jsonl").read_bytes() and (
            json.loads((whole / "predictor.json").read_text())["chosen"]
            == json.loads((sharded / "predictor.json").read_text())["chosen"]
        )
        base = best[settings[0][0]][0] + best[settings[0][0]][1]
        lines = [
            f"{args.series} daily series x {args.days} days, AutoML over {', '.join(candidates)}, 2 backtest windows, "
            f"horizon 7; {os.cpu_count()} CPUs, Python {platform.python_version()}; best of {args.repeat}; "
            f"load average {os.getloadavg()[0]:.1f} at the end.",
            "",
            "| run | wall s (workers) | merge s | worker CPU s | speed-up vs 1 process |",
            "|---|---|---|---|---|",
        ]
        for label, _, _ in settings:
            seconds, merge, cpu = best[label]
            lines.append(f"| {label} | {seconds:.2f} | {merge:.3f} | {cpu:.1f} | {base / (seconds + merge):.2f}x |")
        lines += ["", f"sharded artifact identical to the unsharded one: {'yes' if same else 'NO'}"]
        table = "\n".join(lines)
        print(table)
        if args.out:
            args.out.write_text(table + "\n")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
