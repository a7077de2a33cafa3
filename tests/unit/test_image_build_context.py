"""The image's build steps without Docker (none can run here): the files k8s/Dockerfile.dockerignore lets into
the build context install as a package that serves, runs a worker's imports and migrates a database from
outside the source tree, i.e. nothing the image needs lives in a file the context leaves out."""

from __future__ import annotations

import fnmatch
import os
import shutil
import site
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.tooling

ROOT = Path(__file__).resolve().parents[2]


def build_context(destination: Path) -> list[str]:
    """Copies what `docker build -f k8s/Dockerfile .` sends (dockerignore rules: last match wins)."""
    rules = [
        line.strip()
        for line in (ROOT / "k8s" / "Dockerfile.dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]

    def excluded(relative: str) -> bool:
        verdict = False
        for rule in rules:
            negate, pattern = rule.startswith("!"), rule.removeprefix("!")
            parts = relative.split("/")
            # A pattern matches the path or any of its parent directories; "**/" matches any depth.
            candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
            if any(fnmatch.fnmatch(c, pattern) or fnmatch.fnmatch(c, pattern.removeprefix("**/")) for c in candidates):
                verdict = not negate
        return verdict

    copied = []
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    for relative in tracked.splitlines():
        if not excluded(relative) and (ROOT / relative).is_file():
            target = destination / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / relative, target)
            copied.append(relative)
    return copied


def test_the_build_context_installs_a_package_that_serves_trains_and_migrates(tmp_path: Path) -> None:
    context = tmp_path / "context"
    copied = build_context(context)
    assert "pyproject.toml" in copied and not any(p.startswith(("tests/", "bench/", "docs/", "k8s/")) for p in copied)

    # The Dockerfile's `pip install .`, into a fresh environment. The heavy dependencies come from the environment
    # running this test, wherever that is (system interpreter or a virtualenv): its site directories go on the new
    # environment's path as plain entries, after the environment's own. Their .pth files are not run, so this
    # environment's editable install of the checkout stays out.
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = str(venv / "bin" / "python")
    own = subprocess.run(
        [python, "-c", "import site; print(site.getsitepackages()[0])"], capture_output=True, text=True, check=True
    ).stdout.strip()
    (Path(own) / "dependencies-of-the-test-environment.pth").write_text("\n".join(_site_directories()) + "\n")
    installed = subprocess.run(
        [python, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", str(context)],
        capture_output=True,
        text=True,
    )
    assert installed.returncode == 0, installed.stdout + installed.stderr
    # Run from elsewhere, without the source tree on the path: only the installed package is importable.
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["FORETELL_DATA_DIR"] = str(tmp_path / "data")
    work = tmp_path / "elsewhere"
    work.mkdir()
    probe = (
        "import foretell.runtime.server, foretell.training.worker, foretell.migrations, torch;"
        "print(foretell.runtime.server.__file__)"
    )
    where = subprocess.run([python, "-c", probe], cwd=work, env=env, capture_output=True, text=True)
    assert where.returncode == 0, where.stderr
    assert str(venv) in where.stdout, where.stdout  # the installed copy, not the checkout
    migrated = subprocess.run(
        [str(venv / "bin" / "foretell"), "db", "upgrade"], cwd=work, env=env, capture_output=True, text=True
    )
    assert migrated.returncode == 0, migrated.stderr
    current = subprocess.run(
        [str(venv / "bin" / "foretell"), "db", "current"], cwd=work, env=env, capture_output=True, text=True
    )
    assert current.returncode == 0 and "head" in current.stdout + current.stderr, current.stdout + current.stderr


def _site_directories() -> list[str]:
    """Where this interpreter finds installed distributions (site-packages, dist-packages, the user site)."""
    found = [*site.getsitepackages(), site.getusersitepackages()] if site.ENABLE_USER_SITE else site.getsitepackages()
    return [d for d in dict.fromkeys(found) if Path(d).is_dir()]
