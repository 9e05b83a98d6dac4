"""Prometheus metrics: what the batcher decided and what it cost, per model and worker.

With several worker processes, each writes its samples to a shared folder
(prometheus_client's multiprocess mode, PROMETHEUS_MULTIPROC_DIR set by the supervisor
before any import of prometheus_client) and the supervisor serves the sum; the `worker`
label keeps the workers apart."""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Iterable
from typing import Any

from prometheus_client import REGISTRY, Counter, Gauge, Histogram
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

#: This process's worker index ("0" when there is only one).
WORKER = os.environ.get("ARROWSMITH_WORKER_INDEX", "0")


class _BeforeScrape(Collector):
    """Runs callbacks whenever the registry is collected, ahead of the metrics below (it is
    registered first), so a scrape includes counts kept outside Python until then."""

    def __init__(self) -> None:
        self.callbacks: list[Callable[[], None]] = []

    def collect(self) -> Iterable[Metric]:
        for callback in self.callbacks:
            callback()
        return []


_BEFORE_SCRAPE = _BeforeScrape()
REGISTRY.register(_BEFORE_SCRAPE)


def before_scrape(callback: Callable[[], None]) -> None:
    """Calls `callback` at every scrape of this process's registry, before its samples."""
    _BEFORE_SCRAPE.callbacks.append(callback)


_ROW_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096, 16384)
_SECOND_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1)

REQUESTS = Counter(
    "arrowsmith_requests",
    "Inference requests answered, by model, protocol and status.",
    ["model", "protocol", "status", "worker"],
)
BATCH_ROWS = Histogram(
    "arrowsmith_batch_rows", "Rows per model call.", ["model", "worker"], buckets=_ROW_BUCKETS
)
BATCH_REQUESTS = Histogram(
    "arrowsmith_batch_requests",
    "Requests per model call.",
    ["model", "worker"],
    buckets=_ROW_BUCKETS,
)
QUEUE_WAIT = Histogram(
    "arrowsmith_queue_wait_seconds",
    "Time a request waited for its batch to start.",
    ["model", "worker"],
    buckets=_SECOND_BUCKETS,
)
PREDICT_TIME = Histogram(
    "arrowsmith_predict_seconds",
    "Time of one model call (input building, predict, output split).",
    ["model", "worker"],
    buckets=_SECOND_BUCKETS,
)
STAGE_TIME = Histogram(
    "arrowsmith_stage_seconds",
    "Time of one request in one stage: parse (an HTTP body to a V2 request), decode (native "
    "decode and signature), render (a V2 response to an HTTP body).",
    ["model", "protocol", "stage", "worker"],
    buckets=_SECOND_BUCKETS,
)
QUEUE_DEPTH = Gauge(
    "arrowsmith_queue_depth",
    "Requests waiting when the last batch was formed.",
    ["model", "worker"],
    multiprocess_mode="livesum",
)


class BatchMetrics:
    """One model's batch metrics, their label lookups done once (a lookup costs about as
    much as the observation)."""

    def __init__(self, model: str) -> None:
        self.rows = BATCH_ROWS.labels(model, WORKER)
        self.requests = BATCH_REQUESTS.labels(model, WORKER)
        self.queue_wait = QUEUE_WAIT.labels(model, WORKER)
        self.depth = QUEUE_DEPTH.labels(model, WORKER)
        self.predict_time = PREDICT_TIME.labels(model, WORKER)

    def observe_batch(self, rows: list[int], queue_waits: list[float], depth: int) -> None:
        self.rows.observe(sum(rows))
        self.requests.observe(len(rows))
        for seconds in queue_waits:
            self.queue_wait.observe(seconds)
        self.depth.set(depth)


@functools.lru_cache(maxsize=1024)
def _stage(model: str, protocol: str, stage: str) -> Any:
    """A stage histogram's child: label lookups cost as much as observations, so each is done
    once (labels are served models' names, protocols and stages: a bounded set)."""
    return STAGE_TIME.labels(model, protocol, stage, WORKER)


@functools.lru_cache(maxsize=1024)
def _requests(model: str, protocol: str, status: str) -> Any:
    return REQUESTS.labels(model, protocol, status, WORKER)


def observe_stage(model: str, protocol: str, stage: str, seconds: float) -> None:
    _stage(model, protocol, stage).observe(seconds)


def observe_stages(model: str, protocol: str, stage: str, seconds: list[float]) -> None:
    """Several requests' times in one stage."""
    child = _stage(model, protocol, stage)
    for value in seconds:
        child.observe(value)


def count_request(model: str, protocol: str, status: str, count: int = 1) -> None:
    _requests(model, protocol, status).inc(count)


_SWAP_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120, 300)

MODEL_LOADS = Counter(
    "arrowsmith_model_loads",
    "Model version loads, by outcome (loaded or failed).",
    ["model", "version", "outcome", "worker"],
)
MODEL_UNLOADS = Counter(
    "arrowsmith_model_unloads",
    "Model versions taken out of service and drained.",
    ["model", "version", "worker"],
)
MODEL_SWAPS = Counter(
    "arrowsmith_model_swaps",
    "Times a followed reference moved and its new version took over, by that version.",
    ["model", "version", "worker"],
)
SWAP_TIME = Histogram(
    "arrowsmith_model_swap_seconds",
    "From a followed reference seen moved (a poll or a webhook) to its new version answering.",
    ["model", "worker"],
    buckets=_SWAP_BUCKETS,
)
VERSIONS_LOADED = Gauge(
    "arrowsmith_model_versions_loaded",
    "Versions of a model being served.",
    ["model", "worker"],
    multiprocess_mode="livesum",
)


def count_load(model: str, version: str, outcome: str) -> None:
    MODEL_LOADS.labels(model, version, outcome, WORKER).inc()


def count_unload(model: str, version: str) -> None:
    MODEL_UNLOADS.labels(model, version, WORKER).inc()


def observe_swap(model: str, version: str, seconds: float) -> None:
    MODEL_SWAPS.labels(model, version, WORKER).inc()
    SWAP_TIME.labels(model, WORKER).observe(seconds)


def set_versions_loaded(model: str, count: int) -> None:
    VERSIONS_LOADED.labels(model, WORKER).set(count)
