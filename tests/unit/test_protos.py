"""The committed Python messages are exactly what `make protos` generates from
protos/grpc_service.proto, so the wire contract has one source."""

import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[2]
GENERATED = ROOT / "python" / "arrowsmith" / "_proto"


def test_generated_messages_are_up_to_date(tmp_path: pathlib.Path) -> None:
    subprocess.run(
        [
            sys.executable,
            "-m",
            "grpc_tools.protoc",
            f"-I{ROOT / 'protos'}",
            f"--python_out={tmp_path}",
            f"--pyi_out={tmp_path}",
            str(ROOT / "protos" / "grpc_service.proto"),
        ],
        check=True,
    )
    for name in ("grpc_service_pb2.py", "grpc_service_pb2.pyi"):
        assert (tmp_path / name).read_bytes() == (GENERATED / name).read_bytes(), (
            f"{name} is stale: run `make protos`"
        )
