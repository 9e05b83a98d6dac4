"""A server process: start the fronts (live at once), load and warm up the models (then
ready), serve until SIGTERM or SIGINT, and drain in-flight requests before exiting."""

from __future__ import annotations

import gc
import logging
import signal
import threading
from types import FrameType
from typing import TYPE_CHECKING

from arrowsmith.config import ServerConfig

if TYPE_CHECKING:
    from arrowsmith.dataplane import DataPlane
    from arrowsmith.http.server import HttpFront
    from arrowsmith.models.registry import ModelRegistry

logger = logging.getLogger("arrowsmith")

#: Seconds in-flight requests get to finish after a stop signal.
DRAIN_SECONDS = 10.0

#: A server's exit status when its models did not load (restarting it would not help).
EXIT_LOAD_FAILED = 3


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

    def __init__(self, config: ServerConfig, dataplane: DataPlane, worker: bool) -> None:
        from arrowsmith.grpc.server import GrpcFront

        self.grpc = GrpcFront(config, dataplane, reuse_port=worker)
        logger.info("gRPC listening on %s:%d", config.host, self.grpc.port)
        self.http: HttpFront | None = None
        if config.http_port:
            from arrowsmith.http.server import HttpFront

            self.http = HttpFront(config, dataplane, reuse_port=worker)
            self.http.start()
            logger.info("HTTP listening on %s:%d", config.host, self.http.port)

    def set_ready(self, registry: ModelRegistry) -> None:
        for model in registry.models():
            self.grpc.serve_model(model)
        if self.http is not None:
            self.http.wait_started()
        self.grpc.set_serving(True)

    def stop(self, grace_seconds: float) -> None:
        if self.http is not None:
            self.http.stop(grace_seconds)
        self.grpc.stop(grace_seconds)


def serve(config: ServerConfig, worker: bool = False) -> int:
    """Runs one server process. A lone server listens at once (live, not ready) and turns
    ready after loading; a `worker`, one of several sharing the ports, listens only once its
    models are loaded, so the kernel never hands it a connection it cannot answer. Exits
    with EXIT_LOAD_FAILED when a model does not load."""
    configure_logging(config)
    from arrowsmith import _native
    from arrowsmith.dataplane import DataPlane
    from arrowsmith.models.registry import ModelRegistry, load_model

    if _native.build_profile == "debug":
        logger.warning("the native extension is a debug build: expect it to be slow")
    stop = stop_on_signals()
    registry = ModelRegistry([m.served_name for m in config.models])
    dataplane = DataPlane(registry)
    fronts = None if worker else Fronts(config, dataplane, worker)
    if config.metrics_port and not worker:
        from prometheus_client import start_http_server

        start_http_server(config.metrics_port, addr=config.host)
        logger.info("metrics on http://%s:%d/metrics", config.host, config.metrics_port)
    try:
        for model_config in config.models:
            registry.add(load_model(model_config))
    except Exception:
        logger.exception("loading failed; exiting")
        if fronts is not None:
            fronts.stop(0)
        registry.stop(0)
        return EXIT_LOAD_FAILED
    # Everything loaded so far (MLflow, pandas, the models) lives as long as the process:
    # kept out of the collector's full passes, which would otherwise stall requests.
    gc.freeze()
    if fronts is None:
        fronts = Fronts(config, dataplane, worker)
    fronts.set_ready(registry)
    logger.info("ready: serving %s", ", ".join(registry.names()))
    stop.wait()
    fronts.stop(DRAIN_SECONDS)
    registry.stop(DRAIN_SECONDS)
    logger.info("stopped")
    return 0
