"""The protos pass buf lint/format, no change to them on main broke the contract, and the generated code is fresh."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.tooling

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


# Commits whose breaking change to the contract was deliberate (full hash -> why). A break within foretell.v1
# breaks every client that was generated before it: prefer a new field, RPC or package version to a line here.
DELIBERATE_BREAKS: dict[str, str] = {}


def _git(*args: str) -> str:
    result = run("git", *args, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def _breaks(against: str, input_: str = ".") -> str:
    """buf breaking's findings for protos/ as in `input_` (the working tree, or a .git ref) against a .git ref."""
    result = run(_buf(), "breaking", input_, "--against", f"{ROOT}/.git#ref={against},subdir=protos")
    return "" if result.returncode == 0 else result.stdout + result.stderr


def test_no_change_to_the_protos_on_main_broke_the_contract() -> None:
    """Every commit of main's history (first parents: the branch point of whatever was merged, and every commit
    since) that changed protos/ is compatible with the commit before it, so a breaking change cannot hide behind
    later commits, as it could when only HEAD~1 was compared."""
    if _git("rev-parse", "--is-shallow-repository") == "true":
        pytest.fail("a shallow clone lacks the history this check reads: clone with full history")
    changes = _git("log", "--first-parent", "--format=%H", "--", "protos/").split()
    assert changes, "no commit changed protos/"
    found = {}
    for commit in changes:
        if (
            commit in DELIBERATE_BREAKS
            or run("git", "cat-file", "-e", f"{commit}~1:protos/buf.yaml", cwd=ROOT).returncode
        ):
            continue  # the first commit with protos, or a deliberate break
        findings = _breaks(_git("rev-parse", f"{commit}~1"), f"{ROOT}/.git#ref={commit},subdir=protos")
        if findings:
            found[commit[:12]] = findings
    assert not found, "commits that broke the contract (fix, or list in DELIBERATE_BREAKS with why):\n" + "\n".join(
        f"{commit}: {findings}" for commit, findings in found.items()
    )


def test_uncommitted_protos_do_not_break_the_contract() -> None:
    assert not _breaks(_git("rev-parse", "HEAD")), _breaks(_git("rev-parse", "HEAD"))


def test_generated_code_is_up_to_date() -> None:
    result = run(sys.executable, str(ROOT / "clients/python/generate.py"), "--check", cwd=ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
