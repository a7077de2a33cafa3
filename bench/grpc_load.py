"""The load generator the serving benches share: a real Foretell server against a no-op gRPC server.

serve_bench.py (GetRecommendations / GetPersonalizedRanking) and query_bench.py (QueryForecast)
measure the same way and differ only in their data, their servers' setup and their requests:

- a no-op server of `create_server`'s kind (`AsyncServer`: grpc.aio in front of a thread pool) with its
  options and no interceptor returns a pre-built real answer: the Python gRPC ceiling for that message
  on this machine;
- a separate load process (grpc.aio) measures closed-loop peak QPS with p50/p99, then open-loop
  p50/p99 at half of each server's own peak, latency counted from the scheduled send time so
  queueing is not hidden;
- the load alternates between the two servers in `--segment`-second slices: throughput on the
  shared 2-core machine drifts by +-30% over seconds to minutes, and alternating makes both
  servers see the same drift; the ratios of adjacent slices show how much it moved;
- each server's CPU per answered call, read from /proc, does not depend on how the cores are
  shared with the load process, so it is the steadier comparison.

Importing this module also puts services/, clients/python and bench/ on sys.path, so the benches
run as plain scripts and their spawned subprocesses find the same modules.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import os
import platform
import sys
from collections.abc import Awaitable, Callable, Sequence
from concurrent import futures
from dataclasses import asdict, dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import grpc
import numpy as np

BENCH_DIR = Path(__file__).resolve().parent
ROOT = BENCH_DIR.parent
for extra in (ROOT / "services", ROOT / "clients" / "python", BENCH_DIR):
    if str(extra) not in sys.path:
        sys.path.insert(0, str(extra))

SERVERS = ("foretell", "noop")  # the order of ports and pids everywhere below

# Opens a bench's method on a channel: a picklable top-level function (or a partial of one), since
# the load runs in a spawned process. It decides whether the client (de)serializes messages.
Connect = Callable[[grpc.aio.Channel], Callable[..., Awaitable[Any]]]


@dataclass
class Stats:
    calls: int  # measured calls (warm-up excluded)
    errors: int
    seconds: float
    qps: float
    p50_ms: float
    p99_ms: float
    offered_qps: float
    segment_qps: list[float]
    all_calls: int = 0  # warm-up included: the denominator of cpu_ms_per_call
    cpu_ms_per_call: float = float("nan")  # server process CPU (user + system) per call it answered


# ---- processes -----------------------------------------------------------------------------


def spawn(target: Callable[..., None], *args: Any) -> tuple[Any, Connection]:
    """Starts `target(conn, *args)` in a fresh interpreter (spawn: no inherited gRPC or torch threads)."""
    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe()
    process = ctx.Process(target=target, args=(child, *args), daemon=True)
    process.start()
    return process, parent


def stop(process: Any, conn: Connection) -> None:
    """Asks a server started by `spawn` to stop, as all of them wait for one message to do so."""
    conn.send("stop")
    process.join(30)


def run_noop_server(
    conn: Connection, register: Callable[[grpc.Server], None], max_workers: int, kind: str = "aio"
) -> None:
    """Serves what `register` adds with create_server's server ("aio"; "sync" for grpcio's synchronous one),
    thread pool and options but no interceptor.

    Sends ("listening", port), then runs until the parent sends anything.
    """
    from foretell.core.async_server import AsyncServer
    from foretell.core.settings import Settings
    from foretell.runtime.server import grpc_options

    settings = Settings()
    pool = futures.ThreadPoolExecutor(max_workers=max_workers)
    make = AsyncServer if kind == "aio" else grpc.server
    server = make(pool, maximum_concurrent_rpcs=settings.max_concurrent_rpcs, options=grpc_options(settings))
    register(server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    conn.send(("listening", port))
    conn.recv()
    server.stop(0).wait(10)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# ---- load (subprocess) ---------------------------------------------------------------------


def run_load(
    conn: Connection, ports: list[int], connect: Connect, requests: Sequence[Any], mode: str, rates: list[float],
    options: dict[str, Any],
) -> None:  # fmt: skip
    conn.send([asdict(s) for s in asyncio.run(_load(ports, connect, requests, mode, rates, **options))])


async def _load(
    ports: list[int], connect: Connect, requests: Sequence[Any], mode: str, rates: list[float], *, concurrency: int,
    channels: int, segments: int, segment: float, warmup: float,
) -> list[Stats]:  # fmt: skip
    """Closed loop (`concurrency` calls in flight) or open loop at `rates`, servers alternating per slice."""
    opened = [[grpc.aio.insecure_channel(f"127.0.0.1:{port}") for _ in range(channels)] for port in ports]
    calls = [[connect(c) for c in row] for row in opened]
    loop = asyncio.get_running_loop()
    latencies: list[list[float]] = [[] for _ in ports]
    answered, errors, seconds = [0] * len(ports), [0] * len(ports), [0.0] * len(ports)
    per_segment: list[list[float]] = [[] for _ in ports]

    async def one(server: int, k: int, intended: float, record: bool) -> None:
        try:
            await calls[server][k % channels](requests[k % len(requests)], timeout=10)
        except grpc.RpcError:
            errors[server] += 1
            return
        answered[server] += 1
        if record:
            latencies[server].append(loop.time() - intended)

    async def closed(server: int, length: float, record: bool) -> None:
        end = loop.time() + length

        async def worker(w: int) -> None:
            k = w
            while (now := loop.time()) < end:
                await one(server, k, now, record)
                k += concurrency

        await asyncio.gather(*(worker(w) for w in range(concurrency)))

    async def open_loop(server: int, length: float, record: bool) -> None:
        # Latency counts from the scheduled send time, so a server that falls behind is not hidden.
        tasks: set[asyncio.Task[None]] = set()
        start, k = loop.time(), 0
        while (intended := start + k / rates[server]) < start + length:
            if (delay := intended - loop.time()) > 0:
                await asyncio.sleep(delay)
            task = asyncio.create_task(one(server, k, intended, record))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            k += 1
        await asyncio.gather(*tasks)

    run = closed if mode == "closed" else open_loop
    for server in range(len(ports)):
        await run(server, warmup, False)
    for index in range(segments * len(ports)):
        server = index % len(ports)
        before, began = len(latencies[server]), loop.time()
        await run(server, segment, True)
        elapsed = loop.time() - began  # includes draining the calls still in flight
        seconds[server] += elapsed
        per_segment[server].append((len(latencies[server]) - before) / elapsed)
    for row in opened:
        for channel in row:
            await channel.close()
    out = []
    for server in range(len(ports)):
        lat = np.array(latencies[server] or [np.nan]) * 1e3
        n = len(latencies[server])
        out.append(
            Stats(
                n,
                errors[server],
                seconds[server],
                n / seconds[server],
                float(np.percentile(lat, 50)),
                float(np.percentile(lat, 99)),
                rates[server] if mode == "open" else 0.0,
                per_segment[server],
                answered[server],
            )  # fmt: skip
        )
    return out


# ---- orchestration -------------------------------------------------------------------------


def add_load_arguments(parser: argparse.ArgumentParser, unit: str) -> None:
    """The load's options; `unit` is what one table row pair measures ("method", "workload")."""
    parser.add_argument("--concurrency", type=int, default=16, help="calls in flight in the closed loop")
    parser.add_argument("--channels", type=int, default=2, help="gRPC channels of the load process")
    parser.add_argument("--segments", type=int, default=10, help=f"measured slices per server and {unit}")
    parser.add_argument("--segment", type=float, default=1.0, help="seconds per slice; the servers alternate")
    parser.add_argument("--warmup", type=float, default=1.0, help="seconds per server before measuring")
    parser.add_argument("--max-workers", type=int, default=16, help="handler threads of the no-op server")


def measure(
    ports: list[int], pids: list[int], connect: Connect, requests: Sequence[Any], mode: str, rates: list[float],
    args: argparse.Namespace,
) -> list[Stats]:  # fmt: skip
    """One load run (closed, or open at `rates`) in its own process, with each server's CPU per call."""
    options = {k: getattr(args, k) for k in ("concurrency", "channels", "segments", "segment", "warmup")}
    before = [cpu_seconds(pid) for pid in pids]
    process, conn = spawn(run_load, ports, connect, requests, mode, rates, options)
    result = [Stats(**s) for s in conn.recv()]
    process.join()
    for stats, pid, start in zip(result, pids, before, strict=True):
        stats.cpu_ms_per_call = (cpu_seconds(pid) - start) * 1e3 / max(stats.all_calls, 1)
    return result


def compare(
    label: str, method: str, ports: list[int], pids: list[int], connect: Connect, requests: Sequence[Any],
    args: argparse.Namespace, extra: dict[str, Any] | None = None,
) -> list[dict[str, Any]]:  # fmt: skip
    """Peak, then latency at half of each server's own peak; printed as it goes, returned as two rows.

    `label` starts the progress lines, `method` is the table's first column, `extra` goes into the
    Foretell and no-op rows after "server".
    """
    peak = measure(ports, pids, connect, requests, "closed", [0.0, 0.0], args)
    for name, stats in zip(SERVERS, peak, strict=True):
        print(f"{label} {name} peak: {brief(stats)}", flush=True)
    half = measure(ports, pids, connect, requests, "open", [s.qps / 2 for s in peak], args)
    for name, stats in zip(SERVERS, half, strict=True):
        print(f"{label} {name} at half its peak: {brief(stats)}", flush=True)
    # Segment pairs ran back to back: their ratios show how much the machine moved meanwhile.
    pairs = [f / n for f, n in zip(peak[0].segment_qps, peak[1].segment_qps, strict=True)]
    rows = []
    for name, p, h in zip(SERVERS, peak, half, strict=True):
        mine = name == "foretell"
        rows.append(
            {
                "method": method,
                "server": name,
                **(extra or {}),
                "peak": asdict(p),
                "half_peak": asdict(h),
                "qps_ratio": peak[0].qps / peak[1].qps if mine else None,
                "cpu_ratio": peak[1].cpu_ms_per_call / peak[0].cpu_ms_per_call if mine else None,
                "pair_ratio_p10_p90": [float(np.percentile(pairs, 10)), float(np.percentile(pairs, 90))]
                if mine
                else None,
            }
        )
    return rows


def machine() -> str:
    return f"{os.cpu_count()} CPUs, Python {platform.python_version()}, {platform.system()} {platform.release()}"


def load_summary(args: argparse.Namespace) -> str:
    """The end of a report's heading line: how the load ran, and where."""
    return (
        f"closed loop with {args.concurrency} calls in flight over {args.channels} channels; {args.segments} slices "
        f"of {args.segment:g} s per server, alternating; {machine()}"
    )


def brief(stats: Stats) -> str:
    return (
        f"{stats.qps:,.0f} QPS, p50 {stats.p50_ms:.2f} ms, p99 {stats.p99_ms:.2f} ms, {stats.errors} errors, "
        f"server CPU {stats.cpu_ms_per_call:.3f} ms/call"
    )


def table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| method | server | peak QPS | p50 ms | p99 ms | server CPU ms/call | half-peak QPS | p50 ms | p99 ms "
        "| Foretell / no-op QPS | no-op / Foretell CPU per call |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        ratio = cpu = ""
        if r["qps_ratio"] is not None:
            low, high = r["pair_ratio_p10_p90"]
            ratio = f"**{r['qps_ratio']:.2f}** ({low:.2f}-{high:.2f})"
            cpu = f"**{r['cpu_ratio']:.2f}**"
        p, h = r["peak"], r["half_peak"]
        peak = f"{p['qps']:,.0f} | {p['p50_ms']:.2f} | {p['p99_ms']:.2f} | {p['cpu_ms_per_call']:.3f}"
        half = f"{h['qps']:,.0f} | {h['p50_ms']:.2f} | {h['p99_ms']:.2f}"
        lines.append(f"| {r['method']} | {r['server']} | {peak} | {half} | {ratio} | {cpu} |")
    return "\n".join(lines)
