"""Start-up: seconds from process start to ServerReady for the example wine model (one
worker, server pinned to core 0), and the worker's resident memory then, next to what the
imports alone cost: a sidecar restarts often, so these are figures like any other.

Two kinds of start: the first start of a model (no snapshot: MLflow loads it, and a
snapshot is kept) and every later one (restored from that snapshot, MLflow loading on a
thread of its own after ready). Measurements alternate between the rows, and the ratios to
`import mlflow.pyfunc` are of medians taken in the same run.

    .venv/bin/python benchmarks/startup.py [--runs 5]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import grpc
from http_compare import free_port
from tritonclient.grpc import service_pb2 as pb

ROOT = Path(__file__).resolve().parent.parent
MODEL = ROOT / "examples" / "wine" / "model"
ROWS = (
    "python, no import",
    "import mlflow.pyfunc",
    "import sklearn.linear_model",
    "import skops.io",
)


def resident_mb(pid: int) -> float:
    """The process's resident set (VmRSS), in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise SystemExit(f"no VmRSS for process {pid}")


def ready_server(snapshots: Path) -> tuple[float, float]:
    """Seconds to ServerReady, and the server's RSS in MB once ready, with model snapshots
    in `snapshots`."""
    port = free_port()
    command = [
        "taskset", "-c", "0", sys.executable, "-m", "arrowsmith", "serve", str(MODEL),
        "--name", "wine", "--grpc-port", str(port), "--http-port", "0", "--metrics-port", "0",
        "--workers", "1", "--flight-port", "0",
    ]  # fmt: skip
    started = time.monotonic()
    environment = {**os.environ, "ARROWSMITH_SNAPSHOT_DIR": str(snapshots)}
    process = subprocess.Popen(
        command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=environment
    )
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
    rows: dict[str, list[float]] = {name: [] for name in ROWS}
    first: list[tuple[float, float]] = []
    restored: list[tuple[float, float]] = []
    with tempfile.TemporaryDirectory() as scratch:
        kept = Path(scratch) / "kept"
        ready_server(kept)  # keeps the snapshot the restored starts use
        for run in range(args.runs):
            first.append(ready_server(Path(scratch) / f"fresh-{run}"))
            restored.append(ready_server(kept))
            rows["python, no import"].append(seconds_to_import("sys"))
            rows["import mlflow.pyfunc"].append(seconds_to_import("mlflow.pyfunc"))
            rows["import sklearn.linear_model"].append(seconds_to_import("sklearn.linear_model"))
            rows["import skops.io"].append(seconds_to_import("skops.io"))
    rows["arrowsmith serve: ready, first start"] = [seconds for seconds, _ in first]
    rows["arrowsmith serve: ready, from its snapshot"] = [seconds for seconds, _ in restored]
    mlflow_import = statistics.median(rows["import mlflow.pyfunc"])
    print("| what | median s | min s | max s | median / import mlflow.pyfunc |")
    print("|---|---:|---:|---:|---:|")
    for name, values in rows.items():
        median = statistics.median(values)
        print(
            f"| {name} | {median:.2f} | {min(values):.2f} | {max(values):.2f} "
            f"| {median / mlflow_import:.2f}x |"
        )
    for label, servers in (("first start", first), ("from its snapshot", restored)):
        resident = [mb for _, mb in servers]
        print(
            f"RSS of the worker at ready, {label}: median {statistics.median(resident):.0f} MB "
            f"(min {min(resident):.0f}, max {max(resident):.0f})"
        )


if __name__ == "__main__":
    main()
