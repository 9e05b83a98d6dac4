"""An HTTP/1.1 server whose every answer is scripted, to test the load generator's --http mode.

POST requests to any path are numbered 0, 1, 2, ... in arrival order, and request n's answer
depends on n alone: it first sleeps `--sleep-ms` entry n % len (a repeating list of
milliseconds), then answers with the status of the first `--fail-every` rule K:STATUS where
n % K == K - 1 (every K-th request), else 200. A request whose body's SHA-256 is not
`--expect-sha256`, or whose Content-Type is not `--expect-content-type`, is answered 500.
Answers carry a small JSON body with a Content-Length, or chunked (`--chunked`); every
`--close-every` K-th answer closes its connection, and connections idle for `--idle-timeout`
seconds are closed.

Connections are kept alive (HTTP/1.1) and served by one thread each. Run it by path with this
project's Python. It prints `listening on PORT` (flushed) once it serves, and on SIGTERM
stops, prints `served N requests` and exits 0.
"""

import argparse
import hashlib
import json
import signal
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import FrameType


def fail_rule(text: str) -> tuple[int, int]:
    """`K:STATUS`, e.g. `7:429`: every K-th request is answered STATUS."""
    every, _, status = text.partition(":")
    return int(every), int(status)


class Script:
    """Numbers the requests and says how to answer each."""

    def __init__(self, args: argparse.Namespace):
        self.sleeps_ms = [float(ms) for ms in args.sleep_ms.split(",")]
        self.failures = [fail_rule(rule) for rule in args.fail_every.split(",") if rule]
        self.expect_sha256: str | None = args.expect_sha256
        self.expect_content_type: str | None = args.expect_content_type
        self.chunked: bool = args.chunked
        self.close_every: int | None = args.close_every
        self.served = 0
        self.lock = threading.Lock()

    def number(self) -> int:
        with self.lock:
            n = self.served
            self.served += 1
        return n

    def status(self, n: int, body: bytes, content_type: str | None) -> int:
        if self.expect_sha256 is not None and hashlib.sha256(body).hexdigest() != (
            self.expect_sha256
        ):
            return 500
        if self.expect_content_type is not None and content_type != self.expect_content_type:
            return 500
        for every, status in self.failures:
            if n % every == every - 1:
                return status
        return 200


def handler(script: Script, idle_timeout: float | None) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive
        disable_nagle_algorithm = True  # headers and body are two writes
        timeout = idle_timeout

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            n = script.number()
            time.sleep(script.sleeps_ms[n % len(script.sleeps_ms)] / 1000)
            status = script.status(n, body, self.headers.get("Content-Type"))
            answer = json.dumps({"request": n, "status": status}).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            if script.close_every is not None and n % script.close_every == script.close_every - 1:
                self.send_header("Connection", "close")
                self.close_connection = True
            if script.chunked:
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                half = len(answer) // 2
                for piece in (answer[:half], answer[half:], b""):
                    self.wfile.write(b"%x;piece\r\n%s\r\n" % (len(piece), piece))
            else:
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

        def log_message(self, format: str, *args: object) -> None:
            pass

    return Handler


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--sleep-ms", default="0", help="repeating list, e.g. 20,20,50")
    parser.add_argument("--fail-every", default="", help="e.g. 7:429,13:400")
    parser.add_argument("--expect-sha256", help="the SHA-256 (hex) every request body must have")
    parser.add_argument("--expect-content-type", help="the Content-Type every request must have")
    parser.add_argument("--chunked", action="store_true", help="answer with chunked bodies")
    parser.add_argument("--close-every", type=int, help="every K-th answer closes its connection")
    parser.add_argument("--idle-timeout", type=float, help="close connections idle this long")
    args = parser.parse_args()
    script = Script(args)
    ThreadingHTTPServer.request_queue_size = 128  # the listen backlog: 5 drops connections
    server = ThreadingHTTPServer(("127.0.0.1", args.port), handler(script, args.idle_timeout))
    stopping = threading.Event()

    def stop(_signum: int, _frame: FrameType | None) -> None:
        stopping.set()

    signal.signal(signal.SIGTERM, stop)
    serving = threading.Thread(target=server.serve_forever)
    serving.start()
    print(f"listening on {server.server_address[1]}", flush=True)
    while not stopping.wait(0.1):
        pass
    server.shutdown()
    server.server_close()
    serving.join()
    print(f"served {script.served} requests", flush=True)


if __name__ == "__main__":
    main()
