"""The one thread that times the model calls of a process's runners, and what they report
to: readiness changes, and faults that mean the process must be replaced."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Protocol

logger = logging.getLogger(__name__)

#: A model call still running this many times `--predict-timeout` after it began is taken
#: for one that never returns: the process exits so that it is replaced.
STUCK_FACTOR = 3.0
#: The watch looks at the running calls this often (at most; less with a short timeout).
WATCH_INTERVAL_SECONDS = 0.1


def _ignore(*_: object) -> None:
    pass


class Timed(Protocol):
    """What the watch needs of a runner."""

    label: str

    def check_call(self, now: float) -> None: ...


class RunnerWatch:
    """`readiness_changed()` is called whenever a runner turns healthy or not;
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
        self._runners: list[Timed] = []
        self._stopped = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def add(self, runner: Timed) -> None:
        with self._lock:
            self._runners = [*self._runners, runner]
            if self.predict_timeout > 0 and self._thread is None:
                self._thread = threading.Thread(target=self._watch, name="watch", daemon=True)
                self._thread.start()

    def remove(self, runner: Timed) -> None:
        """A runner that ended in order (its version was retired) is no longer timed."""
        with self._lock:
            self._runners = [r for r in self._runners if r is not runner]

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
                    logger.exception("timing the calls of %s failed", runner.label)
