"""Where each microsecond of a request goes, on W1 and W2 against the example wine model.

The server (one worker) runs pinned to core 0 and arrowsmith-bench drives it from core 1,
as in compare.py (W1: one row, typed FP32, 32 in flight; W2: 4,096 rows raw, 8 in flight).
Each workload runs twice under the same load: once sampled by py-spy (every thread, native
frames too, so the Rust under a Python call is named) and once by perf (call graphs, so the
tokio threads that never run Python are seen as well). py-spy samples without pausing the
server (`--nonblocking`), so a sample can now and then be torn; perf's run is the one whose
throughput stands for the server's. The server's CPU time per request is
measured around each run; every profile entry is shown as its share of the samples and as
microseconds per request (that share of the CPU per request).

    .venv/bin/python benchmarks/profiles.py [--duration 20] [--top 25]

Raw profiles go to results/profile-<workload>.* (py-spy's stacks, perf's data and reports).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

from bodies import w1_request, w2_request
from floors import core_ticks
from http_compare import free_port, group_cpu_seconds, server, wine_model

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
BENCH = HERE.parent / "rust" / "target" / "release" / "arrowsmith-bench"
CLIENT_CORE = "1"
SERVER_CORE = "0"
WORKLOADS = {"W1": (w1_request, 1, 32), "W2": (w2_request, 4096, 8)}
#: Frames that mean a Python thread is waiting, not working (for a batch, a lock, a socket).
IDLE_FRAMES = ("__pymethod_next_batch__", "Condition.wait", "Event.wait", "select", "epoll")
#: py-spy's samples per second of each thread.
RATE = 1000


def load(port: int, body: Path, rows: int, in_flight: int, seconds: float) -> subprocess.Popen:
    command = ["taskset", "-c", CLIENT_CORE, str(BENCH), "--target", f"127.0.0.1:{port}"]
    command += ["--body", str(body), "--concurrency", str(in_flight), "--expect-rows", str(rows)]
    command += ["--duration", str(seconds), "--warmup", "2", "--json", str(body) + ".json"]
    return subprocess.Popen(command, stdout=subprocess.DEVNULL)


def sampled(
    port: int, group: int, body: Path, rows: int, in_flight: int, seconds: float,
    sampler: list[str],
) -> tuple[float, float]:  # fmt: skip
    """Runs the load with the `sampler` command attached after the warm-up: the server's
    CPU microseconds per request over the measured part, and requests per second."""
    generator = load(port, body, rows, in_flight, seconds)
    time.sleep(2)
    cpu_before = group_cpu_seconds(group)
    idle_before, total_before = core_ticks(SERVER_CORE)
    profiler = subprocess.Popen(sampler, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    if generator.wait() != 0:
        raise RuntimeError("arrowsmith-bench failed")
    cpu = group_cpu_seconds(group) - cpu_before
    idle_after, total_after = core_ticks(SERVER_CORE)
    profiler.wait()
    level = json.loads(Path(str(body) + ".json").read_text())["levels"][0]
    requests = level["throughput_rps"] * seconds
    idle = (idle_after - idle_before) / max(total_after - total_before, 1)
    print(
        f"  {level['throughput_rps']:,.0f} req/s, server CPU {cpu / requests * 1e6:.1f} us per "
        f"request, core 0 idle {idle:.0%} (with the profiler attached)"
    )
    return cpu / requests * 1e6, float(level["throughput_rps"])


def collapsed_stacks(path: Path) -> Counter[tuple[str, ...]]:
    """py-spy's raw output: one `frame;frame;... count` line per distinct stack."""
    stacks: Counter[tuple[str, ...]] = Counter()
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if stack:
            stacks[tuple(stack.split(";"))] += int(count)
    return stacks


def report_pyspy(stacks: Counter[tuple[str, ...]], rps: float, top: int) -> None:
    """Python threads' working time, as microseconds per request: each thread's, then the
    frames under them (inclusive and own). py-spy sees only threads that run Python."""
    working = Counter(
        {s: n for s, n in stacks.items() if not any(i in f for f in s for i in IDLE_FRAMES)}
    )

    def us(samples: int) -> float:
        return samples / RATE / rps * 1e6

    threads: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    own: Counter[str] = Counter()
    for stack, count in working.items():
        threads[stack[0]] += count
        for frame in set(stack[1:]):
            inclusive[frame] += count
        own[stack[-1]] += count
    print("  py-spy, working Python threads (us per request):")
    for thread, count in threads.most_common(top):
        print(f"    {us(count):8.2f} us  {thread}")
    for title, table in (("inclusive", inclusive), ("own", own)):
        print(f"  py-spy, {title} (us per request):")
        for frame, count in table.most_common(top):
            print(f"    {us(count):8.2f} us  {frame[:120]}")


def report_perf(path: Path, us_per_request: float, top: int) -> None:
    """perf's samples of every thread of the server: own time by library, then by symbol."""
    for sort, title in (("dso", "library"), ("dso,sym", "library and symbol")):
        text = subprocess.run(
            ["perf", "report", "--stdio", "--no-children", "--sort", sort, "-i", str(path)],
            capture_output=True, text=True, check=True,
        ).stdout  # fmt: skip
        (RESULTS / f"{path.name}-{sort.replace(',', '-')}.txt").write_text(text)
        print(f"  perf, own time by {title} (share of samples, us per request):")
        entries = [line.split() for line in text.splitlines() if not line.startswith("#")]
        entries = [fields for fields in entries if fields and fields[0].endswith("%")]
        for fields in entries[:top]:
            share = float(fields[0].rstrip("%")) / 100
            what = " ".join(fields[1:])[:110]
            print(f"    {share:6.1%} {share * us_per_request:8.1f} us  {what}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=20)
    parser.add_argument("--top", type=int, default=25)
    args = parser.parse_args()
    RESULTS.mkdir(exist_ok=True)
    model = wine_model(RESULTS)
    port, http_port = free_port(), free_port()
    command = [
        sys.executable, "-m", "arrowsmith", "serve", str(model), "--name", "wine",
        "--grpc-port", str(port), "--http-port", str(http_port), "--metrics-port", "0",
        "--flight-port", "0", "--workers", "1",
    ]  # fmt: skip
    ready = f"http://127.0.0.1:{http_port}/v2/health/ready"
    with server(command, ready, RESULTS / "profile-server.log") as process:
        for workload, (request, rows, in_flight) in WORKLOADS.items():
            body = RESULTS / f"profile-{workload.lower()}.pb"
            body.write_bytes(request().SerializeToString())
            pyspy = RESULTS / f"profile-{workload}.pyspy.txt"
            perf_data = RESULTS / f"profile-{workload}.perf"
            seconds = args.duration
            print(f"{workload} ({rows} rows, {in_flight} in flight), py-spy:")
            sampling = str(int(seconds) - 4)
            py_spy = [
                str(Path(sys.executable).parent / "py-spy"), "record", "--pid", str(process.pid),
                "--native", "--threads", "--nonblocking", "--rate", str(RATE), "--format", "raw",
                "--duration", sampling, "--output", str(pyspy),
            ]  # fmt: skip
            _, rps = sampled(port, process.pid, body, rows, in_flight, seconds, py_spy)
            report_pyspy(collapsed_stacks(pyspy), rps, args.top)
            print(f"{workload}, perf:")
            perf = ["perf", "record", "-F", "999", "-g", "-p", str(process.pid)]
            perf += ["-o", str(perf_data), "--", "sleep", sampling]
            us, _ = sampled(port, process.pid, body, rows, in_flight, seconds, perf)
            report_perf(perf_data, us, args.top)


if __name__ == "__main__":
    main()
