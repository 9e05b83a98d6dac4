"""A followed alias moves to a version with other requirements, under load: the server built
the first version's environment and serves in it; when `champion` moves to version 2, whose
requirements add a package, the worker refuses to load it in its own environment and asks
the supervisor, which builds version 2's environment while version 1 keeps answering, then
starts a worker in it and drains the old one. arrowsmith-bench sends a fixed rate all along:
no request fails, every answer matches the version it names, both versions answer, and the
worker then runs under the new environment's interpreter."""

import json
import pathlib
import subprocess
import time
from collections.abc import Iterator

import grpc
import mlflow
import numpy as np
import pandas as pd
import pytest
import support.server as server_support
from arrowsmith.bench import find_binary
from mlflow.models import infer_signature
from sklearn.linear_model import ElasticNet
from support import model_builders
from support.processes import children, command_line
from support.registry_stack import RegistryStack, tracking
from support.server import StartServer
from support.v2 import columns_request, model_infer
from tritonclient.grpc import service_pb2 as pb

pytestmark = pytest.mark.slow

NAME = "ArrowsmithEnvironmentSwap"
ALIAS = "champion"
URI = f"models:/{NAME}@{ALIAS}"
#: Version 2's environment differs by one small package.
EXTRA_REQUIREMENT = "six==1.17.0"
RATE = 100
BENCH_SECONDS = 90
#: Building version 2's environment and starting a worker in it.
SWITCH_BOUND_S = 80.0
BUILD_TIMEOUT_S = 600.0


@pytest.fixture(scope="module")
def two_environments(registry_stack: RegistryStack) -> Iterator[dict[int, ElasticNet]]:
    """Version 1 with MLflow's default requirements, version 2 with one more; `champion`
    on version 1."""
    frame = pd.read_csv(model_builders.WINE_CSV, sep=";")
    data = frame.drop(columns=[model_builders.WINE_TARGET])
    target = frame[model_builders.WINE_TARGET]
    models = {}
    with tracking(registry_stack):
        base = mlflow.sklearn.get_default_pip_requirements(include_skops=True)
        for version, (alpha, extra) in {1: (0.5, []), 2: (0.05, [EXTRA_REQUIREMENT])}.items():
            model = ElasticNet(alpha=alpha, l1_ratio=0.5, random_state=42).fit(data, target)
            with mlflow.start_run(run_name=f"environment-swap-{version}"):
                info = mlflow.sklearn.log_model(
                    model,
                    name="model",
                    signature=infer_signature(data, model.predict(data)),
                    input_example=data.iloc[:5],
                    registered_model_name=NAME,
                    pip_requirements=[*base, *extra],
                )
            assert str(info.registered_model_version) == str(version)
            models[version] = model
    registry_stack.client().set_registered_model_alias(NAME, ALIAS, "1")
    yield models


def answering(channel: grpc.Channel, body: bytes) -> str:
    """The version that answers `body` now."""
    request = pb.ModelInferRequest.FromString(body)
    return str(model_infer(channel)(request, timeout=5).model_version)


def worker_interpreters(pid: int) -> list[str]:
    return [command_line(child)[0] for child in children(pid)]


def test_a_version_with_new_requirements_goes_live_without_a_failed_request(
    registry_stack: RegistryStack,
    two_environments: dict[int, ElasticNet],
    start_server: StartServer,
    tmp_path: pathlib.Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(server_support, "STARTUP_TIMEOUT_S", BUILD_TIMEOUT_S)
    cache = tmp_path / "envs"
    server = start_server(
        URI,
        "--env-manager", "uv",
        "--env-cache", str(cache),
        "--poll-interval", "1",
        "--workers", "1",
        env=registry_stack.env,
    )  # fmt: skip
    [first_python] = worker_interpreters(server.process.pid)
    assert first_python.startswith(str(cache)), first_python

    row = model_builders.read_wine_features().iloc[:1]
    body = columns_request(NAME, row, "FP64", typed=False).SerializeToString()
    (tmp_path / "request.pb").write_bytes(body)
    expect = []
    for version, model in two_environments.items():
        path = tmp_path / f"expected-{version}.txt"
        path.write_text("\n".join(repr(float(v)) for v in np.ravel(model.predict(row))))
        expect += ["--expect-version", f"{version}={path}"]
    bench = subprocess.Popen(
        [
            str(find_binary()),
            "--target", server.url,
            "--body", str(tmp_path / "request.pb"),
            "--rate", str(RATE),
            "--connections", "2",
            "--duration", str(BENCH_SECONDS),
            "--warmup", "0",
            *expect,
            "--json", str(tmp_path / "bench.json"),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        with grpc.insecure_channel(server.url) as channel:
            time.sleep(3)
            registry_stack.client().set_registered_model_alias(NAME, ALIAS, "2")
            moved = time.monotonic()
            while answering(channel, body) != "2":
                assert time.monotonic() - moved < SWITCH_BOUND_S, server.log_tail()
                time.sleep(0.1)
            switched = time.monotonic() - moved
        assert bench.wait(BENCH_SECONDS + 60) == 0, bench.stderr.read() if bench.stderr else ""
    finally:
        if bench.poll() is None:
            bench.kill()
            bench.wait()
    [level] = json.loads((tmp_path / "bench.json").read_text())["levels"]
    assert level["errors"] == 0 and level["wrong_answers"] == 0, level
    assert set(level["ok_by_version"]) == {"1", "2"}, level["ok_by_version"]
    assert switched < BENCH_SECONDS - 10, "the switch must happen well within the load"

    [second_python] = worker_interpreters(server.process.pid)
    assert second_python.startswith(str(cache)) and second_python != first_python
    log = server.log_path.read_text()
    assert "needs another environment" in log
    assert "starting its successor" in log
    assert f"now runs under {second_python}" in log
