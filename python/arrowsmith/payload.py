"""A decoded request -> the value a pyfunc model is called with.

With a signature and no explicit content type, the native side has already applied the
signature: columns arrive as one Arrow record batch (-> DataFrame), tensors as arrays
(-> one ndarray, or a dict of them when the spec names them). A request-level
`content_type` of `np`, `pd` or `dict` asks for the inputs as sent in that form (as MLServer
does; `np` means the first input), and MLflow's own enforcement then judges them. An input
whose `content_type` is `str` has its BYTES decoded as UTF-8 text.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from arrowsmith import _native
from arrowsmith.errors import InvalidInputError

if TYPE_CHECKING:
    import numpy as np

    from arrowsmith.models.registry import LoadedModel

logger = logging.getLogger(__name__)

CONTENT_TYPES = ("np", "pd", "dict")

#: Request parameters that steer the server (or belong to other servers' extensions) and
#: never reach the model as MLflow params.
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


def _frame_from_batch(batch: _native.ArrowArray) -> Any:
    import pyarrow as pa

    return pa.record_batch(batch).to_pandas()


def _signature_input(request: _native.InferRequest, model: LoadedModel) -> Any:
    assert model.signature is not None
    coerced = request.coerce(model.signature)
    if isinstance(coerced, _native.ArrowArray):
        return _frame_from_batch(coerced)
    arrays = {name: to_ndarray(dt, shape, values) for name, dt, shape, values in coerced}
    named = any(spec.name for spec in model.pyfunc.metadata.get_input_schema().inputs)
    return arrays if named else next(iter(arrays.values()))


def _column(array: np.ndarray[Any, Any]) -> Any:
    """A tensor as a DataFrame column: [n] and [n, 1] as values, wider rows as arrays."""
    if array.ndim == 2 and array.shape[1] == 1:
        return array[:, 0]
    return array if array.ndim == 1 else list(array)


def _as_sent(request: _native.InferRequest, content_type: str | None) -> Any:
    import pandas as pd

    text_inputs = {
        name
        for name, params in request.input_parameters().items()
        if params.get("content_type") == "str"
    }
    inputs = request.inputs()
    if not inputs:
        raise InvalidInputError("the request has no inputs")
    arrays = {
        name: to_ndarray(dt, shape, values, as_text=name in text_inputs)
        for name, dt, shape, values in inputs
    }
    if content_type is None:
        one_column = all(len(shape) == 1 or shape[1:] == [1] for _, _, shape, _ in inputs)
        content_type = "np" if len(arrays) == 1 else "pd" if one_column else "dict"
    if content_type == "np":
        return next(iter(arrays.values()))
    if content_type == "pd":
        try:
            return pd.DataFrame({name: _column(a) for name, a in arrays.items()})
        except ValueError as error:
            raise InvalidInputError(f"the inputs do not form a DataFrame: {error}") from error
    return arrays


def model_input(request: _native.InferRequest, model: LoadedModel) -> Any:
    """The value to call `model.pyfunc.predict` with."""
    content_type = request.parameters.get("content_type")
    if content_type is not None and content_type not in CONTENT_TYPES:
        raise InvalidInputError(
            f"request content_type '{content_type}' is not one of {', '.join(CONTENT_TYPES)}"
        )
    if model.signature is not None and content_type is None:
        return _signature_input(request, model)
    return _as_sent(request, content_type)


def model_params(request: _native.InferRequest, model: LoadedModel) -> dict[str, Any] | None:
    """Request parameters meant for the model, as MLflow `params`."""
    params = {
        name: value
        for name, value in request.parameters.items()
        if name not in _RESERVED_PARAMS and not name.startswith("triton_")
    }
    if not params:
        return None
    if model.param_names is None:
        logger.debug("model %s declares no params; ignoring %s", model.name, sorted(params))
        return None
    return params
