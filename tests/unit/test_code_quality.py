"""ruff and mypy stay clean: the project's own checks, run with the tests so CI enforces them."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.tooling

ROOT = Path(__file__).resolve().parents[2]


def check(*args: str) -> None:
    result = subprocess.run([sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]


def test_ruff() -> None:
    check("ruff", "check", "services", "clients/python", "tests", "bench")


def test_mypy() -> None:
    check("mypy", "services", "clients/python/foretell/client")
