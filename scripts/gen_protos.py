"""Regenerate the ``yrd`` package (generated protobuf/gRPC code) from ``proto/``.

Run through ``make proto``. The output is committed; ``tests/test_proto_drift.py``
regenerates into a temporary folder and fails when it differs from the tree.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path

from grpc_tools import protoc  # type: ignore[import-untyped]  # grpcio-tools ships no stubs

ROOT = Path(__file__).resolve().parent.parent
PROTO_DIR = ROOT / "proto"
PACKAGE = "yrd"


def generate(out_dir: Path) -> None:
    """Write the generated package for every .proto under ``proto/`` to ``out_dir``."""
    import grpc_tools

    # The mypy-protobuf plug-ins live beside this interpreter (the venv's bin/).
    bin_dir = str(Path(sys.executable).parent)
    os.environ["PATH"] = bin_dir + os.pathsep + os.environ.get("PATH", "")

    include = Path(grpc_tools.__file__).parent / "_proto"
    sources = sorted(str(p.relative_to(PROTO_DIR)) for p in PROTO_DIR.rglob("*.proto"))
    args = [
        "protoc",
        f"-I{PROTO_DIR}",
        f"-I{include}",
        f"--python_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        f"--mypy_out=quiet:{out_dir}",
        f"--mypy_grpc_out=quiet:{out_dir}",
        *sources,
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    # Regular packages (not namespace packages) so mypy and setuptools see them.
    for folder in [out_dir / PACKAGE, *(p for p in (out_dir / PACKAGE).rglob("*") if p.is_dir())]:
        init = folder / "__init__.py"
        if not init.exists():
            init.write_text("")
    marker = out_dir / PACKAGE / "py.typed"
    marker.write_text("")


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        generate(Path(tmp))
        target = ROOT / PACKAGE
        if target.exists():
            shutil.rmtree(target)
        shutil.copytree(Path(tmp) / PACKAGE, target)
    print(f"generated {PACKAGE}/ from {PROTO_DIR.relative_to(ROOT)}/", file=sys.stderr)


if __name__ == "__main__":
    main()
