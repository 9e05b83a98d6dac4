"""Stubs of the native extension (rust/src/py/), checked by `python -m mypy.stubtest`."""

from typing import Any, Final, TypeAlias, final

__all__ = [
    "ArrowArray",
    "InferRequest",
    "Signature",
    "build_profile",
    "decode_request",
    "encode_response",
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
    def coerce(self, signature: Signature) -> ArrowArray | list[_TensorView]: ...

def decode_request(data: bytes) -> InferRequest: ...
def encode_response(
    model_name: str,
    model_version: str,
    id: str,
    outputs: list[tuple[str, list[int], Any]],
) -> bytes: ...
