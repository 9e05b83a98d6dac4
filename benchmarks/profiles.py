"""Where each microsecond of a request goes, on W1 and W2 against the example wine model.

The server (one worker) runs pinned to core 0 and arrowsmith-bench drives it from core 1,
as in compare.py (W1: one row, typed FP32, 32 in flight; W2: 4,096 rows raw, 8 in flight).
Each workload runs three times under the same load:

1. unprofiled: requests per second, and each server thread's CPU time per request (from
   /proc; Python threads named as py-spy names them, the rest by their own names);
2. under py-spy, sampling only threads that hold the GIL (`--gil`): the model's runner
   thread's Python time by frame, as microseconds per request of that run. (Without
   `--gil`, py-spy counts a thread woken but waiting for the core as busy: on one core
   shared with the front, that is most of the runner's samples, all on `next_batch`.)
3. under perf (every thread, native code): own time by library and by symbol, scaled to the
   server's CPU per request of run 1.

    .venv/bin/python benchmarks/profiles.py [--duration 12] [--top 20]

Raw profiles go to results/profile-<workload>.* (py-spy's stacks, perf's data and reports).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

from bodies import w1_request, w2_request
from http_compare import free_port, server, wine_model

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
BENCH = HERE.parent / "rust" / "target" / "release" / "arrowsmith-bench"
PY_SPY = Path(sys.executable).parent / "py-spy"
CLIENT_CORE = "1"
WORKLOADS = {"W1": (w1_request, 1, 32), "W2": (w2_request, 4096, 8)}
WARMUP = 2.0
RUNNER = "runner-wine"
#: py-spy's samples per second.
RATE = 250


def thread_ticks(pid: int) -> dict[int, int]:
    """CPU clock ticks (user + system) of each thread of `pid`."""
    ticks = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        text = (task / "stat").read_text()
        fields = text[text.rindex(")") + 2 :].split()
        ticks[int(task.name)] = int(fields[11]) + int(fields[12])
    return ticks


def thread_names(pid: int) -> dict[int, str]:
    """Thread id -> name: Python's names (py-spy dump), else the kernel's."""
    names = {
        int(t.name): (t / "comm").read_text().strip() for t in Path(f"/proc/{pid}/task").iterdir()
    }
    dump = subprocess.run([str(PY_SPY), "dump", "--pid", str(pid)], capture_output=True, text=True)
    for match in re.finditer(r"^Thread (\d+) \(\w+\): \"([^\"]+)\"", dump.stdout, re.MULTILINE):
        names[int(match.group(1))] = match.group(2)
    return names


def run_load(
    port: int, body: Path, rows: int, in_flight: int, seconds: float, sampler: list[str] | None,
    pid: int,
) -> tuple[float, dict[int, int]]:  # fmt: skip
    """One run of the load (the sampler attached after the warm-up): requests per second,
    and each thread's CPU ticks over the measured part."""
    command = ["taskset", "-c", CLIENT_CORE, str(BENCH), "--target", f"127.0.0.1:{port}"]
    command += ["--body", str(body), "--concurrency", str(in_flight), "--expect-rows", str(rows)]
    command += ["--duration", str(seconds), "--warmup", str(WARMUP), "--json", f"{body}.json"]
    generator = subprocess.Popen(command, stdout=subprocess.DEVNULL)
    time.sleep(WARMUP)
    before = thread_ticks(pid)
    profiler = (
        subprocess.Popen(sampler, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        if sampler
        else None
    )
    if generator.wait() != 0:
        raise RuntimeError("arrowsmith-bench failed")
    after = thread_ticks(pid)
    if profiler is not None:
        profiler.wait()
    level = json.loads(Path(f"{body}.json").read_text())["levels"][0]
    used = {tid: after[tid] - before.get(tid, 0) for tid in after}
    return float(level["throughput_rps"]), used


def report_threads(
    rps: float, seconds: float, used: dict[int, int], names: dict[int, str]
) -> dict[str, float]:
    """Each thread's CPU microseconds per request; returns them by name."""
    per_request = {}
    tick = 1 / os.sysconf("SC_CLK_TCK")
    for tid, ticks in sorted(used.items(), key=lambda item: -item[1]):
        if ticks:
            name = names.get(tid, str(tid))
            per_request[name] = per_request.get(name, 0.0) + ticks * tick / (rps * seconds) * 1e6
    print(f"  {rps:,.0f} req/s; server CPU by thread (us per request):")
    for name, us in per_request.items():
        print(f"    {us:8.2f} us  {name}")
    print(f"    {sum(per_request.values()):8.2f} us  in all")
    return per_request


def report_pyspy(path: Path, rps: float, seconds: float, top: int) -> None:
    """The runner's samples holding the GIL, by frame (inclusive and own), as microseconds
    per request: each sample stands for 1/RATE s of the sampled run."""
    held: Counter[tuple[str, ...]] = Counter()
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        frames = tuple(stack.split(";"))
        if RUNNER in frames[0]:
            held[frames[1:]] += int(count)
    total = sum(held.values())
    requests = rps * seconds

    def us(samples: int) -> float:
        return samples / RATE / requests * 1e6

    print(f"  py-spy, the runner holding the GIL: {us(total):.2f} us per request", end="")
    print(f" (at {rps:,.0f} req/s under py-spy)")
    inclusive: Counter[str] = Counter()
    own: Counter[str] = Counter()
    for frames, count in held.items():
        for frame in set(frames):
            inclusive[frame] += count
        own[frames[-1]] += count
    for title, table in (("inclusive", inclusive), ("own", own)):
        print(f"  py-spy, the runner's Python by frame, {title} (us per request):")
        for frame, count in table.most_common(top):
            print(f"    {us(count):8.2f} us  {frame[:110]}")


def report_perf(path: Path, server_us: float, top: int) -> None:
    """perf's samples of every thread: own time by library, then by symbol."""
    for sort, title in (("dso", "library"), ("dso,sym", "library and symbol")):
        text = subprocess.run(
            ["perf", "report", "--stdio", "--no-children", "-g", "none", "--sort", sort,
             "-i", str(path)],
            capture_output=True, text=True, check=True,
        ).stdout  # fmt: skip
        (RESULTS / f"{path.name}-{sort.replace(',', '-')}.txt").write_text(text)
        print(f"  perf, own time by {title} (share of samples, us per request):")
        entries = [line.split() for line in text.splitlines() if not line.startswith("#")]
        entries = [fields for fields in entries if fields and fields[0].endswith("%")]
        for fields in entries[:top]:
            share = float(fields[0].rstrip("%")) / 100
            what = " ".join(fields[1:])[:110]
            print(f"    {share:6.1%} {share * server_us:8.2f} us  {what}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=12)
    parser.add_argument("--top", type=int, default=20)
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
    seconds = args.duration
    with server(command, ready, RESULTS / "profile-server.log") as process:
        pid = process.pid
        names = thread_names(pid)
        for workload, (request, rows, in_flight) in WORKLOADS.items():
            body = RESULTS / f"profile-{workload.lower()}.pb"
            body.write_bytes(request().SerializeToString())
            print(f"{workload} ({rows} rows, {in_flight} in flight), unprofiled:")
            rps, used = run_load(port, body, rows, in_flight, seconds, None, pid)
            by_thread = report_threads(rps, seconds, used, names)
            sampling = str(max(int(seconds - 1), 1))
            stacks = RESULTS / f"profile-{workload}.pyspy.txt"
            py_spy = [str(PY_SPY), "record", "--pid", str(pid), "--threads", "--gil"]
            py_spy += ["--rate", str(RATE), "--format", "raw", "--duration", sampling]
            py_spy += ["--output", str(stacks)]
            profiled_rps, _ = run_load(port, body, rows, in_flight, seconds, py_spy, pid)
            report_pyspy(stacks, profiled_rps, float(sampling), args.top)
            perf_data = RESULTS / f"profile-{workload}.perf"
            perf = ["perf", "record", "-F", "999", "-g", "-p", str(pid), "-o", str(perf_data)]
            run_load(port, body, rows, in_flight, seconds, [*perf, "--", "sleep", sampling], pid)
            report_perf(perf_data, sum(by_thread.values()), args.top)


if __name__ == "__main__":
    main()
