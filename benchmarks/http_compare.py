"""Measures Arrowsmith's HTTP front against `mlflow models serve` on one-row requests.

Workloads, each one wine row per request:

- W3: POST /invocations with a `dataframe_split` body (both servers);
- V2: POST /v2/models/wine/infer with 11 FP64 [1, 1] JSON inputs (Arrowsmith only; MLflow
  speaks no V2, so its W3 figure is the baseline an MLflow user would get for one row);
- floor: GET of the cheapest endpoint (/v2/health/live, MLflow's /ping), what each HTTP
  stack costs with no model work.

Both servers run one process (Arrowsmith `--workers 1`, MLflow's single uvicorn worker),
pinned to core 0; h2load (HTTP/1.1, one request in flight per connection) runs on core 1.
Each server starts once; workloads alternate order between repetitions. Server CPU time per
request (from /proc, the server's whole process group) is reported beside req/s, and
h2load's own CPU time shows it was not the bottleneck.

    .venv/bin/python benchmarks/http_compare.py
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import platform
import re
import shlex
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path

from floors import H2load, Run, accounted, cpu_model

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RESULTS = HERE / "results"
WINE_CSV = ROOT / "examples" / "wine" / "winequality-red.csv"
WINE_MODEL = ROOT / "examples" / "wine" / "model"
SERVER_CORE = "0"
CLIENT_CORE = "1"
JSON = "application/json"


@dataclass(frozen=True)
class Target:
    """One (server, workload): where to send which body."""

    server: str
    workload: str
    path: str
    #: None: a GET.
    body: Path | None


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def group_cpu_seconds(group: int) -> float:
    """User + system CPU time of every live process in a process group (MLflow runs
    uvicorn as a child)."""
    ticks = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError):
            text = stat.read_text()
            fields = text[text.rindex(")") + 2 :].split()
            if int(fields[2]) == group:
                ticks += int(fields[11]) + int(fields[12])
    return ticks / os.sysconf("SC_CLK_TCK")


def wait_for(url: str, process: subprocess.Popen[bytes], seconds: float = 180) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited ({process.returncode}) before {url} answered")
        with (
            contextlib.suppress(urllib.error.URLError, ConnectionError),
            urllib.request.urlopen(url, timeout=5) as answer,
        ):
            if answer.status == 200:
                return
        time.sleep(0.2)
    raise RuntimeError(f"{url} did not answer in {seconds} s")


@contextlib.contextmanager
def server(command: list[str], ready_url: str, log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """A server pinned to SERVER_CORE in its own process group, stopped with it."""
    bin_dir = str(Path(sys.executable).parent)
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"}
    with log.open("wb") as out:
        process = subprocess.Popen(
            ["taskset", "-c", SERVER_CORE, *command],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
    try:
        wait_for(ready_url, process)
        yield process
    finally:
        stop_group(process)


def stop_group(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM to a server's whole process group; SIGKILL if it has not ended in 30 s."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(30)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def wine_model(work: Path) -> Path:
    """The example model, trained into `work` when examples/wine/model is missing."""
    if (WINE_MODEL / "MLmodel").exists():
        return WINE_MODEL
    target = work / "wine"
    train = [sys.executable, str(ROOT / "examples" / "wine" / "train.py"), "--output", str(target)]
    subprocess.run(train, check=True)
    return target


def write_bodies(directory: Path) -> dict[str, Path]:
    import pandas as pd

    row = pd.read_csv(WINE_CSV, sep=";").drop(columns=["quality"]).astype("float64").iloc[:1]
    split = {"dataframe_split": {"columns": list(row.columns), "data": row.to_numpy().tolist()}}
    v2 = {
        "inputs": [
            {"name": c, "shape": [1, 1], "datatype": "FP64", "data": [[float(row[c].iloc[0])]]}
            for c in row.columns
        ]
    }
    directory.mkdir(parents=True, exist_ok=True)
    bodies = {"W3": directory / "w3.json", "V2": directory / "v2-one-row.json"}
    bodies["W3"].write_text(json.dumps(split))
    bodies["V2"].write_text(json.dumps(v2))
    return bodies


def post(url: str, body: Path) -> dict[str, object]:
    """The JSON answer to a POST of `body`."""
    request = urllib.request.Request(url, body.read_bytes(), {"Content-Type": JSON})
    with urllib.request.urlopen(request, timeout=30) as answer:
        document: dict[str, object] = json.load(answer)
        return document


def check_answers(targets: list[Target], ports: dict[str, int]) -> None:
    """Both servers give the same first-row prediction before anything is measured."""
    answers = {}
    for target in targets:
        if target.body is None:
            continue
        document = post(f"http://127.0.0.1:{ports[target.server]}{target.path}", target.body)
        if target.workload == "W3":
            answers[target.server, target.workload] = document["predictions"]
        else:
            outputs = document["outputs"]
            assert isinstance(outputs, list)
            answers[target.server, target.workload] = outputs[0]["data"]
    if len({json.dumps(a) for a in answers.values()}) != 1:
        raise RuntimeError(f"the servers disagree: {answers}")
    print(f"first-row prediction, every server and workload: {next(iter(answers.values()))}")


def h2load(url: str, body: Path | None, seconds: float, clients: int) -> list[str]:
    command = ["taskset", "-c", CLIENT_CORE, "h2load", "--h1", "-D", f"{round(seconds * 1000)}ms"]
    command += ["-c", str(clients)]
    if body is not None:
        command += ["--header", f"content-type: {JSON}", "-d", str(body)]
    return [*command, url]


def ms(value: str) -> float:
    """An h2load duration such as `267us`, `3.99ms` or `1.2s`, in milliseconds."""
    for unit, scale in (("us", 1e-3), ("ms", 1.0), ("s", 1e3)):
        if value.endswith(unit):
            return float(value.removesuffix(unit)) * scale
    raise ValueError(f"not an h2load duration: {value}")


def run_h2load(command: list[str]) -> H2load:
    """h2load's summary; raises on any failed request or non-2xx answer. (With HTTP/1.1 and
    a duration, h2load also counts the statuses of requests answered after the stop, so
    its 2xx count may exceed the requests done.)"""
    done = subprocess.run(command, capture_output=True, text=True)
    output = done.stdout + done.stderr
    finished = re.search(r"finished in (\S+), ([\d.]+) req/s", output)
    counts = re.search(r"(\d+) done, (\d+) succeeded, (\d+) failed, (\d+) errored", output)
    status = re.search(r"(\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", output)
    latency = re.search(r"time for request:\s+(\S+)\s+(\S+)\s+(\S+)\s+(\S+)", output)
    if not (finished and counts and status and latency):
        raise RuntimeError(f"unexpected h2load output:\n{output}")
    requests_done, succeeded, *failed = (int(n) for n in counts.groups())
    if not requests_done or succeeded != requests_done or any(failed):
        raise RuntimeError(f"h2load saw failed requests:\n{output}")
    if any(int(n) for n in status.groups()[1:]):
        raise RuntimeError(f"h2load saw non-2xx answers:\n{output}")
    return H2load(
        duration_s=ms(finished[1]) / 1e3,
        rps=float(finished[2]),
        requests=requests_done,
        min_ms=ms(latency[1]),
        max_ms=ms(latency[2]),
        mean_ms=ms(latency[3]),
        sd_ms=ms(latency[4]),
    )


def measure(
    args: argparse.Namespace, targets: list[Target], ports: dict[str, int], groups: dict[str, int]
) -> list[Run]:
    runs = []
    for repetition in range(1, args.repeat + 1):
        for target in targets if repetition % 2 else targets[::-1]:
            url = f"http://127.0.0.1:{ports[target.server]}{target.path}"
            run_h2load(h2load(url, target.body, args.warm_up, args.clients))
            group = groups[target.server]
            command = h2load(url, target.body, args.duration, args.clients)
            result, accounting = accounted(
                partial(run_h2load, command), partial(group_cpu_seconds, group)
            )
            run = Run(
                repetition=repetition,
                server=target.server,
                workload=target.workload,
                h2load=result,
                **asdict(accounting),
            )
            print(row(run), flush=True)
            runs.append(run)
    return runs


HEADER = (
    f"{'rep':>3} {'server':<10} {'wl':<5} {'req/s':>8} {'mean ms':>8} {'sd ms':>7} "
    f"{'max ms':>8} {'cpu us/req':>10} {'server busy':>11} {'core0 idle':>10} "
    f"{'h2load busy':>11} {'load1':>5}"
)


def row(run: Run) -> str:
    h = run.h2load
    return (
        f"{run.repetition:>3} {run.server:<10} {run.workload:<5} {h.rps:>8.1f} "
        f"{h.mean_ms:>8.2f} {h.sd_ms:>7.2f} {h.max_ms:>8.2f} {run.cpu_us_per_request:>10.1f} "
        f"{run.server_busy:>11.0%} {run.server_core_idle:>10.0%} {run.client_busy:>11.0%} "
        f"{run.loadavg_1m:>5.2f}"
    )


def summarize(runs: list[Run]) -> dict[str, float]:
    """Mean req/s per (server, workload), each Arrowsmith workload over MLflow's W3, and
    the floors."""

    def mean_rps(server_name: str, workload: str) -> float:
        values = [r.h2load.rps for r in runs if (r.server, r.workload) == (server_name, workload)]
        return sum(values) / len(values)

    baseline = mean_rps("mlflow", "W3")
    summary = {"mlflow W3 req/s": baseline}
    for workload in ("W3", "V2"):
        rps = mean_rps("arrowsmith", workload)
        summary[f"arrowsmith {workload} req/s"] = rps
        summary[f"arrowsmith {workload} / mlflow W3"] = rps / baseline
    summary["arrowsmith floor req/s"] = mean_rps("arrowsmith", "floor")
    summary["mlflow floor req/s"] = mean_rps("mlflow", "floor")
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=2, help="runs of each (server, workload)")
    parser.add_argument("--duration", type=float, default=10.0, help="measured seconds per run")
    parser.add_argument("--warm-up", type=float, default=2.0, help="unmeasured seconds first")
    parser.add_argument("--clients", type=int, default=16, help="h2load connections")
    parser.add_argument("--out", type=Path, default=RESULTS / "http-compare.json")
    args = parser.parse_args()

    started = datetime.datetime.now(datetime.UTC)
    work = Path(tempfile.mkdtemp(prefix="http-compare-"))
    model = wine_model(work)
    bodies = write_bodies(RESULTS / "bodies")
    ports = {"arrowsmith": free_port(), "mlflow": free_port()}
    arrowsmith = [sys.executable, "-m", "arrowsmith", "serve", str(model), "--name", "wine"]
    arrowsmith += ["--workers", "1", "--grpc-port", str(free_port()), "--metrics-port", "0"]
    arrowsmith += ["--flight-port", "0"]
    arrowsmith += ["--http-port", str(ports["arrowsmith"]), "--log-level", "WARNING"]
    mlflow = [str(Path(sys.executable).parent / "mlflow"), "models", "serve", "-m", str(model)]
    mlflow += ["--env-manager", "local", "-h", "127.0.0.1", "-p", str(ports["mlflow"])]
    targets = [
        Target("arrowsmith", "W3", "/invocations", bodies["W3"]),
        Target("arrowsmith", "V2", "/v2/models/wine/infer", bodies["V2"]),
        Target("mlflow", "W3", "/invocations", bodies["W3"]),
        Target("arrowsmith", "floor", "/v2/health/live", None),
        Target("mlflow", "floor", "/ping", None),
    ]
    with (
        server(
            arrowsmith, f"http://127.0.0.1:{ports['arrowsmith']}/v2/health/ready", work / "a.log"
        ) as ours,
        server(mlflow, f"http://127.0.0.1:{ports['mlflow']}/ping", work / "m.log") as theirs,
    ):
        check_answers(targets, ports)
        groups = {"arrowsmith": ours.pid, "mlflow": theirs.pid}
        print(f"servers on core {SERVER_CORE}, h2load --h1 on core {CLIENT_CORE}, "
              f"{args.clients} connections")  # fmt: skip
        print(HEADER)
        runs = measure(args, targets, ports, groups)
    summary = summarize(runs)
    print()
    for key, value in summary.items():
        print(f"{key:<28} {value:>8.2f}")

    h2load_version = subprocess.run(["h2load", "--version"], capture_output=True, text=True)
    report = {
        "date": started.isoformat(timespec="seconds"),
        "command": shlex.join([sys.executable, *sys.argv]),
        "machine": {"cpus": os.cpu_count(), "cpu_model": cpu_model(), "kernel": platform.release()},
        "versions": {"python": platform.python_version(), "h2load": h2load_version.stdout.strip()},
        "settings": vars(args) | {"out": str(args.out), "model": str(model)},
        "runs": [
            asdict(r)
            | {
                "cpu_us_per_request": r.cpu_us_per_request,
                "server_busy": r.server_busy,
                "client_busy": r.client_busy,
            }
            for r in runs
        ],
        "summary": summary,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
