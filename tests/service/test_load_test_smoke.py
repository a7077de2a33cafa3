"""bench/load_test.py keeps working: a few seconds of every phase on a tiny seed (fields checked, not timings)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def load_script() -> object:
    spec = importlib.util.spec_from_file_location("load_test", ROOT / "bench" / "load_test.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["load_test"] = module  # the spawned load processes import it by this name
    spec.loader.exec_module(module)
    return module


@pytest.mark.timeout(120)
@pytest.mark.slow
def test_load_test_runs_every_phase_and_reports(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    script = load_script()
    out = tmp_path / "report.json"
    argv = [
        "--minutes", "0.1", "--peak-seconds", "2", "--warmup", "0.5", "--clients", "1", "--concurrency", "4",
        "--users", "60", "--items", "40", "--interactions", "600", "--series", "4", "--days", "30",
        "--horizon", "7", "--recipe", "ease", "--json", str(out),
    ]  # fmt: skip
    code = script.main(argv)  # type: ignore[attr-defined]
    printed = capsys.readouterr().out
    report = json.loads(out.read_text())
    assert code == 0, (report["problems"], printed[-3000:])
    assert report["passed"] and report["unexpected_failures"] == 0 and not report["problems"]
    assert report["peak"]["qps"] > 0 and report["run"]["target_qps"] == pytest.approx(0.8 * report["peak"]["qps"])
    rpcs = report["run"]["rpcs"]
    assert set(rpcs) == {"GetRecommendations", "GetPersonalizedRanking", "PutEvents", "QueryForecast"}
    for row in rpcs.values():
        assert {"calls", "failures", "p50_ms", "p90_ms", "p99_ms", "max_ms", "qps", "target_qps"} <= row.keys()
    events = report["events"]
    assert events["acknowledged"] > 0 and events["acknowledged"] == events["stored"] and events["lost"] == 0
    assert events["row_count"] == events["seeded"] + events["stored"]
    assert report["hot_swap"]["ok"] and report["hot_swap"]["served_after"] == report["seed"]["versions"][1]
    kill = report["worker_kill"]
    assert kill["checks"] and all(kill["checks"].values()), kill
    assert kill["operation_error"]["code"] == "INTERNAL" and "worker" in kill["operation_error"]["message"]
    # Two recommendation replicas on one PostgreSQL, one SIGKILLed mid-run: still no failed call.
    assert report["replicas"]["count"] == 2 and report["replicas"]["kill"]["pid"]
    assert "| GetRecommendations |" in printed and "Verdict: **PASS**" in printed
