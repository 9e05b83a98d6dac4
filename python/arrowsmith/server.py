"""The server process: start the fronts (live at once), load and warm up the models (then
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


def serve(config: ServerConfig) -> int:
    logging.basicConfig(
        level=config.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    from arrowsmith import _native
    from arrowsmith.dataplane import DataPlane
    from arrowsmith.grpc.server import GrpcFront
    from arrowsmith.models.loader import default_name
    from arrowsmith.models.registry import ModelRegistry, load_model

    if _native.build_profile == "debug":
        logger.warning("the native extension is a debug build: expect it to be slow")
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        logger.info("received %s, stopping", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    registry = ModelRegistry([m.name or default_name(m.uri) for m in config.models])
    front = GrpcFront(config, DataPlane(registry))
    front.start()
    logger.info("gRPC listening on %s:%d (live, not ready)", config.host, front.port)
    try:
        for model_config in config.models:
            registry.add(load_model(model_config.uri, model_config.name))
    except Exception:
        logger.exception("loading failed; exiting")
        front.stop(0)
        return 1
    front.set_serving(True)
    logger.info("ready: serving %s", ", ".join(registry.names()))
    stop.wait()
    front.stop(DRAIN_SECONDS)
    logger.info("stopped")
    return 0
