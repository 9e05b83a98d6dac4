"""Start-up: seconds from process start to ServerReady for the example wine model (one
worker, server pinned to core 0), and the worker's resident memory then, next to what the
imports alone cost: a sidecar restarts often, so these are figures like any other.

    .venv/bin/python benchmarks/startup.py [--runs 5]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

import grpc
from http_compare import free_port
from tritonclient.grpc import service_pb2 as pb

ROOT = Path(__file__).resolve().parent.parent
MODEL = ROOT / "examples" / "wine" / "model"


def resident_mb(pid: int) -> float:
    """The process's resident set (VmRSS), in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise SystemExit(f"no VmRSS for process {pid}")


def ready_server() -> tuple[float, float]:
    """Seconds to ServerReady, and the server's RSS in MB once ready."""
    port = free_port()
    command = [
        "taskset", "-c", "0", sys.executable, "-m", "arrowsmith", "serve", str(MODEL),
        "--name", "wine", "--grpc-port", str(port), "--http-port", "0", "--metrics-port", "0",
        "--workers", "1", "--flight-port", "0",
    ]  # fmt: skip
    started = time.monotonic()
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            ready = channel.unary_unary(
                "/inference.GRPCInferenceService/ServerReady",
                request_serializer=pb.ServerReadyRequest.SerializeToString,
                response_deserializer=pb.ServerReadyResponse.FromString,
            )
            while time.monotonic() - started < 60:
                try:
                    if ready(pb.ServerReadyRequest(), timeout=0.5).ready:
                        return time.monotonic() - started, resident_mb(process.pid)
                except grpc.RpcError:
                    pass
                time.sleep(0.01)
        raise SystemExit("the server was not ready within 60 s")
    finally:
        process.terminate()
        process.wait(30)


def seconds_to_import(module: str) -> float:
    started = time.monotonic()
    subprocess.run(["taskset", "-c", "0", sys.executable, "-c", f"import {module}"], check=True)
    return time.monotonic() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    if not MODEL.exists():
        subprocess.run(
            [sys.executable, ROOT / "examples/wine/train.py", "--output", MODEL], check=True
        )
    servers = [ready_server() for _ in range(args.runs)]
    rows = {
        "python, no import": [seconds_to_import("sys") for _ in range(args.runs)],
        "import mlflow.pyfunc": [seconds_to_import("mlflow.pyfunc") for _ in range(args.runs)],
        "import skops.io": [seconds_to_import("skops.io") for _ in range(args.runs)],
        "arrowsmith serve: ready": [seconds for seconds, _ in servers],
    }
    print("| what | median s | min s | max s |")
    print("|---|---:|---:|---:|")
    for name, values in rows.items():
        print(
            f"| {name} | {statistics.median(values):.2f} | {min(values):.2f} | {max(values):.2f} |"
        )
    resident = [mb for _, mb in servers]
    print(
        f"RSS of the worker at ready: median {statistics.median(resident):.0f} MB "
        f"(min {min(resident):.0f}, max {max(resident):.0f})"
    )


if __name__ == "__main__":
    main()
