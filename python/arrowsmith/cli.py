"""`arrowsmith serve MODEL_URI` (or `--config FILE` for several models): flags, each also an
ARROWSMITH_* environment variable, become a ServerConfig. `arrowsmith bench`: the load
generator's options. No serving or measuring logic here."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from arrowsmith import __version__
from arrowsmith.config import (
    ACCESS_LOG_FORMATS,
    DEFAULT_DRAIN_TIMEOUT,
    DEFAULT_HTTP_THREADS,
    DEFAULT_IDLE_TIMEOUT,
    DEFAULT_KEEPALIVE_INTERVAL,
    DEFAULT_KEEPALIVE_TIMEOUT,
    DEFAULT_MAX_BATCH_SIZE,
    DEFAULT_MAX_CONCURRENT_STREAMS,
    DEFAULT_MAX_CONNECTIONS,
    DEFAULT_MAX_INFLIGHT_BYTES,
    DEFAULT_MAX_MESSAGE_SIZE,
    DEFAULT_POLL_INTERVAL,
    DEFAULT_PREDICT_TIMEOUT,
    DEFAULT_REQUEST_TIMEOUT,
    ENV_MANAGERS,
    MODEL_CONTROL_MODES,
    ModelConfig,
    ServerConfig,
)
from arrowsmith.tracing import PROTOCOLS, SAMPLERS, TracingFlags, resolve

#: Per-model settings a config file may give for each model (the flags give defaults).
MODEL_KEYS = (
    "uri",
    "name",
    "max_batch_size",
    "max_batch_delay_ms",
    "max_queue_size",
    "versions",
    "version",
    "env_manager",
)


def _env(flag: str, default: Any, convert: Callable[[str], Any] = str) -> Any:
    """The default of `--flag-name`: $ARROWSMITH_FLAG_NAME when set."""
    variable = "ARROWSMITH_" + flag.upper().replace("-", "_")
    value = os.environ.get(variable)
    if value is None:
        return default
    try:
        return convert(value)
    except ValueError:
        raise ValueError(f"{variable}={value!r} is not a valid --{flag}") from None


def _boolean(text: str) -> bool:
    """An environment variable's yes or no."""
    words = {"1": True, "true": True, "yes": True, "0": False, "false": False, "no": False}
    try:
        return words[text.strip().lower()]
    except KeyError:
        raise ValueError(text) from None


def _number(
    parser: argparse.ArgumentParser,
    flag: str,
    kind: Callable[[str], Any],
    default: Any,
    help: str | None = None,
) -> None:
    """`--flag`, a number of `kind`; its default is $ARROWSMITH_FLAG when set."""
    parser.add_argument(f"--{flag}", type=kind, default=_env(flag, default, kind), help=help)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="arrowsmith",
        description="A high-throughput V2 inference server for MLflow models.",
    )
    parser.add_argument("--version", action="version", version=f"arrowsmith {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser(
        "serve",
        help="serve MLflow models over the V2 gRPC protocol",
        description="Every flag can also be set as ARROWSMITH_<FLAG>, e.g. ARROWSMITH_GRPC_PORT.",
    )
    serve.add_argument(
        "model_uri",
        nargs="?",
        default=_env("model-uri", None),
        help="a local model folder, runs:/..., or models:/Name/3, models:/Name@alias, ...",
    )
    serve.add_argument(
        "--config",
        default=_env("config", None),
        help="a YAML file with `models:`, a list of {uri, name, max_batch_size, "
        "max_batch_delay_ms, max_queue_size, versions, version, env_manager}, to serve "
        "several models",
    )
    serve.add_argument("--name", default=_env("name", None), help="the name clients use")
    serve.add_argument("--host", default=_env("host", "127.0.0.1"))
    _number(serve, "grpc-port", int, 8081)
    _number(
        serve,
        "http-port",
        int,
        8080,
        "V2 REST, MLflow's /invocations and /metrics; 0 turns HTTP off (default 8080)",
    )
    _number(
        serve,
        "metrics-port",
        int,
        None,
        "Prometheus /metrics port; 0 turns metrics serving off (default 8082; 0 with --uds-only)",
    )
    _number(
        serve,
        "flight-port",
        int,
        None,
        "Arrow Flight port (DoExchange scoring, GetSchema, GetFlightInfo); 0 turns it off "
        "(default 8083; 0 with --uds-only)",
    )
    _add_listener_flags(serve)
    serve.add_argument(
        "--allow-shared-memory",
        action="store_true",
        default=_env("allow-shared-memory", False, _boolean),
        help="let clients on this host register system shared memory regions (Triton's "
        "extension) and name them for inputs and outputs; needs --workers 1 (default off)",
    )
    _number(
        serve,
        "workers",
        int,
        len(os.sched_getaffinity(0)),
        "server processes sharing the ports, each loading the models (default: the cores "
        "this process may run on)",
    )
    _number(
        serve,
        "max-batch-size",
        int,
        DEFAULT_MAX_BATCH_SIZE,
        f"rows per model call; 1 turns batching off (default {DEFAULT_MAX_BATCH_SIZE})",
    )
    _number(
        serve,
        "max-batch-delay-ms",
        float,
        0.0,
        "how long a batch may wait for more requests (default 0: never wait)",
    )
    _number(
        serve,
        "max-queue-size",
        int,
        1024,
        "requests waiting per model before RESOURCE_EXHAUSTED (default 1024)",
    )
    _number(
        serve,
        "max-message-size",
        int,
        DEFAULT_MAX_MESSAGE_SIZE,
        "largest gRPC message accepted or sent, and largest HTTP body (413 past it), in "
        "bytes (default: 256 MiB)",
    )
    _number(
        serve,
        "max-inflight-bytes",
        int,
        DEFAULT_MAX_INFLIGHT_BYTES,
        "request bytes the process holds at once, both fronts together; a request that would "
        "pass it is refused before its body is read (gRPC RESOURCE_EXHAUSTED, HTTP 429); at least "
        "--max-message-size (default: 1 GiB)",
    )
    _number(
        serve,
        "max-concurrent-streams",
        int,
        DEFAULT_MAX_CONCURRENT_STREAMS,
        "calls a client may have open at once on one gRPC (HTTP/2) connection, advertised "
        f"in SETTINGS (default {DEFAULT_MAX_CONCURRENT_STREAMS})",
    )
    _number(
        serve,
        "max-connections",
        int,
        DEFAULT_MAX_CONNECTIONS,
        "connections each front serves at once: past it gRPC closes new connections, "
        f"HTTP answers 503 (default {DEFAULT_MAX_CONNECTIONS})",
    )
    _number(
        serve,
        "keepalive-interval",
        float,
        DEFAULT_KEEPALIVE_INTERVAL,
        "seconds between HTTP/2 PINGs on a gRPC connection; 0: none "
        f"(default {DEFAULT_KEEPALIVE_INTERVAL:g})",
    )
    _number(
        serve,
        "keepalive-timeout",
        float,
        DEFAULT_KEEPALIVE_TIMEOUT,
        "seconds a PING may wait for its answer before the connection is dropped "
        f"(default {DEFAULT_KEEPALIVE_TIMEOUT:g})",
    )
    _number(
        serve,
        "idle-timeout",
        float,
        DEFAULT_IDLE_TIMEOUT,
        "seconds a connection may stay without a request before it is closed (GOAWAY on "
        f"gRPC); 0: never (default {DEFAULT_IDLE_TIMEOUT:g})",
    )
    _number(
        serve,
        "http-threads",
        int,
        DEFAULT_HTTP_THREADS,
        "threads of the HTTP front for work kept off its event loop: large V2 REST bodies "
        "parsed and rendered, /invocations bodies only MLflow's parser reads (parsed, waited "
        f"for and rendered) (default {DEFAULT_HTTP_THREADS})",
    )
    _number(
        serve,
        "request-timeout",
        float,
        DEFAULT_REQUEST_TIMEOUT,
        "seconds an HTTP inference request may wait for its answer before a 504; 0: no "
        f"limit (default {DEFAULT_REQUEST_TIMEOUT:g}; a gRPC client sets its own deadline)",
    )
    _number(
        serve,
        "predict-timeout",
        float,
        DEFAULT_PREDICT_TIMEOUT,
        "seconds a model call may run: past it, its requests are answered "
        "DEADLINE_EXCEEDED and the model is not ready until the call returns; after 3 times "
        f"that the process exits to be replaced; 0: untimed (default {DEFAULT_PREDICT_TIMEOUT:g})",
    )
    _number(
        serve,
        "drain-timeout",
        float,
        DEFAULT_DRAIN_TIMEOUT,
        "seconds that SIGTERM leaves every front and model to finish what is in flight, "
        f"all at once (default {DEFAULT_DRAIN_TIMEOUT:g}: below Kubernetes' 30 s grace period)",
    )
    _add_lifecycle_flags(serve)
    _add_environment_flags(serve)
    _add_snapshot_flag(serve)
    _add_observability_flags(serve)
    serve.add_argument("--log-level", default=_env("log-level", "INFO"))
    _add_bench_parser(commands)
    _add_env_parser(commands)
    _add_health_parser(commands)
    _add_score_parser(commands)
    return parser


def _add_environment_flags(parser: argparse.ArgumentParser, default: str = "local") -> None:
    """Where models' Python runs, and where built environments are kept."""
    parser.add_argument(
        "--env-manager",
        choices=ENV_MANAGERS,
        default=_env("env-manager", default),
        help="local: the server's own environment (the default for serve); uv or "
        "virtualenv: the model's own, built from its python_env.yaml and requirements.txt "
        "(with uv, or venv and pip) once, cached, and running the workers; conda is not "
        "available",
    )
    parser.add_argument(
        "--env-cache",
        metavar="DIR",
        default=_env("env-cache", None),
        help="where model environments are cached (default ~/.cache/arrowsmith/envs)",
    )


def _add_snapshot_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--snapshot-dir",
        metavar="DIR",
        default=_env("snapshot-dir", None),
        help="where model snapshots are kept, so that a model's later starts serve without "
        "importing MLflow first (default ~/.cache/arrowsmith/snapshots); off: none",
    )


def _add_env_parser(commands: Any) -> None:
    env = commands.add_parser(
        "env",
        help="build, list and prune cached model environments",
        description="Model environments (--env-manager uv|virtualenv) are built once and "
        "kept in --env-cache, keyed by the interpreter version, the model's requirements and "
        "Arrowsmith's version.",
    )
    actions = env.add_subparsers(dest="env_command", required=True)
    build = actions.add_parser(
        "build", help="build a model's environment now (for images); prints its folder"
    )
    build.add_argument("model_uri", help="a local model folder, runs:/..., models:/...")
    _add_environment_flags(build, default="uv")
    listing = actions.add_parser("list", help="the cached environments")
    listing.add_argument("--json", action="store_true", help="as a JSON list")
    prune = actions.add_parser(
        "prune", help="delete environments unused for a while, and unfinished builds"
    )
    prune.add_argument(
        "--unused-days",
        type=float,
        default=30.0,
        help="delete environments no server used for this many days (default 30)",
    )
    prune.add_argument("--all", action="store_true", help="delete every environment")
    prune.add_argument("--dry-run", action="store_true", help="only say what would go")
    for action in (listing, prune):
        action.add_argument(
            "--env-cache",
            metavar="DIR",
            default=_env("env-cache", None),
            help="the cache folder (default ~/.cache/arrowsmith/envs)",
        )


def _add_score_parser(commands: Any) -> None:
    """The `score` subcommand's arguments."""
    score = commands.add_parser(
        "score",
        help="score a Parquet, CSV or Arrow file through Arrow Flight into Parquet or CSV",
    )
    score.add_argument(
        "model",
        metavar="MODEL_URI_OR_TARGET",
        help="a model URI or folder (a server is started for it), or grpc://host:port of a "
        "running server's Flight port (with --model-name)",
    )
    score.add_argument("input", metavar="INPUT", help="a .parquet, .csv or .arrow file")
    score.add_argument("output", metavar="OUTPUT", help="a .parquet or .csv file to write")
    score.add_argument("--model-name", help="the model's name on a running server")
    score.add_argument(
        "--model-version", help="the version on a running server (default: its default)"
    )
    score.add_argument("--input-format", choices=("parquet", "csv", "arrow"))
    score.add_argument("--output-format", choices=("parquet", "csv"))
    score.add_argument("--delimiter", default=",", help="the CSV files' delimiter (default ,)")
    score.add_argument(
        "--batch-rows",
        type=int,
        default=65_536,
        help="rows per batch sent (default 65,536)",
    )
    score.add_argument(
        "--workers", type=int, default=1, help="server processes for a started server (default 1)"
    )
    score.add_argument("--timeout", type=float, help="seconds the whole exchange may take")
    score.add_argument("--server-log", help="append a started server's log to this file")
    score.add_argument("--tls-ca", help="trust this PEM bundle (grpc+tls:// targets)")
    score.add_argument("--tls-client-cert", help="client certificate for mutual TLS")
    score.add_argument("--tls-client-key", help="the key of --tls-client-cert")
    score.add_argument("--quiet", action="store_true", help="no progress on standard error")


def _add_health_parser(commands: Any) -> None:
    health = commands.add_parser(
        "health",
        help="ask a running server's gRPC health (exit 0 when SERVING), e.g. as a HEALTHCHECK",
    )
    health.add_argument(
        "--service",
        default="",
        help='the health service: "" (default) the whole server, serving once every model is '
        "loaded; a model's name, that model",
    )
    health.add_argument(
        "--target",
        default=f"127.0.0.1:{_env('grpc-port', 8081, int)}",
        help="the server's gRPC address (default 127.0.0.1 at $ARROWSMITH_GRPC_PORT, else 8081)",
    )
    health.add_argument(
        "--uds", metavar="PATH", help="ask over this gRPC Unix socket instead of --target"
    )
    health.add_argument(
        "--timeout", type=float, default=3.0, help="seconds to wait for the answer (default 3)"
    )
    # Not the server's own --tls-* variables: a container that sets those for the server
    # sets these for its health check.
    for flag, help in (
        ("tls-ca", "ask over TLS, trusting the CAs of this PEM bundle"),
        ("tls-client-cert", "the client certificate (PEM) a mutual-TLS server asks for"),
        ("tls-client-key", "the private key of --tls-client-cert"),
        ("tls-server-name", "the name the server's certificate must carry (default: the host)"),
    ):
        variable = "ARROWSMITH_HEALTH_" + flag.upper().replace("-", "_")
        health.add_argument(
            f"--{flag}", default=os.environ.get(variable), help=f"{help}; or {variable}"
        )


def _add_lifecycle_flags(serve: argparse.ArgumentParser) -> None:
    """Following registry references, webhooks, and the repository API's control mode."""
    _number(
        serve,
        "poll-interval",
        float,
        DEFAULT_POLL_INTERVAL,
        "seconds between looks at the registry references models follow (models:/Name@alias, "
        "/Stage, /latest): a moved one is loaded and swapped in "
        f"(default {DEFAULT_POLL_INTERVAL:g}; 0: off)",
    )
    serve.add_argument(
        "--webhook-secret",
        default=_env("webhook-secret", None),
        help="the secret of MLflow's webhooks: POST /v2/repository/webhooks/mlflow then "
        "swaps at once when an alias moves (refused without it)",
    )
    serve.add_argument(
        "--model-control-mode",
        choices=MODEL_CONTROL_MODES,
        default=_env("model-control-mode", "none"),
        help="whether clients may load and unload models through the repository API: none "
        "(default) and poll refuse, explicit allows",
    )


def _add_observability_flags(serve: argparse.ArgumentParser) -> None:
    """The access log, and OpenTelemetry tracing (each --otel-* flag, or its ARROWSMITH_OTEL_*
    variable, overrides the standard OTEL_* variable named in its help)."""
    serve.add_argument(
        "--access-log",
        choices=ACCESS_LOG_FORMATS,
        default=_env("access-log", "off"),
        help="one line per request on standard output: json, text or off (default off)",
    )
    for flag, variable, help in (
        (
            "otel-endpoint",
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
            "the OTLP URL spans are sent to; tracing is off without it (or "
            "OTEL_EXPORTER_OTLP_ENDPOINT, to which http/protobuf adds /v1/traces)",
        ),
        (
            "otel-protocol",
            "OTEL_EXPORTER_OTLP_PROTOCOL",
            f"how spans are sent: {' or '.join(PROTOCOLS)} (default http/protobuf)",
        ),
        ("otel-service-name", "OTEL_SERVICE_NAME", "the spans' service.name (default arrowsmith)"),
        (
            "otel-sampler",
            "OTEL_TRACES_SAMPLER",
            f"{', '.join(SAMPLERS)} (default parentbased_always_on)",
        ),
        (
            "otel-sampler-arg",
            "OTEL_TRACES_SAMPLER_ARG",
            "the traceidratio samplers' ratio, 0 to 1 (default 1)",
        ),
    ):
        serve.add_argument(f"--{flag}", default=_env(flag, None), help=f"{help}; or {variable}")


def _add_listener_flags(serve: argparse.ArgumentParser) -> None:
    """TLS for both fronts, and Unix sockets beside (or instead of) their TCP ports."""
    for flag, help in (
        ("tls-cert", "PEM certificate chain: both fronts serve TLS (needs --tls-key)"),
        ("tls-key", "PEM private key of --tls-cert"),
        (
            "tls-client-ca",
            "PEM bundle of the CAs that sign client certificates: clients must present one "
            "(mutual TLS; needs --tls-cert)",
        ),
        ("grpc-uds", "also serve gRPC on a Unix socket at this path (needs --workers 1)"),
        ("http-uds", "also serve HTTP on a Unix socket at this path (needs --workers 1)"),
    ):
        serve.add_argument(f"--{flag}", metavar="PATH", default=_env(flag, None), help=help)
    serve.add_argument(
        "--uds-only",
        action="store_true",
        default=_env("uds-only", False, _boolean),
        help="listen on no TCP port: gRPC only on --grpc-uds (required), HTTP only on "
        "--http-uds (off without it), no metrics port",
    )


def _add_bench_parser(commands: Any) -> None:
    bench = commands.add_parser(
        "bench",
        help="load-test a running server with the compiled load generator",
        description="Sends one request over and over: to ModelInfer over gRPC (or as messages "
        "of ModelStreamInfer streams, --stream), from a V2 JSON infer body or random data shaped "
        "by the model's metadata; or, with --http, a body as it is to an HTTP path. Closed loop "
        "at each --concurrency level, or open loop at each --rate; throughput and p50-p99.9 "
        "latency per level.",
    )
    bench.add_argument(
        "--target",
        default="127.0.0.1:8081",
        help="the server's gRPC address (its HTTP address with --http)",
    )
    bench.add_argument("--model", help="the model to call over gRPC")
    bench.add_argument(
        "--http",
        metavar="PATH",
        help="POST the --request file as it is to this HTTP path instead (e.g. /invocations)",
    )
    bench.add_argument(
        "--content-type", default="application/json", help="the body's type with --http"
    )
    bench.add_argument("--request", type=Path, help="a V2 JSON infer body (`inputs`, ...)")
    bench.add_argument("--rows", type=int, default=1, help="rows of generated data (default 1)")
    bench.add_argument("--seed", type=int, default=0, help="seed of the generated data")
    bench.add_argument("--concurrency", default="1,8,32", help="closed-loop levels, e.g. 1,8,32")
    bench.add_argument("--rate", help="open-loop levels in requests/s instead, e.g. 500,1000")
    bench.add_argument(
        "--stream",
        action="store_true",
        help="send each request as a message of ModelStreamInfer, one stream per connection",
    )
    bench.add_argument(
        "--connections",
        type=int,
        help="HTTP/2 connections, with --stream one stream each (default: up to 8)",
    )
    bench.add_argument("--duration", type=float, default=10.0, help="measured seconds per level")
    bench.add_argument("--warmup", type=float, default=2.0, help="unmeasured seconds per level")
    bench.add_argument("--requests", type=int, help="stop a level after this many requests")
    bench.add_argument("--json", type=Path, help="write the results as JSON here")
    bench.add_argument("--plot", type=Path, help="draw throughput against p99 into this PNG")


def _bench(args: argparse.Namespace) -> int:
    from arrowsmith import bench

    levels = ["--rate", args.rate] if args.rate else ["--concurrency", args.concurrency]
    generator_args = [*levels, "--duration", str(args.duration), "--warmup", str(args.warmup)]
    if args.http is not None:
        if args.request is None:
            raise SystemExit("arrowsmith bench: --http needs --request, the body to send")
        body = args.request.read_bytes()
        generator_args += ["--http", args.http, "--content-type", args.content_type]
    elif args.model is None:
        raise SystemExit("arrowsmith bench: --model is required (or --http PATH)")
    elif args.request is not None:
        body = bench.request_from_json(args.request, args.model)
    else:
        body = bench.request_from_metadata(args.target, args.model, args.rows, args.seed)
    if args.stream:
        if args.http is not None:
            raise SystemExit("arrowsmith bench: --stream is gRPC's, not for --http")
        generator_args.append("--stream")
    if args.connections is not None:
        generator_args += ["--connections", str(args.connections)]
    if args.requests is not None:
        generator_args += ["--requests", str(args.requests)]
    return bench.run(args.target, body, generator_args, args.json, args.plot)


def _models_from_file(path: str, defaults: dict[str, Any]) -> tuple[ModelConfig, ...]:
    import yaml

    try:
        document = yaml.safe_load(Path(path).read_text())
    except yaml.YAMLError as error:
        raise ValueError(f"{path} is not valid YAML: {error}") from None
    entries = document.get("models") if isinstance(document, dict) else None
    if not isinstance(entries, list) or not entries:
        raise ValueError(f"{path} needs a non-empty `models:` list")
    models = []
    for entry in entries:
        if not isinstance(entry, dict) or "uri" not in entry:
            raise ValueError(f"{path}: each model needs at least a `uri` ({entry!r})")
        unknown = set(entry) - set(MODEL_KEYS)
        if unknown:
            raise ValueError(f"{path}: unknown model settings {sorted(unknown)}")
        try:
            if "versions" in entry:
                entry = {**entry, "versions": _version_list(path, entry["versions"])}
            if isinstance(entry.get("version"), int) and not isinstance(entry["version"], bool):
                entry = {**entry, "version": str(entry["version"])}
            models.append(ModelConfig(**{**defaults, "name": None, **entry}))
        except TypeError as error:
            raise ValueError(f"{path}: {error}") from None
    return tuple(models)


def _version_list(path: str, versions: Any) -> tuple[str, ...]:
    """`versions: [3, 4]` as version strings."""
    if not isinstance(versions, list) or not all(
        isinstance(v, int | str) and not isinstance(v, bool) for v in versions
    ):
        raise ValueError(f"{path}: `versions` must be a list of version numbers ({versions!r})")
    return tuple(str(v) for v in versions)


def parse_config(argv: Sequence[str]) -> ServerConfig:
    """The configuration of `arrowsmith serve ...`."""
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command != "serve":
        parser.error("expected `serve`")
    return _serve_config(parser, args)


def _serve_config(parser: argparse.ArgumentParser, args: argparse.Namespace) -> ServerConfig:
    defaults = {
        "max_batch_size": args.max_batch_size,
        "max_batch_delay_ms": args.max_batch_delay_ms,
        "max_queue_size": args.max_queue_size,
        "env_manager": args.env_manager,
    }
    if args.config is not None:
        if args.model_uri is not None:
            parser.error("give a MODEL_URI or --config, not both")
        models = _models_from_file(args.config, defaults)
    elif args.model_uri is not None:
        models = (ModelConfig(uri=args.model_uri, name=args.name, **defaults),)
    else:
        parser.error("serve needs a MODEL_URI (or ARROWSMITH_MODEL_URI) or --config")
    return ServerConfig(
        models=models,
        host=args.host,
        grpc_port=args.grpc_port,
        http_port=args.http_port,
        metrics_port=_tcp_port(args.metrics_port, 8082, args),
        flight_port=_tcp_port(args.flight_port, 8083, args),
        max_message_size=args.max_message_size,
        max_inflight_bytes=args.max_inflight_bytes,
        max_concurrent_streams=args.max_concurrent_streams,
        max_connections=args.max_connections,
        keepalive_interval=args.keepalive_interval,
        keepalive_timeout=args.keepalive_timeout,
        idle_timeout=args.idle_timeout,
        http_threads=args.http_threads,
        tls_cert=args.tls_cert,
        tls_key=args.tls_key,
        tls_client_ca=args.tls_client_ca,
        grpc_uds=args.grpc_uds,
        http_uds=args.http_uds,
        uds_only=args.uds_only,
        workers=args.workers,
        log_level=args.log_level.upper(),
        request_timeout=args.request_timeout,
        predict_timeout=args.predict_timeout,
        drain_timeout=args.drain_timeout,
        poll_interval=args.poll_interval,
        webhook_secret=args.webhook_secret,
        model_control_mode=args.model_control_mode,
        env_cache=args.env_cache,
        access_log=args.access_log,
        allow_shared_memory=args.allow_shared_memory,
        tracing=resolve(
            TracingFlags(
                endpoint=args.otel_endpoint,
                protocol=args.otel_protocol,
                service_name=args.otel_service_name,
                sampler=args.otel_sampler,
                sampler_arg=args.otel_sampler_arg,
            ),
            os.environ,
        ),
    )


def _tcp_port(given: int | None, default: int, args: argparse.Namespace) -> int:
    """The port given, else `default` (0 with --uds-only, which opens no TCP port)."""
    if given is not None:
        return given
    return 0 if args.uds_only else default


def _serve_in_environment(config: ServerConfig) -> int:
    """Finds or builds the models' environments, then runs the workers: those of the first
    model's environment on the ports, one process for each other environment's models
    behind them (this process supervises them all, as with --workers)."""
    from arrowsmith.environments.build import EnvironmentBuildError
    from arrowsmith.environments.serving import plan_groups
    from arrowsmith.routing.groups import ProcessGroup
    from arrowsmith.server import configure_logging
    from arrowsmith.workers import supervise

    def process_groups() -> list[ProcessGroup]:
        return [
            ProcessGroup(
                sys.executable if group.environment is None else str(group.environment.python),
                group.models,
            )
            for group in plan_groups(config)
        ]

    configure_logging(config)
    try:
        groups = process_groups()
    except (ValueError, EnvironmentBuildError, OSError) as error:
        print(f"arrowsmith: {error}", file=sys.stderr)
        return 2
    # A followed reference that moves to a version needing another environment: planned
    # again (and built) while the workers serve.
    return supervise(config, groups, replan=process_groups)


def main(argv: Sequence[str] | None = None) -> int:
    try:
        parser = _parser()
        args = parser.parse_args(sys.argv[1:] if argv is None else argv)
        if args.command == "bench":
            return _bench(args)
        if args.command == "env":
            from arrowsmith.environments.commands import run

            return run(args)
        if args.command == "score":
            from arrowsmith.scoring import run as score

            return score(args)
        if args.command == "health":
            from arrowsmith.health_check import run as check_health

            return check_health(args)
        config = _serve_config(parser, args)
        if args.snapshot_dir is not None:
            # Read where models load (models/snapshot.py), in this process and its workers.
            os.environ["ARROWSMITH_SNAPSHOT_DIR"] = args.snapshot_dir
    except (ValueError, OSError) as error:
        print(f"arrowsmith: {error}", file=sys.stderr)
        return 2
    if config.own_environments:
        return _serve_in_environment(config)
    if config.workers > 1:
        from arrowsmith.workers import supervise

        return supervise(config)
    from arrowsmith.server import serve

    return serve(config)
