"""Hand-made V2 (Open Inference Protocol) requests, and reading any answer back to numpy.

Requests are built with tritonclient's own protobuf classes, a third-party definition of the
wire format, and sent over a plain grpc channel, so the tests can say exactly what goes on
the wire (typed `contents`, malformed tensors, garbage bytes) where tritonclient would refuse.
"""

import grpc
import numpy as np
import pandas as pd
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.grpc import service_pb2 as pb
from tritonclient.utils import deserialize_bytes_tensor, triton_to_np_dtype

from support.model_builders import WINE_MODEL_NAME

MODEL_INFER_METHOD = "/inference.GRPCInferenceService/ModelInfer"

# The InferTensorContents field that carries each datatype's values.
TYPED_CONTENTS_FIELD = {
    "BOOL": "bool_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}


def model_infer(channel: grpc.Channel) -> grpc.UnaryUnaryMultiCallable:
    """ModelInfer taking and returning protobuf messages."""
    return channel.unary_unary(
        MODEL_INFER_METHOD,
        request_serializer=pb.ModelInferRequest.SerializeToString,
        response_deserializer=pb.ModelInferResponse.FromString,
    )


def model_infer_bytes(channel: grpc.Channel) -> grpc.UnaryUnaryMultiCallable:
    """ModelInfer sending whatever bytes it is given, valid protobuf or not."""
    return channel.unary_unary(
        MODEL_INFER_METHOD,
        request_serializer=lambda data: data,
        response_deserializer=lambda data: data,
    )


def add_input(
    request: pb.ModelInferRequest,
    name: str,
    values: np.ndarray,
    datatype: str,
    *,
    typed: bool,
) -> pb.ModelInferRequest.InferInputTensor:
    """Append one input holding `values` (shape taken from the array), raw or typed."""
    tensor = request.inputs.add(name=name, datatype=datatype, shape=list(values.shape))
    if datatype == "BYTES":
        items = [v if isinstance(v, bytes) else str(v).encode() for v in values.ravel()]
        if typed:
            tensor.contents.bytes_contents.extend(items)
        else:
            request.raw_input_contents.append(
                b"".join(len(v).to_bytes(4, "little") + v for v in items)
            )
        return tensor
    array = np.ascontiguousarray(values, dtype=triton_to_np_dtype(datatype))
    if typed:
        getattr(tensor.contents, TYPED_CONTENTS_FIELD[datatype]).extend(array.ravel().tolist())
    else:
        little_endian = array.astype(array.dtype.newbyteorder("<"), copy=False)
        request.raw_input_contents.append(little_endian.tobytes())
    return tensor


def column_inputs(frame: pd.DataFrame, datatype: str) -> list[grpcclient.InferInput]:
    """One [n, 1] tritonclient input per column, named by it; tritonclient sends them raw."""
    inputs = []
    for column in frame.columns:
        tensor = grpcclient.InferInput(str(column), [len(frame), 1], datatype)
        tensor.set_data_from_numpy(frame[column].to_numpy().reshape(-1, 1))
        inputs.append(tensor)
    return inputs


def columns_request(
    model_name: str,
    frame: pd.DataFrame,
    datatype: str,
    *,
    typed: bool,
    request_id: str = "",
    outputs: tuple[str, ...] = (),
) -> pb.ModelInferRequest:
    """One [n, 1] input per DataFrame column, named by the column: a column-signature call."""
    request = pb.ModelInferRequest(model_name=model_name, id=request_id)
    for column in frame.columns:
        add_input(
            request, str(column), frame[column].to_numpy().reshape(-1, 1), datatype, typed=typed
        )
    for name in outputs:
        request.outputs.add(name=name)
    return request


def output_names(response: pb.ModelInferResponse) -> list[str]:
    """The names of the outputs, in answer order."""
    return [output.name for output in response.outputs]


def output_array(response: pb.ModelInferResponse, name: str) -> np.ndarray:
    """Decode output `name` with its shape, from raw contents if present, else typed ones.

    BYTES come back as an object array of `bytes`, as tritonclient's `as_numpy` gives them.
    """
    index = output_names(response).index(name)
    output = response.outputs[index]
    shape = list(output.shape)
    if index < len(response.raw_output_contents):
        raw = response.raw_output_contents[index]
        if output.datatype == "BYTES":
            values = deserialize_bytes_tensor(raw)
        else:
            values = np.frombuffer(
                raw, dtype=np.dtype(triton_to_np_dtype(output.datatype)).newbyteorder("<")
            )
    else:
        typed = list(getattr(output.contents, TYPED_CONTENTS_FIELD[output.datatype]))
        dtype = object if output.datatype == "BYTES" else triton_to_np_dtype(output.datatype)
        values = np.array(typed, dtype=dtype)
    shaped: np.ndarray = values.reshape(shape)
    return shaped


def assert_wine_served(url: str, frame: pd.DataFrame, expected: np.ndarray) -> None:
    """The check after each refused request: the same server still answers a good one, right.

    Sends the first rows of `frame` as FP64 through tritonclient; `expected` is MLflow's
    prediction for the whole frame.
    """
    rows = frame.iloc[:5]
    with grpcclient.InferenceServerClient(url) as client:
        result = client.infer(WINE_MODEL_NAME, column_inputs(rows, "FP64"))
    answer = result.as_numpy("output-0")
    assert answer is not None, "the good request after an error got no output-0"
    np.testing.assert_allclose(answer, expected[: len(rows)], rtol=1e-6)


def assert_refused(
    url: str, request: pb.ModelInferRequest | bytes, code: grpc.StatusCode, *names: str
) -> None:
    """Send `request`; expect status `code` and a message naming each of `names`."""
    payload = request if isinstance(request, bytes) else request.SerializeToString()
    with grpc.insecure_channel(url) as channel, pytest.raises(grpc.RpcError) as raised:
        model_infer_bytes(channel)(payload, timeout=60)
    error = raised.value
    details = error.details() or ""
    assert error.code() == code, details
    for name in names:
        assert name in details, f"{name!r} is not named in {details!r}"
