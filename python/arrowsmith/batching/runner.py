"""One runner thread per model: it takes whole batches from the model's native batcher
(where request threads wait without the interpreter lock), builds the model input,
predicts once, and hands the outputs back to be split by rows. If the model raises on a
batch of several requests, each request is retried alone so only the guilty one fails.

A runner survives whatever a batch throws at it (any `BaseException` of the model's,
a panic of the native side); should its thread end anyway while the model is served, the
model turns not ready at once, its queue is answered UNAVAILABLE, and the process is told
to exit so that it is replaced. A `RunnerWatch` times the model calls: one that outlives
`--predict-timeout` has its requests answered DEADLINE_EXCEEDED and leaves the model not
ready until it returns; one that never returns ends the process."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from arrowsmith import _native, metrics
from arrowsmith.errors import ArrowsmithError, ErrorCode
from arrowsmith.payload import batch_input, model_params
from arrowsmith.predictions import content_type, output_tensors, select_outputs
from arrowsmith.runner import predict

if TYPE_CHECKING:
    from arrowsmith.models.registry import LoadedModel

logger = logging.getLogger(__name__)

#: A model call still running this many times `--predict-timeout` after it began is taken
#: for one that never returns: the process exits so that it is replaced.
STUCK_FACTOR = 3.0
#: The watch looks at the running calls this often (at most; less with a short timeout).
WATCH_INTERVAL_SECONDS = 0.1


def _ignore(*_: object) -> None:
    pass


class RunnerWatch:
    """What the runners of a process report to, and the one thread that times their model
    calls. `readiness_changed()` is called whenever a model turns ready or not ready;
    `fatal(reason)` when a model can no longer answer in this process (its runner ended, or
    a call outlived the hard limit), so the process should exit and be replaced.

    `predict_timeout`: seconds a model call may take; 0 leaves calls untimed."""

    def __init__(
        self,
        predict_timeout: float = 0.0,
        readiness_changed: Callable[[], None] = _ignore,
        fatal: Callable[[str], None] = _ignore,
    ) -> None:
        self.predict_timeout = predict_timeout
        self.stuck_after = predict_timeout * STUCK_FACTOR
        self.readiness_changed = readiness_changed
        self.fatal = fatal
        self._runners: list[ModelRunner] = []
        self._stopped = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def add(self, runner: ModelRunner) -> None:
        with self._lock:
            self._runners = [*self._runners, runner]
            if self.predict_timeout > 0 and self._thread is None:
                self._thread = threading.Thread(target=self._watch, name="watch", daemon=True)
                self._thread.start()

    def stop(self) -> None:
        self._stopped.set()

    def _watch(self) -> None:
        interval = min(WATCH_INTERVAL_SECONDS, self.predict_timeout / 5)
        while not self._stopped.wait(interval):
            now = time.monotonic()
            for runner in self._runners:
                try:
                    runner.check_call(now)
                except Exception:
                    logger.exception("timing the calls of model %s failed", runner.model.name)


class ModelRunner:
    """Owns a model's batcher and the thread that drains it."""

    def __init__(
        self, model: LoadedModel, batcher: _native.Batcher, watch: RunnerWatch | None = None
    ) -> None:
        self.model = model
        self.batcher = batcher
        self._watch = watch if watch is not None else RunnerWatch()
        self._thread = threading.Thread(target=self._run, name=f"runner-{model.name}", daemon=True)
        self._metrics = metrics.BatchMetrics(model.name)
        self._lock = threading.Lock()
        #: The batch being predicted and when (monotonic) its call began.
        self._call: tuple[_native.Batch, float] | None = None
        #: The current call outlived the predict timeout: its requests are answered and the
        #: model is not ready until it returns.
        self._overran = False
        #: The current call outlived the hard limit, or the thread ended: nothing to wait for.
        self._gone = False
        #: An orderly stop is under way: the thread ending is expected.
        self._stopping = False

    def start(self) -> None:
        self._watch.add(self)
        self._thread.start()

    def begin_stop(self) -> None:
        """The server is stopping: the end of the thread is no fault, and a call that
        returns late leaves the model not ready."""
        self._stopping = True

    def stop(self, timeout: float) -> bool:
        """Refuses new requests, lets queued ones finish, then ends the thread; whether it
        did within `timeout` seconds."""
        self._stopping = True
        self.batcher.close()
        if not self._gone:
            self._thread.join(timeout)
        return not self._thread.is_alive()

    def _run(self) -> None:
        cause: BaseException | None = None
        try:
            while (batch := self.batcher.next_batch()) is not None:
                self._metrics.observe_batch(batch.rows(), batch.queue_waits(), self.batcher.depth)
                started = time.perf_counter()
                self._begin_call(batch)
                self.run_batch(batch)
                self._end_call()
                self._metrics.predict_time.observe(time.perf_counter() - started)
        except BaseException as error:
            cause = error
        finally:
            if cause is not None or not self._stopping:
                self._ended(cause)

    def _begin_call(self, batch: _native.Batch) -> None:
        with self._lock:
            self._call = (batch, time.monotonic())

    def _end_call(self) -> None:
        with self._lock:
            self._call = None
            overran, self._overran = self._overran, False
            if overran and not self._gone:
                self.batcher.set_unavailable(None)
                self.model.ready = not self._stopping
        if overran:
            logger.warning("model %s returned from its overlong call; ready again", self.model.name)
            self._watch.readiness_changed()

    def check_call(self, now: float) -> None:
        """Called by the watch: acts on a call that has run too long."""
        name, limit = self.model.name, self._watch.predict_timeout
        with self._lock:
            if self._call is None or self._gone:
                return
            batch, started = self._call
            elapsed = now - started
            overran = elapsed > limit and not self._overran
            stuck = elapsed > self._watch.stuck_after
            if overran:
                self._overran = True
                batch.fail(
                    ErrorCode.DEADLINE_EXCEEDED.value,
                    f"model '{name}' did not answer within --predict-timeout ({limit:g} s)",
                )
                self.batcher.set_unavailable(
                    f"model '{name}' is not ready: a call of it has run longer than "
                    f"--predict-timeout ({limit:g} s)"
                )
                self.model.ready = False
            if stuck:
                self._gone = True
        if overran:
            logger.error(
                "model %s: a call of %d requests has run %.1f s, past --predict-timeout; "
                "answered DEADLINE_EXCEEDED, not ready until it returns",
                name,
                len(batch),
                elapsed,
            )
            self._watch.readiness_changed()
        if stuck:
            reason = f"a call of model '{name}' has not returned after {elapsed:.1f} s"
            self._abandon(reason)
            self._watch.fatal(reason)

    def _ended(self, cause: BaseException | None) -> None:
        """The thread is ending with the model served, or with an error: nobody will take
        its queue any more, so everything waiting is answered now."""
        if cause is None and self._gone:
            return  # a call given up for stuck came back to a closed queue: already handled
        why = "without an error" if cause is None else f"{type(cause).__name__}: {cause}"
        reason = f"the runner of model '{self.model.name}' ended ({why})"
        logger.critical("%s", reason, exc_info=cause)
        self.model.ready = False
        try:
            with self._lock:
                self._gone = True
                call, self._call = self._call, None
            if call is not None:
                call[0].fail(ErrorCode.MODEL_NOT_READY.value, f"{reason}; the server restarts")
            self._abandon(reason)
        finally:
            if not self._stopping:
                self._watch.fatal(reason)

    def _abandon(self, reason: str) -> None:
        self.model.ready = False
        answered = self.batcher.abort(
            ErrorCode.MODEL_NOT_READY.value, f"model '{self.model.name}' is not ready: {reason}"
        )
        if not self._stopping:
            self._watch.readiness_changed()
        if answered:
            logger.error("answered %d queued requests UNAVAILABLE", answered)

    def run_batch(self, batch: _native.Batch) -> None:
        """Predicts one batch and answers its requests. Whatever is raised inside is answered
        as an error: the model's exceptions (any `BaseException`) are MODEL_ERROR, after a
        retry request by request; anything else (a panic of the native side) INTERNAL."""
        try:
            payload, enforced = batch_input(batch, self.model)
            predictions = predict(self.model, payload, model_params(batch, self.model), enforced)
            outputs = output_tensors(predictions, [o.name for o in self.model.outputs])
            batch.complete(
                select_outputs(outputs, batch.requested_outputs),
                {"content_type": content_type(predictions)},
            )
        except BaseException as error:
            if len(batch) > 1 and not self._overran:
                logger.info(
                    "a batch of %d requests failed (%s); retrying one by one", len(batch), error
                )
                for single in batch.singles():
                    self.run_batch(single)
                return
            if isinstance(error, ArrowsmithError):
                batch.fail(error.code.value, error.message)
            else:
                logger.exception("unexpected failure predicting with %s", self.model.name)
                batch.fail("INTERNAL", f"internal error: {type(error).__name__}: {error}")
