"""Server settings: frozen, validated once at start-up."""

from __future__ import annotations

from dataclasses import dataclass

#: gRPC's own default (4 MiB) is the most reported limit in peers' issue trackers.
DEFAULT_MAX_MESSAGE_SIZE = 256 * 1024 * 1024


@dataclass(frozen=True)
class ModelConfig:
    uri: str
    #: None: the registered model's or the folder's name.
    name: str | None = None


@dataclass(frozen=True)
class ServerConfig:
    models: tuple[ModelConfig, ...]
    host: str = "127.0.0.1"
    grpc_port: int = 8081
    max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE
    grpc_threads: int = 32
    log_level: str = "INFO"

    def __post_init__(self) -> None:
        if not self.models:
            raise ValueError("no model to serve")
        if not 0 <= self.grpc_port <= 65535:
            raise ValueError(f"--grpc-port {self.grpc_port} is not a port number")
        if self.max_message_size <= 0:
            raise ValueError("--max-message-size must be positive")
        if self.grpc_threads <= 0:
            raise ValueError("--grpc-threads must be positive")
