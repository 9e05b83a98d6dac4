"""Arrowsmith beside its peers in one run: native and grpcio floors, control, MLServer, MLflow.

gRPC servers each start pinned to core 0, answer one request of each workload they take,
checked against MLflow's own prediction, then take it from arrowsmith-bench pinned to core
1. The servers: Arrowsmith; the native floor (rust/floor, `arrowsmith-floor`: HTTP/2 in Rust
on one thread, answering canned bytes without parsing the request, the most this machine can
answer of the same traffic) and the grpcio floor (floor_server.py, grpcio's sync server, the
same canned bytes), both answering with files written here from MLflow's predictions: the
wine model's first-row answer (repeated for W2's rows; inside a ModelStreamInferResponse for
W5) and the digits model's answer to W4's image; the pure-Python control
(control_server.py); MLServer in each config of peers/mlserver_settings.py. The workloads:
W1 (one wine row, typed contents, 32 in flight), W1pd (W1's row as MLServer's codecs send a
DataFrame, with the request parameter `content_type: "pd"`; 32 in flight), W2 (4,096 wine
rows raw, 8 in flight), W4 (one 8x8 digits image, UINT8 [1, 64] raw, to the tensor-signature
classifier of digits_model.py, 32 in flight) and W5 (W1's request as messages of one
ModelStreamInfer stream, 32 in flight on it). Arrowsmith and MLServer serve the digits model
in starts of their own, each floor its three canned answers in three starts (W1, W1pd and
W5; W2; W4); the control is wine-specific and takes W1 and W2 only. W5 goes to Arrowsmith
and the floors only: the control serves no ModelStreamInfer, and MLServer's answers a
stream's first message alone (its MLflow runtime has no `predict_stream`) with a bare
ModelInferResponse, not the ModelStreamInferResponse Triton's streaming extension defines.
W3 (`/invocations`, one `dataframe_split` row) puts Arrowsmith's HTTP front beside `mlflow
models serve`, driven by arrowsmith-bench over HTTP/1.1 (keep-alive, one request in flight
per connection); no floor takes it. Over the connections it opens here (8 for 32 in flight),
arrowsmith-bench drives the native floor at least as fast as h2load does, so it measures
every server, the floors included. Servers alternate order between repetitions. The report
gives every server's req/s as a share of the native floor's, per workload (W3 has none),
Arrowsmith's ratio to each peer, and the targets. Writes results/compare.json,
results/compare.png and results/compare.md (the section for RESULTS.md).

    benchmarks/peers/setup.sh && .venv/bin/python benchmarks/compare.py   # make bench-compare
    .venv/bin/python benchmarks/compare.py --repeat 1 --duration 1 --warmup 0.5   # a smoke run
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import grpc
import numpy as np
from bodies import (
    W2_ROWS,
    w1_request,
    w1pd_request,
    w2_request,
    w4_image,
    w4_request,
    wine_features,
)
from digits_model import MODEL_NAME as DIGITS
from digits_model import digits_model
from floor_server import OPTIONS, SERVICE, canned_response, classes_response, streamed
from floors import core_ticks, cpu_model
from http_compare import (
    Target,
    check_answers,
    free_port,
    group_cpu_seconds,
    server,
    stop_group,
    wine_model,
    write_bodies,
)
from peers import mlserver_settings
from tritonclient.grpc import service_pb2 as pb

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RESULTS = HERE / "results"
BENCH = ROOT / "rust" / "target" / "release" / "arrowsmith-bench"
NATIVE_FLOOR = ROOT / "rust" / "target" / "release" / "arrowsmith-floor"
MLSERVER_VENV = HERE / "peers" / ".venv-mlserver"
SERVER_CORE = "0"
CLIENT_CORE = "1"
METHOD = f"/{SERVICE}/ModelInfer"
STREAM_METHOD = f"/{SERVICE}/ModelStreamInfer"
GRPC_WORKLOADS = {
    "W1": (1, 32),
    "W1pd": (1, 32),
    "W2": (W2_ROWS, 8),
    "W4": (1, 32),
    "W5": (1, 32),
}  # rows, in flight
WINE = ("W1", "W2")  # the wine model's unary gRPC workloads in plain V2; W4 is the digits model's
PANDAS = ("W1pd",)  # the wine model's, as MLServer's codecs send a DataFrame
STREAMED = ("W5",)  # the wine model's, over one ModelStreamInfer stream
WORKLOADS = ("W1", "W1pd", "W2", "W3", "W4", "W5")
#: Each floor's starts: the workloads one takes, and the name of its canned answer.
FLOOR_STARTS: tuple[tuple[tuple[str, ...], str], ...] = (
    (("W1", "W1pd", "W5"), "wine-1"),
    (("W2",), "wine-4096"),
    (("W4",), "digits"),
)
NATIVE = "native floor"
FLOORS = (NATIVE, "grpcio floor")
#: numpy dtypes of the output datatypes the servers answer with, and their typed contents.
DTYPES = {"FP64": "<f8", "FP32": "<f4", "INT64": "<i8", "INT32": "<i4"}
CONTENTS = {
    "FP64": "fp64_contents",
    "FP32": "fp32_contents",
    "INT64": "int64_contents",
    "INT32": "int_contents",
}
ORDER = ["arrowsmith", *FLOORS, "control", *mlserver_settings.CONFIGS, "mlflow"]
#: The smallest gap between W1pd and W1 counted as more than noise; a larger spread of
#: their own runs widens it.
NOISE = 0.05


@dataclass
class Run:
    """One measured (server, workload) level."""

    repetition: int
    server: str
    workload: str
    rps: float
    p50_ms: float
    p99_ms: float
    errors: int
    generator_cpu_share: float
    server_cpu_us_per_request: float
    server_core_idle: float
    loadavg_1m: float


@dataclass(frozen=True)
class Session:
    """One server start: its command and the gRPC workloads it takes."""

    server: str
    workloads: tuple[str, ...]
    command: tuple[str, ...]
    port: int
    cwd: Path | None = None
    path: Path | None = None
    #: Where Python finds the package first (an earlier build, for `ab.py`).
    pythonpath: Path | None = None


def canned_answers(directory: Path, digits_label: np.ndarray) -> dict[str, Path]:
    """The floors' canned answers, written to `directory`, by name: the wine model's answer
    to one row and to W2's rows (floor_server.py's `canned_response`), the one-row answer as
    a ModelStreamInferResponse (for W5), and the digits model's answer to W4's image (its
    label as MLflow predicts it)."""
    answers = {
        "wine-1": canned_response(1),
        "wine-1-streamed": streamed(canned_response(1)),
        "wine-4096": canned_response(W2_ROWS),
        "digits": classes_response(digits_label),
    }
    paths = {}
    for name, answer in answers.items():
        paths[name] = directory / f"answer-{name}.pb"
        paths[name].write_bytes(answer)
    return paths


def sessions(model: Path, digits: Path, work: Path, answers: dict[str, Path]) -> list[Session]:
    """The gRPC servers, each on a fresh port: Arrowsmith once for the wine model (W1, W2,
    W1pd, W5) and once for the digits model (W4), each MLServer config the same without W5,
    each floor once per canned answer (FLOOR_STARTS), the control (W1, W2) once."""
    py = sys.executable
    served: list[tuple[Path, str, tuple[str, ...]]] = [
        (model, "wine", (*WINE, *PANDAS)),
        (digits, DIGITS, ("W4",)),
    ]  # MLServer's
    result = []
    for path, name, workloads in ((model, "wine", (*WINE, *PANDAS, *STREAMED)), served[1]):
        port = free_port()
        command = [py, "-m", "arrowsmith", "serve", str(path), "--name", name, "--workers", "1"]
        command += ["--http-port", "0", "--metrics-port", "0", "--grpc-port", str(port)]
        command += ["--flight-port", "0"]
        command += ["--log-level", "WARNING"]
        result.append(Session("arrowsmith", workloads, tuple(command), port))
    for workloads, answer in FLOOR_STARTS:
        port = free_port()
        command = [str(NATIVE_FLOOR), "--port", str(port), "--response", str(answers[answer])]
        if any(workload in STREAMED for workload in workloads):
            command += ["--stream-response", str(answers[f"{answer}-streamed"])]
        result.append(Session(NATIVE, workloads, tuple(command), port))
        port = free_port()
        command = [py, str(HERE / "floor_server.py"), "--mode", "sync", "--port", str(port)]
        command += ["--response", str(answers[answer])]
        result.append(Session("grpcio floor", workloads, tuple(command), port))
    port = free_port()
    command = [py, str(HERE / "control_server.py"), str(model), "--port", str(port)]
    result.append(Session("control", WINE, tuple(command), port))
    for config in mlserver_settings.CONFIGS:
        for path, name, workloads in served:
            ports = {key: free_port() for key in ("http_port", "grpc_port", "metrics_port")}
            folder = work / (config if name == "wine" else f"{config}-{name}")
            mlserver_settings.write(folder, config, ports, path, name)
            bin_dir = MLSERVER_VENV / "bin"
            command = [str(bin_dir / "mlserver"), "start", str(folder)]
            port = ports["grpc_port"]
            result.append(Session(config, workloads, tuple(command), port, folder, bin_dir))
    return result


def predictions(response: pb.ModelInferResponse) -> np.ndarray:
    """The first output's values, raw or typed, as its datatype says."""
    output = response.outputs[0]
    dtype = DTYPES[output.datatype]
    if response.raw_output_contents:
        return np.frombuffer(response.raw_output_contents[0], dtype)
    return np.array(getattr(output.contents, CONTENTS[output.datatype]), dtype)


def answer(channel: grpc.Channel, workload: str, body: bytes) -> pb.ModelInferResponse:
    """The server's answer to `body`: a unary ModelInfer, or for a streamed workload the one
    answer to a ModelStreamInfer stream of that one message (an in-band error raises)."""
    if workload not in STREAMED:
        return pb.ModelInferResponse.FromString(channel.unary_unary(METHOD)(body, timeout=30))
    (streamed,) = channel.stream_stream(STREAM_METHOD)(iter([body]), timeout=30)
    message = pb.ModelStreamInferResponse.FromString(streamed)
    if message.error_message:
        raise RuntimeError(f"{workload}: {message.error_message}")
    return message.infer_response


@contextlib.contextmanager
def grpc_server(session: Session, body: bytes, log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """The session's server pinned to SERVER_CORE in its own process group, ready once a
    ModelInfer with `body` succeeds; stopped with its whole group."""
    env = dict(os.environ)
    if session.path is not None:
        env["PATH"] = f"{session.path}{os.pathsep}{env.get('PATH', '')}"
    if session.pythonpath is not None:
        env["PYTHONPATH"] = str(session.pythonpath)
    with log.open("wb") as out:
        process = subprocess.Popen(
            ["taskset", "-c", SERVER_CORE, *session.command],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=session.cwd,
            start_new_session=True,
        )
    try:
        with grpc.insecure_channel(f"127.0.0.1:{session.port}", options=OPTIONS) as channel:
            call = channel.unary_unary(METHOD)
            deadline = time.monotonic() + 120
            while True:
                if process.poll() is not None:
                    raise RuntimeError(f"{session.server} exited; see {log}")
                try:
                    call(body, timeout=5)
                    break
                except grpc.RpcError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.2)
        yield process
    finally:
        stop_group(process)


def verify(session: Session, bodies: dict[str, bytes], expected: dict[str, np.ndarray]) -> None:
    """Each workload's answer against MLflow's: wine's with np.allclose, W4's class labels
    exactly. A floor's canned answer (the first row's, repeated) is checked by its rows and
    its first value."""
    with grpc.insecure_channel(f"127.0.0.1:{session.port}", options=OPTIONS) as channel:
        for workload in session.workloads:
            got = predictions(answer(channel, workload, bodies[workload]))
            want = expected[workload]
            if session.server in FLOORS:
                want = want[:1]
            same = np.array_equal if workload == "W4" else np.allclose
            if len(got) != len(expected[workload]) or not same(got[: len(want)], want):
                raise RuntimeError(f"{session.server} {workload}: {got[:3]} not {want[:3]}")
            canned = " (canned)" if session.server in FLOORS else ""
            print(f"  {session.server} {workload}: {len(got)} rows, first {got[0]!r}{canned}")


def expected_predictions(model: Path, digits: Path) -> dict[str, np.ndarray]:
    """MLflow's own answer (pyfunc, its enforcement) to the W1 and W2 rows, FP32 as sent
    (W1pd and W5 send W1's), and to W4's uint8 image (class labels, int64)."""
    import mlflow.pyfunc
    import pandas as pd

    names, values = wine_features()
    loaded = mlflow.pyfunc.load_model(str(model))
    result = {
        workload: np.asarray(
            loaded.predict(pd.DataFrame(np.resize(values, (rows, len(names))), columns=names)),
            dtype=np.float64,
        ).ravel()
        for workload, (rows, _) in GRPC_WORKLOADS.items()
        if workload in WINE
    }
    result["W4"] = np.asarray(mlflow.pyfunc.load_model(str(digits)).predict(w4_image())).ravel()
    result["W1pd"] = result["W5"] = result["W1"]
    return result


def drive(
    server: str,
    port: int,
    group: int,
    workload: str,
    load: list[str],
    repetition: int,
    args: argparse.Namespace,
) -> Run:
    """One arrowsmith-bench level (`load`: the workload's options), with the server's CPU
    and core 0's idle time around it."""
    out = RESULTS / "compare-level.json"
    command = ["taskset", "-c", CLIENT_CORE, str(BENCH), "--target", f"127.0.0.1:{port}", *load]
    command += ["--duration", str(args.duration), "--warmup", str(args.warmup), "--json", str(out)]
    loadavg = os.getloadavg()[0]
    # The warm-up is inside the generator's run: measure the server from its end on.
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL)
    time.sleep(args.warmup)
    cpu_before = group_cpu_seconds(group)
    idle_before, total_before = core_ticks(SERVER_CORE)
    if process.wait() != 0:
        raise RuntimeError(f"arrowsmith-bench failed against {server} {workload}")
    idle_after, total_after = core_ticks(SERVER_CORE)
    level = json.loads(out.read_text())["levels"][0]
    requests = level["throughput_rps"] * args.duration
    return Run(
        repetition=repetition,
        server=server,
        workload=workload,
        rps=level["throughput_rps"],
        p50_ms=level["p50_ms"],
        p99_ms=level["p99_ms"],
        errors=level["errors"],
        generator_cpu_share=level["generator_cpu_share"],
        server_cpu_us_per_request=(group_cpu_seconds(group) - cpu_before) / requests * 1e6,
        server_core_idle=(idle_after - idle_before) / (total_after - total_before),
        loadavg_1m=loadavg,
    )


def measure_grpc(args: argparse.Namespace, repetition: int, order: list[Session]) -> list[Run]:
    """Each session in `order`: start, verify, every workload it takes, stop."""
    requests = {
        "W1": w1_request(),
        "W1pd": w1pd_request(),
        "W2": w2_request(),
        "W4": w4_request(),
        "W5": w1_request(),
    }
    bodies = {workload: request.SerializeToString() for workload, request in requests.items()}
    body_files = {}
    for workload, body in bodies.items():
        body_files[workload] = RESULTS / "bodies" / f"{workload.lower()}.pb"
        body_files[workload].write_bytes(body)
    runs = []
    for session in order:
        log = RESULTS / "compare-logs" / f"{session.server}-{'-'.join(session.workloads)}.log"
        with grpc_server(session, bodies[session.workloads[0]], log) as process:
            verify(session, bodies, args.expected)
            for workload in session.workloads:
                rows, in_flight = GRPC_WORKLOADS[workload]
                load = ["--body", str(body_files[workload]), "--concurrency", str(in_flight)]
                load += ["--expect-rows", str(rows)]
                if workload in STREAMED:
                    load += ["--stream", "--connections", "1"]
                run = drive(
                    session.server, session.port, process.pid, workload, load, repetition, args
                )
                print(row(run), flush=True)
                runs.append(run)
    return runs


def measure_w3(args: argparse.Namespace, model: Path, repetition: int, work: Path) -> list[Run]:
    """W3 on Arrowsmith's HTTP front and `mlflow models serve`, one server at a time."""
    body = write_bodies(RESULTS / "bodies")["W3"]
    mlflow_bin = Path(sys.executable).parent / "mlflow"
    runs = []
    servers = ["arrowsmith", "mlflow"] if repetition % 2 else ["mlflow", "arrowsmith"]
    for name in servers:
        port = free_port()
        if name == "arrowsmith":
            command = [sys.executable, "-m", "arrowsmith", "serve", str(model), "--name", "wine"]
            command += ["--workers", "1", "--grpc-port", str(free_port()), "--metrics-port", "0"]
            command += ["--flight-port", "0"]
            command += ["--http-port", str(port), "--log-level", "WARNING"]
            ready = f"http://127.0.0.1:{port}/v2/health/ready"
        else:
            command = [str(mlflow_bin), "models", "serve", "-m", str(model), "--env-manager"]
            command += ["local", "-h", "127.0.0.1", "-p", str(port)]
            ready = f"http://127.0.0.1:{port}/ping"
        with server(command, ready, work / f"{name}-w3.log") as process:
            check_answers([Target(name, "W3", "/invocations", body)] * 2, {name: port})
            load = ["--http", "/invocations", "--body", str(body)]
            load += ["--concurrency", str(args.http_clients)]
            run = drive(name, port, process.pid, "W3", load, repetition, args)
        print(row(run), flush=True)
        runs.append(run)
    return runs


HEADER = (
    f"{'rep':>3} {'server':<17} {'wl':<4} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} "
    f"{'errors':>6} {'gen cpu':>7} {'srv us/req':>10} {'core0 idle':>10} {'load1':>5}"
)


def row(run: Run) -> str:
    return (
        f"{run.repetition:>3} {run.server:<17} {run.workload:<4} {run.rps:>9.1f} "
        f"{run.p50_ms:>8.2f} {run.p99_ms:>8.2f} {run.errors:>6} "
        f"{run.generator_cpu_share:>7.0%} {run.server_cpu_us_per_request:>10.1f} "
        f"{run.server_core_idle:>10.0%} {run.loadavg_1m:>5.2f}"
    )


@dataclass
class Cell:
    """The mean of one (server, workload) over the repetitions."""

    rps: float
    p50_ms: float
    p99_ms: float
    runs_rps: list[float]


def summarize(runs: list[Run]) -> dict[str, dict[str, Cell]]:
    """workload -> server -> Cell, servers in ORDER."""
    table: dict[str, dict[str, Cell]] = {}
    for workload in WORKLOADS:
        table[workload] = {}
        for name in ORDER:
            picked = [r for r in runs if (r.server, r.workload) == (name, workload)]
            if picked:
                table[workload][name] = Cell(
                    rps=statistics.mean(r.rps for r in picked),
                    p50_ms=statistics.mean(r.p50_ms for r in picked),
                    p99_ms=statistics.mean(r.p99_ms for r in picked),
                    runs_rps=[r.rps for r in picked],
                )
    return table


def ratios(table: dict[str, dict[str, Cell]]) -> dict[str, dict[str, float]]:
    """Arrowsmith's req/s over each peer's, per workload, MLServer's best config included."""
    result: dict[str, dict[str, float]] = {}
    for workload, cells in table.items():
        ours = cells["arrowsmith"].rps
        result[workload] = {name: ours / c.rps for name, c in cells.items() if name != "arrowsmith"}
        mlserver = [c.rps for name, c in cells.items() if name in mlserver_settings.CONFIGS]
        if mlserver:
            result[workload]["mlserver (best)"] = ours / max(mlserver)
    return result


def native_shares(table: dict[str, dict[str, Cell]]) -> dict[str, dict[str, float]]:
    """Every other server's req/s as a share of the native floor's, per workload the native
    floor takes (not W3)."""
    result: dict[str, dict[str, float]] = {}
    for workload, cells in table.items():
        if NATIVE in cells:
            floor = cells[NATIVE].rps
            result[workload] = {name: c.rps / floor for name, c in cells.items() if name != NATIVE}
    return result


def spread(cell: Cell) -> float:
    """How far apart a cell's runs are: their range over their mean."""
    return (max(cell.runs_rps) - min(cell.runs_rps)) / cell.rps


def targets(table: dict[str, dict[str, Cell]]) -> list[tuple[str, str, bool]]:
    """The targets: (what, measured, met)."""
    share = {w: s["arrowsmith"] for w, s in native_shares(table).items()}
    plain, pandas = table["W1"]["arrowsmith"], table["W1pd"]["arrowsmith"]
    pd_over_plain = pandas.rps / plain.rps
    noise = max(NOISE, spread(plain), spread(pandas))
    mlflow = table["W3"]["arrowsmith"].rps / table["W3"]["mlflow"].rps
    return [
        ("W1 >= 20% of the native floor", f"{share['W1']:.0%}", share["W1"] >= 0.20),
        (
            "W1pd equal to W1 within noise",
            f"{pd_over_plain:.2f}x W1 (noise {noise:.0%})",
            abs(pd_over_plain - 1) <= noise,
        ),
        ("W2 >= 70% of the native floor", f"{share['W2']:.0%}", share["W2"] >= 0.70),
        ("W4 >= 30% of the native floor", f"{share['W4']:.0%}", share["W4"] >= 0.30),
        ("W3 >= 20x `mlflow models serve`", f"{mlflow:.1f}x", mlflow >= 20.0),
    ]


def plot(table: dict[str, dict[str, Cell]], path: Path, title: str) -> None:
    """One panel per workload: each server's mean req/s, labelled."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    widths = [max(len(cells), 2) for cells in table.values()]
    figure, axes = plt.subplots(1, len(table), figsize=(30, 4.8), width_ratios=widths)
    for axis, (workload, cells) in zip(axes, table.items(), strict=True):
        names = list(cells)
        values = [cells[n].rps for n in names]
        colours = [COLOURS.get(n, "tab:grey") for n in names]
        bars = axis.bar(range(len(names)), values, color=colours)
        axis.bar_label(bars, labels=[f"{v:,.0f}" for v in values], fontsize=8)
        axis.set_xticks(range(len(names)), names, rotation=30, ha="right", fontsize=8)
        axis.set_title(WORKLOAD_TITLES[workload], fontsize=9)
        axis.set_ylabel("requests/s")
        axis.margins(y=0.12)
    figure.suptitle(title, fontsize=10)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


COLOURS = {"arrowsmith": "tab:red", NATIVE: "black"}
WORKLOAD_TITLES = {
    "W1": "W1: 1 row, typed FP32, 32 in flight (gRPC)",
    "W1pd": 'W1pd: W1 with content_type "pd" (MLServer\'s codecs), 32 in flight',
    "W2": "W2: 4,096 rows, raw FP32, 8 in flight (gRPC)",
    "W3": "W3: /invocations, 1 row",
    "W4": "W4: 1 digits image, raw UINT8 [1, 64], 32 in flight (gRPC)",
    "W5": "W5: 1 row, typed FP32, 32 in flight on one stream (gRPC)",
}


def markdown(report: dict[str, object], table: dict[str, dict[str, Cell]], runs: list[Run]) -> str:
    """The section for RESULTS.md."""
    ratio = ratios(table)
    shares = native_shares(table)
    stack = report["versions"]
    assert isinstance(stack, dict)
    peers = [n for n in [*ORDER[1:], "mlserver (best)"] if any(n in r for r in ratio.values())]
    grpc_workloads = [w for w in WORKLOADS if w in shares]
    lines = [
        "## Arrowsmith beside its peers (`make bench-compare`)",
        "",
        f"Date: {report['date']} UTC. 1-minute load average before the run: "
        f"{report['loadavg_before']:.2f}.",
        "",
        "```",
        str(report["command"]),
        "```",
        "",
        "Versions: " + ", ".join(f"{k} {v}" for k, v in stack.items()) + ".",
        "The native floor (`rust/floor`) answers canned bytes over HTTP/2 from Rust on one",
        "thread, parsing nothing: the most this machine answers of the same traffic. The",
        "grpcio floor (`benchmarks/floor_server.py`) answers the same bytes from grpcio's sync",
        "server. W1pd is W1's row as MLServer's codecs send a DataFrame (the request",
        'parameter `content_type: "pd"`). W3 goes over HTTP/1.1, one request in flight per',
        "connection, to Arrowsmith and `mlflow models serve` only; MLServer's configs are in",
        "`benchmarks/peers/mlserver_settings.py`. W4 is one 8x8 digits image (UINT8 [1, 64],",
        "raw) to the tensor-signature classifier of `benchmarks/digits_model.py`; the control",
        "is wine-specific and takes W1 and W2 only. W5 sends W1's request as messages of one",
        "ModelStreamInfer stream, 32 in flight on it, to Arrowsmith and the floors only (the",
        "control has no streaming; MLServer's answers only a stream's first message). No",
        "target is set for W5.",
        "",
        "| server | "
        + " | ".join(
            f"{w} req/s" if w == "W3" else f"{w} req/s | {w} p50 / p99 ms" for w in WORKLOADS
        )
        + " |",
        "|---|" + "".join("---:|" if w == "W3" else "---:|---:|" for w in WORKLOADS),
    ]
    for name in ORDER:
        cells = []
        for workload in WORKLOADS:
            cell = table[workload].get(name)
            if workload == "W3":
                cells.append(f"{cell.rps:,.0f}" if cell else "")
            else:
                latency = f"{cell.p50_ms:.2f} / {cell.p99_ms:.2f}" if cell else ""
                cells += [f"{cell.rps:,.0f}" if cell else "", latency]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += ["", "req/s as a share of the native floor's (W3 has no native floor):", ""]
    lines += ["| server | " + " | ".join(grpc_workloads) + " |"]
    lines += ["|---|" + "---:|" * len(grpc_workloads)]
    for name in ORDER:
        if name != NATIVE and any(name in shares[w] for w in grpc_workloads):
            cells = [f"{shares[w][name]:.1%}" if name in shares[w] else "" for w in grpc_workloads]
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += ["", "Arrowsmith / peer, req/s:", ""]
    lines += ["| peer | " + " | ".join(WORKLOADS) + " |", "|---|" + "---:|" * len(WORKLOADS)]
    for name in peers:
        cells = [f"{ratio[w][name]:.2f}x" if name in ratio[w] else "" for w in WORKLOADS]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += ["", "| target | measured | met |", "|---|---:|---|"]
    lines += [f"| {what} | {got} | {'yes' if met else 'no'} |" for what, got, met in targets(table)]
    lines += [
        "",
        f"Within noise: the gap is at most {NOISE:.0%}, or the spread (range over mean) of",
        "either workload's own runs if that is larger.",
    ]
    lines += ["", "Every run:", "", "```", HEADER, *(row(r) for r in runs), "```", ""]
    return "\n".join(lines)


def versions() -> dict[str, str]:
    """What ran: the project's .venv and MLServer's own environment."""
    from importlib.metadata import version

    result = {"python": platform.python_version()}
    for package in ("mlflow", "scikit-learn", "numpy", "pandas", "grpcio", "protobuf"):
        result[package] = version(package)
    frozen = (MLSERVER_VENV / "freeze.txt").read_text().splitlines()
    for line in frozen:
        name, _, pinned = line.partition("==")
        if name.lower() in ("mlserver", "mlserver-mlflow", "uvloop"):
            result[f"{name} (MLServer env)"] = pinned
    git = ["git", "-C", str(ROOT)]
    head = subprocess.run([*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    dirty = subprocess.run([*git, "status", "--porcelain"], capture_output=True, text=True)
    result["arrowsmith"] = head.stdout.strip() + (" + uncommitted changes" if dirty.stdout else "")
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=2, help="runs of every (server, workload)")
    parser.add_argument("--duration", type=float, default=4.0, help="measured seconds per level")
    parser.add_argument("--warmup", type=float, default=1.0, help="unmeasured seconds first")
    parser.add_argument(
        "--http-clients", type=int, default=16, help="HTTP connections (requests in flight), W3"
    )
    args = parser.parse_args()
    if not (MLSERVER_VENV / ".installed").exists():
        raise SystemExit("no MLServer environment: run benchmarks/peers/setup.sh first")
    for binary in (BENCH, NATIVE_FLOOR):
        if not binary.exists():
            raise SystemExit(f"no {binary}: run `make loadgen` first")

    started = datetime.datetime.now(datetime.UTC)
    loadavg_before = os.getloadavg()[0]
    work = RESULTS / "compare-logs"
    work.mkdir(parents=True, exist_ok=True)
    (RESULTS / "bodies").mkdir(exist_ok=True)
    model = wine_model(work)
    digits = digits_model(work)
    args.expected = expected_predictions(model, digits)
    answers = canned_answers(RESULTS / "bodies", args.expected["W4"])
    plan = sessions(model, digits, work, answers)
    print(f"servers on core {SERVER_CORE}, load generators on core {CLIENT_CORE}")
    print(HEADER)
    runs = []
    for repetition in range(1, args.repeat + 1):
        order = plan if repetition % 2 else plan[::-1]
        runs += measure_grpc(args, repetition, order)
        runs += measure_w3(args, model, repetition, work)
    if any(r.errors for r in runs):
        print("WARNING: some levels had errors; see the runs", file=sys.stderr)

    table = summarize(runs)
    ratio = ratios(table)
    shares = native_shares(table)
    print("\nreq/s as a share of the native floor's:")
    print(f"{'server':<18} " + " ".join(f"{w:>8}" for w in shares))
    for name in ORDER:
        cells = [f"{shares[w][name]:>8.1%}" if name in shares[w] else f"{'':>8}" for w in shares]
        if name != NATIVE and any(c.strip() for c in cells):
            print(f"{name:<18} " + " ".join(cells))
    print("\nArrowsmith / peer (mean req/s):")
    print(f"{'peer':<18} " + " ".join(f"{w:>8}" for w in ratio))
    for name in [*ORDER[1:], "mlserver (best)"]:
        cells = [f"{ratio[w][name]:>7.2f}x" if name in ratio[w] else f"{'':>8}" for w in ratio]
        if any(c.strip() for c in cells):
            print(f"{name:<18} " + " ".join(cells))
    print()
    for what, got, met in targets(table):
        print(f"{'MET ' if met else 'MISS'} {what}: {got}")

    del args.expected
    report: dict[str, object] = {
        "date": started.strftime("%Y-%m-%d %H:%M:%S"),
        "command": shlex.join([".venv/bin/python", "benchmarks/compare.py", *sys.argv[1:]]),
        "loadavg_before": loadavg_before,
        "machine": {"cpus": os.cpu_count(), "cpu_model": cpu_model(), "kernel": platform.release()},
        "versions": versions(),
        "settings": vars(args)
        | {"workloads": GRPC_WORKLOADS, "model": str(model), "digits_model": str(digits)},
        "mlserver_configs": {name: list(c) for name, c in mlserver_settings.CONFIGS.items()},
        "runs": [asdict(r) for r in runs],
        "summary": {w: {n: asdict(c) for n, c in cells.items()} for w, cells in table.items()},
        "ratios": ratio,
        "native_floor_shares": shares,
        "targets": [{"target": t, "measured": m, "met": ok} for t, m, ok in targets(table)],
    }
    (RESULTS / "compare.json").write_text(json.dumps(report, indent=2) + "\n")
    plot(table, RESULTS / "compare.png", f"req/s per server, one core each ({report['date']} UTC)")
    text = markdown(report, table, runs)
    (RESULTS / "compare.md").write_text(text)
    print(f"\n{text}")
    print(f"wrote {RESULTS / 'compare.json'}, compare.png, compare.md")


if __name__ == "__main__":
    main()
