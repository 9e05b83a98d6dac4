"""A server process: start the fronts (live at once), load and warm up the models (then
ready), serve until SIGTERM or SIGINT, and drain in-flight requests before exiting.

SIGHUP reads the TLS certificate files again, for both fronts, without dropping a connection.
SIGUSR1 looks up the registry references models follow at once (the supervisor of
`--workers` sends it to every worker when one of them received an MLflow webhook).
On a stop signal, readiness and gRPC health turn false first; then every front and every
model's runner drains at the same time, within one budget (`--drain-timeout`). A model that
can no longer answer here (its runner ended, or a call of it never returns) makes the
process do the same and exit with EXIT_MODEL_FAILED, so that whoever runs it (the
supervisor of `--workers`, Kubernetes) starts it again."""

from __future__ import annotations

import gc
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from types import FrameType
from typing import TYPE_CHECKING

from arrowsmith.config import ServerConfig
from arrowsmith.routing.remote import RoutedModels

if TYPE_CHECKING:
    from arrowsmith.dataplane import DataPlane
    from arrowsmith.http.server import HttpFront
    from arrowsmith.routing.watch import HealthWatch
    from arrowsmith.serving.repository import ModelRepository
    from arrowsmith.serving.repository_api import RepositoryApi

logger = logging.getLogger("arrowsmith")

#: A server's exit status when its models did not load (restarting it would not help).
EXIT_LOAD_FAILED = 3
#: A server's exit status when a loaded model can no longer answer in it: its runner thread
#: ended, or a call of it never returned, or a front stopped serving (sysexits'
#: EX_SOFTWARE). Restarting it helps.
EXIT_MODEL_FAILED = 70
#: A worker's exit status when the version its models resolve to needs another environment
#: than the one it runs in: the supervisor builds that one and starts the worker in it.
EXIT_ENVIRONMENT_CHANGED = 4
#: Names a file a worker touches once it serves (set when it replaces another worker).
READY_FILE_ENV = "ARROWSMITH_READY_FILE"
#: How often the main thread checks that every front still serves.
FRONT_CHECK_SECONDS = 0.1


def configure_logging(config: ServerConfig) -> None:
    logging.basicConfig(
        level=config.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )


def stop_on_signals() -> threading.Event:
    """An event set by the first SIGTERM or SIGINT."""
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        logger.info("received %s, stopping", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    return stop


class Fronts:
    """The process's listeners: gRPC always, HTTP when configured."""

    def __init__(
        self,
        config: ServerConfig,
        dataplane: DataPlane,
        repository_api: RepositoryApi,
        worker: bool,
    ) -> None:
        from arrowsmith.grpc.server import GrpcFront

        self._tls = config.tls_cert is not None
        self.grpc = GrpcFront(config, dataplane, worker, repository_api)
        # At once, before anything else: a worker listens only with its models loaded, and a
        # connection must not find the front without them.
        dataplane.repository.attach(self.grpc)
        if self.grpc.port is not None:
            logger.info("gRPC listening on %s:%d", config.host, self.grpc.port)
        if self.grpc.flight_port is not None:
            logger.info("Arrow Flight listening on %s:%d", config.host, self.grpc.flight_port)
        if config.grpc_uds:
            logger.info("gRPC listening on unix:%s", config.grpc_uds)
        self.http: HttpFront | None = None
        if config.serves_http:
            from arrowsmith.http.server import HttpFront

            self.http = HttpFront(
                config,
                dataplane,
                reuse_port=worker,
                shared_budget=self.grpc.native,
                repository_api=repository_api,
            )
            self.http.start()
            if self.http.port is not None:
                logger.info("HTTP listening on %s:%d", config.host, self.http.port)
            if config.http_uds:
                logger.info("HTTP listening on unix:%s", config.http_uds)

    def wait_started(self) -> None:
        """Until every front serves; health is the `Lifecycle`'s to set."""
        if self.http is not None:
            self.http.wait_started()

    def reload_tls(self) -> None:
        """Both fronts read their certificate files again; a front whose files are not
        usable keeps the ones it has, and says so."""
        if not self._tls:
            logger.info("SIGHUP: no TLS files to reload")
            return
        fronts: list[tuple[str, Callable[[], object]]] = [("gRPC", self.grpc.reload_tls)]
        if self.http is not None:
            fronts.append(("HTTP", self.http.reload_tls))
        for name, reload in fronts:
            try:
                reload()
            except Exception as error:
                logger.error("the %s front keeps its TLS files: %s", name, error)
            else:
                logger.info("the %s front reloaded its TLS files", name)

    def ended(self) -> list[str]:
        """The fronts that no longer serve (their thread ended)."""
        ended = [] if self.grpc.running else ["gRPC"]
        if self.http is not None and not self.http.running:
            ended.append("HTTP")
        return ended

    def stops(self) -> list[tuple[str, Callable[[float], object]]]:
        """Each front's `stop(grace_seconds)`, by name."""
        http = [] if self.http is None else [("HTTP", self.http.stop)]
        return [*http, ("gRPC", self.grpc.stop)]

    def stop(self, grace_seconds: float) -> None:
        for _, stop in self.stops():
            stop(grace_seconds)


class Lifecycle:
    """How the process ends, and gRPC health in step with readiness. A stop signal ends it
    with 0 once drained; `fatal` (a model or a front cannot answer any more) with
    EXIT_MODEL_FAILED.
    Health follows the repository's readiness, and the routed models', once the fronts serve
    (a model turns not ready while a call of it overruns, say) and stays NOT_SERVING from the
    moment a stop begins."""

    def __init__(self) -> None:
        self.repository: ModelRepository | None = None
        #: The models other processes serve for this one (see `arrowsmith.routing`).
        self.routed = RoutedModels(())
        self.stop = stop_on_signals()
        self._reload = threading.Event()
        self._look_up = threading.Event()
        #: What SIGUSR1 asks for: the followed references looked up now.
        self.on_look_up: Callable[[], None] | None = None
        signal.signal(signal.SIGHUP, lambda signum, frame: self._reload.set())
        signal.signal(signal.SIGUSR1, lambda signum, frame: self._look_up.set())
        self.exit_code = 0
        self._fronts: Fronts | None = None
        self._stopping = False
        self._lock = threading.Lock()

    def serving(self, fronts: Fronts) -> None:
        with self._lock:
            self._fronts = fronts
            self._update_health()

    def readiness_changed(self) -> None:
        with self._lock:
            self._update_health()

    def _update_health(self) -> None:
        if self._fronts is not None and self.repository is not None:
            serving = self.repository.ready and self.routed.ready and not self._stopping
            self._fronts.grpc.publish_readiness(self.repository, self.routed, serving)

    def wait(self) -> None:
        """Until a stop: a signal, `fatal`, or a front whose thread ended (a dead front is
        `fatal` too: the process cannot answer through it, so it stops to be replaced). A
        SIGHUP meanwhile reloads the fronts' TLS files."""
        while not self.stop.wait(FRONT_CHECK_SECONDS):
            if self._fronts is None:
                continue
            if self._reload.is_set():
                self._reload.clear()
                self._fronts.reload_tls()
            if self._look_up.is_set():
                self._look_up.clear()
                if self.on_look_up is not None:
                    self.on_look_up()
            ended = self._fronts.ended()
            if ended:
                self.fatal(f"the {' and '.join(ended)} front stopped serving")

    def begin_stop(self) -> None:
        """Readiness and health turn false, at once."""
        if self.repository is not None:
            self.repository.begin_stop()
        with self._lock:
            self._stopping = True
            self._update_health()

    def fatal(self, reason: str) -> None:
        """A model can no longer answer in this process: it stops, to be replaced."""
        with self._lock:
            if self.exit_code == 0:
                self.exit_code = EXIT_MODEL_FAILED
                logger.critical(
                    "%s: this process stops and exits with %d to be replaced",
                    reason,
                    EXIT_MODEL_FAILED,
                )
            self._stopping = True
            self._update_health()
        self.stop.set()


def drain(fronts: Fronts | None, repository: ModelRepository, budget: float) -> list[str]:
    """Stops every front and every model's runner at the same time, each letting what it
    holds finish, all within `budget` seconds; returns the names of those still busy then
    (a stop that returns False did not finish either)."""
    deadline = time.monotonic() + budget
    stops = [] if fronts is None else fronts.stops()
    stops += repository.runners()
    finished: set[str] = set()

    def run(name: str, stop: Callable[[float], object]) -> None:
        if stop(budget) is not False:
            finished.add(name)

    threads = [
        threading.Thread(target=run, args=(name, stop), name=f"drain {name}", daemon=True)
        for name, stop in stops
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))
    return [name for name, _ in stops if name not in finished]


def _exit_now(code: int) -> None:
    """Ends the process without waiting for threads that may never end (a model call that
    does not return, a handler still waiting for it)."""
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def serve(config: ServerConfig, worker: bool = False) -> int:
    """Runs one server process. A lone server listens at once (live, not ready) and turns
    ready after loading; a `worker`, one of several sharing the ports, listens only once its
    models are loaded, so the kernel never hands it a connection it cannot answer. Exits
    with EXIT_LOAD_FAILED when a model does not load."""
    configure_logging(config)
    from arrowsmith import _native, observing
    from arrowsmith.batching.watch import RunnerWatch
    from arrowsmith.dataplane import DataPlane
    from arrowsmith.environments.running import NeedsOtherEnvironment
    from arrowsmith.serving.follower import RegistryFollower
    from arrowsmith.serving.repository import ModelRepository
    from arrowsmith.serving.repository_api import RepositoryApi

    if _native.build_profile == "debug":
        logger.warning("the native extension is a debug build: expect it to be slow")
    try:
        observing.configure(config)
    except ValueError as error:
        # Not a fault a restart would mend.
        logger.error("%s", error)
        return EXIT_LOAD_FAILED
    _native.allow_shared_memory(config.allow_shared_memory)
    lifecycle = Lifecycle()
    stop = lifecycle.stop
    watch = RunnerWatch(config.predict_timeout, lifecycle.readiness_changed, lifecycle.fatal)
    repository = ModelRepository(
        config.models, watch, config.drain_timeout, lifecycle.readiness_changed
    )
    lifecycle.repository = repository
    lifecycle.routed = RoutedModels(config.routes, lifecycle.readiness_changed)
    health_watch = _watch_routed(lifecycle.routed)
    follower = RegistryFollower(
        repository,
        config.poll_interval,
        _supervisor_teller(os.getppid(), signal.SIGUSR2) if worker else None,
    )
    lifecycle.on_look_up = follower.check_now
    repository_api = RepositoryApi(
        repository,
        follower,
        config.model_control_mode,
        config.webhook_secret,
        on_webhook=_supervisor_teller(os.getppid(), signal.SIGUSR1) if worker else None,
    )
    dataplane = DataPlane(repository, config.request_timeout or None, lifecycle.routed)
    fronts = None if worker else Fronts(config, dataplane, repository_api, worker)
    if config.metrics_port and not worker:
        from prometheus_client import start_http_server

        start_http_server(config.metrics_port, addr=config.host)
        logger.info("metrics on http://%s:%d/metrics", config.host, config.metrics_port)
    try:
        repository.load_configured()
    except NeedsOtherEnvironment as error:
        logger.info("%s; exiting for the supervisor to start this worker in it", error)
        if fronts is not None:
            fronts.stop(0)
        repository.stop(0)
        return EXIT_ENVIRONMENT_CHANGED
    except Exception:
        logger.exception("loading failed; exiting")
        if fronts is not None:
            fronts.stop(0)
        repository.stop(0)
        return EXIT_LOAD_FAILED
    # Everything loaded so far (MLflow, pandas, the models) lives as long as the process:
    # kept out of the collector's full passes, which would otherwise stall requests.
    gc.freeze()
    if not stop.is_set():
        if fronts is None:
            fronts = Fronts(config, dataplane, repository_api, worker)
        fronts.wait_started()
        lifecycle.serving(fronts)
        follower.start()
        logger.info("ready: serving %s", ", ".join(repository.names()))
        ready_file = os.environ.get(READY_FILE_ENV) if worker else None
        if ready_file:
            with open(ready_file, "w"):
                pass
    lifecycle.wait()
    follower.stop()
    if health_watch is not None:
        health_watch.stop()
    lifecycle.begin_stop()
    busy = drain(fronts, repository, config.drain_timeout)
    watch.stop()
    code = lifecycle.exit_code
    if busy:
        logger.error(
            "still busy after --drain-timeout (%g s): %s; exiting anyway",
            config.drain_timeout,
            ", ".join(busy),
        )
    else:
        logger.info("stopped")
    observing.flush(config)
    if busy or code != 0:
        _exit_now(code)
    return code


def _watch_routed(routed: RoutedModels) -> HealthWatch | None:
    """Follows the readiness of the processes serving the routed models (grpcio is
    imported only by the processes that route some)."""
    if not routed.groups:
        return None
    from arrowsmith.routing.watch import HealthWatch

    health_watch = HealthWatch(routed)
    health_watch.start()
    return health_watch


def _supervisor_teller(supervisor: int, signum: signal.Signals) -> Callable[[], None]:
    """How a worker tells its supervisor something: SIGUSR1 on a webhook (every worker then
    looks at the registry now), SIGUSR2 when a model needs another environment. Once the
    supervisor is gone (the worker was re-parented), nobody is told: the signal must not
    reach whatever process adopted it."""

    def tell() -> None:
        if os.getppid() == supervisor:
            os.kill(supervisor, signum)

    return tell
