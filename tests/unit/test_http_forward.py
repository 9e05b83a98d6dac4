"""The HTTP front's forwarding of requests for a model another process serves: the request
reaches that process's Unix socket as it came (method, raw path and query, body, end-to-end
headers) and its answer comes back as it came; a process out of reach is UNAVAILABLE (503),
one out of time DEADLINE_EXCEEDED (504); a client that goes away closes the connection; and
the routes send only a routed model's endpoints there. The other process is a small
asyncio HTTP/1.1 server (h11) on a Unix socket."""

import asyncio
import gzip
import json
import pathlib
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any

import h11
import pytest
from arrowsmith.config import RoutedGroup
from arrowsmith.errors import HTTP_STATUS, DeadlineExceededError, ModelNotReadyError
from arrowsmith.http.asgi import Request, Response
from arrowsmith.http.forward import Forwarder, exchange
from arrowsmith.routing.remote import RoutedModels

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
#: What the echo server adds to each answer, besides its own framing.
ANSWER_HEADERS = [("inference-header-content-length", "11"), ("x-answered-by", "model-group")]


async def read_request(reader: asyncio.StreamReader) -> tuple[h11.Request, bytes]:
    connection = h11.Connection(h11.SERVER)
    head, body = None, b""
    while True:
        event = connection.next_event()
        if event is h11.NEED_DATA:
            connection.receive_data(await reader.read(65536))
        elif isinstance(event, h11.Request):
            head = event
        elif isinstance(event, h11.Data):
            body += bytes(event.data)
        elif isinstance(event, h11.EndOfMessage):
            assert head is not None
            return head, body


async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Answers with what it received, the status a `x-status` header asks for (or 200)."""
    head, body = await read_request(reader)
    headers = [(k.decode(), v.decode()) for k, v in head.headers]
    answer = json.dumps(
        {
            "method": head.method.decode(),
            "target": head.target.decode(),
            "headers": headers,
            "body": body.decode("latin-1"),
        }
    ).encode()
    status = int(dict(headers).get("x-status", "200"))
    lines = [
        f"HTTP/1.1 {status} Whatever",
        "content-type: application/x-echo",
        f"content-length: {len(answer)}",
        "date: Thu, 01 Jan 1970 00:00:00 GMT",
        "connection: close",
        *(f"{name}: {value}" for name, value in ANSWER_HEADERS),
    ]
    writer.write(("\r\n".join(lines) + "\r\n\r\n").encode() + answer)
    await writer.drain()
    writer.close()


async def chunked(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await read_request(reader)
    writer.write(
        b"HTTP/1.1 200 OK\r\ncontent-type: text/csv\r\ntransfer-encoding: chunked\r\n\r\n"
        b"3\r\na,b\r\n4\r\n\n1,2\r\n0\r\n\r\n"
    )
    await writer.drain()
    writer.close()


async def cut_short(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """The process dies halfway through its answer."""
    await read_request(reader)
    writer.write(b'HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n{"outputs"')
    await writer.drain()
    writer.close()


def request(method: str = "POST", body: bytes = b"", **headers: str) -> Request:
    return Request(
        method,
        "/v2/models/my model/infer",
        {"host": "127.0.0.1:8080", **{k.replace("_", "-"): v for k, v in headers.items()}},
        body,
        raw_path=b"/v2/models/my%20model/infer",
        query=b"a=1&b=%2F",
    )


def run_with(handler: Handler, socket: pathlib.Path, client: Callable[[], Awaitable[Any]]) -> Any:
    """`client()` while `handler` serves the Unix socket `socket`."""

    async def main() -> Any:
        server = await asyncio.start_unix_server(handler, path=str(socket))
        async with server:
            return await client()

    return asyncio.run(main())


@pytest.fixture
def socket(tmp_path: pathlib.Path) -> pathlib.Path:
    return tmp_path / "h.sock"


def test_the_request_goes_as_it_came_and_its_answer_comes_back_as_it_came(
    socket: pathlib.Path,
) -> None:
    body = gzip.compress(b'{"inputs": []}')
    sent = request(
        body=body,
        content_type="application/json",
        content_encoding="gzip",
        inference_header_content_length="14",
        x_status="418",
        connection="keep-alive",
        keep_alive="timeout=5",
        transfer_encoding="chunked",
        expect="100-continue",
    )
    answer: Response = run_with(echo, socket, lambda: exchange(sent, str(socket)))

    assert answer.status == 418
    assert answer.content_type == "application/x-echo"
    # What this front writes itself (length, date, connection) is not copied.
    assert answer.headers == tuple(ANSWER_HEADERS)
    received = json.loads(answer.body)
    assert received["method"] == "POST"
    assert received["target"] == "/v2/models/my%20model/infer?a=1&b=%2F"
    assert received["body"].encode("latin-1") == body
    headers = dict(received["headers"])
    assert headers["content-type"] == "application/json"
    assert headers["content-encoding"] == "gzip"
    assert headers["inference-header-content-length"] == "14"
    assert headers["host"] == "127.0.0.1:8080"
    assert headers["content-length"] == str(len(body))
    assert headers["connection"] == "close"
    for hop_by_hop in ("keep-alive", "transfer-encoding", "expect"):
        assert hop_by_hop not in headers
    assert [name for name, _ in received["headers"]].count("connection") == 1


def test_a_get_without_a_body_and_a_chunked_answer(socket: pathlib.Path) -> None:
    answer: Response = run_with(chunked, socket, lambda: exchange(request("GET"), str(socket)))
    assert (answer.status, answer.content_type, answer.body) == (200, "text/csv", b"a,b\n1,2")
    assert answer.headers == ()


def forwarder(socket: pathlib.Path, timeout: float | None = None) -> Forwarder:
    routed = RoutedModels((RoutedGroup(("my model",), "unused", str(socket)),))
    return Forwarder(routed, timeout)


def test_a_socket_nobody_listens_on_is_unavailable(socket: pathlib.Path) -> None:
    forward = forwarder(socket).handler("my model", "rest")
    assert forward is not None
    with pytest.raises(ModelNotReadyError, match="cannot be reached") as raised:
        asyncio.run(forward(request()))  # type: ignore[arg-type]
    assert HTTP_STATUS[raised.value.code] == 503


def test_an_answer_cut_short_is_unavailable(socket: pathlib.Path) -> None:
    forward = forwarder(socket).handler("my model", "rest")
    assert forward is not None
    with pytest.raises(ModelNotReadyError, match="cannot be reached"):
        run_with(cut_short, socket, lambda: forward(request()))


def test_an_answer_later_than_the_timeout_and_its_margin_is_a_deadline(
    socket: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("arrowsmith.http.forward.TIMEOUT_MARGIN_SECONDS", 0.05)

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await read_request(reader)
            await asyncio.sleep(10)
        finally:
            writer.close()

    forward = forwarder(socket, timeout=0.1).handler("my model", "rest")
    assert forward is not None
    with pytest.raises(DeadlineExceededError) as raised:
        run_with(silent, socket, lambda: forward(request()))
    assert HTTP_STATUS[raised.value.code] == 504


def test_a_client_that_goes_away_closes_the_connection(socket: pathlib.Path) -> None:
    received, gone = asyncio.Event(), asyncio.Event()

    async def waits_for_the_end(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        received.set()
        if await reader.read() == b"":
            gone.set()
        writer.close()

    async def client() -> None:
        task = asyncio.create_task(exchange(request(), str(socket)))
        await asyncio.wait_for(received.wait(), 5)
        task.cancel()
        await asyncio.wait_for(gone.wait(), 5)

    run_with(waits_for_the_end, socket, client)


def test_only_a_routed_model_is_forwarded(socket: pathlib.Path) -> None:
    forward = forwarder(socket)
    handler = forward.handler("my model", "mlflow")
    assert isinstance(handler, partial)
    assert handler.keywords == {"socket": str(socket), "model": "my model", "protocol": "mlflow"}
    assert forward.handler("wine", "rest") is None
    no_http = RoutedModels((RoutedGroup(("my model",), "unused", None),))
    assert Forwarder(no_http, None).handler("my model", "rest") is None
