"""Signature enforcement micro-benchmark: Arrowsmith's native enforcement vs MLflow's.

Not part of the test run (testpaths is tests/); run it with

    .venv/bin/python -m pytest benchmarks/test_enforcement_micro.py --benchmark-only \
        --benchmark-columns=min,median,mean,ops -q

Two workloads on the wine model (11 double columns): W1, the first CSV row as 11 FP32 [1, 1]
inputs in typed contents, and W2, 4,096 rows as 11 FP32 [4096, 1] raw inputs (the request
bodies of benchmarks/bodies.py). Per workload:

- `native`: `_native.decode_request(body)` and `job(signature)`, the enforcement
  itself (match, convert FP32 to double) with no Python objects per column;
- `model_input`: `decode_request` and `payload.model_input`, up to the pandas DataFrame the
  model is called with;
- `mlflow_enforce_schema`: `_enforce_schema(frame, schema)` on the equivalent float32
  DataFrame, built beforehand: its cost excludes building the frame from the request;
- `pyfunc_predict` vs `fast_predict`: `PyFuncModel.predict(frame)` (MLflow's enforcement,
  then sklearn) against the flavor's predict function on the already enforced frame, which
  is what the fast call saves per call.

Each benchmark checks its result against MLflow's; none asserts anything about time.
"""

from __future__ import annotations

import importlib.util
import pathlib
from typing import Any

import numpy as np
import pandas as pd
import pytest
from arrowsmith import _native, payload
from arrowsmith.config import ModelConfig
from arrowsmith.models.loaded import LoadedModel, load_model
from bodies import W2_ROWS, w1_request, w2_request, wine_features
from mlflow.models.utils import _enforce_schema

WINE_TRAIN = pathlib.Path(__file__).resolve().parent.parent / "examples" / "wine" / "train.py"
WORKLOADS = ("W1", "W2")


@pytest.fixture(scope="module")
def wine(tmp_path_factory: pytest.TempPathFactory) -> LoadedModel:
    """The example's wine model, trained by its own script and loaded as the server does."""
    spec = importlib.util.spec_from_file_location("wine_train", WINE_TRAIN)
    assert spec is not None and spec.loader is not None
    train = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(train)
    model_dir = train.train_and_save(tmp_path_factory.mktemp("bench") / "wine")
    model = load_model(ModelConfig(str(model_dir), "wine"))
    assert model.predict_path == "estimator-block"
    return model


@pytest.fixture(scope="module")
def bodies() -> dict[str, bytes]:
    return {"W1": w1_request().SerializeToString(), "W2": w2_request().SerializeToString()}


@pytest.fixture(scope="module")
def frames() -> dict[str, pd.DataFrame]:
    """Each workload's values as the float32 DataFrame MLflow would be handed."""
    names, values = wine_features()
    rows = {"W1": values[:1], "W2": np.resize(values, (W2_ROWS, values.shape[1]))}
    return {w: pd.DataFrame(dict(zip(names, v.T, strict=True))) for w, v in rows.items()}


def model_input(body: bytes, model: LoadedModel) -> Any:
    value, enforced = payload.model_input(_native.decode_request(body), model)
    assert enforced
    return value


@pytest.mark.parametrize("workload", WORKLOADS)
def test_native(benchmark, wine, bodies, workload):
    benchmark.group = f"enforce {workload}"
    signature = wine.signature

    def enforce(body: bytes) -> Any:
        return _native.decode_request(body).job(signature)

    job = benchmark(enforce, bodies[workload])
    assert job.as_batch().form == "columns"


@pytest.mark.parametrize("workload", WORKLOADS)
def test_model_input(benchmark, wine, bodies, frames, workload):
    benchmark.group = f"enforce {workload}"
    frame = benchmark(model_input, bodies[workload], wine)
    expected = _enforce_schema(frames[workload], wine.input_schema)
    pd.testing.assert_frame_equal(frame, expected, check_exact=True)


@pytest.mark.parametrize("workload", WORKLOADS)
def test_mlflow_enforce_schema(benchmark, wine, frames, workload):
    benchmark.group = f"enforce {workload}"
    enforced = benchmark(_enforce_schema, frames[workload], wine.input_schema)
    assert list(enforced.dtypes.astype(str)) == ["float64"] * enforced.shape[1]


@pytest.mark.parametrize("workload", WORKLOADS)
def test_pyfunc_predict(benchmark, wine, frames, workload):
    benchmark.group = f"predict {workload}"
    predictions = benchmark(wine.pyfunc.predict, frames[workload])
    assert predictions.shape == (len(frames[workload]),)


@pytest.mark.parametrize("workload", WORKLOADS)
def test_fast_predict(benchmark, wine, bodies, frames, workload):
    benchmark.group = f"predict {workload}"
    assert wine.fast_predict is not None
    enforced = model_input(bodies[workload], wine)
    predictions = benchmark(wine.fast_predict, enforced)
    expected = wine.pyfunc.predict(frames[workload])
    assert predictions.tobytes() == np.asarray(expected).tobytes()


@pytest.mark.parametrize("workload", WORKLOADS)
def test_block_predict(benchmark, wine, bodies, frames, workload):
    benchmark.group = f"predict {workload}"
    assert wine.block_call is not None
    batch = _native.decode_request(bodies[workload]).job(wine.signature).as_batch()
    block = payload.estimator_block(batch, wine)
    assert block is not None
    predictions = benchmark(wine.block_call.predict, block)
    expected = wine.pyfunc.predict(frames[workload])
    assert predictions.tobytes() == np.asarray(expected).tobytes()
