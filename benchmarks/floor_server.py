"""The grpcio floor: a V2 gRPC server that answers every ModelInfer with canned bytes.

No request is parsed and no response is built per call (bytes in, bytes out, no
(de)serializers), so its throughput is what grpcio itself costs per call: the ceiling any
ModelInfer server built on that front can reach. `--mode` picks the synchronous server
(thread pool) or grpc.aio, whose per-call costs the front's choice rests on.
ModelStreamInfer answers each message of a stream, in order, with the same canned response
inside a ModelStreamInferResponse: the floor of the streaming workload.

It answers the wine model's first row by default (`--response-rows` of them), or with
`--response FILE` any serialized ModelInferResponse (compare.py gives the digits model's
answer to W4 that way, and the same files to the native floor, rust/floor).

On start it prints `listening on PORT` (flushed), so `--port 0` can be used by a driver.
"""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import numpy as np
from digits_model import MODEL_NAME as DIGITS
from tritonclient.grpc import service_pb2 as pb

SERVICE = "inference.GRPCInferenceService"
MAX_MESSAGE = 256 * 1024 * 1024
OPTIONS = [
    ("grpc.max_receive_message_length", MAX_MESSAGE),
    ("grpc.max_send_message_length", MAX_MESSAGE),
]
# The wine model's answer to the first CSV row (FP32 inputs over gRPC), repeated.
PREDICTION = 5.576883936610762


def canned_response(rows: int) -> bytes:
    """A serialized ModelInferResponse of the wine model: one FP64 output "output-0" of
    `rows` raw values, the first row's answer repeated."""
    return response_of("wine", "FP64", np.full(rows, PREDICTION, dtype="<f8"))


def classes_response(labels: np.ndarray) -> bytes:
    """A serialized ModelInferResponse of the digits model: one INT64 output "output-0"
    holding the class `labels` raw."""
    return response_of(DIGITS, "INT64", labels.astype("<i8"))


def response_of(model: str, datatype: str, values: np.ndarray) -> bytes:
    """A serialized ModelInferResponse of version "1" of `model`: one output "output-0" of
    `datatype`, `values` (little-endian) in its raw contents."""
    response = pb.ModelInferResponse(model_name=model, model_version="1")
    response.outputs.add(name="output-0", datatype=datatype, shape=[len(values)])
    response.raw_output_contents.append(values.tobytes())
    return response.SerializeToString()


def streamed(answer: bytes) -> bytes:
    """`answer` as a serialized ModelStreamInferResponse's infer_response."""
    response = pb.ModelStreamInferResponse()
    response.infer_response.ParseFromString(answer)
    return response.SerializeToString()


def _handlers(unary: Callable[..., Any], stream: Callable[..., Any]) -> grpc.GenericRpcHandler:
    """ModelInfer and ModelStreamInfer only, raw bytes both ways."""
    methods = {
        "ModelInfer": grpc.unary_unary_rpc_method_handler(unary),
        "ModelStreamInfer": grpc.stream_stream_rpc_method_handler(stream),
    }
    return grpc.method_handlers_generic_handler(SERVICE, methods)


def serve_sync(port: int, threads: int, answer: bytes) -> None:
    """grpcio's synchronous server; each call runs on one of `threads` pool threads (a
    stream holds one for as long as it is open)."""
    answer_in_stream = streamed(answer)

    def model_infer(_request: bytes, _context: grpc.ServicerContext) -> bytes:
        return answer

    def model_stream_infer(
        requests: Iterator[bytes], _context: grpc.ServicerContext
    ) -> Iterator[bytes]:
        for _request in requests:
            yield answer_in_stream

    server = grpc.server(ThreadPoolExecutor(max_workers=threads), options=OPTIONS)
    server.add_generic_rpc_handlers((_handlers(model_infer, model_stream_infer),))
    bound = server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    print(f"listening on {bound}", flush=True)
    server.wait_for_termination()


async def serve_aio(port: int, answer: bytes) -> None:
    """grpc.aio's server; every call is a coroutine on the one event loop."""

    answer_in_stream = streamed(answer)

    async def model_infer(_request: bytes, _context: grpc.aio.ServicerContext) -> bytes:
        return answer

    async def model_stream_infer(
        requests: AsyncIterator[bytes], _context: grpc.aio.ServicerContext
    ) -> AsyncIterator[bytes]:
        async for _request in requests:
            yield answer_in_stream

    server = grpc.aio.server(options=OPTIONS)
    server.add_generic_rpc_handlers((_handlers(model_infer, model_stream_infer),))
    bound = server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    print(f"listening on {bound}", flush=True)
    await server.wait_for_termination()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mode", choices=("sync", "aio"), required=True)
    parser.add_argument("--port", type=int, default=8081, help="0 picks a free port")
    parser.add_argument("--threads", type=int, default=8, help="sync mode's pool size")
    answers = parser.add_mutually_exclusive_group()
    answers.add_argument("--response-rows", type=int, default=1, help="wine rows answered")
    answers.add_argument("--response", type=Path, help="a serialized ModelInferResponse")
    args = parser.parse_args()
    answer = args.response.read_bytes() if args.response else canned_response(args.response_rows)
    if args.mode == "sync":
        serve_sync(args.port, args.threads, answer)
    else:
        asyncio.run(serve_aio(args.port, answer))


if __name__ == "__main__":
    main()
