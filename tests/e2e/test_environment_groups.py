"""Models of several environments behind one set of ports: the wine example in the server's
own environment (listed first, so its worker owns the ports) and a model saved by
scikit-learn 1.7.2 in an environment of its own (`env_manager: uv`), served by a process of
its own on a private Unix socket, which the front forwards to.

Both models answer over gRPC (unary and one stream alternating them) and HTTP exactly as in
their own environments; the routed model's metadata comes from its process; killing that
process makes the server not ready within about two seconds, and ready again once the
supervisor has restarted it (its calls meanwhile refused UNAVAILABLE); and no process
outlives the server.

One environment cache serves the module: the first server builds the environment, the
second finds it."""

import contextlib
import json
import os
import pathlib
import signal
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import pandas as pd
import pytest
import tritonclient.grpc as grpcclient
import yaml
from mlflow.pyfunc import PyFuncModel
from support import server as server_support
from support import v2
from support.foreign_model import ForeignModel
from support.model_builders import WINE_MODEL_NAME
from support.processes import Seen, children, wait_gone
from support.server import ServerHandle, running_server
from tritonclient.utils import InferenceServerException

FOREIGN = "foreign"
#: A first start builds the foreign model's environment: minutes, not seconds.
BUILD_TIMEOUT_S = 600.0
pytestmark = [pytest.mark.slow, pytest.mark.timeout(1500)]
CALL_TIMEOUT_S = 60.0
#: How soon the server must say it is not ready once the routed model's process is gone.
NOT_READY_WITHIN_S = 2.0
#: How long the supervisor may take to restart that process and the model to load again.
BACK_WITHIN_S = 120.0
POLL_S = 0.05


@pytest.fixture(scope="module")
def env_cache(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    return tmp_path_factory.mktemp("env-cache")


@pytest.fixture(scope="module")
def config_file(
    tmp_path_factory: pytest.TempPathFactory,
    wine_model_dir: pathlib.Path,
    foreign_model: ForeignModel,
) -> pathlib.Path:
    path = tmp_path_factory.mktemp("groups") / "models.yaml"
    models = [
        {"uri": str(wine_model_dir), "name": WINE_MODEL_NAME, "env_manager": "local"},
        {"uri": str(foreign_model.model_dir), "name": FOREIGN, "env_manager": "uv"},
    ]
    path.write_text(yaml.safe_dump({"models": models}))
    return path


@contextlib.contextmanager
def grouped_server(
    config_file: pathlib.Path, env_cache: pathlib.Path, log_dir: pathlib.Path
) -> Iterator[ServerHandle]:
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(server_support, "STARTUP_TIMEOUT_S", BUILD_TIMEOUT_S)
        args = ("--config", str(config_file), "--env-cache", str(env_cache))
        with running_server(None, *args, log_dir=log_dir) as server:
            yield server


@pytest.fixture(scope="module")
def server(
    config_file: pathlib.Path, env_cache: pathlib.Path, server_logs: pathlib.Path
) -> Iterator[ServerHandle]:
    with grouped_server(config_file, env_cache, server_logs) as server:
        yield server


@pytest.fixture(scope="module")
def rows(foreign_model: ForeignModel) -> pd.DataFrame:
    return foreign_model.rows


@pytest.fixture(scope="module")
def answers(
    wine_pyfunc: PyFuncModel, foreign_model: ForeignModel, rows: pd.DataFrame
) -> dict[str, np.ndarray]:
    """Each model's answers for `rows` in its own environment."""
    wine = np.asarray(wine_pyfunc.predict(rows), dtype=np.float64)
    return {WINE_MODEL_NAME: wine, FOREIGN: foreign_model.expected}


def assert_answer(name: str, answer: np.ndarray | None, expected: np.ndarray) -> None:
    assert answer is not None, f"{name}: no output-0"
    np.testing.assert_allclose(answer.reshape(-1), expected, rtol=1e-12, atol=0, err_msg=name)


def http_call(
    server: ServerHandle, method: str, path: str, body: Any = None
) -> tuple[int, dict[str, Any]]:
    connection = server.http_connection(timeout=CALL_TIMEOUT_S)
    try:
        payload = None if body is None else json.dumps(body).encode()
        headers = {} if body is None else {"Content-Type": "application/json"}
        connection.request(method, path, body=payload, headers=headers)
        response = connection.getresponse()
        return response.status, json.loads(response.read() or b"{}")
    finally:
        connection.close()


def v2_body(rows: pd.DataFrame) -> dict[str, Any]:
    inputs = [
        {"name": str(c), "shape": [len(rows), 1], "datatype": "FP64", "data": rows[c].tolist()}
        for c in rows.columns
    ]
    return {"inputs": inputs}


def test_grpc_infer_reaches_each_model_in_its_own_environment(
    server: ServerHandle, rows: pd.DataFrame, answers: dict[str, np.ndarray]
) -> None:
    with server.grpc_client() as client:
        assert client.is_server_ready()
        for name, expected in answers.items():
            result = client.infer(name, v2.column_inputs(rows, "FP64"), request_id=name)
            assert result.get_response().model_name == name
            assert result.get_response().id == name
            assert_answer(name, result.as_numpy("output-0"), expected)
            assert client.is_model_ready(name)


def test_http_reaches_each_model_in_its_own_environment(
    server: ServerHandle, rows: pd.DataFrame, answers: dict[str, np.ndarray]
) -> None:
    for name, expected in answers.items():
        status, answer = http_call(server, "POST", f"/v2/models/{name}/infer", v2_body(rows))
        assert status == 200, answer
        assert answer["model_name"] == name
        assert_answer(name, np.asarray(answer["outputs"][0]["data"]), expected)
        split = {"dataframe_split": rows.to_dict(orient="split", index=False)}
        status, answer = http_call(server, "POST", f"/models/{name}/invocations", split)
        assert status == 200, answer
        assert_answer(name, np.asarray(answer["predictions"]), expected)
        assert http_call(server, "GET", f"/v2/models/{name}/ready") == (
            200,
            {"name": name, "ready": True},
        )
    assert http_call(server, "GET", "/v2/health/ready") == (200, {"ready": True})
    status, answer = http_call(server, "POST", "/v2/models/nobody/infer", v2_body(rows))
    assert status == 404 and "nobody" in answer["error"], answer


def test_one_stream_alternating_both_models_answers_in_order(
    server: ServerHandle, rows: pd.DataFrame, answers: dict[str, np.ndarray]
) -> None:
    names = [WINE_MODEL_NAME, FOREIGN] * 5
    results: list[Any] = []
    with server.grpc_client() as client:
        client.start_stream(callback=lambda result, error: results.append(error or result))
        for index, name in enumerate(names):
            part = rows.iloc[index * 5 : (index + 1) * 5]
            client.async_stream_infer(name, v2.column_inputs(part, "FP64"), request_id=str(index))
        client.stop_stream()
    assert len(results) == len(names)
    for index, (name, result) in enumerate(zip(names, results, strict=True)):
        assert not isinstance(result, InferenceServerException), result
        response = result.get_response()
        assert (response.id, response.model_name) == (str(index), name)
        assert_answer(name, result.as_numpy("output-0"), answers[name][index * 5 : index * 5 + 5])


def test_the_routed_models_metadata_and_config_come_from_its_process(
    server: ServerHandle, rows: pd.DataFrame
) -> None:
    with server.grpc_client() as client:
        metadata = client.get_model_metadata(FOREIGN, as_json=True)
        config = client.get_model_config(FOREIGN, as_json=True)["config"]
    assert metadata["name"] == FOREIGN
    assert metadata["platform"] == "mlflow"
    assert [tensor["name"] for tensor in metadata["inputs"]] == list(rows.columns)
    assert {tensor["datatype"] for tensor in metadata["inputs"]} == {"FP64"}
    assert config["name"] == FOREIGN
    status, rest = http_call(server, "GET", f"/v2/models/{FOREIGN}")
    assert status == 200 and rest["name"] == FOREIGN, rest
    assert [tensor["name"] for tensor in rest["inputs"]] == list(rows.columns)


def server_ready(client: grpcclient.InferenceServerClient) -> bool:
    with contextlib.suppress(InferenceServerException):
        return bool(client.is_server_ready())
    return False


def wait_ready(client: grpcclient.InferenceServerClient, ready: bool, within: float) -> float:
    """Seconds until ServerReady says `ready`; fails after `within`."""
    started = time.monotonic()
    while server_ready(client) != ready:
        assert time.monotonic() - started < within, f"ServerReady not {ready} after {within} s"
        time.sleep(POLL_S)
    return time.monotonic() - started


def worker_processes(server: ServerHandle, env_cache: pathlib.Path) -> tuple[Seen, Seen]:
    """The front's worker and the routed model's process (under the cache's interpreter)."""
    seen = [Seen.of(pid) for pid in children(server.process.pid)]
    workers = [process for process in seen if "arrowsmith.workers" in process.command]
    in_cache = [
        p for p in workers if pathlib.Path(p.command[0]).is_relative_to(env_cache.resolve())
    ]
    others = [process for process in workers if process not in in_cache]
    assert len(in_cache) == 1 and len(others) == 1, [p.command for p in seen]
    return others[0], in_cache[0]


def runtime_folder(process: Seen) -> pathlib.Path:
    """The private folder of the routed model's sockets, from that process's configuration."""
    environ = pathlib.Path(f"/proc/{process.pid}/environ").read_bytes().split(b"\0")
    variables = dict(entry.decode().partition("=")[::2] for entry in environ if entry)
    config = json.loads(variables["ARROWSMITH_WORKER_CONFIG"])
    return pathlib.Path(config["grpc_uds"]).parent


def test_a_routed_process_that_dies_is_not_ready_at_once_and_back_after_its_restart(
    config_file: pathlib.Path,
    env_cache: pathlib.Path,
    server_logs: pathlib.Path,
    rows: pd.DataFrame,
    answers: dict[str, np.ndarray],
) -> None:
    with grouped_server(config_file, env_cache, server_logs) as server:
        front, routed = worker_processes(server, env_cache)
        assert pathlib.Path(front.command[0]).name.startswith("python"), front.command
        runtime = runtime_folder(routed)
        assert sorted(path.name for path in runtime.iterdir()) == ["1.grpc", "1.http"]
        assert runtime.stat().st_mode & 0o077 == 0, oct(runtime.stat().st_mode)
        with server.grpc_client() as client:
            assert server_ready(client)
            os.kill(routed.pid, signal.SIGKILL)
            went = wait_ready(client, False, NOT_READY_WITHIN_S)
            print(f"not ready {went:.2f} s after the kill")
            status, _ = http_call(server, "GET", "/v2/health/ready")
            assert status == 503
            # Until it is back, its calls are refused UNAVAILABLE (503), not lost...
            with pytest.raises(InferenceServerException) as raised:
                client.infer(FOREIGN, v2.column_inputs(rows, "FP64"))
            assert raised.value.status() == "StatusCode.UNAVAILABLE", raised.value
            status, _ = http_call(server, "POST", f"/v2/models/{FOREIGN}/infer", v2_body(rows))
            assert status == 503
            # ...and the model served here still answers.
            result = client.infer(WINE_MODEL_NAME, v2.column_inputs(rows, "FP64"))
            assert_answer(WINE_MODEL_NAME, result.as_numpy("output-0"), answers[WINE_MODEL_NAME])
            came_back = wait_ready(client, True, BACK_WITHIN_S)
            print(f"ready again {came_back:.2f} s later")
            result = client.infer(FOREIGN, v2.column_inputs(rows, "FP64"))
            assert_answer(FOREIGN, result.as_numpy("output-0"), answers[FOREIGN])
        assert http_call(server, "GET", "/v2/health/ready") == (200, {"ready": True})
        front_after, restarted = worker_processes(server, env_cache)
        assert front_after == front and restarted.pid != routed.pid
        assert "starting it again" in server.log_text()
    for process in (front, restarted):
        assert wait_gone(process), f"{process.command} outlived its server"
    assert not runtime.exists()
