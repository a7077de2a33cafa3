"""Where a training job's worker runs. The default runs local worker processes.

A worker is `python -m foretell.training.worker JOB_DIR`: it reads JOB_DIR/spec.json, appends
progress to JOB_DIR/progress.jsonl and writes JOB_DIR/result.json last. The same command runs
inside a Kubernetes Job in production (`foretell.training.k8s_launcher.KubernetesLauncher`).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol


@dataclass(frozen=True)
class WorkerStatus:
    running: bool
    # Exit code once finished; None when the worker vanished without one we could read.
    exit_code: int | None = None
    # How the worker ended, when the launcher knows more than an exit code (evicted, Job deleted): the
    # jobs layer reports it when there is no result.json.
    reason: str | None = None


class Launcher(Protocol):
    def start(self, job_dir: Path) -> str:
        """Starts a worker for the job in `job_dir`; returns a handle to pass to status/stop."""
        ...

    def status(self, handle: str, job_dir: Path) -> WorkerStatus: ...

    def stop(self, handle: str) -> None:
        """Stops the worker (no-op when it has already exited)."""
        ...


class LocalLauncher:
    """Worker processes on this machine, each in its own session so a terminal's Ctrl-C
    reaches the server alone, which then stops its workers itself."""

    def __init__(self, stop_grace_seconds: float = 5.0) -> None:
        self._children: dict[int, subprocess.Popen[bytes]] = {}
        self._lock = threading.Lock()
        self._grace = stop_grace_seconds

    def start(self, job_dir: Path) -> str:
        log = (job_dir / "worker.log").open("ab")
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
        try:
            child = subprocess.Popen(
                [sys.executable, "-m", "foretell.training.worker", str(job_dir)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                env=env,
            )
        finally:
            log.close()
        with self._lock:
            self._children[child.pid] = child
        return f"pid:{child.pid}"

    def status(self, handle: str, job_dir: Path) -> WorkerStatus:
        pid = _pid(handle)
        with self._lock:
            child = self._children.get(pid)
        if child is not None:
            code = child.poll()
            return WorkerStatus(running=code is None, exit_code=code)
        # A worker started before this server restarted: alive only if that pid still runs our job.
        return WorkerStatus(running=_runs_job(pid, job_dir))

    def stop(self, handle: str) -> None:
        pid = _pid(handle)
        with self._lock:
            child = self._children.get(pid)
        try:
            os.killpg(pid, signal.SIGTERM)
        except (ProcessLookupError, PermissionError):
            return
        deadline = time.monotonic() + self._grace
        while time.monotonic() < deadline:
            if (child.poll() is not None) if child is not None else not _alive(pid):
                return
            time.sleep(0.05)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGKILL)
        if child is not None:
            child.wait()


def _pid(handle: str) -> int:
    return int(handle.removeprefix("pid:"))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _runs_job(pid: int, job_dir: Path) -> bool:
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return b"foretell.training.worker" in cmdline and str(job_dir).encode() in cmdline
