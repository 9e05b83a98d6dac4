"""Transport-neutral inference: request bytes in, response bytes out, through the native
decoder, the model's signature, the model and the native encoder. The HTTP front calls this
and nothing below it (the native gRPC front finds models and batchers itself)."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Callable
from dataclasses import dataclass

from arrowsmith import __version__, _native, metrics
from arrowsmith.errors import (
    ArrowsmithError,
    DeadlineExceededError,
    ErrorCode,
)
from arrowsmith.models.loaded import LoadedModel
from arrowsmith.observing import CURRENT
from arrowsmith.routing.remote import RoutedModels
from arrowsmith.serving.repository import ModelRepository, ServedVersion

SERVER_NAME = "arrowsmith"


@dataclass(frozen=True)
class ServerMetadata:
    name: str
    version: str
    extensions: tuple[str, ...]


class DataPlane:
    def __init__(
        self,
        repository: ModelRepository,
        request_timeout: float | None = None,
        routed: RoutedModels | None = None,
    ) -> None:
        self.repository = repository
        #: The models other processes of the server serve, which the fronts forward to.
        self.routed = routed if routed is not None else RoutedModels(())
        #: Seconds an HTTP request may wait for its answer (`--request-timeout`); None: no
        #: limit. gRPC calls carry their client's deadline instead.
        self.request_timeout = request_timeout
        #: Made on the event loop by the first `infer_async` (the HTTP front's one loop).
        self._loop_answers: LoopAnswers | None = None

    @property
    def ready(self) -> bool:
        """The server is ready: the models here, and those other processes serve for it."""
        return self.repository.ready and self.routed.ready

    def server_metadata(self) -> ServerMetadata:
        return ServerMetadata(SERVER_NAME, __version__, ())

    def model(self, name: str, version: str = "") -> LoadedModel:
        return self.repository.get(name, version).model

    def _job(
        self, request_bytes: bytes, timeout: float | None, counted: Counted
    ) -> tuple[ServedVersion, _native.Job]:
        """The request decoded, its model version found and its job made (signature
        applied)."""
        started = time.perf_counter()
        request = _native.decode_request(request_bytes)
        exchange = CURRENT.get()
        if exchange is not None:
            exchange.observation.decoded()
        served = self.repository.get(request.model_name, request.model_version)
        counted.model = served.name
        job = request.job(served.model.signature, timeout)
        if exchange is not None:
            exchange.follow(job, served.name, served.version)
        metrics.observe_stage(
            served.name, counted.protocol, "decode", time.perf_counter() - started
        )
        return served, job

    def infer(
        self,
        request_bytes: bytes,
        timeout: float | None = None,
        on_cancel: Callable[[Callable[[], None]], object] | None = None,
        protocol: str = "grpc",
    ) -> bytes:
        """Answers a serialized ModelInferRequest with a serialized ModelInferResponse,
        blocking until the model's batcher has answered it.

        `timeout`: seconds left before the client's deadline. `on_cancel` registers a
        callback the transport calls when the client goes away."""
        counted = Counted(protocol)
        with counted:
            served, job = self._job(request_bytes, timeout, counted)
            if on_cancel is not None:
                on_cancel(job.cancel)
            return served.batcher.submit(job)

    async def infer_async(self, request_bytes: bytes, protocol: str) -> bytes:
        """`infer` for the HTTP front's event loop: the wait for the batch holds no thread.
        Answered DEADLINE_EXCEEDED after `request_timeout`; if the waiting task is cancelled
        (the client went away), the job leaves the queue unrun."""
        if self._loop_answers is None:
            self._loop_answers = LoopAnswers()
        counted = Counted(protocol)
        with counted:
            served, job = self._job(request_bytes, self.request_timeout, counted)
            answer = self._loop_answers.submit(served.batcher, job, self.request_timeout)
            try:
                return await answer
            except asyncio.CancelledError:
                job.cancel()
                raise


class Counted:
    """Counts one request by model, protocol and outcome when its block ends. Only served
    models' names become labels, never a name a client made up."""

    def __init__(self, protocol: str) -> None:
        self.protocol = protocol
        self.model = ""

    def __enter__(self) -> Counted:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, _: object
    ) -> None:
        if error is None:
            metrics.count_request(self.model, self.protocol, "OK")
        elif isinstance(error, ArrowsmithError):
            metrics.count_request(self.model, self.protocol, error.code.value)
        elif isinstance(error, asyncio.CancelledError):
            metrics.count_request(self.model, self.protocol, ErrorCode.CANCELLED.value)


class LoopAnswers:
    """Jobs whose answers arrive on an asyncio event loop: the native side marks each settled
    job on a socket the loop watches, and the loop resolves that job's future, so a request
    waiting for its batch holds no thread. Create and use it on the loop's own thread.

    A job given a timeout is answered DEADLINE_EXCEEDED by a timer of the loop when it runs
    out, and cancelled: the native side notices a deadline only when its runner looks at
    the queue, and a runner stuck in a long call does not."""

    def __init__(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._completions = _native.Completions()
        self._pending: dict[
            int, tuple[_native.Job, asyncio.Future[bytes], asyncio.TimerHandle | None]
        ] = {}
        self._tokens = itertools.count()
        self._loop.add_reader(self._completions.fileno, self._settle)

    def submit(
        self, batcher: _native.Batcher, job: _native.Job, timeout: float | None = None
    ) -> asyncio.Future[bytes]:
        token = next(self._tokens)
        future: asyncio.Future[bytes] = self._loop.create_future()
        timer = None
        if timeout is not None:
            timer = self._loop.call_later(timeout, self._expire, token, timeout)
        self._pending[token] = (job, future, timer)
        try:
            self._completions.submit(batcher, job, token)
        except BaseException:
            del self._pending[token]
            if timer is not None:
                timer.cancel()
            raise
        return future

    def _expire(self, token: int, timeout: float) -> None:
        """The job's time ran out: its future fails, and the job is cancelled (which settles
        it, so `_settle` then forgets it)."""
        pending = self._pending.get(token)
        if pending is None:
            return
        job, future, _ = pending
        if not future.done():
            future.set_exception(
                DeadlineExceededError(
                    f"no answer within the server's request timeout ({timeout:g} s)"
                )
            )
        job.cancel()

    def _settle(self) -> None:
        for token in self._completions.take():
            job, future, timer = self._pending.pop(token)
            if timer is not None:
                timer.cancel()
            if future.done():
                continue
            try:
                future.set_result(job.answer())
            except ArrowsmithError as error:
                future.set_exception(error)
