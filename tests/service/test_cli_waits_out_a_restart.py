"""The CLI waiting on an operation rides out a server that drains and restarts: operations are durable."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_process import ROOT, start

from foretell.core.db import make_engine
from foretell.core.operations import OperationStore
from foretell.v1 import dataset_pb2

from support import stopped


@pytest.mark.slow
def test_operations_wait_survives_a_server_restart_on_the_same_port(tmp_path: Path) -> None:
    server, port = start("foretell.runtime", tmp_path)
    engine = make_engine(f"sqlite:///{tmp_path / 'foretell.db'}")
    operations = OperationStore(engine)
    job = "datasetGroups/g/datasets/d/importJobs/j"
    pending = operations.create(job, "import")
    cli = subprocess.Popen(
        [sys.executable, "-m", "foretell.cli", "--target", f"127.0.0.1:{port}", "-q", "--unavailable-wait", "90"]
        + ["operations", "wait", pending.name],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "services"), str(ROOT / "clients/python")])},
    )
    try:
        time.sleep(3)  # the CLI is polling (or, still starting, polls the restarted server first)
        assert cli.poll() is None, cli.communicate()
        assert stopped(server) == 0  # drained and gone: from here on every poll is UNAVAILABLE
        time.sleep(2)
        server, _ = start("foretell.runtime", tmp_path, port)
        assert cli.poll() is None, cli.communicate()
        # The job the CLI waits for ends well after the restart.
        operations.finish(pending.name, dataset_pb2.ImportJob(name=job))
        out, err = cli.communicate(timeout=60)
    finally:
        if cli.poll() is None:
            cli.kill()
        stopped(server)
        engine.dispose()
    assert cli.returncode == 0, err
    assert pending.name in out
    assert "server unavailable (draining or restarting?)" in err


def test_the_wait_gives_up_on_a_server_gone_for_longer_than_the_bound() -> None:
    from google.longrunning import operations_pb2

    from foretell.client import Client, ForetellError

    notes: list[str] = []
    with socket.socket() as closed:  # a port nobody listens on
        closed.bind(("127.0.0.1", 0))
        target = f"127.0.0.1:{closed.getsockname()[1]}"
    with Client(target, unavailable_wait=1.5) as client, pytest.raises(ForetellError) as gone:
        began = time.monotonic()
        client.wait_operation(
            operations_pb2.Operation(name="operations/x"), on_unavailable=lambda e: notes.append(e.message)
        )
    assert gone.value.code.name == "UNAVAILABLE" and 1.0 <= time.monotonic() - began < 15
    assert len(notes) == 1  # one note per outage, not one per poll
