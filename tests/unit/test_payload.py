"""A decoded request -> the value and params a pyfunc model is called with.

The models are tiny real pyfuncs saved and loaded by MLflow, wrapped in a `LoadedModel` built
directly (no server, no warm-up); the echo models answer their input, so MLflow's own
enforcement can be seen to accept what the payload module produced.
"""

import dataclasses
import pathlib
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import mlflow.pyfunc
import numpy as np
import pandas as pd
import pytest
from arrowsmith import _native
from arrowsmith.config import ModelConfig
from arrowsmith.errors import InvalidInputError
from arrowsmith.models.loaded import LoadedModel
from arrowsmith.models.predict import predict
from arrowsmith.models.signature import native_signature, tensor_metadata
from arrowsmith.payload import batch_input, model_input, model_params
from arrowsmith.predictions import output_tensors
from mlflow.models import ModelSignature, infer_signature
from mlflow.types import ColSpec, Schema, TensorSpec
from support import v2
from tritonclient.grpc import service_pb2 as pb

MIXED = pd.DataFrame(
    {
        "n": np.array([3, -4], dtype=np.int64),
        "x": [0.5, 1.5],
        "s": ["a", "é"],
        "f": [True, False],
    }
)
#: Bounds each request's wait for its answer, so a broken runner fails a test, never hangs it.
ANSWER_TIMEOUT_S = 60.0
RESERVED = [
    "content_type",
    "headers",
    "binary_data_output",
    "sequence_id",
    "sequence_start",
    "sequence_end",
    "priority",
    "timeout",
    "triton_enable_empty_final_response",
    "triton_anything",
]


# Each `predict` is annotated with a type MLflow neither validates nor infers a schema from
# (DataFrame, ndarray): without a hint, or with any other, MLflow warns at class definition.
class EchoFrame(mlflow.pyfunc.PythonModel):
    """Answers its DataFrame as MLflow handed it over."""

    def predict(self, context, model_input: pd.DataFrame, params=None):
        return model_input


class EchoTensors(mlflow.pyfunc.PythonModel):
    """Answers its tensor input (an ndarray, or a dict of them) as MLflow handed it over."""

    def predict(self, context, model_input: np.ndarray, params=None):
        return model_input


class Scale(mlflow.pyfunc.PythonModel):
    """Multiplies column `x` by the `scale` param, so a test sees which params arrived."""

    def predict(self, context, model_input: pd.DataFrame, params=None):
        return model_input["x"].to_numpy() * params["scale"]


SaveModel = Callable[[str, mlflow.pyfunc.PythonModel, ModelSignature | None], LoadedModel]


@pytest.fixture(scope="module")
def save_model(tmp_path_factory: pytest.TempPathFactory) -> SaveModel:
    """Saves a pyfunc, loads it back with MLflow, and describes it as the registry would."""
    root = tmp_path_factory.mktemp("payload-models")

    def save(
        name: str, python_model: mlflow.pyfunc.PythonModel, signature: ModelSignature | None
    ) -> LoadedModel:
        path = root / name
        mlflow.pyfunc.save_model(
            str(path), python_model=python_model, signature=signature, pip_requirements=[]
        )
        return loaded(path)

    return save


def loaded(path: pathlib.Path) -> LoadedModel:
    pyfunc = mlflow.pyfunc.load_model(str(path))
    inputs = pyfunc.metadata.get_input_schema()
    params = pyfunc.metadata.get_params_schema()
    return LoadedModel(
        name=path.name,
        version="",
        uri=str(path),
        pinned_uri=str(path),
        pyfunc=pyfunc,
        input_schema=inputs,
        signature=None if inputs is None else native_signature(inputs),
        inputs=tensor_metadata(inputs, "input"),
        outputs=tensor_metadata(pyfunc.metadata.get_output_schema(), "output"),
        param_names=None if params is None else frozenset(p.name for p in params.params),
        config=ModelConfig(uri=str(path)),
    )


@pytest.fixture(scope="module")
def mixed_model(save_model: SaveModel) -> LoadedModel:
    """Columns long `n`, double `x`, string `s`, boolean `f`; no params."""
    return save_model("mixed", EchoFrame(), infer_signature(MIXED, MIXED))


@pytest.fixture(scope="module")
def datetime_model(save_model: SaveModel) -> LoadedModel:
    """A datetime column `when`."""
    signature = ModelSignature(inputs=Schema([ColSpec("datetime", "when")]))
    return save_model("datetime", EchoFrame(), signature)


@pytest.fixture(scope="module")
def scale_model(save_model: SaveModel) -> LoadedModel:
    """A double column `x` and a `scale: double` param (default 1.0)."""
    signature = infer_signature(pd.DataFrame({"x": [1.0]}), np.array([1.0]), params={"scale": 1.0})
    return save_model("scale", Scale(), signature)


@pytest.fixture(scope="module")
def image_model(save_model: SaveModel) -> LoadedModel:
    """One unnamed uint8 [-1, 2, 2] tensor."""
    signature = ModelSignature(inputs=Schema([TensorSpec(np.dtype("uint8"), (-1, 2, 2))]))
    return save_model("image", EchoTensors(), signature)


@pytest.fixture(scope="module")
def named_tensor_model(save_model: SaveModel) -> LoadedModel:
    """Tensors `a` float64 [-1, 2], `b` int64 [-1] and `t` str [-1]."""
    signature = ModelSignature(
        inputs=Schema(
            [
                TensorSpec(np.dtype("float64"), (-1, 2), "a"),
                TensorSpec(np.dtype("int64"), (-1,), "b"),
                TensorSpec(np.dtype(str), (-1,), "t"),
            ]
        )
    )
    return save_model("named", EchoTensors(), signature)


@pytest.fixture(scope="module")
def unsigned_model(save_model: SaveModel) -> LoadedModel:
    """No signature at all: inputs reach it as sent."""
    return save_model("unsigned", EchoTensors(), None)


def request(
    *inputs: tuple[str, str, np.ndarray], content_type: str | None = None
) -> pb.ModelInferRequest:
    """Raw inputs (name, datatype, values), optionally with a request content_type."""
    message = pb.ModelInferRequest(model_name="m")
    for name, datatype, values in inputs:
        v2.add_input(message, name, values, datatype, typed=False)
    if content_type is not None:
        message.parameters["content_type"].string_param = content_type
    return message


def decode(message: pb.ModelInferRequest) -> _native.InferRequest:
    return _native.decode_request(message.SerializeToString())


def enforced(message: pb.ModelInferRequest, model: LoadedModel) -> Any:
    """The model input of a request the signature was applied to (natively)."""
    value, was_enforced = model_input(decode(message), model)
    assert was_enforced
    return value


def as_sent(message: pb.ModelInferRequest, model: LoadedModel) -> Any:
    """The model input of a request passed on as sent, for MLflow to judge."""
    value, was_enforced = model_input(decode(message), model)
    assert not was_enforced
    return value


def mixed_inputs() -> list[tuple[str, str, np.ndarray]]:
    """MIXED's columns out of order, in types MLflow converts, plus an input nobody wants."""
    return [
        ("f", "BOOL", MIXED["f"].to_numpy().reshape(-1, 1)),
        ("s", "BYTES", np.array([v.encode() for v in MIXED["s"]], dtype=object)),
        ("x", "FP32", MIXED["x"].to_numpy(np.float32).reshape(-1, 1)),
        ("n", "INT32", MIXED["n"].to_numpy(np.int32).reshape(-1, 1)),
        ("unused", "FP64", np.zeros(2)),
    ]


def text(*values: str) -> np.ndarray:
    return np.array([v.encode() for v in values], dtype=object)


def test_signature_path_gives_a_frame_with_the_signature_dtypes(mixed_model: LoadedModel) -> None:
    """Columns in signature order, converted as MLflow converts, text as an object column of
    str (what MLflow's own enforcement hands a model)."""
    frame = enforced(request(*mixed_inputs()), mixed_model)
    assert isinstance(frame, pd.DataFrame)
    assert list(frame.columns) == ["n", "x", "s", "f"]
    assert frame["n"].dtype == np.int64
    assert frame["x"].dtype == np.float64
    assert frame["f"].dtype == np.bool_
    assert frame["s"].dtype == object
    assert all(type(v) is str for v in frame["s"])
    assert frame.to_dict("list") == MIXED.to_dict("list")
    # MLflow's own enforcement takes the frame as it is.
    pd.testing.assert_frame_equal(mixed_model.pyfunc.predict(frame), frame)


def test_waiting_requests_are_one_model_input(mixed_model: LoadedModel) -> None:
    """The runner's path: requests queued together become one frame, and the model's answer
    goes back to each request by rows."""
    batcher = _native.Batcher("mixed", "", 64, 0.0, 8)
    messages = [request(*mixed_inputs()) for _ in range(2)]
    for i, message in enumerate(messages):
        message.id = f"r{i}"
    jobs = [decode(m).job(mixed_model.signature, ANSWER_TIMEOUT_S) for m in messages]
    with ThreadPoolExecutor(len(jobs)) as pool:
        futures = [pool.submit(batcher.submit, j) for j in jobs]
        while batcher.depth < len(jobs) and not any(f.done() for f in futures):
            time.sleep(0.01)
        batch = batcher.next_batch()
        frame, was_enforced = batch_input(batch, mixed_model)
        assert (len(batch), was_enforced) == (2, True)
        assert frame.to_dict("list") == pd.concat([MIXED, MIXED]).to_dict("list")
        batch.complete(output_tensors(mixed_model.pyfunc.predict(frame), []))
        responses = [pb.ModelInferResponse.FromString(f.result()) for f in futures]
    assert [r.id for r in responses] == ["r0", "r1"]
    for response in responses:
        assert [(o.name, list(o.shape)) for o in response.outputs] == [
            (column, [2, 1]) for column in MIXED.columns
        ]


def test_signature_path_refusal_names_the_input(mixed_model: LoadedModel) -> None:
    inputs = [i for i in mixed_inputs() if i[0] != "s"]
    with pytest.raises(InvalidInputError) as raised:
        model_input(decode(request(*inputs)), mixed_model)
    assert raised.value.input_name == "s"
    assert "['s']" in raised.value.message


def test_datetime_column_is_parsed_as_mlflow_parses_it(datetime_model: LoadedModel) -> None:
    frame = enforced(
        request(("when", "BYTES", text("2024-01-02T03:04:05", "2024-02-29"))), datetime_model
    )
    assert frame["when"].dtype == np.dtype("datetime64[ns]")
    assert frame["when"].tolist() == [
        pd.Timestamp("2024-01-02T03:04:05"),
        pd.Timestamp("2024-02-29"),
    ]
    pd.testing.assert_frame_equal(datetime_model.pyfunc.predict(frame), frame)


def test_datetime_column_refuses_text_that_is_no_date(datetime_model: LoadedModel) -> None:
    message = request(("when", "BYTES", text("2024-01-02", "someday")))
    with pytest.raises(InvalidInputError) as raised:
        model_input(decode(message), datetime_model)
    assert raised.value.input_name == "when"
    assert "when" in raised.value.message


def test_content_type_np_is_the_first_input(mixed_model: LoadedModel) -> None:
    grid = np.arange(6, dtype=np.float64).reshape(2, 3)
    message = request(("grid", "FP64", grid), ("other", "INT64", np.ones(2)), content_type="np")
    array = as_sent(message, mixed_model)
    assert isinstance(array, np.ndarray)
    assert array.dtype == np.float64
    np.testing.assert_array_equal(array, grid)


def test_content_type_pd_is_a_frame_in_request_order(mixed_model: LoadedModel) -> None:
    """[n] and [n, 1] inputs are plain columns; wider rows are one array per cell."""
    message = request(
        ("x", "FP64", np.array([[1.0], [2.0]])),
        ("n", "INT64", np.array([5, 6])),
        ("pair", "INT32", np.array([[1, 2], [3, 4]], dtype=np.int32)),
        content_type="pd",
    )
    frame = as_sent(message, mixed_model)
    assert isinstance(frame, pd.DataFrame)
    assert list(frame.columns) == ["x", "n", "pair"]
    assert frame["x"].tolist() == [1.0, 2.0]
    assert frame["n"].tolist() == [5, 6]
    assert [cell.tolist() for cell in frame["pair"]] == [[1, 2], [3, 4]]


def test_content_type_pd_needs_rows_that_line_up(mixed_model: LoadedModel) -> None:
    message = request(
        ("x", "FP64", np.zeros(2)), ("n", "INT64", np.zeros(3, np.int64)), content_type="pd"
    )
    with pytest.raises(InvalidInputError, match="do not form a DataFrame"):
        model_input(decode(message), mixed_model)


def test_content_type_dict_keeps_names_shapes_and_dtypes(mixed_model: LoadedModel) -> None:
    message = request(
        ("ids", "INT64", np.array([[1, 2, 3]])),
        ("mask", "BOOL", np.array([True, False])),
        content_type="dict",
    )
    arrays = as_sent(message, mixed_model)
    assert list(arrays) == ["ids", "mask"]
    assert arrays["ids"].dtype == np.int64
    np.testing.assert_array_equal(arrays["ids"], [[1, 2, 3]])
    assert arrays["mask"].dtype == np.bool_
    np.testing.assert_array_equal(arrays["mask"], [True, False])


def test_unknown_content_type_is_refused(mixed_model: LoadedModel) -> None:
    message = request(("x", "FP64", np.zeros(1)), content_type="json")
    with pytest.raises(InvalidInputError) as raised:
        model_input(decode(message), mixed_model)
    assert "'json'" in raised.value.message
    assert "np, pd, dict" in raised.value.message


@pytest.mark.parametrize("content_type", ["pd", "dict"])
def test_input_content_type_str_gives_text(mixed_model: LoadedModel, content_type: str) -> None:
    message = request(
        ("s", "BYTES", text("é", "b")),
        ("raw", "BYTES", text("c", "d")),
        content_type=content_type,
    )
    message.inputs[0].parameters["content_type"].string_param = "str"
    value = as_sent(message, mixed_model)
    assert list(value["s"]) == ["é", "b"]
    assert all(type(item) is str for item in value["s"])
    assert list(value["raw"]) == [b"c", b"d"]


def test_input_content_type_str_must_be_utf8(mixed_model: LoadedModel) -> None:
    message = request(("s", "BYTES", np.array([b"\xff"], dtype=object)), content_type="np")
    message.inputs[0].parameters["content_type"].string_param = "str"
    with pytest.raises(InvalidInputError, match="UTF-8"):
        model_input(decode(message), mixed_model)


@pytest.mark.parametrize("content_type", [None, "np", "pd", "dict"])
def test_no_inputs_is_refused(unsigned_model: LoadedModel, content_type: str | None) -> None:
    """A request without inputs is refused whatever form it asks for."""
    with pytest.raises(InvalidInputError, match="no inputs"):
        model_input(decode(request(content_type=content_type)), unsigned_model)


def test_without_signature_one_input_is_an_ndarray(unsigned_model: LoadedModel) -> None:
    images = np.arange(8, dtype=np.uint8).reshape(2, 2, 2)
    array = as_sent(request(("images", "UINT8", images)), unsigned_model)
    assert array.dtype == np.uint8
    np.testing.assert_array_equal(array, images)


def test_without_signature_columns_are_a_frame(unsigned_model: LoadedModel) -> None:
    message = request(("a", "FP64", np.array([[1.0], [2.0]])), ("b", "INT64", np.array([3, 4])))
    frame = as_sent(message, unsigned_model)
    assert isinstance(frame, pd.DataFrame)
    assert frame.to_dict("list") == {"a": [1.0, 2.0], "b": [3, 4]}


def test_without_signature_other_shapes_are_a_dict(unsigned_model: LoadedModel) -> None:
    message = request(("a", "FP64", np.zeros((2, 2))), ("b", "INT64", np.array([3, 4])))
    arrays = as_sent(message, unsigned_model)
    assert list(arrays) == ["a", "b"]
    assert arrays["a"].shape == (2, 2)


def test_unnamed_tensor_signature_gives_an_ndarray(image_model: LoadedModel) -> None:
    images = np.arange(8, dtype=np.uint8).reshape(2, 2, 2)
    array = enforced(request(("any-name", "UINT8", images)), image_model)
    assert array.dtype == np.uint8
    np.testing.assert_array_equal(array, images)
    np.testing.assert_array_equal(image_model.pyfunc.predict(array), images)


def test_named_tensor_signature_gives_a_dict(named_tensor_model: LoadedModel) -> None:
    """In signature order; a str spec gets numpy text, the dtype MLflow's check expects."""
    message = request(
        ("t", "BYTES", text("é", "")),
        ("b", "INT64", np.array([7])),
        ("a", "FP64", np.array([[0.5, 1.5]])),
    )
    arrays = enforced(message, named_tensor_model)
    assert list(arrays) == ["a", "b", "t"]
    np.testing.assert_array_equal(arrays["a"], [[0.5, 1.5]])
    assert arrays["b"].dtype == np.int64
    assert arrays["t"].dtype.kind == "U"
    assert arrays["t"].tolist() == ["é", ""]
    echoed = named_tensor_model.pyfunc.predict(arrays)
    assert echoed["t"].tolist() == ["é", ""]


@pytest.mark.parametrize("name", RESERVED)
def test_reserved_names_reach_a_model_that_declares_them(
    scale_model: LoadedModel, name: str
) -> None:
    """A ParamSchema may use a name V2 servers reserve; the model declared it, so it gets it."""
    declaring = dataclasses.replace(scale_model, param_names=frozenset({"scale", name}))
    message = request(("x", "FP64", np.ones(1)))
    message.parameters[name].string_param = "value"
    assert model_params(decode(message), declaring) == {name: "value"}


@pytest.mark.parametrize("name", RESERVED)
def test_reserved_parameters_never_reach_the_model(scale_model: LoadedModel, name: str) -> None:
    message = request(("x", "FP64", np.ones(1)))
    message.parameters[name].string_param = "pd"
    assert model_params(decode(message), scale_model) == {}
    message.parameters["scale"].double_param = 2.0
    assert model_params(decode(message), scale_model) == {"scale": 2.0}


def test_params_reach_a_model_with_a_param_schema(scale_model: LoadedModel) -> None:
    message = request(("x", "FP64", np.array([1.0, 2.5])))
    message.parameters["scale"].double_param = 3.0
    message.parameters["priority"].int64_param = 1
    decoded = decode(message)
    params = model_params(decoded, scale_model)
    assert params == {"scale": 3.0}
    payload, was_enforced = model_input(decoded, scale_model)
    answer = predict(scale_model, payload, params, was_enforced)
    np.testing.assert_array_equal(answer, [3.0, 7.5])


def test_params_are_dropped_for_a_model_without_a_param_schema(mixed_model: LoadedModel) -> None:
    message = request(*mixed_inputs())
    message.parameters["scale"].double_param = 3.0
    assert mixed_model.param_names is None
    assert model_params(decode(message), mixed_model) == {}


def test_no_params_without_request_parameters(scale_model: LoadedModel) -> None:
    decoded = decode(request(("x", "FP64", np.array([2.0]))))
    assert model_params(decoded, scale_model) is None
    payload, was_enforced = model_input(decoded, scale_model)
    # MLflow fills in the ParamSchema's default.
    assert predict(scale_model, payload, None, was_enforced).tolist() == [2.0]
