"""Run the real `mlflow models serve` as a reference server for the differential tests.

It runs in this venv (`--env-manager local`, the venv's bin on PATH, where MLflow finds
uvicorn) on a free port, in its own process group: MLflow starts uvicorn as a child, and
stopping the group stops both.
"""

import contextlib
import os
import pathlib
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest
import requests

from support.server import free_port, stop_process_group

STARTUP_TIMEOUT_S = 120.0
POLL_INTERVAL_S = 0.2


def _wait_for_ping(url: str, process: subprocess.Popen[bytes], log_path: pathlib.Path) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"mlflow models serve exited:\n{log_path.read_text()[-4000:]}")
        with contextlib.suppress(requests.ConnectionError):
            if requests.get(f"{url}/ping", timeout=5).status_code == 200:
                return
        time.sleep(POLL_INTERVAL_S)
    pytest.fail(f"mlflow models serve not up after {STARTUP_TIMEOUT_S} s")


@contextlib.contextmanager
def running_mlflow_server(model_dir: pathlib.Path, log_dir: pathlib.Path) -> Iterator[str]:
    """`mlflow models serve` for `model_dir`; yields its base URL once /ping answers."""
    port = free_port()
    bin_dir = str(pathlib.Path(sys.executable).parent)
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"}
    command = [os.path.join(bin_dir, "mlflow"), "models", "serve", "-m", str(model_dir)]
    command += ["--env-manager", "local", "-h", "127.0.0.1", "-p", str(port)]
    log_path = log_dir / f"mlflow-{model_dir.name}-{port}.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            command,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            start_new_session=True,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_for_ping(url, process, log_path)
        yield url
    finally:
        stop_process_group(process)
