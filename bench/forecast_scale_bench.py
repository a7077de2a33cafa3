"""Forecasting data on the columnar plane at scale: import, snapshot and a sharded predictor end to end through
the public API, with the floors a user would have without Foretell measured on the same file in the same run.

Data: --series series x --days days of daily data (default 100,000 x 730 = 73M rows), one CSV (ITEM_ID,
TIMESTAMP as YYYY-MM-DD, TARGET_VALUE) with a level, a weekly season and noise per series; generated once into
--workdir and reused.

Floors (this process, before the server starts):
  pyarrow   ``pyarrow.csv.read_csv`` of the file (s, rows/s): what the import is compared with;
  statsforecast  ``StatsForecast(models=[SeasonalNaive(7)], freq="D").forecast(h=--horizon)`` over every series
            from the table already in memory (s): the peer for the predictor's fits, which do less work
            than the predictor (no backtest, no accuracy figures).
Foretell: a real server (``python -m foretell.runtime``, SQLite, FORETELL_FORECAST_SHARD_SERIES=--shard-series,
so the predictor runs as ceil(series / shard-series) shards, as many at a time as there are CPUs):
  import     CreateDatasetImportJob, file:// URI, FULL (s, rows/s);
  predictor  CreatePredictor seasonal-naive, --horizon, one backtest window: snapshot s (until the worker
             starts), training s (shards, merge), total;
  forecast   CreateForecast over every series (s);
  query      QueryForecast for --queries random series, sequential (p50/p99 ms).
Peak RSS of the server tree, of one worker and of all workers at once, sampled every 0.5 s.

    PYTHONPATH=services:clients/python python bench/forecast_scale_bench.py [--series 100000 --days 730
        --shard-series 25000 --out out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from scale_bench import (
    PREPARE_SHARE,
    WORKER_STARTED,
    TreeSampler,
    _end_time,
    cached_file,
    git_commit,
    machine,
    proc_status,
    say,
    start_server,
    stop_server,
    wait_polling,
)

T0 = 1_704_067_200  # 2024-01-01 UTC
CHUNK_SERIES = 5_000


def ensure_csv(workdir: Path, series: int, days: int, seed: int) -> Path:
    workdir.mkdir(parents=True, exist_ok=True)
    path = workdir / f"series-{series}x{days}.csv"
    settings = {"series": series, "days": days, "seed": seed, "format": 1}
    return cached_file(path, settings, lambda p: generate_csv(p, series, days, seed))


def generate_csv(path: Path, series: int, days: int, seed: int) -> None:
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.csv as pacsv

    rng = np.random.default_rng(seed)
    dates = pa.array(np.datetime_as_string(np.datetime64("2024-01-01") + np.arange(days), unit="D"))
    schema = pa.schema([("ITEM_ID", pa.string()), ("TIMESTAMP", pa.string()), ("TARGET_VALUE", pa.float64())])
    partial = path.with_name(f".{path.name}.partial")
    with partial.open("wb") as f:
        f.write(b"ITEM_ID,TIMESTAMP,TARGET_VALUE\n")
        options = pacsv.WriteOptions(include_header=False, quoting_style="none")
        with pacsv.CSVWriter(f, schema, write_options=options) as writer:
            for lo in range(0, series, CHUNK_SERIES):
                n = min(CHUNK_SERIES, series - lo)
                day = np.tile(np.arange(days), n)
                level = np.repeat(rng.gamma(2.0, 20.0, n), days)
                season = np.repeat(rng.uniform(0.0, 0.5, n), days)
                values = level * (1 + season * np.sin(2 * np.pi * day / 7)) + rng.normal(0, 2, n * days)
                ids = pc.binary_join_element_wise("s", pc.cast(pa.array(np.repeat(np.arange(lo, lo + n), days)),
                                                               pa.string()), "")  # fmt: skip
                writer.write_table(
                    pa.table([ids, dates.take(pa.array(day)), pa.array(np.round(values, 2))], schema=schema)
                )
                say(f"data: {lo + n:,}/{series:,} series")
    partial.replace(path)


def floors(path: Path, rows: int, args: argparse.Namespace) -> dict[str, Any]:
    import pyarrow.csv as pacsv

    t = time.perf_counter()
    table = pacsv.read_csv(path)
    read_s = time.perf_counter() - t
    if table.num_rows != rows:
        raise RuntimeError(f"pyarrow read {table.num_rows} rows, expected {rows}")
    say(f"floor: pyarrow read {rows:,} rows in {read_s:.1f} s ({rows / read_s:,.0f} rows/s)")
    import pyarrow as pa
    from statsforecast import StatsForecast
    from statsforecast.models import SeasonalNaive

    dates = table.column("TIMESTAMP").cast(pa.timestamp("s"))  # read as date32
    frame = table.set_column(1, "TIMESTAMP", dates).rename_columns(["unique_id", "ds", "y"]).to_pandas()
    del table, dates
    frame["unique_id"] = frame["unique_id"].astype("category")
    t = time.perf_counter()
    StatsForecast(models=[SeasonalNaive(season_length=7)], freq="D", n_jobs=1).forecast(df=frame, h=args.horizon)
    statsforecast_s = time.perf_counter() - t
    say(f"floor: statsforecast SeasonalNaive forecast of {args.series:,} series in {statsforecast_s:.1f} s")
    return {"pyarrow_read_s": read_s, "pyarrow_rows_per_s": rows / read_s, "statsforecast_s": statsforecast_s}


def foretell_stages(path: Path, run_dir: Path, args: argparse.Namespace) -> dict[str, Any]:
    from foretell.client import Client, operation_response
    from foretell.v1 import dataset_pb2 as pb
    from foretell.v1 import training_pb2 as tpb
    from foretell.v1 import training_service_pb2 as tapi

    rows = args.series * args.days
    env = {"FORETELL_FORECAST_SHARD_SERIES": str(args.shard_series)}
    proc, port, log = start_server(run_dir / "data", path.parent, "", env)
    say(f"server pid {proc.pid} on 127.0.0.1:{port}, data dir {run_dir / 'data'}")
    f: dict[str, Any] = {}
    try:
        with TreeSampler(proc.pid) as mem, Client(f"127.0.0.1:{port}", timeout=120) as client:
            mem.stage = "import"
            group = client.create_dataset_group("series", pb.DOMAIN_FORECASTING)
            schema = client.create_schema("series", pb.DOMAIN_FORECASTING, [
                pb.SchemaField(name="ITEM_ID", type=pb.FIELD_TYPE_STRING),
                pb.SchemaField(name="TIMESTAMP", type=pb.FIELD_TYPE_TIMESTAMP),
                pb.SchemaField(name="TARGET_VALUE", type=pb.FIELD_TYPE_DOUBLE),
            ])  # fmt: skip
            dataset = client.create_dataset(group.name, "demand", pb.DATASET_TYPE_TARGET_TIME_SERIES, schema.name)
            t = time.time()
            op = client.import_uri(dataset.name, path.as_uri(), import_mode=pb.IMPORT_MODE_FULL)
            done = wait_polling(client, op, proc, log, args.poll, "import")
            job = operation_response(done, pb.ImportJob)
            if job.rows_imported != rows:
                raise RuntimeError(f"import stored {job.rows_imported} rows, expected {rows}")
            f["import_s"] = _end_time(done, time.time()) - t
            f["import_rows_per_s"] = rows / f["import_s"]
            say(f"import: {rows:,} rows in {f['import_s']:.1f} s ({f['import_rows_per_s']:,.0f} rows/s)")

            mem.stage = "predictor"
            predictor = tpb.Predictor(
                dataset_group=group.name,
                algorithm="seasonal-naive",
                forecast_horizon=args.horizon,
                forecast_frequency="D",
                backtest_windows=1,
            )
            t = time.time()
            op = client.call(client.training.CreatePredictor,
                             tapi.CreatePredictorRequest(predictor_id="scale", predictor=predictor))  # fmt: skip
            boundary: list[float] = []
            stages: list[dict[str, Any]] = []

            def on_poll(meta: Any, now: float) -> None:
                if not stages or stages[-1]["message"] != meta.status_message:
                    stages.append({"t_s": round(now - t, 1), "message": meta.status_message,
                                   "percent": round(meta.progress_percent, 1)})  # fmt: skip
                    say(f"  predictor +{now - t:6.1f} s: {meta.progress_percent:5.1f}% {meta.status_message}")
                if not boundary and (meta.progress_percent >= PREPARE_SHARE or WORKER_STARTED in meta.status_message):
                    boundary.append(now)

            done = wait_polling(client, op, proc, log, args.poll, "predictor", on_poll)
            if done.HasField("error"):
                raise RuntimeError(f"the predictor failed: {done.error.message}")
            trained = operation_response(done, tpb.Predictor)
            end = _end_time(done, time.time())
            f["snapshot_s"] = (boundary[0] if boundary else end) - t
            f["predictor_s"] = end - t
            f["training_s"] = f["predictor_s"] - f["snapshot_s"]
            f["predictor_stages"] = stages
            spec = json.loads(next((run_dir / "data").rglob("jobs/*/spec.json")).read_text())
            f["shards"] = int(spec.get("shards") or 1)
            say(f"predictor: {trained.name} in {f['predictor_s']:.1f} s ({f['shards']} shards; snapshot "
                f"{f['snapshot_s']:.1f} s, training {f['training_s']:.1f} s)")  # fmt: skip

            mem.stage = "forecast"
            t = time.time()
            request = tapi.CreateForecastRequest(forecast_id="scale", forecast=tpb.Forecast(predictor=trained.name))
            op = client.call(client.training.CreateForecast, request)
            done = wait_polling(client, op, proc, log, args.poll, "forecast")
            if done.HasField("error"):
                raise RuntimeError(f"the forecast failed: {done.error.message}")
            forecast = operation_response(done, tpb.Forecast)
            f["forecast_s"] = _end_time(done, time.time()) - t
            say(f"forecast: {forecast.name} in {f['forecast_s']:.1f} s")

            mem.stage = "query"
            rng = np.random.default_rng(args.seed)
            latencies = []
            for k in rng.integers(0, args.series, args.queries):
                t0 = time.perf_counter()
                answer = client.query_forecast(forecast.name, f"s{k}")
                latencies.append(time.perf_counter() - t0)
                if not answer.series:
                    raise RuntimeError(f"no forecast for s{k}")
            lat = np.sort(np.array(latencies)) * 1e3
            f["query_p50_ms"], f["query_p99_ms"] = float(np.percentile(lat, 50)), float(np.percentile(lat, 99))
            say(f"query: p50 {f['query_p50_ms']:.2f} ms, p99 {f['query_p99_ms']:.2f} ms")
            mem.sample()
        f["memory"] = {
            "tree_peak_mb": mem.tree_peak / 2**20,
            "server_peak_mb": proc_status(proc.pid, "VmHWM") / 2**20,
            "worker_peak_mb": mem.worker_peak / 2**20,
            "workers_at_once_peak_mb": mem.workers_sum_peak / 2**20,
            "by_stage_mb": {k: v / 2**20 for k, v in mem.stage_peaks.items()},
        }
    finally:
        stop_server(proc)
    return f


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="forecast_scale_bench.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("--series", type=int, default=100_000)
    p.add_argument("--days", type=int, default=730)
    p.add_argument("--horizon", type=int, default=14)
    p.add_argument("--shard-series", type=int, default=25_000, help="FORETELL_FORECAST_SHARD_SERIES (default 25000)")
    p.add_argument("--queries", type=int, default=500)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--poll", type=float, default=1.0)
    p.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "foretell-forecast-scale")
    p.add_argument("--skip-floors", action="store_true", help="no pyarrow / statsforecast floors (a smoke run)")
    p.add_argument("--out", type=Path)
    args = p.parse_args(argv)
    began = time.perf_counter()
    args.workdir.mkdir(parents=True, exist_ok=True)
    rows = args.series * args.days
    say(f"forecast scale bench: {args.series:,} series x {args.days} days = {rows:,} rows")
    path = ensure_csv(args.workdir, args.series, args.days, args.seed)
    result: dict[str, Any] = {"machine": machine(), "commit": git_commit(), "command": " ".join(sys.argv),
                              "settings": {k: str(v) for k, v in vars(args).items()}, "rows": rows,
                              "csv_mb": path.stat().st_size / 2**20}  # fmt: skip
    result["floors"] = {} if args.skip_floors else floors(path, rows, args)
    run_dir = Path(tempfile.mkdtemp(prefix="server-", dir=args.workdir))
    try:
        result["foretell"] = f = foretell_stages(path, run_dir, args)
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)
    if result["floors"]:
        fl = result["floors"]
        result["ratios"] = {
            "import_vs_pyarrow_throughput": f["import_rows_per_s"] / fl["pyarrow_rows_per_s"],
            "predictor_training_vs_statsforecast_seconds": f["training_s"] / fl["statsforecast_s"],
        }
    result["total_s"] = time.perf_counter() - began
    text = json.dumps(result, indent=1)
    if args.out:
        args.out.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
