"""Request bodies for the benchmark workloads, built from the wine CSV (W4: the digits).

Built with tritonclient's copy of the V2 protos (a third-party definition of the same wire
format), so the bytes do not depend on Arrowsmith's own code. Never import
`arrowsmith._proto` in a process that imports this module: both register
`grpc_service.proto` in protobuf's default pool and clash.

Run as a script to write gRPC-framed W1 and W2 bodies for h2load's `-d`.
"""

from __future__ import annotations

import argparse
import csv
import struct
from pathlib import Path

import numpy as np
from digits_model import FEATURES, INPUT_NAME, digits_images
from digits_model import MODEL_NAME as DIGITS_MODEL_NAME
from tritonclient.grpc import service_pb2 as pb

WINE_CSV = Path(__file__).resolve().parent.parent / "examples" / "wine" / "winequality-red.csv"
MODEL_NAME = "wine"
W2_ROWS = 4096


def wine_features(csv_path: Path = WINE_CSV) -> tuple[list[str], np.ndarray]:
    """Feature names (the CSV header without "quality") and their rows as float32."""
    with csv_path.open(newline="") as f:
        rows = list(csv.reader(f, delimiter=";"))
    header = rows[0]
    keep = [i for i, name in enumerate(header) if name != "quality"]
    values = np.array([[float(row[i]) for i in keep] for row in rows[1:]], dtype=np.float32)
    return [header[i] for i in keep], values


def w1_request() -> pb.ModelInferRequest:
    """W1: the first CSV row, one FP32 [1, 1] input per feature in typed `contents`."""
    names, values = wine_features()
    request = pb.ModelInferRequest(model_name=MODEL_NAME)
    for name, value in zip(names, values[0], strict=True):
        tensor = request.inputs.add(name=name, datatype="FP32", shape=[1, 1])
        tensor.contents.fp32_contents.append(float(value))
    return request


def w1pd_request() -> pb.ModelInferRequest:
    """W1pd: W1's row as MLServer's codecs send a DataFrame (`PandasCodec.encode_request`
    of one row of float32 columns, then its gRPC converter): W1's inputs, and the request's
    parameter `content_type: "pd"`. Numeric columns get no parameters of their own (only
    BYTES columns do), so these are W1's bytes with that one parameter added."""
    request = w1_request()
    request.parameters["content_type"].string_param = "pd"
    return request


def w2_request(rows: int = W2_ROWS) -> pb.ModelInferRequest:
    """W2: `rows` rows (the CSV repeated), one FP32 [rows, 1] input per feature, raw."""
    names, values = wine_features()
    tiled = np.resize(values, (rows, values.shape[1]))
    request = pb.ModelInferRequest(model_name=MODEL_NAME)
    for column, name in enumerate(names):
        request.inputs.add(name=name, datatype="FP32", shape=[rows, 1])
        request.raw_input_contents.append(np.ascontiguousarray(tiled[:, column]).tobytes())
    return request


def w4_image(index: int = 3) -> np.ndarray:
    """W4's image: a bundled 8x8 digit (by default the first 3, so that a server answering
    zeros cannot pass for right), uint8 [1, 64]."""
    images, _labels = digits_images()
    return images[index : index + 1]


def w4_request() -> pb.ModelInferRequest:
    """W4: one digits image for the tensor-signature model, one UINT8 [1, 64] input, raw."""
    request = pb.ModelInferRequest(model_name=DIGITS_MODEL_NAME)
    request.inputs.add(name=INPUT_NAME, datatype="UINT8", shape=[1, FEATURES])
    request.raw_input_contents.append(np.ascontiguousarray(w4_image()).tobytes())
    return request


def grpc_frame(message: bytes) -> bytes:
    """One gRPC length-prefixed message: uncompressed flag, big-endian length, payload."""
    return struct.pack(">BI", 0, len(message)) + message


def write_bodies(out_dir: Path) -> dict[str, Path]:
    """Writes `w1.grpc` and `w2.grpc` (framed) into `out_dir`; returns them by workload."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {}
    for workload, request in (("W1", w1_request()), ("W2", w2_request())):
        path = out_dir / f"{workload.lower()}.grpc"
        path.write_bytes(grpc_frame(request.SerializeToString()))
        paths[workload] = path
    return paths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--out", type=Path, default=Path(__file__).resolve().parent / "results" / "bodies"
    )
    args = parser.parse_args()
    for workload, path in write_bodies(args.out).items():
        print(f"{workload}: {path} ({path.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
