"""Tracing and the access log in a server process: set up from the configuration before the
fronts start, flushed when the process stops, and the HTTP front's record of the request
being answered, which the data plane fills in (model, version, job) as it goes."""

from __future__ import annotations

import logging
from contextvars import ContextVar
from dataclasses import dataclass

from arrowsmith import _native
from arrowsmith.config import ServerConfig

logger = logging.getLogger(__name__)

#: Seconds the spans still queued at stop may take to export, and the access-log lines still
#: buffered to be written.
EXPORT_AT_STOP_SECONDS = 5.0
WRITE_AT_STOP_SECONDS = 2.0


def configure(config: ServerConfig) -> None:
    """Turns on what the configuration asks for; raises ValueError when it cannot."""
    if config.tracing is not None:
        tracing = config.tracing
        _native.configure_tracing(
            tracing.endpoint,
            tracing.protocol,
            tracing.service_name,
            tracing.sampler,
            tracing.ratio,
        )
        logger.info(
            "tracing: spans to %s (%s), sampler %s%s",
            tracing.endpoint,
            tracing.protocol,
            tracing.sampler,
            f" {tracing.ratio:g}" if "ratio" in tracing.sampler else "",
        )
    if config.access_log != "off":
        _native.configure_access_log(config.access_log)


def flush(config: ServerConfig) -> None:
    """Writes the access-log lines still buffered and exports the spans still queued
    (bounded), at the end of the process."""
    if config.access_log != "off" and not _native.flush_access_log(WRITE_AT_STOP_SECONDS):
        logger.warning("access-log lines not written within %g s at stop", WRITE_AT_STOP_SECONDS)
    if config.tracing is not None:
        _native.shutdown_tracing(EXPORT_AT_STOP_SECONDS)


@dataclass
class Exchange:
    """The HTTP request being answered, as the access log and its trace see it."""

    observation: _native.Observation
    model: str = ""
    version: str = ""

    def follow(self, job: _native.Job, model: str, version: str) -> None:
        """The request's job (before it is queued) and the model version answering it."""
        self.model = model
        self.version = version
        self.observation.queued(job)


#: The exchange of the request the current task (or handler thread) answers.
CURRENT: ContextVar[Exchange | None] = ContextVar("arrowsmith_exchange", default=None)
