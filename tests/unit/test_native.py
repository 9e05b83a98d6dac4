"""The native data path on its own: request bytes (built with tritonclient's protobuf classes,
a third-party reading of the wire format) -> decoded views -> a model's signature applied ->
batches -> response bytes read back by tritonclient's classes."""

import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pyarrow as pa
import pytest
from arrowsmith import _native
from arrowsmith.errors import (
    CancelledError,
    DeadlineExceededError,
    InternalError,
    InvalidInputError,
    ModelError,
    ModelNotReadyError,
    QueueFullError,
    UnsupportedError,
)
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from support import v2
from tritonclient.grpc import service_pb2 as pb
from tritonclient.utils import triton_to_np_dtype

ARROW_TYPES = {
    "BOOL": pa.bool_(),
    "UINT8": pa.uint8(),
    "UINT16": pa.uint16(),
    "UINT32": pa.uint32(),
    "UINT64": pa.uint64(),
    "INT8": pa.int8(),
    "INT16": pa.int16(),
    "INT32": pa.int32(),
    "INT64": pa.int64(),
    "FP16": pa.float16(),
    "FP32": pa.float32(),
    "FP64": pa.float64(),
    "BYTES": pa.binary(),
}
NUMERIC = [d for d in ARROW_TYPES if d != "BYTES"]
# FP16 has no typed contents field: it travels raw only.
ENCODINGS = [
    (d, typed) for d in ARROW_TYPES for typed in (False, True) if (d, typed) != ("FP16", True)
]


def decode(request: pb.ModelInferRequest) -> _native.InferRequest:
    return _native.decode_request(request.SerializeToString())


def sample(datatype: str, shape: tuple[int, ...]) -> np.ndarray:
    """Values covering each datatype's extremes, so narrowing or sign bugs show."""
    count = int(np.prod(shape))
    if datatype == "BYTES":
        return np.array([f"v{i}-é".encode() for i in range(count)], dtype=object).reshape(shape)
    dtype = np.dtype(triton_to_np_dtype(datatype))
    if dtype == np.bool_:
        return (np.arange(count) % 3 == 0).reshape(shape)
    info = np.finfo(dtype) if dtype.kind == "f" else np.iinfo(dtype)
    pool = np.array([info.min, info.max, 0, 1], dtype=dtype)
    return np.resize(pool, count).reshape(shape)


def values_of(view: object) -> list:
    return pa.array(view).to_pylist()


def one_input(datatype: str, values: np.ndarray, *, typed: bool) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name="m")
    v2.add_input(request, "x", values, datatype, typed=typed)
    return request


# --- decode --------------------------------------------------------------------------------


def test_request_envelope_and_parameters() -> None:
    request = pb.ModelInferRequest(model_name="wine", model_version="3", id="req-1")
    request.parameters["flag"].bool_param = True
    request.parameters["count"].int64_param = -4
    request.parameters["label"].string_param = "ç"
    request.parameters["scale"].double_param = 0.25
    request.parameters["big"].uint64_param = 2**64 - 1
    request.outputs.add(name="second")
    request.outputs.add(name="first")
    decoded = decode(request)
    assert (decoded.model_name, decoded.model_version, decoded.id) == ("wine", "3", "req-1")
    assert decoded.parameters == {
        "flag": True,
        "count": -4,
        "label": "ç",
        "scale": 0.25,
        "big": 2**64 - 1,
    }
    assert decoded.requested_outputs == ["second", "first"]
    assert decoded.inputs() == []


@pytest.mark.parametrize(
    ("datatype", "typed"), ENCODINGS, ids=[f"{d}-{'typed' if t else 'raw'}" for d, t in ENCODINGS]
)
def test_input_views(datatype: str, typed: bool) -> None:
    """Name, datatype, shape and flat values of every datatype, raw and typed."""
    values = sample(datatype, (2, 3))
    ((name, dt, shape, view),) = decode(one_input(datatype, values, typed=typed)).inputs()
    assert (name, dt, shape) == ("x", datatype, [2, 3])
    assert len(view) == 6
    assert pa.array(view).type == ARROW_TYPES[datatype]
    assert values_of(view) == values.reshape(-1).tolist()


def test_inputs_keep_request_order_and_their_parameters() -> None:
    request = pb.ModelInferRequest()
    second = v2.add_input(request, "b", np.array([b"hi"], dtype=object), "BYTES", typed=False)
    second.parameters["content_type"].string_param = "str"
    v2.add_input(request, "a", np.array([1.0]), "FP64", typed=False)
    decoded = decode(request)
    assert [view[0] for view in decoded.inputs()] == ["b", "a"]
    assert decoded.input_parameters() == {"b": {"content_type": "str"}, "a": {}}


def test_empty_tensor_needs_no_data() -> None:
    request = pb.ModelInferRequest()
    request.inputs.add(name="x", datatype="FP32", shape=[0, 4])
    ((_, _, shape, view),) = decode(request).inputs()
    assert shape == [0, 4]
    assert len(view) == 0


def garbage() -> bytes:
    """A length-delimited field 1 whose length varint never ends."""
    return b"\x0a\xff\xff\xff"


def two_raw_for_one_input() -> pb.ModelInferRequest:
    request = one_input("FP64", np.array([1.0]), typed=False)
    request.raw_input_contents.append(b"")
    return request


def short_raw() -> pb.ModelInferRequest:
    request = one_input("FP64", np.array([1.0, 2.0]), typed=False)
    request.raw_input_contents[0] = request.raw_input_contents[0][:-1]
    return request


def unknown_datatype() -> pb.ModelInferRequest:
    request = one_input("FP64", np.array([1.0]), typed=True)
    request.inputs[0].datatype = "FP128"
    return request


def bool_byte_2() -> pb.ModelInferRequest:
    request = one_input("BOOL", np.array([True, False]), typed=False)
    request.raw_input_contents[0] = b"\x01\x02"
    return request


def negative_dimension() -> pb.ModelInferRequest:
    request = one_input("FP64", np.array([1.0]), typed=True)
    request.inputs[0].shape[0] = -1
    return request


def wrong_contents_field() -> pb.ModelInferRequest:
    request = pb.ModelInferRequest()
    request.inputs.add(name="x", datatype="FP64", shape=[1]).contents.fp32_contents.append(1.0)
    return request


def int8_out_of_range() -> pb.ModelInferRequest:
    request = pb.ModelInferRequest()
    request.inputs.add(name="x", datatype="INT8", shape=[2]).contents.int_contents.extend([1, 200])
    return request


def typed_fp16() -> pb.ModelInferRequest:
    request = pb.ModelInferRequest()
    request.inputs.add(name="x", datatype="FP16", shape=[1]).contents.fp32_contents.append(1.0)
    return request


def truncated_bytes() -> pb.ModelInferRequest:
    request = one_input("BYTES", np.array([b"abc"], dtype=object), typed=False)
    request.raw_input_contents[0] = request.raw_input_contents[0][:-1]
    return request


def too_few_typed_values() -> pb.ModelInferRequest:
    request = one_input("INT64", np.array([1, 2]), typed=True)
    request.inputs[0].shape[:] = [3]
    return request


def no_data() -> pb.ModelInferRequest:
    request = pb.ModelInferRequest()
    request.inputs.add(name="x", datatype="FP64", shape=[2])
    return request


def duplicate_name() -> pb.ModelInferRequest:
    request = one_input("FP64", np.array([1.0]), typed=False)
    v2.add_input(request, "x", np.array([2.0]), "FP64", typed=False)
    return request


def raw_and_contents() -> pb.ModelInferRequest:
    request = one_input("FP64", np.array([1.0]), typed=False)
    request.inputs.add(name="y", datatype="FP64", shape=[1]).contents.fp64_contents.append(2.0)
    request.raw_input_contents.append(b"\x00" * 8)
    return request


# (builder, the input the error names or None for the whole request, words of the message)
DECODE_ERRORS: list[tuple[Callable[[], pb.ModelInferRequest | bytes], str | None, str]] = [
    (garbage, None, "not a valid ModelInferRequest"),
    (two_raw_for_one_input, None, "raw_input_contents"),
    (short_raw, "x", "needs 2 x 8 = 16 bytes"),
    (unknown_datatype, "x", "'FP128'"),
    (bool_byte_2, "x", "byte 2 at element 1"),
    (negative_dimension, "x", "[-1]"),
    (wrong_contents_field, "x", "fp32_contents"),
    (int8_out_of_range, "x", "200"),
    (typed_fp16, "x", "raw_input_contents"),
    (truncated_bytes, "x", "BYTES element 0"),
    (too_few_typed_values, "x", "2 values in int64_contents"),
    (no_data, "x", "carries no data"),
    (duplicate_name, "x", "more than once"),
    (raw_and_contents, "y", "`contents`"),
]


@pytest.mark.parametrize(
    ("build", "input_name", "words"), DECODE_ERRORS, ids=[e[0].__name__ for e in DECODE_ERRORS]
)
def test_decode_refusals(
    build: Callable[[], pb.ModelInferRequest | bytes], input_name: str | None, words: str
) -> None:
    """Refused as InvalidInputError, naming the input at fault (in `.input_name` and in the
    message) and saying what is wrong."""
    built = build()
    data = built if isinstance(built, bytes) else built.SerializeToString()
    with pytest.raises(InvalidInputError) as raised:
        _native.decode_request(data)
    error = raised.value
    assert error.input_name == input_name
    assert words in error.message
    if input_name is not None:
        assert f"'{input_name}'" in error.message


# --- signatures ----------------------------------------------------------------------------


def columns_request(**columns: tuple[str, np.ndarray]) -> _native.InferRequest:
    """One raw input per keyword: name=(datatype, values)."""
    request = pb.ModelInferRequest()
    for name, (datatype, values) in columns.items():
        v2.add_input(request, name, values, datatype, typed=False)
    return decode(request)


def enforced(request: _native.InferRequest, signature: _native.Signature) -> _native.Batch:
    """The request with the signature applied, as the batch of one a model runner sees."""
    return request.job(signature).as_batch()


def record_batch(request: _native.InferRequest, signature: _native.Signature) -> pa.RecordBatch:
    batch = enforced(request, signature)
    assert batch.form == "columns"
    return pa.record_batch(batch.frame())


def tensors(request: _native.InferRequest, signature: _native.Signature) -> list:
    batch = enforced(request, signature)
    assert batch.form == "tensors"
    return batch.inputs()


def test_columns_in_signature_order_with_mlflow_conversions() -> None:
    """Matched by name whatever the request order, converted where MLflow converts, extra
    inputs dropped, a missing optional column left out."""
    request = columns_request(
        text=("BYTES", np.array([[b"a"], [b"\xc3\xa9"]], dtype=object)),
        blob=("BYTES", np.array([b"\xff", b""], dtype=object)),
        small=("UINT8", np.array([[255], [0]], dtype=np.uint8)),
        count=("INT32", np.array([[-5], [7]], dtype=np.int32)),
        ratio=("FP32", np.array([0.5, 1.5], dtype=np.float32)),
        half=("FP16", np.array([0.25, 2.0], dtype=np.float16)),
        flag=("INT64", np.array([1, 0])),
        extra=("FP64", np.array([9.0, 9.0])),
    )
    signature = _native.Signature.columns(
        [
            ("ratio", "double", True),
            ("count", "long", True),
            ("small", "integer", True),
            ("half", "float", True),
            ("flag", "double", True),
            ("text", "string", True),
            ("blob", "binary", True),
            ("absent", "double", False),
        ]
    )
    batch = record_batch(request, signature)
    assert batch.schema.names == ["ratio", "count", "small", "half", "flag", "text", "blob"]
    assert batch.schema.types == [
        pa.float64(),
        pa.int64(),
        pa.int32(),
        pa.float32(),
        pa.float64(),
        pa.string(),
        pa.binary(),
    ]
    assert batch.num_rows == 2
    assert batch.to_pydict() == {
        "ratio": [0.5, 1.5],
        "count": [-5, 7],
        "small": [255, 0],
        "half": [0.25, 2.0],
        "flag": [1.0, 0.0],
        "text": ["a", "é"],
        "blob": [b"\xff", b""],
    }


def test_unnamed_columns_match_by_position() -> None:
    request = columns_request(anything=("FP64", np.array([1.0, 2.0])))
    batch = record_batch(request, _native.Signature.columns([(None, "double", True)]))
    assert batch.schema.names == ["anything"]
    assert batch.column(0).to_pylist() == [1.0, 2.0]


def test_datetime_and_boolean_columns_take_text_as_mlflow_does() -> None:
    """Datetime columns arrive as UTF-8 text for Python to parse; BYTES reach a boolean
    column unchanged, as MLflow passes object columns."""
    request = columns_request(
        when=("BYTES", np.array([b"2024-01-02T03:04:05", b"2024-02-29"], dtype=object)),
        flag=("BYTES", np.array([b"yes", b""], dtype=object)),
    )
    signature = _native.Signature.columns([("when", "datetime", True), ("flag", "boolean", True)])
    batch = record_batch(request, signature)
    assert batch.schema.types == [pa.string(), pa.binary()]
    assert batch.to_pydict() == {
        "when": ["2024-01-02T03:04:05", "2024-02-29"],
        "flag": [b"yes", b""],
    }


# (signature, request columns, error class, input named, words of the message)
COERCE_ERRORS = [
    (
        [("a", "double", True), ("b", "double", True)],
        {"a": ("FP64", np.array([1.0])), "c": ("FP64", np.array([1.0]))},
        InvalidInputError,
        "b",
        "Model is missing inputs ['b']. Note that there were extra inputs: ['c'].",
    ),
    (
        [("a", "double", True)],
        {"a": ("INT64", np.array([0, 2]))},
        InvalidInputError,
        "a",
        "Can not safely convert int64 to float64",
    ),
    (
        [("a", "long", True)],
        {"a": ("FP64", np.array([1.0, np.nan]))},
        InvalidInputError,
        "a",
        "missing values",
    ),
    (
        [("a", "double", True), ("b", "double", True)],
        {"a": ("FP64", np.array([1.0, 2.0])), "b": ("FP64", np.array([1.0]))},
        InvalidInputError,
        "b",
        "every column needs the same number of rows",
    ),
    (
        [("a", "double", True)],
        {"a": ("FP64", np.zeros((2, 2)))},
        InvalidInputError,
        "a",
        "[2, 2]",
    ),
    (
        [("a", "string", True)],
        {"a": ("BYTES", np.array([b"ok", b"\xff"], dtype=object))},
        InvalidInputError,
        "a",
        "not UTF-8 text (element 1)",
    ),
    (
        [(None, "double", True), (None, "double", True)],
        {"a": ("FP64", np.array([1.0]))},
        InvalidInputError,
        None,
        "declares 2 inputs but the request has 1",
    ),
    (
        [("a", "datetime", True)],
        {"a": ("FP64", np.array([1.0]))},
        InvalidInputError,
        "a",
        "Can not safely convert float64 to datetime64[ns]",
    ),
    (
        [("a", "array", True)],
        {"a": ("FP64", np.array([1.0]))},
        UnsupportedError,
        None,
        "array",
    ),
]


@pytest.mark.parametrize(("specs", "columns", "error", "input_name", "words"), COERCE_ERRORS)
def test_column_refusals(
    specs: list, columns: dict, error: type, input_name: str | None, words: str
) -> None:
    with pytest.raises(error) as raised:
        columns_request(**columns).job(_native.Signature.columns(specs))
    assert words in str(raised.value)
    if error is InvalidInputError:
        assert raised.value.input_name == input_name
    if input_name is not None:
        assert f"'{input_name}'" in str(raised.value)


def test_unnamed_tensor_takes_the_input_as_sent() -> None:
    images = np.arange(8, dtype=np.uint8).reshape(2, 2, 2)
    request = columns_request(pixels=("UINT8", images))
    ((name, datatype, shape, view),) = tensors(
        request, _native.Signature.tensors([(None, "uint8", [-1, 2, 2])])
    )
    assert (name, datatype, shape) == ("pixels", "UINT8", [2, 2, 2])
    assert values_of(view) == list(range(8))


def test_named_tensors_in_signature_order() -> None:
    request = columns_request(
        text=("BYTES", np.array([b"hi"], dtype=object)),
        ids=("INT64", np.array([[1, 2]])),
        extra=("FP64", np.array([0.0])),
    )
    signature = _native.Signature.tensors([("ids", "int64", [-1, 2]), ("text", "str", [-1])])
    coerced = tensors(request, signature)
    assert [(n, d, s) for n, d, s, _ in coerced] == [
        ("ids", "INT64", [1, 2]),
        ("text", "BYTES", [1]),
    ]
    assert values_of(coerced[0][3]) == [1, 2]
    assert pa.array(coerced[1][3]).type == pa.string()
    assert values_of(coerced[1][3]) == ["hi"]


def test_unnamed_tensor_signature_checks_the_first_input_only() -> None:
    """MLflow compares only the first input with the first spec when specs have no names."""
    request = columns_request(a=("FP64", np.array([1.0, 2.0])), b=("INT64", np.array([1])))
    signature = _native.Signature.tensors([(None, "float64", [-1]), (None, "int64", [-1])])
    ((name, datatype, shape, view),) = tensors(request, signature)
    assert (name, datatype, shape) == ("a", "FP64", [2])
    assert values_of(view) == [1.0, 2.0]


def test_object_tensor_of_any_length_takes_anything() -> None:
    """An `object` [-1] spec is how MLflow describes ragged arrays: no check at all."""
    request = columns_request(a=("FP64", np.zeros((2, 3))))
    ((name, datatype, shape, _),) = tensors(
        request, _native.Signature.tensors([("a", "object", [-1])])
    )
    assert (name, datatype, shape) == ("a", "FP64", [2, 3])


@pytest.mark.parametrize(
    ("spec", "words"),
    [
        (
            ("x", "int8", [-1, 2, 2]),
            "dtype of input 'x' uint8 (UINT8) does not match expected dtype int8",
        ),
        (("x", "str", [-1, 2, 2]), "does not match expected dtype str"),
        (("x", "uint8", [-1, 3, 2]), "Shape of input 'x' [2, 2, 2] does not match expected shape"),
        # Shape is judged before dtype, as MLflow does.
        (("x", "int8", [-1, 4]), "Shape of input 'x' [2, 2, 2]"),
        (("y", "uint8", [-1, 2, 2]), "Model is missing inputs ['y']"),
    ],
)
def test_tensor_refusals(spec: tuple, words: str) -> None:
    request = columns_request(x=("UINT8", np.zeros((2, 2, 2), dtype=np.uint8)))
    with pytest.raises(InvalidInputError) as raised:
        request.job(_native.Signature.tensors([spec]))
    assert words in raised.value.message
    assert raised.value.input_name == spec[0]


def test_unknown_tensor_dtype_is_refused_when_the_model_loads() -> None:
    with pytest.raises(ValueError, match="complex128"):
        _native.Signature.tensors([("x", "complex128", [-1])])


# --- encode and batching ---------------------------------------------------------------

#: Bounds each request's wait for its answer, so a broken runner fails a test, never hangs it.
ANSWER_TIMEOUT_S = 60.0


def job(rows: np.ndarray, request_id: str) -> _native.Job:
    """A request with one FP64 column `x`, the signature `x: double` applied."""
    message = pb.ModelInferRequest(id=request_id)
    v2.add_input(message, "x", rows, "FP64", typed=False)
    signature = _native.Signature.columns([("x", "double", True)])
    return decode(message).job(signature, ANSWER_TIMEOUT_S)


def complete_next(batcher: _native.Batcher, outputs: list) -> None:
    """The model runner's part: take the next batch and answer it with `outputs`."""
    batch = batcher.next_batch()
    if batch is not None:
        batch.complete(outputs)


def respond(*outputs: tuple[str, list[int], pa.Array]) -> pb.ModelInferResponse:
    """A request answered with `outputs` the way the server answers every request: a runner
    thread completes the batch, the request thread gets the encoded response."""
    batcher = _native.Batcher("wine", "2", 64, 0.0, 4)
    runner = threading.Thread(target=complete_next, args=(batcher, list(outputs)))
    runner.start()
    try:
        data = batcher.submit(job(np.zeros(1), "req-9"))
    finally:
        batcher.close()
        runner.join()
    return pb.ModelInferResponse.FromString(data)


def test_response_envelope_and_raw_contents() -> None:
    """Every output in raw_output_contents: little-endian numbers, one byte per BOOL, BYTES
    as 4-byte little-endian length + bytes."""
    response = respond(
        ("score", [2, 1], pa.array([1.5, -2.0])),
        ("count", [2], pa.array([1, -1], type=pa.int64())),
        ("ok", [3], pa.array([True, False, True])),
        ("label", [2], pa.array(["é", ""])),
        ("blob", [1], pa.array([b"\x00\x01"])),
    )
    assert (response.model_name, response.model_version, response.id) == ("wine", "2", "req-9")
    assert [(o.name, o.datatype, list(o.shape)) for o in response.outputs] == [
        ("score", "FP64", [2, 1]),
        ("count", "INT64", [2]),
        ("ok", "BOOL", [3]),
        ("label", "BYTES", [2]),
        ("blob", "BYTES", [1]),
    ]
    assert not any(o.HasField("contents") for o in response.outputs)
    assert list(response.raw_output_contents) == [
        np.array([1.5, -2.0], dtype="<f8").tobytes(),
        np.array([1, -1], dtype="<i8").tobytes(),
        b"\x01\x00\x01",
        b"\x02\x00\x00\x00\xc3\xa9" + b"\x00\x00\x00\x00",
        b"\x02\x00\x00\x00\x00\x01",
    ]


def test_sliced_arrays_encode_only_their_window() -> None:
    response = respond(
        ("f", [2], pa.array([1.0, 2.0, 3.0, 4.0]).slice(1, 2)),
        ("b", [2], pa.array([True, False, True, False]).slice(2)),
        ("s", [1], pa.array(["a", "bc", "d"]).slice(1, 1)),
    )
    assert list(response.raw_output_contents) == [
        np.array([2.0, 3.0], dtype="<f8").tobytes(),
        b"\x01\x00",
        b"\x02\x00\x00\x00bc",
    ]


@pytest.mark.parametrize(
    ("output", "words"),
    [
        (("o", [3], pa.array([1.0, 2.0])), "output 'o' has shape [3] but 2 values"),
        (("o", [2], pa.array([1.0, None])), "1 missing (null) values"),
        (("o", [1], pa.array([[1, 2]])), "no V2 datatype"),
        (("o", [-1], pa.array([1.0])), "shape [-1]"),
    ],
)
def test_unencodable_outputs_are_internal_errors(output: tuple, words: str) -> None:
    """The request gets INTERNAL naming the output; nothing is half-written."""
    with pytest.raises(InternalError) as raised:
        respond(output)
    assert words in raised.value.message


def queued(batcher: _native.Batcher, jobs: list[_native.Job], pool: ThreadPoolExecutor) -> list:
    """Submits every job from its own thread and returns once all of them wait in the queue
    (or one submit has already ended, for the test to report)."""
    futures = [pool.submit(batcher.submit, j) for j in jobs]
    while batcher.depth < len(jobs) and not any(f.done() for f in futures):
        time.sleep(0.01)
    return futures


def test_waiting_requests_form_one_batch_split_back_by_rows() -> None:
    """Requests of the same form are predicted together; each gets its own rows back."""
    batcher = _native.Batcher("m", "1", 64, 0.0, 8)
    parts = [np.array([1.0, 2.0]), np.array([3.0, 4.0, 5.0])]
    with ThreadPoolExecutor(len(parts)) as pool:
        futures = queued(batcher, [job(x, f"r{i}") for i, x in enumerate(parts)], pool)
        batch = batcher.next_batch()
        assert (len(batch), batch.rows(), batch.form) == (2, [2, 3], "columns")
        x = pa.record_batch(batch.frame()).column("x")
        assert x.to_pylist() == [1.0, 2.0, 3.0, 4.0, 5.0]
        batch.complete([("y", [5, 1], pa.array(np.asarray(x) * 10))])
        responses = [pb.ModelInferResponse.FromString(f.result()) for f in futures]
    assert [r.id for r in responses] == ["r0", "r1"]
    assert [list(r.outputs[0].shape) for r in responses] == [[2, 1], [3, 1]]
    for response, rows in zip(responses, parts, strict=True):
        received = np.frombuffer(response.raw_output_contents[0], dtype="<f8")
        np.testing.assert_array_equal(received, rows * 10)


def test_batch_output_without_one_row_per_input_row_fails_every_request() -> None:
    """Rows that cannot be told apart are given to no one."""
    batcher = _native.Batcher("m", "1", 64, 0.0, 8)
    with ThreadPoolExecutor(2) as pool:
        futures = queued(batcher, [job(np.ones(2), "a"), job(np.ones(1), "b")], pool)
        batcher.next_batch().complete([("total", [1], pa.array([3.0]))])
        for future in futures:
            with pytest.raises(InternalError, match="'total' of shape \\[1\\] for a batch of 3"):
                future.result()


def test_failed_batch_answers_each_request_with_the_error() -> None:
    batcher = _native.Batcher("m", "1", 64, 0.0, 8)
    with ThreadPoolExecutor(1) as pool:
        (future,) = queued(batcher, [job(np.ones(1), "a")], pool)
        batcher.next_batch().fail("MODEL_ERROR", "model 'm' failed: boom")
        with pytest.raises(ModelError, match="boom"):
            future.result()


def test_full_queue_pushes_back() -> None:
    batcher = _native.Batcher("m", "1", 64, 0.0, 1)
    with ThreadPoolExecutor(1) as pool:
        (waiting,) = queued(batcher, [job(np.ones(1), "a")], pool)
        with pytest.raises(QueueFullError, match="max_queue_size"):
            batcher.submit(job(np.ones(1), "b"))
        complete_next(batcher, [("y", [1], pa.array([0.0]))])
        assert pb.ModelInferResponse.FromString(waiting.result()).id == "a"


def test_request_past_its_deadline_is_not_predicted() -> None:
    batcher = _native.Batcher("m", "1", 64, 0.0, 4)
    message = pb.ModelInferRequest(id="late")
    v2.add_input(message, "x", np.ones(1), "FP64", typed=False)
    late = decode(message).job(None, 0.0)
    with pytest.raises(DeadlineExceededError, match="'late'"):
        batcher.submit(late)
    batcher.close()
    assert batcher.next_batch() is None


def test_cancelled_request_returns_at_once() -> None:
    batcher = _native.Batcher("m", "1", 64, 0.0, 4)
    cancelled = job(np.ones(1), "gone")
    with ThreadPoolExecutor(1) as pool:
        (future,) = queued(batcher, [cancelled], pool)
        cancelled.cancel()
        with pytest.raises(CancelledError, match="'gone'"):
            future.result()
    batcher.close()
    assert batcher.next_batch() is None


def test_closed_batcher_takes_no_more_requests() -> None:
    batcher = _native.Batcher("m", "1", 64, 0.0, 4)
    batcher.close()
    with pytest.raises(ModelNotReadyError, match="shutting down"):
        batcher.submit(job(np.ones(1), "a"))


# --- properties ----------------------------------------------------------------------------

FLOAT64 = st.floats(allow_nan=True, allow_infinity=True, width=64)


@settings(derandomize=True, max_examples=60, deadline=None)
@given(values=st.lists(FLOAT64, max_size=40), typed=st.booleans())
def test_fp64_column_round_trips(values: list[float], typed: bool) -> None:
    """Whatever doubles arrive, a double column hands them over unchanged, NaN and -0.0
    included."""
    sent = np.array(values, dtype=np.float64)
    request = decode(one_input("FP64", sent.reshape(-1, 1), typed=typed))
    batch = record_batch(request, _native.Signature.columns([("x", "double", True)]))
    assert batch.num_rows == len(values)
    received = batch.column(0).to_numpy()
    np.testing.assert_array_equal(received, sent)
    np.testing.assert_array_equal(np.signbit(received), np.signbit(sent))


@settings(derandomize=True, max_examples=60, deadline=None)
@given(
    array=hnp.arrays(
        dtype=st.sampled_from(NUMERIC).map(lambda d: np.dtype(triton_to_np_dtype(d))),
        shape=hnp.array_shapes(min_dims=1, max_dims=3, min_side=0, max_side=4),
    ),
    offset=st.integers(0, 3),
)
def test_numeric_outputs_round_trip(array: np.ndarray, offset: int) -> None:
    """Any numeric tensor, also a window of a larger Arrow array, reads back identically with
    tritonclient's dtype for the datatype the encoder chose."""
    flat = array.reshape(-1)
    padded = pa.array(np.concatenate([np.zeros(offset, dtype=flat.dtype), flat]))
    response = respond(("o", list(array.shape), padded.slice(offset)))
    (output,) = response.outputs
    assert ARROW_TYPES[output.datatype] == pa.from_numpy_dtype(array.dtype)
    assert list(output.shape) == list(array.shape)
    dtype = np.dtype(triton_to_np_dtype(output.datatype)).newbyteorder("<")
    received = np.frombuffer(response.raw_output_contents[0], dtype=dtype).reshape(array.shape)
    np.testing.assert_array_equal(received, array)
