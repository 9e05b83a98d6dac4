"""`/invocations` answers are written as MLflow's scoring server writes them: for any
predictions a model may return (arrays of every dtype with NaN and infinities, Series,
DataFrames, dicts of arrays, lists, scalars), `render` gives the very bytes of MLflow's
`predictions_to_json` and `unwrapped_predictions_to_json`."""

import io
from typing import Any

import numpy as np
import pandas as pd
from arrowsmith.http.scoring_json import render
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from mlflow.pyfunc import scoring_server

_DTYPES = st.sampled_from(["<f8", "<f4", "<i8", "<i4", "<u8", "|b1", "<U6", "O"])


@st.composite
def arrays(draw: st.DrawFn) -> np.ndarray[Any, Any]:
    dtype = np.dtype(draw(_DTYPES))
    shape = draw(hnp.array_shapes(min_dims=1, max_dims=2, min_side=0, max_side=4))
    if dtype.kind == "O":
        values = draw(
            st.lists(
                st.one_of(st.none(), st.text(max_size=4), st.floats(), st.integers()),
                min_size=int(np.prod(shape)),
                max_size=int(np.prod(shape)),
            )
        )
        array = np.empty(len(values), dtype=object)
        array[:] = values
        return array.reshape(shape)
    elements = st.floats(width=32) if dtype.kind == "f" else None
    return draw(hnp.arrays(dtype, shape, elements=elements))


@st.composite
def predictions(draw: st.DrawFn) -> Any:
    array = draw(arrays())
    form = draw(st.sampled_from(["array", "series", "frame", "dict", "list", "scalar"]))
    if form == "series" and array.ndim == 1:
        return pd.Series(array, name=draw(st.sampled_from([None, "y", "score"])))
    if form == "frame" and array.ndim == 2:
        return pd.DataFrame(array, columns=[f"c{i}" for i in range(array.shape[1])])
    if form == "dict":
        return {"a": array, "b": array[:1]}
    if form == "list":
        return array.tolist()
    if form == "scalar" and array.size:
        return array.flat[0]
    return array


def _mlflow(predictions: Any, unwrapped: bool) -> bytes:
    output = io.StringIO()
    if unwrapped:
        scoring_server.unwrapped_predictions_to_json(predictions, output)
    else:
        scoring_server.predictions_to_json(predictions, output)
    return output.getvalue().encode()


@settings(max_examples=400, deadline=None)
@given(predictions(), st.booleans())
def test_render_writes_mlflow_bytes(predictions: Any, unwrapped: bool) -> None:
    assert render(predictions, unwrapped) == _mlflow(predictions, unwrapped)
