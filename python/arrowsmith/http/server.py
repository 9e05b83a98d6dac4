"""The HTTP server: uvicorn (httptools parser, uvloop event loop) on a thread of the server
process, on a socket bound here so that workers can share the port (SO_REUSEPORT), with
its own pool of handler threads that wait in the native batcher without the interpreter
lock."""

from __future__ import annotations

import logging
import math
import os
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

from arrowsmith.config import ServerConfig
from arrowsmith.dataplane import DataPlane
from arrowsmith.http.asgi import AsgiApp, Request, Response, SharedBudget
from arrowsmith.http.invocations import MlflowScoring
from arrowsmith.http.routes import Routes
from arrowsmith.http.v2_rest import V2Rest

if TYPE_CHECKING:
    import uvicorn

logger = logging.getLogger(__name__)

#: How often start-up checks whether uvicorn serves.
_POLL_SECONDS = 0.005
#: Connections the kernel holds for uvicorn (its own default).
_BACKLOG = 2048
#: A keep-alive timeout no connection reaches (a day).
_NEVER_SECONDS = 86400


def listening_socket(host: str, port: int, reuse_port: bool) -> socket.socket:
    """A TCP socket listening at once, so that connections made before uvicorn runs wait
    in the kernel's queue instead of being refused."""
    family, kind, protocol, _, address = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    sock = socket.socket(family, kind, protocol)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind(address)
    sock.listen(_BACKLOG)
    return sock


class MetricsPage:
    """Prometheus text of this process's registry, or, when workers share a multiprocess
    folder, of every worker (what the supervisor's --metrics-port serves)."""

    def __init__(self) -> None:
        from prometheus_client import REGISTRY, CollectorRegistry
        from prometheus_client.multiprocess import MultiProcessCollector

        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            self.registry = CollectorRegistry()
            MultiProcessCollector(self.registry)  # type: ignore[no-untyped-call]
        else:
            self.registry = REGISTRY

    def __call__(self, request: Request) -> Response:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return Response(200, generate_latest(self.registry), CONTENT_TYPE_LATEST)


class HttpFront:
    """A started HTTP server; `stop` lets in-flight requests finish."""

    def __init__(
        self,
        config: ServerConfig,
        dataplane: DataPlane,
        reuse_port: bool,
        shared_budget: SharedBudget,
    ) -> None:
        """`shared_budget`: the gRPC front's budget of request bytes in flight, so that the
        process holds at most --max-inflight-bytes whichever front the bytes came to."""
        self._socket = listening_socket(config.host, config.http_port, reuse_port)
        self.port: int = self._socket.getsockname()[1]
        self._executor = ThreadPoolExecutor(config.grpc_threads, thread_name_prefix="http")
        routes = Routes(
            V2Rest(dataplane, config.max_message_size, self._executor),
            MlflowScoring(dataplane, config.models[0].served_name, self._executor),
            MetricsPage(),
        )
        self._app = AsgiApp(
            routes,
            self._executor,
            config.max_message_size,
            config.max_inflight_bytes,
            shared_budget,
        )
        self._max_connections = config.max_connections
        # uvicorn closes a keep-alive connection after this long without a request; 0 (never
        # on gRPC) is "as good as never" here.
        self._idle_timeout = math.ceil(config.idle_timeout) or _NEVER_SECONDS
        self._server: uvicorn.Server | None = None
        self._thread = threading.Thread(target=self._serve, name="http", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _serve(self) -> None:
        import uvicorn

        self._server = uvicorn.Server(
            uvicorn.Config(
                self._app,
                loop="uvloop",
                http="httptools",
                lifespan="off",
                log_config=None,
                access_log=False,
                server_header=False,
                backlog=_BACKLOG,
                # Past it, uvicorn answers 503 at once.
                limit_concurrency=self._max_connections,
                timeout_keep_alive=self._idle_timeout,
            )
        )
        self._server.run(sockets=[self._socket])

    @property
    def running(self) -> bool:
        """False once uvicorn's thread has ended."""
        return self._thread.is_alive()

    def wait_started(self) -> None:
        """Blocks until uvicorn accepts connections (or has failed to start)."""
        while self._thread.is_alive() and not (self._server is not None and self._server.started):
            time.sleep(_POLL_SECONDS)
        if not self._thread.is_alive():
            raise RuntimeError("the HTTP server failed to start")

    def stop(self, grace_seconds: float) -> None:
        if self._server is not None:
            self._server.config.timeout_graceful_shutdown = int(grace_seconds)
            self._server.should_exit = True
        self._thread.join(grace_seconds + 1)
        self._executor.shutdown(wait=False, cancel_futures=True)
        self._socket.close()
