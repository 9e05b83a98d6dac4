"""One runner thread per batcher: it takes whole batches from the native batcher (where
request threads wait without the interpreter lock), has them answered by a callable, and
hands the outputs back to be split by rows. If the callable raises on a batch of several
requests, each request is retried alone so only the guilty one fails.

A runner survives whatever a batch throws at it (any `BaseException`, a panic of the
native side); should its thread end anyway while it serves, it turns unhealthy at once, its
queue is answered UNAVAILABLE, and the process is told to exit so that it is replaced. Its
`RunnerWatch` times the calls: one that outlives `--predict-timeout` has its requests
answered DEADLINE_EXCEEDED and leaves the runner unhealthy until it returns; one that never
returns ends the process. Knows no MLflow: what a batch means is the callable's business."""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from typing import Any

from arrowsmith import _native, metrics
from arrowsmith.batching.watch import RunnerWatch
from arrowsmith.errors import ArrowsmithError, ErrorCode

logger = logging.getLogger(__name__)

#: Answers one batch: the output tensors to send (already narrowed to what the requests
#: asked for) and the response parameters; raises to fail it.
AnswerBatch = Callable[[_native.Batch], tuple[list[Any], dict[str, str]]]


class BatchRunner:
    """Owns a batcher and the thread that drains it. `name` is the model's, for messages,
    logs and metrics; `healthy` is False while a call overruns and once the thread is gone."""

    def __init__(
        self,
        name: str,
        batcher: _native.Batcher,
        answer: AnswerBatch,
        watch: RunnerWatch | None = None,
    ) -> None:
        self.name = name
        self.label = f"model {name}"
        self.batcher = batcher
        self.healthy = True
        self._answer = answer
        self._watch = watch if watch is not None else RunnerWatch()
        self._thread = threading.Thread(target=self._run, name=f"runner-{name}", daemon=True)
        self._metrics = metrics.BatchMetrics(name)
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

    @property
    def stopping(self) -> bool:
        """A stop has begun: the batcher takes nothing new (or soon will not)."""
        return self._stopping

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
        self._watch.remove(self)
        return not self._thread.is_alive()

    def _run(self) -> None:
        cause: BaseException | None = None
        _as_batch_job()
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
                self.healthy = True
        if overran:
            logger.warning("model %s returned from its overlong call; ready again", self.name)
            self._watch.readiness_changed()

    def check_call(self, now: float) -> None:
        """Called by the watch: acts on a call that has run too long."""
        name, limit = self.name, self._watch.predict_timeout
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
                self.healthy = False
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
        reason = f"the runner of model '{self.name}' ended ({why})"
        logger.critical("%s", reason, exc_info=cause)
        self.healthy = False
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
        self.healthy = False
        answered = self.batcher.abort(
            ErrorCode.MODEL_NOT_READY.value, f"model '{self.name}' is not ready: {reason}"
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
            outputs, parameters = self._answer(batch)
            batch.complete(outputs, parameters)
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
                logger.exception("unexpected failure predicting with %s", self.name)
                batch.fail("INTERNAL", f"internal error: {type(error).__name__}: {error}")


def _as_batch_job() -> None:
    """Has the kernel schedule the calling thread as a batch job (SCHED_BATCH, same
    priority): an arrival that wakes it no longer preempts the thread that queued it (a
    front thread, or the HTTP thread holding the interpreter lock), which goes on queueing
    the requests behind it until it waits; the runner then takes them all as one batch
    instead of waking once per request to wait for the lock. With the server on one busy
    core this tripled the requests per batch and raised W1 by about a fifth and
    `/invocations` by two fifths (benchmarks/RESULTS.md). Where the kernel has no such
    policy or refuses it, the thread runs as it is."""
    policy = getattr(os, "SCHED_BATCH", None)
    if policy is None:
        return
    try:
        os.sched_setscheduler(0, policy, os.sched_param(0))
    except OSError as error:
        logger.debug("the runner keeps the default scheduling policy: %s", error)
