"""Soak and chaos run: `arrowsmith serve --workers 2` under steady load with hostile traffic
mixed in, one worker killed with SIGKILL every few minutes, SIGTERM at the end.

What it does, in order:

1. starts the wine example model (`--workers 2`) on free loopback ports and waits until
   both workers serve;
2. sends every hostile case once and prints the answer (the probe), so a case the server
   mishandles shows up before the run;
3. measures capacity: a closed loop of good W1-like requests (one wine row, 11 FP32 [1, 1]
   inputs in typed contents), `--capacity-in-flight` in flight for `--capacity-seconds`,
   from the same load generator as the soak (Python, grpc.aio, `--clients` processes on the
   same machine as the server, so this is the capacity of server and generator together;
   with `arrowsmith-bench` built, the server's capacity under the compiled generator is
   measured too, for context);
4. runs an open loop at `--load` (80%) of that capacity for `--duration` seconds. Latency
   runs from the moment a request was due, so a stalled server cannot hide its queue. Of
   every 20 requests 17 are good, one is malformed and two are crafted, back to back
   (cycling through the cases below, the crafted ones in pairs meant to meet in one batch,
   e.g. an input named `a:Float64:[]:{}|b` beside inputs `a` and `b`). Every good
   request carries a unique `id` and its own row (a wine row perturbed per pool entry);
   its answer must echo that id and equal MLflow's own prediction for that row within
   1e-6, else it counts as misrouted. Malformed requests (garbage bytes, wrong datatypes
   and shapes, missing inputs, shapes whose element count overflows, ...) must be refused
   with a client-error code; crafted ones (input names holding separators, NUL or
   non-ASCII; `content_type: pd`) must be refused or, where MLflow's rules accept them,
   answered correctly like good ones. Connections are recycled every few seconds so both
   workers keep a share after a restart;
5. every `--kill-every` seconds sends SIGKILL to one worker (alternating), found as a
   child of the supervisor, once the last one's replacement serves; the supervisor starts
   a new one. UNAVAILABLE answers to requests in flight at a kill or sent within
   `--kill-grace` seconds after it are expected and counted apart;
6. samples every worker's RSS (VmRSS) every 2 s; each worker lifetime that lasted at least
   `--min-lifetime` seconds must end within 10% of its RSS at start (after `--rss-warmup`);
7. sends SIGTERM to the supervisor and checks that it exits in time with status 0 and
   that no process of its session is left.

Writes results/soak.json, results/soak.png (p50/p99 latency of good requests per 10 s
window with the kills marked, failures per window, RSS per worker lifetime) and
results/soak-server.log; exits 1 if a check failed.

    .venv/bin/python benchmarks/soak.py                                  # make bench-soak
    .venv/bin/python benchmarks/soak.py --duration 120 --kill-every 40      # a short try
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import json
import multiprocessing
import os
import platform
import shlex
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from array import array
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import grpc
import numpy as np
from tritonclient.grpc import service_pb2 as pb

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RESULTS = HERE / "results"
MODEL = ROOT / "examples" / "wine" / "model"
WINE_CSV = ROOT / "examples" / "wine" / "winequality-red.csv"
BENCH = ROOT / "rust" / "target" / "release" / "arrowsmith-bench"
MODEL_NAME = "wine"
METHOD = "/inference.GRPCInferenceService/ModelInfer"
READY_METHOD = "/inference.GRPCInferenceService/ServerReady"
WORKERS = 2
POOL_ROWS = 8192
TOLERANCE = 1e-6
WINDOW_S = 10.0
RSS_EVERY_S = 2.0
RSS_FLAT = 0.10
CALL_TIMEOUT_S = 10.0
STOP_TIMEOUT_S = 30.0
#: Of every MIX requests a client sends, which slot is malformed and which two are crafted
#: (two in a row: CRAFTED's cases come in pairs meant to meet in one batch).
MIX, MALFORMED_SLOT, CRAFTED_SLOTS = 20, 0, (10, 11)
#: Codes a refused request may get: client errors, never a crash or an INTERNAL.
REFUSED = frozenset(
    {"INVALID_ARGUMENT", "NOT_FOUND", "UNIMPLEMENTED", "OUT_OF_RANGE", "FAILED_PRECONDITION"}
)
#: The answers a good request may get around a kill: its connection went away.
KILL_CODES = frozenset({"UNAVAILABLE"})
#: Codes that mean no answer came from the server (gRPC's client says so itself).
NO_ANSWER = frozenset({"UNAVAILABLE", "DEADLINE_EXCEEDED", "CANCELLED"})
CHANNEL_OPTIONS = [
    ("grpc.use_local_subchannel_pool", 1),  # one connection per channel, none shared
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 500),
    ("grpc.max_receive_message_length", 64 << 20),
]


# --- requests ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Pool:
    """Distinct wine rows (float32, as sent) and MLflow's prediction for each."""

    names: list[str]
    rows: np.ndarray
    expected: np.ndarray


def wine_rows() -> tuple[list[str], np.ndarray]:
    """The CSV's feature names and rows (without "quality") as float32."""
    lines = WINE_CSV.read_text().splitlines()
    header = [h.strip('"') for h in lines[0].split(";")]
    keep = [i for i, name in enumerate(header) if name != "quality"]
    values = [[float(v) for v in line.split(";")] for line in lines[1:] if line]
    return [header[i] for i in keep], np.array(values, dtype=np.float32)[:, keep]


def build_pool(size: int = POOL_ROWS, seed: int = 7) -> Pool:
    """`size` rows: the CSV's rows cycled, each value scaled by its own factor in
    [0.9, 1.1], so no two requests in flight share a row; predictions by MLflow's pyfunc
    (its own schema enforcement, float32 columns to the double signature)."""
    import mlflow.pyfunc
    import pandas as pd

    names, base = wine_rows()
    rng = np.random.default_rng(seed)
    rows = np.resize(base, (size, base.shape[1]))
    rows = (rows * rng.uniform(0.9, 1.1, rows.shape)).astype(np.float32)
    model = mlflow.pyfunc.load_model(str(MODEL))
    expected = np.asarray(model.predict(pd.DataFrame(rows, columns=names)), dtype=np.float64)
    return Pool(names, rows, expected.ravel())


def good_request(names: list[str], row: np.ndarray) -> pb.ModelInferRequest:
    """W1's form: one FP32 [1, 1] input per feature, values in typed contents."""
    request = pb.ModelInferRequest(model_name=MODEL_NAME)
    for name, value in zip(names, row, strict=True):
        tensor = request.inputs.add(name=name, datatype="FP32", shape=[1, 1])
        tensor.contents.fp32_contents.append(float(value))
    return request


def raw_request(names: list[str], row: np.ndarray) -> pb.ModelInferRequest:
    """The row as raw FP32 [1] inputs."""
    request = pb.ModelInferRequest(model_name=MODEL_NAME)
    for name, value in zip(names, row, strict=True):
        request.inputs.add(name=name, datatype="FP32", shape=[1])
        request.raw_input_contents.append(np.float32(value).tobytes())
    return request


def with_id(body: bytes, request_id: str) -> bytes:
    """`body` with its `id` set: protobuf merges concatenated messages, a later scalar wins."""
    suffix: bytes = pb.ModelInferRequest(id=request_id).SerializeToString()
    return body + suffix


def extra_input(request: pb.ModelInferRequest, name: str, value: float = 1.0) -> None:
    tensor = request.inputs.add(name=name, datatype="FP64", shape=[1, 1])
    tensor.contents.fp64_contents.append(value)


def renamed(request: pb.ModelInferRequest, old: str, new: str) -> pb.ModelInferRequest:
    for tensor in request.inputs:
        if tensor.name == old:
            tensor.name = new
    return request


def shaped(request: pb.ModelInferRequest, shape: list[int], raw: bytes) -> pb.ModelInferRequest:
    """The first input given `shape` and raw contents `raw`, the others moved to raw too."""
    out = raw_request([t.name for t in request.inputs], np.zeros(len(request.inputs)))
    del out.inputs[0].shape[:]
    out.inputs[0].shape.extend(shape)
    out.raw_input_contents[0] = raw
    return out


def invalid_utf8_name(request: pb.ModelInferRequest) -> bytes:
    """The request with one input's name replaced by bytes that are not UTF-8 (protobuf's
    own serializer refuses to write them, so the bytes are patched)."""
    body: bytes = request.SerializeToString()
    return body.replace(b"alcohol", b"alc\xff\xfeol", 1)  # the same length


def param(request: pb.ModelInferRequest, **values: str | int) -> pb.ModelInferRequest:
    for key, value in values.items():
        if isinstance(value, int):
            request.parameters[key].int64_param = value
        else:
            request.parameters[key].string_param = value
    return request


@dataclass(frozen=True)
class Case:
    """A hostile request: its kind, and either the codes it may get (refused) or, when
    MLflow's rules accept it, None: answered like a good request, checked the same way."""

    name: str
    kind: str
    build: Callable[[list[str], np.ndarray], bytes | pb.ModelInferRequest]
    refused: frozenset[str] | None = REFUSED


SEPARATOR_NAME = "a:Float64:[]:{}|b"


def _drop(request: pb.ModelInferRequest, name: str) -> pb.ModelInferRequest:
    kept = [t for t in request.inputs if t.name != name]
    out = pb.ModelInferRequest(model_name=request.model_name)
    out.inputs.extend(kept)
    return out


def _retyped(request: pb.ModelInferRequest, datatype: str) -> pb.ModelInferRequest:
    for tensor in request.inputs:
        values = list(tensor.contents.fp32_contents)
        tensor.datatype = datatype
        tensor.contents.Clear()
        if datatype in ("INT64", "FP128"):
            tensor.contents.int64_contents.extend(int(v * 100) + 7 for v in values)
    return request


def _crafted_with(*names: str) -> Callable[[list[str], np.ndarray], pb.ModelInferRequest]:
    def build(cols: list[str], row: np.ndarray) -> pb.ModelInferRequest:
        request = good_request(cols, row)
        for name in names:
            extra_input(request, name)
        return request

    return build


def _contents_and_raw(cols: list[str], row: np.ndarray) -> pb.ModelInferRequest:
    request = good_request(cols, row)
    request.raw_input_contents.append(b"\0" * 4)
    return request


def _one_raw_too_many(cols: list[str], row: np.ndarray) -> pb.ModelInferRequest:
    request = raw_request(cols, row)
    request.raw_input_contents.append(b"\0" * 4)
    return request


def _wrong_shape(cols: list[str], row: np.ndarray) -> pb.ModelInferRequest:
    request = good_request(cols, row)
    request.inputs[0].shape[0] = 2
    return request


def _bad_bytes(cols: list[str], row: np.ndarray) -> pb.ModelInferRequest:
    request = raw_request(cols, row)
    request.inputs[0].datatype = "BYTES"
    request.raw_input_contents[0] = b"\xff\xff\xff\x7fabc"
    return request


MALFORMED = [
    Case("garbage", "malformed", lambda c, r: b"\x0a\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01"),
    Case("random-bytes", "malformed", lambda c, r: np.random.bytes(97)),
    Case("truncated", "malformed", lambda c, r: good_request(c, r).SerializeToString()[:-13]),
    Case("int64-to-double", "malformed", lambda c, r: _retyped(good_request(c, r), "INT64")),
    Case("unknown-datatype", "malformed", lambda c, r: _retyped(good_request(c, r), "FP128")),
    Case("no-contents", "malformed", lambda c, r: _retyped(good_request(c, r), "FP32")),
    Case("wrong-shape", "malformed", _wrong_shape),
    Case("missing-input", "malformed", lambda c, r: _drop(good_request(c, r), "alcohol")),
    Case("no-inputs", "malformed", lambda c, r: pb.ModelInferRequest(model_name=MODEL_NAME)),
    Case(
        "shape-2^61+1",
        "malformed",
        lambda c, r: shaped(good_request(c, r), [2**61 + 1], b"\0" * 8),
    ),
    Case(
        "shape-2^63-1x0", "malformed", lambda c, r: shaped(good_request(c, r), [2**63 - 1, 0], b"")
    ),
    Case("shape-negative", "malformed", lambda c, r: shaped(good_request(c, r), [-1], b"\0" * 4)),
    Case("contents-and-raw", "malformed", _contents_and_raw),
    Case("raw-count", "malformed", _one_raw_too_many),
    Case("bytes-length", "malformed", _bad_bytes),
    Case("invalid-utf8-name", "malformed", lambda c, r: invalid_utf8_name(good_request(c, r))),
    Case("unknown-model", "malformed", lambda c, r: pb.ModelInferRequest(model_name="nope")),
    Case(
        "unknown-version",
        "malformed",
        lambda c, r: pb.ModelInferRequest(model_name=MODEL_NAME, model_version="999"),
    ),
]

#: In pairs (sent back to back): an even count, each pair's requests alike but for a detail.
CRAFTED = [
    Case("separator-name", "crafted", _crafted_with(SEPARATOR_NAME), refused=None),
    Case("separator-pair", "crafted", _crafted_with("a", "b"), refused=None),
    Case(
        "content-type-pd",
        "crafted",
        lambda c, r: param(good_request(c, r), content_type="pd"),
        refused=None,
    ),
    Case(
        "pd-separator-name",
        "crafted",
        lambda c, r: param(_crafted_with(SEPARATOR_NAME)(c, r), content_type="pd"),
        refused=None,
    ),
    Case("nul-extra-name", "crafted", _crafted_with("\0", "x\0y"), refused=None),
    Case("unicode-extra-name", "crafted", _crafted_with("álcool ☃ 🍷"), refused=None),
    Case(
        "nul-required-name",
        "crafted",
        lambda c, r: renamed(good_request(c, r), "alcohol", "alcohol\0"),
    ),
    Case(
        "homoglyph-required-name",
        "crafted",
        lambda c, r: renamed(good_request(c, r), "alcohol", "alc\u03bfhol"),  # a Greek omicron
    ),
    Case(
        "content-type-unknown",
        "crafted",
        lambda c, r: param(good_request(c, r), content_type="zz"),
    ),
    Case(
        "content-type-int",
        "crafted",
        lambda c, r: param(good_request(c, r), content_type=3),
    ),
]
CASES = {case.name: case for case in [*MALFORMED, *CRAFTED]}


def serialize(message: bytes | pb.ModelInferRequest) -> bytes:
    return message if isinstance(message, bytes) else message.SerializeToString()


@dataclass(frozen=True)
class Planned:
    """One request to send: its kind and case, its body, and what its answer must be."""

    kind: str
    case: str
    body: bytes
    #: For an answer that must be OK: the id it must echo and the prediction it must hold.
    request_id: str = ""
    expected: float | None = None
    refused: frozenset[str] | None = None


def answer_error(answer: bytes, planned: Planned) -> str | None:
    """Why an OK answer is not the planned request's own: another id, or another value."""
    response = pb.ModelInferResponse.FromString(answer)
    if response.id != planned.request_id:
        return f"id {response.id!r} for {planned.request_id!r}"
    if not response.outputs:
        return "no outputs"
    if response.raw_output_contents:
        values = np.frombuffer(response.raw_output_contents[0], dtype="<f8")
    else:
        values = np.array(response.outputs[0].contents.fp64_contents)
    if len(values) != 1 or abs(values[0] - planned.expected) > TOLERANCE:
        return f"{values[:3]} for {planned.expected!r} ({planned.request_id})"
    return None


class Planner:
    """One client's sequence of requests: good ones with ids `<client>-<n>` and rows from
    the pool; of every MIX, one malformed case and two crafted ones in a row, cycling
    through the cases."""

    def __init__(self, client: int, clients: int, pool: Pool) -> None:
        self.client, self.clients, self.pool = client, clients, pool
        self.seq = 0
        self.good_bodies = [good_request(pool.names, row).SerializeToString() for row in pool.rows]

    def _row(self) -> int:
        return (self.seq * self.clients + self.client) % len(self.pool.rows)

    def good(self) -> Planned:
        row, request_id = self._row(), f"{self.client}-{self.seq}"
        self.seq += 1
        body = with_id(self.good_bodies[row], request_id)
        return Planned("good", "good", body, request_id, float(self.pool.expected[row]))

    def case(self, case: Case) -> Planned:
        row, request_id = self._row(), f"{self.client}-{self.seq}-{case.name}"
        self.seq += 1
        body = serialize(case.build(self.pool.names, self.pool.rows[row]))
        if case.refused is not None:
            return Planned(case.kind, case.name, body, refused=case.refused)
        expected = float(self.pool.expected[row])
        return Planned(case.kind, case.name, with_id(body, request_id), request_id, expected)

    def next(self) -> Planned:
        slot = self.seq % MIX
        if slot == MALFORMED_SLOT:
            return self.case(MALFORMED[(self.seq // MIX) % len(MALFORMED)])
        if slot in CRAFTED_SLOTS:
            turn = (self.seq // MIX) * len(CRAFTED_SLOTS) + CRAFTED_SLOTS.index(slot)
            return self.case(CRAFTED[turn % len(CRAFTED)])
        return self.good()


# --- load generator (one process per client) -------------------------------------------


@dataclass
class Tally:
    """What one client saw in one phase. Times are seconds since the phase's start."""

    #: kind -> case -> code -> answers.
    codes: dict[str, dict[str, dict[str, int]]] = field(
        default_factory=lambda: defaultdict(lambda: defaultdict(Counter))
    )
    #: "kind/case/code" -> times of answers that were not the expected one.
    unexpected: dict[str, array[float]] = field(
        default_factory=lambda: defaultdict(lambda: array("d"))
    )
    misrouted: int = 0
    misrouted_examples: list[str] = field(default_factory=list)
    #: window -> latencies (ms) of good requests answered OK and right.
    latencies: dict[int, array[float]] = field(
        default_factory=lambda: defaultdict(lambda: array("f"))
    )
    #: window -> requests sent; and how many left more than 5 ms after they were due.
    sent: dict[int, int] = field(default_factory=lambda: defaultdict(int))
    late: dict[int, int] = field(default_factory=lambda: defaultdict(int))
    max_late_ms: float = 0.0
    cpu_seconds: float = 0.0
    elapsed: float = 0.0

    def plain(self) -> dict[str, Any]:
        """Picklable without lambdas."""
        return {
            "codes": {k: {c: dict(v) for c, v in cases.items()} for k, cases in self.codes.items()},
            "unexpected": {k: list(v) for k, v in self.unexpected.items()},
            "misrouted": self.misrouted,
            "misrouted_examples": self.misrouted_examples,
            "latencies": {
                w: np.frombuffer(v, dtype=np.float32).copy() for w, v in self.latencies.items()
            },
            "sent": dict(self.sent),
            "late": dict(self.late),
            "max_late_ms": self.max_late_ms,
            "cpu_seconds": self.cpu_seconds,
            "elapsed": self.elapsed,
        }


class Client:
    """A grpc.aio client on `channels` connections, each replaced by a new one in turn
    every `recycle_s` seconds (so connections spread over the workers again after a
    restart)."""

    def __init__(self, target: str, channels: int, recycle_s: float) -> None:
        self.target, self.recycle_s = target, recycle_s
        self.channels = [self._open() for _ in range(channels)]
        self.calls = [c.unary_unary(METHOD) for c in self.channels]
        self.turn = 0
        self.closing: set[asyncio.Task[None]] = set()
        self.next_recycle = time.monotonic() + recycle_s

    def _open(self) -> grpc.aio.Channel:
        return grpc.aio.insecure_channel(self.target, options=CHANNEL_OPTIONS)

    def call(self) -> grpc.aio.UnaryUnaryMultiCallable:
        self.turn += 1
        now = time.monotonic()
        if self.recycle_s and now >= self.next_recycle:
            self.next_recycle = now + self.recycle_s
            slot = self.turn % len(self.channels)
            old = self.channels[slot]
            self.channels[slot] = self._open()
            self.calls[slot] = self.channels[slot].unary_unary(METHOD)
            closing = asyncio.get_running_loop().create_task(old.close(grace=CALL_TIMEOUT_S))
            self.closing.add(closing)
            closing.add_done_callback(self.closing.discard)
        return self.calls[self.turn % len(self.calls)]

    async def close(self) -> None:
        await asyncio.gather(*(c.close(grace=1) for c in self.channels), *self.closing)


async def send(client: Client, planned: Planned, due: float, start: float, tally: Tally) -> None:
    """One call; its answer counted by kind, case and code, and checked. How late it left
    (after its due time) is counted too."""
    at = due - start
    late_ms = (time.monotonic() - due) * 1000
    window = int(at // WINDOW_S)
    tally.sent[window] += 1
    tally.late[window] += late_ms > 5
    tally.max_late_ms = max(tally.max_late_ms, late_ms)
    try:
        answer = await client.call()(planned.body, timeout=CALL_TIMEOUT_S)
        code = "OK"
    except grpc.aio.AioRpcError as error:
        answer, code = b"", error.code().name
    done = time.monotonic()
    tally.codes[planned.kind][planned.case][code] += 1
    key = f"{planned.kind}/{planned.case}/{code}"
    if planned.refused is not None:
        if code not in planned.refused:
            tally.unexpected[key].append(at)
        return
    if code != "OK":
        tally.unexpected[key].append(at)
        return
    wrong = answer_error(answer, planned)
    if wrong is not None:
        tally.misrouted += 1
        tally.unexpected[f"{planned.kind}/{planned.case}/MISROUTED"].append(at)
        if len(tally.misrouted_examples) < 20:
            tally.misrouted_examples.append(f"{planned.case}: {wrong}")
    elif planned.kind == "good":
        tally.latencies[int(at // WINDOW_S)].append((done - due) * 1000)


async def open_loop(
    client: Client, planner: Planner, rate: float, start: float, end: float, tally: Tally
) -> None:
    """Requests due every 1/rate seconds from `start` whatever the answers; each is sent at
    its due time (or at once when the loop is behind, lateness recorded)."""
    interval, pending, i = 1.0 / rate, set(), 0
    cpu = time.process_time()
    while (due := start + i * interval) < end:
        delay = due - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        task = asyncio.create_task(send(client, planner.next(), due, start, tally))
        pending.add(task)
        task.add_done_callback(pending.discard)
        i += 1
    tally.elapsed = time.monotonic() - start  # sending took this long
    await asyncio.gather(*pending)
    tally.cpu_seconds = time.process_time() - cpu


async def closed_loop(
    client: Client, planner: Planner, in_flight: int, start: float, end: float, tally: Tally
) -> None:
    """`in_flight` callers of good requests, each sending as soon as its last answer came."""

    async def caller() -> None:
        while (due := time.monotonic()) < end:
            await send(client, planner.good(), due, start, tally)

    await asyncio.sleep(max(0.0, start - time.monotonic()))
    cpu = time.process_time()
    await asyncio.gather(*(caller() for _ in range(in_flight)))
    tally.cpu_seconds = time.process_time() - cpu
    tally.elapsed = time.monotonic() - start


async def client_phases(index: int, spec: dict[str, Any], pool: Pool, pipe: Connection) -> None:
    client = Client(spec["target"], spec["channels"], spec["recycle_s"])
    planner = Planner(index, spec["clients"], pool)
    pipe.send("ready")
    while (order := pipe.recv()) is not None:
        tally = Tally()
        if order["mode"] == "closed":
            await closed_loop(
                client, planner, order["in_flight"], order["start"], order["end"], tally
            )
        else:
            await open_loop(client, planner, order["rate"], order["start"], order["end"], tally)
        pipe.send(tally.plain())
    await client.close()


def client_main(index: int, spec: dict[str, Any], pool: Pool, pipe: Connection) -> None:
    """A load-generator process: runs each phase the pipe orders, sends back its tally."""
    asyncio.run(client_phases(index, spec, pool, pipe))


# --- the server ------------------------------------------------------------------------


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass(frozen=True)
class Server:
    process: subprocess.Popen[bytes]
    grpc_port: int
    http_port: int
    metrics_port: int
    log: Path

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"


def start_server(log: Path) -> Server:
    """`arrowsmith serve` of the wine model with WORKERS workers, in its own session; ready
    once every worker logged that it serves and ServerReady says so."""
    ports = free_port(), free_port(), free_port()
    command = [sys.executable, "-m", "arrowsmith", "serve", str(MODEL), "--name", MODEL_NAME]
    command += ["--workers", str(WORKERS), "--grpc-port", str(ports[0])]
    command += ["--http-port", str(ports[1]), "--metrics-port", str(ports[2])]
    with log.open("wb") as out:
        process = subprocess.Popen(
            command, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    server = Server(process, *ports, log)
    deadline = time.monotonic() + 120
    while ready_lines(server) < WORKERS or not server_ready(server):
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            raise SystemExit(f"server did not start:\n{log.read_text(errors='replace')[-3000:]}")
        time.sleep(0.2)
    return server


def ready_lines(server: Server) -> int:
    return server.log.read_text(errors="replace").count("ready: serving")


def worker_exits(server: Server) -> list[str]:
    """The supervisor's lines about workers that ended (killed or crashed)."""
    lines = server.log.read_text(errors="replace").splitlines()
    return [line for line in lines if "arrowsmith.workers: worker" in line and "ended" in line]


def server_ready(server: Server) -> bool:
    with grpc.insecure_channel(server.target) as channel:
        ask = channel.unary_unary(
            READY_METHOD,
            request_serializer=pb.ServerReadyRequest.SerializeToString,
            response_deserializer=pb.ServerReadyResponse.FromString,
        )
        try:
            return bool(ask(pb.ServerReadyRequest(), timeout=2).ready)
        except grpc.RpcError:
            return False


def children(pid: int) -> list[int]:
    """The processes `pid` started (Linux keeps them per thread)."""
    found: list[int] = []
    for path in Path(f"/proc/{pid}/task").glob("*/children"):
        with contextlib.suppress(OSError):
            found += [int(p) for p in path.read_text().split()]
    return sorted(set(found))


def worker_index(pid: int) -> int | None:
    with contextlib.suppress(OSError):
        for entry in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0"):
            if entry.startswith(b"ARROWSMITH_WORKER_INDEX="):
                return int(entry.split(b"=", 1)[1])
    return None


def rss_kib(pid: int) -> int | None:
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return None


def workers(server: Server) -> dict[int, int]:
    """worker index -> pid, of the supervisor's live workers."""
    found = {}
    for pid in children(server.process.pid):
        index = worker_index(pid)
        if index is not None:
            found[index] = pid
    return found


def session_processes(sid: int) -> list[str]:
    """Live (not zombie) processes of session `sid`: "pid command"."""
    left = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            text = stat.read_text()
            fields = text[text.rindex(")") + 2 :].split()
            if int(fields[3]) == sid and fields[0] != "Z":
                left.append(f"{stat.parent.name} {text[text.index('(') + 1 : text.rindex(')')]}")
    return left


def stop_server(server: Server) -> dict[str, Any]:
    """SIGTERM to the supervisor: its exit status, how long it took, what was left."""
    before = workers(server)
    began = time.monotonic()
    server.process.send_signal(signal.SIGTERM)
    try:
        code: int | None = server.process.wait(STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        code = None
    took = time.monotonic() - began
    time.sleep(0.5)
    left = session_processes(server.process.pid)
    for line in left:  # leave nothing running, but say so
        with contextlib.suppress(ProcessLookupError):
            os.kill(int(line.split()[0]), signal.SIGKILL)
    if code is None:
        server.process.kill()
        server.process.wait()
    return {"exit_code": code, "seconds": round(took, 3), "workers": before, "left_behind": left}


def metric_requests(server: Server) -> dict[str, float]:
    """arrowsmith_requests_total summed by worker and status."""
    url = f"http://127.0.0.1:{server.metrics_port}/metrics"
    totals: dict[str, float] = defaultdict(float)
    with contextlib.suppress(OSError):
        for line in urllib.request.urlopen(url, timeout=5).read().decode().splitlines():
            if line.startswith("arrowsmith_requests_total{"):
                inside = line[line.index("{") + 1 : line.index("}")]
                labels = dict(part.replace('"', "").split("=", 1) for part in inside.split(","))
                key = f"worker {labels['worker']} {labels['status']}"
                totals[key] += float(line.rsplit(" ", 1)[1])
    return dict(sorted(totals.items()))


# --- probe, capacity -------------------------------------------------------------------


def probe(server: Server, pool: Pool) -> dict[str, str]:
    """Every hostile case once, and a good request: case -> code (and whether right)."""
    planner = Planner(0, 1, pool)
    result = {}
    with grpc.insecure_channel(server.target) as channel:
        call = channel.unary_unary(METHOD)
        for planned in [planner.good(), *(planner.case(case) for case in CASES.values())]:
            try:
                answer, code = call(planned.body, timeout=CALL_TIMEOUT_S), "OK"
                detail = answer_error(answer, planned) if planned.refused is None else "answered"
            except grpc.RpcError as error:
                code, detail = error.code().name, (error.details() or "")[:120]
            expected = "OK" if planned.refused is None else "refused"
            right = code == "OK" and detail is None if planned.refused is None else code in REFUSED
            result[planned.case] = f"{code} ({'as expected' if right else 'NOT ' + expected})"
            print(f"  {planned.kind:<9} {planned.case:<24} {code:<17} {detail or ''}")
    return result


def compiled_capacity(server: Server, pool: Pool, seconds: float, in_flight: int) -> float | None:
    """req/s of arrowsmith-bench (one fixed good request), or None if it is not built."""
    if not BENCH.exists():
        return None
    with tempfile.TemporaryDirectory() as scratch:
        body, out = Path(scratch) / "w1.pb", Path(scratch) / "out.json"
        body.write_bytes(good_request(pool.names, pool.rows[0]).SerializeToString())
        command = [str(BENCH), "--target", server.target, "--body", str(body), "--concurrency"]
        command += [str(in_flight), "--duration", str(seconds), "--warmup", "1", "--json", str(out)]
        if subprocess.run(command, stdout=subprocess.DEVNULL).returncode != 0:
            return None
        return float(json.loads(out.read_text())["levels"][0]["throughput_rps"])


class Clients:
    """The load-generator processes, ordered phase by phase over pipes."""

    def __init__(self, count: int, spec: dict[str, Any], pool: Pool) -> None:
        context = multiprocessing.get_context("spawn")
        self.pipes: list[Connection] = []
        self.processes = []
        for index in range(count):
            ours, theirs = context.Pipe()
            process = context.Process(target=client_main, args=(index, spec, pool, theirs))
            process.start()
            self.pipes.append(ours)
            self.processes.append(process)
        for pipe in self.pipes:
            if pipe.recv() != "ready":
                raise RuntimeError("a load-generator process did not start")

    def order(self, orders: list[dict[str, Any]]) -> None:
        for pipe, order in zip(self.pipes, orders, strict=True):
            pipe.send(order)

    def collect(self) -> list[dict[str, Any]]:
        return [pipe.recv() for pipe in self.pipes]

    def close(self) -> None:
        for pipe in self.pipes:
            with contextlib.suppress(OSError):
                pipe.send(None)
        for process in self.processes:
            process.join(15)
            if process.is_alive():
                process.kill()


def capacity(clients: Clients, args: argparse.Namespace) -> tuple[float, float]:
    """Good answers per second of the closed loop, and the generator's CPU (cores)."""
    count = len(clients.pipes)
    start = time.monotonic() + 0.5
    end = start + args.capacity_seconds
    per_client = max(1, args.capacity_in_flight // count)
    clients.order([{"mode": "closed", "in_flight": per_client, "start": start, "end": end}] * count)
    tallies = clients.collect()
    ok = sum(t["codes"].get("good", {}).get("good", {}).get("OK", 0) for t in tallies)
    cpu = sum(t["cpu_seconds"] for t in tallies) / args.capacity_seconds
    return ok / args.capacity_seconds, cpu


# --- chaos and RSS during the soak -----------------------------------------------------


@dataclass
class Lifetime:
    """One worker process from first sight to last: RSS samples (seconds, KiB)."""

    index: int
    pid: int
    samples: list[tuple[float, int]] = field(default_factory=list)
    #: When it logged that it serves (the workers of the start: before the soak).
    serving_at: float | None = None
    killed_at: float | None = None


@dataclass
class Chaos:
    kills: list[dict[str, Any]] = field(default_factory=list)
    lifetimes: dict[int, Lifetime] = field(default_factory=dict)


def watch(server: Server, start: float, end: float, args: argparse.Namespace) -> Chaos:
    """Until `end`: RSS of every worker every RSS_EVERY_S; every `kill_every` seconds a
    SIGKILL to the next worker in turn, and when its replacement serves. A kill waits
    until the last one's replacement serves (on a busy machine a worker may take longer
    to load than `kill_every`): it is one worker's death that is tested, not an outage."""
    chaos = Chaos()
    next_kill, victim = start + args.kill_every, 0
    awaiting: dict[str, Any] | None = None
    time.sleep(max(0.0, start - time.monotonic()))
    while (now := time.monotonic()) < end:
        at = now - start
        sample_rss(server, chaos, at)
        if awaiting and ready_lines(server) > awaiting["_ready_lines"]:
            awaiting["replacement_serving_at_s"] = round(at, 1)
            for life in chaos.lifetimes.values():
                if life.serving_at is None and life.killed_at is None:
                    life.serving_at = at
            awaiting = None
        if now >= next_kill and awaiting is None and end - now > 5:
            awaiting = kill_worker(server, victim % WORKERS, at, chaos)
            if awaiting is not None:
                awaiting["postponed_s"] = round(now - next_kill, 1)
            victim += 1
            next_kill += args.kill_every
        time.sleep(max(0.0, min(RSS_EVERY_S, end - time.monotonic())))
    return chaos


def sample_rss(server: Server, chaos: Chaos, at: float) -> None:
    """One RSS sample of each live worker, into its lifetime (a new pid starts one)."""
    for index, pid in workers(server).items():
        kib = rss_kib(pid)
        if kib is not None:
            first = Lifetime(index, pid, serving_at=None if chaos.kills else 0.0)
            life = chaos.lifetimes.setdefault(pid, first)
            life.samples.append((round(at, 2), kib))


def kill_worker(server: Server, index: int, at: float, chaos: Chaos) -> dict[str, Any] | None:
    pid = workers(server).get(index)
    if pid is None:
        print(f"  {at:7.1f} s: worker {index} not found to kill", flush=True)
        return None
    lines = ready_lines(server)
    os.kill(pid, signal.SIGKILL)
    if pid in chaos.lifetimes:
        chaos.lifetimes[pid].killed_at = at
    kill = {"at_s": round(at, 1), "worker": index, "pid": pid, "_ready_lines": lines}
    chaos.kills.append(kill)
    print(f"  {at:7.1f} s: SIGKILL worker {index} (pid {pid})", flush=True)
    return kill


def rss_table(chaos: Chaos, args: argparse.Namespace) -> list[dict[str, Any]]:
    """Per lifetime that served: RSS at start (first sample `rss_warmup` s after it served)
    and end, and whether it stayed within RSS_FLAT; judged only for lifetimes of at least
    `min_lifetime` s."""
    rows = []
    for life in chaos.lifetimes.values():
        if life.serving_at is None:
            continue  # never served: still loading when the soak ended
        born = max(life.samples[0][0], life.serving_at)
        settled = [s for s in life.samples if s[0] >= born + args.rss_warmup]
        if not settled:
            continue
        (t0, first), (t1, last) = settled[0], settled[-1]
        judged = t1 - t0 >= args.min_lifetime
        growth = last / first - 1
        rows.append(
            {
                "worker": life.index,
                "pid": life.pid,
                "from_s": t0,
                "to_s": t1,
                "rss_start_mib": round(first / 1024, 1),
                "rss_end_mib": round(last / 1024, 1),
                "growth": round(growth, 4),
                "killed": life.killed_at is not None,
                "judged": judged,
                "flat": abs(growth) <= RSS_FLAT if judged else None,
            }
        )
    return rows


# --- the report ------------------------------------------------------------------------


def merge(tallies: list[dict[str, Any]]) -> dict[str, Any]:
    """The clients' tallies as one."""
    codes: dict[str, dict[str, Counter[str]]] = defaultdict(lambda: defaultdict(Counter))
    unexpected: dict[str, list[float]] = defaultdict(list)
    latencies: dict[int, list[np.ndarray]] = defaultdict(list)
    sent: Counter[int] = Counter()
    late: Counter[int] = Counter()
    for tally in tallies:
        for kind, cases in tally["codes"].items():
            for case, counts in cases.items():
                codes[kind][case].update(counts)
        for key, times in tally["unexpected"].items():
            unexpected[key] += times
        for window, values in tally["latencies"].items():
            latencies[window].append(values)
        sent.update(tally["sent"])
        late.update(tally["late"])
    return {
        "codes": codes,
        "unexpected": {k: sorted(v) for k, v in unexpected.items()},
        "misrouted": sum(t["misrouted"] for t in tallies),
        "misrouted_examples": [e for t in tallies for e in t["misrouted_examples"]][:20],
        "latencies": {w: np.concatenate(v) for w, v in sorted(latencies.items())},
        "sent": dict(sorted(sent.items())),
        "late": dict(sorted(late.items())),
        "max_late_ms": max(t["max_late_ms"] for t in tallies),
        "cpu_seconds": sum(t["cpu_seconds"] for t in tallies),
        "send_seconds": max(t["elapsed"] for t in tallies),
    }


def near_kill(at: float, kills: list[dict[str, Any]], grace: float) -> bool:
    """Whether a request due at `at` was in flight at a kill (it may have waited up to its
    deadline) or was sent within `grace` seconds after one."""
    return any(k["at_s"] - CALL_TIMEOUT_S <= at <= k["at_s"] + grace for k in kills)


def failures(merged: dict[str, Any], kills: list[dict[str, Any]], grace: float) -> dict[str, Any]:
    """Unexpected answers split: good requests' KILL_CODES near a kill (expected), the rest."""
    around: Counter[str] = Counter()
    other: Counter[str] = Counter()
    for key, times in merged["unexpected"].items():
        code = key.rsplit("/", 1)[1]
        for at in times:
            if code in KILL_CODES and near_kill(at, kills, grace):
                around[key] += 1
            else:
                other[key] += 1
    return {"around_kills": dict(around), "unexpected": dict(other)}


def by_kind(codes: dict[str, dict[str, Counter[str]]]) -> dict[str, dict[str, int]]:
    result: dict[str, dict[str, int]] = {}
    for kind, cases in codes.items():
        total: Counter[str] = Counter()
        for counts in cases.values():
            total.update(counts)
        result[kind] = dict(total.most_common())
    return result


def percentile_windows(merged: dict[str, Any]) -> list[dict[str, float]]:
    rows = []
    for window, values in merged["latencies"].items():
        rows.append(
            {
                "t_s": (window + 0.5) * WINDOW_S,
                "good_ok": len(values),
                "p50_ms": float(np.percentile(values, 50)),
                "p99_ms": float(np.percentile(values, 99)),
            }
        )
    return rows


def plot(summary: dict[str, Any], merged: dict[str, Any], chaos: Chaos, path: Path) -> None:
    """Latency of good requests per window, failures per window and RSS, kills marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    windows = summary["windows"]
    kills = [k["at_s"] for k in chaos.kills]
    figure, axes = plt.subplots(3, 1, figsize=(11, 9), sharex=True)
    t = [w["t_s"] for w in windows]
    axes[0].plot(t, [w["p99_ms"] for w in windows], label="p99", color="tab:red")
    axes[0].plot(t, [w["p50_ms"] for w in windows], label="p50", color="tab:blue")
    axes[0].set_yscale("log")
    axes[0].set_ylabel("latency of good requests (ms)")
    axes[0].legend(loc="upper right")
    bad: Counter[int] = Counter()
    for times in merged["unexpected"].values():
        bad.update(int(at // WINDOW_S) for at in times)
    axes[1].bar(
        [(w + 0.5) * WINDOW_S for w in bad], list(bad.values()), width=WINDOW_S * 0.9, color="grey"
    )
    axes[1].set_ylabel(f"failed answers per {WINDOW_S:g} s")
    for life in chaos.lifetimes.values():
        times, kib = zip(*life.samples, strict=True)
        axes[2].plot(times, [k / 1024 for k in kib], label=f"worker {life.index} pid {life.pid}")
    axes[2].set_ylabel("RSS (MiB)")
    axes[2].set_xlabel("seconds into the soak")
    axes[2].legend(loc="lower right", fontsize=7)
    for axis in axes:
        for at in kills:
            axis.axvline(at, color="black", linestyle=":", linewidth=1)
        axis.grid(True, alpha=0.3)
    settings = summary["settings"]
    figure.suptitle(
        f"soak: {summary['target_rps']:,.0f} req/s target, {summary['achieved_rps']:,.0f} sent; "
        f"--workers {WORKERS}, SIGKILL every {settings['kill_every']:g} s (dotted)",
        fontsize=10,
    )
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def checks(summary: dict[str, Any]) -> list[tuple[str, bool]]:
    stop = summary["stop"]
    flat = [r["flat"] for r in summary["rss"] if r["judged"]]
    sent, target = summary["achieved_rps"], summary["target_rps"]
    unplanned = len(summary["worker_exits"]) - len(summary["kills"])
    probed = [*summary["probe_before"].values(), *summary["probe_after"].values()]
    unexpected: dict[str, int] = summary["failures"]["unexpected"]
    return [
        (
            "probe before and after: every case answered as expected",
            all("as expected" in answer for answer in probed),
        ),
        ("misrouted answers: 0", summary["misrouted"] == 0),
        (f"no worker ended but the killed ones ({unplanned} others)", unplanned == 0),
        (
            f"no unexpected answers outside kills ({sum(unexpected.values()):,} seen)",
            not unexpected,
        ),
        ("generator held the rate (sent >= 98% of target)", sent >= 0.98 * target),
        ("generator on time (<= 1% of requests sent > 5 ms late)", summary["late_share"] <= 0.01),
        (
            f"RSS flat within {RSS_FLAT:.0%} ({len(flat)} lifetimes judged)",
            bool(flat) and all(flat),
        ),
        ("SIGTERM: exit 0", stop["exit_code"] == 0),
        ("no process left behind", not stop["left_behind"]),
    ]


def report(summary: dict[str, Any]) -> str:
    lines = [
        f"target {summary['target_rps']:,.0f} req/s ({summary['settings']['load']:.0%} of "
        f"{summary['capacity_rps']:,.0f}), sent {summary['achieved_rps']:,.0f} req/s for "
        f"{summary['settings']['duration']:g} s; {summary['late_share']:.2%} sent > 5 ms late "
        f"(worst {summary['max_late_ms']:.0f} ms); generator CPU {summary['generator_cores']:.2f} "
        "cores",
        f"sent {summary['sent']:,}, answered {summary['answered']:,} (OK {summary['ok']:,}), "
        f"no answer {summary['sent'] - summary['answered']:,}, misrouted {summary['misrouted']}",
        f"good requests: p50 {summary['p50_ms']:.2f} ms, p99 {summary['p99_ms']:.2f} ms",
        "",
        "answers by kind and code:",
    ]
    for kind, counts in summary["by_kind"].items():
        lines.append(f"  {kind:<10} " + ", ".join(f"{code} {n:,}" for code, n in counts.items()))
    lines += ["", "answers by case:"]
    for kind, cases in summary["codes"].items():
        for case, counts in cases.items():
            text = ", ".join(f"{code} {n:,}" for code, n in sorted(counts.items()))
            lines.append(f"  {kind:<10} {case:<24} {text}")
    lines += ["", f"failures within {summary['settings']['kill_grace']:g} s of a kill:"]
    lines += [f"  {k}: {n}" for k, n in summary["failures"]["around_kills"].items()] or ["  none"]
    lines += ["unexpected answers:"]
    lines += [f"  {k}: {n}" for k, n in summary["failures"]["unexpected"].items()] or ["  none"]
    lines += [f"  misrouted example: {e}" for e in summary["misrouted_examples"]]
    lines += ["", "kills:"]
    for kill in summary["kills"]:
        serving = kill.get("replacement_serving_at_s")
        when = f"at {serving} s" if serving is not None else "not before the end"
        waited = f" (postponed {kill['postponed_s']:g} s)" if kill["postponed_s"] > 0 else ""
        lines.append(
            f"  {kill['at_s']:7.1f} s worker {kill['worker']} pid {kill['pid']}{waited}; "
            f"replacement serving {when}"
        )
    lines += ["", "RSS per worker lifetime (MiB):"]
    for r in summary["rss"]:
        verdict = ("flat" if r["flat"] else "GREW") if r["judged"] else "too short to judge"
        lines.append(
            f"  worker {r['worker']} pid {r['pid']:>7} {r['from_s']:7.1f}-{r['to_s']:7.1f} s: "
            f"{r['rss_start_mib']:7.1f} -> {r['rss_end_mib']:7.1f} ({r['growth']:+.1%}) "
            f"{verdict}{' (killed)' if r['killed'] else ''}"
        )
    stop = summary["stop"]
    lines += [
        "",
        f"worker exits logged by the supervisor: {len(summary['worker_exits'])} "
        f"for {len(summary['kills'])} kills",
        f"SIGTERM: exit {stop['exit_code']} after {stop['seconds']:.2f} s; "
        f"left behind: {stop['left_behind'] or 'nothing'}",
        "requests by worker and status (server metrics): "
        + ", ".join(f"{k} {v:,.0f}" for k, v in summary["server_requests"].items()),
        "",
    ]
    lines += [f"{'PASS' if ok else 'FAIL'} {what}" for what, ok in checks(summary)]
    return "\n".join(lines)


def summarize(
    merged: dict[str, Any],
    chaos: Chaos,
    args: argparse.Namespace,
    rates: dict[str, Any],
) -> dict[str, Any]:
    by = by_kind(merged["codes"])
    answered = sum(n for c in by.values() for code, n in c.items() if code not in NO_ANSWER)
    sent = sum(merged["sent"].values())
    good = [v for v in merged["latencies"].values()]
    all_good = np.concatenate(good) if good else np.zeros(1)
    return {
        **rates,
        "achieved_rps": sent / max(args.duration, merged["send_seconds"]),
        "answered_rps": answered / args.duration,
        "sent": sent,
        "answered": answered,
        "ok": sum(c.get("OK", 0) for c in by.values()),
        "late_share": sum(merged["late"].values()) / max(1, sent),
        "max_late_ms": merged["max_late_ms"],
        "generator_cores": merged["cpu_seconds"] / args.duration,
        "p50_ms": float(np.percentile(all_good, 50)),
        "p99_ms": float(np.percentile(all_good, 99)),
        "misrouted": merged["misrouted"],
        "misrouted_examples": merged["misrouted_examples"],
        "by_kind": by,
        "codes": {
            k: {c: dict(v) for c, v in cases.items()} for k, cases in merged["codes"].items()
        },
        "failures": failures(merged, chaos.kills, args.kill_grace),
        "kills": [{k: v for k, v in kill.items() if not k.startswith("_")} for kill in chaos.kills],
        "rss": rss_table(chaos, args),
        "windows": percentile_windows(merged),
    }


# --- main ------------------------------------------------------------------------------


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add = parser.add_argument
    add("--duration", type=float, default=1800.0, help="seconds of the soak (default 1800)")
    add("--load", type=float, default=0.8, help="share of the measured capacity (default 0.8)")
    add("--rate", type=float, default=None, help="req/s instead of --load x capacity")
    add("--kill-every", type=float, default=300.0, help="seconds between SIGKILLs (0: none)")
    add("--kill-grace", type=float, default=10.0, help="s after a kill its failures are expected")
    add("--clients", type=int, default=2, help="load-generator processes (default 2)")
    add("--channels", type=int, default=4, help="gRPC connections per client (default 4)")
    add("--recycle", type=float, default=5.0, help="s between connection replacements, per client")
    add("--capacity-seconds", type=float, default=10.0)
    add("--capacity-in-flight", type=int, default=32)
    add("--rss-warmup", type=float, default=30.0, help="s of a worker's life before its RSS counts")
    add(
        "--min-lifetime",
        type=float,
        default=None,
        help="s of RSS samples a lifetime needs to be judged (default: 240, or a third of a "
        "shorter --duration)",
    )
    args = parser.parse_args()
    if args.min_lifetime is None:
        args.min_lifetime = min(240.0, args.duration / 3)
    if args.kill_every <= 0:
        args.kill_every = float("inf")
    return args


def ensure_model() -> None:
    if not (MODEL / "MLmodel").exists():
        subprocess.run(
            [sys.executable, ROOT / "examples/wine/train.py", "--output", MODEL], check=True
        )


@contextlib.contextmanager
def running(server_log: Path) -> Iterator[tuple[Server, dict[str, Any]]]:
    """The server, stopped with SIGTERM afterwards; the stop's record lands in the dict."""
    server = start_server(server_log)
    stopped: dict[str, Any] = {}
    try:
        yield server, stopped
    finally:
        if server.process.poll() is None or not stopped:
            stopped.update(stop_server(server))


def soak(
    server: Server, clients: Clients, rate: float, args: argparse.Namespace
) -> tuple[dict[str, Any], Chaos]:
    count = len(clients.pipes)
    start = time.monotonic() + 1.0
    end = start + args.duration
    per_client = rate / count
    clients.order(
        [
            {"mode": "open", "rate": per_client, "start": start + i / rate, "end": end}
            for i in range(count)
        ]
    )
    chaos = watch(server, start, end, args)
    return merge(clients.collect()), chaos


def main() -> int:
    args = parse_args()
    ensure_model()
    RESULTS.mkdir(exist_ok=True)
    began = datetime.datetime.now(datetime.UTC)
    loadavg = os.getloadavg()[0]
    print("predicting the request pool with MLflow ...", flush=True)
    pool = build_pool()
    with running(RESULTS / "soak-server.log") as (server, stopped):
        print(f"server pid {server.process.pid} on {server.target}, workers {workers(server)}")
        print("probe (each case once):")
        probed = probe(server, pool)
        compiled = compiled_capacity(server, pool, args.capacity_seconds, args.capacity_in_flight)
        if compiled:
            print(f"capacity with arrowsmith-bench (compiled): {compiled:,.0f} req/s")
        spec = {"target": server.target, "clients": args.clients, "channels": args.channels}
        spec["recycle_s"] = args.recycle
        clients = Clients(args.clients, spec, pool)
        try:
            measured, capacity_cores = capacity(clients, args)
            rate = args.rate or args.load * measured
            print(
                f"capacity (closed loop, {args.capacity_in_flight} in flight): {measured:,.0f} "
                f"req/s, generator {capacity_cores:.2f} cores; soak at {rate:,.0f} req/s",
                flush=True,
            )
            if capacity_cores > 0.9 * args.clients:
                print("WARNING: the generator was busy all the time; try more --clients")
            merged, chaos = soak(server, clients, rate, args)
        finally:
            clients.close()
        probed_after = probe(server, pool)
        server_requests = metric_requests(server)
        exits = worker_exits(server)
        stopped.update(stop_server(server))
    rates = {
        "capacity_rps": measured,
        "capacity_generator_cores": capacity_cores,
        "compiled_capacity_rps": compiled,
        "target_rps": rate,
    }
    summary = summarize(merged, chaos, args, rates)
    summary |= {
        "date": began.strftime("%Y-%m-%d %H:%M:%S"),
        "command": shlex.join([".venv/bin/python", "benchmarks/soak.py", *sys.argv[1:]]),
        "loadavg_before": loadavg,
        "machine": {"cpus": os.cpu_count(), "kernel": platform.release()},
        "settings": vars(args) | {"kill_every": min(args.kill_every, 1e12)},
        "probe_before": probed,
        "probe_after": probed_after,
        "server_requests": server_requests,
        "worker_exits": exits,
        "stop": stopped,
    }
    summary["checks"] = [{"check": what, "passed": ok} for what, ok in checks(summary)]
    plot(summary, merged, chaos, RESULTS / "soak.png")
    (RESULTS / "soak.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
    print()
    print(report(summary))
    print(f"\nwrote {RESULTS / 'soak.json'}, soak.png, soak-server.log")
    return 0 if all(ok for _, ok in checks(summary)) else 1


if __name__ == "__main__":
    sys.exit(main())
