"""The training worker: `python -m foretell.training.worker JOB_DIR`.

Reads JOB_DIR/spec.json, appends {"percent", "message", "counters"} lines to
JOB_DIR/progress.jsonl, and writes JOB_DIR/result.json last ({"ok": true, ...} or
{"ok": false, "error": {"code", "message"}}). The launcher treats a worker that exits
without result.json as died. The same command runs locally and in a Kubernetes Job.

Multi-GPU: `worker_command(job_dir, n)` runs the same module under torchrun with n processes
(`job_processes` gives n: one per GPU for jobs that train a torch model, else 1). Every rank runs
the whole job, in lockstep through the collectives of `training.distributed`; only rank 0 reports:
it alone appends progress, writes the artifact (the others write theirs to JOB_DIR/rank-N/, removed
after) and writes result.json, once every rank has finished. A rank that fails writes its error to
JOB_DIR/rank-N.error.json and exits 1; torchrun then stops the others and exits nonzero, and rank 0,
if it gets the chance (an exception from a collective, or torchrun's SIGTERM), records that error in
result.json.
"""

from __future__ import annotations

import ctypes
import json
import logging
import os
import shutil
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

from google.rpc import code_pb2

from foretell.core.errors import ForetellError
from foretell.core.logs import configure_logging, failure
from foretell.core.priority import lower_priority
from foretell.training import shards

if TYPE_CHECKING:
    from foretell.training import distributed

log = logging.getLogger("foretell.worker")


class WorkerError(Exception):
    """A failure the user can act on; `code` is a google.rpc.Code name."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


class ProgressFile:
    """A `Progress` (fraction 0..1, message, **counters) that appends JSON lines, throttled."""

    def __init__(self, path: Path, min_interval: float = 0.2) -> None:
        self._path = path
        self._min_interval = min_interval
        self._last = 0.0

    def __call__(self, fraction: float, message: str = "", **counters: float) -> None:
        now = time.monotonic()
        if now - self._last < self._min_interval and fraction < 1.0:
            return
        self._last = now
        line = json.dumps(
            {
                "percent": round(100.0 * max(0.0, min(1.0, fraction)), 2),
                "message": message,
                "counters": {k: float(v) for k, v in counters.items()},
            }
        )
        with self._path.open("a", encoding="utf-8") as out:
            out.write(line + "\n")


def _write_result(job_dir: Path, result: dict[str, Any]) -> None:
    partial = job_dir / "result.json.partial"
    partial.write_text(json.dumps(result))
    os.replace(partial, job_dir / "result.json")


def _job(kind: str) -> Callable[[dict[str, Any], Callable[..., None]], dict[str, Any]]:
    # Imported here so that a worker loads only the stack its job needs.
    if kind == "solution-version":
        from foretell.training.solution_worker import train_solution_version

        return train_solution_version
    from foretell.training import predictor_worker

    return {
        "predictor": predictor_worker.train_predictor_job,
        "forecast": predictor_worker.generate_forecast_job,
        "forecast-export": predictor_worker.export_forecast_job,
    }[kind]


def _no_progress(fraction: float, message: str = "", **counters: float) -> None:
    return None


def _error(exc: BaseException) -> dict[str, str]:
    if isinstance(exc, WorkerError):
        return {"code": exc.code, "message": str(exc)}
    if isinstance(exc, ForetellError):  # e.g. formats.NewerFormat: an artifact a newer server wrote
        return {"code": code_pb2.Code.Name(exc.code), "message": exc.message}
    return {"code": "INTERNAL", "message": f"{type(exc).__name__}: {exc}"}


def run(job_dir: Path) -> int:
    spec = json.loads((job_dir / "spec.json").read_text())
    if os.environ.get("WORLD_SIZE", "").strip() not in ("", "1"):
        # Under torchrun. Imported only here: a worker of a job without torch does not load it.
        from foretell.training import distributed

        ctx = distributed.from_env()
        if distributable(spec):
            return _run_rank(job_dir, spec, ctx)
        # Started under torchrun for a job that gains nothing from it: rank 0 runs it alone.
        if not ctx.is_main:
            return 0
    # A shard of a sharded job (foretell.training.shards) reports in its own directory.
    out = shards.output_dir(job_dir, spec)
    progress = ProgressFile(out / "progress.jsonl")
    try:
        output = _job(spec["kind"])({**spec, "output_dir": str(out)}, progress)
    except WorkerError as exc:
        log.warning("training failed", extra={"code": exc.code})
        _write_result(out, {"ok": False, "error": _error(exc)})
        return 1
    except Exception as exc:
        log.error("training crashed", extra=failure(exc))
        _write_result(out, {"ok": False, "error": _error(exc)})
        return 1
    progress(1.0, "done")
    _write_result(out, {"ok": True, **output})
    return 0


# ---- under torchrun: one of WORLD_SIZE processes ----------------------------------------------------


class _Terminated(BaseException):
    """SIGTERM (torchrun stopping the ranks because one failed, or the job being stopped). A
    BaseException, so that a job's own `except Exception` cannot swallow it."""


def _terminate(signum: int, frame: FrameType | None) -> None:
    raise _Terminated()


def _die_with_parent() -> None:
    """torchrun starts each rank in a session of its own, so a launcher that kills torchrun's process
    group reaches torchrun alone; if torchrun is killed outright the ranks must end too (Linux)."""
    if sys.platform.startswith("linux"):
        pr_set_pdeathsig = 1
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)


def rank_error_path(job_dir: Path, rank: int) -> Path:
    return job_dir / f"rank-{rank}.error.json"


def _peer_error(job_dir: Path) -> dict[str, str] | None:
    """The first error another rank recorded, its message naming the rank."""
    for path in sorted(job_dir.glob("rank-*.error.json")):
        try:
            error = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        rank = path.name.removesuffix(".error.json")
        return {"code": str(error.get("code", "INTERNAL")), "message": f"{rank}: {error.get('message', '')}"}
    return None


def _run_rank(job_dir: Path, spec: dict[str, Any], ctx: distributed.Context) -> int:
    from foretell.training import distributed

    _die_with_parent()
    # Left by an earlier attempt of this job (a pod retried after eviction); the session's rendezvous
    # below waits for every rank, so no rank of this attempt has written one yet.
    rank_error_path(job_dir, ctx.rank).unlink(missing_ok=True)
    scratch = job_dir / f"rank-{ctx.rank}"
    progress: Callable[..., None] = ProgressFile(job_dir / "progress.jsonl") if ctx.is_main else _no_progress
    if ctx.is_main:
        signal.signal(signal.SIGTERM, _terminate)
        spec = {**spec, "output_dir": str(job_dir)}
    else:
        # Same job, same collectives; what it would write goes to a scratch copy nobody reads.
        spec = {**spec, "artifact_dir": str(scratch / "artifact"), "output_dir": str(scratch)}
    recorded = False
    try:
        with distributed.session(ctx):
            try:
                output = _job(spec["kind"])(spec, progress)
                # Success only once every rank got here: a rank failing late must not leave a result behind.
                distributed.barrier()
            except _Terminated:
                raise
            except BaseException as exc:
                # Recorded before this rank leaves the process group: rank 0 finds a peer's error as soon
                # as its collectives fail.
                recorded = True
                return _record_failure(job_dir, ctx, exc)
    except _Terminated:
        peer = _peer_error(job_dir)
        if peer is not None:
            _write_result(job_dir, {"ok": False, "error": peer})
        # Otherwise the job was stopped from outside: no result, as for a single worker killed.
        return 1
    except BaseException as exc:  # joining or leaving the process group failed (no GPU LOCAL_RANK, rendezvous)
        if recorded:
            raise
        return _record_failure(job_dir, ctx, exc)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    if ctx.is_main:
        progress(1.0, "done")
        _write_result(job_dir, {"ok": True, **output})
    return 0


def _record_failure(job_dir: Path, ctx: distributed.Context, exc: BaseException) -> int:
    """Rank 0 writes result.json (its own error, or the peer's it saw the fallout of); another rank writes
    JOB_DIR/rank-N.error.json for rank 0 to find."""
    if not ctx.is_main:
        log.error("training failed on rank %d", ctx.rank, extra=failure(exc))
        path = rank_error_path(job_dir, ctx.rank)
        path.with_suffix(".partial").write_text(json.dumps(_error(exc)))
        os.replace(path.with_suffix(".partial"), path)
        return 1
    own = _error(exc)
    error = own if isinstance(exc, WorkerError) else _peer_error(job_dir) or own
    log.warning("training failed", extra={"code": error["code"]})
    _write_result(job_dir, {"ok": False, "error": error})
    return 1


# ---- how many processes a job gets --------------------------------------------------------------------


def distributable(spec: dict[str, Any]) -> bool:
    """Jobs that train a torch model with DDP: a solution of the sequence recipe, and a predictor whose only
    candidate is DeepAR. AutoML predictors are left out: they also fit statistical models per series on the
    CPUs, which every rank would repeat; forecasts and exports do not train."""
    if spec.get("kind") == "solution-version":
        return spec.get("recipe") == "sequence"
    if spec.get("kind") == "predictor":
        return list(spec.get("candidates") or ()) == ["deepar"]
    return False


def job_processes(job_dir: Path, gpus: int) -> int:
    """Worker processes for the job in `job_dir` on a machine (pod) with `gpus` GPUs: one per GPU when
    the job is `distributable`, else 1. Reads JOB_DIR/spec.json only when there are several GPUs."""
    if gpus <= 1:
        return 1
    spec = json.loads((job_dir / "spec.json").read_text())
    return gpus if distributable(spec) else 1


def worker_command(job_dir: Path, processes: int = 1, python: str = sys.executable) -> list[str]:
    """The worker's command line: the module itself for one process, else torchrun (`torch.distributed.run`,
    the module behind the `torchrun` script) starting `processes` ranks on this machine."""
    if processes <= 1:
        return [python, "-m", "foretell.training.worker", str(job_dir)]
    return [
        python,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={processes}",
        "-m",
        "foretell.training.worker",
        str(job_dir),
    ]


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: python -m foretell.training.worker JOB_DIR", file=sys.stderr)
        return 2
    lower_priority()
    configure_logging("INFO", "json")
    return run(Path(argv[1]))


if __name__ == "__main__":
    # Run the importable module, not this `__main__` copy: jobs raise `foretell.training.worker.WorkerError`,
    # which a `__main__.WorkerError` handler would not catch.
    from foretell.training import worker

    raise SystemExit(worker.main(sys.argv))
