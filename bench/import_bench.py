#!/usr/bin/env python3
"""Bulk import and PutEvents throughput of Foretell, side by side with a hand-written peer (issue 2).

One run, per backend (SQLite, PostgreSQL):

* a real Foretell server (dataset service only) on port 0 in this process, driven over real gRPC;
* ImportData of MovieLens latest-small ratings (converted to the interactions CSV format) and of a
  generated N-row interactions file: rows/s end to end (streamed upload + operation done), and the
  server process's peak RSS growth during the import;
* the peer a user would write instead, on the same file, in the same run: for SQLite the stdlib
  ``sqlite3`` + ``csv.reader`` + ``executemany`` into a bare table, for PostgreSQL psycopg3
  ``COPY ... FROM STDIN`` into a bare table;
* PutEvents events/s from a separate load process (a few client threads, loopback), next to the
  same batches written straight into the database by the same number of threads
  (``INSERT ... ON CONFLICT (event_id) DO NOTHING``, one transaction per batch, no RPC).

Usage (from the repository root):

    PYTHONPATH=services:clients/python python bench/import_bench.py [--data ../shared/data] \
        [--rows 1000000] [--backends sqlite,postgres] [--put-events 20000] [--batch 10] [--out FILE]

The MovieLens files are read from --data and never copied; generated files live in a temp dir.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import multiprocessing
import os
import platform
import random
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
for _p in (REPO / "services", REPO / "clients" / "python"):
    if str(_p) not in sys.path:
        sys.path.insert(0, str(_p))

import grpc  # noqa: E402
from google.longrunning import operations_pb2, operations_pb2_grpc  # noqa: E402

from foretell.v1 import dataset_pb2 as pb  # noqa: E402
from foretell.v1 import dataset_service_pb2 as api  # noqa: E402
from foretell.v1 import dataset_service_pb2_grpc  # noqa: E402

HEADER = "USER_ID,ITEM_ID,TIMESTAMP,EVENT_TYPE,EVENT_VALUE"
FIELDS = [
    pb.SchemaField(name="USER_ID", type=pb.FIELD_TYPE_STRING),
    pb.SchemaField(name="ITEM_ID", type=pb.FIELD_TYPE_STRING),
    pb.SchemaField(name="TIMESTAMP", type=pb.FIELD_TYPE_LONG),
    pb.SchemaField(name="EVENT_TYPE", type=pb.FIELD_TYPE_STRING, nullable=True),
    pb.SchemaField(name="EVENT_VALUE", type=pb.FIELD_TYPE_FLOAT, nullable=True),
]
CHUNK = 1 << 20  # what foretell.client's import_file sends per message
PEER_COLUMNS = "user_id, item_id, ts, event_type, event_value"


# ---- data --------------------------------------------------------------------------------


def movielens_csv(data: Path, out: Path) -> int:
    """ratings.csv (userId,movieId,rating,timestamp) -> the interactions format; returns rows."""
    src = data / "movielens-latest-small" / "ratings.csv"
    if not src.is_file():
        raise SystemExit(f"{src} not found; pass --data pointing at the shared data folder")
    rows = 0
    with src.open(newline="") as f, out.open("w", newline="") as w:
        reader = csv.reader(f)
        next(reader)
        w.write(HEADER + "\n")
        for user, movie, rating, ts in reader:
            w.write(f"{user},{movie},{ts},rating,{rating}\n")
            rows += 1
    return rows


def synthetic_csv(out: Path, rows: int, seed: int = 2) -> int:
    """A generated interactions file: 100k users, 20k items (skewed), half the rows valued."""
    rng = random.Random(seed)
    rand = rng.random
    types = ("click", "watch", "purchase")
    t0 = 1_600_000_000
    with out.open("w", newline="") as w:
        w.write(HEADER + "\n")
        lines = []
        for i in range(rows):
            r = rand()
            value = f"{1 + int(r * 9) / 2:.1f}" if r < 0.5 else ""
            lines.append(f"u{int(rand() * 100_000)},i{int(rand() ** 2 * 20_000)},{t0 + i * 7},{types[i % 3]},{value}\n")
            if len(lines) == 50_000:
                w.writelines(lines)
                lines = []
        w.writelines(lines)
    return rows


# ---- memory ------------------------------------------------------------------------------


def _status(key: str) -> int:
    """A /proc/self/status value in bytes (0 where /proc is missing)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


class PeakRss:
    """Peak RSS growth of this process over a block: resets VmHWM where the kernel allows it
    (exact), and samples VmRSS every 5 ms in a thread as well; reports the larger."""

    def __init__(self) -> None:
        self.growth = 0
        self._stop = threading.Event()
        self._peak = 0

    def __enter__(self) -> PeakRss:
        self.base = _status("VmRSS")
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
            self._hwm_reset = _status("VmHWM") <= self.base + (8 << 20)
        except OSError:
            self._hwm_reset = False
        self._peak = self.base
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(0.005):
            self._peak = max(self._peak, _status("VmRSS"))

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        peak = max(self._peak, _status("VmRSS"), _status("VmHWM") if self._hwm_reset else 0)
        self.growth = max(0, peak - self.base)


# ---- Foretell over gRPC ------------------------------------------------------------------


@dataclass
class Client:
    channel: grpc.Channel
    datasets: dataset_service_pb2_grpc.DatasetServiceStub
    operations: operations_pb2_grpc.OperationsStub

    @classmethod
    def connect(cls, port: int) -> Client:
        channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        return cls(
            channel, dataset_service_pb2_grpc.DatasetServiceStub(channel), operations_pb2_grpc.OperationsStub(channel)
        )

    def group(self, group_id: str) -> tuple[str, str]:
        """A RECOMMENDATION group with an interactions dataset; returns (group, dataset) names."""
        d = self.datasets
        group = d.CreateDatasetGroup(api.CreateDatasetGroupRequest(
            dataset_group_id=group_id, dataset_group=pb.DatasetGroup(domain=pb.DOMAIN_RECOMMENDATION)), timeout=10)
        d.CreateSchema(api.CreateSchemaRequest(schema_id=f"{group_id}-interactions", schema=pb.Schema(
            domain=pb.DOMAIN_RECOMMENDATION, fields=FIELDS)), timeout=10)
        dataset = d.CreateDataset(api.CreateDatasetRequest(
            parent=group.name, dataset_id="interactions",
            dataset=pb.Dataset(dataset_type=pb.DATASET_TYPE_INTERACTIONS, schema=f"schemas/{group_id}-interactions"),
        ), timeout=10)
        return group.name, dataset.name

    def import_file(self, dataset: str, path: Path, uploaded: list[float] | None = None) -> operations_pb2.Operation:
        """Streams the file (1 MiB chunks, like foretell.client) and polls the operation to done;
        appends the perf_counter time at which ImportData returned (upload spooled) to `uploaded`."""

        def messages() -> Iterator[api.ImportDataRequest]:
            yield api.ImportDataRequest(config=api.ImportDataConfig(dataset=dataset, import_mode=pb.IMPORT_MODE_FULL))
            with path.open("rb") as f:
                while piece := f.read(CHUNK):
                    yield api.ImportDataRequest(chunk=piece)

        op = self.datasets.ImportData(messages(), timeout=600)
        if uploaded is not None:
            uploaded.append(time.perf_counter())
        while not op.done:
            time.sleep(0.02)
            op = self.operations.GetOperation(operations_pb2.GetOperationRequest(name=op.name), timeout=10)
        if op.HasField("error"):
            raise RuntimeError(f"import of {path.name} failed: {op.error.message}")
        return op


# ---- peers -------------------------------------------------------------------------------


def peer_sqlite_import(path: Path, db: Path) -> int:
    """What a user would hand-write: csv.reader + executemany into a bare table, one commit."""
    db.unlink(missing_ok=True)
    conn = sqlite3.connect(db)
    conn.execute("PRAGMA journal_mode=WAL")  # same journal settings as Foretell's engine
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute(
        "CREATE TABLE interactions (user_id TEXT, item_id TEXT, ts INTEGER, event_type TEXT, event_value REAL)"
    )
    with path.open(newline="") as f:
        reader = csv.reader(f)
        next(reader)
        cur = conn.executemany(f"INSERT INTO interactions ({PEER_COLUMNS}) VALUES (?, ?, ?, ?, ?)", reader)
        rows = cur.rowcount
    conn.commit()
    conn.close()
    return rows


def _psycopg_url(sqlalchemy_url: str) -> str:
    return sqlalchemy_url.replace("postgresql+psycopg://", "postgresql://", 1)


def peer_postgres_copy(path: Path, url: str, table: str) -> int:
    """The fastest thing a user would do: COPY ... FROM STDIN (CSV) into a bare table."""
    import psycopg

    with psycopg.connect(_psycopg_url(url)) as conn:
        conn.execute(f"DROP TABLE IF EXISTS {table}")
        conn.execute(
            f"CREATE TABLE {table} (user_id TEXT, item_id TEXT, ts BIGINT, event_type TEXT, "
            "event_value DOUBLE PRECISION)"
        )
        conn.commit()
        with conn.cursor() as cur:
            with cur.copy(f"COPY {table} ({PEER_COLUMNS}) FROM STDIN WITH (FORMAT csv, HEADER true)") as copy, \
                    path.open("rb") as f:
                while block := f.read(CHUNK):
                    copy.write(block)
            rows = cur.rowcount
        conn.commit()
    return rows


# ---- PutEvents load process ----------------------------------------------------------------

Batch = list[tuple[Any, ...]]  # (event_id, user_id, session_id, item_id, ts, event_type, event_value)


def _event_batches(worker: int, calls: int, batch: int, seed: int) -> list[Batch]:
    rng = random.Random(seed * 1000 + worker)
    now = int(time.time())
    out = []
    for c in range(calls):
        user = f"u{rng.randrange(100_000)}"
        out.append([
            (f"w{worker}-c{c}-e{k}", user, f"s{worker}-{c}", f"i{int(rng.random() ** 2 * 20_000)}",
             now - rng.randrange(86_400), ("click", "watch", "purchase")[k % 3], float(rng.randrange(1, 6)))
            for k in range(batch)
        ])
    return out


class ForetellSender:
    """PutEvents over its own gRPC channel; requests are built before the timed window."""

    def __init__(self, port: int, group: str) -> None:
        self._group = group
        self._channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        self._stub = dataset_service_pb2_grpc.DatasetServiceStub(self._channel)
        self._requests: dict[int, api.PutEventsRequest] = {}

    def _build(self, events: Batch) -> api.PutEventsRequest:
        from google.protobuf.timestamp_pb2 import Timestamp

        _, user, session = events[0][:3]
        return api.PutEventsRequest(dataset_group=self._group, session_id=session, user_id=user, events=[
            pb.Event(event_id=eid, item_id=item, sent_at=Timestamp(seconds=ts), event_type=etype, event_value=value)
            for eid, _, _, item, ts, etype, value in events
        ])

    def prepare(self, batches: list[Batch]) -> None:
        self._requests.update({id(b): self._build(b) for b in batches})

    def __call__(self, events: Batch) -> int:
        request = self._requests.pop(id(events), None) or self._build(events)
        return int(self._stub.PutEvents(request, timeout=30).accepted)

    def close(self) -> None:
        self._channel.close()


class DatabaseSender:
    """The same batches written straight into a bare table: one transaction per batch."""

    def __init__(self, backend: str, target: str) -> None:
        self._sql = (
            "INSERT INTO events (event_id, user_id, session_id, item_id, ts, event_type, event_value) "
            f"VALUES ({', '.join(['%s'] * 7)}) ON CONFLICT (event_id) DO NOTHING"
        )
        self._conn: Any
        if backend == "sqlite":
            self._conn = sqlite3.connect(target, timeout=30, check_same_thread=False)
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA synchronous=NORMAL")
            self._sql = self._sql.replace("%s", "?")
        else:
            import psycopg

            self._conn = psycopg.connect(_psycopg_url(target))

    def prepare(self, batches: list[Batch]) -> None:
        pass

    def __call__(self, events: Batch) -> int:
        self._conn.cursor().executemany(self._sql, events)
        self._conn.commit()
        return len(events)

    def close(self) -> None:
        self._conn.close()


def load_process(kind: str, backend: str, target: str, group: str, events: int, batch: int, clients: int,
                 seed: int, results: Any) -> None:
    """Runs in a separate process: `clients` threads send `events` events in batches; reports
    (accepted, seconds, per-call latencies)."""
    calls = max(1, events // batch)
    per = [calls // clients + (1 if w < calls % clients else 0) for w in range(clients)]
    work = [_event_batches(w, per[w], batch, seed) for w in range(clients)]
    senders: list[ForetellSender | DatabaseSender] = [
        ForetellSender(int(target), group) if kind == "foretell" else DatabaseSender(backend, target)
        for _ in range(clients)
    ]
    for s, batches in zip(senders, work, strict=True):
        s.prepare(batches)
    if kind == "foretell":  # warm the channels (connect) outside the timed window
        for s, batches in zip(senders, work, strict=True):
            if batches:
                s(batches.pop())
    accepted = [0] * clients
    latencies: list[list[float]] = [[] for _ in range(clients)]
    barrier = threading.Barrier(clients + 1)

    def run(w: int) -> None:
        barrier.wait()
        for b in work[w]:
            t = time.perf_counter()
            accepted[w] += senders[w](b)
            latencies[w].append(time.perf_counter() - t)

    threads = [threading.Thread(target=run, args=(w,)) for w in range(clients)]
    for t in threads:
        t.start()
    barrier.wait()
    start = time.perf_counter()
    for t in threads:
        t.join()
    seconds = time.perf_counter() - start
    for s in senders:
        s.close()
    results.put((sum(accepted), seconds, sorted(x for lat in latencies for x in lat)))


def run_load(
    kind: str, backend: str, target: str, group: str, args: argparse.Namespace, seed: int
) -> tuple[int, float, list[float]]:
    """Runs load_process in a fresh (spawned) process and returns what it reports."""
    ctx = multiprocessing.get_context("spawn")  # never fork a process that runs gRPC threads
    results = ctx.Queue()
    proc = ctx.Process(target=load_process, args=(kind, backend, target, group, args.put_events, args.batch,
                                                   args.clients, seed, results))
    proc.start()
    accepted, seconds, latencies = results.get(timeout=900)
    proc.join(60)
    return int(accepted), float(seconds), list(latencies)


def prepare_peer_events(backend: str, target: str) -> None:
    ddl = ("CREATE TABLE events (event_id TEXT PRIMARY KEY, user_id TEXT, session_id TEXT, item_id TEXT, "
           "ts BIGINT, event_type TEXT, event_value DOUBLE PRECISION)")
    if backend == "sqlite":
        Path(target).unlink(missing_ok=True)
        with contextlib.closing(sqlite3.connect(target)) as conn:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute(ddl)
            conn.commit()
    else:
        import psycopg

        with psycopg.connect(_psycopg_url(target)) as conn:
            conn.execute("DROP TABLE IF EXISTS events")
            conn.execute(ddl)


# ---- the run -----------------------------------------------------------------------------


@dataclass
class Result:
    backend: str
    workload: str
    rows: int
    seconds: float
    peer_rate: float | None
    peak_rss: int | None  # bytes
    note: str = ""

    @property
    def rate(self) -> float:
        return self.rows / self.seconds


def bench_backend(
    backend: str, files: dict[str, tuple[Path, int]], args: argparse.Namespace, tmp: Path
) -> list[Result]:
    from foretell.core.settings import Settings
    from foretell.runtime.server import create_server

    results: list[Result] = []
    if backend == "postgres":
        from foretell.runtime import pgtemp

        if not pgtemp.available():
            print("postgres: initdb/pg_ctl not found; skipped", file=sys.stderr)
            return results
        database: contextlib.AbstractContextManager[str] = pgtemp.temporary_postgres()
    else:
        database = contextlib.nullcontext("")
    with database as url:
        work = tmp / backend
        settings = Settings(port=0, data_dir=work / "data", database_url=url, log_level="WARNING")
        app = create_server(settings, services=("dataset",))
        app.start()
        client = Client.connect(app.port)
        try:
            # A 20k-row import first, so one-time costs (lazy imports, statement caches, pool
            # connections) do not land on the first measured workload.
            warm = work / "warmup.csv"
            with next(iter(files.values()))[0].open() as src:
                warm.write_text("".join(line for _, line in zip(range(20_001), src, strict=False)))
            client.import_file(client.group("bench-warmup")[1], warm)
            for workload, (path, rows) in files.items():
                _, dataset = client.group(f"bench-{workload.lower()}")
                uploaded: list[float] = []
                with PeakRss() as mem:
                    t0 = time.perf_counter()
                    op = client.import_file(dataset, path, uploaded)
                    seconds = time.perf_counter() - t0
                job = pb.ImportJob()
                op.response.Unpack(job)
                stored = client.datasets.GetDataset(api.GetDatasetRequest(name=dataset), timeout=60).row_count
                if job.rows_imported != rows or stored != rows:
                    raise RuntimeError(
                        f"{workload}: expected {rows} rows, job says {job.rows_imported}, dataset {stored}"
                    )
                t = time.perf_counter()
                if backend == "sqlite":
                    peer_rows = peer_sqlite_import(path, work / "peer.db")
                else:
                    peer_rows = peer_postgres_copy(path, url, "peer_" + workload.lower().replace("-", "_"))
                peer_seconds = time.perf_counter() - t
                if peer_rows != rows:
                    raise RuntimeError(f"{workload}: peer stored {peer_rows} rows, expected {rows}")
                note = (f"upload+spool (until ImportData returns) {uploaded[0] - t0:.1f} s of {seconds:.1f} s; "
                        f"peer {peer_seconds:.2f} s")
                results.append(
                    Result(backend, f"ImportData {workload}", rows, seconds, rows / peer_seconds, mem.growth, note)
                )
                print(f"  {backend:8} {workload:18} {rows / seconds:>10,.0f} rows/s  "
                      f"peer {rows / peer_seconds:>10,.0f} rows/s  peak RSS +{mem.growth / 2**20:.0f} MB",
                      file=sys.stderr, flush=True)

            group, _ = client.group("bench-live")
            accepted, seconds, lat = run_load("foretell", backend, str(app.port), group, args, seed=1)
            peer_target = str(work / "peer-events.db") if backend == "sqlite" else url
            prepare_peer_events(backend, peer_target)
            peer_accepted, peer_seconds, _ = run_load("peer", backend, peer_target, "", args, seed=1)
            p50, p99 = lat[len(lat) // 2], lat[min(len(lat) - 1, int(len(lat) * 0.99))]
            note = (f"{args.clients} client threads x {args.batch} events/call; "
                    f"p50 {p50 * 1e3:.1f} ms, p99 {p99 * 1e3:.1f} ms per call")
            results.append(Result(backend, "PutEvents", accepted, seconds, peer_accepted / peer_seconds, None, note))
            print(f"  {backend:8} {'PutEvents':18} {accepted / seconds:>10,.0f} ev/s    "
                  f"peer {peer_accepted / peer_seconds:>10,.0f} ev/s  ({note})", file=sys.stderr, flush=True)
        finally:
            client.channel.close()
            app.stop(None)
    return results


def table(results: list[Result]) -> str:
    lines = [
        "| backend | workload | rows | seconds | rows/s | peer rows/s | ratio Foretell/peer | peak RSS MB |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        peer = f"{r.peer_rate:,.0f}" if r.peer_rate else "-"
        ratio = f"{r.rate / r.peer_rate:.2f}" if r.peer_rate else "-"
        rss = f"{r.peak_rss / 2**20:.0f}" if r.peak_rss is not None else "-"
        lines.append(
            f"| {r.backend} | {r.workload} | {r.rows:,} | {r.seconds:.2f} | {r.rate:,.0f} | {peer} | {ratio} | {rss} |"
        )
    return "\n".join(lines)


def machine() -> str:
    model = platform.processor() or platform.machine()
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        for line in subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout.splitlines():
            if line.startswith("Model name:"):
                model = line.split(":", 1)[1].strip()
    return (f"{os.cpu_count()} CPUs ({model}), Python {platform.python_version()}, "
            f"{platform.system()} {platform.release()}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data",
                        help="shared data folder holding movielens-latest-small/ (default: ../shared/data)")
    parser.add_argument("--rows", type=int, default=1_000_000, help="rows of the generated interactions file")
    parser.add_argument("--backends", default="sqlite,postgres", help="comma-separated: sqlite,postgres")
    parser.add_argument("--put-events", type=int, default=20_000, help="events sent through PutEvents")
    parser.add_argument("--batch", type=int, default=10, help="events per PutEvents call (1-100)")
    parser.add_argument("--clients", type=int, default=4, help="client threads in the PutEvents load process")
    parser.add_argument("--out", type=Path, help="also write the markdown table to this file")
    args = parser.parse_args(argv)
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    if unknown := set(backends) - {"sqlite", "postgres"}:
        parser.error(f"unknown backends: {', '.join(sorted(unknown))}")
    if not 1 <= args.batch <= 100:
        parser.error("--batch must be 1 to 100 (PutEvents takes at most 100 events)")

    tmp = Path(tempfile.mkdtemp(prefix="foretell-bench-"))
    try:
        t = time.perf_counter()
        ml = tmp / "movielens-latest-small.csv"
        synth = tmp / f"interactions-{args.rows}.csv"
        files = {
            "movielens-small": (ml, movielens_csv(args.data, ml)),
            f"generated-{args.rows // 1000}k" if args.rows % 1_000_000 else f"generated-{args.rows // 1_000_000}M":
                (synth, synthetic_csv(synth, args.rows)),
        }
        print(f"data ready in {time.perf_counter() - t:.1f} s "
              f"({ml.stat().st_size / 2**20:.1f} MB, {synth.stat().st_size / 2**20:.1f} MB)", file=sys.stderr)
        results: list[Result] = []
        for backend in backends:
            results += bench_backend(backend, files, args, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    notes = [r for r in results if r.note]
    report = "\n".join([
        f"Machine: {machine()}; {stamp}",
        "",
        table(results),
        "",
        *[f"- {r.backend} {r.workload}: {r.note}" for r in notes],
    ])
    print(report)
    if args.out:
        args.out.write_text(report + "\n")


if __name__ == "__main__":
    main()
