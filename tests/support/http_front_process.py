"""The HTTP front alone in a process of its own, driven line by line over stdin, so that tests
can call `HttpFront.reload_tls` and `stop` directly (arrowsmith's protobuf messages and
tritonclient's, which the tests import, cannot share one process).

Run it by path with this project's Python. It serves no model (the repository expects
one that never loads: /v2/health/live answers, readiness does not) and prints `serving PORT`
(flushed) once uvicorn accepts connections. Then, per line read: `reload` calls
`reload_tls()` and prints `reloaded`, or `failed PATH: MESSAGE` for a TlsFileError;
`stop` stops the front, prints `stopped` and exits 0.
"""

import argparse
import sys

from arrowsmith.batching.watch import RunnerWatch
from arrowsmith.config import ModelConfig, ServerConfig
from arrowsmith.dataplane import DataPlane
from arrowsmith.http.server import HttpFront
from arrowsmith.http.tls import TlsFileError
from arrowsmith.serving.repository import ModelRepository

MODEL_NAME = "absent"


class UnlimitedBudget:
    """Stands in for the gRPC front's budget of bytes in flight."""

    inflight_bytes = 0

    def reserve_inflight(self, bytes: int) -> bool:
        return True

    def release_inflight(self, bytes: int) -> None:
        return None


def say(line: str) -> None:
    print(line, flush=True)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    for flag in ("--tls-cert", "--tls-key", "--tls-client-ca", "--http-uds"):
        parser.add_argument(flag)
    args = parser.parse_args()
    model = ModelConfig(MODEL_NAME, name=MODEL_NAME)
    config = ServerConfig(
        models=(model,),
        http_port=args.port,
        tls_cert=args.tls_cert,
        tls_key=args.tls_key,
        tls_client_ca=args.tls_client_ca,
        http_uds=args.http_uds,
        workers=1,
    )
    dataplane = DataPlane(ModelRepository([model], RunnerWatch(), drain_timeout=0))
    front = HttpFront(config, dataplane, False, UnlimitedBudget())
    front.start()
    front.wait_started()
    say(f"serving {front.port}")
    for line in sys.stdin:
        command = line.strip()
        if command == "reload":
            try:
                front.reload_tls()
            except TlsFileError as error:
                say(f"failed {error.path}: {error}")
            else:
                say("reloaded")
        elif command == "stop":
            break
    front.stop(0)
    say("stopped")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
