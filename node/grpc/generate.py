"""Regenerate the Python modules for `grpc_predict_v2.proto`: `python -m node.grpc.generate`.

The generated modules are committed, so neither a node nor an install runs protoc
(grpcio-tools is a development dependency only, in the `test` extra);
tests/node/grpc/test_generated.py regenerates them into a temporary directory and
fails when the committed ones no longer match the .proto.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
REPO_ROOT = PACKAGE_DIR.parent.parent
PROTO = PACKAGE_DIR / "grpc_predict_v2.proto"
GENERATED = ("grpc_predict_v2_pb2.py", "grpc_predict_v2_pb2.pyi", "grpc_predict_v2_pb2_grpc.py")


def generate(out_dir: Path) -> list[Path]:
    """Run protoc on the .proto; write the modules into `out_dir` (which gets `node/grpc/...`)."""
    from grpc_tools import protoc  # a development dependency: imported only here

    with tempfile.TemporaryDirectory() as scratch:
        # The proto is compiled by its path from the repository root, so the generated
        # service module imports `node.grpc.grpc_predict_v2_pb2`, as the package does.
        args = [
            "protoc",
            f"-I{REPO_ROOT}",
            f"--python_out={scratch}",
            f"--pyi_out={scratch}",
            f"--grpc_python_out={scratch}",
            str(PROTO.relative_to(REPO_ROOT)),
        ]
        if protoc.main(args) != 0:
            raise RuntimeError(f"protoc failed on {PROTO}")
        out_dir.mkdir(parents=True, exist_ok=True)
        written = []
        for name in GENERATED:
            target = out_dir / name
            shutil.copyfile(Path(scratch) / "node" / "grpc" / name, target)
            written.append(target)
        return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=PACKAGE_DIR, help="directory to write (default: here)")
    args = parser.parse_args(argv)
    for path in generate(args.out):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
