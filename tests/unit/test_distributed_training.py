"""Data-parallel training under torchrun, on CPU with gloo: two real processes train the sequence recipe
and DeepAR on disjoint shards and match one process; the worker under torchrun reports once."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

from foretell.forecasting.deepar import DeepAr, GlobalSeries
from foretell.recipes.artifact import load_artifact
from foretell.recipes.base import Interactions
from foretell.recipes.sequence import Sequence
from foretell.training import distributed, worker

# Every test here starts torchrun or spawned ranks (seconds each).
pytestmark = pytest.mark.slow

WORLD = 2
ITEMS, CHAIN = 40, 8  # items g*CHAIN .. g*CHAIN+7 form a cycle that users mostly walk
SEQ_PARAMS: dict[str, Any] = {
    "max_len": 16,
    "dim": 32,
    "layers": 1,
    "heads": 2,
    "dropout": 0.0,  # no dropout: the two runs differ only by float summation order
    "epochs": 6,
    "batch_size": 32,
    "learning_rate": 3e-3,
}
H, M = 6, 6
DEEP_PARAMS: dict[str, Any] = {
    "hidden_size": 16,
    "num_layers": 1,
    "dropout": 0.0,
    "epochs": 10,
    "batch_size": 48,
    "learning_rate": 1e-2,
}


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


# ---- data ------------------------------------------------------------------------------------------


def walks(n_users: int = 160, length: int = 20, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n_users):
        item = int(rng.integers(ITEMS))
        seq = [item]
        for _ in range(length - 1):
            group, pos = divmod(item, CHAIN)
            item = group * CHAIN + (pos + 1) % CHAIN if rng.random() < 0.9 else int(rng.integers(ITEMS))
            seq.append(item)
        out.append(np.array(seq))
    return out


def interactions(sequences: list[np.ndarray]) -> Interactions:
    users = np.concatenate([np.full(len(s), u) for u, s in enumerate(sequences)])
    steps = np.concatenate([np.arange(len(s)) for s in sequences])
    order = np.lexsort((users, steps))  # time order
    return Interactions(
        user_ids=np.array([f"u{u}" for u in range(len(sequences))], dtype=object),
        item_ids=np.array([f"i{i}" for i in range(ITEMS)], dtype=object),
        users=users[order].astype(np.int32),
        items=np.concatenate(sequences)[order].astype(np.int32),
        timestamps=(1_700_000_000 + steps[order]).astype(np.int64),
        event_types=np.zeros(len(users), dtype=np.int16),
    )


def recall_at_10(model: Sequence, sequences: list[np.ndarray]) -> float:
    """Each user's last item against the top 10 scored from the items before it."""
    scores = model.score(np.arange(len(sequences)), [s[:-1] for s in sequences])
    top = np.argsort(-scores, axis=1)[:, :10]
    return float(np.mean([s[-1] in row for s, row in zip(sequences, top, strict=True)]))


def panel(n: int = 24, length: int = 60) -> list[GlobalSeries]:
    rng = np.random.default_rng(1)
    out = []
    for i in range(n):
        phase = int(rng.integers(M))
        level = (10.0 if i % 2 else 100.0) * rng.uniform(0.8, 1.2)
        y = level * (1 + 0.4 * np.sin(2 * np.pi * (phase + np.arange(length)) / M)) * (1 + rng.normal(0, 0.05, length))
        out.append(GlobalSeries(y, start_phase=phase))
    return out


def deep_error(model: DeepAr, series: list[GlobalSeries]) -> float:
    """Mean absolute error of the forecast mean on the last H steps, relative to their level."""
    history = [GlobalSeries(s.target[:-H], start_phase=s.start_phase) for s in series]
    forecasts = model.predict(history, (0.5,))
    errors = [
        np.mean(np.abs(f.mean - s.target[-H:])) / np.mean(s.target[-H:]) for f, s in zip(forecasts, series, strict=True)
    ]
    return float(np.mean(errors))


# ---- two ranks ---------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _torchrun_env(rank: int, port: int) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        WORLD_SIZE=str(WORLD),
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        LOCAL_WORLD_SIZE=str(WORLD),
    )


def _train_rank(rank: int, port: int, out: str, model: str) -> None:
    """One rank: trains `model` under a distributed session, recording what `shard` gave it."""
    _torchrun_env(rank, port)
    torch.set_num_threads(1)
    shards: list[dict[str, list[int]]] = []
    original = distributed.shard

    def recording(batch: np.ndarray) -> tuple[np.ndarray, float]:
        part, weight = original(batch)
        shards.append({"batch": batch.tolist(), "part": part.tolist() if weight else []})
        return part, weight

    distributed.shard = recording  # the recipes look it up on the module at every step
    losses: list[float] = []

    def progress(fraction: float, message: str = "", **counters: float) -> None:
        losses.append(counters["loss"])

    with distributed.session() as ctx:
        assert distributed.current().active and ctx.world_size == WORLD
        if model == "sequence":
            fitted = Sequence.fit(interactions([s[:-1] for s in walks()]), SEQ_PARAMS, progress)
            quality = recall_at_10(fitted, walks())
        else:
            deep = DeepAr(H, season_length=M, num_samples=50, **DEEP_PARAMS)
            deep.fit([GlobalSeries(s.target[:-H], start_phase=s.start_phase) for s in panel()], progress=progress)
            quality = deep_error(deep, panel())
    assert not distributed.current().active
    Path(out, f"rank{rank}.json").write_text(json.dumps({"shards": shards, "losses": losses, "quality": quality}))


def run_ranks(target: Callable[..., None], *args: Any) -> None:
    mp.start_processes(target, args=(free_port(), *args), nprocs=WORLD, join=True, start_method="spawn")


def check_shards(ranks: list[dict[str, Any]]) -> list[set[int]]:
    """Every step: the ranks drew the same global batch and took disjoint parts that cover it.
    Returns the rows each rank trained on over all steps."""
    steps = [r["shards"] for r in ranks]
    assert len({len(s) for s in steps}) == 1 and steps[0], "the ranks took different numbers of steps"
    seen: list[set[int]] = [set() for _ in ranks]
    for step in zip(*steps, strict=True):
        assert all(s["batch"] == step[0]["batch"] for s in step)
        parts = [set(s["part"]) for s in step]
        assert set.union(*parts) == set(step[0]["batch"])
        assert sum(len(p) for p in parts) == len(step[0]["batch"]), "a row went to two ranks"
        for r, p in enumerate(parts):
            seen[r] |= p
    return seen


def test_sequence_trains_on_two_ranks_like_one_process(tmp_path: Path) -> None:
    run_ranks(_train_rank, str(tmp_path), "sequence")
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(WORLD)]
    seen = check_shards(ranks)
    assert all(seen), "a rank trained on nothing"
    batches = [set(s["batch"]) for s in ranks[0]["shards"]]
    epoch = len(batches) // SEQ_PARAMS["epochs"]
    assert set.union(*batches[:epoch]) == set(range(max(set.union(*batches)) + 1)), "an epoch missed windows"

    losses: list[float] = []
    single = Sequence.fit(
        interactions([s[:-1] for s in walks()]), SEQ_PARAMS, lambda f, m="", **c: losses.append(c["loss"])
    )
    # Same gradient per step (the loss is divided by the global count): the curves agree closely.
    assert ranks[0]["losses"] == ranks[1]["losses"]
    np.testing.assert_allclose(ranks[0]["losses"], losses, rtol=2e-3)
    assert losses[-1] < losses[0] - 0.5
    one = recall_at_10(single, walks())
    assert one > 0.5  # the walks are learnable: this test compares two good models
    assert abs(ranks[0]["quality"] - one) <= 0.03
    assert ranks[0]["quality"] == ranks[1]["quality"]  # DDP keeps the replicas identical


def test_deepar_trains_on_two_ranks_like_one_process(tmp_path: Path) -> None:
    run_ranks(_train_rank, str(tmp_path), "deepar")
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(WORLD)]
    seen = check_shards(ranks)
    assert all(seen) and not seen[0] & seen[1]  # fixed row positions: rank 0 even, rank 1 odd

    losses: list[float] = []
    single = DeepAr(H, season_length=M, num_samples=50, **DEEP_PARAMS)
    single.fit(
        [GlobalSeries(s.target[:-H], start_phase=s.start_phase) for s in panel()],
        progress=lambda f, m="", **c: losses.append(c["loss"]),
    )
    assert ranks[0]["losses"] == ranks[1]["losses"]
    np.testing.assert_allclose(ranks[0]["losses"], losses, rtol=2e-3, atol=2e-3)
    one = deep_error(single, panel())
    assert one < 0.1  # the panel is learnable: this test compares two good models
    assert abs(ranks[0]["quality"] - one) <= 0.02


# ---- the worker ----------------------------------------------------------------------------------------


def _failing_rank(rank: int, port: int, job_dir: str) -> None:
    """The worker's rank loop on a job that fails on rank 1 only, after a first collective."""
    _torchrun_env(rank, port)

    def job(spec: dict[str, Any], progress: Callable[..., None]) -> dict[str, Any]:
        distributed.all_sum([1.0])
        if rank == 1:
            raise MemoryError("CUDA out of memory on this GPU")
        distributed.all_sum([2.0])  # rank 0 waits here for a rank that is gone
        return {}

    worker._job = lambda kind: job  # type: ignore[assignment]
    code = worker.run(Path(job_dir))
    Path(job_dir, f"exit{rank}").write_text(str(code))


def test_a_failure_on_another_rank_ends_up_in_rank_0s_result(tmp_path: Path) -> None:
    (tmp_path / "spec.json").write_text(json.dumps({"kind": "solution-version", "recipe": "sequence"}))
    run_ranks(_failing_rank, str(tmp_path))
    assert [(tmp_path / f"exit{r}").read_text() for r in range(WORLD)] == ["1", "1"]
    result = json.loads((tmp_path / "result.json").read_text())
    assert result["ok"] is False
    assert result["error"]["code"] == "INTERNAL"
    assert result["error"]["message"] == "rank-1: MemoryError: CUDA out of memory on this GPU"
    assert not (tmp_path / "rank-1").exists()


def solution_job(tmp_path: Path, recipe: str, hyper_parameters: dict[str, str]) -> Path:
    """A job directory as SolutionVersionJobs.prepare leaves it: a snapshot and spec.json."""
    snapshot = tmp_path / "snapshot"
    snapshot.mkdir()
    rows = ["USER_ID,ITEM_ID,TIMESTAMP"]
    for u, seq in enumerate(walks(n_users=80, length=12)):
        rows += [f"u{u},i{item},{1_700_000_000 + t * 60 + u}" for t, item in enumerate(seq)]
    (snapshot / "interactions.csv").write_text("\n".join(rows) + "\n")
    job_dir = tmp_path / "job"
    job_dir.mkdir()
    spec = {
        "kind": "solution-version",
        "snapshot_dir": str(snapshot),
        "snapshot_time": 1_700_000_000,
        "artifact_dir": str(tmp_path / "artifact"),
        "recipe": recipe,
        "hyper_parameters": hyper_parameters,
        "perform_hpo": False,
        "hpo": {},
        "event_type": "",
        "training_mode": "FULL",
        "previous_artifact_dir": "",
    }
    (job_dir / "spec.json").write_text(json.dumps(spec))
    return job_dir


def torchrun(job_dir: Path) -> subprocess.CompletedProcess[str]:
    command = worker.worker_command(job_dir, worker.job_processes(job_dir, gpus=WORLD))
    assert command[1:6] == ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p), "OMP_NUM_THREADS": "1"}
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=180)


def test_the_worker_under_torchrun_trains_a_solution_version_and_reports_once(tmp_path: Path) -> None:
    params = {"max_len": "12", "dim": "16", "layers": "1", "heads": "2", "epochs": "3", "batch_size": "16"}
    job_dir = solution_job(tmp_path, "sequence", params)
    done = torchrun(job_dir)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads((job_dir / "result.json").read_text())
    assert result["ok"] is True and result["metrics"]["recall_at_10"] > 0.2
    assert result["tuned_hyper_parameters"]["dim"] == "16"
    artifact = load_artifact(tmp_path / "artifact")
    assert isinstance(artifact.model, Sequence) and artifact.metrics == result["metrics"]
    lines = [json.loads(line) for line in (job_dir / "progress.jsonl").read_text().splitlines()]
    messages = [line["message"] for line in lines if line["message"] != "done"]  # train_solution says it too
    assert messages[0] == "splitting off the hold-out"
    assert len(set(messages)) == len(messages), messages  # rank 0 alone reports: no line twice
    assert sorted(p.name for p in job_dir.iterdir()) == ["progress.jsonl", "result.json", "spec.json"]


def test_the_worker_under_torchrun_trains_a_deepar_predictor(tmp_path: Path) -> None:
    snapshot = tmp_path / "snapshot"
    snapshot.mkdir()
    days = np.datetime64("2024-01-01") + np.arange(60)
    rows = ["ITEM_ID,TIMESTAMP,TARGET_VALUE"]
    for i, s in enumerate(panel(n=8, length=60)):
        rows += [f"sku{i},{day},{value:.3f}" for day, value in zip(days, s.target, strict=True)]
    (snapshot / "target_time_series.csv").write_text("\n".join(rows) + "\n")
    job_dir = tmp_path / "job"
    job_dir.mkdir()
    spec = {
        "kind": "predictor",
        "candidates": ["deepar"],
        "horizon": H,
        "frequency": "D",
        "quantiles": [0.1, 0.5, 0.9],
        "dimensions": [],
        "backtest_windows": 1,
        "backtest_offset": H,
        "metric": "average_wql",
        "ensemble": False,
        "fill_policies": [],
        "hyper_parameters": {"epochs": "2", "hidden_size": "8", "num_layers": "1", "num_samples": "20"},
        "snapshot_dir": str(snapshot),
        "artifact_dir": str(tmp_path / "artifact"),
        "workers": 1,
    }
    (job_dir / "spec.json").write_text(json.dumps(spec))
    done = torchrun(job_dir)  # a backtest fit and the final fit, each DDP over the two ranks
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads((job_dir / "result.json").read_text())
    assert result["ok"] is True and result["series_count"] == 8
    assert result["accuracy"]["chosen"]["algorithm"] == "deepar"
    model = DeepAr.load(tmp_path / "artifact" / "deepar", device="cpu")
    assert model.hidden_size == 8 and len(model.predict(panel(n=2, length=30))) == 2
    assert sorted(p.name for p in job_dir.iterdir()) == ["progress.jsonl", "result.json", "spec.json"]


def test_the_worker_under_torchrun_records_a_bad_parameter(tmp_path: Path) -> None:
    job_dir = solution_job(tmp_path, "sequence", {"dim": "16", "heads": "3", "epochs": "1"})
    done = torchrun(job_dir)
    assert done.returncode != 0
    result = json.loads((job_dir / "result.json").read_text())
    assert result == {"ok": False, "error": {"code": "INVALID_ARGUMENT", "message": "hyper_parameters[heads]: "
                      "must divide dim (16)"}}  # fmt: skip
    assert not (tmp_path / "artifact" / "meta.json").exists()


def processes_of(job_dir: Path) -> list[int]:
    """Live processes whose command line names the job directory (torchrun and its ranks)."""
    pids = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and str(job_dir).encode() in (entry / "cmdline").read_bytes():
                pids.append(int(entry.name))
        except OSError:
            continue
    return pids


def test_stopping_torchrun_ends_every_rank_without_a_result(tmp_path: Path) -> None:
    """What LocalLauncher.stop does (SIGTERM to the worker's process group), mid-training."""
    job_dir = solution_job(tmp_path, "sequence", {"max_len": "12", "dim": "16", "epochs": "1000"})
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p), "OMP_NUM_THREADS": "1"}
    with (job_dir / "worker.log").open("wb") as log:
        child = subprocess.Popen(
            worker.worker_command(job_dir, WORLD), env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        progress = job_dir / "progress.jsonl"
        deadline = time.monotonic() + 120
        while not (progress.exists() and "epoch" in progress.read_text()):
            assert child.poll() is None and time.monotonic() < deadline, (job_dir / "worker.log").read_text()[-3000:]
            time.sleep(0.2)
        assert len(processes_of(job_dir)) == 1 + WORLD  # torchrun and its ranks, in sessions of their own
        os.killpg(child.pid, signal.SIGTERM)
        assert child.wait(timeout=60) != 0
    finally:
        if child.poll() is None:
            os.killpg(child.pid, signal.SIGKILL)
    deadline = time.monotonic() + 30
    while processes_of(job_dir) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert processes_of(job_dir) == []
    assert not (job_dir / "result.json").exists()  # stopped from outside: no verdict, as for one process
    assert not list(job_dir.glob("rank-*"))


def test_a_job_without_torch_runs_once_under_torchrun(tmp_path: Path) -> None:
    job_dir = solution_job(tmp_path, "popularity-count", {})
    assert worker.job_processes(job_dir, gpus=WORLD) == 1
    command = worker.worker_command(job_dir, WORLD)  # forced: rank 1 leaves at once, rank 0 trains alone
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads((job_dir / "result.json").read_text())["ok"] is True
    assert load_artifact(tmp_path / "artifact").recipe == "popularity-count"


# ---- pieces ----------------------------------------------------------------------------------------------


def test_one_process_without_torchrun_variables() -> None:
    assert distributed.from_env({}) == distributed.SINGLE
    assert distributed.from_env({"WORLD_SIZE": "1", "RANK": "0"}) == distributed.SINGLE
    ctx = distributed.from_env({"WORLD_SIZE": "4", "RANK": "3", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2"})
    assert (ctx.active, ctx.is_main, ctx.local_rank) == (True, False, 1)
    with pytest.raises(ValueError, match="RANK=4"):
        distributed.from_env({"WORLD_SIZE": "4", "RANK": "4"})
    with pytest.raises(ValueError, match="WORLD_SIZE must be an integer"):
        distributed.from_env({"WORLD_SIZE": "two"})
    with distributed.session(distributed.SINGLE) as ctx:  # no process group for one process
        assert not torch.distributed.is_initialized()
        batch = np.arange(5)
        part, weight = distributed.shard(batch)
        assert part is batch and weight == 1.0
        assert distributed.all_sum([1.5, 2.0]) == [1.5, 2.0]
        assert distributed.device(torch.device("cpu")) == torch.device("cpu")


def test_worker_command_and_processes(tmp_path: Path) -> None:
    job = tmp_path / "job"
    assert worker.worker_command(job) == [sys.executable, "-m", "foretell.training.worker", str(job)]
    assert worker.worker_command(job, 4, python="python") == [
        "python", "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=4",
        "-m", "foretell.training.worker", str(job),
    ]  # fmt: skip
    assert worker.job_processes(tmp_path / "missing", gpus=1) == 1  # one GPU: spec.json is not even read
    job.mkdir()
    for spec, processes in [
        ({"kind": "solution-version", "recipe": "sequence"}, 8),
        ({"kind": "solution-version", "recipe": "ease"}, 1),
        ({"kind": "predictor", "candidates": ["deepar"]}, 8),
        ({"kind": "predictor", "candidates": ["ets", "deepar"]}, 1),
        ({"kind": "forecast"}, 1),
    ]:
        (job / "spec.json").write_text(json.dumps(spec))
        assert worker.job_processes(job, gpus=8) == processes, spec
