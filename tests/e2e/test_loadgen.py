"""arrowsmith-bench, the compiled load generator, tested against a scripted server
(support/scripted_server.py) whose answers depend only on each request's arrival number, so
the status counts and latency percentiles the generator reports are known in advance."""

import json
import math
import pathlib
import re
import signal
import subprocess
import sys
from collections import Counter
from typing import Any

import grpc
import pytest
from arrowsmith.bench import find_binary
from tritonclient.grpc import service_pb2 as pb

SCRIPTED_SERVER = pathlib.Path(__file__).parents[1] / "support" / "scripted_server.py"
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


def bench_scripted(
    tmp_path: pathlib.Path, server_args: list[str], bench_args: list[str]
) -> tuple[dict[str, Any], int]:
    """Start the scripted server, run one arrowsmith-bench level against it without warm-up,
    stop the server; return the level's JSON report and how many requests the server got."""
    body, report = tmp_path / "request.bin", tmp_path / "bench.json"
    body.write_bytes(pb.ModelInferRequest(model_name="scripted").SerializeToString())
    log_path = tmp_path / "scripted-server.log"
    with log_path.open("w") as log:
        server = subprocess.Popen(
            [sys.executable, str(SCRIPTED_SERVER), *server_args],
            stdout=subprocess.PIPE,
            stderr=log,
            stdin=subprocess.DEVNULL,
            text=True,
        )
    try:
        assert server.stdout is not None
        listening = re.fullmatch(r"listening on (\d+)\n", server.stdout.readline())
        assert listening, f"scripted server did not start:\n{log_path.read_text()}"
        command = [str(find_binary()), "--target", f"127.0.0.1:{listening[1]}"]
        command += ["--body", str(body), "--json", str(report), "--warmup", "0"]
        command += ["--duration", str(RUN_TIMEOUT_S), *bench_args]
        done = subprocess.run(command, capture_output=True, text=True, timeout=RUN_TIMEOUT_S)
        assert done.returncode == 0, done.stdout + done.stderr
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            stopped_output, _ = server.communicate(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            server.kill()
            raise
    assert server.returncode == 0, log_path.read_text()
    served = re.fullmatch(r"served (\d+) requests\n", stopped_output)
    assert served, stopped_output
    (level,) = json.loads(report.read_text())["levels"]
    return level, int(served[1])


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
