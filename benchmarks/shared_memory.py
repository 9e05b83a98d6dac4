"""W2 through system shared memory against raw gRPC: CPU per request on the client and on
the server. The example wine model is served by one process on core 0 with
--allow-shared-memory; the client (tritonclient.grpc, one request at a time) runs on core 1
and sends 4,096 rows of the 11 features as FP64 columns, `--requests` times each way,
alternating the ways `--rounds` times:

- raw: `set_data_from_numpy` per input, the answer in the response (`as_numpy`);
- shared memory: the features written into a registered region each request (as an app
  with new rows would), the inputs and the output named by region, the answer read from the
  output region.

Client CPU is this process's CPU time; server CPU is the server process's (user + system,
from /proc), both divided by the requests.

    .venv/bin/python benchmarks/shared_memory.py [--requests 400] [--rounds 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import tritonclient.grpc as grpcclient
import tritonclient.utils.shared_memory as shm
from routing import example_model, serve, stop

ROOT = Path(__file__).resolve().parents[1]
ROWS = 4096
OUTPUT = "output-0"


def server_cpu(pid: int) -> float:
    """User + system CPU seconds of process `pid` so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def features() -> pd.DataFrame:
    frame = pd.read_csv(ROOT / "examples" / "wine" / "winequality-red.csv", sep=";")
    frame = frame.drop(columns=["quality"])
    rng = np.random.default_rng(4)
    return frame.iloc[rng.integers(0, len(frame), ROWS)].reset_index(drop=True)


def raw_way(client: grpcclient.InferenceServerClient, rows: pd.DataFrame) -> Callable[[], None]:
    columns = [rows[[c]].to_numpy(np.float64) for c in rows.columns]

    def call() -> None:
        inputs = []
        for name, values in zip(rows.columns, columns, strict=True):
            tensor = grpcclient.InferInput(name, [ROWS, 1], "FP64")
            tensor.set_data_from_numpy(values)
            inputs.append(tensor)
        result = client.infer("wine", inputs)
        assert result.as_numpy(OUTPUT).shape == (ROWS,)

    return call


def shm_way(
    client: grpcclient.InferenceServerClient, rows: pd.DataFrame, tag: str
) -> tuple[Callable[[], None], Callable[[], None]]:
    """The shared-memory call, and how to release its regions."""
    column_bytes = ROWS * 8
    in_key, out_key = f"/arrowsmith-bench-in-{tag}", f"/arrowsmith-bench-out-{tag}"
    inputs_region = shm.create_shared_memory_region("in", in_key, column_bytes * rows.shape[1])
    output_region = shm.create_shared_memory_region("out", out_key, column_bytes)
    client.register_system_shared_memory("in", in_key, column_bytes * rows.shape[1])
    client.register_system_shared_memory("out", out_key, column_bytes)
    columns = [np.ascontiguousarray(rows[c].to_numpy(np.float64)) for c in rows.columns]

    def call() -> None:
        shm.set_shared_memory_region(inputs_region, columns)
        inputs = []
        for index, name in enumerate(rows.columns):
            tensor = grpcclient.InferInput(name, [ROWS, 1], "FP64")
            tensor.set_shared_memory("in", column_bytes, offset=index * column_bytes)
            inputs.append(tensor)
        output = grpcclient.InferRequestedOutput(OUTPUT)
        output.set_shared_memory("out", column_bytes)
        client.infer("wine", inputs, outputs=[output])
        answer = shm.get_contents_as_numpy(output_region, np.float64, [ROWS])
        assert answer.shape == (ROWS,)

    def release() -> None:
        client.unregister_system_shared_memory()
        shm.destroy_shared_memory_region(inputs_region)
        shm.destroy_shared_memory_region(output_region)

    return call, release


def measure(call: Callable[[], None], requests: int, pid: int) -> tuple[float, float, float]:
    """Client and server CPU microseconds per request, and requests per second."""
    for _ in range(20):
        call()
    client_before, server_before = time.process_time(), server_cpu(pid)
    started = time.perf_counter()
    for _ in range(requests):
        call()
    elapsed = time.perf_counter() - started
    client = (time.process_time() - client_before) / requests * 1e6
    server = (server_cpu(pid) - server_before) / requests * 1e6
    return client, server, requests / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=400)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    os.sched_setaffinity(0, {1})
    rows = features()
    process, port = serve(
        [str(example_model()), "--name", "wine", "--allow-shared-memory"], subprocess.DEVNULL
    )
    results: dict[str, list[tuple[float, float, float]]] = {"raw gRPC": [], "shared memory": []}
    try:
        with grpcclient.InferenceServerClient(f"127.0.0.1:{port}") as client:
            shm_call, release = shm_way(client, rows, str(os.getpid()))
            raw_call = raw_way(client, rows)
            try:
                for _ in range(args.rounds):
                    results["raw gRPC"].append(measure(raw_call, args.requests, process.pid))
                    results["shared memory"].append(measure(shm_call, args.requests, process.pid))
            finally:
                release()
    finally:
        stop(process)
    print(f"W2 ({ROWS:,} rows x 11 FP64 columns), one request at a time, medians of {args.rounds}")
    print("| way | client CPU µs/request | server CPU µs/request | requests/s |")
    print("|---|---|---|---|")
    for way, runs in results.items():
        client, server, rate = (statistics.median(run[i] for run in runs) for i in range(3))
        print(f"| {way} | {client:,.0f} | {server:,.0f} | {rate:,.0f} |")


if __name__ == "__main__":
    main()
