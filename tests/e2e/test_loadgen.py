"""arrowsmith-bench, the compiled load generator, tested against a scripted server
(support/scripted_server.py over gRPC, unary or streamed, support/scripted_http_server.py with
--http) whose answers depend only on each request's arrival number, so the status counts and
latency percentiles the generator reports are known in advance; and against the native floor
(rust/floor), at the rates it answers."""

import contextlib
import dataclasses
import hashlib
import json
import math
import pathlib
import re
import signal
import struct
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from typing import Any

import grpc
import pytest
from arrowsmith.bench import find_binary
from support.server import ServerHandle
from tritonclient.grpc import service_pb2 as pb

SCRIPTED_SERVER = pathlib.Path(__file__).parents[1] / "support" / "scripted_server.py"
SCRIPTED_HTTP_SERVER = SCRIPTED_SERVER.with_name("scripted_http_server.py")
NATIVE_FLOOR = (
    pathlib.Path(__file__).parents[2] / "rust" / "target" / "release" / "arrowsmith-floor"
)
RUN_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 10.0
# Every 7th request fails with RESOURCE_EXHAUSTED, else every 13th with INVALID_ARGUMENT,
# else every 50th with UNAVAILABLE (the first rule that applies wins).
FAIL_PLAN = {
    7: grpc.StatusCode.RESOURCE_EXHAUSTED,
    13: grpc.StatusCode.INVALID_ARGUMENT,
    50: grpc.StatusCode.UNAVAILABLE,
}
# 60% of requests take 60 ms, 35% 90 ms and 5% 180 ms: p50, p90 and p99 each fall inside
# one group, not at its edge, so a slow outlier cannot move them to a neighbouring group,
# and the grpcio server's ~1-1.5 ms per call stays well inside 5%.
SLEEP_PLAN_MS = [60] * 12 + [90] * 7 + [180]
# Over HTTP: every 7th request is answered 429, else every 13th 400, else every 50th 503.
HTTP_FAIL_PLAN = {7: 429, 13: 400, 50: 503}
HTTP_FAIL_EVERY = ",".join(f"{every}:{status}" for every, status in HTTP_FAIL_PLAN.items())
HTTP_PATH = "/invocations"
STREAM_PATH = "/inference.GRPCInferenceService/ModelStreamInfer"
# Over a stream: every 7th message is answered with an in-band error_message.
STREAM_ERROR_EVERY = 7
# A body of about 16 KiB, more than one read on either side, not all ASCII.
HTTP_BODY = json.dumps(
    {"inputs": [{"name": "x", "data": list(range(3000))}], "note": "crème brûlée"},
    ensure_ascii=False,
).encode()


@dataclasses.dataclass
class Scripted:
    """A running scripted server; once it has stopped, what it counted."""

    port: int
    served: int = 0
    streams: int = 0


@contextlib.contextmanager
def scripted_server(
    tmp_path: pathlib.Path, server_args: list[str], script: pathlib.Path = SCRIPTED_SERVER
) -> Iterator[Scripted]:
    """The scripted server, running; stopped on leaving, when it must exit cleanly and say
    how many requests (and ModelStreamInfer streams) it served."""
    log_path = tmp_path / "scripted-server.log"
    with log_path.open("w") as log:
        server = subprocess.Popen(
            [sys.executable, str(script), *server_args],
            stdout=subprocess.PIPE,
            stderr=log,
            stdin=subprocess.DEVNULL,
            text=True,
        )
    try:
        assert server.stdout is not None
        listening = re.fullmatch(r"listening on (\d+)\n", server.stdout.readline())
        assert listening, f"scripted server did not start:\n{log_path.read_text()}"
        handle = Scripted(int(listening[1]))
        yield handle
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            stopped_output, _ = server.communicate(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            server.kill()
            raise
    assert server.returncode == 0, log_path.read_text()
    served = re.fullmatch(r"served (\d+) requests(?: over (\d+) streams)?\n", stopped_output)
    assert served, stopped_output
    handle.served, handle.streams = int(served[1]), int(served[2] or 0)


def bench_scripted(
    tmp_path: pathlib.Path,
    server_args: list[str],
    bench_args: list[str],
    *,
    script: pathlib.Path = SCRIPTED_SERVER,
    body: bytes | None = None,
) -> tuple[dict[str, Any], int]:
    """Start the scripted server, run one arrowsmith-bench level against it without warm-up,
    stop the server; return the level's JSON report and how many requests the server got.
    The body sent is `body`, by default a serialized ModelInferRequest."""
    level, scripted = bench_scripted_server(
        tmp_path, server_args, bench_args, script=script, body=body
    )
    return level, scripted.served


def bench_scripted_server(
    tmp_path: pathlib.Path,
    server_args: list[str],
    bench_args: list[str],
    *,
    script: pathlib.Path = SCRIPTED_SERVER,
    body: bytes | None = None,
) -> tuple[dict[str, Any], Scripted]:
    """bench_scripted, returning all the server counted (the streams too)."""
    body_path, report = tmp_path / "request.bin", tmp_path / "bench.json"
    if body is None:
        body = pb.ModelInferRequest(model_name="scripted").SerializeToString()
    body_path.write_bytes(body)
    with scripted_server(tmp_path, server_args, script) as scripted:
        command = [str(find_binary()), "--target", f"127.0.0.1:{scripted.port}"]
        command += ["--body", str(body_path), "--json", str(report), "--warmup", "0"]
        command += ["--duration", str(RUN_TIMEOUT_S), *bench_args]
        done = subprocess.run(command, capture_output=True, text=True, timeout=RUN_TIMEOUT_S)
        assert done.returncode == 0, done.stdout + done.stderr
    (level,) = json.loads(report.read_text())["levels"]
    return level, scripted


def expected_statuses(requests: int) -> Counter[str]:
    """FAIL_PLAN's non-OK statuses over requests 0 .. requests-1, keyed by status number
    as in the report."""
    statuses: Counter[str] = Counter()
    for n in range(requests):
        for every, code in FAIL_PLAN.items():
            if n % every == every - 1:
                statuses[str(code.value[0])] += 1
                break
    return statuses


def nearest_rank(values: list[float], percentile: float) -> float:
    """The smallest value with at least `percentile`% of `values` at or below it, the
    definition an HDR histogram uses."""
    return sorted(values)[math.ceil(percentile / 100 * len(values)) - 1]


@pytest.mark.parametrize(
    "load",
    [["--concurrency", "1"], ["--concurrency", "4"], ["--rate", "1000"]],
    ids=["closed-1", "closed-4", "open-1000"],
)
def test_statuses_are_counted_exactly(tmp_path: pathlib.Path, load: list[str]):
    """With --requests N, exactly N requests are sent and each status is counted once, even
    with several in flight when the N-th goes out."""
    requests = 1000
    fail_every = ",".join(f"{every}:{code.name}" for every, code in FAIL_PLAN.items())
    level, served = bench_scripted(
        tmp_path, ["--fail-every", fail_every], [*load, "--requests", str(requests)]
    )
    statuses = expected_statuses(requests)
    assert served == requests
    assert level["statuses"] == statuses
    assert level["errors"] == statuses.total()
    assert level["ok"] == requests - statuses.total()
    assert (level["bad_answers"], level["transport_errors"]) == (0, 0)


def test_percentiles_match_the_scripted_latencies(tmp_path: pathlib.Path):
    """One request at a time, each answered after its planned sleep: p50, p90 and p99 are
    within 5% of the same percentiles of the planned sleeps."""
    requests = 100
    level, served = bench_scripted(
        tmp_path,
        ["--sleep-ms", ",".join(map(str, SLEEP_PLAN_MS))],
        ["--concurrency", "1", "--requests", str(requests)],
    )
    assert served == level["ok"] == requests
    planned = [SLEEP_PLAN_MS[n % len(SLEEP_PLAN_MS)] for n in range(requests)]
    for name, percentile in [("p50", 50), ("p90", 90), ("p99", 99)]:
        expected = nearest_rank(planned, percentile)
        assert level[f"{name}_ms"] == pytest.approx(expected, rel=0.05), name


def test_open_loop_counts_the_queue_from_the_scheduled_time(tmp_path: pathlib.Path):
    """Offered 100 requests/s, a server that takes 20 ms per request and lets one be open at
    a time queues them in the generator: request k waits for the k before it, so it is
    answered at least 20 (k + 1) ms after the first was due, 10 k ms after it was due
    itself. Timed from its scheduled send, its latency is at least 20 + 10 k ms; timed from
    when it finally went out (coordinated omission) it would be about 20 ms."""
    requests, interval_ms, service_ms = 50, 10, 20
    level, served = bench_scripted(
        tmp_path,
        ["--sleep-ms", str(service_ms), "--threads", "1", "--max-streams", "1"],
        ["--rate", str(1000 // interval_ms), "--connections", "1", "--requests", str(requests)],
    )
    assert served == level["ok"] == requests
    floors = [service_ms * (k + 1) - interval_ms * k for k in range(requests)]
    assert level["p50_ms"] >= nearest_rank(floors, 50)
    assert level["max_ms"] >= max(floors)


def bench_stream(
    tmp_path: pathlib.Path, server_args: list[str], bench_args: list[str]
) -> tuple[dict[str, Any], int, int]:
    """bench_scripted with --stream (every answer of one row); also returns how many streams
    the server saw, and checks the report names ModelStreamInfer."""
    level, scripted = bench_scripted_server(
        tmp_path, server_args, ["--stream", "--expect-rows", "1", *bench_args]
    )
    report = json.loads((tmp_path / "bench.json").read_text())
    assert (report["protocol"], report["path"]) == ("grpc", STREAM_PATH)
    return level, scripted.served, scripted.streams


@pytest.mark.parametrize(
    ("load", "connections"),
    [
        (["--concurrency", "1"], 1),
        (["--concurrency", "32"], 1),
        (["--concurrency", "8"], 2),
        (["--rate", "1000"], 1),
    ],
    ids=["closed-1", "closed-32-one-stream", "closed-8-two-streams", "open-1000"],
)
def test_stream_answers_and_in_band_errors_are_counted_exactly(
    tmp_path: pathlib.Path, load: list[str], connections: int
):
    """With --stream, each connection carries one stream, --requests N sends exactly N
    messages over them, and every answer is counted once: OK, or an in-band error (an
    error_message), which is counted apart from the statuses."""
    requests = 1000
    level, served, streams = bench_stream(
        tmp_path,
        ["--stream-error-every", str(STREAM_ERROR_EVERY)],
        [*load, "--connections", str(connections), "--requests", str(requests)],
    )
    in_band = sum(1 for n in range(requests) if n % STREAM_ERROR_EVERY == STREAM_ERROR_EVERY - 1)
    assert (served, streams) == (requests, connections)
    assert level["stream_errors"] == level["errors"] == in_band
    assert level["ok"] == requests - in_band
    assert level["statuses"] == {}
    assert (level["bad_answers"], level["transport_errors"]) == (0, 0)
    assert 0 < level["p50_ms"] <= level["p99_ms"] <= level["max_ms"]


def test_stream_percentiles_match_the_scripted_latencies(tmp_path: pathlib.Path):
    """One message at a time on one stream, each answered after its planned sleep: as for
    unary calls, p50, p90 and p99 are within 5% of the planned sleeps' percentiles."""
    requests = 100
    level, served, streams = bench_stream(
        tmp_path,
        ["--sleep-ms", ",".join(map(str, SLEEP_PLAN_MS))],
        ["--concurrency", "1", "--connections", "1", "--requests", str(requests)],
    )
    assert served == level["ok"] == requests
    assert streams == 1
    planned = [SLEEP_PLAN_MS[n % len(SLEEP_PLAN_MS)] for n in range(requests)]
    for name, percentile in [("p50", 50), ("p90", 90), ("p99", 99)]:
        expected = nearest_rank(planned, percentile)
        assert level[f"{name}_ms"] == pytest.approx(expected, rel=0.05), name


def test_a_stream_the_server_ends_fails_every_later_message(tmp_path: pathlib.Path):
    """A stream ended with a status (the 50th message's UNAVAILABLE) is not reopened: that
    message and every later one count under the status, and the server sees no more."""
    requests, ended_at = 200, 50
    level, served, streams = bench_stream(
        tmp_path,
        ["--fail-every", f"{ended_at}:UNAVAILABLE"],
        ["--concurrency", "1", "--connections", "1", "--requests", str(requests)],
    )
    assert (served, streams) == (ended_at, 1)
    assert level["ok"] == ended_at - 1
    unavailable = str(grpc.StatusCode.UNAVAILABLE.value[0])
    assert level["statuses"] == {unavailable: requests - ended_at + 1}
    assert level["stream_errors"] == 0


def test_arrowsmith_bench_streams_with_stream(tmp_path: pathlib.Path):
    """`arrowsmith bench --stream` hands --stream to the generator: its request (made from
    a V2 JSON body) goes as messages of one stream per connection."""
    requests = 200
    request, report = tmp_path / "request.json", tmp_path / "bench.json"
    tensor = {"name": "x", "datatype": "FP32", "shape": [1, 1], "data": [1.0]}
    request.write_text(json.dumps({"inputs": [tensor]}))
    with scripted_server(tmp_path, []) as scripted:
        command = [sys.executable, "-m", "arrowsmith", "bench"]
        command += ["--target", f"127.0.0.1:{scripted.port}", "--model", "scripted"]
        command += ["--request", str(request), "--stream", "--connections", "2"]
        command += ["--concurrency", "8", "--requests", str(requests), "--warmup", "0"]
        command += ["--duration", str(RUN_TIMEOUT_S), "--json", str(report)]
        done = subprocess.run(command, capture_output=True, text=True, timeout=RUN_TIMEOUT_S)
        assert done.returncode == 0, done.stdout + done.stderr
    results = json.loads(report.read_text())
    assert results["path"] == STREAM_PATH
    (level,) = results["levels"]
    assert level["ok"] == scripted.served == requests
    assert scripted.streams == 2


@contextlib.contextmanager
def native_floor(tmp_path: pathlib.Path, answer: pb.ModelInferResponse) -> Iterator[int]:
    """The native floor (rust/floor, built by `make loadgen`) answering every call with
    `answer`, and every streamed message with it inside a ModelStreamInferResponse; its
    port. It must still be running when stopped."""
    if not NATIVE_FLOOR.exists():
        raise FileNotFoundError(f"no {NATIVE_FLOOR}: run `make loadgen`")
    unary, streamed = tmp_path / "answer.pb", tmp_path / "stream-answer.pb"
    unary.write_bytes(answer.SerializeToString())
    streamed.write_bytes(pb.ModelStreamInferResponse(infer_response=answer).SerializeToString())
    command = [str(NATIVE_FLOOR), "--port", "0", "--response", str(unary)]
    command += ["--stream-response", str(streamed)]
    floor = subprocess.Popen(command, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True)
    try:
        assert floor.stdout is not None
        listening = re.fullmatch(r"listening on (\d+)\n", floor.stdout.readline())
        assert listening, "the native floor did not start"
        yield int(listening[1])
        assert floor.poll() is None, "the native floor ended"
    finally:
        floor.kill()
        floor.wait(timeout=STOP_TIMEOUT_S)


@pytest.mark.parametrize(
    "mode", [[], ["--stream", "--connections", "1"]], ids=["unary", "one-stream"]
)
def test_the_native_floor_answers_every_call_with_its_canned_answer(
    tmp_path: pathlib.Path, mode: list[str]
):
    """arrowsmith-bench against the native floor, 32 in flight: every one of the calls (or
    of the messages of one stream) is answered OK with the canned answer, its value
    checked."""
    requests, value = 5000, 5.25
    answer = pb.ModelInferResponse(model_name="scripted", model_version="1")
    answer.outputs.add(name="output-0", datatype="FP64", shape=[1])
    answer.raw_output_contents.append(struct.pack("<d", value))
    body, expected, report = (tmp_path / name for name in ("request.pb", "1.txt", "bench.json"))
    body.write_bytes(pb.ModelInferRequest(model_name="scripted").SerializeToString())
    expected.write_text(f"{value}\n")
    with native_floor(tmp_path, answer) as port:
        command = [str(find_binary()), "--target", f"127.0.0.1:{port}", "--body", str(body)]
        command += ["--concurrency", "32", "--requests", str(requests), "--warmup", "0"]
        command += ["--expect-rows", "1", "--expect-version", f"1={expected}", *mode]
        command += ["--duration", str(RUN_TIMEOUT_S), "--json", str(report)]
        done = subprocess.run(command, capture_output=True, text=True, timeout=RUN_TIMEOUT_S)
        assert done.returncode == 0, done.stdout + done.stderr
    (level,) = json.loads(report.read_text())["levels"]
    assert level["ok"] == requests
    assert (level["errors"], level["wrong_answers"]) == (0, 0)
    assert level["ok_by_version"] == {"1": requests}


def bench_scripted_http(
    tmp_path: pathlib.Path, server_args: list[str], bench_args: list[str]
) -> tuple[dict[str, Any], int]:
    """bench_scripted with --http against the scripted HTTP server, which answers 500 to any
    request whose body or Content-Type is not the one sent; also checks the report says
    HTTP."""
    expect = ["--expect-sha256", hashlib.sha256(HTTP_BODY).hexdigest()]
    expect += ["--expect-content-type", "application/json"]
    level, served = bench_scripted(
        tmp_path,
        [*expect, *server_args],
        ["--http", HTTP_PATH, *bench_args],
        script=SCRIPTED_HTTP_SERVER,
        body=HTTP_BODY,
    )
    report = json.loads((tmp_path / "bench.json").read_text())
    assert (report["protocol"], report["path"]) == ("http", HTTP_PATH)
    return level, served


def expected_http_statuses(requests: int) -> Counter[str]:
    """Every answer's HTTP status over requests 0 .. requests-1 (HTTP_FAIL_PLAN's, else
    200), keyed as in the report."""
    statuses: Counter[str] = Counter()
    for n in range(requests):
        failed = (status for every, status in HTTP_FAIL_PLAN.items() if n % every == every - 1)
        statuses[str(next(failed, 200))] += 1
    return statuses


def check_http_counts(level: dict[str, Any], served: int, requests: int) -> None:
    """Exactly `requests` were sent and each answer counted once under its status; only
    the 2xx are OK."""
    statuses = expected_http_statuses(requests)
    assert served == requests
    assert level["statuses"] == statuses
    assert level["ok"] == statuses["200"]
    assert level["errors"] == requests - statuses["200"]
    assert (level["bad_answers"], level["transport_errors"]) == (0, 0)


@pytest.mark.parametrize(
    "load",
    [["--concurrency", "1"], ["--concurrency", "4"], ["--rate", "1000"]],
    ids=["closed-1", "closed-4", "open-1000"],
)
def test_http_statuses_are_counted_exactly(tmp_path: pathlib.Path, load: list[str]):
    """Over HTTP/1.1 too, --requests N sends exactly N requests, each with the body as is
    (else the server answers 500), and every answer is counted by its HTTP status."""
    requests = 1000
    level, served = bench_scripted_http(
        tmp_path, ["--fail-every", HTTP_FAIL_EVERY], [*load, "--requests", str(requests)]
    )
    check_http_counts(level, served, requests)


@pytest.mark.parametrize(
    "server_args",
    [["--chunked"], ["--close-every", "5"], ["--chunked", "--close-every", "3"]],
    ids=["chunked", "close-every-5", "chunked-close-every-3"],
)
def test_http_answers_of_every_framing_are_read(tmp_path: pathlib.Path, server_args: list[str]):
    """Chunked answers are read to their end, and a connection the server closes with
    `Connection: close` is replaced: no request is lost or counted twice."""
    requests = 300
    level, served = bench_scripted_http(
        tmp_path,
        ["--fail-every", HTTP_FAIL_EVERY, *server_args],
        ["--concurrency", "4", "--requests", str(requests)],
    )
    check_http_counts(level, served, requests)


def test_http_connections_closed_while_idle_are_replaced(tmp_path: pathlib.Path):
    """A server that closes connections idle for 50 ms, sent a request every 200 ms on one
    connection: each request after the first finds its connection closed, and goes out
    again on a new one instead of counting as an error."""
    requests = 8
    level, served = bench_scripted_http(
        tmp_path,
        ["--fail-every", HTTP_FAIL_EVERY, "--idle-timeout", "0.05"],
        ["--rate", "5", "--connections", "1", "--requests", str(requests)],
    )
    check_http_counts(level, served, requests)


def test_http_open_loop_counts_the_queue_from_the_scheduled_time(tmp_path: pathlib.Path):
    """As over gRPC: offered 100 requests/s with one HTTP connection allowed, a server that
    takes 20 ms per request queues them in the generator, and their latency counts from
    when each was due; the requests that found the connection busy are reported."""
    requests, interval_ms, service_ms = 50, 10, 20
    level, served = bench_scripted_http(
        tmp_path,
        ["--sleep-ms", str(service_ms)],
        ["--rate", str(1000 // interval_ms), "--connections", "1", "--requests", str(requests)],
    )
    assert served == level["ok"] == requests
    floors = [service_ms * (k + 1) - interval_ms * k for k in range(requests)]
    assert level["p50_ms"] >= nearest_rank(floors, 50)
    assert level["max_ms"] >= max(floors)
    assert level["waited_for_connection"] >= requests // 2


def test_expect_rows_is_refused_over_http(tmp_path: pathlib.Path):
    body = tmp_path / "body.json"
    body.write_bytes(HTTP_BODY)
    command = [str(find_binary()), "--body", str(body), "--http", HTTP_PATH, "--expect-rows", "1"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=RUN_TIMEOUT_S)
    assert done.returncode == 2
    assert "--expect-rows is not supported over HTTP" in done.stderr


def test_http_against_a_real_server(wine_server: ServerHandle, tmp_path: pathlib.Path, wine_frame):
    """Arrowsmith's own /invocations, two wine rows per request from two connections:
    every answer is a 200."""
    requests = 200
    body = tmp_path / "w3.json"
    rows = wine_frame.iloc[:2]
    split = {"columns": list(rows.columns), "data": rows.to_numpy().tolist()}
    body.write_text(json.dumps({"dataframe_split": split}))
    report = tmp_path / "bench.json"
    command = [str(find_binary()), "--target", f"127.0.0.1:{wine_server.http_port}"]
    command += ["--http", HTTP_PATH, "--body", str(body), "--json", str(report)]
    command += ["--concurrency", "2", "--requests", str(requests)]
    command += ["--warmup", "0", "--duration", str(RUN_TIMEOUT_S)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=RUN_TIMEOUT_S)
    assert done.returncode == 0, done.stdout + done.stderr
    (level,) = json.loads(report.read_text())["levels"]
    assert level["statuses"] == {"200": requests}
    assert level["ok"] == requests
    assert level["errors"] == 0
