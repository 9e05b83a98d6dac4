"""Between MLflow's scoring protocol and V2: what MLflow's parsers make of a body (a
DataFrame, a dict of arrays, an ndarray) as a ModelInferRequest, and a ModelInferResponse
back as the object the model returned (its `content_type` parameter says which kind).

The request goes through the native signature path when the model's signature can take it
as sent (named plain columns, or tensors); otherwise it carries the form MLflow would hand
the model (`pd`, `dict`, `np`) and MLflow's own enforcement judges it."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from arrowsmith._proto import grpc_service_pb2 as pb
from arrowsmith.errors import InvalidInputError, UnsupportedError
from arrowsmith.models.signature import numpy_datatype
from arrowsmith.tensors import (
    NUMPY_DTYPES,
    output_array,
    pack_bytes,
    parameters_dict,
    set_parameters,
)

if TYPE_CHECKING:
    from arrowsmith.models.loaded import LoadedModel

#: The name predictions.py gives an unnamed first output: an unnamed Series comes back so.
UNNAMED_OUTPUT = "output-0"
#: MLServer's content type for JSON columns (Array, Object, Map, AnyType), which the native
#: signature path does not take.
_JSON_COLUMN = "pd_json"


def _text_items(name: str, values: np.ndarray[Any, Any]) -> tuple[list[bytes], bool]:
    """Object values as BYTES items, and whether they were text."""
    items = values.reshape(-1).tolist()
    if all(isinstance(item, str) for item in items):
        return [item.encode() for item in items], True
    if all(isinstance(item, bytes) for item in items):
        return items, False
    kinds = sorted({type(item).__name__ for item in items})
    raise UnsupportedError(
        f"input '{name}' holds {', '.join(kinds)} values, which have no V2 form here "
        "(numbers, booleans, text, bytes and datetimes do)"
    )


def _add_input(request: Any, name: str, values: Any) -> None:
    array = np.asarray(values)
    if array.ndim == 0:
        array = array.reshape(1)
    kind = array.dtype.kind
    datatype = numpy_datatype(array.dtype)
    tensor = request.inputs.add(name=name, shape=list(array.shape))
    if kind in "biuf" and datatype in NUMPY_DTYPES:
        tensor.datatype = datatype
        little_endian = array.astype(array.dtype.newbyteorder("<"), copy=False)
        request.raw_input_contents.append(np.ascontiguousarray(little_endian).tobytes())
        return
    if kind == "M":
        array = np.datetime_as_string(array)
        kind = "U"
    if kind in "US":
        items = [item.encode() if kind == "U" else item for item in array.reshape(-1).tolist()]
        text = kind == "U"
    elif kind == "O":
        items, text = _text_items(name, array)
    else:
        raise UnsupportedError(f"input '{name}' has dtype {array.dtype}, which has no V2 form")
    tensor.datatype = "BYTES"
    if text:
        tensor.parameters["content_type"].string_param = "str"
    request.raw_input_contents.append(pack_bytes(items))


def _native_form(value: Any, model: LoadedModel) -> bool:
    """Whether the native signature path takes `value` as MLflow's enforcement would."""
    import pandas as pd

    schema = model.input_schema
    if schema is None:
        return False
    if schema.is_tensor_spec():
        if schema.has_input_names():
            return isinstance(value, dict)
        return isinstance(value, np.ndarray) and len(schema.inputs) == 1
    plain = all(t.content_type != _JSON_COLUMN for t in model.inputs)
    return plain and schema.has_input_names() and isinstance(value, pd.DataFrame | dict)


def request_bytes(value: Any, params: dict[str, Any] | None, model: LoadedModel) -> bytes:
    """MLflow's parsed input (and `params`) as a serialized ModelInferRequest for `model`."""
    import pandas as pd

    schema: Any = model.input_schema
    request = pb.ModelInferRequest(model_name=model.name, model_version=model.version)
    if isinstance(value, pd.DataFrame):
        columns: dict[str, Any] = {str(c): value[c].to_numpy() for c in value.columns}
        form = "pd"
    elif isinstance(value, dict):
        columns = dict(value)
        form = "dict"
    elif isinstance(value, np.ndarray):
        columns = {model.inputs[0].name if model.inputs else "input-0": value}
        form = "np"
    else:
        raise UnsupportedError(
            f"a {type(value).__name__} input (e.g. a chat or type-hinted payload) cannot be "
            "served here; send dataframe_split, dataframe_records, instances or inputs"
        )
    if not _native_form(value, model):
        request.parameters["content_type"].string_param = form
    elif not schema.is_tensor_spec():
        # As MLflow's enforcement does, columns the signature does not name are dropped.
        named = set(schema.input_names())
        columns = {name: values for name, values in columns.items() if name in named}
    for name, values in columns.items():
        _add_input(request, str(name), values)
    if params and model.param_names is not None:
        if not isinstance(params, dict):
            raise InvalidInputError(f"params must be a JSON object, not {type(params).__name__}")
        try:
            set_parameters(request.parameters, params, "MLflow")
        except InvalidInputError as error:
            raise UnsupportedError(error.message) from None
    return bytes(request.SerializeToString())


def _column(array: np.ndarray[Any, Any]) -> Any:
    if array.ndim == 2 and array.shape[1] == 1:
        return array[:, 0]
    return array if array.ndim == 1 else list(array)


def predictions(response_bytes: bytes) -> Any:
    """The model's answer rebuilt from a serialized ModelInferResponse: a DataFrame, a
    Series, a dict of arrays or one array, as its `content_type` parameter says."""
    import pandas as pd

    response = pb.ModelInferResponse.FromString(response_bytes)
    kind = parameters_dict(response.parameters).get("content_type", "np")
    arrays = {
        output.name: output_array(output.datatype, output.shape, raw)
        for output, raw in zip(response.outputs, response.raw_output_contents, strict=True)
    }
    if kind == "pd":
        return pd.DataFrame({name: _column(array) for name, array in arrays.items()})
    if kind == "dict":
        return arrays
    name, array = next(iter(arrays.items()))
    if kind == "pd_series":
        return pd.Series(array, name=None if name == UNNAMED_OUTPUT else name)
    return array
