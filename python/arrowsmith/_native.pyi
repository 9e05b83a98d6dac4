"""Stubs of the native extension (rust/src/py/), checked by `python -m mypy.stubtest`."""

from typing import Any, Final, TypeAlias, final

__all__ = [
    "ArrowArray",
    "Batch",
    "Batcher",
    "GrpcFront",
    "InferRequest",
    "Job",
    "Signature",
    "build_profile",
    "decode_request",
]

build_profile: Final[str]

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

@final
class GrpcFront:
    """The native gRPC front: ModelInfer for the models it serves, everything else passed to
    the grpcio server behind `backend_socket`."""

    def __new__(
        cls,
        host: str,
        port: int,
        backend_socket: str,
        max_message_size: int,
        reuse_port: bool,
    ) -> GrpcFront: ...
    @property
    def port(self) -> int: ...
    def serve(
        self, name: str, version: str, batcher: Batcher, signature: Signature | None = None
    ) -> None: ...
    def take_stats(self) -> tuple[list[tuple[str, str, int]], list[tuple[str, list[float]]]]: ...
    def stop(self, grace_seconds: float) -> None: ...
