#!/usr/bin/env python3
"""Generate the Python gRPC code in corral/v1/ from protos/corral/v1/*.proto.

Usage: python scripts/gen_protos.py [--check]

The proto tree mirrors the Python package tree (protos/corral/v1 -> corral/v1),
so the generated absolute imports (`from corral.v1 import common_pb2`) resolve
without patching. `--check` regenerates into a temporary directory and exits 1
when the committed files differ (CI uses it).
"""

from __future__ import annotations

import filecmp
import sys
import tempfile
from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "protos"
PACKAGE_DIR = Path("corral") / "v1"


def generate(out_dir: Path) -> list[Path]:
    protos = sorted((PROTO_ROOT / PACKAGE_DIR).glob("*.proto"))
    well_known = Path(protoc.__file__).parent / "_proto"
    args = [
        "grpc_tools.protoc",
        f"-I{PROTO_ROOT}",
        f"-I{well_known}",
        f"--python_out={out_dir}",
        f"--pyi_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        *(str(p.relative_to(PROTO_ROOT)) for p in protos),
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    init = out_dir / PACKAGE_DIR / "__init__.py"
    init.write_text('"""Generated gRPC code for package corral.v1 (scripts/gen_protos.py)."""\n')
    return sorted(p.relative_to(out_dir) for p in (out_dir / PACKAGE_DIR).iterdir() if p.is_file())


def main() -> int:
    check = "--check" in sys.argv[1:]
    if not check:
        for old in (ROOT / PACKAGE_DIR).glob("*_pb2*"):
            old.unlink()
        files = generate(ROOT)
        print(f"generated {len(files)} files in {PACKAGE_DIR}")
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        files = generate(Path(tmp))
        committed = sorted(
            p.relative_to(ROOT) for p in (ROOT / PACKAGE_DIR).iterdir() if p.is_file() and p.suffix in {".py", ".pyi"}
        )
        stale = [f for f in files if not (ROOT / f).exists() or not filecmp.cmp(Path(tmp) / f, ROOT / f, shallow=False)]
        extra = [f for f in committed if f not in files]
        if stale or extra:
            print("generated gRPC code is stale; run: python scripts/gen_protos.py", file=sys.stderr)
            for f in stale + extra:
                print(f"  {f}", file=sys.stderr)
            return 1
    print("generated gRPC code is up to date")
    return 0


if __name__ == "__main__":
    sys.exit(main())
