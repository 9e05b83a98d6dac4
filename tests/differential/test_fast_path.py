"""The fast calls, proven on the wine model (an sklearn ElasticNet with 11 double columns).

Arrowsmith enforces the signature natively and then calls the sklearn flavor's predict
function itself on the enforced DataFrame (`native-enforcement`), or the estimator's
predict on the batch's rows x columns block (`estimator-block`, the path the wine model
takes once its proof at load holds). Whatever the request, each must predict bitwise what
MLflow's `PyFuncModel.predict` predicts on the oracle's frame (the oracle is defined in
test_enforcement.py), or refuse when MLflow refuses. Inputs come FP32 or FP64, in any order,
with extra inputs MLflow ignores; frames with NaN make sklearn refuse on both sides. Models
the block call would get wrong (columns in another order than fitted, an estimator that
selects columns by name) must keep the DataFrame call.
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
from arrowsmith.models.predict import predict, predict_block
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
    assert model.predict_path == "estimator-block"
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


def frame_call(body: bytes, model: LoadedModel) -> Any:
    value, enforced = payload.model_input(_native.decode_request(body), model)
    assert enforced
    return predict(model, value, params=None, enforced=True)


def block_call(body: bytes, model: LoadedModel) -> Any:
    batch = _native.decode_request(body).job(model.signature).as_batch()
    block = payload.estimator_block(batch, model)
    assert block is not None, "an enforced wine batch is always a block"
    return predict_block(model, block, params=None)


@pytest.mark.parametrize("call", [frame_call, block_call], ids=["frame", "block"])
@derandomized(400)
@given(data=st.data())
def test_fast_call_predicts_bitwise_what_mlflow_predicts(
    call, wine_model, wine_pyfunc, data, tally: Counter[str]
) -> None:
    schema = wine_model.input_schema
    inputs, raw = data.draw(wine_requests(tuple(schema.input_names())))
    theirs = mlflow_side(lambda: wine_pyfunc.predict(oracle_frame(inputs, schema)))
    ours = arrowsmith_side(lambda: call(request_bytes(inputs, raw), wine_model))
    lines = [f"raw_input_contents: {raw}", *(f"  input {t.describe()}" for t in inputs)]
    report = "\n".join(
        [*lines, f"MLflow:     {theirs.describe()}", f"Arrowsmith: {ours.describe()}"]
    )
    assert ours.refused == theirs.refused, f"Arrowsmith and MLflow disagree\n{report}"
    if ours.refused:
        # MLflow's enforcement refuses with MlflowException, the model itself with its own.
        by_enforcement = isinstance(theirs.error, MlflowException)
        stage = "enforcement" if by_enforcement else "the model"
        tally[f"fast path, {call.__name__}: both refused ({stage})"] += 1
        expected_error = InvalidInputError if by_enforcement else ModelError
        assert isinstance(ours.error, expected_error), f"refused at another stage\n{report}"
        return
    tally[f"fast path, {call.__name__}: both predicted"] += 1
    expected, predicted = np.asarray(theirs.value), np.asarray(ours.value)
    assert (predicted.dtype, predicted.shape) == (expected.dtype, expected.shape), report
    assert predicted.tobytes() == expected.tobytes(), f"predictions differ\n{report}"


def save_sklearn(path: Any, estimator: Any, columns: list[str], example: Any) -> str:
    """An MLflow sklearn model of `estimator`, its signature's columns in `columns`' order."""
    import mlflow.sklearn
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, DataType, Schema

    signature = ModelSignature(Schema([ColSpec(DataType.double, name) for name in columns]))
    mlflow.sklearn.save_model(estimator, str(path), signature=signature, input_example=example)
    return str(path)


@pytest.fixture(scope="module")
def training_frame() -> Any:
    import pandas as pd

    generator = np.random.default_rng(7)
    frame = pd.DataFrame(generator.standard_normal((40, 2)), columns=["a", "b"])
    return frame, frame["a"] * 2.0 - frame["b"]


def test_columns_in_another_order_than_fitted_get_no_block_call(tmp_path, training_frame) -> None:
    """MLflow hands sklearn the signature's order, which sklearn refuses here; the block,
    which carries no names, would be predicted on silently, so it is never offered."""
    import mlflow.pyfunc
    from arrowsmith.models import fast_path
    from sklearn.linear_model import LinearRegression

    frame, target = training_frame
    estimator = LinearRegression().fit(frame, target)
    path = save_sklearn(tmp_path / "m", estimator, ["b", "a"], frame[["b", "a"]].head(3))
    pyfunc = mlflow.pyfunc.load_model(path)
    with pytest.raises(ValueError, match="same order"):
        pyfunc.predict(frame[["b", "a"]])
    assert fast_path.block_call(pyfunc, pyfunc._predict_fn, frame[["b", "a"]]) is None


def test_an_estimator_selecting_columns_by_name_keeps_the_frame_call(
    tmp_path, training_frame
) -> None:
    from sklearn.compose import ColumnTransformer
    from sklearn.linear_model import LinearRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    frame, target = training_frame
    by_name = ColumnTransformer([("scaled", StandardScaler(), ["a"])], remainder="passthrough")
    estimator = make_pipeline(by_name, LinearRegression()).fit(frame, target)
    path = save_sklearn(tmp_path / "m", estimator, ["a", "b"], frame.head(3))
    assert load_model(ModelConfig(path, "by-name")).predict_path == "native-enforcement"


def test_an_estimator_fitted_on_arrays_takes_the_block_and_predicts_what_mlflow_does(
    tmp_path, training_frame
) -> None:
    import mlflow.pyfunc
    from sklearn.linear_model import Ridge

    frame, target = training_frame
    estimator = Ridge(alpha=0.3).fit(frame.to_numpy(), target.to_numpy())
    path = save_sklearn(tmp_path / "m", estimator, ["a", "b"], frame.head(3))
    model = load_model(ModelConfig(path, "arrays"))
    assert model.predict_path == "estimator-block"
    rows = (
        V2Input("a", "FP64", (5,), tuple(frame["a"].head(5))),
        V2Input("b", "FP64", (5,), tuple(frame["b"].head(5))),
    )
    theirs = mlflow.pyfunc.load_model(path).predict(oracle_frame(rows, model.input_schema))
    ours = block_call(request_bytes(rows, True), model)
    assert ours.dtype == theirs.dtype and ours.tobytes() == theirs.tobytes()
