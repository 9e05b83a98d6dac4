"""The control: Arrowsmith's design (ARCHITECTURE.md §7) in pure Python, no Rust.

A sync grpcio server whose handler threads parse each ModelInfer with Python protobuf, turn
it into a float64 row block and wait; one runner thread takes everything queued, stacks the
blocks with numpy, calls the sklearn estimator once per batch and encodes each answer.
Arrowsmith over this server is what the native path adds; this server over MLServer is
what bypassing MLflow's per-call wrapper and batching alone are worth.

Prints `listening on PORT` (flushed) once the model is loaded, so `--port 0` works.
"""

from __future__ import annotations

import argparse
import queue
import threading
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import mlflow.models
import mlflow.sklearn
import numpy as np
from floor_server import OPTIONS, SERVICE
from tritonclient.grpc import service_pb2 as pb

DTYPES = {"FP32": np.float32, "FP64": np.float64}
CONTENTS = {"FP32": "fp32_contents", "FP64": "fp64_contents"}


@dataclass
class Job:
    """One request's rows, and the answer the runner hands back to its handler thread."""

    request: pb.ModelInferRequest
    rows: np.ndarray
    done: threading.Event = field(default_factory=threading.Event)
    answer: bytes | None = None
    error: str | None = None


def request_rows(request: pb.ModelInferRequest, columns: dict[str, int]) -> np.ndarray:
    """A float64 [n, columns] block from one input per column (FP32/FP64, raw or typed)."""
    if len(request.inputs) != len(columns):
        raise ValueError(f"expected {len(columns)} inputs, got {len(request.inputs)}")
    block: np.ndarray | None = None
    for i, tensor in enumerate(request.inputs):
        if tensor.name not in columns or tensor.datatype not in DTYPES:
            raise ValueError(f"unexpected input {tensor.name!r} ({tensor.datatype})")
        if request.raw_input_contents:
            values = np.frombuffer(request.raw_input_contents[i], DTYPES[tensor.datatype])
        else:
            typed = getattr(tensor.contents, CONTENTS[tensor.datatype])
            values = np.array(typed, DTYPES[tensor.datatype])
        if block is None:
            block = np.empty((len(values), len(columns)))
        if len(values) != len(block) or int(np.prod(tensor.shape)) != len(values):
            raise ValueError(f"input {tensor.name!r} does not match the other inputs' rows")
        block[:, columns[tensor.name]] = values
    assert block is not None
    return block


def encode(request: pb.ModelInferRequest, predictions: np.ndarray) -> bytes:
    """The ModelInferResponse: one FP64 output "output-0", raw little-endian."""
    response = pb.ModelInferResponse(model_name=request.model_name, id=request.id)
    response.outputs.add(name="output-0", datatype="FP64", shape=[len(predictions)])
    response.raw_output_contents.append(predictions.astype("<f8").tobytes())
    return response.SerializeToString()


def run_batches(jobs: queue.SimpleQueue[Job], estimator: Any) -> None:
    """The runner: one model call for everything queued since the last call."""
    while True:
        batch = [jobs.get()]
        while not jobs.empty():
            batch.append(jobs.get())
        try:
            predictions = estimator.predict(np.concatenate([job.rows for job in batch]))
            ends = np.cumsum([len(job.rows) for job in batch])[:-1]
            for job, part in zip(batch, np.split(np.ravel(predictions), ends), strict=True):
                job.answer = encode(job.request, part)
        except Exception as error:  # every waiting handler must hear of it
            for job in batch:
                job.error = f"model call failed: {error}"
        for job in batch:
            job.done.set()


def serve(model: Path, port: int, threads: int) -> None:
    """Loads the estimator and the column order, then serves until killed."""
    columns = mlflow.models.Model.load(model).signature.inputs.input_names()
    estimator = mlflow.sklearn.load_model(str(model))
    # Rows arrive as a plain array in the signature's column order, the order it was fit in.
    warnings.filterwarnings("ignore", message="X does not have valid feature names")
    jobs: queue.SimpleQueue[Job] = queue.SimpleQueue()
    threading.Thread(target=run_batches, args=(jobs, estimator), daemon=True).start()
    order = {name: i for i, name in enumerate(columns)}

    def model_infer(body: bytes, context: grpc.ServicerContext) -> bytes:
        request = pb.ModelInferRequest.FromString(body)
        try:
            job = Job(request, request_rows(request, order))
        except ValueError as error:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(error))
        jobs.put(job)
        job.done.wait()
        if job.answer is None:
            context.abort(grpc.StatusCode.INTERNAL, job.error or "no answer")
        return job.answer

    handler = grpc.method_handlers_generic_handler(
        SERVICE, {"ModelInfer": grpc.unary_unary_rpc_method_handler(model_infer)}
    )
    server = grpc.server(ThreadPoolExecutor(max_workers=threads), options=OPTIONS)
    server.add_generic_rpc_handlers((handler,))
    bound = server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    print(f"listening on {bound}", flush=True)
    server.wait_for_termination()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", type=Path, help="an MLflow sklearn model folder")
    parser.add_argument("--port", type=int, default=8081, help="0 picks a free port")
    parser.add_argument("--threads", type=int, default=64, help="handler threads")
    args = parser.parse_args()
    serve(args.model, args.port, args.threads)


if __name__ == "__main__":
    main()
