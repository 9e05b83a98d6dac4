"""Registry and run URIs, served from a real MLflow tracking server.

A tracking server (SQLite store, proxied artifacts) runs for the whole module. Two versions of
the wine model are registered, version 1 is aliased `champion`, and one Arrowsmith server per
URI must serve the version the URI stands for, under the registered model's name, answering
what MLflow itself answers for that URI.
"""

import contextlib
import dataclasses
import os
import pathlib
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator

import mlflow
import mlflow.pyfunc
import mlflow.sklearn
import numpy as np
import pandas as pd
import pytest
import sklearn.base
import tritonclient.grpc as grpcclient
from mlflow import MlflowClient
from mlflow.models import Model
from support import model_builders
from support.server import ServerHandle, free_port, server_command, stop_process_group
from tritonclient.utils import InferenceServerException

REGISTERED_NAME = "wine-registry"
ALIAS = "champion"
ARTIFACT_NAME = "model"
OUTPUT = "output-0"
ROWS = 4
RTOL = 1e-9
TRACKING_STARTUP_TIMEOUT_S = 90.0
ARROWSMITH_STARTUP_TIMEOUT_S = 90.0
POLL_INTERVAL_S = 0.2
STOP_TIMEOUT_S = 10.0
LOG_TAIL_CHARS = 4000
# The URI as a test names it, the name it is served under, and its registry versions; the
# run id of `runs:/` is only known once the model is logged.
RUN_URI = f"runs:/{{run_id}}/{ARTIFACT_NAME}"
CASES = [
    (f"models:/{REGISTERED_NAME}/2", REGISTERED_NAME, ["2"]),
    (f"models:/{REGISTERED_NAME}@{ALIAS}", REGISTERED_NAME, ["1"]),
    (f"models:/{REGISTERED_NAME}/latest", REGISTERED_NAME, ["2"]),
    (RUN_URI, ARTIFACT_NAME, []),
]


def log_tail(path: pathlib.Path) -> str:
    """Enough of a log to explain a failed start-up."""
    return path.read_text(encoding="utf-8", errors="replace")[-LOG_TAIL_CHARS:]


def is_healthy(url: str) -> bool:
    """Whether the tracking server answers; refused connections just mean not yet."""
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return False


@pytest.fixture(scope="module")
def tracking_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`mlflow server` on a free port; its URL once /health answers."""
    root = tmp_path_factory.mktemp("mlflow-server")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log_path = root / "mlflow-server.log"
    command = [
        sys.executable,
        "-m",
        "mlflow",
        "server",
        "--backend-store-uri",
        f"sqlite:///{root / 'mlflow.db'}",
        "--artifacts-destination",
        str(root / "artifacts"),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        "1",
    ]
    # The background job runner (a pool of consumer processes) serves no registry call.
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            command,
            cwd=root,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + TRACKING_STARTUP_TIMEOUT_S
        while not is_healthy(url):
            if process.poll() is not None:
                pytest.fail(
                    f"mlflow server exited with {process.returncode}:\n{log_tail(log_path)}"
                )
            if time.monotonic() > deadline:
                pytest.fail(
                    f"mlflow server not healthy after {TRACKING_STARTUP_TIMEOUT_S} s:\n"
                    f"{log_tail(log_path)}"
                )
            time.sleep(POLL_INTERVAL_S)
        yield url
    finally:
        stop_process_group(process)


@dataclasses.dataclass(frozen=True)
class Registered:
    """What the tests need of the registry set-up."""

    tracking_url: str
    #: The run that logged version 2.
    run_id: str


@pytest.fixture(scope="module")
def registered(tracking_url: str, wine_model_dir: pathlib.Path) -> Iterator[Registered]:
    """Two versions of `wine-registry` that predict differently (so serving the wrong one
    shows in the answers), and the `champion` alias on version 1."""
    previous_uri = os.environ.get("MLFLOW_TRACKING_URI")
    mlflow.set_tracking_uri(tracking_url)
    try:
        example = mlflow.sklearn.load_model(str(wine_model_dir))
        signature = Model.load(str(wine_model_dir)).signature
        data = pd.read_csv(model_builders.WINE_CSV, sep=";")
        retrained = sklearn.base.clone(example).set_params(alpha=0.1)
        retrained.fit(
            data.drop(columns=[model_builders.WINE_TARGET]), data[[model_builders.WINE_TARGET]]
        )
        run_id = ""
        for estimator in (example, retrained):
            with mlflow.start_run() as run:
                mlflow.sklearn.log_model(
                    estimator,
                    name=ARTIFACT_NAME,
                    signature=signature,
                    registered_model_name=REGISTERED_NAME,
                    pip_requirements=mlflow.sklearn.get_default_pip_requirements(),
                )
            run_id = run.info.run_id
        MlflowClient().set_registered_model_alias(REGISTERED_NAME, ALIAS, "1")
        yield Registered(tracking_url, run_id)
    finally:
        # None unsets MLFLOW_TRACKING_URI again, which set_tracking_uri had exported.
        mlflow.set_tracking_uri(previous_uri)


def start_arrowsmith(uri: str, tracking: str, log_dir: pathlib.Path) -> ServerHandle:
    """`arrowsmith serve URI` without `--name`, reaching the registry through the env."""
    port = free_port()
    log_path = log_dir / f"arrowsmith-{port}.log"
    env = {**os.environ, "MLFLOW_TRACKING_URI": tracking, "PYTHONUNBUFFERED": "1"}
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            server_command(uri, port),
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
        )
    return ServerHandle(port=port, process=process, log_path=log_path)


def stop(handle: ServerHandle) -> None:
    """SIGTERM (the graceful path), SIGKILL if the server hangs."""
    if handle.process.poll() is None:
        handle.process.send_signal(signal.SIGTERM)
        try:
            handle.process.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            handle.process.kill()
            handle.process.wait()


def wait_until_ready(handle: ServerHandle) -> None:
    """Ready as a client sees it (ServerReady); fail with the log if the server dies."""
    deadline = time.monotonic() + ARROWSMITH_STARTUP_TIMEOUT_S
    with grpcclient.InferenceServerClient(handle.url) as client:
        while time.monotonic() < deadline:
            if handle.process.poll() is not None:
                pytest.fail(f"arrowsmith exited before it was ready:\n{handle.log_tail()}")
            with contextlib.suppress(InferenceServerException):
                if client.is_server_ready():
                    return
            time.sleep(POLL_INTERVAL_S)
    pytest.fail(
        f"arrowsmith not ready after {ARROWSMITH_STARTUP_TIMEOUT_S} s:\n{handle.log_tail()}"
    )


@pytest.fixture(scope="module")
def servers(registered: Registered, server_logs: pathlib.Path) -> Iterator[dict[str, ServerHandle]]:
    """One server per URI of CASES, started together so their loads overlap."""
    handles: dict[str, ServerHandle] = {}
    try:
        for uri, _, _ in CASES:
            handles[uri] = start_arrowsmith(
                uri.format(run_id=registered.run_id), registered.tracking_url, server_logs
            )
        for handle in handles.values():
            wait_until_ready(handle)
        yield handles
    finally:
        for handle in handles.values():
            stop(handle)


def triton_inputs(rows: pd.DataFrame) -> list[grpcclient.InferInput]:
    """One raw FP64 [n, 1] input per wine column, named by the column."""
    inputs = []
    for column in rows.columns:
        tensor = grpcclient.InferInput(str(column), [len(rows), 1], "FP64")
        tensor.set_data_from_numpy(rows[column].to_numpy().reshape(-1, 1))
        inputs.append(tensor)
    return inputs


def test_registry_versions_predict_differently(
    registered: Registered, wine_frame: pd.DataFrame
) -> None:
    """The premise of the checks below: serving the wrong version changes the answers."""
    rows = wine_frame.iloc[:ROWS]
    first = mlflow.pyfunc.load_model(f"models:/{REGISTERED_NAME}/1").predict(rows)
    second = mlflow.pyfunc.load_model(f"models:/{REGISTERED_NAME}/2").predict(rows)
    assert not np.allclose(first, second, rtol=RTOL)


@pytest.mark.parametrize(("uri", "name", "versions"), CASES, ids=[c[0] for c in CASES])
def test_uri_is_served_as_mlflow_resolves_it(
    servers: dict[str, ServerHandle],
    registered: Registered,
    wine_frame: pd.DataFrame,
    uri: str,
    name: str,
    versions: list[str],
) -> None:
    """Default name, pinned version in metadata and response, and MLflow's predictions."""
    rows = wine_frame.iloc[10 : 10 + ROWS]
    expected = np.asarray(
        mlflow.pyfunc.load_model(uri.format(run_id=registered.run_id)).predict(rows)
    )
    with grpcclient.InferenceServerClient(servers[uri].url) as client:
        metadata = client.get_model_metadata(name)
        result = client.infer(name, triton_inputs(rows))
    assert metadata.name == name
    assert list(metadata.versions) == versions
    response = result.get_response()
    assert response.model_name == name
    assert response.model_version == (versions[0] if versions else "")
    answer = result.as_numpy(OUTPUT)
    assert answer is not None
    assert answer.shape == expected.shape
    np.testing.assert_allclose(answer, expected, rtol=RTOL)


def test_unresolvable_uri_fails_start_up(tracking_url: str, server_logs: pathlib.Path) -> None:
    """A registered model that does not exist: the server exits non-zero, never ready, and
    the error it logs names the model."""
    handle = start_arrowsmith("models:/no-such-model/1", tracking_url, server_logs)
    ever_ready = False
    try:
        deadline = time.monotonic() + ARROWSMITH_STARTUP_TIMEOUT_S
        with grpcclient.InferenceServerClient(handle.url) as client:
            while handle.process.poll() is None and time.monotonic() < deadline:
                with contextlib.suppress(InferenceServerException):
                    ever_ready = ever_ready or client.is_server_ready()
                time.sleep(POLL_INTERVAL_S)
        exit_code = handle.process.poll()
    finally:
        stop(handle)
    assert exit_code is not None, (
        f"still running after {ARROWSMITH_STARTUP_TIMEOUT_S} s:\n{handle.log_tail()}"
    )
    assert exit_code != 0
    assert not ever_ready
    log = handle.log_text()
    assert "loading failed" in log, log
    assert "no-such-model" in log.split("loading failed", 1)[1], log
