"""Zero failed requests while the registry moves: `champion` moves between versions 1 and 2
twenty times while arrowsmith-bench sends a fixed request rate (open loop) to two servers
following it, one by polling and one by MLflow's webhook. Every answer is checked against
the predictions of the version it names; no request may fail; each server must switch within
its bound (the webhook's within a second of the delivery, by the server's own swap-time
histogram); and memory after twenty swaps stays within 10% of memory after the first.

With ARROWSMITH_SWAP_TIMELINE_DIR set, each server's per-request timeline and the moves are
written there (`benchmarks/swap_timeline.py` draws them)."""

import json
import os
import pathlib
import shutil
import subprocess
import time
from collections.abc import Iterator

import grpc
import numpy as np
import pandas as pd
import pytest
import requests
from arrowsmith.bench import find_binary
from prometheus_client.parser import text_string_to_metric_families
from support.model_builders import read_wine_features
from support.registry_stack import (
    CHAMPION,
    REGISTERED_NAME,
    RegistryStack,
    expected_predictions,
    mlflow_webhook,
    move_alias,
)
from support.server import ServerHandle, StartServer
from tritonclient.grpc import service_pb2 as pb

SWAPS = 20
RATE_PER_SERVER = 100
POLL_INTERVAL_S = 1.0
#: The bounds a switch must keep, from the alias moving to the new version answering: one
#: poll interval, or a second after the webhook, each plus the load of the new version from
#: S3 (measured at ~0.3-0.6 s here, under this test's load).
POLL_BOUND_S = POLL_INTERVAL_S + 1.5
WEBHOOK_BOUND_S = 1.0 + 1.5
#: Long enough for every swap (about 1.5 s each), then checked to have outlasted them.
BENCH_SECONDS = 60
#: From a webhook's arrival to the new version answering, as the server measures it.
AFTER_WEBHOOK_S = 1.0
PROBE_S = 0.02
RSS_GROWTH = 0.10
SECRET = "arrowsmith-test-secret"
URI = f"models:/{REGISTERED_NAME}@{CHAMPION}"


def request(row: pd.DataFrame) -> pb.ModelInferRequest:
    """One row, an FP64 [1, 1] raw input per column, as a W1 client sends it."""
    message = pb.ModelInferRequest(model_name=REGISTERED_NAME)
    for column in row.columns:
        tensor = message.inputs.add(name=str(column), datatype="FP64", shape=[1, 1])
        assert tensor is not None
        message.raw_input_contents.append(row[column].to_numpy("<f8").tobytes())
    return message


def answering(channel: grpc.Channel, body: bytes) -> str:
    call = channel.unary_unary(
        "/inference.GRPCInferenceService/ModelInfer",
        request_serializer=lambda b: b,
        response_deserializer=pb.ModelInferResponse.FromString,
    )
    return str(call(body, timeout=5).model_version)


def swaps_within(server: ServerHandle, seconds: float) -> tuple[float, float]:
    """How many swaps the server counted, and how many took at most `seconds` from the
    reference seen moved to the new version answering (its swap-time histogram)."""
    text = requests.get(f"{server.http_url}/metrics", timeout=10).text
    count = within = 0.0
    for family in text_string_to_metric_families(text):
        if family.name != "arrowsmith_model_swap_seconds":
            continue
        for sample in family.samples:
            if sample.name.endswith("_count"):
                count += sample.value
            elif sample.name.endswith("_bucket") and float(sample.labels["le"]) == seconds:
                within += sample.value
    return count, within


def rss_bytes(pid: int) -> int:
    for line in pathlib.Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for {pid}")


@pytest.fixture
def webhook(registry_stack: RegistryStack, start_server: StartServer) -> Iterator[ServerHandle]:
    """A server that follows by webhook only (no polling), and MLflow's webhook to it."""
    server = start_server(
        URI, "--poll-interval", "0", "--webhook-secret", SECRET, env=registry_stack.env
    )
    url = f"{server.http_url}/v2/repository/webhooks/mlflow"
    with mlflow_webhook(registry_stack, "arrowsmith-swaps", url, SECRET):
        yield server


def test_twenty_swaps_under_load_fail_no_request(
    registry_stack: RegistryStack,
    start_server: StartServer,
    webhook: ServerHandle,
    tmp_path: pathlib.Path,
) -> None:
    polling = start_server(URI, "--poll-interval", str(POLL_INTERVAL_S), env=registry_stack.env)
    servers = {"poll": polling, "webhook": webhook}
    bounds = {"poll": POLL_BOUND_S, "webhook": WEBHOOK_BOUND_S}
    row = read_wine_features().iloc[:1]
    body = request(row).SerializeToString()
    body_path = tmp_path / "request.pb"
    body_path.write_bytes(body)
    expect = []
    for version in (1, 2):
        values = expected_predictions(registry_stack, version, row)
        path = tmp_path / f"expected-{version}.txt"
        path.write_text("\n".join(repr(float(v)) for v in np.ravel(values)))
        expect += ["--expect-version", f"{version}={path}"]

    started = time.monotonic()
    benches = {
        label: subprocess.Popen(
            [
                str(find_binary()),
                "--target", server.url,
                "--body", str(body_path),
                "--rate", str(RATE_PER_SERVER),
                "--connections", "2",
                "--duration", str(BENCH_SECONDS),
                "--warmup", "0",
                *expect,
                "--timeline", str(tmp_path / f"timeline-{label}.csv"),
                "--json", str(tmp_path / f"bench-{label}.json"),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        for label, server in servers.items()
    }  # fmt: skip
    channels = {label: grpc.insecure_channel(s.url) for label, s in servers.items()}
    moves: list[dict[str, float | int]] = []
    rss: dict[str, list[int]] = {label: [] for label in servers}
    try:
        current = 1
        for _ in range(SWAPS):
            target = 2 if current == 1 else 1
            moved = time.monotonic()
            move_alias(registry_stack, target)
            switched: dict[str, float] = {}
            while len(switched) < len(servers):
                for label, channel in channels.items():
                    if label not in switched and answering(channel, body) == str(target):
                        switched[label] = time.monotonic() - moved
                elapsed = time.monotonic() - moved
                assert elapsed < 3 * max(bounds.values()), f"no switch to {target}: {switched}"
                time.sleep(PROBE_S)
            for label, server in servers.items():
                rss[label].append(rss_bytes(server.process.pid))
            memory = {f"rss_{label}": rss[label][-1] for label in servers}
            moves.append({"at": moved - started, "version": target, **switched, **memory})
            current = target
        swaps_done = time.monotonic() - started
        outcomes = {label: bench.wait(BENCH_SECONDS + 60) for label, bench in benches.items()}
    finally:
        for bench in benches.values():
            if bench.poll() is None:
                bench.kill()
                bench.wait()
        for channel in channels.values():
            channel.close()
        move_alias(registry_stack, 1)
    export = os.environ.get("ARROWSMITH_SWAP_TIMELINE_DIR")
    if export:
        target_dir = pathlib.Path(export)
        target_dir.mkdir(parents=True, exist_ok=True)
        for label in servers:
            shutil.copy(tmp_path / f"timeline-{label}.csv", target_dir)
            shutil.copy(tmp_path / f"bench-{label}.json", target_dir)
        (target_dir / "moves.json").write_text(json.dumps(moves, indent=1))

    assert swaps_done < BENCH_SECONDS, "the swaps outlasted the load: lengthen BENCH_SECONDS"
    for label, bench in benches.items():
        assert outcomes[label] == 0, bench.stderr.read().decode() if bench.stderr else ""
        [level] = json.loads((tmp_path / f"bench-{label}.json").read_text())["levels"]
        assert level["errors"] == 0 and level["wrong_answers"] == 0, (label, level)
        assert set(level["ok_by_version"]) == {"1", "2"}, (label, level["ok_by_version"])
        delays = [float(m[label]) for m in moves]
        assert max(delays) <= bounds[label], (label, delays)
        first, last = rss[label][0], rss[label][-1]
        assert last <= first * (1 + RSS_GROWTH), (label, rss[label])
    assert swaps_within(webhook, AFTER_WEBHOOK_S) == (SWAPS, SWAPS)
