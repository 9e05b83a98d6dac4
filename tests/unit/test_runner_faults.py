"""The runner's fault handling, with stand-ins for the native batcher: a panic of the native
side fails the batch INTERNAL, a loop that breaks answers everything waiting and reports a
fatal fault, and a call past the predict timeout is answered and makes the model not ready
until it returns."""

import os
import threading
import time
from collections.abc import Callable

import pytest
from arrowsmith.batching.runner import BatchRunner
from arrowsmith.batching.watch import RunnerWatch


class PanicException(BaseException):
    """Stands for pyo3's PanicException, which derives from BaseException."""


class FakeBatch:
    def __init__(self, requests: int = 1) -> None:
        self.requests = requests
        self.failed: list[tuple[str, str]] = []
        self.single_batches: list[FakeBatch] = []
        self.completed = False

    def __len__(self) -> int:
        return self.requests

    def fail(self, code: str, message: str) -> None:
        self.failed.append((code, message))

    def complete(self, outputs: list[object], parameters: dict[str, str]) -> None:
        self.completed = True

    def singles(self) -> list["FakeBatch"]:
        self.single_batches = [FakeBatch() for _ in range(self.requests)]
        return self.single_batches

    def rows(self) -> list[int]:
        return [1] * self.requests

    def queue_waits(self) -> list[float]:
        return [0.0] * self.requests


class FakeBatcher:
    def __init__(self, *batches: FakeBatch) -> None:
        self.batches = list(batches)
        self.aborted: list[tuple[str, str]] = []
        self.unavailable: list[str | None] = []
        self.depth = 0

    def next_batch(self) -> FakeBatch | None:
        if not self.batches:
            raise PanicException("the queue's lock was poisoned")
        return self.batches.pop(0)

    def abort(self, code: str, message: str) -> int:
        self.aborted.append((code, message))
        return 3

    def set_unavailable(self, reason: str | None) -> None:
        self.unavailable.append(reason)

    def close(self) -> None:
        pass


class Events:
    def __init__(self) -> None:
        self.fatal: list[str] = []
        self.changes = 0
        self.fatal_seen = threading.Event()

    def readiness_changed(self) -> None:
        self.changes += 1

    def on_fatal(self, reason: str) -> None:
        self.fatal.append(reason)
        self.fatal_seen.set()


def never_called(batch: object) -> tuple[list[object], dict[str, str]]:
    raise AssertionError("no batch is answered here")


def runner(
    batcher: FakeBatcher,
    events: Events,
    timeout: float = 0.0,
    answer: Callable[[object], tuple[list[object], dict[str, str]]] = never_called,
) -> BatchRunner:
    watch = RunnerWatch(timeout, events.readiness_changed, events.on_fatal)
    return BatchRunner("m", batcher, answer, watch)  # type: ignore[arg-type]


def test_a_native_panic_fails_the_batch_internal() -> None:
    def panics(batch: object) -> tuple[list[object], dict[str, str]]:
        raise PanicException("index out of bounds")

    batch = FakeBatch(2)
    runner(FakeBatcher(), Events(), answer=panics).run_batch(batch)  # type: ignore[arg-type]
    for single in batch.single_batches:
        [(code, message)] = single.failed
        assert code == "INTERNAL" and "PanicException: index out of bounds" in message


def test_a_broken_loop_answers_everything_and_reports_a_fatal_fault() -> None:
    """The loop breaks with a batch in its hands: that batch and the queue are answered
    UNAVAILABLE, the model is not ready, and the fault is reported."""
    in_hand = FakeBatch()
    batcher = FakeBatcher(in_hand)
    events = Events()
    model_runner = runner(batcher, events)

    def broken(batch: object) -> None:
        raise RuntimeError("a bug in the loop")

    model_runner.run_batch = broken  # type: ignore[method-assign]
    model_runner.start()
    assert events.fatal_seen.wait(10)
    assert "RuntimeError: a bug in the loop" in events.fatal[0]
    assert not model_runner.healthy
    assert [code for code, _ in batcher.aborted] == ["MODEL_NOT_READY"]
    [(code, message)] = in_hand.failed
    assert code == "MODEL_NOT_READY" and "runner" in message


def test_a_panic_of_next_batch_is_a_fatal_fault() -> None:
    batcher = FakeBatcher()
    events = Events()
    runner(batcher, events).start()
    assert events.fatal_seen.wait(10)
    assert "PanicException" in events.fatal[0]
    assert [code for code, _ in batcher.aborted] == ["MODEL_NOT_READY"]


def test_an_orderly_stop_is_no_fault() -> None:
    batcher = FakeBatcher()
    batcher.next_batch = lambda: None  # type: ignore[method-assign]
    events = Events()
    model_runner = runner(batcher, events)
    model_runner.begin_stop()
    model_runner.start()
    assert model_runner.stop(10)
    assert events.fatal == [] and batcher.aborted == []


def test_a_call_past_the_predict_timeout() -> None:
    """Answered DEADLINE_EXCEEDED and not ready while it runs; ready when it returns; a
    fatal fault only past three times the timeout."""
    events = Events()
    batcher = FakeBatcher()
    model_runner = runner(batcher, events, timeout=0.5)
    batch = FakeBatch(2)
    model_runner._begin_call(batch)  # type: ignore[arg-type]
    started = time.monotonic()
    model_runner.check_call(started + 0.4)
    assert batch.failed == [] and model_runner.healthy
    model_runner.check_call(started + 0.6)
    [(code, message)] = batch.failed
    assert code == "DEADLINE_EXCEEDED" and "--predict-timeout" in message
    assert not model_runner.healthy and batcher.unavailable[-1] is not None
    model_runner.check_call(started + 1.0)
    assert len(batch.failed) == 1 and events.fatal == []
    model_runner._end_call()
    assert model_runner.healthy and batcher.unavailable[-1] is None
    assert events.changes == 2

    model_runner._begin_call(batch)  # type: ignore[arg-type]
    model_runner.check_call(time.monotonic() + 1.6)
    assert events.fatal and "has not returned" in events.fatal[0]
    assert [code for code, _ in batcher.aborted] == ["MODEL_NOT_READY"]


class DrainingBatcher(FakeBatcher):
    """Hands out its batches, then None: closed and drained."""

    def next_batch(self) -> FakeBatch | None:
        return self.batches.pop(0) if self.batches else None


def serve_one_batch() -> tuple[FakeBatch, list[int]]:
    """A runner's whole life over one batch: the batch, and the scheduling policy its
    thread had while answering it."""
    policies: list[int] = []

    def answer(batch: object) -> tuple[list[object], dict[str, str]]:
        policies.append(os.sched_getscheduler(0))
        return [], {}

    batch = FakeBatch()
    model_runner = runner(DrainingBatcher(batch), Events(), answer=answer)
    model_runner.begin_stop()
    model_runner.start()
    assert model_runner.stop(10)
    return batch, policies


def test_the_runner_thread_is_scheduled_as_a_batch_job() -> None:
    """Woken by an arrival, the runner must not preempt the thread that queued it: its
    thread runs under SCHED_BATCH, and the thread that started it is left as it was."""
    batch, policies = serve_one_batch()
    assert batch.completed
    assert policies == [os.SCHED_BATCH]
    assert os.sched_getscheduler(0) != os.SCHED_BATCH


def test_a_runner_the_kernel_refuses_the_policy_serves_as_it_is(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A sandbox that forbids the policy change (seccomp, a container's profile) leaves the
    runner on the default policy, serving."""

    def refused(pid: int, policy: int, parameter: os.sched_param) -> None:
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(os, "sched_setscheduler", refused)
    batch, policies = serve_one_batch()
    assert batch.completed
    assert policies == [os.SCHED_OTHER]
