"""MLflow's model object, loaded on a thread of its own while the model already serves.

A model restored from a snapshot (models/snapshot.py) serves its estimator-block call at
once; MLflow itself (about as long to import as the rest of the start) is needed only by
the other paths: a DataFrame call, MLflow's parameter checks, `/invocations`. Those paths
see a stand-in that waits for the load and then is the loaded object in all but identity
(attributes, `isinstance`)."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

logger = logging.getLogger(__name__)


class DeferredLoad:
    """One load run on a daemon thread; `value()` waits for it and returns (or raises)
    what it gave. `on_failure(reason)` is called once if the load fails."""

    def __init__(
        self, what: str, load: Callable[[], Any], on_failure: Callable[[str], None] | None = None
    ) -> None:
        self._what = what
        self._load = load
        self._on_failure = on_failure
        self._done = threading.Event()
        self._value: Any = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name=f"load {what}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        try:
            self._value = self._load()
        except BaseException as error:
            # Kept for every caller that needs the value, and reported: the component is dead.
            logger.error("%s could not be loaded: %s", self._what, error, exc_info=True)
            self._error = error
            if self._on_failure is not None:
                self._on_failure(f"{self._what} could not be loaded: {error}")
        finally:
            self._done.set()

    def value(self) -> Any:
        self._done.wait()
        if self._error is not None:
            raise RuntimeError(f"{self._what} could not be loaded: {self._error}")
        return self._value


class Deferred:
    """Stands in for the object `resolve` gives, waiting for it on first use."""

    __slots__ = ("_resolve",)

    def __init__(self, resolve: Callable[[], Any]) -> None:
        object.__setattr__(self, "_resolve", resolve)

    @property  # type: ignore[misc]
    def __class__(self) -> type:
        """The loaded object's class, so that `isinstance` sees it."""
        return type(self._resolve())

    def __getattr__(self, name: str) -> Any:
        return getattr(self._resolve(), name)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._resolve()(*args, **kwargs)

    def __repr__(self) -> str:
        return repr(self._resolve())
