"""Stubs of the native extension (rust/src/py/), checked by `python -m mypy.stubtest`."""

import os
from collections.abc import Callable, Sequence
from typing import Any, Final, Protocol, TypeAlias, final

__all__ = [
    "ArrowArray",
    "Batch",
    "Batcher",
    "Completions",
    "GrpcFront",
    "InferRequest",
    "Job",
    "Observation",
    "Signature",
    "allow_shared_memory",
    "build_profile",
    "configure_access_log",
    "configure_tracing",
    "decode_metadata_response",
    "decode_request",
    "decode_response",
    "encode_metadata_request",
    "encode_request",
    "error_statuses",
    "flush_access_log",
    "native_error_code",
    "observing",
    "register_shared_memory",
    "shared_memory_status",
    "shutdown_tracing",
    "unregister_shared_memory",
]

build_profile: Final[str]

#: (method, serialized request) -> serialized response, for RepositoryIndex,
#: RepositoryModelLoad and RepositoryModelUnload
_RepositoryHandler: TypeAlias = Callable[[str, bytes], bytes]

#: (name, V2 datatype, shape, flat values)
_TensorView: TypeAlias = tuple[str, str, list[int], ArrowArray]

@final
class ArrowArray:
    """An Arrow array exported through the Arrow PyCapsule interface."""

    def __arrow_c_array__(
        self, requested_schema: object | None = None
    ) -> tuple[object, object]: ...
    def __len__(self) -> int: ...

@final
class Signature:
    """A model's input signature in native form."""

    @staticmethod
    def columns(specs: list[tuple[str | None, str, bool]]) -> Signature: ...
    @staticmethod
    def tensors(specs: list[tuple[str | None, str, list[int]]]) -> Signature: ...

@final
class InferRequest:
    """A decoded ModelInferRequest."""

    @property
    def model_name(self) -> str: ...
    @property
    def model_version(self) -> str: ...
    @property
    def id(self) -> str: ...
    @property
    def parameters(self) -> dict[str, Any]: ...
    @property
    def requested_outputs(self) -> list[str]: ...
    def inputs(self) -> list[_TensorView]: ...
    def input_parameters(self) -> dict[str, dict[str, Any]]: ...
    def job(self, signature: Signature | None = None, timeout: float | None = None) -> Job: ...

@final
class Job:
    """One request, ready to join a batch."""

    def as_batch(self) -> Batch: ...
    def answer(self) -> bytes: ...
    def cancel(self) -> None: ...

@final
class Batcher:
    """One model's queue; request threads block in submit without the interpreter lock."""

    def __new__(
        cls,
        model_name: str,
        model_version: str,
        max_batch_size: int,
        max_batch_delay_ms: float,
        max_queue_size: int,
    ) -> Batcher: ...
    def submit(self, job: Job) -> bytes: ...
    def next_batch(self) -> Batch | None: ...
    def close(self) -> None: ...
    def abort(self, code: str, message: str) -> int: ...
    def set_unavailable(self, reason: str | None) -> None: ...
    @property
    def depth(self) -> int: ...

@final
class Batch:
    """Requests predicted together."""

    @property
    def form(self) -> str: ...
    @property
    def parameters(self) -> dict[str, Any]: ...
    @property
    def requested_outputs(self) -> list[str]: ...
    def __len__(self) -> int: ...
    def rows(self) -> list[int]: ...
    def queue_waits(self) -> list[float]: ...
    def input_parameters(self) -> dict[str, dict[str, Any]]: ...
    def inputs(self) -> list[_TensorView]: ...
    def column_block(self) -> ArrowArray | None: ...
    def input_names(self) -> list[str]: ...
    def frame(self) -> ArrowArray: ...
    def complete(
        self,
        outputs: list[tuple[str, list[int], Any]],
        parameters: dict[str, str] | None = None,
    ) -> None: ...
    def fail(self, code: str, message: str) -> None: ...
    def singles(self) -> list[Batch]: ...

def decode_request(data: bytes) -> InferRequest: ...

#: A V2 parameter value: bool, int (int64 or uint64), float or str.
_Parameter: TypeAlias = bool | int | float | str

class _ArrowArrayExportable(Protocol):
    def __arrow_c_array__(
        self, requested_schema: object | None = None
    ) -> tuple[object, object]: ...

def encode_request(
    model_name: str,
    model_version: str,
    id: str,
    parameters: dict[str, _Parameter] | None,
    inputs: Sequence[
        tuple[str, Sequence[int], _ArrowArrayExportable, dict[str, _Parameter] | None]
    ],
    outputs: Sequence[str],
) -> bytes: ...
def decode_response(
    data: bytes,
) -> tuple[str, str, str, dict[str, Any], list[_TensorView]]: ...

#: (name, datatype, shape, parameters) of a tensor in a model's metadata
_TensorMetadata: TypeAlias = tuple[str, str, list[int], dict[str, Any]]

def encode_metadata_request(name: str, version: str) -> bytes: ...
def decode_metadata_response(
    data: bytes,
) -> tuple[str, list[str], str, list[_TensorMetadata], list[_TensorMetadata]]: ...

@final
class GrpcFront:
    """The native gRPC server: the inference service (ModelInfer, ModelStreamInfer, the
    small RPCs, and the model repository methods through a Python handler), health and
    reflection and Arrow Flight, on a TCP port and/or a Unix socket (Flight also on a port
    of its own), with TLS when given certificate files.
    Each model may be served in several versions, one of them its default."""

    def __new__(
        cls,
        host: str,
        port: int | None,
        max_message_size: int,
        reuse_port: bool,
        *,
        uds: str | None = None,
        server_name: str = ...,
        server_version: str = ...,
        expected_models: list[str] = ...,
        tls_cert: str | None = None,
        tls_key: str | None = None,
        tls_client_ca: str | None = None,
        max_inflight_bytes: int | None = None,
        max_concurrent_streams: int = 128,
        max_connections: int = 1024,
        keepalive_interval: float = 60.0,
        keepalive_timeout: float = 20.0,
        idle_timeout: float = 300.0,
        flight_port: int | None = None,
    ) -> GrpcFront: ...
    @property
    def port(self) -> int | None: ...
    @property
    def flight_port(self) -> int | None: ...
    @property
    def running(self) -> bool: ...
    @property
    def inflight_bytes(self) -> int: ...
    def reserve_inflight(self, bytes: int) -> bool: ...
    def release_inflight(self, bytes: int) -> None: ...
    def serve(
        self,
        name: str,
        version: str,
        batcher: Batcher,
        metadata: bytes,
        config: bytes,
        signature: Signature | None = None,
    ) -> None: ...
    def set_default_version(self, name: str, version: str) -> None: ...
    def unserve(self, name: str, version: str) -> bool: ...
    def set_model_ready(self, name: str, version: str, ready: bool) -> None: ...
    def set_expected(self, names: list[str]) -> None: ...
    def route_to(self, name: str, socket: str | os.PathLike[str] | None) -> None: ...
    def set_remote_ready(self, name: str, ready: bool) -> None: ...
    def set_repository_handler(self, handler: _RepositoryHandler | None) -> None: ...
    def set_serving(self, serving: bool) -> None: ...
    def reload_tls(self) -> bool: ...
    def take_stats(self) -> tuple[list[tuple[str, str, int]], list[tuple[str, list[float]]]]: ...
    def stop(self, grace_seconds: float) -> None: ...

@final
class Completions:
    """Jobs whose answers an event loop collects through a file descriptor it watches."""

    def __new__(cls) -> Completions: ...
    @property
    def fileno(self) -> int: ...
    def submit(self, batcher: Batcher, job: Job, token: int) -> None: ...
    def take(self) -> list[int]: ...

@final
class Observation:
    """One HTTP request's spans and access-log line, from arrival to answer."""

    @staticmethod
    def start(
        protocol: str,
        call: str,
        elapsed: float,
        span: str | None = None,
        traceparent: str | None = None,
        tracestate: str | None = None,
    ) -> Observation | None: ...
    @property
    def traceparent(self) -> str | None: ...
    def decoded(self) -> None: ...
    def queued(self, job: Job) -> None: ...
    def finish(
        self, status: str, model: str = "", version: str = "", error: str | None = None
    ) -> None: ...

def configure_tracing(
    endpoint: str, protocol: str, service_name: str, sampler: str, ratio: float
) -> None: ...
def shutdown_tracing(timeout: float) -> None: ...
def configure_access_log(format: str) -> None: ...
def flush_access_log(timeout: float) -> bool: ...
def observing() -> bool: ...
def error_statuses() -> list[tuple[str, int]]: ...
def native_error_code(code: str) -> str: ...
def allow_shared_memory(allowed: bool) -> None: ...
def register_shared_memory(name: str, key: str, offset: int, byte_size: int) -> None: ...
def shared_memory_status(name: str) -> list[tuple[str, str, int, int]]: ...
def unregister_shared_memory(name: str) -> None: ...
