"""bench/scale_bench.py keeps working: one tiny size end to end (a real server process), every field checked."""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path
from types import ModuleType

import pytest

from foretell.training.jobs import PREPARE_SHARE

ROOT = Path(__file__).resolve().parents[2]
SIZE = 20_000

FLOOR_FIELDS = ("pyarrow_read_s", "pyarrow_rows_per_s", "matrix_users", "matrix_items", "matrix_nnz", "implicit_fit_s")
FORETELL_FIELDS = (
    "import_s", "import_rows_per_s", "snapshot_s", "training_s", "solution_version_s", "campaign_active_s",
    "recommend_p50_ms", "recommend_p99_ms", "recommend_mean_ms", "first_recommendation_s",
)  # fmt: skip
MEMORY_FIELDS = ("tree_peak_mb", "server_peak_mb", "worker_peak_mb", "bench_peak_mb")
RATIO_FIELDS = ("import_vs_pyarrow_throughput", "training_vs_implicit_seconds")


def load_script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("scale_bench", ROOT / "bench" / "scale_bench.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["scale_bench"] = module
    spec.loader.exec_module(module)
    return module


def positive(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value) and value > 0


@pytest.mark.timeout(180)
@pytest.mark.slow
def test_scale_bench_runs_one_size_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    script = load_script()
    assert script.PREPARE_SHARE == PREPARE_SHARE  # the bench splits snapshot from training where the service does
    out, png = tmp_path / "scale.json", tmp_path / "growth.png"
    argv = [
        "--sizes", "20k", "--factors", "4", "--iterations", "2", "--requests", "50", "--poll", "0.1",
        "--workdir", str(tmp_path / "work"), "--out", str(out), "--chart", str(png),
    ]  # fmt: skip
    code = script.main(argv)
    printed = capsys.readouterr().out
    report = json.loads(out.read_text())
    (result,) = report["results"]
    assert code == 0 and result["status"] == "ok", (result.get("error"), printed[-2000:])
    assert result["size"] == SIZE and result["users"] == SIZE // 10 and result["items"] == SIZE // 50
    for part, fields in (("floors", FLOOR_FIELDS), ("foretell", FORETELL_FIELDS), ("memory", MEMORY_FIELDS),
                         ("ratios", RATIO_FIELDS)):  # fmt: skip
        for name in fields:
            assert positive(result[part].get(name)), (part, name, result[part].get(name))
    assert positive(report["total_s"]) and positive(result["seconds_total"]) and positive(result["csv_mb"])

    f, floors, memory = result["foretell"], result["floors"], result["memory"]
    assert f["snapshot_s"] + f["training_s"] == pytest.approx(f["solution_version_s"], abs=1e-6)
    assert f["recommend_requests"] == 50 and f["recommend_empty_answers"] == 0
    assert f["recommend_p50_ms"] <= f["recommend_p99_ms"]
    assert f["import_rows_per_s"] == pytest.approx(SIZE / f["import_s"])
    assert floors["pyarrow_rows_per_s"] == pytest.approx(SIZE / floors["pyarrow_read_s"])
    assert floors["matrix_users"] <= SIZE // 10 and floors["matrix_items"] <= SIZE // 50
    assert 0 < floors["matrix_nnz"] <= SIZE
    ratios = result["ratios"]
    assert ratios["import_vs_pyarrow_throughput"] == pytest.approx(
        f["import_rows_per_s"] / floors["pyarrow_rows_per_s"]
    )
    assert ratios["training_vs_implicit_seconds"] == pytest.approx(f["training_s"] / floors["implicit_fit_s"])
    # The tree holds the server: its sampled peak is at least the server's own RSS at some sample.
    assert memory["tree_peak_mb"] >= memory["worker_peak_mb"] and memory["server_peak_mb"] > 50
    # A stage shorter than the 0.5 s sampling period (activation, now lazy, often is) may have no sample.
    assert {"train", "serve"} <= set(memory["tree_peak_by_stage_mb"]) <= {"import", "train", "campaign", "serve"}
    # The training operation's progress was followed past the snapshot, into the worker's own messages.
    messages = [s["message"] for s in result["stages"]]
    assert "worker started" in messages and messages[-1] == "done", messages
    times = [s["t_s"] for s in result["stages"]]
    assert times == sorted(times)

    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert f"| {SIZE:,} | {SIZE // 10:,} | {SIZE // 50:,} |" in printed and "| ok |" in printed
    # The generated file is reused by a second run (same shape), not written again.
    data = tmp_path / "work" / "data" / "interactions-20k.csv"
    assert data.read_bytes().startswith(b"USER_ID,ITEM_ID,TIMESTAMP\n")
    assert sum(1 for _ in data.open()) == SIZE + 1


def test_scale_bench_stops_a_size_that_would_not_fit_in_memory(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Refused before any data or server: the size and every larger one are 'stopped: out of memory'."""
    script = load_script()
    out = tmp_path / "scale.json"
    argv = ["--sizes", "5M,1M", "--mem-bytes-per-row", "1e12", "--workdir", str(tmp_path / "work"), "--out", str(out)]
    assert script.main(argv) == 1
    results = json.loads(out.read_text())["results"]
    assert [r["size"] for r in results] == [1_000_000, 5_000_000]
    assert all(r["status"] == "stopped: out of memory" for r in results)
    assert "not started" in results[0]["error"] and "not run" in results[1]["error"]
    assert not (tmp_path / "work" / "data").exists()
    assert "stopped: out of memory" in capsys.readouterr().out


@pytest.mark.parametrize(("text", "value"), [("20k", 20_000), ("1M", 1_000_000), ("2.5M", 2_500_000), ("1000", 1000)])
def test_scale_bench_sizes(text: str, value: int) -> None:
    script = load_script()
    assert script.parse_size(text) == value
    assert script.parse_size(script.label(value)) == value


@pytest.mark.timeout(240)
@pytest.mark.slow
def test_forecast_scale_bench_runs_end_to_end_in_shards(tmp_path: Path) -> None:
    load_script()  # the forecast bench imports its server and sampling helpers
    spec = importlib.util.spec_from_file_location("forecast_scale_bench", ROOT / "bench" / "forecast_scale_bench.py")
    assert spec is not None and spec.loader is not None
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    out = tmp_path / "forecast.json"
    argv = [
        "--series", "60", "--days", "60", "--horizon", "7", "--shard-series", "20", "--queries", "10",
        "--poll", "0.2", "--skip-floors", "--workdir", str(tmp_path / "work"), "--out", str(out),
    ]  # fmt: skip
    assert script.main(argv) == 0
    report = json.loads(out.read_text())
    f = report["foretell"]
    assert report["rows"] == 3_600 and f["shards"] == 3
    for name in ("import_s", "import_rows_per_s", "snapshot_s", "training_s", "predictor_s", "forecast_s",
                 "query_p50_ms", "query_p99_ms"):  # fmt: skip
        assert positive(f.get(name)), (name, f.get(name))
    assert any("shard" in stage["message"] for stage in f["predictor_stages"])
    for name in ("tree_peak_mb", "server_peak_mb", "worker_peak_mb", "workers_at_once_peak_mb"):
        assert positive(f["memory"].get(name)), (name, f["memory"])
