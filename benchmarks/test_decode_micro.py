"""Decode micro-benchmark: one FP32 [4096, 11] raw input, native decode vs Python protobuf.

Not part of the test run (testpaths is tests/); run it with

    .venv/bin/python -m pytest benchmarks/test_decode_micro.py --benchmark-only \
        --benchmark-columns=min,median,mean,ops -q

The native decoder borrows raw_input_contents from the request's bytes when the values start
4-byte aligned and copies them once otherwise, so its cases run on two bodies that differ only
in that alignment (a longer model name shifts the payload). Each benchmark also checks the
values it produced; none asserts anything about time.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
from arrowsmith import _native
from tritonclient.grpc import service_pb2 as pb

ROWS, COLS = 4096, 11
ALIGNMENTS = ("aligned", "unaligned")

pytestmark = pytest.mark.benchmark(group="decode 4096x11 FP32")


@pytest.fixture(scope="module")
def array() -> np.ndarray:
    return np.random.default_rng(0).random((ROWS, COLS), dtype=np.float32)


def address(data: bytes) -> int:
    """Where a bytes object's contents live (a read-only numpy view shares them)."""
    return np.frombuffer(data, dtype=np.uint8).ctypes.data


def raw_address(body: bytes, raw: bytes) -> int:
    return address(body) + body.find(raw)


@pytest.fixture(scope="module")
def bodies(array: np.ndarray) -> dict[str, bytes]:
    """A serialized request per alignment of its raw values inside the bytes object."""
    raw = array.tobytes()
    found: dict[str, bytes] = {}
    for padding in range(1, 5):
        request = pb.ModelInferRequest(model_name="m" * padding)
        request.inputs.add(name="x", datatype="FP32", shape=[ROWS, COLS])
        request.raw_input_contents.append(raw)
        body = request.SerializeToString()
        aligned = raw_address(body, raw) % 4 == 0
        found.setdefault(ALIGNMENTS[not aligned], body)
    assert set(found) == set(ALIGNMENTS)
    return found


def native_to_numpy(body: bytes) -> np.ndarray:
    request = _native.decode_request(body)
    (_name, _datatype, shape, values) = request.inputs()[0]
    return pa.array(values).to_numpy(zero_copy_only=False).reshape(shape)


@pytest.mark.parametrize("alignment", ALIGNMENTS)
def test_native_decode(benchmark, bodies, alignment):
    request = benchmark(_native.decode_request, bodies[alignment])
    assert request.inputs()[0][:3] == ("x", "FP32", [ROWS, COLS])


@pytest.mark.parametrize("alignment", ALIGNMENTS)
def test_native_decode_to_numpy(benchmark, array, bodies, alignment):
    body = bodies[alignment]
    native_to_numpy(body)  # the first to_numpy imports modules lazily (~0.2 s): not timed
    values = benchmark(native_to_numpy, body)
    np.testing.assert_array_equal(values, array)
    borrowed = values.ctypes.data == raw_address(body, array.tobytes())
    benchmark.extra_info["borrowed_from_request_bytes"] = borrowed
    assert borrowed == (alignment == "aligned")


def test_protobuf_decode_to_numpy(benchmark, array, bodies):
    def decode(body: bytes) -> np.ndarray:
        message = pb.ModelInferRequest.FromString(body)
        raw = message.raw_input_contents[0]
        return np.frombuffer(raw, dtype=np.float32).copy().reshape(ROWS, COLS)

    np.testing.assert_array_equal(benchmark(decode, bodies["aligned"]), array)


def test_frombuffer_copy(benchmark, array):
    def copy(raw: bytes) -> np.ndarray:
        return np.frombuffer(raw, dtype=np.float32).copy()

    np.testing.assert_array_equal(benchmark(copy, array.tobytes()), array.ravel())
