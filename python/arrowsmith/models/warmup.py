"""Warm-up: one prediction before a model is called ready, so the first client request
pays no first-call costs (lazy imports, caches). The model's input example is used when it
has one; otherwise one row is made up from the signature."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from arrowsmith.models.loaded import LoadedModel

logger = logging.getLogger(__name__)

_COLUMN_ZEROS: dict[str, Any] = {
    "boolean": False,
    "integer": np.int32(0),
    "long": np.int64(0),
    "float": np.float32(0),
    "double": 0.0,
    "string": "",
    "binary": b"",
}


def _made_up_example(schema: Any) -> Any | None:
    """One row of zeros or empty strings shaped by the signature; None if it has a type
    without an obvious neutral value."""
    import pandas as pd

    if schema.is_tensor_spec():
        arrays = {}
        for i, spec in enumerate(schema.inputs):
            shape = tuple(1 if d == -1 else int(d) for d in spec.shape)
            dtype = spec.type if spec.type.kind not in "USO" else np.dtype(object)
            fill: Any = "" if spec.type.kind == "U" else b"" if spec.type.kind in "SO" else 0
            arrays[spec.name or f"input-{i}"] = np.full(shape, fill, dtype=dtype)
        has_names = schema.has_input_names()
        return arrays if has_names else next(iter(arrays.values()))
    row = {}
    for spec in schema.inputs:
        value = _COLUMN_ZEROS.get(getattr(spec.type, "name", ""))
        if value is None:
            return None
        row[spec.name] = [value]
    return pd.DataFrame(row)


def warm_up(model: LoadedModel, example: Any | None) -> None:
    """Predicts once. A failing input example fails the load; a made-up row that the model
    refuses only logs a warning (zeros are not valid input for every model)."""
    from arrowsmith.models.predict import predict

    if example is not None:
        predict(model, example, None)
        return
    schema = model.pyfunc.metadata.get_input_schema()
    made_up = _made_up_example(schema) if schema is not None else None
    if made_up is None:
        logger.info("model %s has no input example to warm up with", model.name)
        return
    try:
        predict(model, made_up, None)
    except Exception as error:
        logger.warning("model %s refused a made-up warm-up row: %s", model.name, error)
