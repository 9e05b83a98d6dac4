"""Measures the two grpcio floors (sync server vs grpc.aio) on W1 and W2 with h2load.

The front that carries ModelInfer is chosen by its per-call cost, so both floors run the same
canned-answer server (floor_server.py) pinned to core 0 while h2load, pinned to core 1,
keeps 32 requests in flight. Modes alternate order between repetitions so a slow stretch of
a noisy machine does not always hit the same mode. Server CPU time per request (from
/proc) is reported beside req/s: it is the per-call cost itself, and less sensitive than
throughput to what else the machine is doing.

    .venv/bin/python benchmarks/floors.py
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import resource
import shlex
import statistics
import subprocess
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import TypeVar

import grpc
from bodies import W2_ROWS, w1_request, w2_request, write_bodies
from floor_server import OPTIONS, SERVICE, canned_response
from tritonclient.grpc import service_pb2 as pb

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
SERVER_CORE = "0"
T = TypeVar("T")
CLIENT_CORE = "1"
MODES = ("sync", "aio")
RESPONSE_ROWS = {"W1": 1, "W2": W2_ROWS}
METHOD = f"/{SERVICE}/ModelInfer"
UNIT_MS = {"us": 1e-3, "ms": 1.0, "s": 1e3}


@dataclass
class H2load:
    """What h2load reports of one run (request times in ms)."""

    duration_s: float
    rps: float
    requests: int
    mean_ms: float
    sd_ms: float
    min_ms: float
    max_ms: float


@dataclass
class Run:
    """One measured h2load run against one server (a floor mode, or a named server)."""

    repetition: int
    server: str
    workload: str
    h2load: H2load
    server_cpu_s: float
    client_cpu_s: float
    server_core_idle: float
    loadavg_1m: float
    command: str = ""

    @property
    def cpu_us_per_request(self) -> float:
        return self.server_cpu_s / self.h2load.requests * 1e6

    @property
    def server_busy(self) -> float:
        return self.server_cpu_s / self.h2load.duration_s

    @property
    def client_busy(self) -> float:
        return self.client_cpu_s / self.h2load.duration_s


@dataclass
class Summary:
    """One workload's runs per mode, and the sync/aio ratios of their means."""

    workload: str
    sync_rps: list[float]
    aio_rps: list[float]
    sync_cpu_us_per_request: list[float]
    aio_cpu_us_per_request: list[float]

    @property
    def rps_sync_over_aio(self) -> float:
        return statistics.mean(self.sync_rps) / statistics.mean(self.aio_rps)

    @property
    def cpu_aio_over_sync(self) -> float:
        return statistics.mean(self.aio_cpu_us_per_request) / statistics.mean(
            self.sync_cpu_us_per_request
        )


def start_server(mode: str, rows: int, threads: int) -> tuple[subprocess.Popen[str], int]:
    """Starts a floor server on core 0 and returns it with the port it bound."""
    command = ["taskset", "-c", SERVER_CORE, sys.executable, str(HERE / "floor_server.py")]
    command += ["--mode", mode, "--port", "0", "--threads", str(threads)]
    command += ["--response-rows", str(rows)]
    server = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    assert server.stdout is not None
    line = server.stdout.readline()
    if not line.startswith("listening on "):
        server.kill()
        raise RuntimeError(f"floor server ({mode}) did not start: {line!r}")
    return server, int(line.split()[-1])


def verify(port: int, request: bytes, rows: int) -> None:
    """One call with a Python gRPC client: h2load cannot see grpc-status in trailers."""
    with grpc.insecure_channel(f"127.0.0.1:{port}", options=OPTIONS) as channel:
        response, call = channel.unary_unary(METHOD).with_call(request, timeout=10)
    if call.code() != grpc.StatusCode.OK or response != canned_response(rows):
        raise RuntimeError(f"floor answered {call.code()} with unexpected bytes")
    message = pb.ModelInferResponse.FromString(response)
    if message.outputs[0].name != "output-0" or len(message.raw_output_contents[0]) != rows * 8:
        raise RuntimeError(f"floor's canned response is not what was asked: {message}")


def children_cpu_seconds() -> float:
    """User + system CPU time of this process's finished children (h2load, once waited)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def core_ticks(core: str) -> tuple[int, int]:
    """Idle and total clock ticks of one core since boot."""
    for line in Path("/proc/stat").read_text().splitlines():
        if line.startswith(f"cpu{core} "):
            ticks = [int(t) for t in line.split()[1:9]]
            return ticks[3] + ticks[4], sum(ticks)
    raise RuntimeError(f"no cpu{core} in /proc/stat")


@dataclass(frozen=True)
class Accounting:
    """What a measured run cost: the server's CPU, the load generator's, the share of core 0
    left idle, and the machine's load when it began."""

    server_cpu_s: float
    client_cpu_s: float
    server_core_idle: float
    loadavg_1m: float


def accounted(run: Callable[[], T], server_cpu: Callable[[], float]) -> tuple[T, Accounting]:
    """Runs `run` (a load generator that ends before it returns) and accounts for it."""
    loadavg = os.getloadavg()[0]
    server_before = server_cpu()
    client_before = children_cpu_seconds()
    idle_before, total_before = core_ticks(SERVER_CORE)
    result = run()
    idle_after, total_after = core_ticks(SERVER_CORE)
    client_cpu = children_cpu_seconds() - client_before
    return result, Accounting(
        server_cpu_s=server_cpu() - server_before,
        client_cpu_s=client_cpu,
        server_core_idle=(idle_after - idle_before) / (total_after - total_before),
        loadavg_1m=loadavg,
    )


def server_cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process, all its threads included."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def h2load_command(port: int, body: Path, seconds: float, clients: int, streams: int) -> list[str]:
    return [
        "taskset", "-c", CLIENT_CORE, "h2load", "-D", f"{round(seconds * 1000)}ms",
        "-c", str(clients), "-m", str(streams),
        "--header", "content-type: application/grpc", "--header", "te: trailers",
        "-d", str(body), f"http://127.0.0.1:{port}{METHOD}",
    ]  # fmt: skip


def run_h2load(command: list[str]) -> str:
    """h2load's report, with its errors for parse_h2load to show."""
    done = subprocess.run(command, capture_output=True, text=True)
    return done.stdout + done.stderr


def parse_h2load(output: str) -> H2load:
    """h2load's summary; raises unless every request finished with a 2xx status."""
    finished = re.search(r"finished in (\S+), ([\d.]+) req/s", output)
    counts = re.search(
        r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, "
        r"(\d+) failed, (\d+) errored, (\d+) timeout",
        output,
    )
    status = re.search(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", output)
    latency = re.search(r"time for request:\s+(\S+)\s+(\S+)\s+(\S+)\s+(\S+)", output)
    if not (finished and counts and status and latency):
        raise RuntimeError(f"unexpected h2load output:\n{output}")
    done, succeeded, *failures = (int(n) for n in counts.groups()[2:])
    if done == 0 or succeeded != done or int(status[1]) != done or any(failures):
        raise RuntimeError(f"h2load saw failures:\n{output}")
    return H2load(
        duration_s=_ms(finished[1]) / 1e3,
        rps=float(finished[2]),
        requests=done,
        min_ms=_ms(latency[1]),
        max_ms=_ms(latency[2]),
        mean_ms=_ms(latency[3]),
        sd_ms=_ms(latency[4]),
    )


def _ms(value: str) -> float:
    """An h2load duration such as `267us`, `3.99ms` or `1.2s`, in milliseconds."""
    unit = next(u for u in ("us", "ms", "s") if value.endswith(u))
    return float(value.removesuffix(unit)) * UNIT_MS[unit]


def measure(args: argparse.Namespace, bodies: dict[str, Path]) -> list[Run]:
    """Every (repetition, workload, mode): fresh server, check, warm-up, measured run."""
    requests = {"W1": w1_request().SerializeToString(), "W2": w2_request().SerializeToString()}
    runs = []
    for repetition in range(1, args.repeat + 1):
        for workload, rows in RESPONSE_ROWS.items():
            modes = MODES if repetition % 2 else MODES[::-1]
            for mode in modes:
                server, port = start_server(mode, rows, args.threads)
                try:
                    verify(port, requests[workload], rows)
                    warm_up = h2load_command(
                        port, bodies[workload], args.warm_up, args.clients, args.streams
                    )
                    parse_h2load(run_h2load(warm_up))
                    command = h2load_command(
                        port, bodies[workload], args.duration, args.clients, args.streams
                    )
                    output, accounting = accounted(
                        partial(run_h2load, command), partial(server_cpu_seconds, server.pid)
                    )
                finally:
                    server.terminate()
                    server.wait()
                run = Run(
                    repetition=repetition,
                    server=mode,
                    workload=workload,
                    h2load=parse_h2load(output),
                    **asdict(accounting),
                    command=shlex.join(command).replace(f":{port}/", ":PORT/"),
                )
                print(row(run), flush=True)
                runs.append(run)
    return runs


HEADER = (
    f"{'rep':>3} {'mode':<4} {'wl':<2} {'req/s':>9} {'mean ms':>8} {'sd ms':>7} {'min ms':>7} "
    f"{'max ms':>8} {'cpu us/req':>10} {'server busy':>11} {'core0 idle':>10} "
    f"{'h2load busy':>11} {'load1':>5}"
)


def row(run: Run) -> str:
    h = run.h2load
    return (
        f"{run.repetition:>3} {run.server:<4} {run.workload:<2} {h.rps:>9.1f} "
        f"{h.mean_ms:>8.2f} {h.sd_ms:>7.2f} {h.min_ms:>7.2f} {h.max_ms:>8.2f} "
        f"{run.cpu_us_per_request:>10.1f} {run.server_busy:>11.0%} "
        f"{run.server_core_idle:>10.0%} {run.client_busy:>11.0%} {run.loadavg_1m:>5.2f}"
    )


def summarize(runs: list[Run]) -> list[Summary]:
    """Per workload, each mode's throughput and server CPU cost per request, run by run."""

    def pick(workload: str, mode: str) -> list[Run]:
        return [r for r in runs if r.workload == workload and r.server == mode]

    return [
        Summary(
            workload=workload,
            sync_rps=[r.h2load.rps for r in pick(workload, "sync")],
            aio_rps=[r.h2load.rps for r in pick(workload, "aio")],
            sync_cpu_us_per_request=[r.cpu_us_per_request for r in pick(workload, "sync")],
            aio_cpu_us_per_request=[r.cpu_us_per_request for r in pick(workload, "aio")],
        )
        for workload in RESPONSE_ROWS
    ]


def print_summary(summary: list[Summary]) -> None:
    print("\nworkload  sync req/s (runs)      aio req/s (runs)       sync/aio  cpu aio/sync")
    for s in summary:
        sync = ", ".join(f"{v:.0f}" for v in s.sync_rps)
        aio = ", ".join(f"{v:.0f}" for v in s.aio_rps)
        print(
            f"{s.workload:<9} {sync:<22} {aio:<22} {s.rps_sync_over_aio:>8.2f}x"
            f" {s.cpu_aio_over_sync:>12.2f}x"
        )


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=2, help="runs of each (mode, workload)")
    parser.add_argument("--duration", type=float, default=5.0, help="measured seconds per run")
    parser.add_argument("--warm-up", type=float, default=1.0, help="unmeasured seconds first")
    parser.add_argument("--clients", type=int, default=4, help="h2load connections")
    parser.add_argument("--streams", type=int, default=8, help="in flight per connection")
    parser.add_argument("--threads", type=int, default=8, help="sync server's pool size")
    parser.add_argument("--out", type=Path, default=RESULTS / "floors.json")
    args = parser.parse_args()

    started = datetime.datetime.now(datetime.UTC)
    bodies = write_bodies(RESULTS / "bodies")
    in_flight = args.clients * args.streams
    print(f"server on core {SERVER_CORE}, h2load on core {CLIENT_CORE}, {in_flight} in flight")
    print(HEADER)
    runs = measure(args, bodies)
    summary = summarize(runs)
    print_summary(summary)

    h2load_version = subprocess.run(["h2load", "--version"], capture_output=True, text=True)
    report = {
        "date": started.isoformat(timespec="seconds"),
        "command": shlex.join([sys.executable, *sys.argv]),
        "machine": {
            "cpus": os.cpu_count(),
            "cpu_model": cpu_model(),
            "kernel": platform.release(),
            "server_core": SERVER_CORE,
            "client_core": CLIENT_CORE,
        },
        "versions": {
            "python": platform.python_version(),
            "grpcio": grpc.__version__,
            "h2load": h2load_version.stdout.strip(),
        },
        "settings": vars(args) | {"out": str(args.out), "in_flight": in_flight},
        "runs": [
            asdict(r)
            | {
                "cpu_us_per_request": r.cpu_us_per_request,
                "server_busy": r.server_busy,
                "client_busy": r.client_busy,
            }
            for r in runs
        ],
        "summary": [
            asdict(s)
            | {"rps_sync_over_aio": s.rps_sync_over_aio, "cpu_aio_over_sync": s.cpu_aio_over_sync}
            for s in summary
        ],
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
