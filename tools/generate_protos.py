"""Generates Python, gRPC and mypy stubs from protos/ into an output root.

The output root mirrors the proto package (`partita/v1/...`), so the generated imports
(`from partita.v1 import run_pb2`) work as they are: no import rewriting.
"""

from __future__ import annotations

import sys
from importlib import resources
from pathlib import Path

from grpc_tools import protoc

REPO = Path(__file__).resolve().parent.parent
PROTO_ROOT = REPO / "protos"


def generate(out_root: Path) -> None:
    proto_files = sorted(str(p.relative_to(PROTO_ROOT)) for p in (PROTO_ROOT / "partita").rglob("*.proto"))
    well_known = str(resources.files("grpc_tools") / "_proto")
    # mypy-protobuf's plugins live beside this interpreter; name them so PATH does not matter.
    scripts = Path(sys.executable).parent
    out_root.mkdir(parents=True, exist_ok=True)
    args = [
        "grpc_tools.protoc",
        f"-I{PROTO_ROOT}",
        f"-I{well_known}",
        f"--plugin=protoc-gen-mypy={scripts / 'protoc-gen-mypy'}",
        f"--plugin=protoc-gen-mypy_grpc={scripts / 'protoc-gen-mypy_grpc'}",
        f"--python_out={out_root}",
        f"--grpc_python_out={out_root}",
        f"--mypy_out={out_root}",
        f"--mypy_grpc_out={out_root}",
        *proto_files,
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    for package_dir in {(out_root / f).parent for f in proto_files} | {out_root / "partita"}:
        (package_dir / "__init__.py").touch()


if __name__ == "__main__":
    generate(Path(sys.argv[1]) if len(sys.argv) > 1 else REPO / "generated")
