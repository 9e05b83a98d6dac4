"""The client's half of the native codec and its Python conversions, without a server:
requests it encodes read back by tritonclient's protobuf classes (a third-party reading of
the wire format), responses built with those classes decoded into tables, malformed
responses refused, frames turned into tensors, and the retry policy of one call."""

import math

import grpc
import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from arrowsmith import _native
from arrowsmith.client import InferenceError
from arrowsmith.client.calls import MAX_BACKOFF_SECONDS, Attempts, make_settings
from arrowsmith.client.flight import flight_error
from arrowsmith.client.frames import SMALL_ROWS, outputs_table, tensor_inputs
from arrowsmith.errors import InternalError, InvalidInputError
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from tritonclient.grpc import service_pb2 as pb
from tritonclient.utils import deserialize_bytes_tensor

TARGET = "127.0.0.1:8081"

#: numpy dtypes and the V2 datatype they travel as.
DATATYPES = {
    "bool": "BOOL",
    "uint8": "UINT8",
    "uint16": "UINT16",
    "uint32": "UINT32",
    "uint64": "UINT64",
    "int8": "INT8",
    "int16": "INT16",
    "int32": "INT32",
    "int64": "INT64",
    "float16": "FP16",
    "float32": "FP32",
    "float64": "FP64",
}


def parsed(data: bytes) -> pb.ModelInferRequest:
    return pb.ModelInferRequest.FromString(data)


def test_a_request_reads_back_as_sent() -> None:
    """Names, datatypes, shapes, parameters and requested outputs as given; each input's
    values in raw_input_contents, little-endian, BYTES length-prefixed; a sliced array
    sends its own values only."""
    floats = pa.array([9.0, 1.5, -2.25, 3.0]).slice(1, 3)
    inputs = [
        ("x", [3], floats, None),
        ("m", [2, 2], pa.array(np.arange(4, dtype=np.int8)), None),
        ("flags", [2], pa.array([True, False]), None),
        ("text", [2], pa.array(["ünï", ""]), {"content_type": "str"}),
        ("blob", [1], pa.array([b"\x00\xff"]), None),
        ("half", [1], pa.array(np.array([0.5], dtype=np.float16)), None),
    ]
    parameters = {"flag": True, "n": -3, "big": 2**64 - 1, "ratio": 0.25, "word": "w"}
    data = _native.encode_request("wine", "2", "req-1", parameters, inputs, ["output-0"])
    request = parsed(data)
    assert (request.model_name, request.model_version, request.id) == ("wine", "2", "req-1")
    assert request.parameters["flag"].bool_param is True
    assert request.parameters["n"].int64_param == -3
    assert request.parameters["big"].uint64_param == 2**64 - 1
    assert request.parameters["ratio"].double_param == 0.25
    assert request.parameters["word"].string_param == "w"
    assert [o.name for o in request.outputs] == ["output-0"]
    described = [(t.name, t.datatype, list(t.shape)) for t in request.inputs]
    assert described == [
        ("x", "FP64", [3]),
        ("m", "INT8", [2, 2]),
        ("flags", "BOOL", [2]),
        ("text", "BYTES", [2]),
        ("blob", "BYTES", [1]),
        ("half", "FP16", [1]),
    ]
    assert request.inputs[3].parameters["content_type"].string_param == "str"
    assert not request.inputs[4].parameters
    raw = request.raw_input_contents
    assert raw[0] == np.array([1.5, -2.25, 3.0], dtype="<f8").tobytes()
    assert raw[1] == bytes([0, 1, 2, 3])
    assert raw[2] == b"\x01\x00"
    assert list(deserialize_bytes_tensor(raw[3])) == ["ünï".encode(), b""]
    assert raw[4] == b"\x02\x00\x00\x00\x00\xff"
    assert raw[5] == np.array([0.5], dtype="<f2").tobytes()


@settings(max_examples=60, deadline=None)
@given(
    st.sampled_from(sorted(DATATYPES)).flatmap(
        lambda dtype: hnp.arrays(np.dtype(dtype), hnp.array_shapes(min_dims=1, max_dims=3))
    )
)
def test_any_numeric_array_travels_as_its_raw_bytes(values: np.ndarray) -> None:
    data = _native.encode_request("m", "", "", None, tensor_inputs({"t": values}), [])
    (tensor,) = parsed(data).inputs
    assert tensor.datatype == DATATYPES[values.dtype.name]
    assert list(tensor.shape) == list(values.shape)
    expected = values.astype(values.dtype.newbyteorder("<")).tobytes()
    assert parsed(data).raw_input_contents[0] == expected


def test_inputs_the_encoder_cannot_carry_are_refused_by_name() -> None:
    with pytest.raises(InvalidInputError, match="'d'") as raised:
        _native.encode_request(
            "m", "", "", None, [("d", [1], pa.array([1], pa.date32()), None)], []
        )
    assert raised.value.input_name == "d"
    with pytest.raises(InvalidInputError, match="shape"):
        _native.encode_request("m", "", "", None, [("x", [3], pa.array([1.0]), None)], [])
    with pytest.raises(TypeError, match="parameter 'p'"):
        _native.encode_request("m", "", "", {"p": [1]}, [], [])  # type: ignore[dict-item]


def response(*outputs: tuple[str, str, list[int], bytes]) -> bytes:
    message = pb.ModelInferResponse(model_name="m", model_version="1", id="r")
    message.parameters["content_type"].string_param = "pd"
    for name, datatype, shape, raw in outputs:
        message.outputs.add(name=name, datatype=datatype, shape=shape)
        message.raw_output_contents.append(raw)
    return bytes(message.SerializeToString())


def length_prefixed(*items: bytes) -> bytes:
    return b"".join(len(item).to_bytes(4, "little") + item for item in items)


def test_a_response_decodes_into_columns() -> None:
    """[n] and [n, 1] outputs are plain columns, [n, k] a fixed-size list of k per row;
    BYTES are strings where the model marks them text, binary elsewhere."""
    data = response(
        ("p", "FP64", [3], np.array([0.5, 1.5, 2.5]).tobytes()),
        ("probs", "FP32", [3, 2], np.arange(6, dtype="<f4").tobytes()),
        ("flag", "BOOL", [3, 1], b"\x00\x01\x00"),
        ("upper", "BYTES", [3], length_prefixed(b"A", "Ü".encode(), b"")),
        ("raw", "BYTES", [3], length_prefixed(b"\xff", b"", b"x")),
    )
    name, version, request_id, parameters, outputs = _native.decode_response(data)
    assert (name, version, request_id, parameters) == ("m", "1", "r", {"content_type": "pd"})
    table = outputs_table(outputs, {"upper"})
    assert table.column_names == ["p", "probs", "flag", "upper", "raw"]
    assert table.column("p").to_pylist() == [0.5, 1.5, 2.5]
    assert table.schema.field("probs").type == pa.list_(pa.float32(), 2)
    assert table.column("probs").to_pylist() == [[0.0, 1.0], [2.0, 3.0], [4.0, 5.0]]
    assert table.column("flag").to_pylist() == [False, True, False]
    assert table.column("upper").to_pylist() == ["A", "Ü", ""]
    assert table.column("raw").to_pylist() == [b"\xff", b"", b"x"]


def test_typed_contents_decode_too() -> None:
    message = pb.ModelInferResponse(model_name="m")
    output = message.outputs.add(name="n", datatype="INT16", shape=[2])
    output.contents.int_contents.extend([-300, 7])
    (_, _, _, _, outputs) = _native.decode_response(message.SerializeToString())
    assert outputs_table(outputs, ()).column("n").to_pylist() == [-300, 7]


@pytest.mark.parametrize(
    ("data", "words"),
    [
        (b"\xff\xff\xff", "not a valid ModelInferResponse"),
        (response(("y", "FP64", [3], b"\x00" * 16)), "16 bytes"),
        (response(("y", "FP64", [-1], b"")), "shape [-1]"),
        (response(("y", "FP99", [1], b"\x00" * 8)), "FP99"),
        (response(("s", "BYTES", [2], length_prefixed(b"a"))), "cannot hold"),
        (response(("s", "BYTES", [1], b"\x09\x00\x00\x00ab")), "declares 9 bytes"),
        (response(("y", "FP64", [3], b"\x00" * 24))[:-3], "not a valid ModelInferResponse"),
    ],
)
def test_malformed_responses_raise(data: bytes, words: str) -> None:
    with pytest.raises(InternalError, match=words.replace("[", r"\[").replace("]", r"\]")):
        _native.decode_response(data)


def test_metadata_round_trips_through_tritonclients_messages() -> None:
    request = pb.ModelMetadataRequest.FromString(_native.encode_metadata_request("wine", "3"))
    assert (request.name, request.version) == ("wine", "3")
    message = pb.ModelMetadataResponse(name="wine", versions=["3"], platform="mlflow")
    message.inputs.add(name="alcohol", datatype="FP64", shape=[-1, 1])
    message.outputs.add(name="output-0", datatype="FP64", shape=[-1])
    name, versions, platform, inputs, outputs = _native.decode_metadata_response(
        message.SerializeToString()
    )
    assert (name, versions, platform) == ("wine", ["3"], "mlflow")
    assert inputs == [("alcohol", "FP64", [-1, 1], {})]
    assert outputs == [("output-0", "FP64", [-1], {})]
    with pytest.raises(InternalError):
        _native.decode_metadata_response(b"\x22\xff")


def test_frames_become_tensors() -> None:
    """DataFrame columns [rows]; float nulls NaN; text marked str; lists [rows, k, ...];
    numpy arrays keep their shape."""
    frame = pd.DataFrame(
        {
            "x": [1.0, None],
            "n": pd.array([1, 2], dtype="Int64"),
            "word": ["a", "b"],
            "kind": pd.Categorical(["u", "v"]),
            "blob": np.array([b"a", b"b"], dtype=object),
        }
    )
    inputs = tensor_inputs(frame)
    assert [(i.name, i.shape, str(i.values.type), i.parameters) for i in inputs] == [
        ("x", [2], "double", None),
        ("n", [2], "int64", None),
        ("word", [2], "large_string", {"content_type": "str"}),
        ("kind", [2], "large_string", {"content_type": "str"}),
        ("blob", [2], "binary", None),
    ]
    assert math.isnan(inputs[0].values[1].as_py())
    lists = pa.array([[[1, 2], [3, 4]], [[5, 6], [7, 8]]], pa.list_(pa.list_(pa.int8(), 2), 2))
    (tensor,) = tensor_inputs(pa.table({"img": lists}).slice(1))
    assert (tensor.shape, tensor.values.to_pylist()) == ([1, 2, 2], [5, 6, 7, 8])
    (tensor,) = tensor_inputs({"input-0": np.zeros((2, 8, 8), np.uint8)})
    assert (tensor.name, tensor.shape, len(tensor.values)) == ("input-0", [2, 8, 8], 128)
    (tensor,) = tensor_inputs({"w": np.array([["a", "bc"]])})
    assert (tensor.shape, tensor.parameters) == ([1, 2], {"content_type": "str"})


@pytest.mark.parametrize("rows", [1, SMALL_ROWS])
def test_a_dataframe_reads_the_same_in_one_block_or_column_by_column(rows: int) -> None:
    """Small frames of one dtype are read as one block, others column by column: the same
    tensors, each column's own dtype kept."""
    values = np.arange(rows * 3, dtype=np.float32).reshape(rows, 3)
    frame = pd.DataFrame(values, columns=["a", "b", "c"])
    for each in (frame, frame.assign(c=frame["c"].astype(np.float64))):
        inputs = tensor_inputs(each)
        columns = tensor_inputs({name: each[name].to_numpy() for name in each.columns})
        assert [(i.name, i.shape) for i in inputs] == [(c.name, c.shape) for c in columns]
        for got, expected in zip(inputs, columns, strict=True):
            assert got.values.equals(expected.values), got.name


@pytest.mark.parametrize(
    "frame",
    [
        pd.DataFrame({"n": pd.array([1, None], dtype="Int64")}),
        pd.DataFrame({"s": ["a", None]}, dtype=object),
        pa.record_batch({"n": pa.array([1, None])}),
    ],
)
def test_nulls_outside_floats_are_refused_naming_the_column(frame: pd.DataFrame) -> None:
    name = frame.columns[0] if isinstance(frame, pd.DataFrame) else frame.column_names[0]
    with pytest.raises(ValueError, match=f"column '{name}' has 1 missing"):
        tensor_inputs(frame)


def test_columns_without_a_v2_datatype_are_refused_by_name() -> None:
    with pytest.raises(TypeError, match="column 'when'"):
        tensor_inputs(pd.DataFrame({"when": pd.to_datetime(["2026-01-01"])}))
    with pytest.raises(TypeError, match="predict takes"):
        tensor_inputs([1, 2])  # type: ignore[arg-type]


def unavailable() -> InferenceError:
    return InferenceError(grpc.StatusCode.UNAVAILABLE, "connection refused")


def test_unavailable_is_retried_with_growing_pauses_and_nothing_else_is() -> None:
    attempts = Attempts(make_settings(TARGET, retries=3, backoff=0.1), None)
    pauses = [attempts.pause_after(unavailable()) for _ in range(3)]
    for pause, delay in zip(pauses, (0.1, 0.2, 0.4), strict=True):
        assert delay / 2 <= pause <= delay
    with pytest.raises(InferenceError) as raised:
        attempts.pause_after(unavailable())
    assert raised.value.code == grpc.StatusCode.UNAVAILABLE
    refused = InferenceError(grpc.StatusCode.INVALID_ARGUMENT, "no")
    with pytest.raises(InferenceError) as raised:
        Attempts(make_settings(TARGET), None).pause_after(refused)
    assert raised.value is refused


def test_pauses_stop_growing_at_the_cap() -> None:
    attempts = Attempts(make_settings(TARGET, retries=10, backoff=1.0), None)
    pauses = [attempts.pause_after(unavailable()) for _ in range(10)]
    assert max(pauses) <= MAX_BACKOFF_SECONDS
    assert pauses[-1] >= MAX_BACKOFF_SECONDS / 2


def test_no_pause_reaches_past_the_deadline() -> None:
    attempts = Attempts(make_settings(TARGET, backoff=60.0), 1.0)
    remaining = attempts.remaining()
    assert remaining is not None and 0 < remaining <= 1.0
    with pytest.raises(InferenceError) as raised:
        attempts.pause_after(unavailable())
    assert raised.value.code == grpc.StatusCode.UNAVAILABLE


def test_settings_are_checked_and_completed() -> None:
    with pytest.raises(ValueError, match="go together"):
        make_settings(TARGET, tls_client_cert="cert.pem")
    with pytest.raises(ValueError, match="flight_target"):
        make_settings("unix:/tmp/grpc.sock", flight_threshold=10)
    options = [("grpc.lb_policy_name", "x")]
    settings = make_settings(TARGET, flight_threshold=10, channel_options=options)
    assert settings.flight_target == "grpc://127.0.0.1:8083"
    assert ("grpc.lb_policy_name", "x") in settings.channel_options
    assert ("grpc.default_authority", "localhost") in make_settings("unix:/s").channel_options


def test_flight_errors_carry_the_servers_status_and_message() -> None:
    wrapped = pa.ArrowInvalid(
        "Flight returned invalid argument error, with message: input 'alcohol' is missing. "
        "gRPC client debug context: UNKNOWN:Error received from peer"
    )
    error = flight_error(wrapped)
    assert (error.code, error.message) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "input 'alcohol' is missing",
    )
