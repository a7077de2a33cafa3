"""A snapshot of Parquet parts reads as the CSV export of the same rows did (core/snapshot_files.py, load_snapshot)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from foretell.core.snapshot_files import MANIFEST
from foretell.recipes.data import load_snapshot


def _rows(n: int, seed: int) -> pa.Table:
    rng = np.random.default_rng(seed)
    return pa.table(
        {
            "USER_ID": pa.array([f"u{x:03d}" for x in rng.integers(0, 40, n)]),
            "ITEM_ID": pa.array([f"i{x}" for x in rng.integers(0, 90, n)]),
            "TIMESTAMP": pa.array(1_700_000_000 + rng.integers(0, 10_000, n), pa.int64()),
            "EVENT_TYPE": pa.array(rng.choice(["click", "buy"], n)),
            "EVENT_VALUE": pa.array(rng.random(n)),
        }
    )


def test_parquet_parts_and_csv_give_the_same_interactions(tmp_path: Path) -> None:
    first, second = _rows(500, 1), _rows(300, 2)
    items = pa.table({"ITEM_ID": ["i1", "zz-only-in-items"], "GENRES": ["a", "b"]})
    parquet_dir, csv_dir = tmp_path / "parquet", tmp_path / "csv"
    parquet_dir.mkdir()
    csv_dir.mkdir()
    uris = []
    for i, part in enumerate((first, second)):
        pq.write_table(part, parquet_dir / f"p{i}.parquet")
        uris.append((parquet_dir / f"p{i}.parquet").as_uri())
    pq.write_table(items, parquet_dir / "items.parquet")
    manifest = {
        "store": {"s3_endpoint_url": "", "s3_region": ""},
        "datasets": {
            "interactions": {"part_uris": uris, "row_count": 800},
            "items": {"part_uris": [(parquet_dir / "items.parquet").as_uri()], "row_count": 2},
        },
    }
    (parquet_dir / MANIFEST).write_text(json.dumps(manifest))
    pacsv.write_csv(pa.concat_tables([first, second]), csv_dir / "interactions.csv")
    pacsv.write_csv(items, csv_dir / "items.csv")
    for event_type in ("", "buy"):
        a, b = load_snapshot(parquet_dir, event_type), load_snapshot(csv_dir, event_type)
        assert list(a.user_ids) == list(b.user_ids) and list(a.item_ids) == list(b.item_ids)
        assert "zz-only-in-items" in list(a.item_ids)
        for name in ("users", "items", "timestamps", "event_types"):
            np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
        np.testing.assert_allclose(a.values, b.values)
        assert list(a.item_features["GENRES"]) == list(b.item_features["GENRES"])
