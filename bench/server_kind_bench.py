"""What serving through grpc.aio (`AsyncServer`, what create_server builds) costs against grpcio's synchronous
server, on the same handlers, in one run.

Two no-op servers in their own processes, each with 16 handler threads and create_server's options: the
synchronous `grpc.server` and `AsyncServer` (grpc.aio's loop in front of the same thread pool). Both answer a
raw 1 KB message; in the "python" workload the handler first spends `--work-ms` of pure Python (holding the
GIL, as Foretell's handlers partly do). The load is grpc_load's: a closed-loop peak with 16 calls in flight,
then an open loop at half of each server's own peak, the two servers alternating in 1-second slices, and each
server's CPU per call from /proc. This measures the fixed cost per call; the behaviour under a backlog, which
is why Foretell switched, is the load test's (bench/load_test.py).

    PYTHONPATH=services:clients/python python bench/server_kind_bench.py --json /tmp/server_kind.json
"""

from __future__ import annotations

import argparse
import json
import time
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from grpc_load import add_load_arguments, compare, load_summary, machine, run_noop_server, spawn, stop

METHOD = "/bench.Noop/Answer"
ANSWER = bytes(range(256)) * 4


def _busy(seconds: float) -> None:
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


def serve(conn: Connection, kind: str, work_ms: float, max_workers: int) -> None:
    """Serves METHOD with the `kind` server ("aio" or "sync"); sends ("listening", port), stops on any message."""
    import grpc

    def answer(request: bytes, context: Any) -> bytes:
        if work_ms:
            _busy(work_ms / 1e3)
        return ANSWER

    handlers = {"Answer": grpc.unary_unary_rpc_method_handler(answer)}
    run_noop_server(
        conn, lambda server: server.add_registered_method_handlers("bench.Noop", handlers), max_workers, kind
    )


def raw_call(channel: Any) -> Any:
    return channel.unary_unary(METHOD)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work-ms", type=float, default=1.0, help="pure-Python work per call, 'python' workload")
    parser.add_argument("--workloads", default="noop,python")
    add_load_arguments(parser, "workload")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()

    rows: list[dict[str, Any]] = []
    for workload in args.workloads.split(","):
        work = args.work_ms if workload == "python" else 0.0
        # grpc_load compares ("foretell", "noop"): here the first is the aio server, the second the sync one.
        aio, aio_conn = spawn(serve, "aio", work, args.max_workers)
        sync, sync_conn = spawn(serve, "sync", work, args.max_workers)
        ports = [aio_conn.recv()[1], sync_conn.recv()[1]]
        rows += compare(workload, workload, ports, [aio.pid, sync.pid], raw_call, [b"q"] * 100, args)
        stop(aio, aio_conn)
        stop(sync, sync_conn)

    print()
    print(f"1 KB answers, {args.work_ms:g} ms of Python per call in 'python'; {load_summary(args)}")
    print()
    print(
        "| workload | server | peak QPS | p99 ms | CPU ms/call | half-peak p50 ms | p99 ms "
        "| aio / sync QPS | sync / aio CPU |"
    )
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        p, h = r["peak"], r["half_peak"]
        name = "aio (AsyncServer)" if r["server"] == "foretell" else "sync (grpc.server)"
        ratios = "| |"
        if r["qps_ratio"] is not None:
            low, high = r["pair_ratio_p10_p90"]
            ratios = f"| **{r['qps_ratio']:.2f}** ({low:.2f}-{high:.2f}) | **{r['cpu_ratio']:.2f}** |"
        print(
            f"| {r['method']} | {name} | {p['qps']:,.0f} | {p['p99_ms']:.2f} | {p['cpu_ms_per_call']:.3f} "
            f"| {h['p50_ms']:.2f} | {h['p99_ms']:.2f} {ratios}"
        )
    if args.json:
        args.json.write_text(json.dumps({"work_ms": args.work_ms, "machine": machine(), "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
