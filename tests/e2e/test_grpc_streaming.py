"""ModelStreamInfer, compression and reflection against a real server process, as
tritonclient, grpcio and grpcurl-style tools use them.

Streams are answered in request order, errors in-band without ending the stream; each
request of a stream joins the model's batcher like a unary call, so streams and unary calls
batch together; a cancelled stream's queued requests leave the queue unrun."""

from __future__ import annotations

import pathlib
import queue
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from functools import partial

import grpc
import numpy as np
import pandas as pd
import pytest
import tritonclient.grpc as grpcclient
from grpc_reflection.v1alpha import reflection_pb2
from prometheus_client.parser import text_string_to_metric_families
from support import v2
from support.batching_models import BATCH_ROWS, HOLD_PAYLOAD, PAYLOAD, ROW_ID
from support.model_builders import WINE_MODEL_NAME, save_batching_model
from support.server import ServerHandle, StartServer
from tritonclient.grpc import service_pb2 as pb
from tritonclient.utils import InferenceServerException

ECHO = "echo_stream"
STREAM = "/inference.GRPCInferenceService/ModelStreamInfer"
CALL_TIMEOUT_S = 60.0
POLL_S = 0.05


def echo_request(ids: list[int], payload: list[float] | None = None) -> pb.ModelInferRequest:
    """Rows `ids` as [n, 1] INT64 and FP64 columns, for the echo model."""
    id_column = np.asarray(ids, dtype=np.int64).reshape(-1, 1)
    values = id_column / 4 if payload is None else np.asarray(payload).reshape(-1, 1)
    request = pb.ModelInferRequest(model_name=ECHO, id=f"ids-{ids[0]}")
    v2.add_input(request, ROW_ID, id_column, "INT64", typed=False)
    v2.add_input(request, PAYLOAD, values.astype(np.float64), "FP64", typed=False)
    return request


def stream_call(channel: grpc.Channel) -> grpc.StreamStreamMultiCallable:
    return channel.stream_stream(
        STREAM,
        request_serializer=pb.ModelInferRequest.SerializeToString,
        response_deserializer=pb.ModelStreamInferResponse.FromString,
    )


def rows_of(answer: pb.ModelStreamInferResponse, name: str) -> list[int]:
    assert answer.error_message == "", answer.error_message
    return [int(v) for v in v2.output_array(answer.infer_response, name).ravel()]


def metric(server: ServerHandle, name: str, **labels: str) -> float:
    """The sum of the echo model's samples of `name` with `labels`, from /metrics."""
    with urllib.request.urlopen(f"{server.http_url}/metrics", timeout=10) as answer:
        text = answer.read().decode()
    wanted = {"model": ECHO, **labels}
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name and all(sample.labels.get(k) == v for k, v in wanted.items())
    )


def requests_counted(server: ServerHandle, status: str) -> float:
    """Requests of the echo model answered over gRPC with `status`."""
    return metric(server, "arrowsmith_requests_total", protocol="grpc", status=status)


def wait_until(condition: Callable[[], bool], what: str, timeout: float = CALL_TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"no {what} after {timeout} s")
        time.sleep(POLL_S)


class Feed:
    """A request iterator fed from the test's thread, for a stream that stays open."""

    def __init__(self) -> None:
        self._queue: queue.Queue[pb.ModelInferRequest | None] = queue.Queue()

    def send(self, request: pb.ModelInferRequest) -> None:
        self._queue.put(request)

    def close(self) -> None:
        self._queue.put(None)

    def __iter__(self) -> Iterator[pb.ModelInferRequest]:
        while (request := self._queue.get()) is not None:
            yield request


@pytest.fixture(scope="module")
def echo_model_dir(models_dir: pathlib.Path) -> pathlib.Path:
    return save_batching_model(models_dir / ECHO, "EchoRowIdModel")


@pytest.fixture
def echo_server(start_server: StartServer, echo_model_dir: pathlib.Path) -> ServerHandle:
    return start_server(echo_model_dir, name=ECHO)


def hold(channel: grpc.Channel, server: ServerHandle) -> grpc.Future:
    """A request that keeps the model busy about a second; returns once its model call
    began, so that what arrives next queues behind it."""
    calls = metric(server, "arrowsmith_batch_requests_count")
    future: grpc.Future = v2.model_infer(channel).future(
        echo_request([0, 1], [HOLD_PAYLOAD, 0.0]), timeout=CALL_TIMEOUT_S
    )
    wait_until(
        lambda: metric(server, "arrowsmith_batch_requests_count") > calls,
        "the hold request's model call to start",
    )
    return future


def test_stream_answers_in_request_order(echo_server: ServerHandle) -> None:
    """Many requests on one stream, sent at once: one response each, in the order sent."""
    requests = [echo_request([i, 1000 + i]) for i in range(2, 202, 2)]
    with grpc.insecure_channel(echo_server.url) as channel:
        answers = list(stream_call(channel)(iter(requests), timeout=CALL_TIMEOUT_S))
    assert [rows_of(a, ROW_ID) for a in answers] == [[i, 1000 + i] for i in range(2, 202, 2)]
    assert [a.infer_response.id for a in answers] == [r.id for r in requests]


def test_stream_errors_are_in_band_and_the_stream_goes_on(echo_server: ServerHandle) -> None:
    """A request naming an unknown model and one with a bad input are answered with their
    errors on the stream; the requests around them are answered, and the call ends OK."""
    bad_input = echo_request([5])
    bad_input.inputs[1].datatype = "BYTES"
    unknown = echo_request([6])
    unknown.model_name = "nope"
    requests = [echo_request([4]), bad_input, unknown, echo_request([7])]
    with grpc.insecure_channel(echo_server.url) as channel:
        answers = list(stream_call(channel)(iter(requests), timeout=CALL_TIMEOUT_S))
    assert len(answers) == 4
    assert rows_of(answers[0], ROW_ID) == [4]
    assert PAYLOAD in answers[1].error_message, answers[1].error_message
    assert "model 'nope' is not served here" in answers[2].error_message
    assert rows_of(answers[3], ROW_ID) == [7]


def test_streams_and_unary_calls_batch_together(echo_server: ServerHandle) -> None:
    """While the model is busy, one request from each of two streams and a unary call queue;
    the next model call takes all three."""
    with grpc.insecure_channel(echo_server.url) as channel:
        busy = hold(channel, echo_server)
        feeds = [Feed(), Feed()]
        streams = [stream_call(channel)(iter(feed), timeout=CALL_TIMEOUT_S) for feed in feeds]
        feeds[0].send(echo_request([10]))
        feeds[1].send(echo_request([11]))
        unary = v2.model_infer(channel).future(echo_request([12]), timeout=CALL_TIMEOUT_S)
        busy.result()
        for feed in feeds:
            feed.close()
        answers = [next(stream) for stream in streams]
        batched = [rows_of(answer, BATCH_ROWS) for answer in answers]
        batched.append([int(v) for v in v2.output_array(unary.result(), BATCH_ROWS).ravel()])
    assert batched == [[3], [3], [3]]


def test_a_cancelled_stream_leaves_the_queue(echo_server: ServerHandle) -> None:
    """A stream cancelled while its requests wait behind a busy model: they are counted
    CANCELLED and never reach the model; the server answers the next request right."""
    cancelled_before = requests_counted(echo_server, "CANCELLED")
    with grpc.insecure_channel(echo_server.url) as channel:
        busy = hold(channel, echo_server)
        feed = Feed()
        stream = stream_call(channel)(iter(feed), timeout=CALL_TIMEOUT_S)
        for i in range(20, 25):
            feed.send(echo_request([i]))
        time.sleep(0.3)
        stream.cancel()
        busy.result()
        wait_until(
            lambda: requests_counted(echo_server, "CANCELLED") >= cancelled_before + 5,
            "5 CANCELLED requests",
        )
        answer = v2.model_infer(channel)(echo_request([30]), timeout=CALL_TIMEOUT_S)
    # Alone in its call: the cancelled requests did not join it.
    assert [int(v) for v in v2.output_array(answer, BATCH_ROWS).ravel()] == [1]
    assert requests_counted(echo_server, "CANCELLED") == cancelled_before + 5


def test_tritonclient_streaming(wine_server: ServerHandle, wine_frame: pd.DataFrame) -> None:
    """tritonclient's start_stream / async_stream_infer / stop_stream, unchanged: every
    row's answer arrives through the callback, in order, equal to a unary call's."""
    rows = wine_frame.head(20)
    answers: queue.Queue[tuple[object, object]] = queue.Queue()
    with grpcclient.InferenceServerClient(wine_server.url) as client:
        expected = client.infer(WINE_MODEL_NAME, v2.column_inputs(rows, "FP64")).as_numpy(
            "output-0"
        )
        client.start_stream(
            callback=partial(lambda q, result, error: q.put((result, error)), answers)
        )
        for i in range(len(rows)):
            inputs = v2.column_inputs(rows.iloc[i : i + 1], "FP64")
            client.async_stream_infer(WINE_MODEL_NAME, inputs, request_id=str(i))
        client.stop_stream()
    got = [answers.get(timeout=CALL_TIMEOUT_S) for _ in range(len(rows))]
    assert [error for _, error in got] == [None] * len(rows)
    assert [result.get_response().id for result, _ in got] == [str(i) for i in range(len(rows))]  # type: ignore[attr-defined]
    values = np.concatenate([result.as_numpy("output-0") for result, _ in got])  # type: ignore[attr-defined]
    np.testing.assert_array_equal(values, expected)


def test_tritonclient_stream_error_reaches_the_callback(wine_server: ServerHandle) -> None:
    """An in-band error is tritonclient's InferenceServerException in the callback."""
    answers: queue.Queue[tuple[object, object]] = queue.Queue()
    with grpcclient.InferenceServerClient(wine_server.url) as client:
        client.start_stream(
            callback=partial(lambda q, result, error: q.put((result, error)), answers)
        )
        inputs = [grpcclient.InferInput("nope", [1, 1], "FP64")]
        inputs[0].set_data_from_numpy(np.zeros((1, 1)))
        client.async_stream_infer(WINE_MODEL_NAME, inputs)
        result, error = answers.get(timeout=CALL_TIMEOUT_S)
        client.stop_stream()
    assert result is None
    assert isinstance(error, InferenceServerException)
    assert "nope" in str(error.message())


@pytest.mark.parametrize("algorithm", ["gzip", "deflate"])
def test_compressed_requests(
    wine_server: ServerHandle, wine_frame: pd.DataFrame, algorithm: str
) -> None:
    """tritonclient's compression_algorithm: the compressed request is answered as the
    plain one is (and its compressed answer read back)."""
    rows = wine_frame.head(64)
    with grpcclient.InferenceServerClient(wine_server.url) as client:
        plain = client.infer(WINE_MODEL_NAME, v2.column_inputs(rows, "FP64"))
        compressed = client.infer(
            WINE_MODEL_NAME, v2.column_inputs(rows, "FP64"), compression_algorithm=algorithm
        )
    np.testing.assert_array_equal(compressed.as_numpy("output-0"), plain.as_numpy("output-0"))


def reflection_services(url: str, service: str) -> set[str]:
    """The services `list_services` names through reflection `service` (v1 and v1alpha
    share their messages field for field)."""
    with grpc.insecure_channel(url) as channel:
        call = channel.stream_stream(
            f"/{service}/ServerReflectionInfo",
            request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
            response_deserializer=reflection_pb2.ServerReflectionResponse.FromString,
        )
        request = reflection_pb2.ServerReflectionRequest(list_services="")
        [answer] = list(call(iter([request]), timeout=CALL_TIMEOUT_S))
    return {s.name for s in answer.list_services_response.service}


@pytest.mark.parametrize(
    "reflection",
    ["grpc.reflection.v1.ServerReflection", "grpc.reflection.v1alpha.ServerReflection"],
)
def test_reflection_v1_and_v1alpha(wine_server: ServerHandle, reflection: str) -> None:
    """Both reflection versions list the services, so grpcurl and Postman work with no
    `.proto`; the inference service's descriptor names ModelStreamInfer."""
    services = reflection_services(wine_server.url, reflection)
    assert {"inference.GRPCInferenceService", "grpc.health.v1.Health", reflection} <= services
    from google.protobuf.descriptor_pool import DescriptorPool
    from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
        ProtoReflectionDescriptorDatabase,
    )

    with grpc.insecure_channel(wine_server.url) as channel:
        pool = DescriptorPool(ProtoReflectionDescriptorDatabase(channel))
        inference = pool.FindServiceByName("inference.GRPCInferenceService")
        assert {"ModelInfer", "ModelStreamInfer", "ModelConfig"} <= {
            m.name for m in inference.methods
        }


def test_unknown_methods_are_unimplemented(wine_server: ServerHandle) -> None:
    """A method or service the server does not offer is UNIMPLEMENTED, and the server goes
    on serving."""
    with grpc.insecure_channel(wine_server.url) as channel:
        # Triton's CUDA shared memory: a method of the service that a CPU server lacks.
        for path in (
            "/inference.GRPCInferenceService/CudaSharedMemoryStatus",
            "/nope.Service/Call",
        ):
            call = channel.unary_unary(path)
            with pytest.raises(grpc.RpcError) as raised:
                call(b"", timeout=CALL_TIMEOUT_S)
            assert raised.value.code() == grpc.StatusCode.UNIMPLEMENTED, path
    with grpcclient.InferenceServerClient(wine_server.url) as client:
        assert client.is_server_ready()


def test_stream_reads_no_more_than_it_may_hold(
    start_server: StartServer, echo_model_dir: pathlib.Path
) -> None:
    """With `--max-concurrent-streams 4`, a stream holds at most 4 requests in flight: the
    rest wait in flow control, and every one is still answered, in order."""
    server = start_server(echo_model_dir, "--max-concurrent-streams", "4", name=ECHO)
    requests = [echo_request([i]) for i in range(40, 80)]
    with grpc.insecure_channel(server.url) as channel:
        answers = list(stream_call(channel)(iter(requests), timeout=CALL_TIMEOUT_S))
    assert [rows_of(a, ROW_ID) for a in answers] == [[i] for i in range(40, 80)]
    assert max(rows_of(a, BATCH_ROWS)[0] for a in answers) <= 4


def test_many_streams_at_once(echo_server: ServerHandle) -> None:
    """Eight streams of 50 requests each, concurrently: every request gets its own rows."""
    results: dict[int, list[list[int]]] = {}

    def run(stream_id: int) -> None:
        requests = [echo_request([stream_id * 1000 + i]) for i in range(50)]
        with grpc.insecure_channel(echo_server.url) as channel:
            answers = stream_call(channel)(iter(requests), timeout=CALL_TIMEOUT_S)
            results[stream_id] = [rows_of(a, ROW_ID) for a in answers]

    threads = [threading.Thread(target=run, args=(s,)) for s in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(CALL_TIMEOUT_S)
    assert results == {s: [[s * 1000 + i] for i in range(50)] for s in range(8)}
