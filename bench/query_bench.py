"""Forecast-query benchmark: Foretell's QueryForecast against a no-op gRPC server.

One run:
1. writes a forecast table (default 10,000 series, horizon 48 hourly steps, quantiles
   0.1/0.5/0.9, one dimension "store" with 100 values) with `ForecastTable.save`;
2. starts, in a subprocess, a real Foretell server with the forecast-query service only
   (`create_server(settings, ("forecast-query",))`, default settings). The training service does
   not store forecasts yet, so a stand-in TrainingService on the same server answers GetForecast
   with the table's URI; the forecast-query service reaches it as its training peer (the
   all-in-one default). It is asked once per 5 s per forecast (the cache's re-check);
3. starts, in another subprocess, a no-op gRPC server with the same thread pool and options whose
   handler returns a pre-built response (a real Foretell answer, so the same size): the Python
   gRPC ceiling for this message;
4. from a separate load process (grpc.aio, raw bytes: the client neither builds nor parses
   messages) measures closed-loop peak QPS, then p50/p99 open-loop at half of each server's peak
   (latency counted from the scheduled send time). The load alternates between the two servers in
   1-second slices, as serve_bench.py does, so both see the same drift of the shared machine.

Workloads (random item ids of the 10,000): `item` asks for one series' whole horizon with every
quantile (about 3.7 KB); `window` for 24 of its 48 steps and the p50 only.

    PYTHONPATH=services:clients/python python bench/query_bench.py [--json out.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import tempfile
import time
from concurrent import futures
from dataclasses import asdict
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import numpy as np

# The serving bench's load statistics and process helpers; importing it also puts services/ and
# clients/python on sys.path (this script runs from bench/, as it does).
from serve_bench import Stats, _brief, _cpu_seconds, _spawn, _table

FORECAST = "forecasts/bench"
METHOD = "/foretell.v1.ForecastQueryService/QueryForecast"
START = 1_735_689_600  # 2025-01-01T00:00:00Z
HOUR = 3600
SERVER_OPTIONS = [
    ("grpc.max_receive_message_length", 16 * 1024 * 1024),
    ("grpc.max_send_message_length", 16 * 1024 * 1024),
    ("grpc.so_reuseport", 0),
]


def write_table(directory: Path, series: int, horizon: int, stores: int, seed: int = 0) -> None:
    from foretell.forecasting.table import ForecastTable

    rng = np.random.default_rng(seed)
    level = rng.lognormal(3, 1, (series, 1))
    daily = 1 + 0.3 * np.sin(2 * np.pi * np.arange(horizon) / 24)
    mean = level * daily[None, :]
    z = np.array([-1.2816, 0.0, 1.2816])  # the normal quantiles of 0.1 / 0.5 / 0.9
    spread = 0.2 * mean[:, None, :] * np.sqrt(1 + np.arange(horizon) / 12)[None, None, :]
    ForecastTable(
        item_ids=[f"item-{k}" for k in range(series)],
        dimensions=[{"store": f"store-{k % stores}"} for k in range(series)],
        timestamps=START + HOUR * np.arange(horizon, dtype=np.int64)[None, :].repeat(series, 0),
        mean=mean,
        levels=np.array([0.1, 0.5, 0.9]),
        values=mean[:, None, :] + z[None, :, None] * spread,
    ).save(directory)


# ---- servers (subprocesses) ----------------------------------------------------------------


def serve_foretell(conn: Connection, data_dir: str, artifact_uri: str) -> None:
    import grpc

    from foretell.core.settings import Settings
    from foretell.runtime.server import create_server
    from foretell.v1 import training_pb2, training_service_pb2_grpc

    forecast = training_pb2.Forecast(
        name=FORECAST, state=training_pb2.TRAINING_STATE_SUCCEEDED, artifact_uri=artifact_uri
    )

    class Training(training_service_pb2_grpc.TrainingServiceServicer):
        def GetForecast(self, request: Any, context: grpc.ServicerContext) -> Any:  # noqa: N802
            if request.name != FORECAST:
                context.abort(grpc.StatusCode.NOT_FOUND, f"forecast {request.name!r} not found")
            return forecast

    app = create_server(Settings(port=0, data_dir=Path(data_dir)), ("forecast-query",))
    training_service_pb2_grpc.add_TrainingServiceServicer_to_server(Training(), app.server)
    app.start()
    conn.send(("listening", app.port))
    conn.recv()
    app.stop(0)


def serve_noop(conn: Connection, answer: bytes, max_workers: int) -> None:
    import grpc

    from foretell.v1 import forecast_query_service_pb2 as api
    from foretell.v1 import forecast_query_service_pb2_grpc

    response = api.QueryForecastResponse.FromString(answer)

    class Noop(forecast_query_service_pb2_grpc.ForecastQueryServiceServicer):
        def QueryForecast(self, request: Any, context: Any) -> Any:  # noqa: N802
            return response

    # The options of foretell.runtime.server.create_server, without the error interceptor.
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=max_workers), maximum_concurrent_rpcs=256, options=SERVER_OPTIONS
    )
    forecast_query_service_pb2_grpc.add_ForecastQueryServiceServicer_to_server(Noop(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    conn.send(("listening", port))
    conn.recv()
    server.stop(0)


# ---- load (subprocess) ---------------------------------------------------------------------


def run_load(conn: Connection, ports: list[int], requests: list[bytes], mode: str, rates: list[float],
             options: dict[str, Any]) -> None:  # fmt: skip
    conn.send([asdict(s) for s in asyncio.run(_load(ports, requests, mode, rates, **options))])


async def _load(
    ports: list[int], requests: list[bytes], mode: str, rates: list[float], *, concurrency: int, channels: int,
    segments: int, segment: float, warmup: float,
) -> list[Stats]:  # fmt: skip
    """Closed loop (`concurrency` calls in flight) or open loop at `rates`, servers alternating per slice."""
    import grpc

    opened = [[grpc.aio.insecure_channel(f"127.0.0.1:{port}") for _ in range(channels)] for port in ports]
    calls = [[c.unary_unary(METHOD) for c in row] for row in opened]  # bytes in, bytes out
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

    async def slice_(server: int, length: float, record: bool) -> None:
        start, k = loop.time(), 0
        if mode == "closed":

            async def worker(w: int) -> None:
                k = w
                while (now := loop.time()) < start + length:
                    await one(server, k, now, record)
                    k += concurrency

            await asyncio.gather(*(worker(w) for w in range(concurrency)))
            return
        tasks: set[asyncio.Task[None]] = set()
        while (intended := start + k / rates[server]) < start + length:
            if (delay := intended - loop.time()) > 0:
                await asyncio.sleep(delay)
            task = asyncio.create_task(one(server, k, intended, record))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            k += 1
        await asyncio.gather(*tasks)

    for server in range(len(ports)):
        await slice_(server, warmup, False)
    for index in range(segments * len(ports)):
        server = index % len(ports)
        before, began = len(latencies[server]), loop.time()
        await slice_(server, segment, True)
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


def measure(ports: list[int], pids: list[int], requests: list[bytes], mode: str, rates: list[float],
            args: argparse.Namespace) -> list[Stats]:  # fmt: skip
    options = {k: getattr(args, k) for k in ("concurrency", "channels", "segments", "segment", "warmup")}
    before = [_cpu_seconds(pid) for pid in pids]
    process, conn = _spawn(run_load, ports, requests, mode, rates, options)
    result = [Stats(**s) for s in conn.recv()]
    process.join()
    for stats, pid, start in zip(result, pids, before, strict=True):
        stats.cpu_ms_per_call = (_cpu_seconds(pid) - start) * 1e3 / max(stats.all_calls, 1)
    return result


def workload_requests(name: str, series: int, horizon: int, count: int = 2000) -> list[bytes]:
    from google.protobuf import timestamp_pb2

    from foretell.v1 import forecast_query_service_pb2 as api

    rng = np.random.default_rng(1)
    out = []
    for k in rng.integers(0, series, count).tolist():
        request = api.QueryForecastRequest(forecast=FORECAST, item_id=f"item-{k}")
        if name == "window":
            first = int(rng.integers(0, max(1, horizon - 24)))
            request.start_time.CopyFrom(timestamp_pb2.Timestamp(seconds=START + HOUR * first))
            request.end_time.CopyFrom(timestamp_pb2.Timestamp(seconds=START + HOUR * (first + 23)))
            request.quantiles.append(0.5)
        elif name != "item":
            raise SystemExit(f"unknown workload {name!r}: item or window")
        out.append(request.SerializeToString())
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--series", type=int, default=10_000)
    parser.add_argument("--horizon", type=int, default=48)
    parser.add_argument("--stores", type=int, default=100, help="values of the dimension 'store'")
    parser.add_argument("--workloads", default="item,window")
    parser.add_argument("--concurrency", type=int, default=16, help="calls in flight in the closed loop")
    parser.add_argument("--channels", type=int, default=2, help="gRPC channels of the load process")
    parser.add_argument("--segments", type=int, default=10, help="measured slices per server and workload")
    parser.add_argument("--segment", type=float, default=1.0, help="seconds per slice; the servers alternate")
    parser.add_argument("--warmup", type=float, default=1.0, help="seconds per server before measuring")
    parser.add_argument("--max-workers", type=int, default=16, help="handler threads of the no-op server")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()

    import grpc

    from foretell.core.artifacts import uri_of
    from foretell.v1 import forecast_query_service_pb2 as api

    workdir = Path(tempfile.mkdtemp(prefix="query-bench-"))
    t0 = time.monotonic()
    write_table(workdir / "forecast", args.series, args.horizon, args.stores)
    print(f"forecast table: {args.series:,} series x {args.horizon} steps ({time.monotonic() - t0:.1f} s)", flush=True)
    foretell, foretell_conn = _spawn(serve_foretell, str(workdir / "data"), uri_of(workdir / "forecast"))
    _, port = foretell_conn.recv()
    rows: list[dict[str, Any]] = []
    noops: list[tuple[Any, Connection]] = []
    for workload in args.workloads.split(","):
        requests = workload_requests(workload, args.series, args.horizon)
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            query = channel.unary_unary(METHOD)
            t0 = time.monotonic()
            sample: bytes = query(requests[0], timeout=60)  # the first call loads the table
            first_s = time.monotonic() - t0
        answer = api.QueryForecastResponse.FromString(sample)
        assert len(answer.series) == 1 and len(answer.series[0].mean) == (24 if workload == "window" else args.horizon)
        print(f"{workload}: answer of {len(sample):,} bytes; first call {first_s * 1e3:.0f} ms", flush=True)
        noop, noop_conn = _spawn(serve_noop, sample, args.max_workers)
        _, noop_port = noop_conn.recv()
        noops.append((noop, noop_conn))
        ports, pids = [port, noop_port], [foretell.pid, noop.pid]
        peak = measure(ports, pids, requests, "closed", [0.0, 0.0], args)
        for name, stats in zip(("foretell", "noop"), peak, strict=True):
            print(f"{workload} {name} peak: {_brief(stats)}", flush=True)
        half = measure(ports, pids, requests, "open", [s.qps / 2 for s in peak], args)
        for name, stats in zip(("foretell", "noop"), half, strict=True):
            print(f"{workload} {name} at half its peak: {_brief(stats)}", flush=True)
        pairs = [f / n for f, n in zip(peak[0].segment_qps, peak[1].segment_qps, strict=True)]
        for name, p, h in zip(("foretell", "noop"), peak, half, strict=True):
            mine = name == "foretell"
            rows.append(
                {
                    "method": f"QueryForecast {workload}",  # the column serve_bench's table prints
                    "server": name,
                    "response_bytes": len(sample),
                    "peak": asdict(p),
                    "half_peak": asdict(h),
                    "qps_ratio": peak[0].qps / peak[1].qps if mine else None,
                    "cpu_ratio": peak[1].cpu_ms_per_call / peak[0].cpu_ms_per_call if mine else None,
                    "pair_ratio_p10_p90": [float(np.percentile(pairs, 10)), float(np.percentile(pairs, 90))]
                    if mine
                    else None,
                }
            )
        noop_conn.send("stop")
        noop.join(30)
    foretell_conn.send("stop")
    foretell.join(30)

    machine = f"{os.cpu_count()} CPUs, Python {platform.python_version()}, {platform.system()} {platform.release()}"
    print()
    print(f"{args.series:,} series x {args.horizon} steps, quantiles 0.1/0.5/0.9; closed loop with {args.concurrency} "
          f"calls in flight over {args.channels} channels; {args.segments} slices of {args.segment:g} s per server, "
          f"alternating; {machine}")  # fmt: skip
    print()
    print(_table(rows))
    if args.json:
        settings = {k: getattr(args, k) for k in ("series", "horizon", "stores", "concurrency", "channels", "segments")}
        args.json.write_text(json.dumps({**settings, "machine": machine, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
