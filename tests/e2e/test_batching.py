"""Adaptive batching that cannot misroute: every answer carries exactly its own rows.

The echo model answers each row's client-chosen id, so a request answered with a neighbour's
rows shows at once. It also reports how many rows its call had, and the server's Prometheus
histograms tell how many requests each call served: together they prove batching really
happened where it should and never past the row limit. To make a batch certain rather than
likely, a test occupies the model with a HOLD row and sends the rest while it is busy.
"""

import dataclasses
import itertools
import pathlib
import time
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor

import grpc
import numpy as np
import pandas as pd
import pytest
from mlflow.pyfunc import PyFuncModel
from prometheus_client.parser import text_string_to_metric_families
from support import v2
from support.batching_models import (
    BATCH_ROWS,
    HOLD_PAYLOAD,
    PAYLOAD,
    POISON_PAYLOAD,
    ROW_ID,
    TWICE,
)
from support.model_builders import WINE_MODEL_NAME, save_batching_model
from support.server import ServerHandle, StartServer, free_port, running_server
from tritonclient.grpc import service_pb2 as pb

ECHO = "echo"
DROP_LAST = "drop_last"
LOAD_REQUESTS = 1000
LOAD_CONCURRENCY = 64
MULTI_ROW_SHARE = 0.15
MAX_REQUEST_ROWS = 5
WINE_REQUESTS = 500
WINE_CONCURRENCY = 32
WINE_MAX_ROWS = 12
WINE_RTOL = 1e-9
# The hold request: a HOLD row, which keeps the model busy, and an ordinary one.
HOLD_IDS = (900_000, 900_001)
# Bounds for waiting on something the server does on its own (never asserted as speed).
WAIT_TIMEOUT_S = 30.0
POLL_INTERVAL_S = 0.02
# A cancelled request must have reached the server's queue first; well under the hold time.
SETTLE_S = 0.3
CALL_TIMEOUT_S = 60.0

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]
Result = pb.ModelInferResponse | grpc.RpcError


@dataclasses.dataclass(frozen=True)
class Served:
    """A running server and the port of its Prometheus metrics."""

    handle: ServerHandle
    metrics_port: int

    @property
    def url(self) -> str:
        return self.handle.url

    def metrics(self) -> Samples:
        """Every sample of /metrics, keyed by name and labels."""
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=10) as answer:
            text = answer.read().decode()
        return {
            (sample.name, frozenset(sample.labels.items())): sample.value
            for family in text_string_to_metric_families(text)
            for sample in family.samples
        }


def since(after: Samples, before: Samples) -> Samples:
    """What happened between two scrapes, so tests can share a server."""
    return {key: value - before.get(key, 0.0) for key, value in after.items()}


def total(samples: Samples, name: str, **labels: str) -> float:
    """The sum of `name` over every label set containing `labels` (e.g. over buckets' le)."""
    wanted = set(labels.items())
    return sum(value for (n, keys), value in samples.items() if n == name and wanted <= keys)


def bucket_at_least(samples: Samples, histogram: str, bound: float, model: str) -> float:
    """Observations in the smallest bucket whose upper bound is `bound` or more."""
    buckets = {
        float(dict(keys)["le"]): value
        for (name, keys), value in samples.items()
        if name == f"{histogram}_bucket" and ("model", model) in keys
    }
    return buckets[min(le for le in buckets if le >= bound)]


def wait_until(condition: Callable[[], bool], what: str) -> None:
    """Poll `condition` until it holds; fail naming `what` if it never does."""
    deadline = time.monotonic() + WAIT_TIMEOUT_S
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"still waiting, after {WAIT_TIMEOUT_S} s, for {what}")
        time.sleep(POLL_INTERVAL_S)


def start_with_metrics(
    start_server: StartServer, model_dir: pathlib.Path, *args: str, name: str
) -> Served:
    """A dedicated server with its metrics on a fresh port."""
    metrics_port = free_port()
    handle = start_server(model_dir, "--metrics-port", str(metrics_port), *args, name=name)
    return Served(handle, metrics_port)


def echo_request(
    ids: Sequence[int], payload: Sequence[float] | None = None, model: str = ECHO
) -> pb.ModelInferRequest:
    """Rows `ids` as [n, 1] INT64 and FP64 columns; the payload defaults to id / 4."""
    id_column = np.asarray(ids, dtype=np.int64).reshape(-1, 1)
    values = id_column / 4 if payload is None else np.asarray(payload, dtype=np.float64)
    request = pb.ModelInferRequest(model_name=model, id=f"ids-{ids[0]}-{len(ids)}")
    v2.add_input(request, ROW_ID, id_column, "INT64", typed=False)
    v2.add_input(request, PAYLOAD, values.reshape(-1, 1), "FP64", typed=False)
    return request


def request_column(request: pb.ModelInferRequest, index: int, dtype: str) -> np.ndarray:
    """Input `index` of a raw request, flat."""
    return np.frombuffer(request.raw_input_contents[index], dtype=np.dtype(dtype).newbyteorder("<"))


def answered(result: Result) -> pb.ModelInferResponse:
    """The response, or a failure showing the status the server gave instead."""
    if isinstance(result, grpc.RpcError):
        pytest.fail(f"request failed: {result.code()}: {result.details()}")
    return result


def assert_own_rows(request: pb.ModelInferRequest, result: Result) -> int:
    """The answer carries exactly the request's ids and payloads, in order, from one model
    call; returns that call's row count."""
    response = answered(result)
    assert response.id == request.id
    ids = request_column(request, 0, "int64")
    np.testing.assert_array_equal(v2.output_array(response, ROW_ID).ravel(), ids)
    twice = v2.output_array(response, TWICE).ravel()
    np.testing.assert_array_equal(twice, request_column(request, 1, "float64") * 2)
    batch_rows = set(v2.output_array(response, BATCH_ROWS).ravel().tolist())
    assert len(batch_rows) == 1, f"{request.id} was answered by several calls: {batch_rows}"
    return int(batch_rows.pop())


def assert_refused(result: Result, code: grpc.StatusCode, *words: str) -> None:
    """The request failed with `code` and a message containing each of `words`."""
    assert isinstance(result, grpc.RpcError), f"expected {code}, got an answer"
    details = result.details() or ""
    assert result.code() == code, details
    for word in words:
        assert word in details, f"{word!r} not in {details!r}"


def send_all(url: str, requests: Sequence[pb.ModelInferRequest], concurrency: int) -> list[Result]:
    """Send every request from `concurrency` threads; answers or errors, in request order."""
    with grpc.insecure_channel(url) as channel:
        infer = v2.model_infer(channel)

        def send(request: pb.ModelInferRequest) -> Result:
            try:
                response: pb.ModelInferResponse = infer(request, timeout=CALL_TIMEOUT_S)
            except grpc.RpcError as error:
                return error
            return response

        with ThreadPoolExecutor(concurrency) as pool:
            return list(pool.map(send, requests))


def occupy(served: Served, channel: grpc.Channel, model: str = ECHO) -> grpc.Future:
    """Start a hold request and return once its model call has begun: the model is busy for
    about a second, and whatever arrives meanwhile queues."""
    batches = total(served.metrics(), "arrowsmith_batch_requests_count", model=model)
    request = echo_request(HOLD_IDS, [HOLD_PAYLOAD, 0.0], model=model)
    future: grpc.Future = v2.model_infer(channel).future(request, timeout=CALL_TIMEOUT_S)
    wait_until(
        lambda: total(served.metrics(), "arrowsmith_batch_requests_count", model=model) > batches,
        "the hold request's model call to start",
    )
    return future


def assert_echo_answers(url: str, row_id: int) -> None:
    """The check after each failure: the server still answers a lone request right."""
    request = echo_request([row_id])
    with grpc.insecure_channel(url) as channel:
        response = v2.model_infer(channel)(request, timeout=CALL_TIMEOUT_S)
    assert assert_own_rows(request, response) == 1


def load_requests(count: int, seed: int) -> list[pb.ModelInferRequest]:
    """Mostly one-row requests, some of 2-5 rows; every id unique and shuffled, so no two
    requests' rows look alike."""
    rng = np.random.default_rng(seed)
    sizes = [
        int(rng.integers(2, MAX_REQUEST_ROWS + 1)) if rng.random() < MULTI_ROW_SHARE else 1
        for _ in range(count)
    ]
    ids = rng.permutation(sum(sizes)).tolist()
    offsets = np.cumsum([0, *sizes])
    return [echo_request(ids[start:end]) for start, end in itertools.pairwise(offsets)]


@pytest.fixture(scope="module")
def echo_model_dir(models_dir: pathlib.Path) -> pathlib.Path:
    return save_batching_model(models_dir / ECHO, "EchoRowIdModel")


@pytest.fixture(scope="module")
def drop_last_model_dir(models_dir: pathlib.Path) -> pathlib.Path:
    return save_batching_model(models_dir / DROP_LAST, "DropLastRowModel")


@pytest.fixture(scope="module")
def echo_server(echo_model_dir: pathlib.Path, server_logs: pathlib.Path) -> Iterator[Served]:
    """One default-settings echo server for the tests that compare metrics before and after."""
    metrics_port = free_port()
    with running_server(
        echo_model_dir, "--metrics-port", str(metrics_port), name=ECHO, log_dir=server_logs
    ) as handle:
        yield Served(handle, metrics_port)


@pytest.mark.parametrize("delay_ms", [0, 5])
@pytest.mark.parametrize("max_batch_size", [1, 7, 64])
def test_every_answer_carries_its_own_rows(
    start_server: StartServer, echo_model_dir: pathlib.Path, max_batch_size: int, delay_ms: int
) -> None:
    """1,000 requests from 64 threads: each answer holds its own ids in order; batches form
    when the limit allows and never pass it, except a lone request bigger than the limit."""
    served = start_with_metrics(
        start_server,
        echo_model_dir,
        "--max-batch-size",
        str(max_batch_size),
        "--max-batch-delay-ms",
        str(delay_ms),
        name=ECHO,
    )
    requests = load_requests(LOAD_REQUESTS, seed=max_batch_size * 10 + delay_ms)
    results = send_all(served.url, requests, LOAD_CONCURRENCY)
    sizes = [len(request_column(request, 0, "int64")) for request in requests]
    for request, result, rows in zip(requests, results, sizes, strict=True):
        batch_rows = assert_own_rows(request, result)
        assert batch_rows >= rows
        assert batch_rows <= max_batch_size or batch_rows == rows, "oversized yet not alone"

    samples = served.metrics()
    assert total(samples, "arrowsmith_requests_total", model=ECHO, status="OK") == LOAD_REQUESTS
    batches = total(samples, "arrowsmith_batch_requests_count", model=ECHO)
    assert total(samples, "arrowsmith_batch_requests_sum", model=ECHO) == LOAD_REQUESTS
    assert total(samples, "arrowsmith_batch_rows_sum", model=ECHO) == sum(sizes)
    single_request_batches = bucket_at_least(samples, "arrowsmith_batch_requests", 1, ECHO)
    if max_batch_size == 1:
        assert single_request_batches == batches
    else:
        assert single_request_batches < batches, "no batch ever held two requests"
    # Buckets are powers of two, so this bounds rows by the bucket holding the limit; the
    # model's own `batch_rows` above checked the exact limit.
    within_limit = bucket_at_least(samples, "arrowsmith_batch_rows", max_batch_size, ECHO)
    assert batches - within_limit <= sum(rows > max_batch_size for rows in sizes)


def test_wine_answers_match_mlflow_for_their_rows(
    wine_server: ServerHandle, wine_frame: pd.DataFrame, wine_pyfunc: PyFuncModel
) -> None:
    """500 requests of scattered wine rows from 32 threads: each answer is MLflow's
    prediction for exactly its own rows."""
    expected = np.asarray(wine_pyfunc.predict(wine_frame))
    rng = np.random.default_rng(7)
    sizes = [
        1 if rng.random() < 0.6 else int(rng.integers(2, WINE_MAX_ROWS))
        for _ in range(WINE_REQUESTS)
    ]
    row_sets = [rng.choice(len(wine_frame), size=size, replace=False) for size in sizes]
    requests = [
        v2.columns_request(
            WINE_MODEL_NAME, wine_frame.iloc[rows], "FP64", typed=False, request_id=f"wine-{i}"
        )
        for i, rows in enumerate(row_sets)
    ]
    results = send_all(wine_server.url, requests, WINE_CONCURRENCY)
    for rows, request, result in zip(row_sets, requests, results, strict=True):
        response = answered(result)
        assert response.id == request.id
        answer = v2.output_array(response, "output-0")
        np.testing.assert_allclose(answer, expected[rows], rtol=WINE_RTOL)


def test_poison_row_fails_only_its_request_in_a_batch(echo_server: Served) -> None:
    """Six requests queued behind a hold share one call; the model raises on one of them,
    so the server retries them one by one: only the poisoned request fails."""
    before = echo_server.metrics()
    requests = [echo_request([100 + 3 * i, 101 + 3 * i, 102 + 3 * i]) for i in range(6)]
    poisoned = echo_request([200, 201, 202], [0.5, POISON_PAYLOAD, 0.5])
    requests.insert(2, poisoned)
    with grpc.insecure_channel(echo_server.url) as channel:
        hold = occupy(echo_server, channel)
        results = send_all(echo_server.url, requests, len(requests))
        assert_own_rows(echo_request(HOLD_IDS, [HOLD_PAYLOAD, 0.0]), hold.result())
    delta = since(echo_server.metrics(), before)
    assert total(delta, "arrowsmith_batch_requests_count", model=ECHO) == 2
    assert total(delta, "arrowsmith_batch_requests_sum", model=ECHO) == 1 + len(requests)
    for request, result in zip(requests, results, strict=True):
        if request is poisoned:
            assert_refused(result, grpc.StatusCode.INTERNAL, "poison row 201", "ValueError")
        else:
            assert assert_own_rows(request, result) == 3, "not answered by a retry of its own"
    assert_echo_answers(echo_server.url, 300)


def test_poison_rows_under_load(echo_server: Served) -> None:
    """300 requests from 32 threads, 5 with a poison row: exactly those 5 fail."""
    before = echo_server.metrics()
    requests = load_requests(300, seed=3)
    rng = np.random.default_rng(4)
    spoiled = {int(i) for i in rng.choice(len(requests), size=5, replace=False)}
    for index in spoiled:
        ids = request_column(requests[index], 0, "int64")
        payload = ids / 4
        payload[rng.integers(len(ids))] = POISON_PAYLOAD
        requests[index] = echo_request(ids.tolist(), payload.tolist())
    results = send_all(echo_server.url, requests, 32)
    for index, (request, result) in enumerate(zip(requests, results, strict=True)):
        if index in spoiled:
            assert_refused(result, grpc.StatusCode.INTERNAL, "poison row")
        else:
            assert_own_rows(request, result)
    delta = since(echo_server.metrics(), before)
    assert total(delta, "arrowsmith_requests_total", model=ECHO, status="MODEL_ERROR") == 5
    assert total(delta, "arrowsmith_requests_total", model=ECHO, status="OK") == 295
    batches = total(delta, "arrowsmith_batch_requests_count", model=ECHO)
    assert bucket_at_least(delta, "arrowsmith_batch_requests", 1, ECHO) < batches
    assert_echo_answers(echo_server.url, 300)


def test_wrong_row_count_fails_the_whole_batch(
    start_server: StartServer, drop_last_model_dir: pathlib.Path
) -> None:
    """A model answering one row too few: every request of a multi-request batch gets
    INTERNAL, since no split could be trusted. A lone request gets the model's answer as it
    is (2 rows for 3): with one request there is nobody else's rows to hand it, and models
    may legitimately answer a different number of rows (e.g. one summary row)."""
    served = start_with_metrics(start_server, drop_last_model_dir, name=DROP_LAST)
    requests = [
        echo_request(list(range(10 * i, 10 * i + 1 + i % 3)), model=DROP_LAST) for i in range(6)
    ]
    with grpc.insecure_channel(served.url) as channel:
        hold = occupy(served, channel, model=DROP_LAST)
        results = send_all(served.url, requests, len(requests))
        held = hold.result()
    np.testing.assert_array_equal(v2.output_array(held, ROW_ID).ravel(), HOLD_IDS[:1])
    samples = served.metrics()
    assert total(samples, "arrowsmith_batch_requests_count", model=DROP_LAST) == 2
    assert total(samples, "arrowsmith_batch_requests_sum", model=DROP_LAST) == 1 + len(requests)
    for result in results:
        assert_refused(result, grpc.StatusCode.INTERNAL, "rows", "shape")

    lone = echo_request([500, 501, 502], model=DROP_LAST)
    with grpc.insecure_channel(served.url) as channel:
        response = v2.model_infer(channel)(lone, timeout=CALL_TIMEOUT_S)
    np.testing.assert_array_equal(v2.output_array(response, ROW_ID).ravel(), [500, 501])


def test_deadline_passes_while_queued(echo_server: Served) -> None:
    """A request still queued at its deadline gets DEADLINE_EXCEEDED from the server itself,
    is never run, and the server goes on answering."""
    before = echo_server.metrics()
    with grpc.insecure_channel(echo_server.url) as channel:
        hold = occupy(echo_server, channel)
        with pytest.raises(grpc.RpcError) as raised:
            v2.model_infer(channel)(echo_request([400, 401, 402]), timeout=0.2)
        assert raised.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        answered(hold.result())
    wait_until(
        lambda: (
            total(
                since(echo_server.metrics(), before),
                "arrowsmith_requests_total",
                model=ECHO,
                status="DEADLINE_EXCEEDED",
            )
            == 1
        ),
        "the server to count the expired request",
    )
    assert_echo_answers(echo_server.url, 403)
    delta = since(echo_server.metrics(), before)
    assert total(delta, "arrowsmith_batch_rows_sum", model=ECHO) == len(HOLD_IDS) + 1


def test_full_queue_refuses_with_resource_exhausted(
    start_server: StartServer, echo_model_dir: pathlib.Path
) -> None:
    """With the model busy and room for two waiting requests, of five sent at once two are
    answered and three refused, naming the queue."""
    served = start_with_metrics(start_server, echo_model_dir, "--max-queue-size", "2", name=ECHO)
    requests = [echo_request([i]) for i in range(5)]
    with grpc.insecure_channel(served.url) as channel:
        hold = occupy(served, channel)
        results = send_all(served.url, requests, len(requests))
        answered(hold.result())
    refused = [r for r in results if isinstance(r, grpc.RpcError)]
    assert len(refused) == 3
    for result in refused:
        assert_refused(result, grpc.StatusCode.RESOURCE_EXHAUSTED, "queue")
    for request, result in zip(requests, results, strict=True):
        if not isinstance(result, grpc.RpcError):
            assert_own_rows(request, result)
    samples = served.metrics()
    assert total(samples, "arrowsmith_requests_total", model=ECHO, status="QUEUE_FULL") == 3
    assert_echo_answers(served.url, 10)


def test_cancelled_request_leaves_the_queue(echo_server: Served) -> None:
    """A request cancelled by its client while queued is dropped by the server (counted as
    CANCELLED) and never reaches the model; the server goes on answering."""
    before = echo_server.metrics()
    with grpc.insecure_channel(echo_server.url) as channel:
        hold = occupy(echo_server, channel)
        doomed = v2.model_infer(channel).future(
            echo_request([600, 601, 602]), timeout=CALL_TIMEOUT_S
        )
        time.sleep(SETTLE_S)
        assert doomed.cancel()
        wait_until(
            lambda: (
                total(
                    since(echo_server.metrics(), before),
                    "arrowsmith_requests_total",
                    model=ECHO,
                    status="CANCELLED",
                )
                == 1
            ),
            "the server to drop the cancelled request",
        )
        answered(hold.result())
    assert_echo_answers(echo_server.url, 603)
    delta = since(echo_server.metrics(), before)
    assert total(delta, "arrowsmith_batch_requests_sum", model=ECHO) == 2
    assert total(delta, "arrowsmith_batch_rows_sum", model=ECHO) == len(HOLD_IDS) + 1


def test_sequential_requests_run_alone(echo_server: Served) -> None:
    """With one request at a time nothing waits, so every model call serves one request."""
    before = echo_server.metrics()
    for row_id in range(700, 720):
        assert_echo_answers(echo_server.url, row_id)
    delta = since(echo_server.metrics(), before)
    assert total(delta, "arrowsmith_batch_requests_count", model=ECHO) == 20
    assert total(delta, "arrowsmith_batch_requests_sum", model=ECHO) == 20
