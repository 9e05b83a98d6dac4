"""A V2 gRPC server whose every answer is scripted, to test the load generator against.

Requests are numbered 0, 1, 2, ... in arrival order, and request n's answer depends on n
alone: it first sleeps `--sleep-ms` entry n % len (a repeating list of milliseconds), then
fails with the status of the first `--fail-every` rule K:CODE where n % K == K - 1 (every
K-th request), or answers OK with one canned ModelInferResponse. Requests are not parsed.

ModelStreamInfer's messages are requests too, numbered with the unary ones: each stream
answers its messages one at a time, in order, each with a ModelStreamInferResponse holding
the canned response, or, every `--stream-error-every` K-th request, only an error_message.
A `--fail-every` rule ends the stream with its status instead.

Run it by path with this project's Python. It prints `listening on PORT` (flushed) once it
serves, and on SIGTERM stops, prints `served N requests` (`served N requests over S
streams` once a stream was opened) and exits 0.
"""

import argparse
import signal
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from types import FrameType

import grpc
from arrowsmith._proto import grpc_service_pb2 as pb

SERVICE = "inference.GRPCInferenceService"


def canned_response() -> pb.ModelInferResponse:
    """A ModelInferResponse with one FP64 [1] output whose raw contents fill its shape."""
    response = pb.ModelInferResponse(model_name="scripted", model_version="1")
    response.outputs.add(name="output-0", datatype="FP64", shape=[1])
    response.raw_output_contents.append(bytes(8))
    return response


def fail_rule(text: str) -> tuple[int, grpc.StatusCode]:
    """`K:CODE`, e.g. `7:RESOURCE_EXHAUSTED`: every K-th request fails with CODE."""
    every, _, code = text.partition(":")
    return int(every), grpc.StatusCode[code]


class Script:
    """Numbers the requests and answers each one as the plans say."""

    def __init__(
        self,
        sleeps_ms: list[float],
        failures: list[tuple[int, grpc.StatusCode]],
        stream_error_every: int | None,
    ):
        self.sleeps_ms = sleeps_ms
        self.failures = failures
        self.stream_error_every = stream_error_every
        self.answer = canned_response().SerializeToString()
        self.streamed_answer = pb.ModelStreamInferResponse(
            infer_response=canned_response()
        ).SerializeToString()
        self.served = 0
        self.streams = 0
        self.lock = threading.Lock()

    def take(self, context: grpc.ServicerContext) -> int:
        """The next request's number, once its planned sleep is over; a request that
        `--fail-every` picks aborts the call (for a stream, the whole stream)."""
        with self.lock:
            n = self.served
            self.served += 1
        time.sleep(self.sleeps_ms[n % len(self.sleeps_ms)] / 1000)
        for every, code in self.failures:
            if n % every == every - 1:
                context.abort(code, f"scripted failure of request {n}")
        return n

    def model_infer(self, _request: bytes, context: grpc.ServicerContext) -> bytes:
        self.take(context)
        return self.answer

    def model_stream_infer(
        self, requests: Iterator[bytes], context: grpc.ServicerContext
    ) -> Iterator[bytes]:
        with self.lock:
            self.streams += 1
        for _request in requests:
            n = self.take(context)
            every = self.stream_error_every
            if every is not None and n % every == every - 1:
                error = pb.ModelStreamInferResponse(error_message=f"scripted error of message {n}")
                yield error.SerializeToString()
            else:
                yield self.streamed_answer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--sleep-ms", default="0", help="repeating list, e.g. 20,20,50")
    parser.add_argument("--fail-every", default="", help="e.g. 7:UNAVAILABLE,13:INTERNAL")
    parser.add_argument(
        "--stream-error-every", type=int, help="every K-th request, if streamed, fails in-band"
    )
    parser.add_argument("--threads", type=int, default=8, help="requests handled at once")
    parser.add_argument("--max-streams", type=int, help="HTTP/2 streams a client may open")
    args = parser.parse_args()
    script = Script(
        [float(ms) for ms in args.sleep_ms.split(",")],
        [fail_rule(rule) for rule in args.fail_every.split(",") if rule],
        args.stream_error_every,
    )
    options = (
        [] if args.max_streams is None else [("grpc.max_concurrent_streams", args.max_streams)]
    )
    server = grpc.server(ThreadPoolExecutor(max_workers=args.threads), options=options)
    methods = {
        "ModelInfer": grpc.unary_unary_rpc_method_handler(script.model_infer),
        "ModelStreamInfer": grpc.stream_stream_rpc_method_handler(script.model_stream_infer),
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, methods),))
    port = server.add_insecure_port(f"127.0.0.1:{args.port}")

    def stop(_signum: int, _frame: FrameType | None) -> None:
        server.stop(None)

    signal.signal(signal.SIGTERM, stop)
    server.start()
    print(f"listening on {port}", flush=True)
    server.wait_for_termination()
    streams = f" over {script.streams} streams" if script.streams else ""
    print(f"served {script.served} requests{streams}", flush=True)


if __name__ == "__main__":
    main()
