"""The `foretell` CLI against a real in-process server (and `foretell serve` as a real process)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from foretell.cli.main import cli
from foretell.v1 import dataset_pb2 as pb
from foretell.v1 import dataset_service_pb2 as api

from support import Stubs, interactions_csv, make_recommendation_group, stopped

REPO = Path(__file__).resolve().parents[2]


def invoke(*args: str, stubs: Stubs | None = None) -> Result:
    target = ["--target", f"127.0.0.1:{stubs.app.port}"] if stubs is not None else []
    result = CliRunner().invoke(cli, [*target, *args], prog_name="foretell")
    # Failures are reported, never raised: the only exception a run may end with is SystemExit.
    assert result.exception is None or isinstance(result.exception, SystemExit), result.output
    assert "Traceback" not in result.output
    return result


def test_create_group_schema_and_dataset(stubs: Stubs) -> None:
    result = invoke("dataset-group", "create", "shop", "--domain", "recommendation", stubs=stubs)
    assert result.exit_code == 0, result.output
    assert "created datasetGroups/shop" in result.stdout

    result = invoke(
        "schema", "create", "clicks", "--domain", "recommendation",
        "--field", "USER_ID:string", "--field", "ITEM_ID:string", "--field", "TIMESTAMP:long",
        "--field", "DEVICE:string:nullable:categorical", stubs=stubs,
    )
    assert result.exit_code == 0, result.output
    schema = stubs.datasets.GetSchema(api.GetSchemaRequest(name="schemas/clicks"), timeout=5)
    assert [f.name for f in schema.fields] == ["USER_ID", "ITEM_ID", "TIMESTAMP", "DEVICE"]
    assert schema.fields[3].nullable and schema.fields[3].categorical and not schema.fields[3].textual

    result = invoke("dataset", "create", "shop", "events", "--type", "interactions", "--schema", "schemas/clicks",
                    stubs=stubs)
    assert result.exit_code == 0, result.output
    found = stubs.datasets.GetDataset(api.GetDatasetRequest(name="datasetGroups/shop/datasets/events"), timeout=5)
    assert found.dataset_type == pb.DATASET_TYPE_INTERACTIONS and found.schema == "schemas/clicks"

    listed = json.loads(invoke("--json", "dataset", "list", "shop", stubs=stubs).stdout)
    assert [d["name"] for d in listed["datasets"]] == ["datasetGroups/shop/datasets/events"]
    assert listed["datasets"][0]["rowCount"] == "0"
    assert "DEVICE" in invoke("schema", "describe", "clicks", stubs=stubs).stdout
    assert "datasetGroups/shop" in invoke("dataset-group", "list", stubs=stubs).stdout

    # Not empty, so a plain delete fails with the server's reason; --force deletes.
    result = invoke("dataset-group", "delete", "shop", stubs=stubs)
    assert result.exit_code == 1 and "error: FAILED_PRECONDITION:" in result.stderr
    assert invoke("dataset-group", "delete", "shop", "--force", stubs=stubs).exit_code == 0


def test_schema_from_json_file(stubs: Stubs, tmp_path: Path) -> None:
    spec = tmp_path / "items.json"
    spec.write_text(json.dumps({"domain": "recommendation", "fields": [
        {"name": "ITEM_ID", "type": "string"},
        {"name": "GENRES", "type": "string", "categorical": True},
        "DESCRIPTION:string:nullable:textual",
    ]}))
    result = invoke("schema", "create", "items", "--from-json", str(spec), stubs=stubs)
    assert result.exit_code == 0, result.output
    schema = stubs.datasets.GetSchema(api.GetSchemaRequest(name="schemas/items"), timeout=5)
    assert [(f.name, f.categorical, f.textual) for f in schema.fields] == [
        ("ITEM_ID", False, False), ("GENRES", True, False), ("DESCRIPTION", False, True)]


def test_bad_field_spec_names_the_field(stubs: Stubs) -> None:
    result = invoke("schema", "create", "clicks", "--domain", "recommendation",
                    "--field", "USER_ID:string", "--field", "GENRES:strin", stubs=stubs)
    assert result.exit_code == 1
    assert result.stderr.startswith("error: ") and "GENRES" in result.stderr and "strin" in result.stderr

    # A spec that parses but that the server rejects: its field violation is printed.
    result = invoke("schema", "create", "clicks", "--domain", "recommendation",
                    "--field", "user_id:string", "--field", "ITEM_ID:string", stubs=stubs)
    assert result.exit_code == 1
    assert result.stderr.startswith("error: INVALID_ARGUMENT: ")
    assert "  - schema.fields[0].name: reserved field names are upper case" in result.stderr


def test_import_csv_file(stubs: Stubs, tmp_path: Path) -> None:
    group = make_recommendation_group(stubs)
    path = tmp_path / "interactions.csv"
    path.write_bytes(interactions_csv(300))

    result = invoke("import", "shop/interactions", str(path), stubs=stubs)  # with progress bars

    assert result.exit_code == 0, result.output
    assert "imported 300 rows into datasetGroups/shop/datasets/interactions" in result.stdout
    assert "upload" in result.stderr and "import" in result.stderr
    assert stubs.datasets.GetDataset(api.GetDatasetRequest(name=group.interactions), timeout=5).row_count == 300

    more = tmp_path / "more.csv"
    more.write_bytes(interactions_csv(40, seed=1))
    result = invoke("--json", "import", group.interactions, str(more), "--mode", "incremental", stubs=stubs)
    assert result.exit_code == 0, result.output
    job = json.loads(result.stdout)
    assert job["state"] == "JOB_STATE_SUCCEEDED" and job["rowsImported"] == "40"
    assert stubs.datasets.GetDataset(api.GetDatasetRequest(name=group.interactions), timeout=5).row_count == 340


def test_a_full_import_of_no_rows_needs_allow_empty(stubs: Stubs, tmp_path: Path) -> None:
    group = make_recommendation_group(stubs)
    full, empty = tmp_path / "full.csv", tmp_path / "empty.csv"
    full.write_bytes(interactions_csv(30))
    empty.write_text("USER_ID,ITEM_ID,TIMESTAMP\n")
    assert invoke("import", "shop/interactions", str(full), "-q", stubs=stubs).exit_code == 0

    refused = invoke("import", "shop/interactions", str(empty), "-q", stubs=stubs)
    assert refused.exit_code == 1 and "allow_empty" in refused.stderr
    assert stubs.datasets.GetDataset(api.GetDatasetRequest(name=group.interactions), timeout=5).row_count == 30
    emptied = invoke("import", "shop/interactions", str(empty), "--allow-empty", "-q", stubs=stubs)
    assert emptied.exit_code == 0, emptied.output
    assert stubs.datasets.GetDataset(api.GetDatasetRequest(name=group.interactions), timeout=5).row_count == 0


def test_import_reports_bad_rows(stubs: Stubs, tmp_path: Path) -> None:
    group = make_recommendation_group(stubs)
    path = tmp_path / "bad.csv"
    path.write_text("USER_ID,ITEM_ID,TIMESTAMP\nu1,i1,100\nu2,i2,yesterday\nu3,,5\n")

    result = invoke("import", "shop/interactions", str(path), "-q", stubs=stubs)

    assert result.exit_code == 1
    assert result.stderr.startswith("error: INVALID_ARGUMENT: 2 bad rows")
    assert "  - rows[2].TIMESTAMP: " in result.stderr and "  - rows[3].ITEM_ID: is required" in result.stderr
    assert stubs.datasets.GetDataset(api.GetDatasetRequest(name=group.interactions), timeout=5).row_count == 0

    # The failed import is an operation the CLI can list and describe.
    listed = json.loads(invoke("--json", "operations", "list", "--verb", "import", stubs=stubs).stdout)
    assert len(listed["operations"]) == 1
    described = invoke("operations", "describe", listed["operations"][0]["name"], stubs=stubs)
    assert "FAILED" in described.stdout and "rows[2].TIMESTAMP" in described.stdout


def test_put_events_and_export(stubs: Stubs, tmp_path: Path) -> None:
    group = make_recommendation_group(stubs)
    result = invoke("put-events", "shop", "--session", "s1", "--user", "u7",
                    "--event", "click:i1", "--event", "watch:i2:3.5", stubs=stubs)
    assert result.exit_code == 0, result.output
    assert "accepted 2 events" in result.stdout
    assert stubs.datasets.GetDataset(api.GetDatasetRequest(name=group.interactions), timeout=5).row_count == 2

    result = invoke("put-events", "shop", "--session", "s1", "--event", "watch:i2:lots", stubs=stubs)
    assert result.exit_code == 1 and "'lots' is not a number" in result.stderr

    # A relative path names a file in the caller's area: with auth off, the default root data_dir/files.
    destination = tmp_path / "data" / "files" / "out.csv"
    result = invoke("export", "shop/interactions", "--to", "out.csv", "-q", stubs=stubs)
    assert result.exit_code == 0, result.output
    assert f"exported 2 rows to file://{destination}" in result.stdout
    assert destination.read_text().splitlines()[0].startswith("USER_ID,ITEM_ID,TIMESTAMP")

    result = invoke("delete-user-data", "shop", "--user", "u7", "--user", "nobody", stubs=stubs)
    assert result.exit_code == 0, result.output
    assert "deleted 2 interactions and 0 users" in result.stdout
    assert stubs.datasets.GetDataset(api.GetDatasetRequest(name=group.interactions), timeout=5).row_count == 0
    result = invoke("delete-user-data", "shop", "--user", "u\x01", stubs=stubs)
    assert result.exit_code == 1 and "user_ids[0]" in result.stderr, result.output


def test_unreachable_server_is_an_error_not_a_traceback() -> None:
    result = invoke("--target", "127.0.0.1:1", "--timeout", "3", "dataset-group", "list")
    assert result.exit_code == 1
    assert result.stderr.startswith("error: UNAVAILABLE: ") and "foretell serve" in result.stderr


@pytest.mark.slow
def test_demo_end_to_end_and_rerunnable(tmp_path: Path) -> None:
    data_dir = tmp_path / "demo"
    result = invoke("demo", "--data-dir", str(data_dir), "--rows", "500", "-q")

    assert result.exit_code == 0, result.output
    summary = result.stdout.split("Summary", 1)[1]
    interactions = next(line for line in summary.splitlines() if "datasets/interactions" in line)
    # ROWS (500 imported + 5 events at step 6 + the real-time click at the end), IMPORTED, IMPORT JOB
    assert interactions.split()[-3:] == ["506", "500", "SUCCEEDED"]
    assert "serving as campaigns/movielens-demo" in summary
    export = data_dir / "files" / "interactions.csv"  # taken before the click, in the default export root
    assert len(export.read_text().splitlines()) == 1 + 505
    assert (data_dir / "input" / "interactions.csv").is_file()

    again = invoke("--json", "demo", "--data-dir", str(data_dir), "--rows", "300")
    assert again.exit_code == 0, again.output
    report = json.loads(again.stdout)
    by_type = {d["type"]: d for d in report["datasets"]}
    assert by_type["INTERACTIONS"]["rowsImported"] == 300 and by_type["INTERACTIONS"]["rows"] == 306
    assert by_type["ITEMS"]["importJobState"] == "SUCCEEDED"


@pytest.mark.slow
def test_demo_imports_movielens_100k_format(tmp_path: Path) -> None:
    ml = tmp_path / "ml-100k"
    ml.mkdir()
    ml.joinpath("u.data").write_text("".join(
        f"{u}\t{m}\t{(u + m) % 5 + 1}\t{881250949 + u * 10 + m}\n" for u in range(1, 6) for m in range(1, 9)))
    flags = ["0"] * 19
    ml.joinpath("u.item").write_text("".join(
        f"{m}|Movie {m} (1995)|01-Jan-1995||http://x|{'|'.join(flags[:5] + ['1'] + flags[6:])}\n"
        for m in range(1, 10)), encoding="latin-1")

    result = invoke("demo", "--data-dir", str(tmp_path / "demo"), "--movielens", str(ml), "-q")

    assert result.exit_code == 0, result.output
    assert "40 interactions by 5 users on 9 movies" in result.stdout
    items = (tmp_path / "demo" / "input" / "items.csv").read_text().splitlines()
    assert items[1].startswith("1,Movie 1 (1995),Comedy,")


@pytest.mark.timeout(60)
def test_serve_runs_until_sigterm(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "services"), str(REPO / "clients/python")]),
           "FORETELL_LOG_FORMAT": "json"}
    process = subprocess.Popen(
        [sys.executable, "-m", "foretell.cli", "serve", "--port", "0", "--data-dir", str(tmp_path / "data"),
         "--service", "dataset"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=tmp_path,
    )
    try:
        assert process.stdout is not None
        deadline = time.monotonic() + 30
        port = 0
        while not port and time.monotonic() < deadline:
            line = process.stdout.readline()
            assert line, f"server exited with {process.poll()}"
            entry = json.loads(line) if line.startswith("{") else {}
            if entry.get("message") == "serving":
                port = entry["port"]
                assert entry["services"] == [
                    "foretell.v1.DatasetService",
                    "foretell.v1.EventFeedService",
                    "google.longrunning.Operations",
                ]
        assert port
        result = invoke("--target", f"127.0.0.1:{port}", "dataset-group", "list")
        assert result.exit_code == 0 and "no dataset groups" in result.stdout
        assert stopped(process) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
