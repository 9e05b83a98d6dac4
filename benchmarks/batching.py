"""W1 (one wine row per request) against Arrowsmith with batching off and on, with one
and two worker processes, at several concurrency levels: throughput, p50/p99 and the mean
batch the server formed. The server is pinned to core 0 and the load generator
(arrowsmith-bench) to core 1.

    .venv/bin/python benchmarks/batching.py [--duration 5] [--levels 1,8,32,128]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from bodies import w1_request
from http_compare import free_port

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "rust" / "target" / "release" / "arrowsmith-bench"
MODEL = ROOT / "examples" / "wine" / "model"
RESULTS = Path(__file__).resolve().parent / "results"


def ensure_prerequisites() -> None:
    if not MODEL.exists():
        subprocess.run(
            [sys.executable, ROOT / "examples/wine/train.py", "--output", MODEL], check=True
        )
    subprocess.run(
        ["cargo", "build", "--release", "--quiet", "-p", "arrowsmith-bench"],
        cwd=ROOT / "rust",
        check=True,
    )


def metric_sums(port: int, name: str) -> tuple[float, float]:
    """(sum, count) of a histogram over every worker."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    total = count = 0.0
    for line in text.splitlines():
        if line.startswith(f"{name}_sum{{"):
            total += float(line.rsplit(" ", 1)[1])
        elif line.startswith(f"{name}_count{{"):
            count += float(line.rsplit(" ", 1)[1])
    return total, count


def start_server(workers: int, batch: int, log: Path) -> tuple[subprocess.Popen[bytes], int, int]:
    grpc_port, metrics_port = free_port(), free_port()
    command = [
        "taskset", "-c", "0", sys.executable, "-m", "arrowsmith", "serve", str(MODEL),
        "--name", "wine", "--grpc-port", str(grpc_port), "--metrics-port", str(metrics_port),
        "--http-port", "0", "--workers", str(workers), "--max-batch-size", str(batch),
    ]  # fmt: skip
    process = subprocess.Popen(command, stdout=log.open("wb"), stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 90
    while log.read_text(errors="replace").count("ready: serving") < workers:
        if process.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"server did not start:\n{log.read_text(errors='replace')[-3000:]}")
        time.sleep(0.2)
    return process, grpc_port, metrics_port


def run_level(
    grpc_port: int, metrics_port: int, body: Path, level: int, args: argparse.Namespace
) -> dict[str, object]:
    before = metric_sums(metrics_port, "arrowsmith_batch_requests")
    with tempfile.NamedTemporaryFile(suffix=".json") as out:
        command = [str(BENCH), "--target", f"127.0.0.1:{grpc_port}", "--body", str(body)]
        command += ["--concurrency", str(level), "--duration", str(args.duration)]
        command += ["--warmup", str(args.warmup), "--expect-rows", "1", "--json", out.name]
        subprocess.run(["taskset", "-c", "1", *command], check=True, stdout=subprocess.DEVNULL)
        result = json.loads(Path(out.name).read_text())["levels"][0]
    after = metric_sums(metrics_port, "arrowsmith_batch_requests")
    batches = after[1] - before[1]
    result["mean_batch_requests"] = (after[0] - before[0]) / batches if batches else 0.0
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--levels", default="1,8,32,128")
    args = parser.parse_args()
    ensure_prerequisites()
    RESULTS.mkdir(exist_ok=True)
    body = RESULTS / "w1.pb"
    body.write_bytes(w1_request().SerializeToString())
    rows = []
    for workers in (1, 2):
        for batch, label in ((1, "off"), (64, "on")):
            log = RESULTS / f"batching-server-w{workers}-b{batch}.log"
            process, grpc_port, metrics_port = start_server(workers, batch, log)
            try:
                for level in (int(v) for v in args.levels.split(",")):
                    result = run_level(grpc_port, metrics_port, body, level, args)
                    row = {"workers": workers, "batching": label, "concurrency": level, **result}
                    rows.append(row)
                    print(
                        f"workers {workers} batching {label:3} c={level:<4} "
                        f"{row['throughput_rps']:8.1f} req/s  p50 {row['p50_ms']:7.3f} ms  "
                        f"p99 {row['p99_ms']:7.3f} ms  "
                        f"mean batch {row['mean_batch_requests']:5.1f}  errors {row['errors']}  "
                        f"generator cpu {row['generator_cpu_share']:.0%}",
                        flush=True,
                    )
            finally:
                process.terminate()
                process.wait(30)
    (RESULTS / "batching.json").write_text(json.dumps(rows, indent=2))
    print("\n| workers | batching | in flight | req/s | p50 ms | p99 ms | mean batch |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['workers']} | {r['batching']} | {r['concurrency']} | "
            f"{r['throughput_rps']:.0f} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} | "
            f"{r['mean_batch_requests']:.1f} |"
        )


if __name__ == "__main__":
    os.chdir(Path(__file__).resolve().parent)
    main()
