"""Run `arrowsmith serve` as a real child process for the end-to-end tests.

Each server gets its own free port and log file, so tests never fight over a fixed port and
a failed start-up shows the server's own words. Readiness is judged the way a client sees it:
tritonclient's ServerReady over gRPC (with TLS, or over the Unix socket, as the server
listens), or, for tests of the HTTP front alone, /v2/health/ready over HTTP.
"""

import contextlib
import dataclasses
import http.client
import os
import pathlib
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from typing import Any, Literal, Protocol

import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from support.certs import TlsFiles, client_context
from support.unix_http import UnixHTTPConnection

STARTUP_TIMEOUT_S = 60.0
POLL_INTERVAL_S = 0.1
STOP_TIMEOUT_S = 10.0
LOG_TAIL_CHARS = 4000
# gRPC backs off exponentially between connection attempts (1 s, 1.6 s, ... up to minutes),
# so a server that starts slowly would be noticed late; keep retrying every ~0.1 s instead.
FAST_RECONNECT_ARGS = [
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 200),
]


#: What a grpc-core client (grpcio, tritonclient) needs on a `unix:` target. Since grpc
#: 1.57 it sends the socket's percent-encoded path as `:authority`, which is not a valid
#: authority and which the server's HTTP/2 layer (h2, as every hyper and tonic server)
#: refuses with PROTOCOL_ERROR; grpc-go, grpcurl and Kubernetes send `localhost`.
UNIX_CHANNEL_ARGS = [("grpc.default_authority", "localhost")]


def free_port() -> int:
    """Ask the kernel for a free 127.0.0.1 TCP port (free now; the server binds it next)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclasses.dataclass(frozen=True)
class Listening:
    """How a test server listens beyond its free TCP ports, and so how clients reach it."""

    #: Serve TLS with the server certificate of these files.
    tls: TlsFiles | None = None
    #: Also require client certificates signed by `tls.ca`; clients present `tls.client_cert`.
    mutual_tls: bool = False
    grpc_uds: pathlib.Path | None = None
    http_uds: pathlib.Path | None = None
    #: No TCP listeners: gRPC on `grpc_uds` only, HTTP on `http_uds` only.
    uds_only: bool = False
    #: What readiness is polled over: gRPC (ServerReady) or HTTP (/v2/health/ready).
    ready_over: Literal["grpc", "http"] = "grpc"

    def args(self) -> list[str]:
        """The `arrowsmith serve` flags that make the server listen so."""
        args = []
        if self.tls is not None:
            args += ["--tls-cert", str(self.tls.server_cert), "--tls-key", str(self.tls.server_key)]
            if self.mutual_tls:
                args += ["--tls-client-ca", str(self.tls.ca)]
        if self.grpc_uds is not None:
            args += ["--grpc-uds", str(self.grpc_uds)]
        if self.http_uds is not None:
            args += ["--http-uds", str(self.http_uds)]
        return args + (["--uds-only"] if self.uds_only else [])


#: The default: plain TCP ports only, readiness over gRPC.
PLAIN_TCP = Listening()


@dataclasses.dataclass(frozen=True)
class ServerHandle:
    """A running server: where to reach it, its process and its log."""

    port: int
    process: subprocess.Popen[bytes]
    log_path: pathlib.Path
    #: The HTTP port (V2 REST, /invocations, /metrics).
    http_port: int = 0
    listening: Listening = PLAIN_TCP

    @property
    def url(self) -> str:
        """The address tritonclient and grpc channels take."""
        if self.listening.uds_only:
            return f"unix:{self.listening.grpc_uds}"
        return f"127.0.0.1:{self.port}"

    @property
    def http_url(self) -> str:
        """The base URL of the HTTP front."""
        scheme = "http" if self.listening.tls is None else "https"
        return f"{scheme}://127.0.0.1:{self.http_port}"

    def grpc_client(self, **options: Any) -> grpcclient.InferenceServerClient:
        """A tritonclient gRPC client for `url`, with the test CA (and the client
        certificate, under mutual TLS) when the server serves TLS."""
        tls = self.listening.tls
        if tls is not None:
            options.update(ssl=True, root_certificates=str(tls.ca))
            if self.listening.mutual_tls:
                options.update(
                    private_key=str(tls.client_key), certificate_chain=str(tls.client_cert)
                )
        if self.url.startswith("unix:"):
            options["channel_args"] = [*options.get("channel_args", []), *UNIX_CHANNEL_ARGS]
        return grpcclient.InferenceServerClient(self.url, **options)

    def ssl_context(self) -> ssl.SSLContext | None:
        """What an HTTP client needs to trust the server (and, under mutual TLS, to
        present the client certificate); None without TLS."""
        tls = self.listening.tls
        if tls is None:
            return None
        if self.listening.mutual_tls:
            return client_context(tls.ca, tls.client_cert, tls.client_key)
        return client_context(tls.ca)

    def http_connection(self, timeout: float = 60.0) -> http.client.HTTPConnection:
        """A connection to the HTTP front: over the Unix socket without a TCP listener,
        else its port; HTTPS when the server serves TLS."""
        context = self.ssl_context()
        if self.listening.uds_only:
            assert self.listening.http_uds is not None, "this server serves no HTTP"
            return UnixHTTPConnection(self.listening.http_uds, timeout, context)
        if context is None:
            return http.client.HTTPConnection("127.0.0.1", self.http_port, timeout=timeout)
        return http.client.HTTPSConnection(
            "127.0.0.1", self.http_port, timeout=timeout, context=context
        )

    def log_text(self) -> str:
        """Everything the server wrote to stdout and stderr so far."""
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def log_tail(self) -> str:
        """The end of the log, enough to explain a failure without flooding the report."""
        return self.log_text()[-LOG_TAIL_CHARS:]


class StartServer(Protocol):
    """The `start_server` fixture: start a dedicated server, stopped when the test ends."""

    def __call__(
        self,
        model_dir: pathlib.Path | str | None,
        *extra_args: str,
        name: str | None = None,
        listening: Listening = PLAIN_TCP,
        env: Mapping[str, str] | None = None,
    ) -> ServerHandle:
        """Start `arrowsmith serve model_dir *extra_args [--name name]` and wait until ready."""
        ...


def server_command(
    model_dir: pathlib.Path | str | None,
    port: int,
    *extra_args: str,
    http_port: int | None = None,
) -> list[str]:
    """The documented CLI, run with this interpreter so the tests' venv serves the model.

    One worker, no metrics or Flight port and a free HTTP port (`http_port` when given) unless
    `extra_args` say otherwise (later flags win): parallel test servers must not share
    ports, and one process starts fastest. Without `model_dir`, `extra_args` name the models
    (`--config FILE`)."""
    return [
        sys.executable,
        "-m",
        "arrowsmith",
        "serve",
        *([] if model_dir is None else [str(model_dir)]),
        "--host",
        "127.0.0.1",
        "--grpc-port",
        str(port),
        "--workers",
        "1",
        "--metrics-port",
        "0",
        "--flight-port",
        "0",
        "--http-port",
        str(free_port() if http_port is None else http_port),
        *extra_args,
    ]


def _server_ready(handle: ServerHandle, client: grpcclient.InferenceServerClient | None) -> bool:
    """One readiness poll: the gRPC client's ServerReady, else HTTP's /v2/health/ready."""
    if client is not None:
        with contextlib.suppress(InferenceServerException):
            return bool(client.is_server_ready())
        return False
    connection = handle.http_connection(timeout=POLL_INTERVAL_S * 10)
    try:
        connection.request("GET", "/v2/health/ready")
        return connection.getresponse().status == 200
    except (OSError, http.client.HTTPException):
        return False
    finally:
        connection.close()


def _wait_until_ready(handle: ServerHandle) -> None:
    """Poll readiness until it says yes; fail with the log if the server dies or stalls."""
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    with contextlib.ExitStack() as stack:
        client = None
        if handle.listening.ready_over == "grpc":
            client = handle.grpc_client(channel_args=FAST_RECONNECT_ARGS)
            stack.callback(client.close)
        while time.monotonic() < deadline:
            exit_code = handle.process.poll()
            if exit_code is not None:
                pytest.fail(
                    f"server exited with code {exit_code} before it was ready; log tail:\n"
                    f"{handle.log_tail()}"
                )
            if _server_ready(handle, client):
                return
            time.sleep(POLL_INTERVAL_S)
    pytest.fail(f"server not ready after {STARTUP_TIMEOUT_S} s; log tail:\n{handle.log_tail()}")


def _stop(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM first (the graceful path a container runtime uses), SIGKILL if it hangs."""
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def stop_process_group(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM to the process's whole group (a server started with `start_new_session`, its
    workers or children too), SIGKILL to whatever is left of it."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)


@contextlib.contextmanager
def running_server(
    model_dir: pathlib.Path | str | None,
    *extra_args: str,
    name: str | None = None,
    log_dir: pathlib.Path,
    listening: Listening = PLAIN_TCP,
    env: Mapping[str, str] | None = None,
) -> Iterator[ServerHandle]:
    """Start a server for `model_dir` (a folder or a model URI, or the `--config` in
    `extra_args`) with `env` added to the environment, yield it once ready, and always stop
    it afterwards."""
    port = free_port()
    http_port = free_port()
    args = [*extra_args, *listening.args(), *(["--name", name] if name is not None else [])]
    label = name or (pathlib.Path(model_dir).name if model_dir is not None else "config")
    log_path = log_dir / f"arrowsmith-{label}-{port}.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            server_command(model_dir, port, *args, http_port=http_port),
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={**os.environ, **(env or {}), "PYTHONUNBUFFERED": "1"},
        )
    handle = ServerHandle(port, process, log_path, http_port, listening)
    try:
        _wait_until_ready(handle)
        yield handle
        exit_code = process.poll()
        if exit_code is not None:
            pytest.fail(f"server died while in use (exit code {exit_code}):\n{handle.log_tail()}")
    finally:
        _stop(process)
