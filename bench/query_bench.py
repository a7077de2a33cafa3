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
import json
import tempfile
import time
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import numpy as np

# The shared load generator; importing it also puts services/ and clients/python on sys.path.
from grpc_load import add_load_arguments, compare, load_summary, machine, run_noop_server, spawn, stop, table

FORECAST = "forecasts/bench"
METHOD = "/foretell.v1.ForecastQueryService/QueryForecast"
START = 1_735_689_600  # 2025-01-01T00:00:00Z
HOUR = 3600


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
    from foretell.v1 import forecast_query_service_pb2 as api
    from foretell.v1 import forecast_query_service_pb2_grpc

    response = api.QueryForecastResponse.FromString(answer)

    class Noop(forecast_query_service_pb2_grpc.ForecastQueryServiceServicer):
        def QueryForecast(self, request: Any, context: Any) -> Any:  # noqa: N802
            return response

    run_noop_server(
        conn,
        lambda server: forecast_query_service_pb2_grpc.add_ForecastQueryServiceServicer_to_server(Noop(), server),
        max_workers,
    )


# ---- load ----------------------------------------------------------------------------------


def query_call(channel: Any) -> Any:
    """QueryForecast on `channel` with raw bytes in and out: the client neither builds nor parses messages."""
    return channel.unary_unary(METHOD)


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
    add_load_arguments(parser, "workload")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()

    import grpc

    from foretell.core.artifacts import uri_of
    from foretell.v1 import forecast_query_service_pb2 as api

    workdir = Path(tempfile.mkdtemp(prefix="query-bench-"))
    t0 = time.monotonic()
    write_table(workdir / "forecast", args.series, args.horizon, args.stores)
    print(f"forecast table: {args.series:,} series x {args.horizon} steps ({time.monotonic() - t0:.1f} s)", flush=True)
    foretell, foretell_conn = spawn(serve_foretell, str(workdir / "data"), uri_of(workdir / "forecast"))
    _, port = foretell_conn.recv()
    rows: list[dict[str, Any]] = []
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
        noop, noop_conn = spawn(serve_noop, sample, args.max_workers)
        _, noop_port = noop_conn.recv()
        ports, pids = [port, noop_port], [foretell.pid, noop.pid]
        # "method" is the column serve_bench's table prints.
        extra = {"response_bytes": len(sample)}
        rows += compare(workload, f"QueryForecast {workload}", ports, pids, query_call, requests, args, extra)
        stop(noop, noop_conn)
    stop(foretell, foretell_conn)

    print()
    print(f"{args.series:,} series x {args.horizon} steps, quantiles 0.1/0.5/0.9; {load_summary(args)}")
    print()
    print(table(rows))
    if args.json:
        settings = {k: getattr(args, k) for k in ("series", "horizon", "stores", "concurrency", "channels", "segments")}
        args.json.write_text(json.dumps({**settings, "machine": machine(), "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
