"""Triton's system shared memory behind --allow-shared-memory, with tritonclient's own
`tritonclient.utils.shared_memory` over gRPC and HTTP, unchanged: the wine rows' columns
in one region, the predictions written into another, MLflow's answers; Status, Register and
Unregister; and every bad use answered INVALID_ARGUMENT (HTTP 400) while the server keeps
serving.
"""

import contextlib
import os
import pathlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import grpc
import numpy as np
import pandas as pd
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
import tritonclient.utils.shared_memory as shm
from mlflow.pyfunc import PyFuncModel
from support import v2
from support.model_builders import WINE_MODEL_NAME
from support.server import ServerHandle, StartServer
from tritonclient.grpc import service_pb2 as pb
from tritonclient.utils import InferenceServerException

ROWS = 40
OUTPUT = "output-0"


@dataclass
class Regions:
    """Two regions of this process: the features (column after column) and the answers."""

    tag: str
    rows: pd.DataFrame
    inputs: Any
    outputs: Any

    @property
    def column_bytes(self) -> int:
        return len(self.rows) * 8

    @property
    def input_key(self) -> str:
        return f"/arrowsmith-test-in-{self.tag}"

    @property
    def output_key(self) -> str:
        return f"/arrowsmith-test-out-{self.tag}"


@contextlib.contextmanager
def regions(rows: pd.DataFrame, tag: str) -> Iterator[Regions]:
    tag = f"{tag}-{os.getpid()}"
    size = rows.shape[0] * rows.shape[1] * 8
    inputs = shm.create_shared_memory_region("in", f"/arrowsmith-test-in-{tag}", size)
    outputs = shm.create_shared_memory_region("out", f"/arrowsmith-test-out-{tag}", len(rows) * 8)
    try:
        columns = [np.ascontiguousarray(rows[c].to_numpy(np.float64)) for c in rows.columns]
        shm.set_shared_memory_region(inputs, columns)
        yield Regions(tag, rows, inputs, outputs)
    finally:
        shm.destroy_shared_memory_region(inputs)
        shm.destroy_shared_memory_region(outputs)


@pytest.fixture(scope="module")
def rows(wine_frame: pd.DataFrame) -> pd.DataFrame:
    return wine_frame.iloc[:ROWS]


@pytest.fixture
def shm_server(start_server: StartServer, wine_model_dir: pathlib.Path) -> ServerHandle:
    return start_server(wine_model_dir, "--allow-shared-memory", name=WINE_MODEL_NAME)


def grpc_inputs(placed: Regions, region: str = "in") -> list[grpcclient.InferInput]:
    inputs = []
    for index, column in enumerate(placed.rows.columns):
        tensor = grpcclient.InferInput(str(column), [len(placed.rows), 1], "FP64")
        tensor.set_shared_memory(region, placed.column_bytes, offset=index * placed.column_bytes)
        inputs.append(tensor)
    return inputs


def http_inputs(placed: Regions) -> list[httpclient.InferInput]:
    inputs = []
    for index, column in enumerate(placed.rows.columns):
        tensor = httpclient.InferInput(str(column), [len(placed.rows), 1], "FP64")
        tensor.set_shared_memory("in", placed.column_bytes, offset=index * placed.column_bytes)
        inputs.append(tensor)
    return inputs


def answers(placed: Regions, shape: list[int]) -> np.ndarray:
    result: np.ndarray = shm.get_contents_as_numpy(placed.outputs, np.float64, shape)
    return result


def test_a_grpc_round_trip_through_shared_memory(
    shm_server: ServerHandle, rows: pd.DataFrame, wine_pyfunc: PyFuncModel
) -> None:
    """Inputs read from one region, the output written into another, as MLflow answers;
    Status lists both regions; after Unregister the server knows none."""
    expected = np.asarray(wine_pyfunc.predict(rows))
    with regions(rows, "grpc") as placed, shm_server.grpc_client() as client:
        size = rows.size * 8
        client.register_system_shared_memory("in", placed.input_key, size)
        client.register_system_shared_memory("out", placed.output_key, placed.column_bytes)
        output = grpcclient.InferRequestedOutput(OUTPUT)
        output.set_shared_memory("out", placed.column_bytes)
        result = client.infer(WINE_MODEL_NAME, grpc_inputs(placed), outputs=[output])
        answer = result.get_output(OUTPUT)
        assert answer.parameters["shared_memory_region"].string_param == "out"
        assert result.get_response().raw_output_contents == [b""], "values in the region only"
        np.testing.assert_allclose(answers(placed, list(answer.shape)), expected, rtol=1e-12)

        status = client.get_system_shared_memory_status(as_json=True)["regions"]
        assert status["in"] == {"name": "in", "key": placed.input_key, "byte_size": str(size)}
        assert set(status) == {"in", "out"}
        client.unregister_system_shared_memory("in")
        assert set(client.get_system_shared_memory_status(as_json=True)["regions"]) == {"out"}
        client.unregister_system_shared_memory()
        assert client.get_system_shared_memory_status(as_json=True) == {}


def test_an_http_round_trip_through_shared_memory(
    shm_server: ServerHandle, rows: pd.DataFrame, wine_pyfunc: PyFuncModel
) -> None:
    """The same over V2 REST with tritonclient.http: the register, status and unregister
    endpoints, inputs from a region and the output into one."""
    expected = np.asarray(wine_pyfunc.predict(rows))
    address = f"127.0.0.1:{shm_server.http_port}"
    with (
        regions(rows, "http") as placed,
        contextlib.closing(httpclient.InferenceServerClient(address)) as client,
    ):
        client.register_system_shared_memory("in", placed.input_key, rows.size * 8)
        client.register_system_shared_memory("out", placed.output_key, placed.column_bytes)
        output = httpclient.InferRequestedOutput(OUTPUT)
        output.set_shared_memory("out", placed.column_bytes)
        result = client.infer(WINE_MODEL_NAME, http_inputs(placed), outputs=[output])
        answer = result.get_output(OUTPUT)
        assert answer["parameters"]["shared_memory_region"] == "out"
        assert "data" not in answer
        np.testing.assert_allclose(answers(placed, answer["shape"]), expected, rtol=1e-12)
        names = {region["name"] for region in client.get_system_shared_memory_status()}
        assert names == {"in", "out"}
        (status,) = client.get_system_shared_memory_status("out")
        assert status == {
            "name": "out",
            "key": placed.output_key,
            "offset": 0,
            "byte_size": placed.column_bytes,
        }
        client.unregister_system_shared_memory()
        assert client.get_system_shared_memory_status() == []


def refused(server: ServerHandle, request: pb.ModelInferRequest, *words: str) -> None:
    v2.assert_refused(server.url, request, grpc.StatusCode.INVALID_ARGUMENT, *words)


def placed_request(
    placed: Regions, region: str, size: int, offset: int = 0
) -> pb.ModelInferRequest:
    """The wine rows with their first column in `region` (the rest raw)."""
    request = v2.columns_request(WINE_MODEL_NAME, placed.rows, "FP64", typed=False)
    first = request.inputs[0]
    first.parameters["shared_memory_region"].string_param = region
    first.parameters["shared_memory_byte_size"].int64_param = size
    first.parameters["shared_memory_offset"].int64_param = offset
    del request.raw_input_contents[0]
    return request


def test_bad_uses_are_invalid_argument(
    shm_server: ServerHandle, rows: pd.DataFrame, wine_pyfunc: PyFuncModel
) -> None:
    """An unknown region, a size that does not match the shape, a span past the region's
    end, `contents` beside a region, an output region too small, a key that is no shared
    memory object or a path out of it: each INVALID_ARGUMENT naming the input or region;
    then a good request is still answered."""
    with regions(rows, "bad") as placed, shm_server.grpc_client() as client:
        client.register_system_shared_memory("in", placed.input_key, rows.size * 8)
        column = placed.column_bytes
        refused(shm_server, placed_request(placed, "nowhere", column), "nowhere", "not registered")
        refused(shm_server, placed_request(placed, "in", column - 8), "fixed acidity")
        refused(shm_server, placed_request(placed, "in", column, rows.size * 8), "do not fit")
        with_contents = placed_request(placed, "in", column)
        first = placed.rows.iloc[:, 0].to_numpy(np.float64)
        with_contents.inputs[0].contents.fp64_contents.extend(first)
        refused(shm_server, with_contents, "fixed acidity", "contents")
        small = v2.columns_request(WINE_MODEL_NAME, rows, "FP64", typed=False)
        client.register_system_shared_memory("out", placed.output_key, 8)
        out = small.outputs.add(name=OUTPUT)
        out.parameters["shared_memory_region"].string_param = "out"
        out.parameters["shared_memory_byte_size"].int64_param = 8
        refused(shm_server, small, OUTPUT, "more than")
        for key in ("/arrowsmith-test-none", "/../etc/passwd", "relative/key"):
            with pytest.raises(InferenceServerException) as raised:
                client.register_system_shared_memory("x", key, 8)
            assert raised.value.status() == "StatusCode.INVALID_ARGUMENT", raised.value
        with pytest.raises(InferenceServerException, match="already registered"):
            client.register_system_shared_memory("in", placed.input_key, 8)
        with pytest.raises(InferenceServerException, match="do not fit"):
            client.register_system_shared_memory("big", placed.input_key, rows.size * 8 + 1)
    expected = np.asarray(wine_pyfunc.predict(rows))
    v2.assert_wine_served(shm_server.url, rows, expected)


def test_shared_memory_is_off_unless_allowed(wine_server: ServerHandle, rows: pd.DataFrame) -> None:
    """Without --allow-shared-memory: Register and inputs naming a region are refused,
    INVALID_ARGUMENT, saying how to allow it; Status lists nothing."""
    with regions(rows, "off") as placed, wine_server.grpc_client() as client:
        with pytest.raises(InferenceServerException, match="--allow-shared-memory") as raised:
            client.register_system_shared_memory("in", placed.input_key, rows.size * 8)
        assert raised.value.status() == "StatusCode.INVALID_ARGUMENT"
        assert client.get_system_shared_memory_status(as_json=True) == {}
        refused(
            wine_server, placed_request(placed, "in", placed.column_bytes), "--allow-shared-memory"
        )
