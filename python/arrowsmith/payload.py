"""A batch of jobs -> the value a pyfunc model is called with (the native side turns a
request into a job: `InferRequest.job`).

With a signature, the native side has usually applied it already (batch form `columns` or
`tensors`): columns arrive as one Arrow record batch (-> DataFrame), tensors as arrays
(-> one ndarray, or a dict of them when the spec names them). A request-level
`content_type` of `np`, `pd` or `dict` asks for the inputs as sent in that form (as MLServer
does; `np` means the first input). Where MLflow's enforcement of that value is provably the
native one's (the form the signature produces anyway, holding the very values the native
enforcement is tested against: admit.rs says when), the native side applies the signature
as for a request without a content type. Otherwise the batch's form is the content
type, the inputs come as sent, and MLflow's own enforcement judges them; an input whose
`content_type` is `str` then has its BYTES decoded as UTF-8 text.
"""

from __future__ import annotations

import functools
import logging
from typing import TYPE_CHECKING, Any, Protocol

from arrowsmith import _native
from arrowsmith.errors import InvalidInputError

if TYPE_CHECKING:
    import numpy as np

    from arrowsmith.models.loaded import LoadedModel

logger = logging.getLogger(__name__)

#: Request parameters that steer the server (or belong to other servers' extensions): they
#: reach the model as MLflow params only when its ParamSchema declares the very name.
_RESERVED_PARAMS = frozenset(
    {
        "content_type",
        "headers",
        "binary_data_output",
        "sequence_id",
        "sequence_start",
        "sequence_end",
        "priority",
        "timeout",
    }
)


def to_ndarray(
    datatype: str, shape: list[int], values: _native.ArrowArray, as_text: bool = False
) -> np.ndarray[Any, Any]:
    """A tensor as numpy: fixed-width values without a copy where Arrow allows, BYTES as an
    object array of bytes (or of str with `as_text`)."""
    import pyarrow as pa

    array = pa.array(values)
    if as_text and pa.types.is_binary(array.type):
        try:
            array = array.cast(pa.string())
        except pa.ArrowInvalid as error:
            raise InvalidInputError("a BYTES input with content_type 'str' is not UTF-8") from error
    values_np: np.ndarray[Any, Any] = array.to_numpy(zero_copy_only=False)
    return values_np.reshape(shape)


def _frame(batch: _native.Batch, schema: Any) -> Any:
    """The enforced columns as the DataFrame MLflow's enforcement would hand the model.

    Numeric columns are final. Text becomes object columns. Two of MLflow's object-column
    rules need Python values, so they run through MLflow's own `_enforce_mlflow_datatype`:
    datetime columns (ISO text, read as MLServer's datetime codec reads it) and bytes sent
    for a double column (MLflow parses those with `pd.to_numeric`)."""
    import pandas as pd
    import pyarrow as pa

    block = batch.column_block()
    if block is not None:
        return _numeric_frame(block, batch.input_names())
    record_batch = pa.record_batch(batch.frame())
    if record_batch.num_columns == 0:
        return pd.DataFrame({})
    frame = record_batch.to_pandas()
    named = schema.has_input_names()
    types = {spec.name: spec.type for spec in schema.inputs} if named else None
    for position, field in enumerate(record_batch.schema):
        column_type = types[field.name] if types is not None else schema.inputs[position].type
        type_name = getattr(column_type, "name", None)
        if pa.types.is_string(field.type):
            column = frame[field.name].astype(object)
            if type_name == "datetime":
                column = _mlflow_column(
                    field.name, _parse_datetimes(field.name, column), column_type
                )
            frame[field.name] = column
        elif pa.types.is_binary(field.type) and type_name == "double":
            frame[field.name] = _mlflow_column(field.name, frame[field.name], column_type)
    return frame


def _rows_by_columns(block: _native.ArrowArray, columns: int) -> np.ndarray[Any, Any]:
    """The native block (columns x rows, C order) seen as rows x columns, without a copy:
    the very array a DataFrame over it hands out as its values."""
    import pyarrow as pa

    values: np.ndarray[Any, Any] = pa.array(block).to_numpy(zero_copy_only=True)
    return values.reshape(columns, -1).T


def _numeric_frame(block: _native.ArrowArray, names: list[str]) -> Any:
    """Columns of one numeric type as a single-block DataFrame over the native block,
    without another copy: about a third of what the general Arrow -> pandas conversion
    costs for a small batch."""
    import pandas as pd

    rows = _rows_by_columns(block, len(names))
    return pd.DataFrame(rows, columns=_column_index(tuple(names)), copy=False)


def estimator_block(batch: _native.Batch, model: LoadedModel) -> np.ndarray[Any, Any] | None:
    """The batch as the rows x columns block its model's estimator takes directly, when the
    model has a proven block call (models/fast_path.py) and the batch is that block; None
    when the batch goes the DataFrame way."""
    call = model.block_call
    if call is None or batch.form != "columns":
        return None
    names = batch.input_names()
    if tuple(names) != call.columns:
        return None
    block = batch.column_block()
    if block is None:
        return None
    rows = _rows_by_columns(block, len(names))
    return rows if rows.dtype == call.dtype else None


@functools.lru_cache(maxsize=256)
def _column_index(names: tuple[str, ...]) -> Any:
    """The columns' index, built once per set of names: pandas' string index is costly to
    build (and immutable, so shared safely)."""
    import pandas as pd

    return pd.Index(names)


def _parse_datetimes(name: str, column: Any) -> Any:
    import datetime

    import pandas as pd

    try:
        values = [datetime.datetime.fromisoformat(text) for text in column]
    except ValueError as error:
        raise InvalidInputError(
            f"column {name} holds text that is not an ISO 8601 date-time: {error}", name
        ) from error
    return pd.Series(values, index=column.index, name=name, dtype=object)


def _mlflow_column(name: str, column: Any, column_type: Any) -> Any:
    """One column through MLflow's own conversion rule for it."""
    from mlflow.exceptions import MlflowException
    from mlflow.models.utils import _enforce_mlflow_datatype

    try:
        return _enforce_mlflow_datatype(name, column, column_type)
    except MlflowException as error:
        raise InvalidInputError(error.message, name) from error
    except (TypeError, ValueError) as error:
        # pandas' own refusals inside MLflow's rule (e.g. dates out of datetime64[ns]).
        raise InvalidInputError(f"column {name} cannot be converted: {error}", name) from error


def _tensor(spec_dtype: Any, datatype: str, shape: list[int], values: Any) -> Any:
    """One enforced tensor; text and bytes specs get numpy's own str/bytes arrays, the
    dtypes MLflow's strict tensor check compares with."""
    import numpy as np

    array = to_ndarray(datatype, shape, values)
    if spec_dtype.kind in "US":
        return np.array(array.reshape(-1).tolist(), dtype=spec_dtype.kind).reshape(shape)
    return array


def _enforced_input(batch: _native.Batch, model: LoadedModel) -> Any:
    schema = model.input_schema
    assert schema is not None
    if batch.form == "columns":
        return _frame(batch, schema)
    specs = {spec.name: spec.type for spec in schema.inputs}
    first = schema.inputs[0].type
    arrays = {
        name: _tensor(specs.get(name, first), dt, shape, values)
        for name, dt, shape, values in batch.inputs()
    }
    return arrays if schema.has_input_names() else next(iter(arrays.values()))


def _column(name: str, array: np.ndarray[Any, Any]) -> Any:
    """A tensor as a DataFrame column: [n] and [n, 1] as values, wider rows as arrays; a
    tensor of no dimensions has no rows to be a column of."""
    if array.ndim == 0:
        raise InvalidInputError(
            f"input {name} has shape []: a DataFrame column needs a first dimension", name
        )
    if array.ndim == 2 and array.shape[1] == 1:
        return array[:, 0]
    return array if array.ndim == 1 else list(array)


def _as_sent_input(batch: _native.Batch) -> Any:
    import pandas as pd

    text_inputs = {
        name
        for name, params in batch.input_parameters().items()
        if params.get("content_type") == "str"
    }
    arrays = {
        name: to_ndarray(dt, shape, values, as_text=name in text_inputs)
        for name, dt, shape, values in batch.inputs()
    }
    if batch.form == "np":
        return next(iter(arrays.values()))
    if batch.form == "pd":
        try:
            return pd.DataFrame({name: _column(name, a) for name, a in arrays.items()})
        except ValueError as error:
            raise InvalidInputError(f"the inputs do not form a DataFrame: {error}") from error
    return arrays


def batch_input(batch: _native.Batch, model: LoadedModel) -> tuple[Any, bool]:
    """The value to call the model with for a whole batch, and whether the signature was
    enforced on it."""
    if batch.form in ("columns", "tensors"):
        return _enforced_input(batch, model), True
    return _as_sent_input(batch), False


def model_input(request: _native.InferRequest, model: LoadedModel) -> tuple[Any, bool]:
    """The model input for one request on its own (a batch of one)."""
    return batch_input(request.job(model.signature).as_batch(), model)


class _HasParameters(Protocol):
    @property
    def parameters(self) -> dict[str, Any]: ...


def model_params(source: _HasParameters, model: LoadedModel) -> dict[str, Any] | None:
    """Request (or batch) parameters meant for the model, as MLflow `params`: None when the
    request had none. Reserved ones (server and Triton extensions) are passed only when the
    model's ParamSchema declares that very name; a model without a ParamSchema gets none of
    them (as MLflow drops them)."""
    parameters = source.parameters
    if not parameters:
        return None
    declared = model.param_names or frozenset()
    params = {
        name: value
        for name, value in parameters.items()
        if name in declared or (name not in _RESERVED_PARAMS and not name.startswith("triton_"))
    }
    if model.param_names is None:
        if params:
            logger.debug("model %s declares no params; ignoring %s", model.name, sorted(params))
        return {}
    return params
