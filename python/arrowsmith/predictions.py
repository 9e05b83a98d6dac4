"""A model's predictions -> named output tensors (flat Arrow values plus a shape), and
the response-level `content_type` parameter saying what kind of object they came from.

numpy arrays keep their shape; a DataFrame gives one output per column, shape [n, 1]
(MLServer's convention); a Series one output of shape [n]; a dict one output per key.
Unnamed outputs take the signature's output names, else `output-{i}`.
"""

from __future__ import annotations

from typing import Any

from arrowsmith.errors import InternalError, InvalidInputError

#: (name, shape, values exporting __arrow_c_array__)
OutputTensor = tuple[str, list[int], Any]


def _arrow_values(name: str, values: Any) -> Any:
    """Flat Arrow values for one output. Times and dates become ISO 8601 text, since V2 has
    no time type."""
    import numpy as np
    import pyarrow as pa

    flat = np.asarray(values).reshape(-1)
    if flat.dtype.kind == "M":
        flat = np.datetime_as_string(flat)
    elif flat.dtype.kind == "m":
        flat = flat.astype(str)
    try:
        array = pa.array(flat, from_pandas=True) if flat.dtype == object else pa.array(flat)
        if pa.types.is_temporal(array.type):
            # Python or pandas time objects (time-zone aware ones included) in an object array.
            array = pa.array([None if v is None else v.isoformat() for v in flat], pa.string())
    except pa.lib.ArrowException as error:
        raise InternalError(f"output '{name}' cannot be encoded: {error}") from error
    return array


def _ndarray_output(name: str, values: Any) -> OutputTensor:
    import numpy as np

    array = np.asarray(values)
    shape = list(array.shape) or [1]
    return name, shape, _arrow_values(name, array)


def output_tensors(predictions: Any, output_names: list[str]) -> list[OutputTensor]:
    """Splits predictions into V2 outputs."""
    import pandas as pd

    def name_at(i: int) -> str:
        return output_names[i] if i < len(output_names) else f"output-{i}"

    try:
        if isinstance(predictions, pd.DataFrame):
            rows = len(predictions)
            return [
                (str(column), [rows, 1], _arrow_values(str(column), predictions[column].to_numpy()))
                for column in predictions.columns
            ]
        if isinstance(predictions, pd.Series):
            name = str(predictions.name) if predictions.name is not None else name_at(0)
            return [(name, [len(predictions)], _arrow_values(name, predictions.to_numpy()))]
        if isinstance(predictions, dict):
            return [_ndarray_output(str(key), value) for key, value in predictions.items()]
        return [_ndarray_output(name_at(0), predictions)]
    except (TypeError, ValueError) as error:
        raise InternalError(
            f"the model returned {type(predictions).__name__}, which has no V2 form: {error}"
        ) from error


def content_type(predictions: Any) -> str:
    """The kind of object the model returned, in MLServer's content-type words, so a front
    end can rebuild it (e.g. MLflow's /invocations answers a DataFrame as records)."""
    import pandas as pd

    if isinstance(predictions, pd.DataFrame):
        return "pd"
    if isinstance(predictions, pd.Series):
        return "pd_series"
    if isinstance(predictions, dict):
        return "dict"
    return "np"


def select_outputs(outputs: list[OutputTensor], requested: list[str]) -> list[OutputTensor]:
    """The outputs the client asked for, in the order asked; all of them if none named."""
    if not requested:
        return outputs
    by_name = {output[0]: output for output in outputs}
    unknown = [name for name in requested if name not in by_name]
    if unknown:
        raise InvalidInputError(
            f"requested outputs {unknown} are not outputs of the model (outputs: {sorted(by_name)})"
        )
    return [by_name[name] for name in requested]
