"""The wine model served over gRPC answers exactly what MLflow answers in-process.

Every row of the data set goes through the server in requests of several sizes, sent
concurrently so the batcher really merges and splits them, as FP64 and FP32, as raw bytes
(tritonclient) and as typed `contents` (hand-built requests). MLflow's own `predict` on the
same values, cast the same way, is the reference.
"""

from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

import grpc
import mlflow.exceptions
import numpy as np
import pandas as pd
import pytest
import tritonclient.grpc as grpcclient
from mlflow.pyfunc import PyFuncModel
from support import v2
from support.model_builders import WINE_MODEL_NAME
from support.server import ServerHandle
from tritonclient.grpc import service_pb2 as pb
from tritonclient.utils import InferenceServerException

OUTPUT = "output-0"
FLOAT_DTYPES = {"FP64": "float64", "FP32": "float32"}
# (rows per request, rows sent): single rows and 7-row requests take a sample to keep the
# run short; 64 and 1,599 rows per request cover the whole data set.
REQUEST_SIZES = [(1, 300), (7, 1599), (64, 1599), (1599, 1599)]
CONCURRENT_REQUESTS = 8
RTOL = 1e-6


def split_rows(frame: pd.DataFrame, rows_per_request: int) -> list[pd.DataFrame]:
    """Consecutive slices of `rows_per_request` rows (the last one may be shorter)."""
    return [frame.iloc[i : i + rows_per_request] for i in range(0, len(frame), rows_per_request)]


def send_concurrently(
    send: Callable[[pd.DataFrame], np.ndarray], parts: Sequence[pd.DataFrame]
) -> np.ndarray:
    """Send every part from a small thread pool; the answers, concatenated in part order."""
    with ThreadPoolExecutor(CONCURRENT_REQUESTS) as pool:
        answers = list(pool.map(send, parts))
    return np.concatenate(answers)


def request_id(rows: pd.DataFrame) -> str:
    """An id unique to each request of a run, so a misrouted answer shows."""
    return f"rows-{rows.index[0]}-{len(rows)}"


def infer_raw(
    client: grpcclient.InferenceServerClient, rows: pd.DataFrame, datatype: str
) -> np.ndarray:
    """Predict `rows` through tritonclient and check the answer's envelope."""
    rid = request_id(rows)
    result = client.infer(
        WINE_MODEL_NAME,
        v2.column_inputs(rows, datatype),
        outputs=[grpcclient.InferRequestedOutput(OUTPUT)],
        request_id=rid,
    )
    assert result.get_response().id == rid
    answer: np.ndarray | None = result.as_numpy(OUTPUT)
    assert answer is not None
    assert answer.shape == (len(rows),)
    return answer


def infer_typed(
    infer: grpc.UnaryUnaryMultiCallable, rows: pd.DataFrame, datatype: str
) -> np.ndarray:
    """Predict `rows` with values in typed `contents` and check the answer's envelope."""
    rid = request_id(rows)
    request = v2.columns_request(WINE_MODEL_NAME, rows, datatype, typed=True, request_id=rid)
    response = infer(request, timeout=60)
    assert response.id == rid
    assert v2.output_names(response) == [OUTPUT]
    assert response.outputs[0].datatype == "FP64"
    assert list(response.outputs[0].shape) == [len(rows)]
    return v2.output_array(response, OUTPUT)


@pytest.mark.parametrize("datatype", list(FLOAT_DTYPES))
@pytest.mark.parametrize(("rows_per_request", "row_count"), REQUEST_SIZES)
def test_raw_float_inputs_match_mlflow(
    wine_server: ServerHandle,
    wine_frame: pd.DataFrame,
    wine_pyfunc: PyFuncModel,
    datatype: str,
    rows_per_request: int,
    row_count: int,
) -> None:
    """Raw tensors from tritonclient, the way most V2 clients send data."""
    frame = wine_frame.iloc[:row_count].astype(FLOAT_DTYPES[datatype])
    expected = wine_pyfunc.predict(frame)
    with grpcclient.InferenceServerClient(wine_server.url) as client:

        def send(rows: pd.DataFrame) -> np.ndarray:
            return infer_raw(client, rows, datatype)

        answers = send_concurrently(send, split_rows(frame, rows_per_request))
    np.testing.assert_allclose(answers, expected, rtol=RTOL)


@pytest.mark.parametrize("datatype", list(FLOAT_DTYPES))
@pytest.mark.parametrize(("rows_per_request", "row_count"), REQUEST_SIZES)
def test_typed_float_contents_match_mlflow(
    wine_server: ServerHandle,
    wine_frame: pd.DataFrame,
    wine_pyfunc: PyFuncModel,
    datatype: str,
    rows_per_request: int,
    row_count: int,
) -> None:
    """`fp32_contents` / `fp64_contents`, the other encoding the protocol allows."""
    frame = wine_frame.iloc[:row_count].astype(FLOAT_DTYPES[datatype])
    expected = wine_pyfunc.predict(frame)
    with grpc.insecure_channel(wine_server.url) as channel:
        infer = v2.model_infer(channel)

        def send(rows: pd.DataFrame) -> np.ndarray:
            return infer_typed(infer, rows, datatype)

        answers = send_concurrently(send, split_rows(frame, rows_per_request))
    np.testing.assert_allclose(answers, expected, rtol=RTOL)


@pytest.mark.parametrize("typed", [False, True], ids=["raw", "typed"])
def test_int32_inputs_are_converted_like_mlflow(
    wine_server: ServerHandle, wine_frame: pd.DataFrame, wine_pyfunc: PyFuncModel, typed: bool
) -> None:
    """int32 -> double is a safe conversion in MLflow, so INT32 inputs are accepted."""
    frame = wine_frame.round().astype("int32")
    expected = wine_pyfunc.predict(frame)
    with grpc.insecure_channel(wine_server.url) as channel:
        request = v2.columns_request(WINE_MODEL_NAME, frame, "INT32", typed=typed)
        response = v2.model_infer(channel)(request, timeout=60)
    np.testing.assert_allclose(v2.output_array(response, OUTPUT), expected, rtol=RTOL)


def test_int64_input_is_refused_like_mlflow(
    wine_server: ServerHandle, wine_frame: pd.DataFrame, wine_pyfunc: PyFuncModel
) -> None:
    """MLflow refuses int64 -> double (it may lose precision); so must the server."""
    rows = wine_frame.iloc[:4].astype({"alcohol": "int64"})
    with pytest.raises(mlflow.exceptions.MlflowException):
        wine_pyfunc.predict(rows)
    inputs = [
        *v2.column_inputs(rows.drop(columns=["alcohol"]), "FP64"),
        *v2.column_inputs(rows[["alcohol"]], "INT64"),
    ]
    with (
        grpcclient.InferenceServerClient(wine_server.url) as client,
        pytest.raises(InferenceServerException) as raised,
    ):
        client.infer(WINE_MODEL_NAME, inputs)
    assert raised.value.status() == str(grpc.StatusCode.INVALID_ARGUMENT)
    assert "alcohol" in str(raised.value.message())
    v2.assert_wine_served(wine_server.url, wine_frame, wine_pyfunc.predict(wine_frame))


def test_flat_shape_reordered_and_extra_inputs(
    wine_server: ServerHandle, wine_frame: pd.DataFrame, wine_pyfunc: PyFuncModel
) -> None:
    """Inputs of shape [n] in any order are matched by name; extra inputs are ignored."""
    rows = wine_frame.iloc[:10]
    request = pb.ModelInferRequest(model_name=WINE_MODEL_NAME)
    for column in reversed(rows.columns):
        v2.add_input(request, str(column), rows[column].to_numpy(), "FP64", typed=False)
    v2.add_input(request, "unused", np.arange(len(rows), dtype=np.float64), "FP64", typed=False)
    with grpc.insecure_channel(wine_server.url) as channel:
        response = v2.model_infer(channel)(request, timeout=60)
    np.testing.assert_allclose(
        v2.output_array(response, OUTPUT), wine_pyfunc.predict(rows), rtol=RTOL
    )


def test_all_outputs_when_none_requested(
    wine_server: ServerHandle, wine_frame: pd.DataFrame, wine_pyfunc: PyFuncModel
) -> None:
    """Without `outputs` in the request, every model output comes back."""
    rows = wine_frame.iloc[:3]
    request = v2.columns_request(WINE_MODEL_NAME, rows, "FP64", typed=False, request_id="all")
    with grpc.insecure_channel(wine_server.url) as channel:
        response = v2.model_infer(channel)(request, timeout=60)
    assert response.id == "all"
    assert response.model_name == WINE_MODEL_NAME
    assert v2.output_names(response) == [OUTPUT]
    assert response.outputs[0].datatype == "FP64"
    assert list(response.outputs[0].shape) == [len(rows)]
    np.testing.assert_allclose(
        v2.output_array(response, OUTPUT), wine_pyfunc.predict(rows), rtol=RTOL
    )


def test_unknown_requested_output_is_refused(
    wine_server: ServerHandle, wine_frame: pd.DataFrame, wine_pyfunc: PyFuncModel
) -> None:
    """Asking for an output the model lacks is the client's error, and says which one."""
    rows = wine_frame.iloc[:3]
    request = v2.columns_request(WINE_MODEL_NAME, rows, "FP64", typed=False, outputs=("nope",))
    with (
        grpc.insecure_channel(wine_server.url) as channel,
        pytest.raises(grpc.RpcError) as raised,
    ):
        v2.model_infer(channel)(request, timeout=60)
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "nope" in raised.value.details()
    v2.assert_wine_served(wine_server.url, wine_frame, wine_pyfunc.predict(wine_frame))


def test_first_row_is_the_known_prediction(
    wine_server: ServerHandle, wine_frame: pd.DataFrame
) -> None:
    """The example reproduces MLflow's classic model: 5.57 for the first row, as documented."""
    with grpcclient.InferenceServerClient(wine_server.url) as client:
        result = client.infer(WINE_MODEL_NAME, v2.column_inputs(wine_frame.iloc[:1], "FP64"))
    answer = result.as_numpy(OUTPUT)
    assert answer is not None
    assert answer[0] == pytest.approx(5.5769, abs=1e-3)
