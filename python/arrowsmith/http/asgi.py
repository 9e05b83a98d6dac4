"""The little of ASGI the HTTP front needs: a whole-body request in, a whole-body response
out. Handlers are plain functions; those that block (inference waits inside the native
batcher) run on the front's thread pool, so the event loop only moves bytes."""

from __future__ import annotations

import asyncio
import contextvars
import inspect
import logging
import threading
import time
from collections.abc import Awaitable, Callable, MutableMapping
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Any, Protocol

from arrowsmith import _native, metrics
from arrowsmith.errors import ArrowsmithError, InternalError, InvalidInputError, QueueFullError
from arrowsmith.observing import CURRENT, Exchange

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
    #: The path as sent (percent-encoded) and the query, for forwarding the request.
    raw_path: bytes = b""
    query: bytes = b""


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


class BodyTooLargeError(InvalidInputError):
    """The request body is over the size limit: HTTP 413. What is left of it is not kept
    (uvicorn reads past it), so the client still gets its answer."""


class OverBudgetError(QueueFullError):
    """Holding the body would pass the budget of request bytes in flight: 429, like a full
    queue."""


def refused(response: Response, error: ArrowsmithError) -> Response:
    """`response` to `error`, with 413 for a body over the size limit."""
    if not isinstance(error, BodyTooLargeError):
        return response
    return Response(413, response.body, response.content_type, response.headers)


class SharedBudget(Protocol):
    """A budget of request bytes other fronts hold too (the native gRPC front's)."""

    @property
    def inflight_bytes(self) -> int: ...
    def reserve_inflight(self, bytes: int) -> bool: ...
    def release_inflight(self, bytes: int) -> None: ...


class InflightBytes:
    """The bytes of request bodies the front holds, taken from the process's budget that
    the gRPC front keeps (`shared`, of `limit` bytes)."""

    def __init__(self, limit: int, shared: SharedBudget) -> None:
        self.limit = limit
        self.shared = shared

    def take(self, size: int) -> None:
        if not self.shared.reserve_inflight(size):
            raise OverBudgetError(
                f"the server is holding {self.shared.inflight_bytes} bytes of requests in "
                f"flight; {size} more would pass its budget of {self.limit} "
                "(--max-inflight-bytes): try again later"
            )

    def give_back(self, size: int) -> None:
        self.shared.release_inflight(size)


def _protocol(path: str) -> str:
    """The metrics' protocol label of a request path."""
    return "rest" if path.startswith("/v2") else "mlflow"


def _span_name(method: str, path: str) -> str | None:
    """The server span's name of an inference request (its route, without the model's
    name); None for the other requests, which are logged but not traced."""
    if method != "POST":
        return None
    if path.startswith("/v2/models/") and path.endswith("/infer"):
        if "/versions/" in path:
            return "POST /v2/models/{model}/versions/{version}/infer"
        return "POST /v2/models/{model}/infer"
    if path == "/invocations":
        return "POST /invocations"
    if path.endswith("/invocations"):
        return "POST /models/{model}/invocations"
    return None


def _exchange(scope: Scope, arrived: float) -> Exchange | None:
    """The request's exchange, when requests are observed."""
    method, path = scope["method"], scope["path"]
    headers = dict(scope["headers"])
    traceparent = headers.get(b"traceparent")
    tracestate = headers.get(b"tracestate")
    observation = _native.Observation.start(
        _protocol(path),
        f"{method} {path}",
        time.perf_counter() - arrived,
        span=_span_name(method, path),
        traceparent=traceparent.decode("latin-1") if traceparent is not None else None,
        tracestate=tracestate.decode("latin-1") if tracestate is not None else None,
    )
    return None if observation is None else Exchange(observation)


def _content_length(scope: Scope) -> int | None:
    for name, value in scope["headers"]:
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


class _Held:
    """What one request holds of the budget; given back when the request is over."""

    def __init__(self, budget: InflightBytes) -> None:
        self.budget = budget
        self.size = 0

    def grow_to(self, size: int) -> None:
        if size > self.size:
            self.budget.take(size - self.size)
            self.size = size

    def release(self) -> None:
        self.budget.give_back(self.size)
        self.size = 0


async def _read_body(scope: Scope, receive: Receive, limit: int, held: _Held) -> bytes | None:
    """The whole body; None when the client went away first. A body over `limit`, or one
    the budget cannot hold, is refused before it is read when Content-Length announces it,
    else as soon as what arrived passes."""
    try:
        declared = _content_length(scope)
        if declared is not None:
            if declared > limit:
                raise BodyTooLargeError(
                    f"the request body of {declared} bytes exceeds the limit of {limit} bytes "
                    "(--max-message-size)"
                )
            held.grow_to(declared)
        chunks = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                raise BodyTooLargeError(
                    f"the request body exceeds the limit of {limit} bytes (--max-message-size)"
                )
            held.grow_to(size)
            chunks.append(chunk)
            if not message.get("more_body", False):
                return chunks[0] if len(chunks) == 1 else b"".join(chunks)
    except (BodyTooLargeError, OverBudgetError):
        metrics.count_request("", _protocol(scope["path"]), "RESOURCE_EXHAUSTED")
        raise


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
    def __init__(
        self,
        router: Router,
        executor: Executor,
        max_body_size: int,
        max_inflight_bytes: int,
        shared_budget: SharedBudget,
    ) -> None:
        self._router = router
        self._executor = executor
        self._max_body_size = max_body_size
        #: Bytes of request bodies held until their requests are answered.
        self.inflight = InflightBytes(max_inflight_bytes, shared_budget)
        #: Whether requests are logged or traced (set up before the front starts).
        self._observing = _native.observing()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return  # lifespan events are off; websockets are not served
        held = _Held(self.inflight)
        exchange = None
        if self._observing:
            exchange = _exchange(scope, time.perf_counter())
            CURRENT.set(exchange)
        try:
            await self._answer(scope, receive, send, held, exchange)
        finally:
            held.release()
            if exchange is not None:
                # Still open when the client went away first, or the send failed.
                exchange.observation.finish("499", exchange.model, exchange.version)

    async def _answer(
        self, scope: Scope, receive: Receive, send: Send, held: _Held, exchange: Exchange | None
    ) -> None:
        endpoint = self._router(scope["method"], scope["path"])
        failure: str | None = None
        try:
            body = await _read_body(scope, receive, self._max_body_size, held)
            if body is None:
                return
            headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
            request = Request(
                scope["method"],
                scope["path"],
                headers,
                body,
                raw_path=scope.get("raw_path") or scope["path"].encode(),
                query=scope.get("query_string", b""),
            )
            if endpoint.blocking:
                loop = asyncio.get_running_loop()
                # The handler thread sees this request's exchange.
                answered = await loop.run_in_executor(
                    self._executor, contextvars.copy_context().run, endpoint.handler, request
                )
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
            failure = str(error)
            response = endpoint.errors(error)
        except Exception as error:
            logger.exception("%s %s failed", scope["method"], scope["path"])
            failure = f"internal error: {error}"
            response = endpoint.errors(InternalError(failure))
        response_headers = [
            (b"content-type", response.content_type.encode()),
            (b"content-length", str(len(response.body)).encode()),
            *((k.encode(), v.encode()) for k, v in response.headers),
        ]
        traceparent = None if exchange is None else exchange.observation.traceparent
        if traceparent is not None:
            response_headers.append((b"traceparent", traceparent.encode()))
        await send(
            {"type": "http.response.start", "status": response.status, "headers": response_headers}
        )
        await send({"type": "http.response.body", "body": response.body})
        if exchange is not None:
            if failure is None and response.status >= 400:
                failure = f"HTTP {response.status}"
            exchange.observation.finish(
                str(response.status), exchange.model, exchange.version, failure
            )
