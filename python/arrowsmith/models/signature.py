"""An MLflow signature seen two ways: as the native `Signature` the data path enforces, and
as V2 tensor metadata (MLServer's mapping: ColSpec -> shape [-1, 1], TensorSpec -> its own
shape; unnamed tensors are `input-{i}` / `output-{i}`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from arrowsmith import _native
from arrowsmith.tensors import DATATYPE_OF_NUMPY

#: MLflow column type -> (V2 datatype, MLServer content type). Types without a numeric V2
#: form travel as BYTES; Array/Object/Map/AnyType columns as JSON text (`pd_json`).
_COLUMN_DATATYPES = {
    "boolean": ("BOOL", "np"),
    "integer": ("INT32", "np"),
    "long": ("INT64", "np"),
    "float": ("FP32", "np"),
    "double": ("FP64", "np"),
    "string": ("BYTES", "str"),
    "binary": ("BYTES", "base64"),
    "datetime": ("BYTES", "datetime"),
}
_JSON_COLUMN = ("BYTES", "pd_json")


@dataclass(frozen=True)
class TensorMetadata:
    """One input or output as the V2 metadata endpoint describes it."""

    name: str
    datatype: str
    shape: tuple[int, ...]
    #: How MLServer's codecs (and Arrowsmith) read the tensor: np, str, base64, ...
    content_type: str


def numpy_dtype_name(dtype: np.dtype[Any]) -> str:
    """The dtype name the native signature understands (`str`, `bytes`, `object` by kind)."""
    kind_names = {"U": "str", "S": "bytes", "O": "object"}
    return kind_names.get(dtype.kind, dtype.name)


def numpy_datatype(dtype: np.dtype[Any]) -> str:
    return DATATYPE_OF_NUMPY.get(dtype.name, "BYTES")


def _column_type_name(spec: Any) -> str:
    """MLflow's name for a ColSpec type; Array/Object/Map/AnyType by their class name."""
    from mlflow.types import DataType

    if isinstance(spec.type, DataType):
        return str(spec.type.name)
    return type(spec.type).__name__.lower()


def native_signature(schema: Any) -> _native.Signature:
    """The native form of an MLflow input `Schema`."""
    if schema.is_tensor_spec():
        return _native.Signature.tensors(
            [
                (spec.name, numpy_dtype_name(spec.type), [int(d) for d in spec.shape])
                for spec in schema.inputs
            ]
        )
    return _native.Signature.columns(
        [(spec.name, _column_type_name(spec), bool(spec.required)) for spec in schema.inputs]
    )


def tensor_metadata(schema: Any | None, prefix: str) -> list[TensorMetadata]:
    """V2 metadata of an MLflow `Schema` (inputs or outputs); none without a schema."""
    if schema is None:
        return []
    if schema.is_tensor_spec():
        return [
            TensorMetadata(
                name=spec.name or f"{prefix}-{i}",
                datatype=numpy_datatype(spec.type),
                shape=tuple(int(d) for d in spec.shape),
                content_type="np",
            )
            for i, spec in enumerate(schema.inputs)
        ]
    described = []
    for i, spec in enumerate(schema.inputs):
        datatype, content_type = _COLUMN_DATATYPES.get(_column_type_name(spec), _JSON_COLUMN)
        described.append(
            TensorMetadata(spec.name or f"{prefix}-{i}", datatype, (-1, 1), content_type)
        )
    return described


def default_content_type(schema: Any | None) -> str | None:
    """The form a model takes its input in, as MLServer names it: `pd` for columns, `dict`
    for named tensors, `np` for one unnamed tensor; None without a signature."""
    if schema is None:
        return None
    if not schema.is_tensor_spec():
        return "pd"
    return "dict" if schema.has_input_names() else "np"
