"""How the clients reach a server: the settings a client is made with (target, TLS, channel
options, deadline and retry policy, Flight), the error a failed call raises, the attempts of
one call within its deadline, and the model metadata a client reads.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
import random
import time
from collections.abc import Iterable
from typing import Any, NamedTuple

import grpc

from arrowsmith import _native

MODEL_INFER = "/inference.GRPCInferenceService/ModelInfer"
MODEL_METADATA = "/inference.GRPCInferenceService/ModelMetadata"

#: The port of the server's Arrow Flight service when `flight_target` is not given.
DEFAULT_FLIGHT_PORT = 8083

PathLike = str | os.PathLike[str]


class InferenceError(Exception):
    """A call the server refused or could not answer: its gRPC status code and details."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(f"{code.name}: {message}")
        self.code = code
        self.message = message


def status_error(error: grpc.RpcError) -> InferenceError:
    """The InferenceError of a failed gRPC call."""
    return InferenceError(error.code(), error.details() or "")


@dataclasses.dataclass(frozen=True)
class Tls:
    """PEM contents: the CA to trust (None: the system's), and the client's certificate
    chain and key under mutual TLS."""

    ca: bytes | None
    client_cert: bytes | None
    client_key: bytes | None = dataclasses.field(repr=False)
    server_name: str | None

    def credentials(self) -> grpc.ChannelCredentials:
        return grpc.ssl_channel_credentials(
            root_certificates=self.ca,
            private_key=self.client_key,
            certificate_chain=self.client_cert,
        )


@dataclasses.dataclass(frozen=True)
class Settings:
    """Everything a client is made with, checked once."""

    target: str
    tls: Tls | None
    channel_options: list[tuple[str, Any]]
    timeout: float | None
    retries: int
    backoff: float
    flight_threshold: int | None
    flight_target: str | None


def _read(path: PathLike | None) -> bytes | None:
    return None if path is None else pathlib.Path(path).read_bytes()


def _flight_location(target: str, tls: Tls | None) -> str | None:
    """The Flight service beside a gRPC target: its host, port 8083; None for a Unix
    socket (Flight listens on a TCP port only)."""
    if target.startswith("unix:"):
        return None
    host = target.removeprefix("dns:///").rsplit(":", 1)[0] if ":" in target else target
    scheme = "grpc" if tls is None else "grpc+tls"
    return f"{scheme}://{host}:{DEFAULT_FLIGHT_PORT}"


def make_settings(
    target: str,
    *,
    tls_ca: PathLike | None = None,
    tls_client_cert: PathLike | None = None,
    tls_client_key: PathLike | None = None,
    tls_server_name: str | None = None,
    timeout: float | None = None,
    retries: int = 3,
    backoff: float = 0.05,
    flight_threshold: int | None = None,
    flight_target: str | None = None,
    channel_options: Iterable[tuple[str, Any]] = (),
) -> Settings:
    """Checks a client's arguments and reads its TLS files. TLS is on when any `tls_`
    argument is given."""
    if (tls_client_cert is None) != (tls_client_key is None):
        raise ValueError("tls_client_cert and tls_client_key go together")
    if timeout is not None and not timeout > 0:
        raise ValueError(f"timeout must be above 0 seconds, not {timeout}")
    if retries < 0 or not backoff >= 0:
        raise ValueError(f"retries ({retries}) and backoff ({backoff}) must be 0 or more")
    tls = None
    if any(v is not None for v in (tls_ca, tls_client_cert, tls_client_key, tls_server_name)):
        tls = Tls(_read(tls_ca), _read(tls_client_cert), _read(tls_client_key), tls_server_name)
    # Messages of any size: a frame of many rows is one message each way.
    options: dict[str, Any] = {
        "grpc.max_send_message_length": -1,
        "grpc.max_receive_message_length": -1,
    }
    if target.startswith("unix:"):
        # grpc-core sends a socket's path as :authority, which HTTP/2 servers refuse.
        options["grpc.default_authority"] = "localhost"
    if tls_server_name is not None:
        options["grpc.ssl_target_name_override"] = tls_server_name
    options.update(channel_options)
    if flight_threshold is not None:
        flight_target = flight_target or _flight_location(target, tls)
        if flight_target is None:
            raise ValueError(f"flight_threshold needs a flight_target for {target}")
    return Settings(
        target=target,
        tls=tls,
        channel_options=list(options.items()),
        timeout=timeout,
        retries=retries,
        backoff=backoff,
        flight_threshold=flight_threshold,
        flight_target=flight_target,
    )


#: The longest pause between two attempts, however many retries were asked for.
MAX_BACKOFF_SECONDS = 5.0


class Attempts:
    """The attempts of one call: a deadline over all of them, and after UNAVAILABLE a pause
    before the next (exponential from `backoff` up to MAX_BACKOFF_SECONDS, with jitter),
    never past the deadline."""

    def __init__(self, settings: Settings, timeout: float | None) -> None:
        timeout = settings.timeout if timeout is None else timeout
        self._deadline = None if timeout is None else time.monotonic() + timeout
        self._retries_left = settings.retries
        self._delay = settings.backoff

    def remaining(self) -> float | None:
        """Seconds left for the next attempt (None: no deadline)."""
        if self._deadline is None:
            return None
        left = self._deadline - time.monotonic()
        if left <= 0:
            raise InferenceError(grpc.StatusCode.DEADLINE_EXCEEDED, "the deadline passed")
        return left

    def pause_after(self, failure: InferenceError) -> float:
        """The pause before retrying after `failure`; raises `failure` when it is not
        retried: not UNAVAILABLE, no retries left, or the pause would reach the deadline."""
        if failure.code != grpc.StatusCode.UNAVAILABLE or self._retries_left == 0:
            raise failure from None
        pause = self._delay * random.uniform(0.5, 1.0)
        if self._deadline is not None and time.monotonic() + pause >= self._deadline:
            raise failure from None
        self._retries_left -= 1
        self._delay = min(self._delay * 2, MAX_BACKOFF_SECONDS)
        return pause


class Metadata(NamedTuple):
    """What a client needs of a model's metadata."""

    #: The name of the model's first input: what a lone numpy array is sent as.
    first_input: str | None
    #: Outputs marked `content_type: str`: their BYTES are text.
    text_outputs: frozenset[str]

    def input_name(self, model: str) -> str:
        """The name a lone numpy array is sent as."""
        if self.first_input is None:
            raise ValueError(f"model '{model}' lists no inputs; name the array in a dict")
        return self.first_input


def metadata_of(response: bytes) -> Metadata:
    """The Metadata in ModelMetadataResponse bytes."""
    _, _, _, inputs, outputs = _native.decode_metadata_response(response)
    text = frozenset(name for name, _, _, params in outputs if params.get("content_type") == "str")
    return Metadata(inputs[0][0] if inputs else None, text)
