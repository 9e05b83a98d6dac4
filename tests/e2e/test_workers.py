"""`--workers 2`: two server processes behind one port, under a supervisor.

Connections are spread by the kernel (SO_REUSEPORT), so a test reaches both workers only by
opening fresh connections; the supervisor's combined metrics (label `worker`) say which
worker answered. The supervisor is started here rather than through `start_server`, because
these tests stop it themselves and check how it ended.
"""

import contextlib
import dataclasses
import os
import pathlib
import signal
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator

import grpc
import numpy as np
import pandas as pd
import pytest
from mlflow.pyfunc import PyFuncModel
from prometheus_client.parser import text_string_to_metric_families
from support import v2
from support.batching_models import HOLD_PAYLOAD, PAYLOAD, ROW_ID
from support.model_builders import WINE_MODEL_NAME, save_batching_model
from support.processes import Seen, wait_gone
from support.server import free_port, server_command
from tritonclient.grpc import service_pb2 as pb

WORKERS = ("0", "1")
ECHO = "echo"
READY_LINE = "ready: serving"
STOPPED_LINE = "arrowsmith: stopped"
WORKER_INDEX_ENV = b"ARROWSMITH_WORKER_INDEX="
START_TIMEOUT_S = 90.0
STOP_TIMEOUT_S = 30.0
POLL_INTERVAL_S = 0.05
# Fresh connections to send before giving up on reaching both workers (each is a coin flip).
MAX_ATTEMPTS = 200
SETTLE_S = 0.3
CALL_TIMEOUT_S = 60.0
# Without it, grpc shares one TCP connection among channels to the same address.
FRESH_CONNECTION = [("grpc.use_local_subchannel_pool", 1)]


@dataclasses.dataclass(frozen=True)
class Supervisor:
    """A `--workers 2` server: the supervisor process, its ports and its log."""

    process: subprocess.Popen[bytes]
    port: int
    metrics_port: int
    log_path: pathlib.Path

    @property
    def url(self) -> str:
        return f"127.0.0.1:{self.port}"

    def log_text(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def fail_if_exited(self) -> None:
        """Stop the test with the log as soon as the supervisor is gone."""
        code = self.process.poll()
        if code is not None:
            pytest.fail(f"the supervisor exited with code {code}; log:\n{self.log_text()[-6000:]}")

    def wait_until(self, condition: Callable[[], bool], what: str) -> None:
        """Poll `condition` while the supervisor runs; fail naming `what` if it never holds."""
        deadline = time.monotonic() + START_TIMEOUT_S
        while not condition():
            self.fail_if_exited()
            if time.monotonic() > deadline:
                pytest.fail(f"no {what} after {START_TIMEOUT_S} s; log:\n{self.log_text()[-6000:]}")
            time.sleep(POLL_INTERVAL_S)

    def ready_count(self) -> int:
        """Workers that have finished loading since the start, replacements included."""
        return self.log_text().count(READY_LINE)

    def metrics_text(self) -> str:
        """The supervisor's /metrics: every worker's samples."""
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=10) as answer:
            text: str = answer.read().decode()
            return text

    def per_worker(self, name: str, model: str, **labels: str) -> dict[str, float]:
        """Sample `name` of `model` (matching `labels`) summed per worker, from the
        supervisor's combined metrics."""
        text = self.metrics_text()
        wanted = {"model": model, **labels}.items()
        counts = dict.fromkeys(WORKERS, 0.0)
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == name and wanted <= sample.labels.items():
                    worker = sample.labels["worker"]
                    counts[worker] = counts.get(worker, 0.0) + sample.value
        return counts

    def answered(self, model: str) -> dict[str, float]:
        """Requests each worker answered OK."""
        return self.per_worker("arrowsmith_requests_total", model, status="OK")

    def batches_started(self, model: str) -> dict[str, float]:
        """Model calls each worker began."""
        return self.per_worker("arrowsmith_batch_requests_count", model)

    def workers(self) -> dict[str, int]:
        """The live worker processes, by worker index: children of the supervisor."""
        found = {}
        for stat in pathlib.Path("/proc").glob("[0-9]*/stat"):
            with contextlib.suppress(OSError):
                # "pid (command) state ppid ...": the command may hold spaces, so split after it.
                fields = stat.read_text().rsplit(")", 1)[1].split()
                if fields[0] != "Z" and int(fields[1]) == self.process.pid:
                    environ = (stat.parent / "environ").read_bytes().split(b"\0")
                    for entry in environ:
                        if entry.startswith(WORKER_INDEX_ENV):
                            found[entry[len(WORKER_INDEX_ENV) :].decode()] = int(stat.parent.name)
        return found


def _stop(server: Supervisor) -> None:
    """SIGTERM, which stops the workers too; if the supervisor hangs, kill its workers while
    they are still its children (never a pid that may have been reused), then it."""
    if server.process.poll() is not None:
        return
    server.process.send_signal(signal.SIGTERM)
    try:
        server.process.wait(STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        for pid in server.workers().values():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        server.process.kill()
        server.process.wait()


@contextlib.contextmanager
def supervisor(model_dir: pathlib.Path, name: str, log_dir: pathlib.Path) -> Iterator[Supervisor]:
    """Start `--workers 2` and yield it once both workers are ready; whatever the test did
    to it, no process of it survives the test."""
    port, metrics_port = free_port(), free_port()
    args = ["--workers", str(len(WORKERS)), "--metrics-port", str(metrics_port), "--name", name]
    log_path = log_dir / f"arrowsmith-workers-{name}-{port}.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            server_command(model_dir, port, *args),
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
    server = Supervisor(process, port, metrics_port, log_path)
    try:
        server.wait_until(lambda: server.ready_count() >= len(WORKERS), "two ready workers")
        server.wait_until(lambda: metrics_served(server), "metrics endpoint")
        yield server
    finally:
        _stop(server)


def metrics_served(server: Supervisor) -> bool:
    """Whether the supervisor's metrics endpoint answers yet."""
    try:
        server.metrics_text()
    except (urllib.error.URLError, ConnectionError):
        return False
    return True


def assert_answers_fresh(server: Supervisor, rows: pd.DataFrame, expected: np.ndarray) -> None:
    """One wine request over a connection of its own (so the kernel picks a worker anew),
    answered right; a refusal fails the test with the server's log."""
    request = v2.columns_request(WINE_MODEL_NAME, rows, "FP64", typed=False)
    with grpc.insecure_channel(server.url, options=FRESH_CONNECTION) as channel:
        try:
            response = v2.model_infer(channel)(request, timeout=CALL_TIMEOUT_S)
        except grpc.RpcError as error:
            pytest.fail(
                f"refused: {error.code()}: {error.details()}; log:\n{server.log_text()[-6000:]}"
            )
    np.testing.assert_allclose(v2.output_array(response, "output-0"), expected, rtol=1e-9)


def reach_both_workers(
    server: Supervisor, rows: pd.DataFrame, expected: np.ndarray, since: dict[str, float]
) -> None:
    """Send requests over fresh connections until both workers answered some after `since`
    (counts by worker)."""
    for _ in range(MAX_ATTEMPTS):
        assert_answers_fresh(server, rows, expected)
        counts = server.answered(WINE_MODEL_NAME)
        if all(counts[worker] > since.get(worker, 0.0) for worker in WORKERS):
            return
    pytest.fail(f"{MAX_ATTEMPTS} fresh connections did not reach both workers: {counts}")


@pytest.fixture(scope="module")
def echo_model_dir(models_dir: pathlib.Path) -> pathlib.Path:
    return save_batching_model(models_dir / "echo_for_workers", "EchoRowIdModel")


def test_fresh_connections_reach_both_workers(
    wine_model_dir: pathlib.Path,
    wine_frame: pd.DataFrame,
    wine_pyfunc: PyFuncModel,
    server_logs: pathlib.Path,
) -> None:
    """Two worker processes, each answering right, and the supervisor's metrics tell them
    apart."""
    rows = wine_frame.iloc[:3]
    expected = np.asarray(wine_pyfunc.predict(rows))
    with supervisor(wine_model_dir, WINE_MODEL_NAME, server_logs) as server:
        assert sorted(server.workers()) == list(WORKERS)
        reach_both_workers(server, rows, expected, since={})


def test_killed_worker_is_replaced_while_the_server_keeps_answering(
    wine_model_dir: pathlib.Path,
    wine_frame: pd.DataFrame,
    wine_pyfunc: PyFuncModel,
    server_logs: pathlib.Path,
) -> None:
    """After `kill -9` of a ready worker, the supervisor starts a replacement, which then
    answers too; meanwhile every new connection is still answered (by the other worker)."""
    rows = wine_frame.iloc[:3]
    expected = np.asarray(wine_pyfunc.predict(rows))
    with supervisor(wine_model_dir, WINE_MODEL_NAME, server_logs) as server:
        workers = server.workers()
        before = server.answered(WINE_MODEL_NAME)
        os.kill(workers["1"], signal.SIGKILL)
        # Connections the kernel handed the dying process may fail; wait until the supervisor
        # has reaped it (a zombie leader may still have threads holding the socket).
        killed = pathlib.Path(f"/proc/{workers['1']}")
        server.wait_until(lambda: not killed.exists(), "end of worker 1")

        def replaced() -> bool:
            assert_answers_fresh(server, rows, expected)
            replacement = server.workers().get("1", workers["1"])
            return replacement != workers["1"] and server.ready_count() > len(WORKERS)

        server.wait_until(replaced, "ready replacement of worker 1")
        assert server.workers()["0"] == workers["0"]
        reach_both_workers(server, rows, expected, since=before)
        server.fail_if_exited()


def test_sighup_reaches_the_workers_and_ends_nothing(
    wine_model_dir: pathlib.Path,
    wine_frame: pd.DataFrame,
    wine_pyfunc: PyFuncModel,
    server_logs: pathlib.Path,
) -> None:
    """SIGHUP (reload the TLS files) to the supervisor is passed to every worker: no process
    ends, each worker says it handled it, and the server keeps answering."""
    rows = wine_frame.iloc[:3]
    expected = np.asarray(wine_pyfunc.predict(rows))
    with supervisor(wine_model_dir, WINE_MODEL_NAME, server_logs) as server:
        workers = server.workers()
        server.process.send_signal(signal.SIGHUP)
        server.wait_until(
            lambda: server.log_text().count("SIGHUP: no TLS files to reload") == len(WORKERS),
            "every worker's SIGHUP",
        )
        server.fail_if_exited()
        assert server.workers() == workers
        assert_answers_fresh(server, rows, expected)


def test_sigterm_drains_in_flight_requests(
    echo_model_dir: pathlib.Path, server_logs: pathlib.Path
) -> None:
    """SIGTERM to the supervisor while both workers hold requests: every one of them is
    answered, then both workers and the supervisor exit cleanly."""
    with supervisor(echo_model_dir, ECHO, server_logs) as server, contextlib.ExitStack() as stack:
        workers = server.workers()
        futures = []
        for attempt in range(MAX_ATTEMPTS):
            ids = np.array([[2 * attempt], [2 * attempt + 1]], dtype=np.int64)
            request = pb.ModelInferRequest(model_name=ECHO, id=f"held-{attempt}")
            v2.add_input(request, ROW_ID, ids, "INT64", typed=False)
            v2.add_input(request, PAYLOAD, np.array([[HOLD_PAYLOAD], [0.0]]), "FP64", typed=False)
            channel = stack.enter_context(grpc.insecure_channel(server.url, FRESH_CONNECTION))
            futures.append((ids, v2.model_infer(channel).future(request, timeout=CALL_TIMEOUT_S)))
            time.sleep(POLL_INTERVAL_S)
            if all(batches > 0 for batches in server.batches_started(ECHO).values()):
                break
        else:
            pytest.fail(f"{MAX_ATTEMPTS} fresh connections did not keep both workers busy")
        time.sleep(SETTLE_S)
        assert not all(future.done() for _, future in futures), "nothing was in flight"

        server.process.send_signal(signal.SIGTERM)
        for ids, future in futures:
            response = future.result()
            np.testing.assert_array_equal(v2.output_array(response, ROW_ID), ids)
        assert server.process.wait(STOP_TIMEOUT_S) == 0
        for pid in workers.values():
            assert not pathlib.Path(f"/proc/{pid}").exists(), f"worker {pid} outlived the stop"
        log = server.log_text()
        assert log.count(STOPPED_LINE) == len(WORKERS), log[-6000:]
        assert "did not stop in time" not in log


def test_workers_end_when_the_supervisor_is_killed_outright(
    wine_model_dir: pathlib.Path, server_logs: pathlib.Path
) -> None:
    """`kill -9` of the supervisor (as the OOM killer would) leaves no worker behind holding
    the port: each drains and exits, and the port is free again."""
    with supervisor(wine_model_dir, WINE_MODEL_NAME, server_logs) as server:
        workers = [Seen.of(pid) for pid in server.workers().values()]
        server.process.kill()
        server.process.wait(STOP_TIMEOUT_S)
        outlived = [worker.pid for worker in workers if not wait_gone(worker, STOP_TIMEOUT_S)]
        assert not outlived, f"workers {outlived} outlived their supervisor"
        assert server.log_text().count(STOPPED_LINE) == len(WORKERS), server.log_text()[-6000:]
