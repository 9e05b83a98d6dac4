"""Client CPU per request: `arrowsmith.client.Client.predict` with a pandas DataFrame against
tritonclient's gRPC client (one `InferInput` per column, `set_data_from_numpy`, `infer`,
`as_numpy`) on the same rows, one request at a time, against one Arrowsmith server serving
the example wine model.

W1 is one wine row (11 FP32 features), W2 4,096 rows. The server runs on core 0, this
process (both clients) on core 1; CPU is this process's `time.process_time()` over the
timed requests (every thread: grpcio's too), after a warm-up. Both clients' answers are
compared, so a fast wrong client cannot pass. A third row is the floor both stand on:
grpcio's call alone, sending the same request bytes each time and keeping the answer's.

    .venv/bin/python benchmarks/client_cpu.py [--w1-requests 2000] [--w2-requests 300]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import time
from collections.abc import Callable

import grpc
import numpy as np
import pandas as pd
import tritonclient.grpc as grpcclient
from arrowsmith import _native
from arrowsmith.client import Client
from arrowsmith.client.frames import tensor_inputs
from bodies import MODEL_NAME, W2_ROWS, wine_features
from routing import example_model, serve, stop

WARMUP = 50
OUTPUT = "output-0"
FLOOR = "grpcio call alone (floor)"


def tritonclient_predict(
    client: grpcclient.InferenceServerClient,
) -> Callable[[pd.DataFrame], np.ndarray]:
    def predict(rows: pd.DataFrame) -> np.ndarray:
        inputs = []
        for column in rows.columns:
            tensor = grpcclient.InferInput(column, [len(rows), 1], "FP32")
            tensor.set_data_from_numpy(rows[column].to_numpy().reshape(-1, 1))
            inputs.append(tensor)
        answer: np.ndarray = client.infer(MODEL_NAME, inputs).as_numpy(OUTPUT)
        return answer.reshape(-1)

    return predict


def arrowsmith_predict(client: Client) -> Callable[[pd.DataFrame], np.ndarray]:
    def predict(rows: pd.DataFrame) -> np.ndarray:
        answer: np.ndarray = client.predict(MODEL_NAME, rows).column(OUTPUT).to_numpy()
        return answer

    return predict


def grpcio_floor(channel: grpc.Channel, rows: pd.DataFrame) -> Callable[[pd.DataFrame], object]:
    """ModelInfer with the request encoded once beforehand: grpcio's own cost per call."""
    call = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")
    request = _native.encode_request(MODEL_NAME, "", "", None, tensor_inputs(rows), [])
    return lambda _: call(request, timeout=60)


def cpu_per_request(predict: Callable[[pd.DataFrame], object], rows: pd.DataFrame, n: int) -> float:
    """Microseconds of this process's CPU per request over `n` sequential requests."""
    for _ in range(WARMUP):
        predict(rows)
    started = time.process_time()
    for _ in range(n):
        predict(rows)
    return (time.process_time() - started) / n * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--w1-requests", type=int, default=2000)
    parser.add_argument("--w2-requests", type=int, default=300)
    args = parser.parse_args()
    os.sched_setaffinity(0, {1})
    names, values = wine_features()
    workloads = {
        "W1": (pd.DataFrame(values[:1], columns=names), args.w1_requests),
        "W2": (
            pd.DataFrame(np.resize(values, (W2_ROWS, len(names))), columns=names),
            args.w2_requests,
        ),
    }
    process, port = serve([str(example_model()), "--name", MODEL_NAME], subprocess.DEVNULL)
    target = f"127.0.0.1:{port}"
    results: dict[tuple[str, str], float] = {}
    try:
        with (
            Client(target, timeout=60) as ours,
            grpcclient.InferenceServerClient(target) as triton,
            grpc.insecure_channel(target) as channel,
        ):
            clients = {
                "tritonclient.grpc": tritonclient_predict(triton),
                "arrowsmith.client": arrowsmith_predict(ours),
            }
            for workload, (rows, n) in workloads.items():
                answers = {label: predict(rows) for label, predict in clients.items()}
                reference, answer = answers.values()
                if not np.array_equal(reference, answer):
                    raise SystemExit(f"{workload}: the clients' answers differ")
                for label, predict in clients.items():
                    results[label, workload] = cpu_per_request(predict, rows, n)
                results[FLOOR, workload] = cpu_per_request(grpcio_floor(channel, rows), rows, n)
    finally:
        stop(process)
    print(
        f"{args.w1_requests} W1 and {args.w2_requests} W2 requests per client, one at a time; "
        "answers equal"
    )
    print("| client | workload | µs CPU per request | ratio to tritonclient |")
    print("|---|---|---:|---:|")
    for workload in workloads:
        baseline = results["tritonclient.grpc", workload]
        for label in [*clients, FLOOR]:
            cpu = results[label, workload]
            print(f"| {label} | {workload} | {cpu:,.0f} | {cpu / baseline:.2f} |")


if __name__ == "__main__":
    main()
