"""Load test: sustained mixed traffic on real servers, with a campaign hot swap, a killed worker and a killed replica.

One run:
1. starts `python -m foretell.runtime` as a separate process (temp data dir, a free loopback port,
   default settings otherwise; its log goes to a file in the temp dir) and seeds it through the
   public gRPC API only: a recommendation dataset group with synthetic interactions, two trained
   versions of one solution (`--recipe`, default ease) and an ACTIVE campaign on the first; a
   forecasting group with synthetic daily series, a seasonal-naive predictor and a forecast;
2. measures peak QPS: a closed loop with `--clients` load processes x `--concurrency` calls in
   flight each, for `--peak-seconds`, with the traffic mix (`--mix`);
3. runs an open loop at `--load`(0.8) x peak for `--minutes`: each load process sends at its share
   of the rate on a fixed schedule, and a call's latency counts from its scheduled send time, so a
   server that falls behind is not hidden (no coordinated omission);
4. meanwhile, from the main process: at 1/3 of the run, UpdateCampaign to the second version (hot
   swap), waited for; at 1/2, CreateSolutionVersion, then SIGKILL of its worker process (found in
   /proc by its command line `python -m foretell.training.worker JOB_DIR`, JOB_DIR named after the
   operation); the operation must end FAILED with an error that says the worker died, the version
   must be FAILED with no artifact and must not be deployable, the campaign must still serve the
   version it had; then CreateSolutionVersion again must SUCCEED;
5. counts events: every PutEvents event carries a unique id in an extra interactions column
   (EVENT_REF); after the load, ExportDataset dumps the interactions dataset and every event the
   server acknowledged must be in it (and nothing that was never sent), and GetDataset.row_count
   must equal the seeded rows plus the acknowledged events;
6. prints a markdown report (per RPC: calls, failures by status code, p50/p90/p99/max, achieved vs
   target QPS; events acknowledged vs stored; the hot swap and worker kill) and writes it as JSON
   (`--json`). Exit status 0 when there was no unexpected failure, no lost event and every check
   of step 4 passed; else 1.

With `--replicas N` (default 2) the all-in-one server runs on a temporary PostgreSQL and N-1 more processes serve
the recommendation service alone on the same database (their peers are the first server's dataset and training
services); the read RPCs go round-robin over all N, as a client of a headless Service does, retrying UNAVAILABLE.
The hot swap is then also a test of convergence (every replica must swap), and at 2/3 of the run the last replica
is SIGKILLed: its in-flight calls must be retried on the others, so no call fails.

The load processes are separate interpreters (spawn) using grpc.aio with raw bytes for the read
RPCs (requests pre-serialized), so one Python client is not the bottleneck; on a 2-core machine
they still share the cores with the server, which caps what "peak" can mean there.

    PYTHONPATH=services:clients/python python bench/load_test.py --minutes 3 --json /tmp/load.json
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import csv
import io
import json
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
ROOT = BENCH_DIR.parent
# services/ and clients/python for the modules, bench/ so that spawned load processes find this one.
for _extra in (ROOT / "services", ROOT / "clients" / "python", BENCH_DIR):
    if str(_extra) not in sys.path:
        sys.path.insert(0, str(_extra))

import grpc  # noqa: E402
import numpy as np  # noqa: E402
from grpc_load import machine, spawn  # noqa: E402  (the serving benches' process helpers)

RPCS = ("GetRecommendations", "GetPersonalizedRanking", "PutEvents", "QueryForecast")
MIX_KEYS = {"recommend": 0, "rank": 1, "events": 2, "query": 3}
METHODS = {
    "GetRecommendations": "/foretell.v1.RecommendationService/GetRecommendations",
    "GetPersonalizedRanking": "/foretell.v1.RecommendationService/GetPersonalizedRanking",
    "PutEvents": "/foretell.v1.DatasetService/PutEvents",
    "QueryForecast": "/foretell.v1.ForecastQueryService/QueryForecast",
}
READS = ("GetRecommendations", "GetPersonalizedRanking")
REPLICA_CONFIG = json.dumps(
    {
        "loadBalancingConfig": [{"round_robin": {}}],
        "methodConfig": [
            {
                "name": [{"service": "foretell.v1.RecommendationService"}],
                "retryPolicy": {
                    "maxAttempts": 5,
                    "initialBackoff": "0.05s",
                    "maxBackoff": "1s",
                    "backoffMultiplier": 2,
                    "retryableStatusCodes": ["UNAVAILABLE"],
                },
            }
        ],
    }
)
GROUP_ID = "loadtest"
FORECAST_GROUP_ID = "loadtest-fc"
SOLUTION_ID = "loadtest"
CAMPAIGN_ID = "loadtest"
EVENT_TYPE = "loadtest"
DAY = 86_400
START = 1_700_006_400  # 2023-11-15 00:00 UTC


@dataclass
class Scenario:
    """What the load processes need to build their requests (picklable)."""

    port: int
    rec_ports: tuple[int, ...]  # the recommendation replicas (the first is the all-in-one server)
    group: str
    campaign: str
    forecast: str
    users: int
    items: int
    series: int
    mix: tuple[float, float, float, float]
    events_per_call: int
    ranking_items: int
    timeout: float


# ---- the server (a separate process) --------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_server(
    data_dir: Path, port: int, env_extra: dict[str, str], module: str = "foretell.runtime"
) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "FORETELL_HOST": "127.0.0.1",
        "FORETELL_PORT": str(port),
        "FORETELL_DATA_DIR": str(data_dir),
        "PYTHONPATH": os.pathsep.join([str(ROOT / "services"), str(ROOT / "clients" / "python")]),
        **env_extra,
    }
    log = (data_dir.parent / "server.log").open("ab")
    try:
        proc = subprocess.Popen([sys.executable, "-m", module], stdout=log, stderr=subprocess.STDOUT, env=env)
    finally:
        log.close()
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    deadline = time.monotonic() + 120
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        health = health_pb2_grpc.HealthStub(channel)
        while True:
            if proc.poll() is not None:
                raise SystemExit(f"the server exited with {proc.returncode}; see {data_dir.parent / 'server.log'}")
            try:
                if (
                    health.Check(health_pb2.HealthCheckRequest(), timeout=2).status
                    == health_pb2.HealthCheckResponse.SERVING
                ):
                    return proc
            except grpc.RpcError:
                pass
            if time.monotonic() > deadline:
                proc.kill()
                raise SystemExit("the server did not start serving within 120 s")
            time.sleep(0.2)


def stop_server(proc: subprocess.Popen[bytes]) -> int:
    proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait()


def server_handled(metrics_port: int) -> dict[str, dict[str, float]] | None:
    """The server's own count of the load's RPCs by status code (Prometheus grpc_server_handled_total), or None
    when it exports no metrics. Calls refused by the concurrency limit never reach it (docs/observability.md)."""
    import urllib.request

    try:
        text = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10).read().decode()
    except OSError:
        return None
    out: dict[str, dict[str, float]] = {}
    for line in text.splitlines():
        name = line.split("{", 1)[0]
        if name not in ("grpc_server_handled_total", "grpc_server_handling_seconds_sum"):
            continue
        labels = dict(part.split("=", 1) for part in line[line.index("{") + 1 : line.index("}")].split(","))
        method = labels.get("grpc_method", "").strip('"')
        if method in RPCS:
            # By code; "handler_seconds": the time the handlers themselves ran (queueing before them excluded).
            key = labels.get("grpc_code", "").strip('"') if name.endswith("_total") else "handler_seconds"
            out.setdefault(method, {})[key] = float(line.rsplit(" ", 1)[1])
    return out


def server_log_problems(path: Path, limit: int = 10) -> dict[str, Any]:
    """ERROR/CRITICAL lines of the server's JSON log: evidence for any server-side failure."""
    count, samples = 0, []
    with contextlib.suppress(OSError):
        for line in path.read_text(errors="replace").splitlines():
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            if entry.get("severity") in ("ERROR", "CRITICAL"):
                count += 1
                if len(samples) < limit:
                    samples.append({k: entry.get(k) for k in ("time", "severity", "method", "message", "exception")})
    return {"error_lines": count, "samples": samples}


# ---- seeding through the public API ---------------------------------------------------------


def interactions_csv(rows: int, users: int, items: int, seed: int) -> bytes:
    """Zipf-like item popularity, users with a taste for a slice of the catalogue."""
    rng = random.Random(seed)
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["USER_ID", "ITEM_ID", "TIMESTAMP", "EVENT_TYPE"])
    for i in range(rows):
        user = rng.randrange(users)
        if rng.random() < 0.5:
            item = (user * 7 + int(rng.paretovariate(1.2))) % items
        else:
            item = min(int(rng.paretovariate(1.0)) - 1, items - 1)
        writer.writerow([f"u{user}", f"i{item}", START + i, rng.choice(["click", "watch"])])
    return out.getvalue().encode()


def daily_csv(series: int, days: int, seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["ITEM_ID", "TIMESTAMP", "TARGET_VALUE"])
    for s in range(series):
        level = 20.0 + 5 * (s % 13)
        for d in range(days):
            value = level * (1 + 0.4 * np.sin(2 * np.pi * d / 7)) + rng.normal(0, 1.5)
            writer.writerow([f"s{s}", START + d * DAY, f"{value:.3f}"])
    return out.getvalue().encode()


def wait_done(client: Any, operation: Any, what: str, timeout: float = 600) -> Any:
    from foretell.client import ForetellError

    done = client.wait_operation(operation, timeout=timeout, poll=0.1)
    if done.HasField("error"):
        raise ForetellError(grpc.StatusCode(_code(done.error.code)), f"{what}: {done.error.message}")
    return done


def _code(value: int) -> tuple[int, str]:
    return next(c.value for c in grpc.StatusCode if c.value[0] == value)


def group_with_data(
    client: Any, group_id: str, domain: int, fields: list[tuple[str, str]], dataset_id: str, dataset_type: int,
    data: bytes, frequency: str = "",
) -> tuple[Any, Any, Any]:  # fmt: skip
    """A dataset group with one dataset of `fields` ("TYPE?" = nullable) holding `data`: group, dataset, import."""
    from foretell.v1 import dataset_pb2 as pb

    group = client.create_dataset_group(group_id, domain)
    schema = client.create_schema(
        f"{group_id}-{dataset_id}",
        domain,
        [
            pb.SchemaField(
                name=name, type=pb.FieldType.Value("FIELD_TYPE_" + kind.rstrip("?")), nullable=kind[-1] == "?"
            )
            for name, kind in fields
        ],
    )
    dataset = client.create_dataset(group.name, dataset_id, dataset_type, schema.name, data_frequency=frequency)
    done = wait_done(client, client.import_csv(dataset.name, io.BytesIO(data)), f"import into {dataset.name}")
    return group, dataset, done


def seed(client: Any, args: argparse.Namespace) -> dict[str, Any]:
    """Both groups at once (their training workers overlap); returns the names the load needs."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(2) as pool:
        recommendations = pool.submit(seed_recommendations, client, args)
        forecasts = pool.submit(seed_forecasts, client, args)
        return {**recommendations.result(), **forecasts.result()}


def seed_recommendations(client: Any, args: argparse.Namespace) -> dict[str, Any]:
    from foretell.client import operation_response
    from foretell.v1 import dataset_pb2 as pb
    from foretell.v1 import training_pb2 as tpb

    t0 = time.monotonic()
    # EVENT_REF: the load's PutEvents put a unique reference there, so the export can be checked event by event.
    fields = [("USER_ID", "STRING"), ("ITEM_ID", "STRING"), ("TIMESTAMP", "LONG"), ("EVENT_TYPE", "STRING?"),
              ("EVENT_REF", "STRING?")]  # fmt: skip
    data = interactions_csv(args.interactions, args.users, args.items, args.seed)
    group, interactions, done = group_with_data(
        client, GROUP_ID, pb.DOMAIN_RECOMMENDATION, fields, "interactions", pb.DATASET_TYPE_INTERACTIONS, data
    )
    job = operation_response(done, pb.ImportJob)
    solution = client.create_solution(SOLUTION_ID, group.name, args.recipe)
    # Two versions of the same solution on the same data, trained side by side.
    operations = [client.create_solution_version(solution) for _ in range(2)]
    versions = [operation_response(wait_done(client, op, "solution version"), tpb.SolutionVersion) for op in operations]
    campaign = client.create_campaign(CAMPAIGN_ID, versions[0].name, timeout=300)
    print(
        f"seed: {job.rows_imported:,} interactions ({args.users:,} users, {args.items:,} items), "
        f"{args.recipe} versions {versions[0].name} and {versions[1].name}, {campaign.name} on the first "
        f"({time.monotonic() - t0:.1f} s)",
        flush=True,
    )
    return {
        "group": group.name,
        "interactions_dataset": interactions.name,
        "seeded_interactions": int(job.rows_imported),
        "versions": [v.name for v in versions],
        "campaign": campaign.name,
    }


def seed_forecasts(client: Any, args: argparse.Namespace) -> dict[str, Any]:
    from foretell.client import operation_response
    from foretell.v1 import dataset_pb2 as pb
    from foretell.v1 import training_pb2 as tpb
    from foretell.v1 import training_service_pb2 as tapi

    t0 = time.monotonic()
    fields = [("ITEM_ID", "STRING"), ("TIMESTAMP", "TIMESTAMP"), ("TARGET_VALUE", "DOUBLE")]
    data = daily_csv(args.series, args.days, args.seed)
    group, _, _ = group_with_data(
        client, FORECAST_GROUP_ID, pb.DOMAIN_FORECASTING, fields, "sales", pb.DATASET_TYPE_TARGET_TIME_SERIES, data, "D"
    )
    request = tapi.CreatePredictorRequest(
        predictor_id=FORECAST_GROUP_ID,
        predictor=tpb.Predictor(
            dataset_group=group.name, algorithm="seasonal-naive", forecast_horizon=args.horizon, forecast_frequency="D"
        ),
    )
    predictor = operation_response(
        wait_done(client, client.call(client.training.CreatePredictor, request), "predictor"), tpb.Predictor
    )
    request_f = tapi.CreateForecastRequest(
        forecast_id=FORECAST_GROUP_ID, forecast=tpb.Forecast(predictor=predictor.name)
    )
    forecast = operation_response(
        wait_done(client, client.call(client.training.CreateForecast, request_f), "forecast"), tpb.Forecast
    )
    client.query_forecast(forecast.name, "s0")  # loads the forecast table before any measurement
    print(
        f"seed: {args.series} daily series x {args.days} days, seasonal-naive predictor, {forecast.name} "
        f"({forecast.series_count} series x {args.horizon} steps) ({time.monotonic() - t0:.1f} s)",
        flush=True,
    )
    return {"forecast": forecast.name}


# ---- load (spawned processes) ---------------------------------------------------------------


def load_process(
    conn: Connection, index: int, scenario: Scenario, mode: str, rate: float, seconds: float, warmup: float,
    concurrency: int, phase: str,
) -> None:  # fmt: skip
    conn.send(asyncio.run(_load(conn, index, scenario, mode, rate, seconds, warmup, concurrency, phase)))


async def _load(
    conn: Connection, index: int, sc: Scenario, mode: str, rate: float, seconds: float, warmup: float,
    concurrency: int, phase: str,
) -> dict[str, Any]:  # fmt: skip
    from google.protobuf import struct_pb2, timestamp_pb2

    from foretell.v1 import dataset_pb2 as pb
    from foretell.v1 import dataset_service_pb2 as dapi
    from foretell.v1 import forecast_query_service_pb2 as fapi
    from foretell.v1 import recommendation_service_pb2 as rapi

    rng = random.Random(1000 + index)
    # Read requests are built once and sent as bytes: the client's own cost per call stays small.
    recommend = [
        rapi.GetRecommendationsRequest(
            campaign=sc.campaign, user_id=f"u{rng.randrange(sc.users)}", num_results=10
        ).SerializeToString()
        for _ in range(1000)
    ]
    rank = [
        rapi.GetPersonalizedRankingRequest(
            campaign=sc.campaign,
            user_id=f"u{rng.randrange(sc.users)}",
            input_list=[f"i{rng.randrange(sc.items)}" for _ in range(sc.ranking_items)],
        ).SerializeToString()
        for _ in range(1000)
    ]
    query = [
        fapi.QueryForecastRequest(forecast=sc.forecast, item_id=f"s{rng.randrange(sc.series)}").SerializeToString()
        for _ in range(1000)
    ]
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{sc.port}")
    # Reads go round-robin over every recommendation replica, as a client with the DNS of a headless Service
    # does; UNAVAILABLE (a replica killed under it) is retried on another one, as foretell.client's config does.
    replicas = grpc.aio.insecure_channel(
        "ipv4:" + ",".join(f"127.0.0.1:{p}" for p in sc.rec_ports),
        options=[("grpc.service_config", REPLICA_CONFIG), ("grpc.enable_retries", 1)],
    )
    calls = {rpc: (replicas if rpc in READS else channel).unary_unary(METHODS[rpc]) for rpc in RPCS}
    loop = asyncio.get_running_loop()
    clock_offset = time.time() - loop.time()  # loop time -> wall time, for the failure timeline
    latencies: dict[str, list[float]] = {rpc: [] for rpc in RPCS}
    failures: list[dict[str, Any]] = []
    empty: Counter[str] = Counter()
    acked: list[str] = []
    unknown: list[str] = []  # events of failed PutEvents calls: stored or not, nobody can say
    anomalies: list[str] = []
    timeline: list[tuple[float, int, float, int]] = []
    counter = [0]
    cumulative = np.cumsum(sc.mix) / sum(sc.mix)

    def put_events() -> tuple[bytes, list[str]]:
        counter[0] += 1
        user = rng.randrange(sc.users)
        refs = [f"{phase}-{index}-{counter[0]}-{j}" for j in range(sc.events_per_call)]
        now = timestamp_pb2.Timestamp()
        now.GetCurrentTime()
        events = []
        for ref in refs:
            props = struct_pb2.Struct()
            props.update({"EVENT_REF": ref})
            events.append(
                pb.Event(
                    event_id=ref,
                    event_type=EVENT_TYPE,
                    item_id=f"i{rng.randrange(sc.items)}",
                    sent_at=now,
                    properties=props,
                )  # fmt: skip
            )
        request = dapi.PutEventsRequest(
            dataset_group=sc.group, session_id=f"lt-{index}-{user}", user_id=f"u{user}", events=events
        )
        return request.SerializeToString(), refs

    async def one(k: int, intended: float, record: bool) -> None:
        rpc = RPCS[int(np.searchsorted(cumulative, rng.random(), side="right"))]
        refs: list[str] = []
        if rpc == "GetRecommendations":
            body = recommend[k % len(recommend)]
        elif rpc == "GetPersonalizedRanking":
            body = rank[k % len(rank)]
        elif rpc == "QueryForecast":
            body = query[k % len(query)]
        else:
            body, refs = put_events()
        try:
            answer: bytes = await calls[rpc](body, timeout=sc.timeout)
        except grpc.RpcError as exc:
            code = exc.code() if isinstance(exc, grpc.aio.AioRpcError) else grpc.StatusCode.UNKNOWN
            failures.append(
                {
                    "rpc": rpc,
                    "code": code.name,
                    "time": intended + clock_offset,
                    "after_ms": (loop.time() - intended) * 1e3,
                    "details": (exc.details() if isinstance(exc, grpc.aio.AioRpcError) else str(exc) or "")[:300],
                    "recorded": record,
                }
            )
            unknown.extend(refs)
            timeline.append((intended + clock_offset, RPCS.index(rpc), (loop.time() - intended) * 1e3, 0))
            return
        done = loop.time()
        if rpc == "PutEvents":
            response = dapi.PutEventsResponse.FromString(answer)
            if response.accepted == len(refs):
                acked.extend(refs)
            else:
                anomalies.append(
                    f"PutEvents accepted {response.accepted} and dropped {response.duplicates} of {len(refs)}"
                )
                unknown.extend(refs)
        elif rpc == "GetRecommendations":
            if not rapi.GetRecommendationsResponse.FromString(answer).item_list:
                empty[rpc] += 1
        elif rpc == "GetPersonalizedRanking":
            if not rapi.GetPersonalizedRankingResponse.FromString(answer).personalized_ranking:
                empty[rpc] += 1
        elif not answer:
            empty[rpc] += 1
        if record:
            latencies[rpc].append((done - intended) * 1e3)
        # Every call, for the timeline: (scheduled wall time, RPC, latency ms, ok).
        timeline.append((intended + clock_offset, RPCS.index(rpc), (done - intended) * 1e3, 1))

    # Ready; then all processes start on the same wall-clock instant, which the parent sends.
    conn.send("ready")
    start_at = conn.recv()
    await asyncio.sleep(max(0.0, start_at - time.time()))
    begin = loop.time()
    measured_from = begin + warmup
    end = measured_from + seconds
    sent = 0
    if mode == "closed":

        async def worker(w: int) -> None:
            nonlocal sent
            k = w
            while (now := loop.time()) < end:
                await one(k, now, now >= measured_from)
                sent += 1
                k += concurrency

        await asyncio.gather(*(worker(w) for w in range(concurrency)))
    else:
        # Open loop: the k-th call is due at begin + k / rate, whatever happened to the earlier ones.
        tasks: set[asyncio.Task[None]] = set()
        k = 0
        late = 0.0
        while (intended := begin + k / rate) < end:
            if (delay := intended - loop.time()) > 0:
                await asyncio.sleep(delay)
            else:
                late = max(late, -delay)
            task = asyncio.create_task(one(k, intended, intended >= measured_from))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            k += 1
            sent += 1
        await asyncio.gather(*tasks)
        if late > 0.5:
            anomalies.append(f"the load process itself fell {late:.2f} s behind its schedule")
    elapsed = loop.time() - measured_from
    await replicas.close()
    await channel.close()
    return {
        "index": index,
        "latencies": latencies,
        "failures": failures,
        "empty": dict(empty),
        "acked": acked,
        "unknown": unknown,
        "anomalies": anomalies,
        "sent": sent,
        "seconds": elapsed,
        "window": [measured_from + clock_offset, loop.time() + clock_offset],
        "timeline": np.array(timeline, dtype=float).reshape(-1, 4),
    }


def run_load(
    scenario: Scenario, clients: int, mode: str, total_rate: float, seconds: float, warmup: float, concurrency: int,
    phase: str,
) -> tuple[list[dict[str, Any]], float]:  # fmt: skip
    """Runs the load processes to their end; returns their results and the wall time they started at."""
    handles = start_load(scenario, clients, mode, total_rate, seconds, warmup, concurrency, phase)
    return join_load(handles), handles[0]


def start_load(
    scenario: Scenario, clients: int, mode: str, total_rate: float, seconds: float, warmup: float, concurrency: int,
    phase: str,
) -> tuple[float, list[tuple[Any, Connection]]]:  # fmt: skip
    procs = [
        spawn(load_process, i, scenario, mode, total_rate / clients, seconds, warmup, concurrency, phase)
        for i in range(clients)
    ]
    for _, conn in procs:
        if conn.recv() != "ready":
            raise SystemExit("a load process did not start")
    start_at = time.time() + 0.2
    for _, conn in procs:
        conn.send(start_at)
    return start_at, procs


def join_load(handles: tuple[float, list[tuple[Any, Connection]]]) -> list[dict[str, Any]]:
    results = []
    for process, conn in handles[1]:
        results.append(conn.recv())
        process.join(30)
    return results


# ---- the scenario: hot swap and worker kill -------------------------------------------------


def hot_swap(client: Any, campaign: str, version: str) -> dict[str, Any]:
    began = time.time()
    try:
        result = client.update_campaign(campaign, version, timeout=300)
        ok = result.solution_version == version
        error = "" if ok else f"the campaign serves {result.solution_version}, not {version}"
    except Exception as exc:  # reported, never raised: the load goes on
        ok, error = False, f"{type(exc).__name__}: {exc}"
    ended = time.time()
    served = ""
    with contextlib.suppress(Exception):
        served = client.get_campaign(campaign).solution_version
    return {"to": version, "ok": ok and served == version, "error": error, "began": began, "ended": ended,
            "seconds": ended - began, "served_after": served}  # fmt: skip


def find_worker(operation_id: str, timeout: float) -> tuple[int, list[str]] | None:
    """The pid and command line of the worker process of the job named after `operation_id`, from /proc."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for proc in Path("/proc").glob("[0-9]*"):
            try:
                argv = [a.decode(errors="replace") for a in (proc / "cmdline").read_bytes().split(b"\0") if a]
            except OSError:
                continue
            if "foretell.training.worker" in argv and argv and Path(argv[-1]).name == operation_id:
                return int(proc.name), argv
        time.sleep(0.02)
    return None


def kill_worker_and_retrain(client: Any, solution: str, campaign: str, serving: str) -> dict[str, Any]:
    """CreateSolutionVersion, SIGKILL its worker, check the failure is clean; then train again."""
    from foretell.client import operation_response
    from foretell.v1 import common_pb2
    from foretell.v1 import training_pb2 as tpb

    out: dict[str, Any] = {"began": time.time(), "checks": {}}
    checks = out["checks"]
    try:
        operation = client.create_solution_version(solution)
        meta = common_pb2.OperationMetadata()
        operation.metadata.Unpack(meta)
        version_name = meta.target
        out["operation"], out["version"] = operation.name, version_name
        found = find_worker(operation.name.removeprefix("operations/"), timeout=120)
        checks["worker found by its command line"] = found is not None
        if found is None:
            out["error"] = "no worker process ran the job within 120 s"
            return out
        pid, argv = found
        # Mid-run: once the worker has written its first progress line (its data loaded, fitting begun).
        job_dir = Path(argv[-1])
        deadline = time.monotonic() + 30
        progress_file = job_dir / "progress.jsonl"
        while time.monotonic() < deadline and not (progress_file.exists() and progress_file.stat().st_size > 0):
            time.sleep(0.002)
        os.kill(pid, signal.SIGKILL)
        killed_at = time.time()
        lines = (job_dir / "progress.jsonl").read_text().splitlines() if (job_dir / "progress.jsonl").exists() else []
        last = json.loads(lines[-1]) if lines else {}
        progress = common_pb2.OperationMetadata()
        client.get_operation(operation.name).metadata.Unpack(progress)
        out["killed"] = {"pid": pid, "argv": argv, "worker_progress": last, "time": killed_at,
                         "operation_progress_percent": progress.progress_percent}  # fmt: skip
        checks["killed before it finished"] = not (job_dir / "result.json").exists()
        done = client.wait_operation(operation.name, timeout=300, poll=0.1)
        out["operation_error"] = {"code": grpc.StatusCode(_code(done.error.code)).name, "message": done.error.message}
        checks["operation ended FAILED"] = done.done and done.HasField("error")
        checks["its error says the worker died"] = "worker" in done.error.message and (
            "-9" in done.error.message or "killed" in done.error.message or "gone" in done.error.message
        )
        version = client.get_solution_version(version_name)
        out["version_state"] = tpb.TrainingState.Name(version.state)
        checks["version is FAILED"] = version.state == tpb.TRAINING_STATE_FAILED
        checks["version has no artifact"] = not version.artifact_uri
        try:
            client.update_campaign(campaign, version_name, timeout=60)
            checks["the failed version cannot be deployed"] = False
        except Exception as exc:
            out["deploy_failed_version"] = f"{getattr(exc, 'code', '')}: {exc}"[:300]
            checks["the failed version cannot be deployed"] = True
        checks["the campaign still serves its version"] = client.get_campaign(campaign).solution_version == serving
        rerun_began = time.time()
        again = client.wait_operation(client.create_solution_version(solution), timeout=600, poll=0.1)
        retrained = operation_response(again, tpb.SolutionVersion)
        out["rerun"] = {"version": retrained.name, "state": tpb.TrainingState.Name(retrained.state),
                        "seconds": time.time() - rerun_began}  # fmt: skip
        checks["re-run SUCCEEDED"] = retrained.state == tpb.TRAINING_STATE_SUCCEEDED and bool(retrained.artifact_uri)
    except Exception as exc:  # reported, never raised: the load goes on
        out["error"] = f"{type(exc).__name__}: {exc}"[:500]
    finally:
        out["ended"] = time.time()
    return out


# ---- events: acknowledged vs stored ---------------------------------------------------------


def count_stored(client: Any, dataset: str) -> dict[str, Any]:
    from foretell.client import operation_response
    from foretell.v1 import dataset_pb2 as pb
    from foretell.v1 import dataset_service_pb2 as dapi

    # A new file in the caller's file area on the server (a path relative to it; exports never replace a file).
    name = f"interactions-export-{time.time_ns()}.csv"
    request = dapi.ExportDatasetRequest(name=dataset, destination_uri=name)
    job = operation_response(
        wait_done(client, client.call(client.datasets.ExportDataset, request), "export"), pb.ExportJob
    )
    refs: Counter[str] = Counter()
    with Path(job.destination_uri.removeprefix("file://")).open(newline="") as f:
        for row in csv.DictReader(f):
            if row.get("EVENT_REF"):
                refs[row["EVENT_REF"]] += 1
    row_count = client.call(client.datasets.GetDataset, dapi.GetDatasetRequest(name=dataset)).row_count
    return {"rows_exported": int(job.rows_exported), "row_count": int(row_count), "refs": refs}


# ---- report ---------------------------------------------------------------------------------


def percentiles(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"p50_ms": None, "p90_ms": None, "p99_ms": None, "max_ms": None}
    a = np.asarray(values)
    p50, p90, p99 = np.percentile(a, [50, 90, 99])
    return {"p50_ms": float(p50), "p90_ms": float(p90), "p99_ms": float(p99), "max_ms": float(a.max())}


def summarize(results: list[dict[str, Any]], mix: tuple[float, ...], target: float | None) -> dict[str, Any]:
    seconds = max(r["seconds"] for r in results)
    rows = {}
    total = 0
    for i, rpc in enumerate(RPCS):
        lat = [x for r in results for x in r["latencies"][rpc]]
        fails = [f for r in results for f in r["failures"] if f["rpc"] == rpc and f["recorded"]]
        codes = Counter(f["code"] for f in fails)
        calls = len(lat) + len(fails)
        total += calls
        rows[rpc] = {
            "calls": calls,
            "ok": len(lat),
            "failures": dict(codes),
            "empty_answers": sum(r["empty"].get(rpc, 0) for r in results),
            "qps": calls / seconds,
            "target_qps": None if target is None else target * mix[i] / sum(mix),
            **percentiles(lat),
        }
    every = [x for r in results for rpc in RPCS for x in r["latencies"][rpc]]
    return {
        "seconds": seconds,
        "qps": total / seconds,
        "target_qps": target,
        "calls": total,
        "all": percentiles(every),
        "rpcs": rows,
    }


def per_second(calls: np.ndarray, t0: float) -> list[dict[str, Any]]:
    """Calls, failures and p99 per second of the run (by scheduled send time, 0 = start of measuring)."""
    out = []
    second = np.floor(calls[:, 0] - t0).astype(int)
    for s in range(max(0, int(second.min(initial=0))), int(second.max(initial=-1)) + 1):
        rows = calls[second == s]
        ok = rows[rows[:, 3] == 1]
        out.append(
            {
                "second": s,
                "calls": len(rows),
                "failed": int((rows[:, 3] == 0).sum()),
                "p99_ms": float(np.percentile(ok[:, 2], 99)) if len(ok) else None,
            }
        )
    return out


def failure_summary(failures: list[dict[str, Any]], t0: float) -> list[dict[str, Any]]:
    """Failed calls by RPC and status code: how many, when (s from the start of measuring), how fast, details."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for f in failures:
        groups.setdefault((f["rpc"], f["code"]), []).append(f)
    out = []
    for (rpc, code), fs in sorted(groups.items(), key=lambda kv: -len(kv[1])):
        after = np.array([f["after_ms"] for f in fs])
        out.append(
            {
                "rpc": rpc,
                "code": code,
                "count": len(fs),
                "first_s": min(f["time"] for f in fs) - t0,
                "last_s": max(f["time"] for f in fs) - t0,
                "after_ms_p50": float(np.percentile(after, 50)),
                "after_ms_max": float(after.max()),
                "details": sorted({f["details"] for f in fs})[:3],
            }
        )
    return out


def phases(calls: np.ndarray, bounds: list[tuple[str, float, float]]) -> list[dict[str, Any]]:
    """p50/p99 and failures per RPC in named windows of the run (wall-clock [start, end) of the scheduled time)."""
    out = []
    for name, start, end in bounds:
        rows = calls[(calls[:, 0] >= start) & (calls[:, 0] < end)]
        entry: dict[str, Any] = {"phase": name, "seconds": end - start, "calls": len(rows)}
        for i, rpc in enumerate(RPCS):
            mine = rows[rows[:, 1] == i]
            ok = mine[mine[:, 3] == 1][:, 2]
            entry[rpc] = {
                "calls": len(mine),
                "failed": int((mine[:, 3] == 0).sum()),
                "p50_ms": float(np.percentile(ok, 50)) if len(ok) else None,
                "p99_ms": float(np.percentile(ok, 99)) if len(ok) else None,
            }
        out.append(entry)
    return out


def fmt(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def markdown(report: dict[str, Any]) -> str:
    lines = []
    peak, run = report["peak"], report["run"]
    lines.append(
        f"Peak (closed loop, {report['settings']['clients']} processes x {report['settings']['concurrency']} in "
        f"flight, {fmt(peak['seconds'], 1)} s): **{peak['qps']:,.0f} QPS**, p50 {fmt(peak['all']['p50_ms'])} ms, "
        f"p99 {fmt(peak['all']['p99_ms'])} ms."
    )
    lines.append(
        f"Open loop at {report['settings']['load']:.0%} of peak: target {run['target_qps']:,.0f} QPS, achieved "
        f"{run['qps']:,.0f} QPS over {fmt(run['seconds'], 1)} s ({run['calls']:,} calls), p50 "
        f"{fmt(run['all']['p50_ms'])} ms, p99 {fmt(run['all']['p99_ms'])} ms (from the scheduled send time)."
    )
    lines.append("")
    lines.append("| RPC | calls | failures | target QPS | achieved QPS | p50 ms | p90 ms | p99 ms | max ms |")
    lines.append("|---|---:|---|---:|---:|---:|---:|---:|---:|")
    for rpc, r in run["rpcs"].items():
        failures = ", ".join(f"{k} {v}" for k, v in sorted(r["failures"].items())) or "0"
        lines.append(
            f"| {rpc} | {r['calls']:,} | {failures} | {fmt(r['target_qps'], 0)} | {fmt(r['qps'], 0)} | "
            f"{fmt(r['p50_ms'])} | {fmt(r['p90_ms'])} | {fmt(r['p99_ms'])} | {fmt(r['max_ms'])} |"
        )
    ev = report["events"]
    lines.append("")
    lines.append(
        f"PutEvents: **{ev['acknowledged']:,} events acknowledged, {ev['stored']:,} stored** (in the export); "
        f"lost {ev['lost']}, stored but never acknowledged {ev['stored_unacknowledged']} (of {ev['unknown']} in "
        f"failed calls), stored twice {ev['duplicated']}, unexplained {ev['unexplained']}; row_count "
        f"{ev['row_count']:,} = seeded {ev['seeded']:,} + stored events {ev['row_count'] - ev['seeded']:,}."
    )
    swap = report["hot_swap"]
    lines.append(
        f"Hot swap at {fmt(swap.get('at_s'), 1)} s: UpdateCampaign to {swap['to']} took {fmt(swap['seconds'], 2)} s, "
        f"{'ok' if swap['ok'] else 'FAILED: ' + swap['error']}; calls failed during it: {swap['failed_calls']}."
    )
    kill = report["worker_kill"]
    if not report["settings"]["no_kill"]:
        checks = ", ".join(f"{k}: {'yes' if v else 'NO'}" for k, v in kill.get("checks", {}).items())
        killed = kill.get("killed", {})
        progress = killed.get("worker_progress", {})
        error, rerun = kill.get("operation_error", {}), kill.get("rerun", {})
        lines.append(
            f"Worker kill at {fmt(kill.get('at_s'), 1)} s: SIGKILL of pid {killed.get('pid')} while at "
            f"{fmt(progress.get('percent'), 0)}% ({progress.get('message', '')!r}); operation error "
            f"{error.get('code')}: {error.get('message', '')[:160]!r}; "
            f"{checks}; re-run {rerun.get('state')} in {fmt(rerun.get('seconds'), 1)} s."
            + (f" ERROR: {kill['error']}" if kill.get("error") else "")
        )
    else:
        lines.append("Worker kill: skipped (--no-kill).")
    replicas = report["replicas"]
    if replicas["kill"]:
        lines.append(
            f"Replicas: {replicas['count']} (reads round-robin); SIGKILL of the replica on port "
            f"{replicas['kill']['port']} at {fmt(replicas['kill'].get('at_s'), 1)} s."
        )
    else:
        lines.append(f"Replicas: {replicas['count']}; none killed.")
    if report["failures_by_code"]:
        lines.append("")
        lines.append(
            "| failed RPC | code | calls | seconds into the run | ms after the scheduled send (p50 / max) | details |"
        )
        lines.append("|---|---|---:|---|---|---|")
        for f in report["failures_by_code"]:
            lines.append(
                f"| {f['rpc']} | {f['code']} | {f['count']:,} | {f['first_s']:.0f}-{f['last_s']:.0f} | "
                f"{f['after_ms_p50']:,.0f} / {f['after_ms_max']:,.0f} | {'; '.join(f['details'])[:120]} |"
            )
    lines.append("")
    lines.append("| phase | s | " + " | ".join(f"{r} p50 / p99 ms (failed)" for r in RPCS) + " |")
    lines.append("|---|---:|" + "---|" * len(RPCS))
    for ph in report["phases"]:
        cells = [f"{fmt(ph[r]['p50_ms'], 0)} / {fmt(ph[r]['p99_ms'], 0)} ({ph[r]['failed']})" for r in RPCS]
        lines.append(f"| {ph['phase']} | {ph['seconds']:.0f} | " + " | ".join(cells) + " |")
    lines.append("")
    if report["expected_failures"]:
        lines.append(
            "Expected failures: "
            + "; ".join(f"{e['what']} ({e['code']}): {e['reason']}" for e in report["expected_failures"])
        )
    lines.append(
        f"Unexpected failed calls: **{report['unexpected_failures']}**; server log ERROR lines: "
        f"{report['server_log']['error_lines']}; anomalies: {len(report['anomalies'])}. "
        f"Verdict: **{'PASS' if report['passed'] else 'FAIL'}**."
    )
    if report["server_handled"]:
        parts = []
        for rpc, codes in report["server_handled"].items():
            handled = {code: n for code, n in codes.items() if code != "handler_seconds"}
            mean = codes.get("handler_seconds", 0.0) * 1e3 / max(sum(handled.values()), 1)
            counts = ", ".join(f"{code} {n:,.0f}" for code, n in sorted(handled.items()))
            parts.append(f"{rpc} {counts}, mean time in the handler {mean:.1f} ms")
        lines.append(
            "Server side, both phases (grpc_server_handled_total, grpc_server_handling_seconds): " + "; ".join(parts)
        )
    for problem in report["problems"]:
        lines.append(f"- problem: {problem}")
    return "\n".join(lines)


# ---- main -----------------------------------------------------------------------------------


def parse_mix(text: str) -> tuple[float, float, float, float]:
    weights = [0.0] * 4
    for part in text.split(","):
        key, _, value = part.partition("=")
        if key.strip() not in MIX_KEYS:
            raise SystemExit(f"--mix: {key!r} is not one of {', '.join(MIX_KEYS)}")
        weights[MIX_KEYS[key.strip()]] = float(value)
    if sum(weights) <= 0:
        raise SystemExit("--mix: give some traffic")
    return weights[0], weights[1], weights[2], weights[3]


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--minutes", type=float, default=3.0, help="length of the open-loop run")
    p.add_argument("--peak-seconds", type=float, default=25.0, help="length of the closed-loop peak measurement")
    p.add_argument("--warmup", type=float, default=3.0, help="seconds of unmeasured traffic before each phase")
    p.add_argument("--load", type=float, default=0.8, help="open-loop rate as a fraction of the measured peak")
    p.add_argument("--clients", type=int, default=2, help="load processes")
    p.add_argument("--concurrency", type=int, default=8, help="calls in flight per load process (closed loop)")
    p.add_argument("--mix", default="recommend=50,rank=20,events=20,query=10", help="traffic mix, weights")
    p.add_argument("--events-per-call", type=int, default=2)
    p.add_argument("--ranking-items", type=int, default=25, help="input_list size of GetPersonalizedRanking")
    p.add_argument("--timeout", type=float, default=30.0, help="deadline of each load call, seconds")
    p.add_argument("--recipe", default="ease")
    p.add_argument("--users", type=int, default=2000)
    p.add_argument("--items", type=int, default=1000)
    p.add_argument("--interactions", type=int, default=50_000)
    p.add_argument("--series", type=int, default=200, help="forecast series")
    p.add_argument("--days", type=int, default=120)
    p.add_argument("--horizon", type=int, default=14)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-kill", action="store_true", help="skip the worker kill")
    p.add_argument(
        "--replicas", type=int, default=2,
        help="recommendation replicas: the all-in-one server plus N-1 recommendation-only processes on one temporary "
        "PostgreSQL, reads round-robin over them (1: the all-in-one server alone, on SQLite)",
    )  # fmt: skip
    p.add_argument("--no-replica-kill", action="store_true", help="skip the SIGKILL of a replica at 2/3 of the run")
    p.add_argument("--json", type=Path, help="write the report here")
    p.add_argument("--timeline", type=Path, help="save every run call (wall time, RPC, ms, ok) as .npy here")
    p.add_argument("--keep", action="store_true", help="keep the temp dir (data, server log)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    mix = parse_mix(args.mix)
    from foretell.client import Client

    workdir = Path(tempfile.mkdtemp(prefix="load-test-"))
    (workdir / "data").mkdir()
    port, metrics_port = free_port(), free_port()
    began, load_before = time.time(), os.getloadavg()
    stack = contextlib.ExitStack()
    database: dict[str, str] = {}
    if args.replicas > 1:  # replicas share a PostgreSQL database, as in the Kubernetes base
        from foretell.runtime import pgtemp

        database["FORETELL_DATABASE_URL"] = stack.enter_context(pgtemp.temporary_postgres())
    server = start_server(workdir / "data", port, {"FORETELL_METRICS_PORT": str(metrics_port), **database})
    print(f"server pid {server.pid} on 127.0.0.1:{port}, data in {workdir / 'data'}", flush=True)
    problems: list[str] = []
    replicas: list[tuple[int, subprocess.Popen[bytes]]] = []
    replica_kill: dict[str, Any] = {}
    try:
        with Client(f"127.0.0.1:{port}", timeout=60) as client:
            seeded = seed(client, args)
            peers = {"FORETELL_DATASET_TARGET": f"127.0.0.1:{port}", "FORETELL_TRAINING_TARGET": f"127.0.0.1:{port}"}
            for i in range(1, args.replicas):
                (workdir / f"replica{i}" / "data").mkdir(parents=True)
                replica_port = free_port()
                replica = start_server(
                    workdir / f"replica{i}" / "data", replica_port, {**database, **peers}, "foretell.recommendation"
                )
                replicas.append((replica_port, replica))
                print(f"recommendation replica pid {replica.pid} on 127.0.0.1:{replica_port}", flush=True)
            scenario = Scenario(
                port, (port, *(p for p, _ in replicas)), seeded["group"], seeded["campaign"], seeded["forecast"],
                args.users, args.items, args.series, mix, args.events_per_call, args.ranking_items, args.timeout,
            )  # fmt: skip

            peak_results, _ = run_load(
                scenario, args.clients, "closed", 0.0, args.peak_seconds, args.warmup, args.concurrency, "peak"
            )
            peak = summarize(peak_results, mix, None)
            print(f"peak: {peak['qps']:,.0f} QPS, p99 {fmt(peak['all']['p99_ms'])} ms", flush=True)
            target = args.load * peak["qps"]
            seconds = args.minutes * 60
            handles = start_load(scenario, args.clients, "open", target, seconds, args.warmup, args.concurrency, "run")
            t0 = handles[0] + args.warmup  # when measuring starts
            print(f"open loop at {target:,.0f} QPS for {seconds:.0f} s", flush=True)
            time.sleep(max(0.0, t0 + seconds / 3 - time.time()))
            swap = hot_swap(client, seeded["campaign"], seeded["versions"][1])
            print(f"hot swap: {'ok' if swap['ok'] else swap['error']} in {swap['seconds']:.2f} s", flush=True)
            kill: dict[str, Any] = {"checks": {}}
            if not args.no_kill:
                time.sleep(max(0.0, t0 + seconds / 2 - time.time()))
                solution, campaign = f"solutions/{SOLUTION_ID}", seeded["campaign"]
                kill = kill_worker_and_retrain(client, solution, campaign, seeded["versions"][1])
                print(f"worker kill: {kill.get('checks')} {kill.get('error', '')}", flush=True)
            if replicas and not args.no_replica_kill:
                time.sleep(max(0.0, t0 + seconds * 2 / 3 - time.time()))
                victim_port, victim = replicas[-1]
                victim.kill()  # SIGKILL: no drain, connections cut mid-call
                victim.wait()
                replica_kill = {"began": time.time(), "port": victim_port, "pid": victim.pid}
                print(f"replica kill: SIGKILL of the replica on port {victim_port}", flush=True)
            run_results = join_load(handles)
            run = summarize(run_results, mix, target)
            stored = count_stored(client, seeded["interactions_dataset"])
            handled = server_handled(metrics_port)
    finally:
        code = stop_server(server)
        for _, replica in replicas:
            if replica.poll() is None:
                stop_server(replica)
        stack.close()
    log_problems = server_log_problems(workdir / "server.log")

    # Events: every acknowledged event must be stored once; nothing stored that was never sent.
    results = peak_results + run_results
    acked = {ref for r in results for ref in r["acked"]}
    unknown = {ref for r in results for ref in r["unknown"]}
    refs: Counter[str] = stored["refs"]
    lost = sorted(acked - refs.keys())
    events = {
        "acknowledged": len(acked),
        "stored": len(refs),
        "lost": len(lost),
        "lost_sample": lost[:10],
        "unknown": len(unknown),
        "stored_unacknowledged": len(refs.keys() & unknown),
        "duplicated": sum(1 for n in refs.values() if n > 1),
        "unexplained": len(refs.keys() - acked - unknown),
        "row_count": stored["row_count"],
        "rows_exported": stored["rows_exported"],
        "seeded": seeded["seeded_interactions"],
    }
    if events["lost"]:
        problems.append(f"{events['lost']} acknowledged events are not stored, e.g. {lost[:3]}")
    if events["duplicated"] or events["unexplained"]:
        problems.append(f"stored events twice ({events['duplicated']}) or never sent ({events['unexplained']})")
    if events["row_count"] != events["seeded"] + len(refs):
        problems.append(f"row_count {events['row_count']} != seeded {events['seeded']} + stored events {len(refs)}")

    # Failures, over both phases and the unmeasured warm-ups too: none is expected.
    all_failures = [f for r in results for f in r["failures"]]
    expected_failures = []
    if kill.get("killed"):
        expected_failures.append(
            {"what": f"training operation {kill.get('operation')}", "code": kill.get("operation_error", {}).get("code"),
             "reason": "its worker process was SIGKILLed by this test; no RPC of the load is expected to fail"}
        )  # fmt: skip
    unexpected = len(all_failures)
    if unexpected:
        codes = Counter(f"{f['rpc']} {f['code']}" for f in all_failures)
        problems.append(f"{unexpected} failed calls: {dict(codes)}; first: {all_failures[0]}")
    swap["at_s"] = swap["began"] - t0
    swap["failed_calls"] = sum(1 for f in all_failures if swap["began"] - 1 <= f["time"] <= swap["ended"] + 1)
    if not swap["ok"]:
        problems.append(f"hot swap: {swap['error'] or 'not served after'}")
    if not args.no_kill:
        kill["at_s"] = kill["began"] - t0
        if kill.get("error") or not all(kill["checks"].values()) or not kill["checks"]:
            problems.append(f"worker kill: {kill.get('error', '')} checks {kill['checks']}")
    empties = {rpc: r["empty_answers"] for rpc, r in run["rpcs"].items() if r["empty_answers"]}
    if empties:
        problems.append(f"empty answers: {empties}")
    anomalies = [a for r in results for a in r["anomalies"]]
    if any("PutEvents" in a for a in anomalies):
        problems.append(f"PutEvents anomalies: {[a for a in anomalies if 'PutEvents' in a][:5]}")
    if code != 0:
        problems.append(f"the server exited with {code} on SIGTERM")

    calls = np.concatenate([r["timeline"] for r in run_results])
    end = t0 + args.minutes * 60
    windows = [("before the hot swap", t0, swap["began"]), ("hot swap", swap["began"], swap["ended"])]
    if kill.get("ended"):
        windows += [("after the swap, before training", swap["ended"], kill["began"]),
                    ("kill and re-run (training)", kill["began"], min(kill["ended"], end)),
                    ("after the re-run", kill["ended"], end)]  # fmt: skip
    else:
        windows.append(("after the hot swap", swap["ended"], end))
    if replica_kill:
        replica_kill["at_s"] = replica_kill["began"] - t0
        windows += [("replica kill, first 10 s", replica_kill["began"], min(replica_kill["began"] + 10, end)),
                    ("after the replica kill", replica_kill["began"], end)]  # fmt: skip
    windows = [w for w in windows if w[2] > w[1]]
    if args.timeline:
        np.save(args.timeline, calls)
    report = {
        "command": " ".join(["bench/load_test.py", *(sys.argv[1:] if argv is None else argv)]),
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(began)),
        "machine": f"{machine()}; load average (1, 5, 15 min) {' '.join(f'{x:.2f}' for x in load_before)} at the "
        f"start, {' '.join(f'{x:.2f}' for x in os.getloadavg())} at the end",
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "seed": seeded,
        "peak": peak,
        "run": run,
        "events": events,
        "hot_swap": swap,
        "worker_kill": kill,
        "replicas": {"count": args.replicas, "kill": replica_kill},
        "expected_failures": expected_failures,
        "unexpected_failures": unexpected,
        "failures_sample": all_failures[:20],
        "server_log": log_problems,
        "server_handled": handled,
        "anomalies": anomalies,
        "per_second": per_second(calls, t0),
        "failures_by_code": failure_summary(all_failures, t0),
        "phases": phases(calls, windows),
        "problems": problems,
        "passed": not problems,
        "total_seconds": time.time() - began,
    }
    print()
    print(f"{report['machine']}")
    print(markdown(report))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2, default=str))
    if args.keep or problems:
        print(f"\ndata and server log kept in {workdir}")
    else:
        import shutil

        shutil.rmtree(workdir, ignore_errors=True)
    return 0 if report["passed"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
