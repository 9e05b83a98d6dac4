"""A V2 gRPC server whose every answer is scripted, to test the load generator against.

Requests are numbered 0, 1, 2, ... in arrival order, and request n's answer depends on n
alone: it first sleeps `--sleep-ms` entry n % len (a repeating list of milliseconds), then
fails with the status of the first `--fail-every` rule K:CODE where n % K == K - 1 (every
K-th request), or answers OK with one canned ModelInferResponse. Requests are not parsed.

Run it by path with this project's Python. It prints `listening on PORT` (flushed) once it
serves, and on SIGTERM stops, prints `served N requests` and exits 0.
"""

import argparse
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from types import FrameType

import grpc
from arrowsmith._proto import grpc_service_pb2 as pb

SERVICE = "inference.GRPCInferenceService"


def canned_response() -> bytes:
    """A ModelInferResponse with one FP64 [1] output whose raw contents fill its shape."""
    response = pb.ModelInferResponse(model_name="scripted", model_version="1")
    response.outputs.add(name="output-0", datatype="FP64", shape=[1])
    response.raw_output_contents.append(bytes(8))
    return response.SerializeToString()


def fail_rule(text: str) -> tuple[int, grpc.StatusCode]:
    """`K:CODE`, e.g. `7:RESOURCE_EXHAUSTED`: every K-th request fails with CODE."""
    every, _, code = text.partition(":")
    return int(every), grpc.StatusCode[code]


class Script:
    """Numbers the requests and answers each one as the plans say."""

    def __init__(self, sleeps_ms: list[float], failures: list[tuple[int, grpc.StatusCode]]):
        self.sleeps_ms = sleeps_ms
        self.failures = failures
        self.answer = canned_response()
        self.served = 0
        self.lock = threading.Lock()

    def model_infer(self, _request: bytes, context: grpc.ServicerContext) -> bytes:
        with self.lock:
            n = self.served
            self.served += 1
        time.sleep(self.sleeps_ms[n % len(self.sleeps_ms)] / 1000)
        for every, code in self.failures:
            if n % every == every - 1:
                context.abort(code, f"scripted failure of request {n}")
        return self.answer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--sleep-ms", default="0", help="repeating list, e.g. 20,20,50")
    parser.add_argument("--fail-every", default="", help="e.g. 7:UNAVAILABLE,13:INTERNAL")
    parser.add_argument("--threads", type=int, default=8, help="requests handled at once")
    parser.add_argument("--max-streams", type=int, help="HTTP/2 streams a client may open")
    args = parser.parse_args()
    script = Script(
        [float(ms) for ms in args.sleep_ms.split(",")],
        [fail_rule(rule) for rule in args.fail_every.split(",") if rule],
    )
    options = (
        [] if args.max_streams is None else [("grpc.max_concurrent_streams", args.max_streams)]
    )
    server = grpc.server(ThreadPoolExecutor(max_workers=args.threads), options=options)
    method = grpc.unary_unary_rpc_method_handler(script.model_infer)
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(SERVICE, {"ModelInfer": method}),)
    )
    port = server.add_insecure_port(f"127.0.0.1:{args.port}")

    def stop(_signum: int, _frame: FrameType | None) -> None:
        server.stop(None)

    signal.signal(signal.SIGTERM, stop)
    server.start()
    print(f"listening on {port}", flush=True)
    server.wait_for_termination()
    print(f"served {script.served} requests", flush=True)


if __name__ == "__main__":
    main()
