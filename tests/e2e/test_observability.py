"""Traces and access logs from real server processes serving the wine model.

Each traced server exports to an OTLP receiver the test starts (OTLP/gRPC or OTLP/HTTP with
protobuf, from opentelemetry-proto's messages). The checks: the caller's W3C trace context
is continued and returned, each request's server span has its phases as children, one
batch span links to every request that rode in it, attributes and error statuses are set,
and each request writes one access-log line whose fields match its response.
"""

import json
import pathlib
import shlex
import time
import urllib.request
from collections.abc import Iterator

import grpc
import numpy as np
import pandas as pd
import pytest
from support import otlp, v2
from support.model_builders import WINE_MODEL_NAME
from support.server import ServerHandle, running_server
from tritonclient.grpc import service_pb2 as pb

#: A batch held open this long catches requests sent together into one batch.
BATCH_DELAY_MS = "200"
PHASES = {"receive and decode", "admit", "queue wait", "encode and send"}
CLIENT_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CLIENT_SPAN = "00f067aa0ba902b7"


def traceparent(trace_id: str = CLIENT_TRACE, span_id: str = CLIENT_SPAN) -> str:
    return f"00-{trace_id}-{span_id}-01"


@pytest.fixture(scope="module")
def grpc_collector() -> Iterator[tuple[str, otlp.SpanStore]]:
    with otlp.grpc_receiver() as receiver:
        yield receiver


@pytest.fixture(scope="module")
def traced_server(
    wine_model_dir: pathlib.Path,
    server_logs: pathlib.Path,
    grpc_collector: tuple[str, otlp.SpanStore],
) -> Iterator[ServerHandle]:
    """Spans over OTLP/gRPC (flags), every request sampled, JSON access log."""
    endpoint, _ = grpc_collector
    with running_server(
        wine_model_dir,
        "--otel-endpoint",
        endpoint,
        "--otel-protocol",
        "grpc",
        "--otel-service-name",
        "wine-scorer",
        "--access-log",
        "json",
        "--max-batch-delay-ms",
        BATCH_DELAY_MS,
        name=WINE_MODEL_NAME,
        log_dir=server_logs,
    ) as server:
        yield server


def access_lines(server: ServerHandle) -> list[dict]:
    """The JSON access-log lines among the server's output."""
    lines = []
    for line in server.log_text().splitlines():
        if line.startswith("{"):
            document = json.loads(line)
            if "call" in document:
                lines.append(document)
    return lines


def wait_for_lines(server: ServerHandle, found, timeout: float = 10.0) -> list[dict]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        lines = access_lines(server)
        if found(lines):
            return lines
        time.sleep(0.05)
    raise AssertionError(f"access-log lines not written: {access_lines(server)}")


def by_id(spans: list[otlp.ReceivedSpan]) -> dict[str, otlp.ReceivedSpan]:
    return {span.span_id: span for span in spans}


def children(spans: list[otlp.ReceivedSpan], parent: otlp.ReceivedSpan) -> set[str]:
    return {
        s.name
        for s in spans
        if s.parent_span_id == parent.span_id and s.trace_id == parent.trace_id
    }


def send_two_together(
    server: ServerHandle, rows: pd.DataFrame
) -> list[tuple[pb.ModelInferResponse, dict[str, str]]]:
    """Two one-row ModelInfer calls at once (the first continuing a client's trace); each
    answer with its initial metadata."""
    with grpc.insecure_channel(server.url) as channel:
        infer = v2.model_infer(channel)
        calls = [
            infer.future(
                v2.columns_request(
                    WINE_MODEL_NAME, rows.iloc[[0]], "FP64", typed=False, request_id="first"
                ),
                metadata=[("traceparent", traceparent())],
                timeout=30,
            ),
            infer.future(
                v2.columns_request(
                    WINE_MODEL_NAME, rows.iloc[[1]], "FP64", typed=False, request_id="second"
                ),
                timeout=30,
            ),
        ]
        return [(call.result(), dict(call.initial_metadata())) for call in calls]


def test_two_requests_in_one_batch_are_traced_with_their_phases_and_linked(
    traced_server: ServerHandle,
    grpc_collector: tuple[str, otlp.SpanStore],
    rows: pd.DataFrame,
    expected: np.ndarray,
) -> None:
    _, store = grpc_collector
    answers = send_two_together(traced_server, rows)
    for index, (response, _) in enumerate(answers):
        np.testing.assert_allclose(v2.output_array(response, "output-0"), expected[[index]])
    # The first continues the client's trace; the second starts one; both say so.
    first_parent = answers[0][1]["traceparent"].split("-")
    second_parent = answers[1][1]["traceparent"].split("-")
    assert first_parent[1] == CLIENT_TRACE
    assert second_parent[1] != CLIENT_TRACE
    server_ids = {first_parent[2], second_parent[2]}

    def complete(spans: list[otlp.ReceivedSpan]) -> bool:
        ids = by_id(spans)
        if not server_ids <= ids.keys():
            return False
        if not all(children(spans, ids[i]) >= PHASES for i in server_ids):
            return False
        return any(s.name == "predict" and len(s.links) >= 2 for s in spans)

    spans = store.wait_for(complete)
    ids = by_id(spans)
    first, second = ids[first_parent[2]], ids[second_parent[2]]
    assert first.trace_id == CLIENT_TRACE
    assert first.parent_span_id == CLIENT_SPAN
    assert second.parent_span_id == ""
    version = answers[0][0].model_version
    for span, request_id in ((first, "first"), (second, "second")):
        assert span.name == "inference.GRPCInferenceService/ModelInfer"
        assert span.span.kind == span.span.SPAN_KIND_SERVER
        assert span.attributes == {
            "arrowsmith.protocol": "grpc",
            "arrowsmith.model.name": WINE_MODEL_NAME,
            "arrowsmith.model.version": version,
            "arrowsmith.request.id": request_id,
            "arrowsmith.status": "OK",
            "arrowsmith.rows": 1,
        }
        assert span.resource["service.name"] == "wine-scorer"
        assert span.span.status.code != span.span.status.STATUS_CODE_ERROR
        phases = [s for s in spans if s.parent_span_id == span.span_id]
        for phase in phases:
            assert span.span.start_time_unix_nano <= phase.span.start_time_unix_nano
            assert phase.span.end_time_unix_nano <= span.span.end_time_unix_nano
        ordered = sorted(phases, key=lambda s: s.span.start_time_unix_nano)
        assert [p.name for p in ordered] == [
            "receive and decode",
            "admit",
            "queue wait",
            "encode and send",
        ]
    batch = next(
        s
        for s in spans
        if s.name == "predict" and {first.span_id, second.span_id} <= {i for _, i in s.links}
    )
    assert set(batch.links) == {
        (first.trace_id, first.span_id),
        (second.trace_id, second.span_id),
    }
    assert batch.attributes == {
        "arrowsmith.model.name": WINE_MODEL_NAME,
        "arrowsmith.model.version": version,
        "arrowsmith.batch.rows": 2,
        "arrowsmith.batch.requests": 2,
    }
    assert batch.parent_span_id == ""
    assert batch.trace_id not in {first.trace_id, second.trace_id}
    # The batch ran while both waited: after each queue wait, before each answer.
    for span in (first, second):
        queue_wait = next(
            s for s in spans if s.parent_span_id == span.span_id and s.name == "queue wait"
        )
        assert queue_wait.span.end_time_unix_nano <= batch.span.start_time_unix_nano + 1_000
        assert batch.span.end_time_unix_nano <= span.span.end_time_unix_nano


def test_a_refused_request_has_an_error_span_and_log_line(
    traced_server: ServerHandle, grpc_collector: tuple[str, otlp.SpanStore], rows: pd.DataFrame
) -> None:
    _, store = grpc_collector
    request = v2.columns_request(
        WINE_MODEL_NAME, rows.iloc[[0]].drop(columns=["alcohol"]), "FP64", typed=False
    )
    request.id = "missing-alcohol"
    trace_id = "0af7651916cd43dd8448eb211c80319c"
    with grpc.insecure_channel(traced_server.url) as channel, pytest.raises(grpc.RpcError) as err:
        v2.model_infer(channel)(
            request, metadata=[("traceparent", traceparent(trace_id))], timeout=30
        )
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    spans = store.wait_for(
        lambda spans: any(s.trace_id == trace_id and s.parent_span_id == CLIENT_SPAN for s in spans)
    )
    span = next(s for s in spans if s.trace_id == trace_id and s.parent_span_id == CLIENT_SPAN)
    assert span.span.status.code == span.span.status.STATUS_CODE_ERROR
    assert "alcohol" in span.span.status.message
    assert span.attributes["arrowsmith.status"] == "INVALID_ARGUMENT"
    assert span.attributes["arrowsmith.model.name"] == WINE_MODEL_NAME
    assert "alcohol" in span.attributes["error.message"]
    lines = wait_for_lines(
        traced_server, lambda lines: any(line["trace_id"] == trace_id for line in lines)
    )
    line = next(line for line in lines if line["trace_id"] == trace_id)
    assert line["status"] == "INVALID_ARGUMENT"
    assert line["model"] == WINE_MODEL_NAME
    assert line["queue_ms"] is None
    assert line["predict_ms"] is None


def test_each_grpc_request_writes_one_line_matching_its_response(
    traced_server: ServerHandle, rows: pd.DataFrame
) -> None:
    ids = [f"log-{n}" for n in range(5)]
    with grpc.insecure_channel(traced_server.url) as channel:
        infer = v2.model_infer(channel)
        responses = [
            infer(
                v2.columns_request(
                    WINE_MODEL_NAME, rows.iloc[: n + 1], "FP64", typed=False, request_id=i
                ),
                timeout=30,
            )
            for n, i in enumerate(ids)
        ]
    lines = wait_for_lines(
        traced_server, lambda lines: {i for i in ids} <= {line["request_id"] for line in lines}
    )
    for n, (request_id, response) in enumerate(zip(ids, responses, strict=True)):
        matching = [line for line in lines if line["request_id"] == request_id]
        assert len(matching) == 1
        line = matching[0]
        assert line["request_id"] == response.id
        assert line["model"] == response.model_name
        assert line["version"] == response.model_version
        assert line["protocol"] == "grpc"
        assert line["call"] == "ModelInfer"
        assert line["status"] == "OK"
        assert line["rows"] == n + 1 == response.outputs[0].shape[0]
        assert len(line["trace_id"]) == 32
        assert 0 <= line["queue_ms"] <= line["total_ms"]
        assert 0 < line["predict_ms"] <= line["total_ms"]
        assert line["time"].endswith("Z")


def test_streamed_requests_are_traced_and_logged_one_by_one(
    traced_server: ServerHandle, grpc_collector: tuple[str, otlp.SpanStore], rows: pd.DataFrame
) -> None:
    _, store = grpc_collector
    trace_id = "11111111111111111111111111111111"
    requests = [
        v2.columns_request(
            WINE_MODEL_NAME, rows.iloc[[n]], "FP64", typed=False, request_id=f"stream-{n}"
        )
        for n in range(3)
    ]
    with grpc.insecure_channel(traced_server.url) as channel:
        stream = channel.stream_stream(
            "/inference.GRPCInferenceService/ModelStreamInfer",
            request_serializer=pb.ModelInferRequest.SerializeToString,
            response_deserializer=pb.ModelStreamInferResponse.FromString,
        )
        answers = list(
            stream(iter(requests), metadata=[("traceparent", traceparent(trace_id))], timeout=30)
        )
    assert [a.infer_response.id for a in answers] == ["stream-0", "stream-1", "stream-2"]
    spans = store.wait_for(
        lambda spans: (
            sum(1 for s in spans if s.trace_id == trace_id and s.parent_span_id == CLIENT_SPAN) == 3
        )
    )
    servers = [s for s in spans if s.trace_id == trace_id and s.parent_span_id == CLIENT_SPAN]
    assert {s.name for s in servers} == {"inference.GRPCInferenceService/ModelStreamInfer"}
    assert sorted(s.attributes["arrowsmith.request.id"] for s in servers) == [
        "stream-0",
        "stream-1",
        "stream-2",
    ]
    lines = wait_for_lines(
        traced_server,
        lambda lines: sum(1 for line in lines if line["call"] == "ModelStreamInfer") >= 3,
    )
    assert sorted(line["request_id"] for line in lines if line["call"] == "ModelStreamInfer") == [
        "stream-0",
        "stream-1",
        "stream-2",
    ]


@pytest.fixture(scope="module")
def http_collector() -> Iterator[tuple[str, otlp.SpanStore]]:
    with otlp.http_receiver() as receiver:
        yield receiver


@pytest.fixture(scope="module")
def http_traced_server(
    wine_model_dir: pathlib.Path,
    server_logs: pathlib.Path,
    http_collector: tuple[str, otlp.SpanStore],
) -> Iterator[ServerHandle]:
    """Spans over OTLP/HTTP, set by the standard variables; a text access log."""
    endpoint, _ = http_collector
    base = endpoint.removesuffix("/v1/traces")
    with running_server(
        wine_model_dir,
        "--access-log",
        "text",
        name=WINE_MODEL_NAME,
        log_dir=server_logs,
        env={
            "OTEL_EXPORTER_OTLP_ENDPOINT": base,
            "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
            "OTEL_SERVICE_NAME": "wine-http",
        },
    ) as server:
        yield server


def invocations(server: ServerHandle, frame: pd.DataFrame, headers: dict[str, str]):
    body = json.dumps({"dataframe_split": frame.to_dict(orient="split", index=False)}).encode()
    request = urllib.request.Request(
        f"{server.http_url}/invocations",
        data=body,
        headers={"Content-Type": "application/json", **headers},
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read()), dict(response.headers)


def test_an_invocations_request_is_traced_over_otlp_http(
    http_traced_server: ServerHandle,
    http_collector: tuple[str, otlp.SpanStore],
    rows: pd.DataFrame,
    expected: np.ndarray,
) -> None:
    _, store = http_collector
    trace_id = "22222222222222222222222222222222"
    answer, headers = invocations(
        http_traced_server, rows.iloc[:3], {"traceparent": traceparent(trace_id)}
    )
    np.testing.assert_allclose(answer["predictions"], expected[:3])
    returned = headers["traceparent"].split("-")
    assert returned[1] == trace_id

    def complete(spans: list[otlp.ReceivedSpan]) -> bool:
        ids = by_id(spans)
        return returned[2] in ids and children(spans, ids[returned[2]]) >= PHASES

    spans = store.wait_for(complete)
    span = by_id(spans)[returned[2]]
    assert span.name == "POST /invocations"
    assert span.parent_span_id == CLIENT_SPAN
    assert span.resource["service.name"] == "wine-http"
    assert span.attributes["arrowsmith.protocol"] == "mlflow"
    assert span.attributes["arrowsmith.model.name"] == WINE_MODEL_NAME
    assert span.attributes["arrowsmith.status"] == "200"
    assert span.attributes["arrowsmith.rows"] == 3
    assert any(s.name == "predict" and (trace_id, span.span_id) in s.links for s in spans)
    # One text line for it, with its trace id.
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        found = [
            line
            for line in http_traced_server.log_text().splitlines()
            if f"trace_id={trace_id}" in line
        ]
        if found:
            break
        time.sleep(0.05)
    assert len(found) == 1
    fields = dict(part.split("=", 1) for part in shlex.split(found[0])[1:])
    assert fields["protocol"] == "mlflow"
    assert fields["call"] == "POST /invocations"
    assert fields["status"] == "200"
    assert fields["model"] == WINE_MODEL_NAME
    assert fields["rows"] == "3"


def test_without_an_endpoint_nothing_is_traced(
    wine_model_dir: pathlib.Path, server_logs: pathlib.Path, rows: pd.DataFrame
) -> None:
    """The default: no traceparent in answers, no access-log lines."""
    with running_server(wine_model_dir, name=WINE_MODEL_NAME, log_dir=server_logs) as server:
        with grpc.insecure_channel(server.url) as channel:
            _, call = v2.model_infer(channel).with_call(
                v2.columns_request(WINE_MODEL_NAME, rows.iloc[[0]], "FP64", typed=False),
                metadata=[("traceparent", traceparent())],
                timeout=30,
            )
        assert "traceparent" not in dict(call.initial_metadata())
        _, headers = invocations(server, rows.iloc[[0]], {"traceparent": traceparent()})
        assert "traceparent" not in {name.lower() for name in headers}
        assert access_lines(server) == []
