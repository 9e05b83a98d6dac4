"""What routing to a model in another environment costs on W1: the example wine model
served directly (one process, on the ports) against the same model served from an
environment of its own behind the ports (the worker on the ports forwards each call over
a Unix socket to the model's process). Both servers run on core 0 (every process of the
routed one too), the load generator on core 1, W1 (one row of 11 FP32 features per
request) closed loop at 32 in flight; the two alternate, `--rounds` times each.

    .venv/bin/python benchmarks/routing.py [--rounds 2] [--duration 15]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import IO

import grpc
from http_compare import free_port
from tritonclient.grpc import service_pb2 as pb

ROOT = Path(__file__).resolve().parent.parent
MODEL = ROOT / "examples" / "wine" / "model"
READY_SECONDS = 300.0


def write_config(folder: Path, routed: bool) -> Path:
    """`wine` alone, in the server's environment; or `wine` in an environment of its own,
    behind a first model (`front`, the same folder) that keeps the ports."""
    if routed:
        models = [
            {"uri": str(MODEL), "name": "front"},
            {"uri": str(MODEL), "name": "wine", "env_manager": "uv"},
        ]
    else:
        models = [{"uri": str(MODEL), "name": "wine"}]
    path = folder / ("routed.yaml" if routed else "direct.yaml")
    path.write_text(json.dumps({"models": models}))
    return path


def example_model() -> Path:
    """The example wine model, trained first when it is missing."""
    if not MODEL.exists():
        subprocess.run(
            [sys.executable, ROOT / "examples/wine/train.py", "--output", MODEL], check=True
        )
    return MODEL


def serve(arguments: list[str], output: IO[bytes] | int) -> tuple[subprocess.Popen[bytes], int]:
    """`arrowsmith serve *arguments` on core 0, one worker, gRPC on a free port and no other
    (unless `arguments` open one, e.g. `--flight-port`), its output to `output`; returned
    once ServerReady says true."""
    port = free_port()
    command = [
        "taskset", "-c", "0", sys.executable, "-m", "arrowsmith", "serve", "--flight-port", "0",
        *arguments, "--grpc-port", str(port), "--http-port", "0", "--metrics-port", "0",
        "--workers", "1",
    ]  # fmt: skip
    process = subprocess.Popen(
        command, stdout=output, stderr=subprocess.DEVNULL, start_new_session=True
    )
    started = time.monotonic()
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        ready = channel.unary_unary(
            "/inference.GRPCInferenceService/ServerReady",
            request_serializer=pb.ServerReadyRequest.SerializeToString,
            response_deserializer=pb.ServerReadyResponse.FromString,
        )
        while time.monotonic() - started < READY_SECONDS:
            try:
                if ready(pb.ServerReadyRequest(), timeout=0.5).ready:
                    return process, port
            except grpc.RpcError:
                pass
            if process.poll() is not None:
                break
            time.sleep(0.1)
    stop(process)
    raise SystemExit(f"the server of {arguments} did not get ready")


def start(config: Path, cache: Path) -> tuple[subprocess.Popen[bytes], int]:
    return serve(["--config", str(config), "--env-cache", str(cache)], subprocess.DEVNULL)


def stop(process: subprocess.Popen[bytes]) -> None:
    try:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(40)
    except ProcessLookupError:
        return
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def measure(port: int, duration: float, folder: Path, rows: int = 1) -> dict[str, float]:
    """`rows` rows per request (1: W1) from core 1, 32 in flight, for `duration` seconds."""
    out = folder / f"bench-{port}.json"
    subprocess.run(
        [
            "taskset", "-c", "1", sys.executable, "-m", "arrowsmith", "bench",
            "--target", f"127.0.0.1:{port}", "--model", "wine", "--concurrency", "32",
            "--duration", str(duration), "--warmup", "3", "--json", str(out), "--rows", str(rows),
        ],
        check=True,
        stdout=subprocess.DEVNULL,
    )  # fmt: skip
    [level] = json.loads(out.read_text())["levels"]
    if level["errors"]:
        raise SystemExit(f"errors while measuring: {level}")
    return level


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--duration", type=float, default=15.0)
    args = parser.parse_args()
    example_model()
    folder = Path(tempfile.mkdtemp(prefix="arrowsmith-routing-"))
    results: dict[str, list[dict[str, float]]] = {"direct": [], "routed": []}
    try:
        configs = {label: write_config(folder, label == "routed") for label in results}
        for _ in range(args.rounds):
            for label, config in configs.items():
                process, port = start(config, folder / "envs")
                try:
                    results[label].append(measure(port, args.duration, folder))
                finally:
                    stop(process)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    print(f"W1, 32 in flight, {args.duration:g} s per run, {args.rounds} runs each")
    print("| wine served | req/s (median) | p50 ms | p99 ms |")
    print("|---|---:|---:|---:|")
    medians = {}
    for label, levels in results.items():
        medians[label] = statistics.median(level["throughput_rps"] for level in levels)
        p50 = statistics.median(level["p50_ms"] for level in levels)
        p99 = statistics.median(level["p99_ms"] for level in levels)
        print(f"| {label} | {medians[label]:,.0f} | {p50:.2f} | {p99:.2f} |")
    print(f"routed / direct: {medians['routed'] / medians['direct']:.2f}")


if __name__ == "__main__":
    main()
