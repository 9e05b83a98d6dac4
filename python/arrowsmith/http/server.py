"""The HTTP server: uvicorn (httptools parser, uvloop event loop) on a thread of the server
process, on sockets bound here (TCP, so that workers can share the port with SO_REUSEPORT;
a Unix socket with --http-uds), HTTPS with --tls-cert, with its own pool of handler threads
that wait in the native batcher without the interpreter lock."""

from __future__ import annotations

import logging
import math
import os
import socket
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

from arrowsmith.config import ServerConfig
from arrowsmith.dataplane import DataPlane
from arrowsmith.http.asgi import AsgiApp, Request, Response, SharedBudget
from arrowsmith.http.forward import Forwarder
from arrowsmith.http.invocations import MlflowScoring
from arrowsmith.http.repository_rest import RepositoryRest
from arrowsmith.http.routes import Routes
from arrowsmith.http.tls import ReloadableContext, TlsFiles
from arrowsmith.http.v2_rest import V2Rest
from arrowsmith.serving.repository_api import RepositoryApi
from arrowsmith.unix_socket import UnixListener

if TYPE_CHECKING:
    import ssl

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
        repository_api: RepositoryApi | None = None,
    ) -> None:
        """`shared_budget`: the gRPC front's budget of request bytes in flight, so that the
        process holds at most --max-inflight-bytes whichever front the bytes came to.
        `repository_api`: serves /v2/repository/... when given."""
        self._tls: ReloadableContext | None = None
        if config.tls_cert is not None and config.tls_key is not None:
            files = TlsFiles(config.tls_cert, config.tls_key, config.tls_client_ca)
            self._tls = ReloadableContext(files)
        self._tcp: socket.socket | None = None
        self._unix: UnixListener | None = None
        self._listen(config, reuse_port)
        #: The TCP port; None without a TCP listener (--uds-only, or --http-port 0).
        self.port: int | None = None if self._tcp is None else self._tcp.getsockname()[1]
        self._executor = ThreadPoolExecutor(config.http_threads, thread_name_prefix="http")
        routes = Routes(
            V2Rest(dataplane, config.max_message_size, self._executor),
            MlflowScoring(dataplane, config.models[0].served_name, self._executor),
            MetricsPage(),
            RepositoryRest(repository_api) if repository_api is not None else None,
            Forwarder(dataplane.routed, config.request_timeout or None) if config.routes else None,
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

    def _listen(self, config: ServerConfig, reuse_port: bool) -> None:
        if config.http_tcp:
            self._tcp = listening_socket(config.host, config.http_port, reuse_port)
        if config.http_uds is not None:
            try:
                self._unix = UnixListener(config.http_uds)
            except OSError:
                if self._tcp is not None:
                    self._tcp.close()
                raise

    def reload_tls(self) -> None:
        """Reads --tls-cert, --tls-key and --tls-client-ca again: connections opened from
        now on get the new certificate (and client CAs); open ones keep theirs. If a file
        cannot be used, raises TlsFileError naming it and keeps the certificate in use.
        Without TLS, does nothing."""
        if self._tls is not None:
            self._tls.reload()

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
                # Nothing here reads the client's address: X-Forwarded-* is left unread.
                proxy_headers=False,
                backlog=_BACKLOG,
                # Past it, uvicorn answers 503 at once.
                limit_concurrency=self._max_connections,
                timeout_keep_alive=self._idle_timeout,
                ssl_context_factory=None if self._tls is None else self._ssl_context,
            )
        )
        self._server.run(sockets=self._sockets())

    def _ssl_context(
        self, config: uvicorn.Config, default: Callable[[], ssl.SSLContext]
    ) -> ssl.SSLContext:
        """Hands uvicorn the context that reloads change (instead of one of its own)."""
        assert self._tls is not None
        return self._tls.context

    def _sockets(self) -> list[socket.socket]:
        tcp = [] if self._tcp is None else [self._tcp]
        return tcp + ([] if self._unix is None else [self._unix.socket])

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
        if self._tcp is not None:
            self._tcp.close()
        if self._unix is not None:
            self._unix.close()
