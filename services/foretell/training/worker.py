"""The training worker: `python -m foretell.training.worker JOB_DIR`.

Reads JOB_DIR/spec.json, appends {"percent", "message", "counters"} lines to
JOB_DIR/progress.jsonl, and writes JOB_DIR/result.json last ({"ok": true, ...} or
{"ok": false, "error": {"code", "message"}}). The launcher treats a worker that exits
without result.json as died. The same command runs locally and in a Kubernetes Job.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from foretell.core.logs import configure_logging
from foretell.training import shards

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


def _job(kind: str) -> Callable[[dict[str, Any], ProgressFile], dict[str, Any]]:
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


def run(job_dir: Path) -> int:
    spec = json.loads((job_dir / "spec.json").read_text())
    # A shard of a sharded job (foretell.training.shards) reports in its own directory.
    out = shards.output_dir(job_dir, spec)
    progress = ProgressFile(out / "progress.jsonl")
    try:
        output = _job(spec["kind"])({**spec, "output_dir": str(out)}, progress)
    except WorkerError as exc:
        log.warning("training failed", extra={"code": exc.code, "error": str(exc)})
        _write_result(out, {"ok": False, "error": {"code": exc.code, "message": str(exc)}})
        return 1
    except Exception as exc:
        log.exception("training crashed")
        _write_result(out, {"ok": False, "error": {"code": "INTERNAL", "message": f"{type(exc).__name__}: {exc}"}})
        return 1
    progress(1.0, "done")
    _write_result(out, {"ok": True, **output})
    return 0


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: python -m foretell.training.worker JOB_DIR", file=sys.stderr)
        return 2
    configure_logging("INFO", "json")
    return run(Path(argv[1]))


if __name__ == "__main__":
    # Run the importable module, not this `__main__` copy: jobs raise `foretell.training.worker.WorkerError`,
    # which a `__main__.WorkerError` handler would not catch.
    from foretell.training import worker

    raise SystemExit(worker.main(sys.argv))
