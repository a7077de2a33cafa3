"""Shared fixtures: a real server on port 0 over a real SQLite file, real stubs.

tests/integration/conftest.py overrides `settings` to run the same tests on PostgreSQL.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from foretell.core.settings import Settings

from support import Stubs, start_stubs


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(port=0, data_dir=tmp_path / "data", import_batch_rows=50)


@pytest.fixture
def stubs(settings: Settings) -> Iterator[Stubs]:
    s = start_stubs(settings)
    yield s
    s.channel.close()
    s.app.stop(None)
