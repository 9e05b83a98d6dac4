"""Requests for a model another process of the server serves (its own environment's): the
request goes as it came (method, path, query, body and end-to-end headers) to that
process's HTTP Unix socket over HTTP/1.1, one connection per request, and its answer comes
back as it came. The other process parses, batches, counts and answers; only its being
out of reach (UNAVAILABLE, 503) or out of time (504) is answered here.

On the event loop, holding no thread; a client that goes away cancels the task, which
closes the connection, so the other process drops the request too."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from functools import partial

import h11

from arrowsmith import metrics
from arrowsmith.errors import DeadlineExceededError, ModelNotReadyError
from arrowsmith.http.asgi import JSON, Request, Response
from arrowsmith.routing.remote import RoutedModels

#: Headers of one connection, not of the request: never forwarded, either way.
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        # The body is sent whole, with its own length.
        "expect",
        "content-length",
    }
)
#: Answer headers this front writes itself.
_WRITTEN_HERE = frozenset({"content-type", "date", "server"})
#: Bytes read from the socket at a time.
_READ_SIZE = 256 * 1024
#: Seconds beyond the request timeout the other process has to answer (its own 504 first).
TIMEOUT_MARGIN_SECONDS = 1.0


class Forwarder:
    """Forwards the requests for the models of `routed` to the processes serving them,
    within `timeout` seconds (None: no limit)."""

    def __init__(self, routed: RoutedModels, timeout: float | None) -> None:
        self.routed = routed
        self.timeout = None if timeout is None else timeout + TIMEOUT_MARGIN_SECONDS

    def handler(self, model: str, protocol: str) -> Callable[[Request], Awaitable[Response]] | None:
        """What answers a request for `model` when another process serves it; else None."""
        group = self.routed.group_of(model)
        if group is None or group.http_uds is None:
            return None
        return partial(self.forward, socket=group.http_uds, model=model, protocol=protocol)

    async def forward(self, request: Request, socket: str, model: str, protocol: str) -> Response:
        try:
            async with asyncio.timeout(self.timeout):
                return await exchange(request, socket)
        except TimeoutError:
            metrics.count_request(model, protocol, "DEADLINE_EXCEEDED")
            raise DeadlineExceededError(
                f"the process serving model '{model}' did not answer within {self.timeout:g} s"
            ) from None
        except (OSError, h11.ProtocolError) as error:
            metrics.count_request(model, protocol, "UNAVAILABLE")
            raise ModelNotReadyError(
                f"model '{model}' is not ready: the process serving it cannot be reached ({error})"
            ) from None


async def exchange(request: Request, socket: str) -> Response:
    """`request` sent to the server on the Unix socket `socket`, and its answer. Raises
    OSError or h11.ProtocolError when the socket does not answer or the connection breaks."""
    reader, writer = await asyncio.open_unix_connection(socket)
    try:
        connection = h11.Connection(h11.CLIENT)
        writer.write(connection.send(_head(request)) + _body(connection, request.body))
        await writer.drain()
        return await _answer(connection, reader)
    finally:
        writer.close()


def _head(request: Request) -> h11.Request:
    headers = [
        (name.encode("latin-1"), value.encode("latin-1"))
        for name, value in request.headers.items()
        if name not in HOP_BY_HOP
    ]
    if "host" not in request.headers:
        headers.append((b"host", b"localhost"))
    headers += [(b"content-length", b"%d" % len(request.body)), (b"connection", b"close")]
    target = request.raw_path + (b"?" + request.query if request.query else b"")
    return h11.Request(method=request.method, target=target, headers=headers)


def _body(connection: h11.Connection, body: bytes) -> bytes:
    data = connection.send(h11.Data(data=body)) if body else b""
    return (data or b"") + (connection.send(h11.EndOfMessage()) or b"")


async def _answer(connection: h11.Connection, reader: asyncio.StreamReader) -> Response:
    head: h11.Response | None = None
    chunks: list[bytes] = []
    while True:
        event = connection.next_event()
        if event is h11.NEED_DATA:
            connection.receive_data(await reader.read(_READ_SIZE))
        elif isinstance(event, h11.Response):
            head = event
        elif isinstance(event, h11.Data):
            chunks.append(bytes(event.data))
        elif isinstance(event, h11.EndOfMessage):
            break
        elif isinstance(event, h11.ConnectionClosed):
            raise ConnectionResetError("the connection closed before the answer")
    assert head is not None  # h11 gives the head before any part of the body
    content_type = JSON
    headers: list[tuple[str, str]] = []
    for raw_name, raw_value in head.headers:
        name, value = raw_name.decode("latin-1"), raw_value.decode("latin-1")
        if name == "content-type":
            content_type = value
        elif name not in HOP_BY_HOP and name not in _WRITTEN_HERE:
            headers.append((name, value))
    return Response(head.status_code, b"".join(chunks), content_type, tuple(headers))
