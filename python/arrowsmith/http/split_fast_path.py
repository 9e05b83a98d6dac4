"""The common /invocations body, a `dataframe_split` of numbers for a model whose signature
is named `double` / `float` columns, turned into a V2 request with numpy alone: no
DataFrame, no Python object per value. MLflow would build a DataFrame and cast each column
to its schema dtype; for numbers into floating-point columns that cast is exactly numpy's,
so the model sees the same values. Any other body is declined (None) and takes MLflow's
own parser, which also words every refusal."""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any

import numpy as np
import orjson

from arrowsmith._proto import grpc_service_pb2 as pb
from arrowsmith.tensors import set_parameters

if TYPE_CHECKING:
    from arrowsmith.models.loaded import LoadedModel

_SPLIT = "dataframe_split"
_PARAMS = "params"
_SPLIT_KEYS = frozenset({"columns", "data", "index"})
#: MLflow column types whose schema cast of JSON numbers numpy reproduces exactly, with
#: their V2 datatypes.
_FLOAT_COLUMNS: dict[str, tuple[np.dtype[Any], str]] = {
    "double": (np.dtype("<f8"), "FP64"),
    "float": (np.dtype("<f4"), "FP32"),
}

#: A column's numpy dtype and V2 datatype.
ColumnType = tuple[np.dtype[Any], str]


def column_dtypes(model: LoadedModel) -> dict[str, ColumnType] | None:
    """The model's columns and their types when every column is a named double or float
    (and the signature is not from type hints, where MLflow parses nothing); else None."""
    schema = model.input_schema
    if schema is None or schema.is_tensor_spec() or not schema.has_input_names():
        return None
    metadata = model.pyfunc.metadata
    if getattr(metadata, "_is_signature_from_type_hint", lambda: False)():
        return None
    dtypes = {}
    for spec in schema.inputs:
        column_type = _FLOAT_COLUMNS.get(getattr(spec.type, "name", ""))
        if column_type is None:
            return None
        dtypes[spec.name] = column_type
    return dtypes


def _numbers(split: Any) -> tuple[list[str], np.ndarray[Any, Any]] | None:
    if not isinstance(split, dict) or "data" not in split or not split.keys() <= _SPLIT_KEYS:
        return None
    columns = split.get("columns")
    if not isinstance(columns, list) or len(set(columns)) != len(columns):
        return None
    if not all(isinstance(c, str) for c in columns) or not isinstance(split["data"], list):
        return None
    try:
        values = np.asarray(split["data"])
    except ValueError:
        return None
    rows_fit = values.ndim == 2 and values.shape[0] > 0 and values.shape[1] == len(columns)
    if not rows_fit or values.dtype.kind not in "if":
        return None
    index = split.get("index")
    if index is not None and (not isinstance(index, list) or len(index) != values.shape[0]):
        return None
    return columns, values


def request_bytes(body: bytes, model: LoadedModel, dtypes: dict[str, ColumnType]) -> bytes | None:
    """The body as a serialized ModelInferRequest, or None when it is not a numeric
    `dataframe_split` (with optional `params`)."""
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(document, dict) or _SPLIT not in document:
        return None
    if not document.keys() <= {_SPLIT, _PARAMS}:
        return None
    params = document.get(_PARAMS)
    if params is not None and not _scalar_params(params):
        return None
    parsed = _numbers(document[_SPLIT])
    if parsed is None:
        return None
    columns, values = parsed
    # MLflow's enforcement drops columns the signature does not name.
    kept = [(index, name, dtypes[name]) for index, name in enumerate(columns) if name in dtypes]
    inputs = tuple((name, datatype) for _, name, (_, datatype) in kept)
    head = _head(model.name, model.version, inputs, values.shape[0])
    raw = [values[:, index].astype(dtype).tobytes() for index, _, (dtype, _) in kept]
    rest = pb.ModelInferRequest(raw_input_contents=raw)
    if params and model.param_names is not None:
        set_parameters(rest.parameters, params, "MLflow")
    return head + bytes(rest.SerializeToString())


@functools.lru_cache(maxsize=256)
def _head(name: str, version: str, inputs: tuple[tuple[str, str], ...], rows: int) -> bytes:
    """A request's fields but its raw contents and parameters, serialized once per model,
    columns and row count: serialized messages appended one to another decode as their
    merge, so each request serializes only its own values and appends them. The key holds
    only the model's own column names, so clients cannot grow the cache past its bound."""
    request = pb.ModelInferRequest(model_name=name, model_version=version)
    for input_name, datatype in inputs:
        request.inputs.add(name=input_name, datatype=datatype, shape=[rows])
    return bytes(request.SerializeToString())


def _scalar_params(params: Any) -> bool:
    return isinstance(params, dict) and all(
        isinstance(v, bool | int | float | str) for v in params.values()
    )
