"""Server settings: frozen, validated once at start-up."""

from __future__ import annotations

import os
from dataclasses import dataclass

from arrowsmith.tracing import TracingConfig

#: gRPC's own default (4 MiB) is the most reported limit in peers' issue trackers.
DEFAULT_MAX_MESSAGE_SIZE = 256 * 1024 * 1024

#: Bounds on what clients can make one server process hold, sized for a small machine:
#: request bytes in flight (both fronts together), HTTP/2 streams per connection,
#: connections (each front), and the seconds of the keepalive PING, of its answer, and of an
#: idle connection.
DEFAULT_MAX_INFLIGHT_BYTES = 1024 * 1024 * 1024
DEFAULT_MAX_CONCURRENT_STREAMS = 128
DEFAULT_MAX_CONNECTIONS = 1024
DEFAULT_KEEPALIVE_INTERVAL = 60.0
DEFAULT_KEEPALIVE_TIMEOUT = 20.0
DEFAULT_IDLE_TIMEOUT = 300.0

#: Rows per model call. A call of a tabular model costs mostly its fixed overhead (MLflow's
#: and scikit-learn's checks, ~0.5 ms) rather than its rows, so the default lets requests of
#: thousands of rows share calls; models whose rows are costly (or memory-bound) set less.
DEFAULT_MAX_BATCH_SIZE = 65536

#: Seconds an HTTP inference request may wait for its answer.
DEFAULT_REQUEST_TIMEOUT = 60.0
#: Seconds a model call may run before its requests are answered DEADLINE_EXCEEDED.
DEFAULT_PREDICT_TIMEOUT = 30.0
#: Seconds of draining after SIGTERM: below Kubernetes' default grace period (30 s), so the
#: drain ends before the kubelet's SIGKILL.
DEFAULT_DRAIN_TIMEOUT = 20.0
#: Seconds between looks at the registry references that models follow.
DEFAULT_POLL_INTERVAL = 30.0
MODEL_CONTROL_MODES = ("none", "explicit", "poll")
#: Where a model's Python runs: the server's own environment, or one built for the model
#: (MLflow's names; conda is refused with a message saying what works).
ENV_MANAGERS = ("local", "uv", "virtualenv", "conda")
#: Threads of the HTTP front for the work kept off its event loop.
DEFAULT_HTTP_THREADS = 32

#: What each request's access-log line looks like, or off.
ACCESS_LOG_FORMATS = ("json", "text", "off")

#: Bytes a Unix socket's path may take (sockaddr_un's sun_path, less its NUL on Linux).
MAX_UNIX_SOCKET_PATH = 107


@dataclass(frozen=True)
class ModelConfig:
    uri: str
    #: None: the registered model's or the folder's name.
    name: str | None = None
    #: Rows per model call; requests that arrive while the model runs join the next call.
    max_batch_size: int = DEFAULT_MAX_BATCH_SIZE
    #: How long a batch may wait for more requests once its first request is queued.
    max_batch_delay_ms: float = 0.0
    #: Requests waiting at most; past it, RESOURCE_EXHAUSTED.
    max_queue_size: int = 1024
    #: Registry versions served side by side with the one the URI points to (the
    #: default); requests pick one with `model_version`.
    versions: tuple[str, ...] = ()
    #: The version this entry is served as, for a model outside the registry (which has no
    #: version number); entries that share a name and differ in version are served side by
    #: side, the first listed being the default.
    version: str | None = None
    #: `local`: the server's environment; `uv` or `virtualenv`: the model's own, built
    #: from its python_env.yaml and requirements and cached.
    env_manager: str = "local"

    @property
    def version_label(self) -> str | None:
        """The version this entry names: its `version`, else the number of a
        `models:/Name/<number>` URI; None when it names none (a reference that may move, a
        model outside the registry)."""
        if self.version is not None:
            return self.version
        from arrowsmith.models.loader import registry_reference

        reference = registry_reference(self.uri)
        return reference.version_number if reference is not None else None

    @property
    def served_name(self) -> str:
        """The name clients use: the given one, else the URI's default."""
        from arrowsmith.models.loader import default_name

        return self.name or default_name(self.uri)

    def __post_init__(self) -> None:
        if not isinstance(self.uri, str):
            raise ValueError(f"a model uri must be text, not {self.uri!r}")
        if self.name is not None and not isinstance(self.name, str):
            raise ValueError(f"the name of {self.uri} must be text, not {self.name!r}")
        for setting, kind in (
            ("max_batch_size", int),
            ("max_queue_size", int),
            ("max_batch_delay_ms", (int, float)),
        ):
            value = getattr(self, setting)
            if isinstance(value, bool) or not isinstance(value, kind):
                raise ValueError(f"{setting} of {self.uri} must be a number, not {value!r}")
        if self.max_batch_size <= 0:
            raise ValueError(f"max_batch_size of {self.uri} must be positive")
        if self.max_batch_delay_ms < 0:
            raise ValueError(f"max_batch_delay_ms of {self.uri} must not be negative")
        if self.max_queue_size <= 0:
            raise ValueError(f"max_queue_size of {self.uri} must be positive")
        if isinstance(self.versions, str) or not all(
            isinstance(v, str) and v.isdigit() for v in self.versions
        ):
            raise ValueError(f"versions of {self.uri} must be a list of version numbers")
        if self.versions and not self.uri.startswith("models:/"):
            raise ValueError(f"versions of {self.uri} need a registry URI (models:/Name...)")
        if self.version is not None and (not isinstance(self.version, str) or not self.version):
            raise ValueError(f"the version of {self.uri} must be non-empty text")
        if self.env_manager not in ENV_MANAGERS:
            raise ValueError(
                f"env_manager of {self.uri} must be one of {', '.join(ENV_MANAGERS)}, "
                f"not {self.env_manager!r}"
            )


@dataclass(frozen=True)
class RoutedGroup:
    """Models another process of this server serves, under its own environment's
    interpreter: the front forwards their calls to that process's private Unix sockets."""

    names: tuple[str, ...]
    grpc_uds: str
    #: None when the server serves no HTTP.
    http_uds: str | None = None


@dataclass(frozen=True)
class ServerConfig:
    models: tuple[ModelConfig, ...]
    host: str = "127.0.0.1"
    grpc_port: int = 8081
    #: V2 REST, MLflow's /invocations and /metrics over HTTP; 0 turns it off.
    http_port: int = 8080
    #: Prometheus /metrics; 0 turns it off.
    metrics_port: int = 8082
    #: Arrow Flight (DoExchange, GetFlightInfo, GetSchema); 0 turns it off.
    flight_port: int = 8083
    max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE
    #: Request bytes held at once by the process's fronts together; past it,
    #: RESOURCE_EXHAUSTED (HTTP 429).
    max_inflight_bytes: int = DEFAULT_MAX_INFLIGHT_BYTES
    #: HTTP/2 streams a client may open at once on one gRPC connection.
    max_concurrent_streams: int = DEFAULT_MAX_CONCURRENT_STREAMS
    #: Connections each front serves at once.
    max_connections: int = DEFAULT_MAX_CONNECTIONS
    #: Seconds between PINGs on a gRPC connection (0: none) and for the PING's answer.
    keepalive_interval: float = DEFAULT_KEEPALIVE_INTERVAL
    keepalive_timeout: float = DEFAULT_KEEPALIVE_TIMEOUT
    #: Seconds a connection may stay without a request before it is closed (0: forever).
    idle_timeout: float = DEFAULT_IDLE_TIMEOUT
    #: Threads of the HTTP front that parse large bodies, and answer the bodies only
    #: MLflow's parser reads, off its event loop.
    http_threads: int = DEFAULT_HTTP_THREADS
    #: PEM files of the server's certificate chain and key: TLS on every listener of both
    #: fronts. With a client CA (a PEM bundle), clients must present a certificate it signed.
    tls_cert: str | None = None
    tls_key: str | None = None
    tls_client_ca: str | None = None
    #: Unix socket paths each front also listens on; with `uds_only`, the only listeners.
    grpc_uds: str | None = None
    http_uds: str | None = None
    uds_only: bool = False
    #: Server processes sharing the ports (SO_REUSEPORT), each loading every model.
    workers: int = 1
    log_level: str = "INFO"
    #: Seconds an HTTP inference request may wait for its answer (504 after); 0: no limit.
    request_timeout: float = DEFAULT_REQUEST_TIMEOUT
    #: Seconds a model call may take before its requests are answered DEADLINE_EXCEEDED and
    #: the model is not ready until it returns; 0: untimed.
    predict_timeout: float = DEFAULT_PREDICT_TIMEOUT
    #: Seconds a stop signal leaves for every front and runner to drain, all at once.
    drain_timeout: float = DEFAULT_DRAIN_TIMEOUT
    #: Seconds between looks at the registry references models follow (an alias, a stage,
    #: `latest`); 0: only webhooks move them.
    poll_interval: float = DEFAULT_POLL_INTERVAL
    #: The secret MLflow signs its webhook deliveries with; None: webhooks are refused.
    webhook_secret: str | None = None
    #: Whether clients may load and unload models through the repository API: `none` and
    #: `poll` refuse it (`poll` also needs polling on), `explicit` allows it.
    model_control_mode: str = "none"
    #: The folder model environments are cached in; None: ~/.cache/arrowsmith/envs.
    env_cache: str | None = None
    #: Models of other environments, served by other processes of this server, that this
    #: one's fronts forward to (the supervisor sets them; `models` lists only its own).
    routes: tuple[RoutedGroup, ...] = ()
    #: One line per request on standard output (json or text), or off.
    access_log: str = "off"
    #: OpenTelemetry tracing: None is off (no spans are made).
    tracing: TracingConfig | None = None
    #: Triton's system shared memory: clients on this host may register regions and name
    #: them for inputs and outputs.
    allow_shared_memory: bool = False

    @property
    def own_environments(self) -> bool:
        """Whether some model runs in an environment of its own."""
        return any(model.env_manager != "local" for model in self.models)

    def _check_limits(self) -> None:
        for flag, count in (
            ("--max-inflight-bytes", self.max_inflight_bytes),
            ("--max-concurrent-streams", self.max_concurrent_streams),
            ("--max-connections", self.max_connections),
        ):
            if isinstance(count, bool) or not isinstance(count, int) or count <= 0:
                raise ValueError(f"{flag} must be a positive whole number, not {count!r}")
        if self.max_concurrent_streams > 2**31 - 1:
            raise ValueError("--max-concurrent-streams must be below 2^31")
        if self.max_inflight_bytes < self.max_message_size:
            raise ValueError(
                f"--max-inflight-bytes ({self.max_inflight_bytes}) must be at least "
                f"--max-message-size ({self.max_message_size}): a largest message must fit"
            )
        for flag, seconds, zero_allowed in (
            ("--keepalive-interval", self.keepalive_interval, True),
            ("--keepalive-timeout", self.keepalive_timeout, False),
            ("--idle-timeout", self.idle_timeout, True),
        ):
            if isinstance(seconds, bool) or not isinstance(seconds, int | float):
                raise ValueError(f"{flag} must be a number of seconds, not {seconds!r}")
            if not (0 <= seconds < 1e9) or (seconds == 0 and not zero_allowed):
                least = "0 or more" if zero_allowed else "more than 0"
                raise ValueError(f"{flag} {seconds} must be {least} seconds")

    def _check_tls(self) -> None:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("--tls-cert and --tls-key go together: give both or neither")
        if self.tls_client_ca is not None and self.tls_cert is None:
            raise ValueError("--tls-client-ca needs --tls-cert and --tls-key")
        for flag, path in (
            ("--tls-cert", self.tls_cert),
            ("--tls-key", self.tls_key),
            ("--tls-client-ca", self.tls_client_ca),
        ):
            if path is not None:
                _check_readable(flag, path)

    def _check_unix_sockets(self) -> None:
        sockets = [
            (flag, path)
            for flag, path in (("--grpc-uds", self.grpc_uds), ("--http-uds", self.http_uds))
            if path is not None
        ]
        if self.uds_only and self.grpc_uds is None:
            raise ValueError("--uds-only needs --grpc-uds, the socket gRPC is served on")
        for flag, port in (
            ("--metrics-port", self.metrics_port),
            ("--flight-port", self.flight_port),
        ):
            if self.uds_only and port:
                raise ValueError(f"--uds-only opens no TCP port: {flag} must be 0")
        if sockets and self.workers > 1:
            raise ValueError(
                f"several --workers cannot share the Unix socket of {sockets[0][0]}: "
                "give --workers 1"
            )
        if self.grpc_uds is not None and self.grpc_uds == self.http_uds:
            raise ValueError("--grpc-uds and --http-uds must be different paths")
        for flag, path in sockets:
            if len(os.fsencode(path)) > MAX_UNIX_SOCKET_PATH:
                raise ValueError(
                    f"{flag} {path} is longer than a Unix socket path may be "
                    f"({MAX_UNIX_SOCKET_PATH} bytes)"
                )
            folder = os.path.dirname(path) or "."
            if not os.path.isdir(folder):
                raise ValueError(f"{flag} {path}: the folder {folder} does not exist")

    @property
    def http_tcp(self) -> bool:
        """Whether the HTTP front listens on --host:--http-port."""
        return self.http_port != 0 and not self.uds_only

    @property
    def serves_http(self) -> bool:
        """Whether there is an HTTP front: on TCP, on --http-uds, or both."""
        return self.http_tcp or self.http_uds is not None

    def __post_init__(self) -> None:
        if not self.models:
            raise ValueError("no model to serve")
        self._check_versions_listed()
        for flag, port in (
            ("--grpc-port", self.grpc_port),
            ("--http-port", self.http_port),
            ("--metrics-port", self.metrics_port),
            ("--flight-port", self.flight_port),
        ):
            if not 0 <= port <= 65535:
                raise ValueError(f"{flag} {port} is not a port number")
        if self.workers <= 0:
            raise ValueError("--workers must be positive")
        if self.workers > 1 and self.allow_shared_memory:
            raise ValueError(
                "--allow-shared-memory needs --workers 1: a region registered with one worker "
                "would be unknown to the others"
            )
        if self.workers > 1 and self.grpc_port == 0:
            raise ValueError("several --workers share one --grpc-port, which cannot be 0")
        if self.max_message_size <= 0:
            raise ValueError("--max-message-size must be positive")
        self._check_limits()
        if self.http_threads <= 0:
            raise ValueError("--http-threads must be positive")
        self._check_tls()
        self._check_unix_sockets()
        for flag, seconds in (
            ("--request-timeout", self.request_timeout),
            ("--predict-timeout", self.predict_timeout),
            ("--drain-timeout", self.drain_timeout),
        ):
            if isinstance(seconds, bool) or not isinstance(seconds, int | float):
                raise ValueError(f"{flag} must be a number of seconds, not {seconds!r}")
            if not 0 <= seconds < float("inf"):
                raise ValueError(f"{flag} {seconds} must be 0 or more seconds")
        self._check_model_control()

    def _check_versions_listed(self) -> None:
        """Entries may share a name only as distinct versions of one model: each names its
        version (by `version` or a `models:/Name/<number>` URI), but for at most one, which
        may follow a reference."""
        by_name: dict[str, list[str | None]] = {}
        for model in self.models:
            by_name.setdefault(model.served_name, []).append(model.version_label)
        for name, labels in by_name.items():
            named = [label for label in labels if label is not None]
            if len(labels) > 1 and (len(labels) - len(named) > 1 or len(set(named)) < len(named)):
                raise ValueError(
                    f"two models would be served as ['{name}']: give them distinct names, or "
                    "each a distinct `version` to serve them side by side"
                )

    def _check_model_control(self) -> None:
        seconds = self.poll_interval
        if isinstance(seconds, bool) or not isinstance(seconds, int | float):
            raise ValueError(f"--poll-interval must be a number of seconds, not {seconds!r}")
        if not 0 <= seconds < 1e9:
            raise ValueError(f"--poll-interval {seconds} must be 0 or more seconds")
        if self.model_control_mode not in MODEL_CONTROL_MODES:
            raise ValueError(
                f"--model-control-mode {self.model_control_mode!r} is not one of "
                f"{', '.join(MODEL_CONTROL_MODES)}"
            )
        if self.model_control_mode == "poll" and seconds == 0:
            raise ValueError("--model-control-mode poll needs a --poll-interval above 0")
        if self.access_log not in ACCESS_LOG_FORMATS:
            raise ValueError(
                f"--access-log {self.access_log!r} is not one of {', '.join(ACCESS_LOG_FORMATS)}"
            )
        if self.webhook_secret is not None and not self.webhook_secret:
            raise ValueError("--webhook-secret must not be empty")


def _check_readable(flag: str, path: str) -> None:
    """Refuses a file that is missing or cannot be read now, naming its flag."""
    try:
        with open(path, "rb"):
            pass
    except OSError as error:
        raise ValueError(f"{flag} {path} cannot be read: {error.strerror}") from None
