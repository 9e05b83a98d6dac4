"""Bounded, advertised resources, as clients see them: the gRPC front advertises its stream
limit in SETTINGS and a client queueing past it still gets every answer; a call that would
pass the budget of request bytes in flight is RESOURCE_EXHAUSTED before its body is read;
HTTP bodies over the size limit are 413 (V2 REST and /invocations, announced, chunked or
inflated) and bodies over the budget 429. The server keeps serving after each case.

The HTTP/2 and HTTP/1.1 peers that hold a request half-sent are written by hand on raw
sockets: no client library lets a test stop in the middle of a body."""

import gzip
import json
import pathlib
import socket
import struct
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc
import numpy as np
import pandas as pd
import pytest
import requests
from mlflow.pyfunc import PyFuncModel
from prometheus_client.parser import text_string_to_metric_families
from support import v2
from support.model_builders import WINE_MODEL_NAME
from support.server import ServerHandle, running_server

TIMEOUT_S = 60
MESSAGE_LIMIT = 100_000
BUDGET = 120_000
STREAMS = 2
#: Bytes the half-sent call declares (and so reserves): with it held, BUDGET has 30,000 left.
HELD_BYTES = 90_000

# HTTP/2 framing, for the raw peer.
PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
DATA, HEADERS, SETTINGS = 0x0, 0x1, 0x4
END_HEADERS = 0x4
SETTINGS_MAX_CONCURRENT_STREAMS = 0x3


@pytest.fixture(scope="module")
def wine_expected(wine_pyfunc: PyFuncModel, wine_frame: pd.DataFrame) -> np.ndarray:
    expected: np.ndarray = wine_pyfunc.predict(wine_frame)
    return expected


@pytest.fixture(scope="module")
def limited(wine_model_dir: pathlib.Path, server_logs: pathlib.Path) -> Iterator[ServerHandle]:
    """A server with small limits: messages and bodies, bytes in flight, streams."""
    args = [
        "--max-message-size",
        str(MESSAGE_LIMIT),
        "--max-inflight-bytes",
        str(BUDGET),
        "--max-concurrent-streams",
        str(STREAMS),
    ]
    with running_server(wine_model_dir, *args, name=WINE_MODEL_NAME, log_dir=server_logs) as s:
        yield s


def frame(kind: int, flags: int, stream: int, payload: bytes) -> bytes:
    return (
        struct.pack(">I", len(payload))[1:]
        + bytes([kind, flags])
        + struct.pack(">I", stream)
        + payload
    )


def literal_header(name: str, value: str) -> bytes:
    """HPACK: a literal header field without indexing, new name, no Huffman coding."""
    encoded = b""
    for text in (name, value):
        data = text.encode()
        assert len(data) < 127
        encoded += bytes([len(data)]) + data
    return b"\x00" + encoded


class RawHttp2:
    """A hand-written HTTP/2 client connection: preface and empty SETTINGS sent."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT_S)
        self.sock.sendall(PREFACE + frame(SETTINGS, 0, 0, b""))

    def read_frame(self) -> tuple[int, int, bytes]:
        head = self._read(9)
        length = int.from_bytes(head[:3], "big")
        return head[3], head[4], self._read(length)

    def _read(self, n: int) -> bytes:
        data = b""
        while len(data) < n:
            chunk = self.sock.recv(n - len(data))
            if not chunk:
                raise ConnectionError("the server closed the connection")
            data += chunk
        return data

    def server_settings(self) -> dict[int, int]:
        """The server's first (non-ack) SETTINGS frame."""
        while True:
            kind, flags, payload = self.read_frame()
            if kind == SETTINGS and not flags & 1:
                return {ident: value for ident, value in struct.iter_unpack(">HI", payload)}

    def start_model_infer(self, declared: int, sent: bytes) -> None:
        """Stream 1: ModelInfer headers, then a gRPC prefix declaring `declared` bytes and
        `sent`, the start of the message; the request is left unfinished."""
        headers = b"".join(
            literal_header(name, value)
            for name, value in (
                (":method", "POST"),
                (":scheme", "http"),
                (":path", v2.MODEL_INFER_METHOD),
                (":authority", "arrowsmith"),
                ("content-type", "application/grpc"),
                ("te", "trailers"),
            )
        )
        prefix = b"\x00" + struct.pack(">I", declared)
        self.sock.sendall(
            frame(HEADERS, END_HEADERS, 1, headers) + frame(DATA, 0, 1, prefix + sent)
        )

    def close(self) -> None:
        self.sock.close()


def wine_rows_request(frame_: pd.DataFrame, rows: int) -> bytes:
    request = v2.columns_request(WINE_MODEL_NAME, frame_.iloc[:rows], "FP64", typed=False)
    serialized: bytes = request.SerializeToString()
    return serialized


def test_the_stream_limit_is_advertised_and_clients_queue_past_it(
    limited: ServerHandle, wine_frame: pd.DataFrame, wine_expected: np.ndarray
) -> None:
    """SETTINGS_MAX_CONCURRENT_STREAMS is the flag's value; 16 calls at once on one grpc
    channel (8 times the limit) are all answered, right."""
    peer = RawHttp2(limited.port)
    try:
        settings = peer.server_settings()
    finally:
        peer.close()
    assert settings.get(SETTINGS_MAX_CONCURRENT_STREAMS) == STREAMS, settings

    request = v2.columns_request(WINE_MODEL_NAME, wine_frame.iloc[:3], "FP64", typed=False)
    with grpc.insecure_channel(limited.url) as channel:
        call = v2.model_infer(channel)
        with ThreadPoolExecutor(16) as pool:
            answers = list(pool.map(lambda _: call(request, timeout=TIMEOUT_S), range(16)))
    for answer in answers:
        np.testing.assert_allclose(
            v2.output_array(answer, "output-0").ravel(), wine_expected[:3], rtol=1e-6
        )
    v2.assert_wine_served(limited.url, wine_frame, wine_expected)


def test_a_call_over_the_inflight_budget_is_resource_exhausted(
    limited: ServerHandle, wine_frame: pd.DataFrame, wine_expected: np.ndarray
) -> None:
    """While a half-sent call holds 90,000 of the 120,000 bytes, a whole 40,000-byte call
    (under the message limit) is RESOURCE_EXHAUSTED, naming the flag; once the half-sent
    call is gone, the same call is answered."""
    second = wine_rows_request(wine_frame, 450)
    assert BUDGET - HELD_BYTES < len(second) < MESSAGE_LIMIT
    peer = RawHttp2(limited.port)
    try:
        peer.start_model_infer(HELD_BYTES, b"\x00" * 1000)
        # Until the front has read the held call's prefix, the second call may still pass.
        refused = None
        with grpc.insecure_channel(limited.url) as channel:
            for _ in range(50):
                try:
                    v2.model_infer_bytes(channel)(second, timeout=TIMEOUT_S)
                except grpc.RpcError as error:
                    refused = error
                    break
    finally:
        peer.close()
    assert refused is not None, "the call over the budget was answered"
    error = refused
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, error.details()
    assert "--max-inflight-bytes" in (error.details() or "")
    assert refusals(limited, "grpc") >= 1

    with grpc.insecure_channel(limited.url) as channel:
        answer = pb_answer(v2.model_infer_bytes(channel), second)
    np.testing.assert_allclose(answer, wine_expected[:450], rtol=1e-6)
    v2.assert_wine_served(limited.url, wine_frame, wine_expected)


def refusals(server: ServerHandle, protocol: str) -> float:
    """Requests refused by a transport limit, as the metrics count them (no model named)."""
    text = requests.get(f"{server.http_url}/metrics", timeout=TIMEOUT_S).text
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "arrowsmith_requests_total"
        and sample.labels.get("protocol") == protocol
        and sample.labels.get("model") == ""
        and sample.labels.get("status") == "RESOURCE_EXHAUSTED"
    )


def pb_answer(call: grpc.UnaryUnaryMultiCallable, request: bytes) -> np.ndarray:
    """output-0 of a ModelInfer call sent as bytes, retried while the front still holds the
    bytes of a connection that was just closed."""
    from tritonclient.grpc import service_pb2 as pb

    for _ in range(50):
        try:
            response = pb.ModelInferResponse.FromString(call(request, timeout=TIMEOUT_S))
        except grpc.RpcError as error:
            if error.code() != grpc.StatusCode.RESOURCE_EXHAUSTED:
                raise
            continue
        return v2.output_array(response, "output-0").ravel()
    pytest.fail("the budget was never given back")


def v2_infer_body(frame_: pd.DataFrame) -> bytes:
    inputs = [
        {
            "name": column,
            "shape": [len(frame_), 1],
            "datatype": "FP64",
            "data": frame_[[column]].to_numpy().ravel().tolist(),
        }
        for column in frame_.columns
    ]
    return json.dumps({"inputs": inputs}).encode()


def invocations_body(frame_: pd.DataFrame) -> bytes:
    split = {"columns": list(frame_.columns), "data": frame_.to_numpy().tolist()}
    return json.dumps({"dataframe_split": split}).encode()


def assert_http_served(server: ServerHandle, frame_: pd.DataFrame, expected: np.ndarray) -> None:
    rows = frame_.iloc[:5]
    answer = requests.post(
        f"{server.http_url}/v2/models/{WINE_MODEL_NAME}/infer",
        data=v2_infer_body(rows),
        timeout=TIMEOUT_S,
    )
    assert answer.status_code == 200, answer.text
    np.testing.assert_allclose(answer.json()["outputs"][0]["data"], expected[:5], rtol=1e-6)
    answer = requests.post(
        f"{server.http_url}/invocations",
        data=invocations_body(rows),
        headers={"Content-Type": "application/json"},
        timeout=TIMEOUT_S,
    )
    assert answer.status_code == 200, answer.text
    np.testing.assert_allclose(answer.json()["predictions"], expected[:5], rtol=1e-6)


def big_frame(frame_: pd.DataFrame) -> pd.DataFrame:
    """Rows enough for a JSON body well over MESSAGE_LIMIT."""
    return pd.concat([frame_, frame_], ignore_index=True).iloc[:2500]


def chunked(body: bytes) -> Iterator[bytes]:
    """The body in pieces: requests sends it chunked, without Content-Length."""
    for start in range(0, len(body), 16_384):
        yield body[start : start + 16_384]


@pytest.mark.parametrize("sent", ["announced", "chunked"])
def test_http_bodies_over_the_limit_are_413(
    limited: ServerHandle, wine_frame: pd.DataFrame, wine_expected: np.ndarray, sent: str
) -> None:
    """Over --max-message-size: V2 REST answers 413 {"error": ...}, /invocations 413 in
    MLflow's error shape, whether Content-Length announces the size or not."""
    rows = big_frame(wine_frame)
    cases: list[tuple[str, bytes, dict[str, str], str]] = [
        ("/v2/models/wine/infer", v2_infer_body(rows), {}, "error"),
        ("/invocations", invocations_body(rows), {"Content-Type": "application/json"}, "message"),
    ]
    for path, body, headers, key in cases:
        assert len(body) > MESSAGE_LIMIT
        data: Any = body if sent == "announced" else chunked(body)
        answer = requests.post(
            f"{limited.http_url}{path}", data=data, headers=headers, timeout=TIMEOUT_S
        )
        assert answer.status_code == 413, answer.text
        document = answer.json()
        assert "--max-message-size" in document[key], document
        if path == "/invocations":
            assert "error_code" in document, document
        assert_http_served(limited, wine_frame, wine_expected)


def test_an_inflated_body_over_the_limit_is_413(
    limited: ServerHandle, wine_frame: pd.DataFrame, wine_expected: np.ndarray
) -> None:
    """A gzip body under the limit that inflates past it is refused the same way."""
    body = v2_infer_body(big_frame(wine_frame))
    packed = gzip.compress(body)
    assert len(packed) < MESSAGE_LIMIT < len(body)
    answer = requests.post(
        f"{limited.http_url}/v2/models/wine/infer",
        data=packed,
        headers={"Content-Encoding": "gzip"},
        timeout=TIMEOUT_S,
    )
    assert answer.status_code == 413, answer.text
    assert "limit" in answer.json()["error"]
    assert_http_served(limited, wine_frame, wine_expected)


def post_until(url: str, body: bytes, wanted: Callable[[int], bool]) -> requests.Response:
    """POSTs `body` until the answer's status is `wanted` (the front learns of a held request
    a moment after it is sent), at most 50 times; the last answer."""
    for _ in range(50):
        answer = requests.post(url, data=body, timeout=TIMEOUT_S)
        if wanted(answer.status_code):
            break
    return answer


def test_the_budget_is_shared_by_both_fronts(
    limited: ServerHandle, wine_frame: pd.DataFrame, wine_expected: np.ndarray
) -> None:
    """While a half-sent gRPC call holds 90,000 of the 120,000 bytes, a 40,000-byte HTTP
    body is 429: the process holds at most the budget whichever front the bytes came to."""
    body = v2_infer_body(wine_frame.iloc[:600])
    assert BUDGET - HELD_BYTES < len(body) < MESSAGE_LIMIT
    url = f"{limited.http_url}/v2/models/wine/infer"
    peer = RawHttp2(limited.port)
    try:
        peer.start_model_infer(HELD_BYTES, b"\x00" * 1000)
        answer = post_until(url, body, lambda status: status == 429)
        assert answer.status_code == 429, answer.text
        assert "--max-inflight-bytes" in answer.json()["error"]
    finally:
        peer.close()
    answer = post_until(url, body, lambda status: status != 429)
    assert answer.status_code == 200, answer.text
    assert_http_served(limited, wine_frame, wine_expected)


def test_an_http_body_over_the_inflight_budget_is_429(
    limited: ServerHandle, wine_frame: pd.DataFrame, wine_expected: np.ndarray
) -> None:
    """While a half-sent request announces 90,000 bytes, a 40,000-byte one is 429 before its
    body is read; once the first is gone, it is answered."""
    body = v2_infer_body(wine_frame.iloc[:600])
    assert BUDGET - HELD_BYTES < len(body) < MESSAGE_LIMIT
    held = socket.create_connection(("127.0.0.1", limited.http_port), timeout=TIMEOUT_S)
    url = f"{limited.http_url}/v2/models/wine/infer"
    try:
        held.sendall(
            b"POST /v2/models/wine/infer HTTP/1.1\r\nHost: arrowsmith\r\n"
            + f"Content-Length: {HELD_BYTES}\r\n\r\n".encode()
            + b"{" * 100
        )
        answer = post_until(url, body, lambda status: status == 429)
        assert answer.status_code == 429, answer.text
        assert "--max-inflight-bytes" in answer.json()["error"]
        assert refusals(limited, "rest") >= 1
    finally:
        held.close()
    answer = post_until(url, body, lambda status: status != 429)
    assert answer.status_code == 200, answer.text
    assert_http_served(limited, wine_frame, wine_expected)


def test_bad_limits_are_refused_at_start(wine_model_dir: pathlib.Path) -> None:
    """A budget smaller than the largest message is a configuration error, said at once."""
    from arrowsmith.cli import parse_config

    with pytest.raises(ValueError, match="--max-inflight-bytes"):
        parse_config(
            [
                "serve",
                str(wine_model_dir),
                "--max-message-size",
                "1000",
                "--max-inflight-bytes",
                "999",
            ]
        )


def test_limits_come_from_flags_and_environment(
    wine_model_dir: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each limit is a flag and an ARROWSMITH_* variable; the flag wins."""
    from arrowsmith.cli import parse_config

    monkeypatch.setenv("ARROWSMITH_MAX_CONNECTIONS", "7")
    monkeypatch.setenv("ARROWSMITH_IDLE_TIMEOUT", "0")
    monkeypatch.setenv("ARROWSMITH_KEEPALIVE_INTERVAL", "1.5")
    config = parse_config(["serve", str(wine_model_dir), "--max-concurrent-streams", "9"])
    assert (config.max_connections, config.idle_timeout) == (7, 0)
    assert (config.keepalive_interval, config.max_concurrent_streams) == (1.5, 9)
    assert config.max_inflight_bytes == 1024**3
    with pytest.raises(ValueError, match="--keepalive-timeout"):
        parse_config(["serve", str(wine_model_dir), "--keepalive-timeout", "0"])
