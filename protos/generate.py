"""Generate the Python stubs (messages, typed .pyi, grpc stubs) for protos/tripmesh/v1.

Used by `make protos`, by setup.py at build time (so a plain `pip install .` ships them), and by the
staleness check in tests/contract/test_protos.py. The generated files are git-ignored and never edited.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

PROTO_ROOT = Path(__file__).resolve().parent
PACKAGE_DIR = PROTO_ROOT / "tripmesh" / "v1"


def _plugin(name: str) -> str:
    candidates = [Path(sys.executable).parent / name, Path(shutil.which(name) or "")]
    for candidate in candidates:
        if candidate.name and candidate.is_file():
            return str(candidate)
    raise RuntimeError(f"{name} not found: install mypy-protobuf")


def generate(out_dir: Path = PROTO_ROOT) -> list[Path]:
    """Run protoc on every proto of the package into out_dir; return the files written."""
    import grpc_tools
    from grpc_tools import protoc

    protos = sorted(str(p.relative_to(PROTO_ROOT)) for p in PACKAGE_DIR.glob("*.proto"))
    include = str(Path(grpc_tools.__file__).parent / "_proto")
    out_dir.mkdir(parents=True, exist_ok=True)
    args = [
        "grpc_tools.protoc",
        f"-I{PROTO_ROOT}",
        f"-I{include}",
        f"--plugin=protoc-gen-mypy={_plugin('protoc-gen-mypy')}",
        f"--plugin=protoc-gen-mypy_grpc={_plugin('protoc-gen-mypy_grpc')}",
        f"--python_out={out_dir}",
        f"--mypy_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        f"--mypy_grpc_out={out_dir}",
        *protos,
    ]
    cwd = os.getcwd()
    os.chdir(PROTO_ROOT)
    try:
        if protoc.main(args) != 0:
            raise RuntimeError("protoc failed")
    finally:
        os.chdir(cwd)
    return sorted((out_dir / "tripmesh" / "v1").glob("*_pb2*.py*"))


if __name__ == "__main__":
    for path in generate():
        print(path.relative_to(PROTO_ROOT))
