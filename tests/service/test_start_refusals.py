"""A server that must not start says why in one line and exits non-zero: a data directory already served
(SQLite has one writer), a port already taken."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_process import ROOT, start

from foretell.client import Client
from foretell.core.data_lock import lock_for
from foretell.core.settings import Settings
from foretell.dataset import importer
from foretell.dataset.columns import BatchValidator
from foretell.runtime.server import create_server

from support import interactions_csv, make_recommendation_group, stopped, stubs_of, upload


def run(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    environment = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT / "services"), str(ROOT / "clients/python")]),
        **env,
    }
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, env=environment, timeout=120)


def test_a_second_server_on_one_data_directory_refuses_to_start_and_the_first_keeps_it(tmp_path: Path) -> None:
    first, _ = start("foretell.runtime", tmp_path)
    try:
        second = run("-m", "foretell.cli", "serve", "--port", "0", "--data-dir", str(tmp_path))
        assert second.returncode != 0
        assert second.stderr.strip().splitlines()[-1] == (
            f"cannot start: another Foretell server uses data directory {tmp_path.resolve()} "
            f"(pid {first.pid}) for the dataset service"
        )
        assert "Traceback" not in second.stderr + second.stdout
        # One service alone on the same directory is refused as well: it would recover the same jobs.
        alone = run("-m", "foretell.training", FORETELL_PORT="0", FORETELL_DATA_DIR=str(tmp_path))
        assert alone.returncode != 0 and "for the training service" in alone.stderr
    finally:
        assert stopped(first) == 0
    # Released on stop: the directory can be served again.
    again, _ = start("foretell.runtime", tmp_path)
    assert stopped(again) == 0


def test_the_lock_is_per_service_and_released_by_stop(tmp_path: Path) -> None:
    settings = Settings(port=0, data_dir=tmp_path / "data")
    # Services run apart on one SQLite directory (each recovers only its own jobs) still start.
    apart = [create_server(settings, [service]) for service in ("dataset", "training", "recommendation")]
    try:
        with pytest.raises(SystemExit, match="for the dataset service"):
            create_server(settings)
    finally:
        for app in apart:
            app.stop(None)
    app = create_server(settings)  # a refused start took nothing; stop released everything
    app.stop(None)


def test_postgresql_and_in_memory_databases_take_no_lock() -> None:
    assert lock_for("postgresql+psycopg://u:p@db/foretell", ["dataset"]) is None
    assert lock_for("sqlite://", ["dataset"]) is None


@pytest.mark.parametrize("command", [("-m", "foretell.runtime"), ("-m", "foretell.cli", "serve")])
def test_a_busy_port_is_a_one_line_error(command: tuple[str, ...], tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run(*command, FORETELL_PORT=str(port), FORETELL_DATA_DIR=str(tmp_path))
    assert result.returncode != 0
    assert result.stderr.strip().splitlines()[-1] == f"cannot start: port {port} is in use"
    assert "Traceback" not in result.stderr + result.stdout
    # Nothing was recovered or locked on the way: the directory starts at once afterwards.
    create_server(Settings(port=0, data_dir=tmp_path)).stop(None)


def test_a_service_started_apart_on_the_directory_leaves_the_others_leases(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Services apart on one SQLite directory: a starting process clears only the leases of its own services (the
    ones its lock makes it alone with). Clearing all let the dataset process's own sweep fail its running import."""
    real = BatchValidator.convert

    def slowly(self: BatchValidator, *args: object, **kwargs: object) -> object:
        time.sleep(0.15)  # about 20 blocks: the import outlives a few sweeps of the leases
        return real(self, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(BatchValidator, "convert", slowly)
    monkeypatch.setattr(importer, "BLOCK_BYTES", 2048)
    settings = Settings(port=0, data_dir=tmp_path / "data", lease_seconds=1.0)
    dataset = create_server(settings, ["dataset"])
    dataset.start()
    training = None
    try:
        stubs = stubs_of(Client(f"127.0.0.1:{dataset.port}", timeout=30), dataset)
        group = make_recommendation_group(stubs, "shop")
        running = upload(stubs, group.interactions, interactions_csv(1000, seed=3))
        training = create_server(settings, ["training"])
        done = stubs.wait(running, timeout=60)
        assert not done.HasField("error"), done.error
    finally:
        if training is not None:
            training.stop(None)
        dataset.stop(None)
