"""Spooled ImportData uploads a crash left behind are removed when the dataset service starts again."""

from __future__ import annotations

import os
import time
from pathlib import Path

import grpc
import pytest
from google.longrunning import operations_pb2

from foretell.core import tenancy
from foretell.core.operations import OperationStore
from foretell.core.settings import Settings
from foretell.dataset import uploads
from foretell.dataset.store import DatasetStore

from support import interactions_csv, make_recommendation_group, start_stubs, upload


@pytest.mark.databases("sqlite", "postgres")
def test_uploads_of_imports_a_crash_interrupted_are_removed_at_start(settings: Settings) -> None:
    stubs = start_stubs(settings)
    group = make_recommendation_group(stubs)
    stubs.wait(upload(stubs, group.interactions, interactions_csv(50)))
    spool = settings.artifacts / "uploads"
    assert not list(spool.iterdir()), "a finished import leaves no upload behind"
    # What a crash mid-import leaves: a RUNNING job, its operation, its spooled file.
    crashed = f"{group.interactions}/importJobs/crashed"
    pending = OperationStore(stubs.app.engine).create(crashed, "import")
    DatasetStore(stubs.app.engine).create_import_job(crashed, group.interactions, "", "FULL", pending.name)
    interrupted = uploads.spool_path(spool, tenancy.DEFAULT, crashed)
    interrupted.write_bytes(interactions_csv(10))
    # And a file of an upload that never became a job (the server died while it was streamed), from long ago.
    stray = spool / "0123456789abcdef.csv"
    stray.write_bytes(b"USER_ID,ITEM_ID,TIMESTAMP\n")
    os.utime(stray, (time.time() - 2 * uploads.ORPHAN_AFTER_SECONDS,) * 2)
    stubs.channel.close()
    stubs.app.stop(None)

    restarted = start_stubs(settings)
    try:
        assert not interrupted.exists() and not stray.exists()
        done = restarted.operations.GetOperation(operations_pb2.GetOperationRequest(name=pending.name), timeout=5)
        assert done.error.code == grpc.StatusCode.ABORTED.value[0]
        # Imports after the clean-up work as before.
        assert not restarted.wait(upload(restarted, group.interactions, interactions_csv(20))).HasField("error")
    finally:
        restarted.channel.close()
        restarted.app.stop(None)


def test_with_several_writers_only_files_nobody_can_be_reading_go(tmp_path: Path) -> None:
    """PostgreSQL: another process may be spooling an upload whose job row does not exist yet."""
    running = uploads.spool_path(tmp_path, "t", "datasetGroups/g/datasets/d/importJobs/running")
    failed = uploads.spool_path(tmp_path, "t", "datasetGroups/g/datasets/d/importJobs/failed")
    streaming = tmp_path / f"{uploads.job_key('t', 'datasetGroups/g/datasets/d/importJobs/new')}.x.csv"
    forgotten = tmp_path / "feedbeef.y.csv"
    for path in (running, failed, streaming, forgotten):
        path.write_text("USER_ID\n")
    old = time.time() - 2 * uploads.ORPHAN_AFTER_SECONDS
    os.utime(forgotten, (old, old))
    os.utime(running, (old, old))  # a long-queued import still reads its file

    removed = uploads.remove_orphans(
        tmp_path,
        unfinished=[("t", "datasetGroups/g/datasets/d/importJobs/running")],
        failed=[("t", "datasetGroups/g/datasets/d/importJobs/failed")],
        single_writer=False,
    )
    assert removed == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([running.name, streaming.name])
