"""Bad requests get the right gRPC status and a message naming the culprit.

The server must keep serving: every case is followed by a good request to the same server.
"""

import pathlib

import grpc
import numpy as np
import pandas as pd
import pytest
from google.protobuf.message import DecodeError
from mlflow.pyfunc import PyFuncModel
from support import v2
from support.model_builders import WINE_MODEL_NAME
from support.server import ServerHandle, StartServer
from support.v2 import assert_refused
from tritonclient.grpc import service_pb2 as pb

# A length-delimited field 1 whose length varint never ends: no protobuf parser accepts it.
NOT_A_PROTOBUF = b"\x0a\xff\xff\xff"
SPOILED_INPUT = "citric acid"
SMALL_MESSAGE_LIMIT = 65536
LARGE_MESSAGE_BYTES = 200_000


def wine_request(frame: pd.DataFrame, *, typed: bool = False) -> pb.ModelInferRequest:
    """A valid FP64 request for two rows of wine data, for a test to spoil."""
    return v2.columns_request(WINE_MODEL_NAME, frame.iloc[:2], "FP64", typed=typed)


def input_index(request: pb.ModelInferRequest, name: str) -> int:
    """Position of input `name`, which is also its slot in `raw_input_contents`."""
    return [tensor.name for tensor in request.inputs].index(name)


@pytest.fixture(scope="module")
def wine_expected(wine_pyfunc: PyFuncModel, wine_frame: pd.DataFrame) -> np.ndarray:
    """MLflow's predictions for every row: the good request after each error must match."""
    expected: np.ndarray = wine_pyfunc.predict(wine_frame)
    return expected


def test_bytes_that_are_not_protobuf(
    wine_server: ServerHandle, wine_frame: pd.DataFrame, wine_expected: np.ndarray
) -> None:
    """Garbage on the wire is the client's error, not an internal one."""
    with pytest.raises(DecodeError):
        pb.ModelInferRequest.FromString(NOT_A_PROTOBUF)
    assert_refused(wine_server.url, NOT_A_PROTOBUF, grpc.StatusCode.INVALID_ARGUMENT)
    v2.assert_wine_served(wine_server.url, wine_frame, wine_expected)


def test_raw_size_differs_from_shape(
    wine_server: ServerHandle, wine_frame: pd.DataFrame, wine_expected: np.ndarray
) -> None:
    """Two FP64 rows need 16 bytes; 8 bytes must be refused, never read past."""
    request = wine_request(wine_frame)
    index = input_index(request, SPOILED_INPUT)
    request.raw_input_contents[index] = request.raw_input_contents[index][:8]
    assert_refused(wine_server.url, request, grpc.StatusCode.INVALID_ARGUMENT, SPOILED_INPUT)
    v2.assert_wine_served(wine_server.url, wine_frame, wine_expected)


def test_an_input_of_no_dimensions_sent_as_a_dataframe(
    wine_server: ServerHandle, wine_frame: pd.DataFrame, wine_expected: np.ndarray
) -> None:
    """With `content_type: pd` the inputs become DataFrame columns; a shape [] input has
    no rows to be one, and is refused by name rather than failing inside pandas."""
    request = wine_request(wine_frame)
    request.parameters["content_type"].string_param = "pd"
    index = input_index(request, SPOILED_INPUT)
    del request.inputs[index].shape[:]
    request.raw_input_contents[index] = request.raw_input_contents[index][:8]
    assert_refused(wine_server.url, request, grpc.StatusCode.INVALID_ARGUMENT, SPOILED_INPUT)
    v2.assert_wine_served(wine_server.url, wine_frame, wine_expected)


def test_typed_count_differs_from_shape(
    wine_server: ServerHandle, wine_frame: pd.DataFrame, wine_expected: np.ndarray
) -> None:
    """Three typed values for a [2, 1] tensor is a malformed tensor."""
    request = wine_request(wine_frame, typed=True)
    request.inputs[input_index(request, SPOILED_INPUT)].contents.fp64_contents.append(1.0)
    assert_refused(wine_server.url, request, grpc.StatusCode.INVALID_ARGUMENT, SPOILED_INPUT)
    v2.assert_wine_served(wine_server.url, wine_frame, wine_expected)


def test_unknown_datatype(
    wine_server: ServerHandle, wine_frame: pd.DataFrame, wine_expected: np.ndarray
) -> None:
    """A datatype outside the V2 table cannot be decoded at all."""
    request = wine_request(wine_frame)
    request.inputs[input_index(request, SPOILED_INPUT)].datatype = "FP99"
    assert_refused(wine_server.url, request, grpc.StatusCode.INVALID_ARGUMENT, SPOILED_INPUT)
    v2.assert_wine_served(wine_server.url, wine_frame, wine_expected)


def test_typed_and_raw_contents_mixed(
    wine_server: ServerHandle, wine_frame: pd.DataFrame, wine_expected: np.ndarray
) -> None:
    """The protocol forbids `contents` once `raw_input_contents` is used."""
    request = wine_request(wine_frame)
    values = wine_frame[SPOILED_INPUT].iloc[:2].tolist()
    request.inputs[input_index(request, SPOILED_INPUT)].contents.fp64_contents.extend(values)
    assert_refused(wine_server.url, request, grpc.StatusCode.INVALID_ARGUMENT)
    v2.assert_wine_served(wine_server.url, wine_frame, wine_expected)


def test_unknown_model(
    wine_server: ServerHandle, wine_frame: pd.DataFrame, wine_expected: np.ndarray
) -> None:
    """A request for a model the server lacks is NOT_FOUND, naming the model."""
    request = wine_request(wine_frame)
    request.model_name = "no-such-model"
    assert_refused(wine_server.url, request, grpc.StatusCode.NOT_FOUND, "no-such-model")
    v2.assert_wine_served(wine_server.url, wine_frame, wine_expected)


def test_missing_required_column(
    wine_server: ServerHandle, wine_frame: pd.DataFrame, wine_expected: np.ndarray
) -> None:
    """Every column of the signature is required; the message says which one is absent."""
    request = v2.columns_request(
        WINE_MODEL_NAME, wine_frame.iloc[:2].drop(columns=[SPOILED_INPUT]), "FP64", typed=False
    )
    assert_refused(wine_server.url, request, grpc.StatusCode.INVALID_ARGUMENT, SPOILED_INPUT)
    v2.assert_wine_served(wine_server.url, wine_frame, wine_expected)


def test_message_over_size_limit(
    start_server: StartServer,
    wine_model_dir: pathlib.Path,
    wine_frame: pd.DataFrame,
    wine_expected: np.ndarray,
) -> None:
    """`--max-message-size` bounds what the server reads; past it, RESOURCE_EXHAUSTED."""
    server = start_server(
        wine_model_dir, "--max-message-size", str(SMALL_MESSAGE_LIMIT), name=WINE_MODEL_NAME
    )
    row_bytes = 8 * len(wine_frame.columns)
    repeats = LARGE_MESSAGE_BYTES // (row_bytes * len(wine_frame)) + 1
    big = pd.concat([wine_frame] * repeats, ignore_index=True)
    request = v2.columns_request(WINE_MODEL_NAME, big, "FP64", typed=False)
    assert request.ByteSize() > LARGE_MESSAGE_BYTES
    assert_refused(server.url, request, grpc.StatusCode.RESOURCE_EXHAUSTED)
    v2.assert_wine_served(server.url, wine_frame, wine_expected)
