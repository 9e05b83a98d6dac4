"""`arrowsmith bench`: load-test a running V2 server with the compiled load generator
(`arrowsmith-bench`, built from rust/loadgen), so Python is never in the measured path.

The request is made here, once: from a V2 JSON request file (the REST `infer` body), or
generated from the model's own metadata (random values of the right datatypes and shapes).
Results print as a table and can be written as JSON and drawn as a PNG (throughput against
p99 latency per load level)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from arrowsmith.tensors import NUMPY_DTYPES, pack_bytes


def find_binary() -> Path:
    """$ARROWSMITH_BENCH_BIN, else `arrowsmith-bench` on PATH, else the source tree's build."""
    explicit = os.environ.get("ARROWSMITH_BENCH_BIN")
    if explicit:
        return Path(explicit)
    on_path = shutil.which("arrowsmith-bench")
    if on_path:
        return Path(on_path)
    built = Path(__file__).resolve().parents[2] / "rust" / "target" / "release" / "arrowsmith-bench"
    if built.exists():
        return built
    raise FileNotFoundError(
        "arrowsmith-bench not found: run `make loadgen` or set ARROWSMITH_BENCH_BIN"
    )


def _raw(datatype: str, values: np.ndarray[Any, Any]) -> bytes:
    """Raw V2 contents: little-endian values, BYTES each behind a 4-byte length."""
    if datatype == "BYTES":
        return pack_bytes(
            value if isinstance(value, bytes) else str(value).encode() for value in values.flat
        )
    return np.asarray(values, dtype=NUMPY_DTYPES[datatype]).tobytes()


def _random_values(
    datatype: str, shape: list[int], rng: np.random.Generator
) -> np.ndarray[Any, Any]:
    if datatype == "BYTES":
        letters = np.array(list("abcdefghijklmnopqrstuvwxyz"))
        words = ["".join(rng.choice(letters, 8)) for _ in range(int(np.prod(shape)))]
        return np.array(words, dtype=object).reshape(shape)
    if datatype == "BOOL":
        return rng.random(shape) < 0.5
    dtype = NUMPY_DTYPES[datatype]
    if dtype.kind == "f":
        return rng.random(shape).astype(dtype)
    return rng.integers(0, 100, size=shape).astype(dtype)


def request_from_metadata(target: str, model: str, rows: int, seed: int) -> bytes:
    """A ModelInferRequest of `rows` rows of random data shaped by the model's metadata."""
    import grpc

    from arrowsmith._proto import grpc_service_pb2 as pb

    with grpc.insecure_channel(target) as channel:
        ask = channel.unary_unary(
            "/inference.GRPCInferenceService/ModelMetadata",
            request_serializer=pb.ModelMetadataRequest.SerializeToString,
            response_deserializer=pb.ModelMetadataResponse.FromString,
        )
        try:
            metadata = ask(pb.ModelMetadataRequest(name=model), timeout=10)
        except grpc.RpcError as error:
            raise ValueError(f"metadata of '{model}' from {target}: {error.details()}") from None
    rng = np.random.default_rng(seed)
    request = pb.ModelInferRequest(model_name=model)
    for tensor in metadata.inputs:
        shape = [rows if i == 0 and d == -1 else max(d, 1) for i, d in enumerate(tensor.shape)]
        request.inputs.add(name=tensor.name, datatype=tensor.datatype, shape=shape)
        request.raw_input_contents.append(
            _raw(tensor.datatype, _random_values(tensor.datatype, shape, rng))
        )
    return bytes(request.SerializeToString())


def request_from_json(path: Path, model: str) -> bytes:
    """A ModelInferRequest from a V2 REST infer body (`inputs` with name, datatype, shape,
    data; optional `id`, `parameters` of text, numbers and booleans, `outputs`)."""
    from arrowsmith._proto import grpc_service_pb2 as pb

    body = json.loads(path.read_text())
    request = pb.ModelInferRequest(model_name=model, id=str(body.get("id", "")))
    for name, value in body.get("parameters", {}).items():
        parameter = request.parameters[name]
        if isinstance(value, bool):
            parameter.bool_param = value
        elif isinstance(value, int):
            parameter.int64_param = value
        elif isinstance(value, float):
            parameter.double_param = value
        else:
            parameter.string_param = str(value)
    for tensor in body["inputs"]:
        datatype, shape = tensor["datatype"], [int(d) for d in tensor["shape"]]
        dtype = object if datatype == "BYTES" else NUMPY_DTYPES[datatype]
        values: np.ndarray[Any, Any] = np.array(tensor["data"], dtype=dtype)
        request.inputs.add(name=tensor["name"], datatype=datatype, shape=shape)
        request.raw_input_contents.append(_raw(datatype, values.reshape(shape)))
    for output in body.get("outputs", []):
        request.outputs.add(name=output["name"])
    return bytes(request.SerializeToString())


def plot(results: dict[str, Any], path: Path) -> None:
    """Throughput against p99 latency, one point per load level."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    levels = results["levels"]
    figure, axes = plt.subplots(figsize=(7, 4.5))
    p99 = [level["p99_ms"] for level in levels]
    throughput = [level["throughput_rps"] for level in levels]
    axes.plot(p99, throughput, marker="o")
    for level, x, y in zip(levels, p99, throughput, strict=True):
        label = f"{'c' if level['mode'] == 'closed' else 'rate '}{level['level']:g}"
        axes.annotate(label, (x, y), textcoords="offset points", xytext=(5, 5))
    axes.set_xlabel("p99 latency (ms)")
    axes.set_ylabel("throughput (requests/s)")
    axes.set_title(f"{results['target']}: throughput vs p99")
    axes.grid(True, alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def run(
    target: str,
    body: bytes,
    generator_args: list[str],
    json_path: Path | None,
    png_path: Path | None,
) -> int:
    """Runs the load generator; its table goes to stdout. Returns its exit status."""
    with tempfile.TemporaryDirectory() as scratch:
        body_path = Path(scratch) / "request.body"
        body_path.write_bytes(body)
        results_path = json_path or Path(scratch) / "results.json"
        command = [str(find_binary()), "--target", target, "--body", str(body_path)]
        status = subprocess.run([*command, *generator_args, "--json", str(results_path)]).returncode
        if status == 0 and png_path is not None:
            plot(json.loads(results_path.read_text()), png_path)
    return status
