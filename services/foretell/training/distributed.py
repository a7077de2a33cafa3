"""Data-parallel training of the torch models under torchrun (DistributedDataParallel).

torchrun starts one worker process per GPU and tells each its place through the environment:
WORLD_SIZE (processes in all), RANK (this one, 0..WORLD_SIZE-1), LOCAL_RANK (its GPU on this node),
MASTER_ADDR/MASTER_PORT (the rendezvous). `session()` joins the process group for the duration of
a job; the torch recipes (`recipes.sequence`, `forecasting.deepar`) ask `current()` whether they
train as one rank of several, and then:
- build the same initial weights on every rank (same seed; DDP also broadcasts rank 0's at wrap),
- draw the same global batches on every rank (same seeded RNG) and each train on its own slice
  `shard(batch)` of every batch, so the ranks see disjoint data and take the same number of steps,
- divide the summed loss by the global count (`loss_divisor`), so that DDP's gradient average is
  exactly the gradient of the single-process batch mean,
- sum their epoch losses with `all_sum`, so every rank reports (and could decide on) the same value.
With WORLD_SIZE unset or 1 nothing here does anything: no process group, same code, same results.

This module imports torch only (no gRPC): the ML core imports it.
"""

from __future__ import annotations

import json
import os
import zlib
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

# A collective that waits longer than this ends the job with an error instead of hanging: every rank
# runs the same stages (evaluation, HPO trials) between collectives, so waits are short.
TIMEOUT = timedelta(minutes=30)


@dataclass(frozen=True)
class Context:
    """This process's place among the workers of one job."""

    world_size: int = 1
    rank: int = 0
    local_rank: int = 0
    local_world_size: int = 1

    @property
    def active(self) -> bool:
        """True when training is split over several processes (the process group is up)."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


SINGLE = Context()
_current = SINGLE


def from_env(environ: Mapping[str, str] | None = None) -> Context:
    """The torchrun variables of `environ` (default os.environ); unset means one process."""
    env = os.environ if environ is None else environ

    def number(name: str, default: int) -> int:
        text = env.get(name, "").strip()
        if not text:
            return default
        try:
            return int(text)
        except ValueError:
            raise ValueError(f"{name} must be an integer, got {text!r}") from None

    world = number("WORLD_SIZE", 1)
    rank = number("RANK", 0)
    local_rank = number("LOCAL_RANK", 0)
    local_world = number("LOCAL_WORLD_SIZE", world)
    if world < 1 or not 0 <= rank < world or not 0 <= local_rank < max(local_world, 1):
        raise ValueError(f"inconsistent torchrun environment: WORLD_SIZE={world} RANK={rank} LOCAL_RANK={local_rank}")
    return Context(world, rank, local_rank, local_world)


def current() -> Context:
    """The context of the running `session()`; a single process outside one."""
    return _current


@contextmanager
def session(ctx: Context | None = None) -> Iterator[Context]:
    """Joins the job's process group (rendezvous through MASTER_ADDR/MASTER_PORT) and leaves it at the end.

    CPU tensors go through gloo; with CUDA present, CUDA tensors go through NCCL and this process
    takes GPU LOCAL_RANK as its current device. A single process gets no process group at all.
    """
    global _current
    ctx = from_env() if ctx is None else ctx
    if not ctx.active:
        yield ctx
        return
    if _current.active:
        raise RuntimeError("a distributed session is already running in this process")
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.set_device(ctx.local_rank)
    # torchrun sets OMP_NUM_THREADS=1 for every rank; the CPU parts of a job (windows, evaluation) get
    # this rank's share of the node's cores instead.
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // max(ctx.local_world_size, 1)))
    dist.init_process_group(
        "cpu:gloo,cuda:nccl" if cuda else "gloo",
        rank=ctx.rank,
        world_size=ctx.world_size,
        timeout=TIMEOUT,
    )
    _current = ctx
    try:
        yield ctx
    finally:
        _current = SINGLE
        dist.destroy_process_group()


def device(requested: torch.device) -> torch.device:
    """The device this rank trains on: GPU LOCAL_RANK when CUDA is asked for, else `requested`."""
    ctx = current()
    if ctx.active and requested.type == "cuda":
        return torch.device("cuda", ctx.local_rank)
    return requested


def wrap(module: nn.Module, on: torch.device) -> nn.Module:
    """`module` itself in a single process; else DDP, which averages gradients over the ranks in backward.

    Modules must be called through what this returns for their gradients to be averaged."""
    if not current().active:
        return module
    return DistributedDataParallel(module, device_ids=[on.index] if on.type == "cuda" else None)


def seed_local_randomness(seed: int) -> None:
    """Dropout streams differ per rank (seed + rank), as they differ per sample in one process.

    Call after the weights are built from the shared seed; a single process keeps its stream."""
    ctx = current()
    if ctx.active:
        torch.manual_seed(seed + ctx.rank)


def shard(batch: np.ndarray) -> tuple[np.ndarray, float]:
    """This rank's rows of a global batch (every world_size-th row from its rank) and their weight.

    A rank left without rows (a batch smaller than the world) takes the first row at weight 0: it
    still runs forward and backward, which DDP needs on every rank, but adds nothing."""
    ctx = current()
    if not ctx.active:
        return batch, 1.0
    part = batch[ctx.rank :: ctx.world_size]
    if len(part):
        return part, 1.0
    return batch[:1], 0.0


def loss_divisor(global_count: float) -> float:
    """Divide a rank's summed loss by this: DDP then averages to (global sum) / global_count."""
    return global_count / current().world_size


def all_sum(values: list[float]) -> list[float]:
    """Element-wise sums over the ranks (the values themselves in a single process)."""
    ctx = current()
    if not ctx.active:
        return values
    tensor = torch.tensor(values, dtype=torch.float64)
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return [float(v) for v in tensor.tolist()]


def check_same(name: str, value: int) -> None:
    """Raises on every rank when the ranks disagree on `value` (e.g. different data): they would
    otherwise wait on each other's collectives forever."""
    ctx = current()
    if not ctx.active:
        return
    low = torch.tensor([value], dtype=torch.int64)
    high = low.clone()
    dist.all_reduce(low, op=dist.ReduceOp.MIN)
    dist.all_reduce(high, op=dist.ReduceOp.MAX)
    if int(low) != int(high):
        raise RuntimeError(f"the {ctx.world_size} training processes disagree on {name} ({int(low)}..{int(high)})")


def check_same_settings(settings: dict[str, Any]) -> None:
    """`check_same` on a checksum of `settings` (JSON): catches ranks that would train different models
    in lockstep, e.g. after a hyper-parameter search that chose differently on two ranks."""
    if current().active:
        check_same("the training settings", zlib.crc32(json.dumps(settings, sort_keys=True, default=str).encode()))


def barrier() -> None:
    if current().active:
        dist.barrier()
