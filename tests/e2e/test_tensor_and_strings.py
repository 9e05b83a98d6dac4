"""The two other signature kinds: a uint8 image tensor, and string columns in and out."""

import grpc
import numpy as np
import pandas as pd
import pytest
import tritonclient.grpc as grpcclient
from mlflow.pyfunc import PyFuncModel
from support import v2
from support.model_builders import STRING_MODEL_NAME, TENSOR_MODEL_NAME
from support.server import ServerHandle
from tritonclient.grpc import service_pb2 as pb
from tritonclient.utils import InferenceServerException

IMAGE_SHAPE = (8, 8)
TEXTS = ["hello", "wörld", ""]


def random_images(count: int, seed: int) -> np.ndarray:
    """`count` uint8 8x8 images covering the whole 0..255 range."""
    return np.random.default_rng(seed).integers(0, 256, (count, *IMAGE_SHAPE), dtype=np.uint8)


def infer_images(url: str, images: np.ndarray, input_name: str = "input-0") -> np.ndarray:
    """Send the images raw through tritonclient and return `output-0`."""
    tensor = grpcclient.InferInput(input_name, list(images.shape), "UINT8")
    tensor.set_data_from_numpy(images)
    with grpcclient.InferenceServerClient(url) as client:
        result = client.infer(TENSOR_MODEL_NAME, [tensor], request_id="images")
    assert result.get_response().id == "images"
    answer: np.ndarray | None = result.as_numpy("output-0")
    assert answer is not None
    return answer


def assert_images_served(url: str, tensor_pyfunc: PyFuncModel) -> None:
    """The check after a refused request: the same server still answers a good one."""
    images = random_images(2, seed=99)
    np.testing.assert_array_equal(infer_images(url, images), tensor_pyfunc.predict(images))


@pytest.mark.parametrize("count", [1, 5])
def test_uint8_images_match_mlflow(
    tensor_server: ServerHandle, tensor_pyfunc: PyFuncModel, count: int
) -> None:
    """A [n, 8, 8] UINT8 tensor reaches the model as the ndarray MLflow would pass it."""
    images = random_images(count, seed=count)
    answer = infer_images(tensor_server.url, images)
    assert answer.dtype == np.int64
    assert answer.shape == (count,)
    np.testing.assert_array_equal(answer, tensor_pyfunc.predict(images))


def test_unnamed_tensor_input_takes_any_name(
    tensor_server: ServerHandle, tensor_pyfunc: PyFuncModel
) -> None:
    """An unnamed TensorSpec has no name to match: the single input fills it."""
    images = random_images(3, seed=7)
    answer = infer_images(tensor_server.url, images, input_name="images")
    np.testing.assert_array_equal(answer, tensor_pyfunc.predict(images))


def test_uint8_typed_contents(tensor_server: ServerHandle, tensor_pyfunc: PyFuncModel) -> None:
    """UINT8 values in `uint_contents` (uint32 on the wire) arrive as uint8."""
    images = random_images(4, seed=11)
    request = pb.ModelInferRequest(model_name=TENSOR_MODEL_NAME)
    v2.add_input(request, "input-0", images, "UINT8", typed=True)
    with grpc.insecure_channel(tensor_server.url) as channel:
        response = v2.model_infer(channel)(request, timeout=60)
    assert response.outputs[0].datatype == "INT64"
    np.testing.assert_array_equal(
        v2.output_array(response, "output-0"), tensor_pyfunc.predict(images)
    )


@pytest.mark.parametrize(
    ("datatype", "shape"),
    [("FP32", (2, 8, 8)), ("UINT8", (2, 4, 16)), ("UINT8", (2, 64))],
    ids=["wrong-dtype", "wrong-dims", "wrong-rank"],
)
def test_tensor_spec_mismatch_is_refused(
    tensor_server: ServerHandle, tensor_pyfunc: PyFuncModel, datatype: str, shape: tuple[int, ...]
) -> None:
    """A TensorSpec is strict: no dtype change and no reshape, as in MLflow."""
    values = (
        random_images(2, seed=3)
        .reshape(shape)
        .astype(np.float32 if datatype == "FP32" else np.uint8)
    )
    tensor = grpcclient.InferInput("input-0", list(shape), datatype)
    tensor.set_data_from_numpy(values)
    with (
        grpcclient.InferenceServerClient(tensor_server.url) as client,
        pytest.raises(InferenceServerException) as raised,
    ):
        client.infer(TENSOR_MODEL_NAME, [tensor])
    assert raised.value.status() == str(grpc.StatusCode.INVALID_ARGUMENT)
    assert "input-0" in str(raised.value.message())
    assert_images_served(tensor_server.url, tensor_pyfunc)


@pytest.mark.parametrize("typed", [False, True], ids=["raw", "typed"])
def test_strings_round_trip(
    string_server: ServerHandle, string_pyfunc: PyFuncModel, typed: bool
) -> None:
    """UTF-8 BYTES in, a DataFrame's string column out as BYTES [n, 1]."""
    expected = string_pyfunc.predict(pd.DataFrame({"text": TEXTS}))
    assert isinstance(expected, pd.DataFrame)
    request = pb.ModelInferRequest(model_name=STRING_MODEL_NAME, id="texts")
    encoded = np.array([t.encode() for t in TEXTS], dtype=object).reshape(-1, 1)
    v2.add_input(request, "text", encoded, "BYTES", typed=typed)
    with grpc.insecure_channel(string_server.url) as channel:
        response = v2.model_infer(channel)(request, timeout=60)
    assert response.id == "texts"
    assert v2.output_names(response) == ["upper"]
    assert response.outputs[0].datatype == "BYTES"
    assert list(response.outputs[0].shape) == [len(TEXTS), 1]
    answer = v2.output_array(response, "upper")
    assert [b.decode() for b in answer.ravel()] == list(expected["upper"])


def test_strings_through_tritonclient(
    string_server: ServerHandle, string_pyfunc: PyFuncModel
) -> None:
    """The BYTES path of tritonclient itself: object array in, `as_numpy` bytes out."""
    texts = np.array(TEXTS, dtype=object).reshape(-1, 1)
    tensor = grpcclient.InferInput("text", list(texts.shape), "BYTES")
    tensor.set_data_from_numpy(texts)
    with grpcclient.InferenceServerClient(string_server.url) as client:
        result = client.infer(STRING_MODEL_NAME, [tensor])
    answer = result.as_numpy("upper")
    assert answer is not None
    assert answer.shape == (len(TEXTS), 1)
    expected = string_pyfunc.predict(pd.DataFrame({"text": TEXTS}))
    assert isinstance(expected, pd.DataFrame)
    assert [b.decode() for b in answer.ravel()] == list(expected["upper"])
