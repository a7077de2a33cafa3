#!/usr/bin/env python3
r"""Scale: from a CSV file to the first recommendation, end to end through the public gRPC API, per data size.

For each size N in --sizes (interactions; default 1M,5M), one run:

1. data: a synthetic interactions file (USER_ID,ITEM_ID,TIMESTAMP), N rows, N/10 users (uniform), min(N/50,
   --max-items) items with Zipf popularity (exponent --zipf), timestamps increasing by one second per row;
   generated with numpy + pyarrow into --workdir once per size and reused when already there (a sidecar
   .json records how it was made);
2. floors, in this process, before the server starts (so nothing competes with them): ``pyarrow.csv.read_csv``
   of the same file (s, rows/s) and ``implicit``'s CPU ALS fit (--factors, --iterations, ``num_threads=0``, one
   BLAS thread as implicit asks) on the same user x item count matrix;
3. a real all-in-one server process (``python -m foretell.runtime``) on a fresh data dir, SQLite by default or
   --database-url (``pgtemp``: a throwaway PostgreSQL from the local binaries, one per size), whose import root
   (FORETELL_IMPORT_ROOTS) is the folder holding the CSV files;
4. through the Python client only: CreateDatasetImportJob of the file by ``file://`` URI, FULL mode, waited for
   (rows/s from the call to the operation's end_time); CreateSolutionVersion of recipe ``als`` (--factors,
   --iterations), its operation polled every --poll s: the snapshot stage runs from the call until the status
   message leaves "queued"/"taking the dataset snapshot" (the server's update_time of "worker started" when that
   poll saw it, else the poll's time), training from there to the operation's end_time (the worker: loading the
   snapshot, hold-out fit, evaluation, final fit, saving the artifact); CreateCampaign until ACTIVE; then
   --requests sequential GetRecommendations (25 results) for random users of the file, p50/p99;
5. memory: a thread samples /proc every 0.5 s (psutil when installed): peak RSS of the server's process tree
   (server + workers + export helpers, summed per sample), of the server process itself (its VmHWM, exact), and
   of the training worker (its VmHWM, as of the last sample before it exited); and this process's VmHWM (floors);
6. before each size, MemAvailable is checked against an estimate (--mem-base-mb + --mem-bytes-per-row x N,
   or the previous size's measured peaks scaled linearly when larger); a size that would not fit, or whose
   server or worker is killed (SIGKILL: the OOM killer), is recorded as "stopped: out of memory" and the larger
   sizes are not run.

Writes --out (JSON), prints a markdown table, and draws --chart (PNG: seconds per stage and floors against
interactions, log-log; needs matplotlib). Progress lines go to stderr as it runs.

    PYTHONPATH=services:clients/python nice -n 19 python bench/scale_bench.py --sizes 1M \
        --out /tmp/scale.json --chart docs/scale_growth.png
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
for _p in (ROOT / "services", ROOT / "clients" / "python"):
    if str(_p) not in sys.path:
        sys.path.insert(0, str(_p))

import numpy as np  # noqa: E402

HEADER = b"USER_ID,ITEM_ID,TIMESTAMP\n"
T0 = 1_600_000_000
GEN_CHUNK = 2_000_000
NUM_RESULTS = 25
SAMPLE_SECONDS = 0.5
# The training service's split of a CreateSolutionVersion operation (foretell.training.jobs): "queued", "taking
# the dataset snapshot" up to PREPARE_SHARE percent, then "worker started" at PREPARE_SHARE and the worker's own
# messages ("iteration 3/10", ...) over the rest.
WORKER_STARTED = "worker started"
PREPARE_SHARE = 5.0  # foretell.training.jobs.PREPARE_SHARE (the smoke test checks they agree)
OOM = "stopped: out of memory"


def say(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


# ---- sizes and data ------------------------------------------------------------------------------


def parse_size(text: str) -> int:
    """'1M' -> 1_000_000, '20k' -> 20_000, '2.5M', '1000'."""
    t = text.strip().lower().replace("_", "")
    scale = {"k": 1_000, "m": 1_000_000, "g": 1_000_000_000}.get(t[-1:], 1)
    number = t[:-1] if scale != 1 else t
    try:
        value = int(float(number) * scale)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (e.g. 20k, 1M, 2.5M)") from None
    if value < 100:
        raise argparse.ArgumentTypeError(f"size {text!r} is below 100 interactions")
    return value


def label(n: int) -> str:
    for unit, scale in (("M", 1_000_000), ("k", 1_000)):
        if n >= scale and n % (scale // 10 if scale > 1000 else scale) == 0:
            value = n / scale
            return f"{value:g}{unit}"
    return str(n)


@dataclass(frozen=True)
class Shape:
    rows: int
    users: int
    items: int
    zipf: float
    seed: int

    @classmethod
    def of(cls, rows: int, args: argparse.Namespace) -> Shape:
        return cls(rows, max(1, rows // 10), max(1, min(rows // 50, args.max_items)), args.zipf, args.seed)


def ensure_csv(workdir: Path, shape: Shape) -> Path:
    """The file for `shape` in workdir, generated unless an identical one is there."""
    path = workdir / f"interactions-{label(shape.rows)}.csv"
    return cached_file(path, {**shape.__dict__, "format": 1}, lambda p: generate_csv(p, shape))


def cached_file(path: Path, settings: dict[str, Any], generate: Callable[[Path], None]) -> Path:
    """`path`, made by `generate(path)` unless its JSON sidecar says it was made with the same `settings`."""
    sidecar = path.with_suffix(".json")
    if path.exists() and sidecar.exists():
        with contextlib.suppress(ValueError):
            if json.loads(sidecar.read_text()) == settings:
                say(f"data: reusing {path} ({path.stat().st_size / 2**20:,.0f} MB)")
                return path
    t = time.perf_counter()
    generate(path)
    sidecar.write_text(json.dumps(settings))
    say(f"data: wrote {path} ({path.stat().st_size / 2**20:,.0f} MB) in {time.perf_counter() - t:.1f} s")
    return path


def generate_csv(path: Path, shape: Shape) -> None:
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.csv as pacsv

    rng = np.random.default_rng(shape.seed)
    weights = 1.0 / np.arange(1, shape.items + 1, dtype=np.float64) ** shape.zipf
    cdf = np.cumsum(weights)
    cdf /= cdf[-1]
    # Item ids in a random order, so that popularity does not follow the id.
    item_of_rank = rng.permutation(shape.items)
    partial = path.with_name(f".{path.name}.partial")
    options = pacsv.WriteOptions(include_header=False, quoting_style="none")
    schema = pa.schema([("USER_ID", pa.string()), ("ITEM_ID", pa.string()), ("TIMESTAMP", pa.int64())])
    with partial.open("wb") as f:
        f.write(HEADER)
        with pacsv.CSVWriter(f, schema, write_options=options) as writer:
            for start in range(0, shape.rows, GEN_CHUNK):
                n = min(GEN_CHUNK, shape.rows - start)
                users = rng.integers(0, shape.users, n)
                ranks = np.minimum(np.searchsorted(cdf, rng.random(n)), shape.items - 1)
                items = item_of_rank[ranks]
                table = pa.table(
                    [
                        pc.binary_join_element_wise("u", pc.cast(pa.array(users), pa.string()), ""),
                        pc.binary_join_element_wise("i", pc.cast(pa.array(items), pa.string()), ""),
                        pa.array(T0 + start + np.arange(n, dtype=np.int64)),
                    ],
                    schema=schema,
                )
                writer.write_table(table)
                if shape.rows > GEN_CHUNK:
                    say(f"data: {start + n:,}/{shape.rows:,} rows")
    partial.replace(path)


# ---- memory --------------------------------------------------------------------------------------


def meminfo(key: str = "MemAvailable") -> int:
    """A /proc/meminfo value in bytes (0 where missing)."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    return 0


def proc_status(pid: int | str, key: str) -> int:
    """A /proc/PID/status value in bytes (0 if the process is gone)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _descendants_proc(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(children.get(pid, ()))
    return out


def process_tree(root: int) -> list[tuple[int, int, str]]:
    """(pid, RSS bytes, command line) of `root` and every descendant."""
    try:
        import psutil  # type: ignore[import-untyped,unused-ignore]
    except ImportError:
        return [(pid, proc_status(pid, "VmRSS"), _cmdline(pid)) for pid in _descendants_proc(root)]
    out = []
    with contextlib.suppress(psutil.Error):
        top = psutil.Process(root)
        for p in [top, *top.children(recursive=True)]:
            with contextlib.suppress(psutil.Error):
                out.append((p.pid, int(p.memory_info().rss), " ".join(p.cmdline())))
    return out


class TreeSampler:
    """Peak RSS of a process tree, of its training workers (VmHWM) and per stage, sampled in a thread."""

    def __init__(self, root: int, every: float = SAMPLE_SECONDS) -> None:
        self.root = root
        self.every = every
        self.stage = "start"
        self.tree_peak = 0
        self.worker_peak = 0
        self.workers_sum_peak = 0  # every training worker at once: the shards of one job run side by side
        self.stage_peaks: dict[str, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="rss-sampler")

    def __enter__(self) -> TreeSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def sample(self) -> None:
        tree = process_tree(self.root)
        total = sum(rss for _, rss, _ in tree)
        self.tree_peak = max(self.tree_peak, total)
        self.stage_peaks[self.stage] = max(self.stage_peaks.get(self.stage, 0), total)
        workers = 0
        for pid, rss, cmd in tree:
            if "foretell.training.worker" in cmd:
                self.worker_peak = max(self.worker_peak, rss, proc_status(pid, "VmHWM"))
                workers += rss
        self.workers_sum_peak = max(self.workers_sum_peak, workers)

    def _run(self) -> None:
        while True:
            with contextlib.suppress(Exception):  # a process ending mid-read: the next sample sees the rest
                self.sample()
            if self._stop.wait(self.every):
                return


# ---- floors --------------------------------------------------------------------------------------


def floors(path: Path, rows: int, args: argparse.Namespace) -> tuple[dict[str, Any], list[str]]:
    """pyarrow read_csv and implicit's ALS fit on the same data; returns (floors, sample user ids)."""
    import pyarrow.csv as pacsv
    import scipy.sparse as sp

    say(f"floor: pyarrow.csv.read_csv of {path.name} ...")
    t = time.perf_counter()
    table = pacsv.read_csv(path)
    read_s = time.perf_counter() - t
    if table.num_rows != rows:
        raise RuntimeError(f"pyarrow read {table.num_rows} rows from {path}, expected {rows}")
    say(f"floor: pyarrow read {rows:,} rows in {read_s:.2f} s ({rows / read_s:,.0f} rows/s)")

    t = time.perf_counter()
    users = table.column("USER_ID").combine_chunks().dictionary_encode()
    items = table.column("ITEM_ID").combine_chunks().dictionary_encode()
    u = users.indices.to_numpy().astype(np.int32)
    i = items.indices.to_numpy().astype(np.int32)
    n_users, n_items = len(users.dictionary), len(items.dictionary)
    rng = np.random.default_rng(args.seed + 1)
    sample = [str(x) for x in users.dictionary.take(rng.integers(0, n_users, args.requests).tolist()).to_pylist()]
    del table, users, items
    matrix = sp.csr_matrix((np.ones(len(u), dtype=np.float32), (u, i)), shape=(n_users, n_items))
    matrix.sum_duplicates()
    del u, i
    matrix_s = time.perf_counter() - t
    say(f"floor: {n_users:,} x {n_items:,} matrix, {matrix.nnz:,} nonzeros ({matrix_s:.1f} s)")

    implicit_s = implicit_fit(matrix, args)
    say(f"floor: implicit ALS fit ({args.factors} factors, {args.iterations} iterations) {implicit_s:.2f} s")
    out = {
        "pyarrow_read_s": read_s,
        "pyarrow_rows_per_s": rows / read_s,
        "matrix_build_s": matrix_s,
        "matrix_users": n_users,
        "matrix_items": n_items,
        "matrix_nnz": int(matrix.nnz),
        "implicit_fit_s": implicit_s,
    }
    return out, sample


def implicit_fit(matrix: Any, args: argparse.Namespace) -> float:
    from implicit.cpu.als import AlternatingLeastSquares
    from threadpoolctl import threadpool_limits

    with threadpool_limits(1, "blas"):  # implicit's own advice: its threads, one BLAS thread each
        model = AlternatingLeastSquares(
            factors=args.factors, iterations=args.iterations, num_threads=0, random_state=args.seed,
            calculate_training_loss=False,
        )  # fmt: skip
        t = time.perf_counter()
        model.fit(matrix, show_progress=False)
        return time.perf_counter() - t


# ---- the server ----------------------------------------------------------------------------------


class WorkerKilled(RuntimeError):
    """The training worker ended by SIGKILL (the OOM killer's signal)."""


class ServerDied(RuntimeError):
    def __init__(self, returncode: int | None, log: Path) -> None:
        super().__init__(f"the server exited with {returncode}; see {log}")
        self.returncode = returncode


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def database(url: str) -> Iterator[str]:
    if url != "pgtemp":
        yield url
        return
    from foretell.runtime import pgtemp

    with pgtemp.temporary_postgres() as temp:
        yield temp


def start_server(
    data_dir: Path, import_root: Path, database_url: str, extra_env: dict[str, str] | None = None
) -> tuple[subprocess.Popen[bytes], int, Path]:
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    data_dir.mkdir(parents=True)
    port = free_port()
    log = data_dir.parent / "server.log"
    env = {
        **os.environ,
        "FORETELL_HOST": "127.0.0.1",
        "FORETELL_PORT": str(port),
        "FORETELL_DATA_DIR": str(data_dir),
        "FORETELL_IMPORT_ROOTS": json.dumps([str(import_root)]),
        "FORETELL_LOG_LEVEL": "WARNING",
        "PYTHONPATH": os.pathsep.join([str(ROOT / "services"), str(ROOT / "clients" / "python")]),
    }
    if database_url:
        env["FORETELL_DATABASE_URL"] = database_url
    env.update(extra_env or {})
    with log.open("ab") as out:
        proc = subprocess.Popen([sys.executable, "-m", "foretell.runtime"], stdout=out, stderr=subprocess.STDOUT,
                                env=env)  # fmt: skip
    deadline = time.monotonic() + 120
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        health = health_pb2_grpc.HealthStub(channel)
        while True:
            if proc.poll() is not None:
                raise ServerDied(proc.returncode, log)
            with contextlib.suppress(grpc.RpcError):
                if (
                    health.Check(health_pb2.HealthCheckRequest(), timeout=2).status
                    == health_pb2.HealthCheckResponse.SERVING
                ):
                    return proc, port, log
            if time.monotonic() > deadline:
                stop_server(proc)
                raise RuntimeError(f"the server did not start serving within 120 s; see {log}")
            time.sleep(0.2)


def stop_server(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _seconds(stamp: Any) -> float:
    return float(stamp.seconds) + stamp.nanos / 1e9


def wait_polling(
    client: Any, operation: Any, proc: subprocess.Popen[bytes], log: Path, poll: float, what: str,
    on_poll: Callable[[Any, float], None] | None = None,
) -> Any:  # fmt: skip
    """Polls the operation every `poll` s until done, checking that the server lives; prints progress every 10 s.
    Returns the finished operation (its metadata has end_time)."""
    from foretell.v1 import common_pb2

    last_print = time.monotonic()
    while True:
        if proc.poll() is not None:
            raise ServerDied(proc.returncode, log)
        meta = common_pb2.OperationMetadata()
        operation.metadata.Unpack(meta)
        if on_poll is not None:
            on_poll(meta, time.time())
        if operation.done:
            return operation
        if time.monotonic() - last_print >= 10:
            last_print = time.monotonic()
            say(f"  {what}: {meta.progress_percent:5.1f}% {meta.status_message}")
        time.sleep(poll)
        operation = client.get_operation(operation.name)


def killed_by_signal(message: str) -> bool:
    """Does a failed job's error say its worker was SIGKILLed (the OOM killer's signal)?"""
    text = message.lower()
    return "-9" in text or "137" in text or "sigkill" in text or "killed" in text


# ---- one size ------------------------------------------------------------------------------------


@dataclass
class SizeResult:
    size: int
    label: str
    status: str = "ok"
    users: int = 0
    items: int = 0
    csv_mb: float = 0.0
    seconds_total: float = 0.0
    estimate_mb: float = 0.0
    available_mb: float = 0.0
    floors: dict[str, Any] = field(default_factory=dict)
    foretell: dict[str, Any] = field(default_factory=dict)
    memory: dict[str, Any] = field(default_factory=dict)
    ratios: dict[str, Any] = field(default_factory=dict)
    stages: list[dict[str, Any]] = field(default_factory=list)
    load_average: dict[str, float] = field(default_factory=dict)  # 1-minute, at the start and end of the size
    error: str = ""


def estimate_bytes(size: int, args: argparse.Namespace, previous: SizeResult | None) -> int:
    """Memory a size needs at its peak: --mem-base-mb + --mem-bytes-per-row x size, or, once a smaller size has
    run, its measured peak (server tree or this process's floors, whichever is larger) with the part above the
    base scaled linearly to this size."""
    base = args.mem_base_mb * 2**20
    if previous is None or previous.status != "ok" or not previous.memory:
        return int(base + args.mem_bytes_per_row * size)
    peak = max(previous.memory.get("tree_peak_mb", 0), previous.memory.get("bench_peak_mb", 0)) * 2**20
    base = min(base, peak / 2)
    return int(base + (peak - base) * size / previous.size)


def run_size(size: int, args: argparse.Namespace, previous: SizeResult | None) -> SizeResult:
    shape = Shape.of(size, args)
    result = SizeResult(size, label(size), users=shape.users, items=shape.items)
    began = time.perf_counter()
    estimate, available = estimate_bytes(size, args, previous), meminfo()
    result.estimate_mb, result.available_mb = estimate / 2**20, available / 2**20
    result.load_average["start"] = os.getloadavg()[0]
    if available and estimate > available * args.memory_margin:
        result.status = OOM
        result.error = (f"estimated peak {estimate / 2**30:.1f} GiB > {args.memory_margin:.0%} of "
                        f"{available / 2**30:.1f} GiB available; not started")  # fmt: skip
        say(f"{result.label}: {result.status} ({result.error})")
        return result
    say(f"== {result.label}: {size:,} interactions, {shape.users:,} users, {shape.items:,} items "
        f"(estimated peak {estimate / 2**30:.1f} GiB of {available / 2**30:.1f} GiB available)")  # fmt: skip
    csv_dir = args.workdir / "data"
    csv_dir.mkdir(parents=True, exist_ok=True)
    path = ensure_csv(csv_dir, shape)
    result.csv_mb = path.stat().st_size / 2**20
    result.floors, sample_users = floors(path, size, args)
    run_dir = Path(tempfile.mkdtemp(prefix=f"server-{result.label}-", dir=args.workdir))
    try:
        with database(args.database_url) as url:
            foretell_stages(result, path, run_dir, url, sample_users, args)
    except ServerDied as exc:
        result.status = OOM if exc.returncode in (-9, 137) else "failed"
        result.error = str(exc)
    except WorkerKilled as exc:
        result.status, result.error = OOM, str(exc)
    except MemoryError as exc:
        result.status, result.error = OOM, f"MemoryError in the bench process: {exc}"
    except Exception as exc:  # recorded, and the report still comes out
        result.status, result.error = "failed", f"{type(exc).__name__}: {exc}"[:2000]
    finally:
        if not args.keep:
            shutil.rmtree(run_dir, ignore_errors=True)
    result.memory["bench_peak_mb"] = proc_status("self", "VmHWM") / 2**20
    result.seconds_total = time.perf_counter() - began
    result.load_average["end"] = os.getloadavg()[0]
    if result.status == "ok":
        f, r = result.foretell, result.floors
        result.ratios = {
            "import_vs_pyarrow_throughput": f["import_rows_per_s"] / r["pyarrow_rows_per_s"],
            "training_vs_implicit_seconds": f["training_s"] / r["implicit_fit_s"],
        }
    say(
        f"== {result.label}: {result.status} in {result.seconds_total:.0f} s"
        + (f": {result.error}" if result.error else "")
    )
    return result


def foretell_stages(
    result: SizeResult, path: Path, run_dir: Path, database_url: str, sample_users: list[str],
    args: argparse.Namespace,
) -> None:  # fmt: skip
    from foretell.client import Client, operation_response
    from foretell.v1 import dataset_pb2 as pb
    from foretell.v1 import training_pb2 as tpb

    proc, port, log = start_server(run_dir / "data", path.parent, database_url)
    say(f"server pid {proc.pid} on 127.0.0.1:{port}, data dir {run_dir / 'data'}")
    f = result.foretell
    try:
        with TreeSampler(proc.pid) as mem, Client(f"127.0.0.1:{port}", timeout=120) as client:
            # ---- import
            mem.stage = "import"
            gid = f"scale-{result.label.lower().replace('.', '-')}-{os.getpid()}"
            group = client.create_dataset_group(gid, pb.DOMAIN_RECOMMENDATION)
            schema = client.create_schema(gid, pb.DOMAIN_RECOMMENDATION, [
                pb.SchemaField(name="USER_ID", type=pb.FIELD_TYPE_STRING),
                pb.SchemaField(name="ITEM_ID", type=pb.FIELD_TYPE_STRING),
                pb.SchemaField(name="TIMESTAMP", type=pb.FIELD_TYPE_LONG),
            ])  # fmt: skip
            dataset = client.create_dataset(group.name, "interactions", pb.DATASET_TYPE_INTERACTIONS, schema.name)
            say(f"import: CreateDatasetImportJob {path.as_uri()} (FULL)")
            t = time.time()
            op = client.import_uri(dataset.name, path.as_uri(), import_mode=pb.IMPORT_MODE_FULL)
            done = wait_polling(client, op, proc, log, args.poll, "import")
            job = operation_response(done, pb.ImportJob)
            end = _end_time(done, time.time())
            if job.rows_imported != result.size:
                raise RuntimeError(f"import stored {job.rows_imported} rows, expected {result.size}")
            f["import_s"] = end - t
            f["import_rows_per_s"] = result.size / f["import_s"]
            say(f"import: {result.size:,} rows in {f['import_s']:.1f} s ({f['import_rows_per_s']:,.0f} rows/s)")

            # ---- training
            mem.stage = "train"
            solution = client.create_solution(
                gid, group.name, "als", {"factors": args.factors, "iterations": args.iterations}
            )
            say(f"train: CreateSolutionVersion als, {args.factors} factors, {args.iterations} iterations")
            t = time.time()
            op = client.create_solution_version(solution)
            stages = result.stages
            boundary: list[float] = []

            def on_poll(meta: Any, now: float) -> None:
                message = meta.status_message
                if not stages or stages[-1]["message"] != message:
                    stages.append({"t_s": round(now - t, 3), "message": message,
                                   "percent": round(meta.progress_percent, 1)})  # fmt: skip
                    say(f"  train +{now - t:6.1f} s: {meta.progress_percent:5.1f}% {message or '(no message)'}")
                if not boundary and (meta.progress_percent >= PREPARE_SHARE or meta.end_time.seconds):
                    # The snapshot is the first PREPARE_SHARE percent; "worker started" opens the worker's part, and
                    # when this poll saw that message its update_time is the exact boundary.
                    exact = message == WORKER_STARTED and meta.HasField("update_time")
                    boundary.append(_seconds(meta.update_time) if exact else now)
                    f["snapshot_boundary"] = "server update_time" if exact else f"poll (every {args.poll} s)"
                    say(f"  train: snapshot done after {boundary[0] - t:.1f} s")

            done = wait_polling(client, op, proc, log, args.poll, "train", on_poll)
            if done.HasField("error"):
                message = done.error.message
                if killed_by_signal(message):
                    raise WorkerKilled(f"the training worker was killed: {message}")
                raise RuntimeError(f"training failed: {message}")
            version = operation_response(done, tpb.SolutionVersion)
            end = _end_time(done, time.time())
            split = boundary[0] if boundary else end
            f["snapshot_s"] = split - t
            f["training_s"] = end - split
            f["solution_version_s"] = end - t
            say(f"train: snapshot {f['snapshot_s']:.1f} s, training {f['training_s']:.1f} s, "
                f"total {f['solution_version_s']:.1f} s")  # fmt: skip

            # ---- campaign
            mem.stage = "campaign"
            t = time.time()
            campaign = client.create_campaign(gid, version.name, timeout=args.timeout)
            f["campaign_active_s"] = time.time() - t
            say(f"campaign: ACTIVE after {f['campaign_active_s']:.1f} s")

            # ---- serving
            mem.stage = "serve"
            t0 = time.perf_counter()
            client.get_recommendations(campaign.name, user_id=sample_users[0], num_results=NUM_RESULTS)
            first_call = time.perf_counter() - t0
            for user in sample_users[1 : min(20, len(sample_users))]:  # warm-up, not counted
                client.get_recommendations(campaign.name, user_id=user, num_results=NUM_RESULTS)
            latencies = []
            empty = 0
            for k, user in enumerate(sample_users):
                t0 = time.perf_counter()
                answer = client.get_recommendations(campaign.name, user_id=user, num_results=NUM_RESULTS)
                latencies.append(time.perf_counter() - t0)
                empty += not answer.item_list
                if (k + 1) % 500 == 0:
                    say(f"  serve: {k + 1}/{len(sample_users)} requests")
                if proc.poll() is not None:
                    raise ServerDied(proc.returncode, log)
            lat = np.sort(np.array(latencies)) * 1e3
            f["recommend_requests"] = len(lat)
            f["recommend_empty_answers"] = empty
            f["recommend_p50_ms"] = float(np.percentile(lat, 50))
            f["recommend_p99_ms"] = float(np.percentile(lat, 99))
            f["recommend_mean_ms"] = float(lat.mean())
            say(f"serve: p50 {f['recommend_p50_ms']:.2f} ms, p99 {f['recommend_p99_ms']:.2f} ms")
            f["first_recommendation_s"] = f["import_s"] + f["solution_version_s"] + f["campaign_active_s"] + first_call
            mem.sample()
        result.memory.update({
            "tree_peak_mb": mem.tree_peak / 2**20,
            "server_peak_mb": proc_status(proc.pid, "VmHWM") / 2**20,
            "worker_peak_mb": mem.worker_peak / 2**20,
            "tree_peak_by_stage_mb": {k: v / 2**20 for k, v in mem.stage_peaks.items()},
        })  # fmt: skip
    finally:
        stop_server(proc)


def _end_time(operation: Any, fallback: float) -> float:
    from foretell.v1 import common_pb2

    meta = common_pb2.OperationMetadata()
    operation.metadata.Unpack(meta)
    return _seconds(meta.end_time) if meta.HasField("end_time") else fallback


# ---- report --------------------------------------------------------------------------------------


def fmt(value: Any, spec: str = ",.1f") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return format(value, spec)


def markdown(results: list[SizeResult]) -> str:
    head = (
        "| interactions | users | items | import rows/s | pyarrow rows/s | import / pyarrow | snapshot s | "
        "training s | implicit s | training / implicit | version total s | campaign ACTIVE s | rec p50 ms | "
        "rec p99 ms | peak RSS tree MB | peak RSS worker MB | status |"
    )
    lines = [head, "|" + "---:|" * 16 + "---|"]
    for r in results:
        f, fl, ra, m = r.foretell, r.floors, r.ratios, r.memory
        lines.append(
            f"| {r.size:,} | {r.users:,} | {r.items:,} | {fmt(f.get('import_rows_per_s'), ',.0f')} | "
            f"{fmt(fl.get('pyarrow_rows_per_s'), ',.0f')} | {fmt(ra.get('import_vs_pyarrow_throughput'), '.4f')} | "
            f"{fmt(f.get('snapshot_s'))} | {fmt(f.get('training_s'))} | {fmt(fl.get('implicit_fit_s'), '.2f')} | "
            f"{fmt(ra.get('training_vs_implicit_seconds'), '.1f')} | {fmt(f.get('solution_version_s'))} | "
            f"{fmt(f.get('campaign_active_s'))} | {fmt(f.get('recommend_p50_ms'), '.2f')} | "
            f"{fmt(f.get('recommend_p99_ms'), '.2f')} | {fmt(m.get('tree_peak_mb'), ',.0f')} | "
            f"{fmt(m.get('worker_peak_mb'), ',.0f')} | {r.status} |"
        )
    return "\n".join(lines)


def chart(results: list[SizeResult], path: Path) -> str:
    """The growth chart; returns a note (why it was not drawn, or where it went)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "chart not drawn: matplotlib is not installed"
    done = [r for r in results if r.status == "ok"]
    if not done:
        return "chart not drawn: no size completed"
    series = [
        ("import", "foretell", "import_s", "o-"),
        ("snapshot", "foretell", "snapshot_s", "s-"),
        ("training", "foretell", "training_s", "^-"),
        ("campaign ACTIVE", "foretell", "campaign_active_s", "D-"),
        ("floor: pyarrow read_csv", "floors", "pyarrow_read_s", "o--"),
        ("floor: implicit ALS fit", "floors", "implicit_fit_s", "^--"),
    ]
    fig, ax = plt.subplots(figsize=(8, 5), dpi=110)
    xs = [r.size for r in done]
    for name, part, key, style in series:
        ys = [getattr(r, part).get(key) for r in done]
        ax.plot(xs, ys, style, label=name)
    for r in results:
        if r.status != "ok":
            ax.axvline(r.size, color="red", alpha=0.3, linestyle=":")
            ax.annotate(r.status, (r.size, 1), rotation=90, color="red", fontsize=7)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("interactions")
    ax.set_ylabel("seconds")
    ax.set_title("Foretell: file to first recommendation, seconds per stage")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return f"chart: {path}"


def machine() -> str:
    model = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return (f"{os.cpu_count()} CPUs ({model}), {meminfo('MemTotal') / 2**30:.0f} GiB, Python "
            f"{platform.python_version()}, {platform.system()} {platform.release()}")  # fmt: skip


def git_commit() -> str:
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        return subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, check=True).stdout.strip()  # fmt: skip
    return ""


# ---- main ----------------------------------------------------------------------------------------


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="scale_bench.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--sizes", default="1M,5M", help="comma-separated interaction counts, e.g. 1M,5M,20M,50M or 20k (default 1M,5M)"
    )
    p.add_argument("--max-items", type=int, default=100_000, help="cap on the item count (items = min(N/50, cap))")
    p.add_argument("--zipf", type=float, default=1.0, help="Zipf exponent of item popularity (default 1.0)")
    p.add_argument("--seed", type=int, default=0, help="seed of the generated data and the sampled users")
    p.add_argument("--factors", type=int, default=64, help="ALS factors, Foretell and implicit (default 64)")
    p.add_argument("--iterations", type=int, default=10, help="ALS iterations, Foretell and implicit (default 10)")
    p.add_argument(
        "--requests",
        type=int,
        default=2000,
        help="sequential GetRecommendations calls (25 results) for random users of the file",
    )
    p.add_argument("--poll", type=float, default=0.5, help="seconds between GetOperation polls (default 0.5)")
    p.add_argument("--timeout", type=float, default=7200, help="seconds to wait for a campaign to be ACTIVE")
    p.add_argument("--database-url", default="",
                   help="SQLAlchemy URL for the server (default: SQLite in its fresh data dir); 'pgtemp': a "
                        "throwaway PostgreSQL from the local initdb/pg_ctl, one per size")  # fmt: skip
    p.add_argument(
        "--workdir",
        type=Path,
        default=Path(tempfile.gettempdir()) / "foretell-scale-bench",
        help="generated CSV files (kept and reused) and the servers' data dirs (removed unless --keep)",
    )
    p.add_argument("--keep", action="store_true", help="keep each size's server data dir and log")
    p.add_argument(
        "--mem-base-mb", type=float, default=300, help="memory estimate: fixed part, MB (default 300: an idle server)"
    )
    p.add_argument("--mem-bytes-per-row", type=float, default=1000,
                   help="memory estimate: bytes per interaction at the peak (default 1000; the 1M run of "
                        "docs/benchmarks.md peaked at 1,212 MB); once a size has run, its measured peak above "
                        "the fixed part, scaled linearly, is used instead")  # fmt: skip
    p.add_argument(
        "--memory-margin",
        type=float,
        default=0.9,
        help="run a size only if its estimate is below this share of MemAvailable (default 0.9)",
    )
    p.add_argument("--out", type=Path, help="write the results as JSON here")
    p.add_argument("--chart", type=Path, help="draw the growth chart (PNG) here, e.g. docs/scale_growth.png")
    return p


def main(argv: list[str] | None = None) -> int:
    p = parser()
    args = p.parse_args(argv)
    try:
        sizes = sorted({parse_size(s) for s in args.sizes.split(",") if s.strip()})
    except argparse.ArgumentTypeError as exc:
        p.error(str(exc))
    if not sizes:
        p.error("--sizes names no size")
    if args.requests < 1 or args.factors < 1 or args.iterations < 1 or args.poll <= 0:
        p.error("--requests, --factors, --iterations and --poll must be positive")
    args.workdir.mkdir(parents=True, exist_ok=True)
    began = time.perf_counter()
    say(f"scale bench: sizes {', '.join(label(s) for s in sizes)}; work dir {args.workdir}")
    results: list[SizeResult] = []
    previous: SizeResult | None = None
    for size in sizes:
        if results and results[-1].status == OOM:
            results.append(
                SizeResult(
                    size,
                    label(size),
                    OOM,
                    error="not run: a smaller size ran out of memory",
                    users=Shape.of(size, args).users,
                    items=Shape.of(size, args).items,
                )
            )
            continue
        result = run_size(size, args, previous)
        results.append(result)
        if result.status == "ok":
            previous = result
    total = time.perf_counter() - began
    report = {
        "machine": machine(),
        "commit": git_commit(),
        "time": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "command": " ".join([Path(sys.argv[0]).name if argv is None else "scale_bench.py", *(argv or sys.argv[1:])]),
        "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "total_s": total,
        "results": [r.__dict__ for r in results],
    }
    table = markdown(results)
    note = chart(results, args.chart) if args.chart else ""
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2))
    print(f"Machine: {report['machine']}; {report['time']}; commit {report['commit']}; total {total:.0f} s")
    print()
    print(table)
    if note:
        print()
        print(note)
    return 0 if all(r.status == "ok" for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
