"""The protos pass buf lint/format, do not break the previous commit, and the generated code is fresh."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PROTOS = ROOT / "protos"


def _buf() -> str:
    found = shutil.which("buf")
    if not found:
        pytest.fail("buf not found: pip install -e '.[dev]' (buf-bin)")
    return found


def run(*args: str, cwd: Path = PROTOS) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(args), cwd=cwd, capture_output=True, text=True, timeout=120)


def test_buf_lint() -> None:
    result = run(_buf(), "lint")
    assert result.returncode == 0, result.stdout + result.stderr


def test_buf_format() -> None:
    result = run(_buf(), "format", "-d", "--exit-code", "--path", "foretell")
    assert result.returncode == 0, result.stdout + result.stderr


def test_buf_breaking_against_previous_commit() -> None:
    if run("git", "rev-parse", "--verify", "HEAD~1", cwd=ROOT).returncode != 0:
        pytest.skip("no previous commit to compare against")
    if run("git", "cat-file", "-e", "HEAD~1:protos/buf.yaml", cwd=ROOT).returncode != 0:
        pytest.skip("the previous commit has no protos/")
    result = run(_buf(), "breaking", "--against", f"{ROOT}/.git#ref=HEAD~1,subdir=protos")
    assert result.returncode == 0, result.stdout + result.stderr


def test_generated_code_is_up_to_date() -> None:
    result = run(sys.executable, str(ROOT / "clients/python/generate.py"), "--check", cwd=ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
