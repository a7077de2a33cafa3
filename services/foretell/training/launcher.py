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
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from foretell.training import shards


@dataclass(frozen=True)
class WorkerStatus:
    running: bool
    # Exit code once finished; None when the worker vanished without one we could read.
    exit_code: int | None = None
    # How the worker ended, when the launcher knows more than an exit code (evicted, Job deleted): the
    # jobs layer reports it when there is no result.json.
    reason: str | None = None
    # Of a sharded job that failed: the shard whose failure ended it, when the launcher knows.
    shard: int | None = None


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
    reaches the server alone, which then stops its workers itself.

    A sharded job (`foretell.training.shards`) runs as one process per shard, at most
    `max_parallel_shards` (default: the CPU count) at a time, each with JOB_COMPLETION_INDEX set as
    in a Kubernetes Indexed Job and its share of the CPUs for its own fits. The next shard starts
    when `status` finds one finished (the jobs layer polls it), so no thread is needed; the first
    shard to fail stops the others, as an Indexed Job's FailJob rule does."""

    def __init__(self, stop_grace_seconds: float = 5.0, max_parallel_shards: int = 0) -> None:
        self._children: dict[int, subprocess.Popen[bytes]] = {}
        self._groups: dict[str, _ShardGroup] = {}
        self._lock = threading.Lock()
        self._grace = stop_grace_seconds
        self._max_parallel = max_parallel_shards or os.cpu_count() or 1

    def start(self, job_dir: Path) -> str:
        n = shards.count_of(job_dir)
        if n > 1:
            group = _ShardGroup(job_dir, n, min(n, self._max_parallel), self._spawn)
            handle = f"{SHARDS_PREFIX}{job_dir.name}-{uuid.uuid4().hex[:8]}"
            with self._lock:
                self._groups[handle] = group
            group.advance()
            return handle
        child = self._spawn(job_dir, job_dir / "worker.log", {})
        return f"pid:{child.pid}"

    def _spawn(self, job_dir: Path, log_path: Path, extra_env: dict[str, str]) -> subprocess.Popen[bytes]:
        log = log_path.open("ab")
        env = {**os.environ, **extra_env}
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
        return child

    def status(self, handle: str, job_dir: Path) -> WorkerStatus:
        if handle.startswith(SHARDS_PREFIX):
            with self._lock:
                group = self._groups.get(handle)
                if group is None:  # started before this server restarted: adopt what is left of it
                    group = self._groups[handle] = _ShardGroup.adopt(job_dir, self._max_parallel, self._spawn)
            status = group.advance()
            if status.running is False and group.running_pids():
                self._stop_group(group)
            return status
        pid = _pid(handle)
        with self._lock:
            child = self._children.get(pid)
        if child is not None:
            code = child.poll()
            return WorkerStatus(running=code is None, exit_code=code)
        # A worker started before this server restarted: alive only if that pid still runs our job.
        return WorkerStatus(running=_runs_job(pid, job_dir))

    def stop(self, handle: str) -> None:
        if handle.startswith(SHARDS_PREFIX):
            with self._lock:
                group = self._groups.get(handle)
            if group is not None:
                self._stop_group(group)
            return
        self._stop_pid(_pid(handle))

    def _stop_group(self, group: _ShardGroup) -> None:
        group.pending.clear()
        for pid in group.running_pids():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGTERM)  # all at once, then wait for each within the grace period
        for pid in group.running_pids():
            self._stop_pid(pid)

    def _stop_pid(self, pid: int) -> None:
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


SHARDS_PREFIX = "shards:"


class _ShardGroup:
    """The processes of one sharded job: shard index -> process, plus the indexes not started yet."""

    def __init__(
        self,
        job_dir: Path,
        n: int,
        parallel: int,
        spawn: Callable[[Path, Path, dict[str, str]], subprocess.Popen[bytes]],
    ) -> None:
        self.job_dir = job_dir
        self.n = n
        self.parallel = max(1, parallel)
        self.spawn = spawn
        self.pending = list(range(n))
        self.children: dict[int, subprocess.Popen[bytes]] = {}
        self.adopted: dict[int, int] = {}  # index -> pid of a shard a previous server started
        self.exit_codes: dict[int, int | None] = {}
        self.failure: WorkerStatus | None = None  # the first shard that failed: the group's verdict

    @classmethod
    def adopt(
        cls, job_dir: Path, max_parallel: int, spawn: Callable[[Path, Path, dict[str, str]], subprocess.Popen[bytes]]
    ) -> _ShardGroup:
        """After a restart: shards with a result are done, shards whose process still runs are followed,
        and the rest start again (a shard rewrites its outputs whole, so a half-done one is simply redone)."""
        n = shards.count_of(job_dir)
        group = cls(job_dir, n, min(n, max_parallel), spawn)
        group.adopted = _running_shards(job_dir)
        for i in range(n):
            result = shards.read_result(job_dir, i)
            if result is not None and i not in group.adopted:
                group.exit_codes[i] = 0 if result.get("ok") else 1
        group.pending = [i for i in range(n) if i not in group.exit_codes and i not in group.adopted]
        return group

    def running_pids(self) -> list[int]:
        alive = [c.pid for i, c in self.children.items() if i not in self.exit_codes]
        return alive + [pid for i, pid in self.adopted.items() if i not in self.exit_codes]

    def advance(self) -> WorkerStatus:
        """Reaps ended shards, starts pending ones up to the parallelism, and says where the group stands."""
        for i, child in self.children.items():
            if i not in self.exit_codes and (code := child.poll()) is not None:
                self.exit_codes[i] = code
        for i, pid in self.adopted.items():
            # By its command line, not its pid alone: a pid can be reused, and an ended process's is empty.
            if i not in self.exit_codes and not _runs_job(pid, self.job_dir):
                result = shards.read_result(self.job_dir, i)
                self.exit_codes[i] = None if result is None else 0 if result.get("ok") else 1
        failed = sorted(i for i, code in self.exit_codes.items() if code != 0)
        if failed and self.failure is None:
            i, code = failed[0], self.exit_codes[failed[0]]
            how = f"exited with code {code}" if code is not None else "is gone (it died or was killed)"
            self.failure = WorkerStatus(False, code, f"of shard {i} of {self.n} {how}", shard=i)
        if self.failure is not None:
            return self.failure
        if len(self.exit_codes) == self.n:
            return WorkerStatus(running=False, exit_code=0)
        # Each running shard gets an equal share of the CPUs for its per-series fits.
        processes = str(max(1, (os.cpu_count() or 1) // self.parallel))
        while self.pending and len(self.running_pids()) < self.parallel:
            i = self.pending.pop(0)
            log = shards.shard_dir(self.job_dir, i)
            log.mkdir(parents=True, exist_ok=True)
            env = {shards.INDEX_ENV: str(i), shards.PROCESSES_ENV: processes}
            self.children[i] = self.spawn(self.job_dir, log / "worker.log", env)
        return WorkerStatus(running=True)


def _running_shards(job_dir: Path) -> dict[int, int]:
    """index -> pid of the worker processes on this machine that run a shard of the job in `job_dir`."""
    found = {}
    for proc in Path("/proc").glob("[0-9]*"):
        if not _runs_job(int(proc.name), job_dir):
            continue
        try:
            environ = (proc / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        for entry in environ:
            key, _, value = entry.partition(b"=")
            if key == shards.INDEX_ENV.encode() and value.isdigit():
                found[int(value)] = int(proc.name)
    return found
