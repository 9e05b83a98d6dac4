"""No request can break the server: model code that exits or is interrupted, a runner thread
that ends, a call that never returns, clients that give up, and SIGTERM.

The model is `UnrulyEchoModel`: it echoes row ids, and payloads steer it (exit, interrupt,
sleep s seconds). A runner thread that ends is a fault no request can cause, so tests inject
it from outside with `support/faults/sitecustomize.py` on the server's PYTHONPATH. Tests
whose server is meant to exit start it here, not through `start_server`, and check how it
ended.
"""

import contextlib
import http.client
import json
import os
import pathlib
import signal
import socket
import subprocess
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families
from support import v2
from support.batching_models import (
    EXIT_PAYLOAD,
    INTERRUPT_PAYLOAD,
    PAYLOAD,
    ROW_ID,
    SLEEP_BASE,
)
from support.model_builders import save_batching_model
from support.server import (
    FAST_RECONNECT_ARGS,
    ServerHandle,
    StartServer,
    free_port,
    running_server,
    server_command,
)
from tritonclient.grpc import service_pb2 as pb

MODEL = "unruly"
FAULTS_DIR = pathlib.Path(__file__).resolve().parents[1] / "support" / "faults"
EXIT_MODEL_FAILED = 70
START_TIMEOUT_S = 90.0
CALL_TIMEOUT_S = 30.0
POLL_S = 0.05
# How long the calls the tests provoke take: short, so the suite stays fast.
BUSY_S = 1.0
SETTLE_S = 0.3
FRESH_CONNECTION = [("grpc.use_local_subchannel_pool", 1)]
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def sleep_payload(seconds: float) -> float:
    return SLEEP_BASE + seconds


def echo_request(row_id: int, payload: float = 0.5) -> pb.ModelInferRequest:
    """One row for the unruly model."""
    request = pb.ModelInferRequest(model_name=MODEL, id=f"row-{row_id}")
    v2.add_input(request, ROW_ID, np.array([[row_id]], dtype=np.int64), "INT64", typed=False)
    v2.add_input(request, PAYLOAD, np.array([[payload]]), "FP64", typed=False)
    return request


def v2_body(row_id: int, payload: float = 0.5) -> bytes:
    inputs = [
        {"name": ROW_ID, "shape": [1, 1], "datatype": "INT64", "data": [row_id]},
        {"name": PAYLOAD, "shape": [1, 1], "datatype": "FP64", "data": [payload]},
    ]
    return json.dumps({"inputs": inputs}).encode()


def csv_body(row_id: int, payload: float = 0.5) -> bytes:
    """/invocations in CSV: answered on the handler threads, through MLflow's parser."""
    return f"{ROW_ID},{PAYLOAD}\n{row_id},{payload}\n".encode()


def post(
    server: ServerHandle, path: str, body: bytes, content_type: str = "application/json"
) -> tuple[int, dict[str, object]]:
    """(status, JSON document) of an HTTP POST."""
    connection = http.client.HTTPConnection("127.0.0.1", server.http_port, timeout=CALL_TIMEOUT_S)
    try:
        connection.request("POST", path, body, {"Content-Type": content_type})
        answer = connection.getresponse()
        return answer.status, json.loads(answer.read())
    finally:
        connection.close()


def get(server: ServerHandle, path: str) -> tuple[int, bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", server.http_port, timeout=CALL_TIMEOUT_S)
    try:
        connection.request("GET", path)
        answer = connection.getresponse()
        return answer.status, answer.read()
    finally:
        connection.close()


def infer(channel: grpc.Channel, request: pb.ModelInferRequest) -> pb.ModelInferResponse:
    response: pb.ModelInferResponse = v2.model_infer(channel)(request, timeout=CALL_TIMEOUT_S)
    return response


def infer_later(channel: grpc.Channel, request: pb.ModelInferRequest) -> grpc.Future:
    return v2.model_infer(channel).future(request, timeout=CALL_TIMEOUT_S)


def refusal(future: grpc.Future) -> grpc.RpcError:
    """The error a call ended with; fails the test if it was answered."""
    error = future.exception()
    assert error is not None, "the call was answered, not refused"
    assert isinstance(error, grpc.RpcError)
    return error


def assert_served(server: ServerHandle, row_id: int = 42) -> None:
    """The check after each case: a good request is answered, over gRPC and HTTP."""
    with grpc.insecure_channel(server.url) as channel:
        response = infer(channel, echo_request(row_id))
    np.testing.assert_array_equal(v2.output_array(response, ROW_ID).ravel(), [row_id])
    status, document = post(server, f"/v2/models/{MODEL}/infer", v2_body(row_id))
    assert status == 200, document


def model_ready(server: ServerHandle) -> bool:
    with grpc.insecure_channel(server.url) as channel:
        ready = channel.unary_unary(
            "/inference.GRPCInferenceService/ModelReady",
            request_serializer=pb.ModelReadyRequest.SerializeToString,
            response_deserializer=pb.ModelReadyResponse.FromString,
        )
        answer: pb.ModelReadyResponse = ready(pb.ModelReadyRequest(name=MODEL), timeout=10)
        return answer.ready


def health(server: ServerHandle, service: str = "") -> int:
    with grpc.insecure_channel(server.url) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        answer = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=10)
        return int(answer.status)


def assert_not_ready(server: ServerHandle) -> None:
    """Every way of asking says not ready, and a new request is refused UNAVAILABLE."""
    assert not model_ready(server)
    assert health(server) == NOT_SERVING
    assert health(server, "inference.GRPCInferenceService") == NOT_SERVING
    # Liveness probes keep passing: a restart would not mend what readiness reports.
    assert health(server, "liveness") == health_pb2.HealthCheckResponse.SERVING
    status, body = get(server, "/v2/health/ready")
    assert (status, json.loads(body)) == (503, {"ready": False})
    status, body = get(server, f"/v2/models/{MODEL}/ready")
    assert status == 503, body
    with grpc.insecure_channel(server.url) as channel, pytest.raises(grpc.RpcError) as raised:
        infer(channel, echo_request(7))
    assert raised.value.code() == grpc.StatusCode.UNAVAILABLE, raised.value.details()
    status, document = post(server, f"/v2/models/{MODEL}/infer", v2_body(7))
    assert status == 503, document


def assert_ready(server: ServerHandle) -> None:
    assert model_ready(server)
    assert health(server) == SERVING
    assert get(server, "/v2/health/ready")[0] == 200


def wait_for(
    condition: Callable[[], bool], what: str, server: ServerHandle, timeout: float = 10.0
) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"no {what} after {timeout} s; log:\n{server.log_tail()}")
        time.sleep(POLL_S)


class HealthWatch:
    """A Health/Watch stream of `service` ("": the server) read on a thread of its own: the
    statuses it delivered."""

    def __init__(self, server: ServerHandle, service: str = "") -> None:
        self._channel = grpc.insecure_channel(server.url)
        stub = health_pb2_grpc.HealthStub(self._channel)
        self._stream = stub.Watch(health_pb2.HealthCheckRequest(service=service))
        self.seen: list[int] = []
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        with contextlib.suppress(grpc.RpcError):
            for answer in self._stream:
                self.seen.append(int(answer.status))

    def close(self) -> None:
        """Ends the stream (an open Watch holds a draining server for its whole budget)."""
        self._stream.cancel()
        self._thread.join(10)
        self._channel.close()


def batch_requests_run(server: ServerHandle) -> float:
    """Requests the model's calls have taken, from the HTTP port's /metrics."""
    url = f"{server.http_url}/metrics"
    with urllib.request.urlopen(url, timeout=10) as answer:
        text = answer.read().decode()
    total = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "arrowsmith_batch_requests_sum" and sample.labels["model"] == MODEL:
                total += sample.value
    return total


@contextlib.contextmanager
def launch(
    model_dir: pathlib.Path, log_dir: pathlib.Path, *args: str, env: dict[str, str] | None = None
) -> Iterator[ServerHandle]:
    """A server that may exit on its own: yielded once ready, killed afterwards if alive."""
    port, http_port = free_port(), free_port()
    log_path = log_dir / f"arrowsmith-resilience-{port}.log"
    environment = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            server_command(model_dir, port, "--name", MODEL, *args, http_port=http_port),
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=environment,
        )
    server = ServerHandle(port=port, process=process, log_path=log_path, http_port=http_port)
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        with grpc.insecure_channel(server.url, options=FAST_RECONNECT_ARGS) as channel:
            ready = channel.unary_unary(
                "/inference.GRPCInferenceService/ServerReady",
                request_serializer=pb.ServerReadyRequest.SerializeToString,
                response_deserializer=pb.ServerReadyResponse.FromString,
            )
            while True:
                if process.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"the server did not become ready:\n{server.log_tail()}")
                with contextlib.suppress(grpc.RpcError):
                    if ready(pb.ServerReadyRequest(), timeout=5).ready:
                        break
                time.sleep(0.1)
        yield server
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def fault_env(tmp_path: pathlib.Path, **extra: str) -> tuple[pathlib.Path, dict[str, str]]:
    """The environment that loads the fault injector, and the file that triggers it."""
    trigger = tmp_path / "runner-fault"
    python_path = os.pathsep.join(filter(None, [str(FAULTS_DIR), os.environ.get("PYTHONPATH")]))
    env = {"PYTHONPATH": python_path, "ARROWSMITH_TEST_RUNNER_FAULT": str(trigger), **extra}
    return trigger, env


@pytest.fixture(scope="module")
def unruly_model_dir(models_dir: pathlib.Path) -> pathlib.Path:
    return save_batching_model(models_dir / "unruly", "UnrulyEchoModel")


@pytest.fixture(scope="module")
def unruly_server(
    unruly_model_dir: pathlib.Path, server_logs: pathlib.Path
) -> Iterator[ServerHandle]:
    with running_server(unruly_model_dir, name=MODEL, log_dir=server_logs) as server:
        yield server


@pytest.mark.parametrize(
    ("payload", "exception"),
    [(EXIT_PAYLOAD, "SystemExit"), (INTERRUPT_PAYLOAD, "KeyboardInterrupt")],
)
def test_model_code_that_exits_fails_only_its_own_requests(
    unruly_server: ServerHandle, payload: float, exception: str
) -> None:
    """`sys.exit()` or a KeyboardInterrupt in model code, in a batch of several requests:
    after the one-by-one retry only the guilty request fails, INTERNAL with the model's
    words, and the server goes on."""
    server = unruly_server
    with grpc.insecure_channel(server.url) as channel:
        busy = infer_later(channel, echo_request(1, sleep_payload(BUSY_S)))
        time.sleep(SETTLE_S)
        good = [infer_later(channel, echo_request(row_id)) for row_id in (10, 11, 12)]
        guilty = infer_later(channel, echo_request(13, payload))
        more = [infer_later(channel, echo_request(row_id)) for row_id in (14, 15)]
        busy.result()
        for row_id, future in zip((10, 11, 12, 14, 15), good + more, strict=True):
            np.testing.assert_array_equal(v2.output_array(future.result(), ROW_ID), [[row_id]])
        error = refusal(guilty)
    assert error.code() == grpc.StatusCode.INTERNAL
    assert exception in error.details() and "row 13" in error.details(), error.details()
    assert "retrying one by one" in server.log_text()

    status, document = post(server, f"/v2/models/{MODEL}/infer", v2_body(16, payload))
    assert status == 500 and exception in str(document["error"]), document
    status, document = post(server, "/invocations", csv_body(17, payload), "text/csv")
    assert (status, document["error_code"]) == (400, "BAD_REQUEST"), document
    assert exception in str(document["message"])
    assert server.process.poll() is None
    assert_served(server)


def test_runner_that_ends_turns_the_model_not_ready_and_the_process_exits(
    unruly_model_dir: pathlib.Path, server_logs: pathlib.Path, tmp_path: pathlib.Path
) -> None:
    """A runner thread ends while a batch is in its hands and requests wait: they are all
    answered UNAVAILABLE, the model is not ready at once (ModelReady, HTTP ready, health),
    and the process exits with 70 to be restarted."""
    trigger, env = fault_env(tmp_path, ARROWSMITH_TEST_DRAIN_DELAY="3")
    with launch(unruly_model_dir, server_logs, env=env) as server:
        watch = HealthWatch(server)
        model_watch = HealthWatch(server, MODEL)
        with grpc.insecure_channel(server.url) as channel:
            busy = infer_later(channel, echo_request(1, sleep_payload(BUSY_S)))
            time.sleep(SETTLE_S)
            waiting = [infer_later(channel, echo_request(row_id)) for row_id in (2, 3)]
            status_after_fault: list[tuple[int, dict[str, object]]] = []
            http_waiting = threading.Thread(
                target=lambda: status_after_fault.append(
                    post(server, f"/v2/models/{MODEL}/infer", v2_body(4))
                )
            )
            http_waiting.start()
            time.sleep(SETTLE_S)
            trigger.touch()
            np.testing.assert_array_equal(v2.output_array(busy.result(), ROW_ID), [[1]])
            for future in waiting:
                error = refusal(future)
                assert error.code() == grpc.StatusCode.UNAVAILABLE, error.details()
                assert "runner" in error.details(), error.details()
            http_waiting.join(CALL_TIMEOUT_S)
        [(status, document)] = status_after_fault
        assert status == 503 and "runner" in str(document["error"]), document
        assert_not_ready(server)
        for watched in (watch, model_watch):
            wait_for(lambda w=watched: NOT_SERVING in w.seen, "NOT_SERVING on Health/Watch", server)
            assert watched.seen[0] == SERVING
            watched.close()
        assert server.process.wait(CALL_TIMEOUT_S) == EXIT_MODEL_FAILED
        log = server.log_text()
        assert "injected fault" in log and "exits with 70" in log, log[-4000:]


def test_a_front_that_stops_serving_turns_the_server_not_ready(
    unruly_model_dir: pathlib.Path, server_logs: pathlib.Path, tmp_path: pathlib.Path
) -> None:
    """The HTTP front's thread ends while the process runs: readiness and health turn false
    at once over gRPC, and the process exits with 70 to be restarted."""
    trigger = tmp_path / "http-fault"
    _, env = fault_env(
        tmp_path, ARROWSMITH_TEST_HTTP_FRONT_FAULT=str(trigger), ARROWSMITH_TEST_DRAIN_DELAY="3"
    )
    with launch(unruly_model_dir, server_logs, env=env) as server:
        assert health(server) == SERVING
        trigger.touch()
        wait_for(lambda: health(server) == NOT_SERVING, "NOT_SERVING after the fault", server)
        assert not model_ready(server)
        assert server.process.wait(CALL_TIMEOUT_S) == EXIT_MODEL_FAILED
        assert "the HTTP front stopped serving" in server.log_text()


def test_worker_whose_runner_ended_is_replaced(
    unruly_model_dir: pathlib.Path, server_logs: pathlib.Path, tmp_path: pathlib.Path
) -> None:
    """With `--workers 2`, the worker whose runner ended exits, the supervisor starts
    another, and every request is answered again."""
    trigger, env = fault_env(tmp_path)
    with launch(unruly_model_dir, server_logs, "--workers", "2", env=env) as server:
        wait_for(lambda: server.log_text().count("ready: serving") >= 2, "two workers", server, 60)
        trigger.touch()
        refused = 0
        for attempt in range(200):
            with grpc.insecure_channel(server.url, options=FRESH_CONNECTION) as channel:
                try:
                    infer(channel, echo_request(attempt))
                except grpc.RpcError as error:
                    assert error.code() == grpc.StatusCode.UNAVAILABLE, error.details()
                    refused += 1
            if not trigger.exists():
                break
        assert not trigger.exists(), "no worker took the fault"
        wait_for(lambda: "exit 70" in server.log_text(), "worker exit", server)
        wait_for(
            lambda: server.log_text().count("ready: serving") >= 3, "replacement worker", server, 60
        )
        for attempt in range(20):
            with grpc.insecure_channel(server.url, options=FRESH_CONNECTION) as channel:
                response = infer(channel, echo_request(1000 + attempt))
            np.testing.assert_array_equal(v2.output_array(response, ROW_ID), [[1000 + attempt]])
        assert server.process.poll() is None
        server.process.send_signal(signal.SIGTERM)
        assert server.process.wait(CALL_TIMEOUT_S) == 0


def test_http_requests_have_a_deadline(
    start_server: StartServer, unruly_model_dir: pathlib.Path
) -> None:
    """`--request-timeout`: a V2 request running too long, and requests waiting behind it
    (V2 and /invocations), are answered 504 in each protocol's words; the waiting ones
    never run."""
    server = start_server(unruly_model_dir, "--request-timeout", "0.5", name=MODEL)
    before = batch_requests_run(server)
    answers: dict[str, tuple[int, dict[str, object]]] = {}

    def send(label: str, path: str, body: bytes, content_type: str = "application/json") -> None:
        answers[label] = post(server, path, body, content_type)

    slow = threading.Thread(
        target=send, args=("running", f"/v2/models/{MODEL}/infer", v2_body(1, sleep_payload(1.5)))
    )
    started = time.monotonic()
    slow.start()
    time.sleep(0.1)
    queued = [
        threading.Thread(target=send, args=("v2", f"/v2/models/{MODEL}/infer", v2_body(2))),
        threading.Thread(target=send, args=("mlflow", "/invocations", csv_body(3), "text/csv")),
    ]
    for thread in queued:
        thread.start()
    for thread in [slow, *queued]:
        thread.join(CALL_TIMEOUT_S)
    assert time.monotonic() - started < 1.4, "the deadline did not cut the wait short"
    for label in ("running", "v2"):
        status, document = answers[label]
        assert status == 504 and "timeout" in str(document["error"]), (label, document)
    status, document = answers["mlflow"]
    assert (status, document["error_code"]) == (504, "DEADLINE_EXCEEDED"), document
    time.sleep(1.5)  # the slow call ends
    assert_served(server, row_id=5)
    # The slow call and the good V2 and gRPC requests ran; the two that timed out waiting did not.
    assert batch_requests_run(server) - before == 3


def test_http_client_that_disconnects_cancels_its_job(
    start_server: StartServer, unruly_model_dir: pathlib.Path
) -> None:
    """A client that closes its connection while its request waits behind a slow call: the
    request leaves the queue and the model never sees it (V2 on the event loop, /invocations
    on the handler threads)."""
    server = start_server(unruly_model_dir, name=MODEL)
    before = batch_requests_run(server)
    with grpc.insecure_channel(server.url) as channel:
        busy = infer_later(channel, echo_request(1, sleep_payload(BUSY_S)))
        time.sleep(SETTLE_S)
        clients = []
        for path, body, content_type in (
            (f"/v2/models/{MODEL}/infer", v2_body(2), "application/json"),
            ("/invocations", csv_body(3), "text/csv"),
        ):
            client = socket.create_connection(("127.0.0.1", server.http_port))
            head = (
                f"POST {path} HTTP/1.1\r\nHost: test\r\nContent-Type: {content_type}\r\n"
                f"Content-Length: {len(body)}\r\n\r\n"
            )
            client.sendall(head.encode() + body)
            clients.append(client)
        time.sleep(SETTLE_S)
        for client in clients:
            client.close()
        busy.result()
    assert_served(server, row_id=4)
    # The busy call and the good gRPC and V2 requests: the two abandoned ones never ran.
    assert batch_requests_run(server) - before == 3


def test_call_past_predict_timeout(
    start_server: StartServer, unruly_model_dir: pathlib.Path
) -> None:
    """`--predict-timeout`: a call running longer has its requests answered
    DEADLINE_EXCEEDED and the model is not ready until the call returns; then ready again."""
    server = start_server(unruly_model_dir, "--predict-timeout", "0.6", name=MODEL)
    with grpc.insecure_channel(server.url) as channel:
        started = time.monotonic()
        long_call = infer_later(channel, echo_request(1, sleep_payload(1.4)))
        error = refusal(long_call)
        assert time.monotonic() - started < 1.2
    assert error.code() == grpc.StatusCode.DEADLINE_EXCEEDED, error.details()
    assert "--predict-timeout" in error.details()
    assert_not_ready(server)
    wait_for(lambda: model_ready(server), "ready model", server)
    assert_ready(server)
    assert_served(server)


def test_call_that_never_returns_ends_the_process(
    unruly_model_dir: pathlib.Path, server_logs: pathlib.Path
) -> None:
    """A call still running at 3x `--predict-timeout` is taken for one that never returns:
    the requests waiting behind it are answered UNAVAILABLE and the process exits with 70."""
    with launch(unruly_model_dir, server_logs, "--predict-timeout", "0.5") as server:
        with grpc.insecure_channel(server.url) as channel:
            stuck = infer_later(channel, echo_request(1, sleep_payload(60)))
            time.sleep(SETTLE_S)
            waiting = infer_later(channel, echo_request(2))
            assert refusal(stuck).code() == grpc.StatusCode.DEADLINE_EXCEEDED
            error = refusal(waiting)
            assert error.code() == grpc.StatusCode.UNAVAILABLE, error.details()
        assert server.process.wait(CALL_TIMEOUT_S) == EXIT_MODEL_FAILED
        assert "has not returned" in server.log_text()


def test_sigterm_turns_not_ready_first_and_drains(
    unruly_model_dir: pathlib.Path, server_logs: pathlib.Path
) -> None:
    """SIGTERM with requests in flight over gRPC and HTTP: health turns NOT_SERVING, every
    request in flight is answered, and the process exits 0."""
    with launch(unruly_model_dir, server_logs, "--drain-timeout", "5") as server:
        watch = HealthWatch(server)
        wait_for(lambda: watch.seen == [SERVING], "SERVING on Health/Watch", server)
        answers: list[tuple[int, dict[str, object]]] = []
        with grpc.insecure_channel(server.url) as channel:
            busy = infer_later(channel, echo_request(1, sleep_payload(BUSY_S)))
            time.sleep(SETTLE_S)
            waiting = infer_later(channel, echo_request(2))
            over_http = threading.Thread(
                target=lambda: answers.append(post(server, f"/v2/models/{MODEL}/infer", v2_body(3)))
            )
            over_http.start()
            time.sleep(SETTLE_S)
            server.process.send_signal(signal.SIGTERM)
            wait_for(lambda: NOT_SERVING in watch.seen, "NOT_SERVING on Health/Watch", server)
            assert not busy.done(), "nothing was in flight at SIGTERM"
            watch.close()
            np.testing.assert_array_equal(v2.output_array(busy.result(), ROW_ID), [[1]])
            np.testing.assert_array_equal(v2.output_array(waiting.result(), ROW_ID), [[2]])
            over_http.join(CALL_TIMEOUT_S)
        assert [status for status, _ in answers] == [200]
        assert server.process.wait(CALL_TIMEOUT_S) == 0
        assert "arrowsmith: stopped" in server.log_text()


def test_drain_ends_within_its_budget(
    unruly_model_dir: pathlib.Path, server_logs: pathlib.Path
) -> None:
    """A call that outlasts `--drain-timeout` does not hold the process past it."""
    with launch(unruly_model_dir, server_logs, "--drain-timeout", "1") as server:
        with grpc.insecure_channel(server.url) as channel:
            in_flight = infer_later(channel, echo_request(1, sleep_payload(20)))
            time.sleep(SETTLE_S)
            assert not in_flight.done()
            stopped = time.monotonic()
            server.process.send_signal(signal.SIGTERM)
            assert server.process.wait(CALL_TIMEOUT_S) == 0
            assert time.monotonic() - stopped < 3.0
        assert "still busy after --drain-timeout" in server.log_text()
