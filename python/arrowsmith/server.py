"""A server process: start the fronts (live at once), load and warm up the models (then
ready), serve until SIGTERM or SIGINT, and drain in-flight requests before exiting."""

from __future__ import annotations

import logging
import signal
import threading
from types import FrameType

from arrowsmith.config import ServerConfig

logger = logging.getLogger("arrowsmith")

#: Seconds in-flight requests get to finish after a stop signal.
DRAIN_SECONDS = 10.0


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


def serve(config: ServerConfig, worker: bool = False) -> int:
    """Runs one server process. `worker`: one of several sharing the ports, whose metrics
    the supervisor serves."""
    configure_logging(config)
    from arrowsmith import _native
    from arrowsmith.dataplane import DataPlane
    from arrowsmith.grpc.server import GrpcFront
    from arrowsmith.models.registry import ModelRegistry, load_model

    if _native.build_profile == "debug":
        logger.warning("the native extension is a debug build: expect it to be slow")
    stop = stop_on_signals()
    registry = ModelRegistry([m.served_name for m in config.models])
    front = GrpcFront(config, DataPlane(registry), reuse_port=worker)
    front.start()
    logger.info("gRPC listening on %s:%d (live, not ready)", config.host, front.port)
    if config.metrics_port and not worker:
        from prometheus_client import start_http_server

        start_http_server(config.metrics_port, addr=config.host)
        logger.info("metrics on http://%s:%d/metrics", config.host, config.metrics_port)
    try:
        for model_config in config.models:
            registry.add(load_model(model_config))
    except Exception:
        logger.exception("loading failed; exiting")
        front.stop(0)
        registry.stop(0)
        return 1
    front.set_serving(True)
    logger.info("ready: serving %s", ", ".join(registry.names()))
    stop.wait()
    front.stop(DRAIN_SECONDS)
    registry.stop(DRAIN_SECONDS)
    logger.info("stopped")
    return 0
