"""`arrowsmith serve MODEL_URI`: flags, each also an ARROWSMITH_* environment variable,
become a ServerConfig. No serving logic here."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

from arrowsmith import __version__
from arrowsmith.config import DEFAULT_MAX_MESSAGE_SIZE, ModelConfig, ServerConfig


def _env(flag: str, default: Any, convert: Callable[[str], Any] = str) -> Any:
    """The default of `--flag-name`: $ARROWSMITH_FLAG_NAME when set."""
    value = os.environ.get("ARROWSMITH_" + flag.upper().replace("-", "_"))
    return default if value is None else convert(value)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="arrowsmith",
        description="A high-throughput V2 inference server for MLflow models.",
    )
    parser.add_argument("--version", action="version", version=f"arrowsmith {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser(
        "serve",
        help="serve an MLflow model over the V2 gRPC protocol",
        description="Every flag can also be set as ARROWSMITH_<FLAG>, e.g. ARROWSMITH_GRPC_PORT.",
    )
    serve.add_argument(
        "model_uri",
        nargs="?",
        default=_env("model-uri", None),
        help="a local model folder, runs:/..., or models:/Name/3, models:/Name@alias, ...",
    )
    serve.add_argument("--name", default=_env("name", None), help="the name clients use")
    serve.add_argument("--host", default=_env("host", "127.0.0.1"))
    serve.add_argument("--grpc-port", type=int, default=_env("grpc-port", 8081, int))
    serve.add_argument(
        "--max-message-size",
        type=int,
        default=_env("max-message-size", DEFAULT_MAX_MESSAGE_SIZE, int),
        help="largest gRPC message accepted or sent, in bytes (default: 256 MiB)",
    )
    serve.add_argument(
        "--grpc-threads",
        type=int,
        default=_env("grpc-threads", 32, int),
        help="gRPC handler threads, the most requests in progress at once",
    )
    serve.add_argument("--log-level", default=_env("log-level", "INFO"))
    return parser


def parse_config(argv: Sequence[str]) -> ServerConfig:
    args = _parser().parse_args(argv)
    if args.model_uri is None:
        _parser().error("serve needs a MODEL_URI (or ARROWSMITH_MODEL_URI)")
    return ServerConfig(
        models=(ModelConfig(uri=args.model_uri, name=args.name),),
        host=args.host,
        grpc_port=args.grpc_port,
        max_message_size=args.max_message_size,
        grpc_threads=args.grpc_threads,
        log_level=args.log_level.upper(),
    )


def main(argv: Sequence[str] | None = None) -> int:
    try:
        config = parse_config(sys.argv[1:] if argv is None else argv)
    except ValueError as error:
        print(f"arrowsmith: {error}", file=sys.stderr)
        return 2
    from arrowsmith.server import serve

    return serve(config)
