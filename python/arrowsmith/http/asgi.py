"""The little of ASGI the HTTP front needs: a whole-body request in, a whole-body response
out. Handlers are plain functions; those that block (inference waits inside the native
batcher) run on the front's thread pool, so the event loop only moves bytes."""

from __future__ import annotations

import asyncio
import inspect
import logging
import threading
from collections.abc import Awaitable, Callable, MutableMapping
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Any

from arrowsmith.errors import ArrowsmithError, InternalError, InvalidInputError

logger = logging.getLogger(__name__)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

JSON = "application/json"
#: How long a handler runs before the front starts watching for its client's disconnect.
WATCH_AFTER_SECONDS = 0.01


class Disconnect:
    """What to do if the client goes away before its answer (cancel its job, say); callbacks
    may be added from any thread, and one added after the fact runs at once."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._callbacks: list[Callable[[], object]] = []
        self.happened = False

    def add(self, callback: Callable[[], object]) -> None:
        with self._lock:
            if not self.happened:
                self._callbacks.append(callback)
                return
        callback()

    def fire(self) -> None:
        with self._lock:
            self.happened = True
            callbacks, self._callbacks = self._callbacks, []
        for callback in callbacks:
            callback()


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    #: Lower-case header names; the last of repeated headers wins.
    headers: dict[str, str]
    body: bytes
    disconnect: Disconnect = field(default_factory=Disconnect, compare=False, repr=False)


@dataclass(frozen=True)
class Response:
    status: int
    body: bytes
    content_type: str = JSON
    headers: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class Endpoint:
    """What answers one route: the handler, whether it blocks (then it runs on the thread
    pool; otherwise on the event loop, where it may return an awaitable), and how its
    protocol words an error raised before or around the handler."""

    handler: Callable[[Request], Response | Awaitable[Response]]
    blocking: bool
    errors: Callable[[ArrowsmithError], Response]


#: (method, path) -> the endpoint; unknown routes get an endpoint answering "not found".
Router = Callable[[str, str], Endpoint]


async def _read_body(receive: Receive, limit: int) -> bytes | None:
    """The whole body; None when the client went away first."""
    chunks = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise InvalidInputError(f"the request body exceeds the limit of {limit} bytes")
        chunks.append(chunk)
        if not message.get("more_body", False):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)


async def _watch_disconnect(
    receive: Receive, disconnect: Disconnect, task: asyncio.Task[Any]
) -> None:
    """Once the whole body is read, the next message is the client's going away."""
    while (await receive())["type"] != "http.disconnect":
        pass
    disconnect.fire()
    task.cancel()


async def _unless_gone(
    answered: Awaitable[Response], receive: Receive, disconnect: Disconnect
) -> Response | None:
    """The handler's response; None when the client went away first (the handler is then
    cancelled, and `disconnect`'s callbacks have run). The watch for a disconnect starts
    only once the answer has taken WATCH_AFTER_SECONDS: most answers come sooner, and a
    disconnect before then is still reported when it starts."""
    task = asyncio.current_task()
    assert task is not None
    loop = asyncio.get_running_loop()
    watchers: list[asyncio.Task[None]] = []

    def watch() -> None:
        watchers.append(loop.create_task(_watch_disconnect(receive, disconnect, task)))

    timer = loop.call_later(WATCH_AFTER_SECONDS, watch)
    try:
        return await answered
    except asyncio.CancelledError:
        if disconnect.happened:
            task.uncancel()
            return None
        raise
    finally:
        timer.cancel()
        for watcher in watchers:
            watcher.cancel()


class AsgiApp:
    def __init__(self, router: Router, executor: Executor, max_body_size: int) -> None:
        self._router = router
        self._executor = executor
        self._max_body_size = max_body_size

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return  # lifespan events are off; websockets are not served
        endpoint = self._router(scope["method"], scope["path"])
        try:
            body = await _read_body(receive, self._max_body_size)
            if body is None:
                return
            headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
            request = Request(scope["method"], scope["path"], headers, body)
            if endpoint.blocking:
                loop = asyncio.get_running_loop()
                answered = await loop.run_in_executor(self._executor, endpoint.handler, request)
            else:
                answered = endpoint.handler(request)
            if inspect.isawaitable(answered):
                gone_or_response = await _unless_gone(answered, receive, request.disconnect)
                if gone_or_response is None:
                    return
                response = gone_or_response
            else:
                response = answered
        except ArrowsmithError as error:
            response = endpoint.errors(error)
        except Exception as error:
            logger.exception("%s %s failed", scope["method"], scope["path"])
            response = endpoint.errors(InternalError(f"internal error: {error}"))
        await send(
            {
                "type": "http.response.start",
                "status": response.status,
                "headers": [
                    (b"content-type", response.content_type.encode()),
                    (b"content-length", str(len(response.body)).encode()),
                    *((k.encode(), v.encode()) for k, v in response.headers),
                ],
            }
        )
        await send({"type": "http.response.body", "body": response.body})
