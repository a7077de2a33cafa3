"""Regenerate the Python code for protos/foretell/v1 into clients/python/foretell/v1.

Run: python clients/python/generate.py [--check]

The generated package's import path equals the proto package (foretell.v1), so the
generated imports need no rewriting. google/api, google/rpc and google/longrunning
come from googleapis-common-protos at run time; only foretell/v1 is generated here.
With --check, generation goes to a temporary folder and the command fails if it
differs from what is committed (CI runs this).
"""

from __future__ import annotations

import argparse
import filecmp
import shutil
import sys
import sysconfig
import tempfile
from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parents[2]
PROTOS = ROOT / "protos"
PACKAGE = Path("foretell") / "v1"
OUT = Path(__file__).resolve().parent


def _plugin(name: str) -> str:
    """Path of a protoc plugin installed next to this interpreter (mypy-protobuf)."""
    for folder in (Path(sysconfig.get_path("scripts")), Path(sys.executable).parent):
        candidate = folder / name
        if candidate.exists():
            return str(candidate)
    found = shutil.which(name)
    if found is None:
        raise SystemExit(f"{name} not found: pip install mypy-protobuf")
    return found


def generate(out: Path) -> None:
    sources = sorted(str(p.relative_to(PROTOS)) for p in (PROTOS / PACKAGE).glob("*.proto"))
    target = out / PACKAGE
    target.mkdir(parents=True, exist_ok=True)
    args = [
        "grpc_tools.protoc",
        f"-I{PROTOS}",
        f"-I{PROTOS / 'third_party'}",
        f"-I{Path(protoc.__file__).parent / '_proto'}",
        f"--plugin=protoc-gen-mypy={_plugin('protoc-gen-mypy')}",
        f"--plugin=protoc-gen-mypy_grpc={_plugin('protoc-gen-mypy_grpc')}",
        f"--python_out={out}",
        f"--grpc_python_out={out}",
        f"--mypy_out={out}",
        f"--mypy_grpc_out={out}",
        *sources,
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    (target / "__init__.py").write_text('"""Generated from protos/foretell/v1 by clients/python/generate.py."""\n')
    (target / "py.typed").write_text("")


def _differences(a: Path, b: Path) -> list[str]:
    cmp = filecmp.dircmp(a, b, ignore=["__pycache__"])
    out = [*cmp.left_only, *cmp.right_only]
    _, mismatch, errors = filecmp.cmpfiles(a, b, cmp.common_files, shallow=False)
    return sorted(out + mismatch + errors)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="fail if the committed code is stale")
    check = parser.parse_args().check
    if not check:
        shutil.rmtree(OUT / PACKAGE, ignore_errors=True)
        generate(OUT)
        print(f"generated {OUT / PACKAGE}")
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        generate(Path(tmp))
        stale = _differences(Path(tmp) / PACKAGE, OUT / PACKAGE)
    if stale:
        print("generated code is stale; run python clients/python/generate.py:", ", ".join(stale))
        return 1
    print("generated code is up to date")
    return 0


if __name__ == "__main__":
    sys.exit(main())
