"""V2 tensors and parameters between their wire form (raw little-endian bytes, BYTES as
4-byte length-prefixed items, InferParameter messages) and numpy / plain Python values:
for the HTTP front ends that build ModelInferRequests and read ModelInferResponses, for
`arrowsmith bench`, and for the metadata's datatype of a numpy dtype."""

from __future__ import annotations

import struct
from collections.abc import Iterable, Mapping, MutableMapping
from typing import Any

import numpy as np

from arrowsmith.errors import InternalError, InvalidInputError

#: Fixed-width V2 datatypes and their (little-endian) numpy dtypes.
NUMPY_DTYPES: dict[str, np.dtype[Any]] = {
    name: np.dtype(code).newbyteorder("<")
    for name, code in (
        ("BOOL", "bool"),
        ("UINT8", "uint8"),
        ("UINT16", "uint16"),
        ("UINT32", "uint32"),
        ("UINT64", "uint64"),
        ("INT8", "int8"),
        ("INT16", "int16"),
        ("INT32", "int32"),
        ("INT64", "int64"),
        ("FP16", "float16"),
        ("FP32", "float32"),
        ("FP64", "float64"),
    )
}

#: numpy dtype name -> V2 datatype (the inverse of NUMPY_DTYPES).
DATATYPE_OF_NUMPY: dict[str, str] = {dtype.name: name for name, dtype in NUMPY_DTYPES.items()}

_LENGTH = struct.Struct("<I")
_INT64_MAX = 2**63 - 1
_UINT64_MAX = 2**64 - 1


def pack_bytes(items: Iterable[bytes]) -> bytes:
    """BYTES elements as one raw tensor: each a 4-byte little-endian length, then itself."""
    pack = _LENGTH.pack
    return b"".join(part for item in items for part in (pack(len(item)), item))


def unpack_bytes(raw: bytes) -> list[bytes]:
    items = []
    offset = 0
    unpack = _LENGTH.unpack_from
    while offset < len(raw):
        (length,) = unpack(raw, offset)
        offset += 4
        items.append(raw[offset : offset + length])
        offset += length
    return items


def as_text(items: list[bytes]) -> list[str] | None:
    """The items decoded as UTF-8, or None when one of them is not text."""
    try:
        return [item.decode() for item in items]
    except UnicodeDecodeError:
        return None


def output_array(datatype: str, shape: Iterable[int], raw: bytes) -> np.ndarray[Any, Any]:
    """One raw output as numpy with its shape: numbers without a copy, BYTES as an object
    array of str (of bytes when not all of them are UTF-8)."""
    dims = list(shape)
    if datatype == "BYTES":
        items = unpack_bytes(raw)
        text = as_text(items)
        values = np.empty(len(items), dtype=object)
        values[:] = items if text is None else text
        return values.reshape(dims)
    dtype = NUMPY_DTYPES.get(datatype)
    if dtype is None:
        raise InternalError(f"the model answered datatype {datatype}, which has no numpy form")
    return np.frombuffer(raw, dtype=dtype).reshape(dims)


def set_parameters(target: MutableMapping[str, Any], values: Mapping[str, Any], what: str) -> None:
    """JSON parameter values into a protobuf `map<string, InferParameter>`."""
    for key, value in values.items():
        parameter = target[key]
        if isinstance(value, bool):
            parameter.bool_param = value
        elif isinstance(value, int):
            if -_INT64_MAX - 1 <= value <= _INT64_MAX:
                parameter.int64_param = value
            elif 0 <= value <= _UINT64_MAX:
                parameter.uint64_param = value
            else:
                raise InvalidInputError(f"{what} parameter '{key}' is out of the 64-bit range")
        elif isinstance(value, float):
            parameter.double_param = value
        elif isinstance(value, str):
            parameter.string_param = value
        else:
            raise InvalidInputError(
                f"{what} parameter '{key}' must be a string, number or boolean, "
                f"not {type(value).__name__}"
            )


def parameters_dict(source: Mapping[str, Any]) -> dict[str, Any]:
    """A protobuf `map<string, InferParameter>` as plain values."""
    values = {}
    for key, parameter in source.items():
        choice = parameter.WhichOneof("parameter_choice")
        if choice is not None:
            values[key] = getattr(parameter, choice)
    return values
