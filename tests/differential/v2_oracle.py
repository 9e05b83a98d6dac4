"""The two sides of the differential tests, for one V2 request.

A request is a list of `V2Input`s (flat Python values per tensor). From it come the request's
bytes, built with tritonclient's copy of the V2 protos (never Arrowsmith's own), and the
oracle's value: what MLServer's codecs would hand MLflow, the codec chosen by the signature's
content type (see test_enforcement.py's docstring for the rules).
"""

from __future__ import annotations

import datetime
import struct
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from arrowsmith import _native, payload
from arrowsmith.config import ModelConfig
from arrowsmith.errors import ArrowsmithError
from arrowsmith.models.loaded import LoadedModel
from arrowsmith.models.signature import native_signature
from hypothesis import HealthCheck, settings
from mlflow.types import DataType, Schema
from tritonclient.grpc import service_pb2 as pb

#: Every V2 datatype and the numpy dtype MLServer's numpy codec gives it (BYTES aside).
NUMPY_DTYPES = {
    "BOOL": np.dtype(bool),
    "UINT8": np.dtype("<u1"),
    "UINT16": np.dtype("<u2"),
    "UINT32": np.dtype("<u4"),
    "UINT64": np.dtype("<u8"),
    "INT8": np.dtype("<i1"),
    "INT16": np.dtype("<i2"),
    "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"),
    "FP16": np.dtype("<f2"),
    "FP32": np.dtype("<f4"),
    "FP64": np.dtype("<f8"),
}
DATATYPES = (*NUMPY_DTYPES, "BYTES")

#: The typed `contents` field of each datatype (FP16 has none: raw only).
_CONTENTS_FIELDS = {
    "BOOL": "bool_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}

#: Column types whose BYTES MLServer decodes with its `str` and `datetime` codecs.
TEXT_COLUMN_TYPES = {"string": "column", "datetime": "datetime"}


def derandomized(examples: int) -> settings:
    """Deterministic runs (the same cases every time, in CI too), no per-case deadline."""
    return settings(
        derandomize=True,
        database=None,
        max_examples=examples,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )


@dataclass(frozen=True)
class V2Input:
    """One input tensor: values flat in row-major order (bool, int, float or bytes)."""

    name: str
    datatype: str
    shape: tuple[int, ...]
    values: tuple[Any, ...]

    def describe(self) -> str:
        return f"{self.name!r} {self.datatype} {list(self.shape)} {list(self.values)!r}"


@dataclass(frozen=True)
class V2Param:
    """One request parameter: `kind` is the InferParameter choice (bool, int64, ...)."""

    name: str
    kind: str
    value: bool | int | float | str


def _raw(tensor: V2Input) -> bytes:
    if tensor.datatype == "BYTES":
        return b"".join(struct.pack("<I", len(v)) + v for v in tensor.values)
    return np.array(tensor.values, dtype=NUMPY_DTYPES[tensor.datatype]).tobytes()


def request_bytes(inputs: Sequence[V2Input], raw: bool, params: Sequence[V2Param] = ()) -> bytes:
    """The serialized ModelInferRequest. FP16 has no typed field, so a request with FP16
    values goes raw whatever `raw` says (a request is either all raw or all typed)."""
    raw = raw or any(t.datatype == "FP16" and t.values for t in inputs)
    request = pb.ModelInferRequest(model_name="m")
    for tensor in inputs:
        message = request.inputs.add(name=tensor.name, datatype=tensor.datatype)
        message.shape.extend(tensor.shape)
        if raw:
            request.raw_input_contents.append(_raw(tensor))
        elif tensor.values:
            getattr(message.contents, _CONTENTS_FIELDS[tensor.datatype]).extend(tensor.values)
    for param in params:
        setattr(request.parameters[param.name], f"{param.kind}_param", param.value)
    return request.SerializeToString()


def oracle_array(tensor: V2Input, text: str | None = None) -> np.ndarray:
    """One tensor as MLServer's codecs decode it. `text` for BYTES: "column" (object array
    of str), "datetime" (object array of `datetime.fromisoformat` values, raising on text
    that is not ISO 8601, as the codec does), "str" (numpy `<U`), "bytes" (numpy `S`); None
    keeps an object array of bytes."""
    if tensor.datatype != "BYTES":
        array = np.array(tensor.values, dtype=NUMPY_DTYPES[tensor.datatype])
    elif text == "datetime":
        array = np.empty(len(tensor.values), dtype=object)
        array[:] = [datetime.datetime.fromisoformat(v.decode("utf-8")) for v in tensor.values]
    elif text == "column":
        array = np.empty(len(tensor.values), dtype=object)
        array[:] = [v.decode("utf-8") for v in tensor.values]
    elif text == "str":
        array = np.array([v.decode("utf-8") for v in tensor.values], dtype=str)
    elif text == "bytes":
        array = np.array(list(tensor.values), dtype=bytes)
    else:
        array = np.empty(len(tensor.values), dtype=object)
        array[:] = list(tensor.values)
    return array.reshape(tensor.shape)


def with_input_content_types(body: bytes, content_types: Mapping[str, str]) -> bytes:
    """The request `body` with a `content_type` parameter on each input named in
    `content_types` (as MLServer's codecs mark their inputs: `str` for text)."""
    request = pb.ModelInferRequest.FromString(body)
    for message in request.inputs:
        if message.name in content_types:
            message.parameters["content_type"].string_param = content_types[message.name]
    return request.SerializeToString()


def as_sent_array(tensor: V2Input, as_text: bool) -> np.ndarray:
    """One tensor as a request-level content type hands it over: BYTES as an object array
    of bytes, or of str for an input marked `content_type: str` (raising on bytes that are
    not UTF-8); other datatypes as `oracle_array` decodes them."""
    return oracle_array(tensor, "column" if as_text and tensor.datatype == "BYTES" else None)


def _as_sent_column(array: np.ndarray) -> Any:
    """A tensor as a column of the `pd` form: [n, 1] flattened, wider rows kept as arrays."""
    if array.ndim == 2 and array.shape[1] == 1:
        return array[:, 0]
    return array if array.ndim == 1 else list(array)


def as_sent_value(inputs: Sequence[V2Input], text_inputs: Collection[str], form: str) -> Any:
    """What a request-level `content_type` of `form` asks MLflow to enforce: `np` the first
    input's array, `dict` name -> array, `pd` a DataFrame of one column per input (raising
    where pandas cannot build one). Every input is decoded, the first alone for `np` too."""
    arrays = {t.name: as_sent_array(t, t.name in text_inputs) for t in inputs}
    if form == "np":
        return arrays[inputs[0].name]
    if form == "dict":
        return arrays
    return pd.DataFrame({name: _as_sent_column(array) for name, array in arrays.items()})


def column_spec_for(schema: Schema, tensor: V2Input, position: int) -> Any:
    """The ColSpec an input feeds: by name in a named signature, else by position."""
    if schema.has_input_names():
        return next((s for s in schema.inputs if s.name == tensor.name), None)
    return schema.inputs[position] if position < len(schema.inputs) else None


def oracle_frame(inputs: Sequence[V2Input], schema: Schema) -> pd.DataFrame:
    """MLServer's pandas codec: one column per input, in request order, each flattened."""
    columns = {}
    for position, tensor in enumerate(inputs):
        spec = column_spec_for(schema, tensor, position)
        text = (
            TEXT_COLUMN_TYPES.get(spec.type.name)
            if spec is not None and isinstance(spec.type, DataType)
            else None
        )
        array = oracle_array(tensor, text).reshape(-1)
        columns[tensor.name] = pd.Series(array, dtype=array.dtype)
    return pd.DataFrame(columns)


def _tensor_text(spec: Any) -> str | None:
    return {"U": "str", "S": "bytes"}.get(spec.type.kind) if spec is not None else None


def oracle_tensors(inputs: Sequence[V2Input], schema: Schema) -> Any:
    """MLServer's dict codec for named specs (every input, by name), its numpy codec for one
    unnamed spec (the first input)."""
    if schema.has_input_names():
        specs = {s.name: s for s in schema.inputs}
        return {t.name: oracle_array(t, _tensor_text(specs.get(t.name))) for t in inputs}
    return oracle_array(inputs[0], _tensor_text(schema.inputs[0]))


def loaded_model(schema: Schema, **fields: Any) -> LoadedModel:
    """A `LoadedModel` with what `payload.model_input` reads; the rest left empty."""
    values: dict[str, Any] = {
        "name": "m",
        "version": "",
        "uri": "",
        "pinned_uri": "",
        "pyfunc": None,
        "input_schema": schema,
        "signature": native_signature(schema),
        "inputs": [],
        "outputs": [],
        "param_names": None,
        "config": ModelConfig(uri=""),
    }
    values.update(fields)
    return LoadedModel(**values)


@dataclass(frozen=True)
class Outcome:
    """One side's answer: the value, or the exception it refused with."""

    value: Any = None
    error: BaseException | None = None

    @property
    def refused(self) -> bool:
        return self.error is not None

    def describe(self) -> str:
        if self.error is not None:
            return f"refused: {type(self.error).__name__}: {self.error}"
        return f"accepted: {describe_value(self.value)}"


def describe_value(value: Any) -> str:
    if isinstance(value, pd.DataFrame):
        return f"DataFrame dtypes={dict(value.dtypes.astype(str))}\n{value!r}"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k!r}: {describe_value(v)}" for k, v in value.items()) + "}"
    if isinstance(value, np.ndarray):
        return f"ndarray dtype={value.dtype} shape={value.shape} {value.tolist()!r}"
    return repr(value)


def mlflow_side(call: Callable[[], Any]) -> Outcome:
    """MLflow's answer; any exception is a refusal, since `PyFuncModel.predict` turns every
    exception of its enforcement into an MlflowException."""
    try:
        return Outcome(value=call())
    except Exception as error:
        return Outcome(error=error)


def arrowsmith_side(call: Callable[[], Any]) -> Outcome:
    """Arrowsmith's answer; only its own errors are refusals (anything else is a bug the
    server would answer with INTERNAL)."""
    try:
        return Outcome(value=call())
    except ArrowsmithError as error:
        return Outcome(error=error)


def arrowsmith_input(body: bytes, model: LoadedModel) -> Any:
    """The value Arrowsmith calls the model with."""
    return payload.model_input(_native.decode_request(body), model)[0]


def assert_same_value(ours: Any, theirs: Any) -> None:
    """Equal as the brief defines it: frames exactly (dtypes too, NaN equal to NaN), arrays
    by dtype, shape and values, dicts key by key."""
    if isinstance(theirs, pd.DataFrame):
        assert isinstance(ours, pd.DataFrame), f"not a DataFrame: {type(ours).__name__}"
        pd.testing.assert_frame_equal(ours, theirs, check_dtype=True, check_exact=True)
    elif isinstance(theirs, dict):
        assert isinstance(ours, dict), f"not a dict: {type(ours).__name__}"
        assert list(ours) == list(theirs), f"keys {list(ours)} != {list(theirs)}"
        for key, value in theirs.items():
            assert_same_value(ours[key], value)
    else:
        assert isinstance(ours, np.ndarray), f"not an ndarray: {type(ours).__name__}"
        assert ours.dtype == theirs.dtype, f"dtype {ours.dtype} != {theirs.dtype}"
        assert ours.shape == theirs.shape, f"shape {ours.shape} != {theirs.shape}"
        np.testing.assert_array_equal(ours, theirs, strict=True)
