"""The fast call, proven on the wine model (an sklearn ElasticNet with 11 double columns).

Arrowsmith enforces the signature natively and then calls the sklearn flavor's predict
function itself. Whatever the request, that must predict bitwise what MLflow's
`PyFuncModel.predict` predicts on the oracle's frame (the oracle is defined in
test_enforcement.py), or refuse when MLflow refuses. Inputs come FP32 or FP64, in any order,
with extra inputs MLflow ignores; frames with NaN make sklearn refuse on both sides.
"""

from __future__ import annotations

import math
from collections import Counter
from typing import Any

import numpy as np
import pytest
from arrowsmith import _native, payload
from arrowsmith.config import ModelConfig
from arrowsmith.errors import InvalidInputError, ModelError
from arrowsmith.models.loaded import LoadedModel, load_model
from arrowsmith.models.predict import predict
from hypothesis import given
from hypothesis import strategies as st
from mlflow.exceptions import MlflowException
from v2_oracle import (
    V2Input,
    arrowsmith_side,
    derandomized,
    mlflow_side,
    oracle_frame,
    request_bytes,
)


@pytest.fixture(scope="module")
def wine_model(wine_model_dir) -> LoadedModel:
    """The wine model as the server loads it, fast call included."""
    model = load_model(ModelConfig(str(wine_model_dir), "wine"))
    assert model.predict_path == "native-enforcement"
    return model


def feature_values(datatype: str, rows: int, with_nan: bool) -> st.SearchStrategy[tuple]:
    """Finite values of the datatype's width: mostly of the data's magnitudes, some huge (not
    so huge that sklearn's finiteness check, a sum, overflows and warns)."""
    width = 32 if datatype == "FP32" else 64
    huge = 2.0**120 if width == 32 else 2.0**1000
    element = st.one_of(st.floats(-1e3, 1e3, width=width), st.floats(-huge, huge, width=width))
    if with_nan:
        element = st.one_of(element, st.just(math.nan))
    return st.lists(element, min_size=rows, max_size=rows).map(tuple)


#: Inputs MLflow ignores (the model has no such column): datatype and value.
EXTRAS = (("FP64", 0.5), ("INT64", 7), ("BYTES", b"x"), ("BOOL", True), ("UINT8", 3))


@st.composite
def wine_requests(draw: st.DrawFn, columns: tuple[str, ...]) -> tuple[tuple[V2Input, ...], bool]:
    rows = draw(st.one_of(st.integers(0, 5), st.integers(0, 50)))
    with_nan = draw(st.sampled_from((False, False, False, True)))
    inputs = []
    for name in columns:
        datatype = draw(st.sampled_from(("FP32", "FP64")))
        shape = draw(st.sampled_from([(rows,), (rows, 1)]))
        inputs.append(
            V2Input(name, datatype, shape, draw(feature_values(datatype, rows, with_nan)))
        )
    for extra in range(draw(st.integers(0, 2))):
        datatype, value = draw(st.sampled_from(EXTRAS))
        inputs.append(V2Input(f"extra-{extra}", datatype, (rows,), (value,) * rows))
    return tuple(draw(st.permutations(inputs))), draw(st.booleans())


def fast_call(body: bytes, model: LoadedModel) -> Any:
    value, enforced = payload.model_input(_native.decode_request(body), model)
    assert enforced
    return predict(model, value, params=None, enforced=True)


@derandomized(200)
@given(data=st.data())
def test_fast_call_predicts_bitwise_what_mlflow_predicts(
    wine_model, wine_pyfunc, data, tally: Counter[str]
) -> None:
    schema = wine_model.input_schema
    inputs, raw = data.draw(wine_requests(tuple(schema.input_names())))
    theirs = mlflow_side(lambda: wine_pyfunc.predict(oracle_frame(inputs, schema)))
    ours = arrowsmith_side(lambda: fast_call(request_bytes(inputs, raw), wine_model))
    lines = [f"raw_input_contents: {raw}", *(f"  input {t.describe()}" for t in inputs)]
    report = "\n".join(
        [*lines, f"MLflow:     {theirs.describe()}", f"Arrowsmith: {ours.describe()}"]
    )
    assert ours.refused == theirs.refused, f"Arrowsmith and MLflow disagree\n{report}"
    if ours.refused:
        # MLflow's enforcement refuses with MlflowException, the model itself with its own.
        by_enforcement = isinstance(theirs.error, MlflowException)
        stage = "enforcement" if by_enforcement else "the model"
        tally[f"fast path: both refused ({stage})"] += 1
        expected_error = InvalidInputError if by_enforcement else ModelError
        assert isinstance(ours.error, expected_error), f"refused at another stage\n{report}"
        return
    tally["fast path: both predicted"] += 1
    expected, predicted = np.asarray(theirs.value), np.asarray(ours.value)
    assert (predicted.dtype, predicted.shape) == (expected.dtype, expected.shape), report
    assert predicted.tobytes() == expected.tobytes(), f"predictions differ\n{report}"
