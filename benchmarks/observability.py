"""What the access log and tracing cost on W1: the example wine model served by one
process on core 0 with neither, with `--access-log json` (lines to a file), and with
tracing at 10% and at 100% sampling (OTLP/HTTP to a receiver in this script, on core 1,
that counts what it gets and discards it). The load generator runs on core 1, W1 (one row
of 11 FP32 features per request) closed loop at 32 in flight; the settings alternate,
`--rounds` times each, in a shuffled order each round.

    .venv/bin/python benchmarks/observability.py [--rounds 6] [--duration 10]
"""

from __future__ import annotations

import argparse
import http.server
import os
import random
import shutil
import statistics
import subprocess
import tempfile
import threading
from pathlib import Path

from routing import MODEL, example_model, measure, serve, stop


class Receiver:
    """An OTLP/HTTP endpoint that counts exports and their bytes."""

    def __init__(self) -> None:
        self.exports = 0
        self.bytes = 0
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                size = int(self.headers.get("content-length", "0"))
                self.rfile.read(size)
                receiver.exports += 1
                receiver.bytes += size
                self.send_response(200)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/v1/traces"


def settings(receiver: Receiver) -> dict[str, list[str]]:
    trace = ["--otel-endpoint", receiver.endpoint, "--otel-sampler", "traceidratio"]
    return {
        "off": [],
        "access log (json)": ["--access-log", "json"],
        "tracing 10%": [*trace, "--otel-sampler-arg", "0.1"],
        "tracing 100%": [*trace, "--otel-sampler-arg", "1"],
    }


def start(extra: list[str], log: Path) -> tuple[subprocess.Popen[bytes], int]:
    with log.open("ab") as out:
        return serve([str(MODEL), "--name", "wine", *extra], out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--duration", type=float, default=10.0)
    args = parser.parse_args()
    example_model()
    # The receiver's threads stay off the server's core.
    os.sched_setaffinity(0, {1})
    receiver = Receiver()
    folder = Path(tempfile.mkdtemp(prefix="arrowsmith-observability-"))
    runs = settings(receiver)
    results: dict[str, list[dict[str, float]]] = {label: [] for label in runs}
    received: dict[str, tuple[int, int]] = {}
    try:
        for round_number in range(args.rounds):
            # A fresh order each round, so that no setting always follows the same one.
            order = list(runs.items())
            random.Random(round_number).shuffle(order)
            for label, extra in order:
                log = folder / f"{label.split()[0]}.log"
                before = (receiver.exports, receiver.bytes)
                process, port = start(extra, log)
                try:
                    results[label].append(measure(port, args.duration, folder))
                finally:
                    stop(process)
                exports, size = received.get(label, (0, 0))
                received[label] = (
                    exports + receiver.exports - before[0],
                    size + receiver.bytes - before[1],
                )
        lines = sum(1 for _ in (folder / "access.log").open()) if runs else 0
    finally:
        receiver.server.shutdown()
        shutil.rmtree(folder, ignore_errors=True)
    print(f"W1, 32 in flight, {args.duration:g} s per run, {args.rounds} runs each")
    print("| setting | req/s (median) | vs off | p50 ms | p99 ms | exported | every run, req/s |")
    print("|---|---:|---:|---:|---:|---|---|")
    off = statistics.median(level["throughput_rps"] for level in results["off"])
    for label, levels in results.items():
        rate = statistics.median(level["throughput_rps"] for level in levels)
        p50 = statistics.median(level["p50_ms"] for level in levels)
        p99 = statistics.median(level["p99_ms"] for level in levels)
        exports, size = received[label]
        sent = f"{exports} exports, {size / 1e6:.1f} MB" if exports else ""
        every = ", ".join(f"{level['throughput_rps']:,.0f}" for level in levels)
        print(
            f"| {label} | {rate:,.0f} | {rate / off:.2f} | {p50:.2f} | {p99:.2f} | {sent} "
            f"| {every} |"
        )
    print(f"access-log lines written: {lines:,}")


if __name__ == "__main__":
    main()
