"""Following registry references: models served from `models:/Name@alias`, `/Stage` or
`/latest` are looked up again every `--poll-interval` seconds, and at once when a webhook
says the registry changed; a reference that moved has its new version loaded and swapped in
by the repository. A failed look-up or load leaves what is served and is tried again at the
next poll."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from arrowsmith.environments.running import NeedsOtherEnvironment
from arrowsmith.errors import ArrowsmithError
from arrowsmith.models import loader
from arrowsmith.serving.repository import ModelRepository

logger = logging.getLogger(__name__)


class RegistryFollower:
    """One thread per process; `check_now` wakes it. References are looked up with the
    repository's `resolve`."""

    def __init__(
        self,
        repository: ModelRepository,
        poll_interval: float,
        on_environment_needed: Callable[[], None] | None = None,
    ) -> None:
        """`on_environment_needed`: called when a reference moved to a version whose
        environment is not this process's (the supervisor then builds it and replaces the
        workers); None: such a version is only logged."""
        self._repository = repository
        self._on_environment_needed = on_environment_needed
        #: Versions already reported as needing another environment, by model.
        self._reported: dict[str, str] = {}
        self._poll_interval = poll_interval
        self._wake = threading.Event()
        self._stopped = threading.Event()
        #: Registered model names a webhook asked about; empty set with a wake: all.
        self._asked: set[str] = set()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="follower", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopped.set()
        self._wake.set()

    def check_now(self, registered_name: str | None = None) -> None:
        """Looks at the references (of one registered model, or all) now, not at the next
        poll."""
        with self._lock:
            if registered_name is not None:
                self._asked.add(registered_name)
        self._wake.set()

    def followed(self) -> list[tuple[str, str]]:
        """(served name, URI) of every model that follows a reference."""
        followed = []
        for name in self._repository.names():
            config = self._repository.config(name)
            reference = loader.registry_reference(config.uri) if config is not None else None
            if config is not None and reference is not None and reference.moves:
                followed.append((name, config.uri))
        return followed

    def _run(self) -> None:
        timeout = self._poll_interval if self._poll_interval > 0 else None
        while not self._stopped.is_set():
            woken = self._wake.wait(timeout)
            if self._stopped.is_set():
                return
            with self._lock:
                asked, self._asked = self._asked, set()
                self._wake.clear()
            only = asked if woken and asked else None
            try:
                self.check(only)
            except Exception:
                # The thread must outlive any fault: a follower that died would leave the
                # server serving an old version with nothing to say so.
                logger.exception("looking at the registry failed; trying again at the next poll")

    def check(self, registered_names: set[str] | None = None) -> None:
        """One look at the references followed (only those of `registered_names` when
        given); each that moved is swapped."""
        for name, uri in self.followed():
            reference = loader.registry_reference(uri)
            if registered_names is not None and (
                reference is None or reference.name not in registered_names
            ):
                continue
            seen = time.monotonic()
            try:
                source = self._repository.resolve(uri)
            except Exception as error:
                logger.warning("model %s: %s could not be looked up: %s", name, uri, error)
                continue
            if source.version == self._repository.default_version(name):
                continue
            logger.info("model %s: %s now points to version %s", name, uri, source.version)
            try:
                self._repository.follow(name, source, seen)
            except NeedsOtherEnvironment as error:
                self._environment_needed(name, source.version, error)
            except ArrowsmithError as error:
                logger.error("model %s keeps its version: %s", name, error.message)
            except Exception:
                logger.exception("model %s keeps its version: swapping failed", name)

    def _environment_needed(self, name: str, version: str, error: NeedsOtherEnvironment) -> None:
        """Says once per version that it needs another environment, and asks for one at
        every look until workers run in it."""
        if self._reported.get(name) != version:
            self._reported[name] = version
            logger.info("%s; this version is served once workers run in it", error)
        if self._on_environment_needed is not None:
            self._on_environment_needed()
