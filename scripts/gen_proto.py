"""Regenerate the Python code of proto/ into flux/ (or check it for drift).

    python scripts/gen_proto.py           # rewrite flux/v1/*_pb2*.py
    python scripts/gen_proto.py --check   # exit 1 if the committed code differs

The generated package is `flux` (from the proto package `flux.v1`); nothing in
it is edited by hand. A proto file without a service gets no `*_pb2_grpc.py`: protoc's gRPC
plugin writes one anyway, holding only a grpcio version check, and it is removed.
"""

from __future__ import annotations

import argparse
import difflib
import pathlib
import sys
import tempfile

import grpc_tools
from grpc_tools import protoc

ROOT = pathlib.Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "proto"
INIT_TEXT = '"""Generated protobuf code for FLUX Gateway (from proto/). Do not edit."""\n'


def _generate(out: pathlib.Path) -> None:
    protos = sorted(str(p.relative_to(PROTO_ROOT)) for p in PROTO_ROOT.rglob("*.proto"))
    well_known = pathlib.Path(grpc_tools.__file__).parent / "_proto"
    args = [
        "protoc",
        f"-I{PROTO_ROOT}",
        f"-I{well_known}",
        f"--python_out={out}",
        f"--pyi_out={out}",
        f"--grpc_python_out={out}",
        *protos,
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    for grpc_file in (out / "flux").rglob("*_pb2_grpc.py"):
        if "\nclass " not in grpc_file.read_text():  # no service in that proto file: nothing to call
            grpc_file.unlink()
    # Only the packages protoc wrote (under out/flux): `out` may be the repository root, where
    # .venv holds other projects' *_pb2.py files whose __init__.py must not be touched.
    for pkg in {p.parent for p in (out / "flux").rglob("*_pb2.py")} | {out / "flux"}:
        (pkg / "__init__.py").write_text(INIT_TEXT)


def _files(base: pathlib.Path) -> dict[str, str]:
    return {
        str(p.relative_to(base)): p.read_text()
        for p in sorted((base / "flux").rglob("*"))
        if p.is_file() and p.suffix in {".py", ".pyi"}
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail when flux/ drifts from proto/")
    args = parser.parse_args()
    if not args.check:
        _generate(ROOT)
        print(f"generated {len(_files(ROOT))} files under flux/")
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        fresh = pathlib.Path(tmp)
        _generate(fresh)
        want, have = _files(fresh), _files(ROOT)
    drift = False
    for name in sorted(set(want) | set(have)):
        if want.get(name) != have.get(name):
            drift = True
            print(f"drift: {name}", file=sys.stderr)
            diff = difflib.unified_diff(
                have.get(name, "").splitlines(), want.get(name, "").splitlines(), lineterm="", n=1
            )
            for line in list(diff)[:20]:
                print("   ", line, file=sys.stderr)
    if drift:
        print("generated code is stale: run `python scripts/gen_proto.py` and commit", file=sys.stderr)
        return 1
    print("generated code matches proto/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
