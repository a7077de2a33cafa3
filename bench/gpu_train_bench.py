"""Training throughput of the torch models (sequence recipe, DeepAR): CPU, CUDA, and N processes under torchrun.

Each row is one training run in a fresh process (or N ranks under `python -m torch.distributed.run
--standalone`, with DistributedDataParallel through `foretell.training.distributed`, as the training
worker runs them). Samples are training windows: a sequence window is one user's latest `max_len`
items (every position predicts its next item), a DeepAR window is context + horizon steps of one
series. `batch_size` is the global batch of one optimizer step; under torchrun each rank trains on
its 1/N of it, so the rows of one model take the same steps on the same windows and their samples/s
compare directly. The first epoch is warm-up (CUDA context, kernels, allocator) and is not timed:
samples/s = windows of epochs 2.. / seconds between the end of epoch 1 and the end of the last epoch,
read from the models' own progress counters (data preparation is excluded).

Data: synthetic by default (sequence: users walking item cycles; DeepAR: seasonal series at two
levels), or MovieLens for the sequence model with --movielens DIR (a folder holding `u.data` or
`ratings.csv`, e.g. ../shared/data/movielens-latest-small); DeepAR always trains on the synthetic panel.

    python bench/gpu_train_bench.py                                   # CPU: 1 process, 2 gloo processes
    python bench/gpu_train_bench.py --device cuda --nproc 1           # one GPU
    python bench/gpu_train_bench.py --device cpu cuda --nproc 1 2 4   # the table for a 4-GPU box
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT / "services") not in sys.path:
    sys.path.insert(0, str(ROOT / "services"))

from foretell.forecasting.deepar import DeepAr, GlobalSeries  # noqa: E402
from foretell.recipes.base import Interactions  # noqa: E402
from foretell.recipes.data import from_frame  # noqa: E402
from foretell.recipes.sequence import Sequence  # noqa: E402
from foretell.training import distributed  # noqa: E402

MODELS = ("sequence", "deepar")
SEQUENCE: dict[str, Any] = {"max_len": 50, "dim": 64, "layers": 2, "heads": 2, "dropout": 0.1, "batch_size": 128}
DEEPAR: dict[str, Any] = {"hidden_size": 40, "num_layers": 2, "dropout": 0.1, "batch_size": 128}
HORIZON, SEASON = 24, 24


# ---- data --------------------------------------------------------------------------------------------


def walks(n_users: int, length: int, n_items: int, seed: int = 0) -> Interactions:
    """Users walk cycles of 8 items (90%) or jump anywhere: a learnable next-item signal."""
    rng = np.random.default_rng(seed)
    items = np.empty((n_users, length), dtype=np.int64)
    items[:, 0] = rng.integers(n_items, size=n_users)
    for t in range(1, length):
        prev = items[:, t - 1]
        step = (prev // 8) * 8 + (prev % 8 + 1) % 8
        jump = rng.integers(n_items, size=n_users)
        items[:, t] = np.where(rng.random(n_users) < 0.9, np.minimum(step, n_items - 1), jump)
    users = np.repeat(np.arange(n_users), length)
    steps = np.tile(np.arange(length), n_users)
    return from_frame(
        pd.DataFrame({"USER_ID": users.astype(str), "ITEM_ID": items.reshape(-1).astype(str), "TIMESTAMP": steps})
    )


def movielens(directory: Path) -> Interactions:
    if (directory / "u.data").exists():
        df = pd.read_csv(directory / "u.data", sep="\t", names=["USER_ID", "ITEM_ID", "RATING", "TIMESTAMP"])
    else:
        df = pd.read_csv(directory / "ratings.csv").rename(
            columns={"userId": "USER_ID", "movieId": "ITEM_ID", "timestamp": "TIMESTAMP"}
        )
    return from_frame(df[["USER_ID", "ITEM_ID", "TIMESTAMP"]].astype({"USER_ID": str, "ITEM_ID": str}))


def panel(n_series: int, length: int, seed: int = 0) -> list[GlobalSeries]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n_series):
        phase = int(rng.integers(SEASON))
        level = (10.0 if i % 2 else 100.0) * rng.uniform(0.5, 2.0)
        shape = 1 + 0.4 * np.sin(2 * np.pi * (phase + np.arange(length)) / SEASON)
        out.append(GlobalSeries(level * shape * (1 + rng.normal(0, 0.1, length)), start_phase=phase))
    return out


# ---- one run (one process, or every rank under torchrun) -------------------------------------------------


class Clock:
    """Collects the models' per-epoch progress counters (epoch, loss, seconds since training began)."""

    def __init__(self) -> None:
        self.epochs: list[tuple[int, float, float]] = []

    def __call__(self, fraction: float, message: str = "", **counters: float) -> None:
        if "epoch" in counters and "seconds" in counters:
            self.epochs.append((int(counters["epoch"]), counters["loss"], counters["seconds"]))


def run_one(args: argparse.Namespace) -> dict[str, Any]:
    clock = Clock()
    device = args.device[0]
    with distributed.session() as ctx:
        if args.threads:
            torch.set_num_threads(args.threads)
        started = time.perf_counter()
        if args.one == "sequence":
            data = movielens(Path(args.movielens)) if args.movielens else walks(args.users, 100, args.items)
            windows = sum(math.ceil((n - 1) / SEQUENCE["max_len"]) for n in np.bincount(data.users) if n > 1)
            params = {**SEQUENCE, "epochs": args.epochs, "device": device}
            Sequence.fit(data, params, clock)
            batch = SEQUENCE["batch_size"]
            steps_per_epoch = math.ceil(windows / batch)
        else:
            series = panel(args.series, 240)
            model = DeepAr(HORIZON, season_length=SEASON, epochs=args.epochs, device=device, **DEEPAR)
            model.fit(series, progress=clock)
            batch = DEEPAR["batch_size"]
            steps_per_epoch = math.ceil(len(series) * 240 / HORIZON / batch)
            windows = steps_per_epoch * batch
        wall = time.perf_counter() - started
    (_, _, warm), (_, loss, end) = clock.epochs[0], clock.epochs[-1]
    return {
        "model": args.one,
        "data": "movielens" if args.movielens and args.one == "sequence" else "synthetic",
        "device": device,
        "processes": ctx.world_size,
        "threads_per_process": torch.get_num_threads(),
        "batch": batch,
        "batch_per_process": math.ceil(batch / ctx.world_size),
        "windows_per_epoch": windows,
        "steps_per_epoch": steps_per_epoch,
        "epochs_timed": args.epochs - 1,
        "seconds_timed": end - warm,
        "samples_per_s": windows * (args.epochs - 1) / (end - warm),
        "final_loss": loss,
        "wall_seconds": wall,
        "rank": ctx.rank,
    }


# ---- the table ------------------------------------------------------------------------------------------


def launch(model: str, device: str, nproc: int, args: argparse.Namespace) -> dict[str, Any]:
    """Runs one row in fresh processes (torchrun for nproc > 1); returns rank 0's figures."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "row.json"
        script = [str(Path(__file__).resolve()), "--one", model, "--device", device, "--out", str(out)]
        script += ["--epochs", str(args.epochs), "--users", str(args.users), "--items", str(args.items)]
        script += ["--series", str(args.series), "--threads", str(args.threads)] + (
            ["--movielens", args.movielens] if args.movielens else []
        )
        if nproc <= 1:
            command = [sys.executable, *script]
        else:
            command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
            command += script
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "services"), os.environ.get("PYTHONPATH", "")])}
        done = subprocess.run(command, env=env, capture_output=True, text=True)
        if done.returncode != 0:
            raise SystemExit(f"{' '.join(command)} failed:\n{done.stderr[-4000:]}")
        return dict(json.loads(out.read_text()))


def table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| model | data | device | processes | threads/process | batch (per process) | windows/epoch | steps/epoch "
        "| timed s | samples/s | vs 1 process | final loss |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    base = {(r["model"], r["device"]): r["samples_per_s"] for r in rows if r["processes"] == 1}
    for r in rows:
        one = base.get((r["model"], r["device"]))
        speedup = f"{r['samples_per_s'] / one:.2f}x" if one else ""
        lines.append(
            f"| {r['model']} | {r['data']} | {r['device']} | {r['processes']} | {r['threads_per_process']} "
            f"| {r['batch']} ({r['batch_per_process']}) | {r['windows_per_epoch']:,} | {r['steps_per_epoch']} "
            f"| {r['seconds_timed']:.1f} | {r['samples_per_s']:,.0f} | {speedup} | {r['final_loss']:.3f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", nargs="+", default=["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"])
    parser.add_argument("--nproc", nargs="+", type=int, default=[1, 2], help="processes per row (torchrun if > 1)")
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    parser.add_argument("--epochs", type=int, default=3, help="epochs per run; the first is warm-up (>= 2)")
    parser.add_argument("--users", type=int, default=1500, help="synthetic sequence data: users (100 events each)")
    parser.add_argument("--items", type=int, default=2000, help="synthetic sequence data: items")
    parser.add_argument("--series", type=int, default=400, help="synthetic DeepAR panel: series (240 steps each)")
    parser.add_argument(
        "--threads",
        type=int,
        default=0,
        help="torch threads per process (default: torch's own for one process, "
        "the CPUs divided by the processes under torchrun, as the training worker does)",
    )
    parser.add_argument("--movielens", default="", help="train the sequence model on this MovieLens folder")
    parser.add_argument("--json", default="", help="also write the rows here")
    parser.add_argument("--one", choices=MODELS, help=argparse.SUPPRESS)  # a single run (internal)
    parser.add_argument("--out", default="", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.epochs < 2:
        parser.error("--epochs must be at least 2 (the first is not timed)")
    if args.one:
        row = run_one(args)
        if row["rank"] == 0:
            Path(args.out).write_text(json.dumps(row))
        return
    if "cuda" in args.device and not torch.cuda.is_available():
        parser.error("--device cuda: this machine has no CUDA device")
    if "cuda" in args.device and max(args.nproc) > torch.cuda.device_count():
        parser.error(f"--nproc {max(args.nproc)} > {torch.cuda.device_count()} GPUs")
    rows = []
    for model in args.models:
        for device in args.device:
            for nproc in args.nproc:
                rows.append(launch(model, device, nproc, args))
                print(f"{model} {device} x{nproc}: {rows[-1]['samples_per_s']:,.0f} samples/s", file=sys.stderr)
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    print(
        f"torch {torch.__version__}, {os.cpu_count()} CPUs ({platform.processor() or platform.machine()}), GPU: {gpu}"
    )
    print(table(rows))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
