#!/usr/bin/env python3
"""Which engine the data plane stands on: CSV -> Parquet and Parquet -> numpy with pyarrow, Polars and DuckDB.

The data plane (services/foretell/dataset/parts.py) turns an uploaded CSV into Parquet parts and training reads
those parts back into arrays. This runs both steps with each engine on the same generated interactions file
(USER_ID, ITEM_ID, TIMESTAMP, EVENT_TYPE, EVENT_VALUE; Zipf items), in one run, best of --repeat:

* write: read the CSV (every column as text, as the importer does before its checks) and write zstd Parquet;
* read: read that Parquet back into numpy arrays of the user ids, item ids and times.

Usage: PYTHONPATH=services:clients/python python bench/columnar_engines.py [--rows 5000000] [--repeat 3]

Needs `polars` and `duckdb` (not project dependencies: this is how the choice was made).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq


def make_csv(path: Path, rows: int) -> None:
    rng = np.random.default_rng(0)
    users = rng.integers(0, max(rows // 10, 1), rows)
    items = rng.zipf(1.3, rows) % 100_000
    table = pa.table(
        {
            "USER_ID": pa.array(np.char.add("u", users.astype(str))),
            "ITEM_ID": pa.array(np.char.add("i", items.astype(str))),
            "TIMESTAMP": 1_600_000_000 + np.sort(rng.integers(0, 10**8, rows)),
            "EVENT_TYPE": pa.array(np.where(rng.random(rows) < 0.8, "click", "buy")),
            "EVENT_VALUE": np.round(rng.random(rows) * 5, 1),
        }
    )
    pacsv.write_csv(table, path)


def best(repeat: int, run: Callable[[], object]) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=5_000_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    import duckdb
    import polars as pl

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        source = work / "interactions.csv"
        print(f"generating {args.rows:,} rows ...", flush=True)
        make_csv(source, args.rows)
        names = ["USER_ID", "ITEM_ID", "TIMESTAMP", "EVENT_TYPE", "EVENT_VALUE"]

        def pyarrow_write() -> None:
            text = pacsv.ConvertOptions(column_types=dict.fromkeys(names, pa.string()))
            pq.write_table(
                pacsv.read_csv(source, convert_options=text),
                work / "pa.parquet",
                compression="zstd",
                use_dictionary=False,
            )

        def polars_write() -> None:
            pl.read_csv(source, infer_schema=False).write_parquet(work / "pl.parquet", compression="zstd")

        def duckdb_write() -> None:
            with duckdb.connect() as con:
                con.execute(
                    f"COPY (SELECT * FROM read_csv('{source}', all_varchar=true)) TO '{work / 'dd.parquet'}' "
                    "(FORMAT parquet, COMPRESSION zstd)"
                )

        def pyarrow_read() -> None:
            t = pq.read_table(work / "pa.parquet", columns=names[:3])
            _ = [t.column(c).to_numpy() for c in names[:3]]

        def polars_read() -> None:
            f = pl.read_parquet(work / "pa.parquet", columns=names[:3])
            _ = [f[c].to_numpy() for c in names[:3]]

        def duckdb_read() -> None:
            with duckdb.connect() as con:
                _ = con.execute(f"SELECT USER_ID, ITEM_ID, TIMESTAMP FROM '{work / 'pa.parquet'}'").fetchnumpy()

        results = {}
        for engine, write, read in (
            ("pyarrow", pyarrow_write, pyarrow_read),
            ("polars", polars_write, polars_read),
            ("duckdb", duckdb_write, duckdb_read),
        ):
            results[engine] = (best(args.repeat, write), best(args.repeat, read))
            print(
                f"{engine}: CSV -> Parquet {results[engine][0]:.2f} s, Parquet -> numpy {results[engine][1]:.2f} s",
                flush=True,
            )
        base = results["pyarrow"]
        print("\n| engine | CSV -> Parquet s | x pyarrow | Parquet -> numpy s | x pyarrow |")
        print("|---|---:|---:|---:|---:|")
        for engine, (w, r) in results.items():
            print(f"| {engine} | {w:.2f} | {w / base[0]:.2f} | {r:.2f} | {r / base[1]:.2f} |")


if __name__ == "__main__":
    main()
