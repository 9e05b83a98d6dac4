"""Requests crafted to misroute or overflow, against real server processes batching with a
delay (`--max-batch-size 64 --max-batch-delay-ms 5`), so that concurrent requests do meet
in the queue.

- Names that hold what a text batch key would have used as separators, sent beside a request
  whose inputs spell out that key, in both arrival orders and many rounds: each must get
  exactly its own values back, under its own names.
- Shapes the data cannot fill (element counts or byte sizes that overflow, empty tensors with
  enormous dimensions): INVALID_ARGUMENT naming the input, never an answer, never INTERNAL.

After every case the same server answers a good request."""

import pathlib
from collections.abc import Iterator

import grpc
import numpy as np
import pandas as pd
import pytest
from mlflow.pyfunc import PyFuncModel
from support import v2
from support.model_builders import save_echo_frame_model
from support.server import ServerHandle, StartServer
from support.v2 import assert_refused
from tritonclient.grpc import service_pb2 as pb

ECHO = "echo_frame"
BATCHING_FLAGS = ("--max-batch-size", "64", "--max-batch-delay-ms", "5")
CRAFTED_NAME = "a:Float64:[]:{}|b"
ROUNDS = 40


@pytest.fixture(scope="module")
def echo_server(models_dir: pathlib.Path, start_server_module: StartServer) -> ServerHandle:
    model_dir = save_echo_frame_model(models_dir / "echo-frame")
    return start_server_module(model_dir, *BATCHING_FLAGS, name=ECHO)


@pytest.fixture(scope="module")
def batching_wine_server(
    wine_model_dir: pathlib.Path, start_server_module: StartServer
) -> ServerHandle:
    return start_server_module(wine_model_dir, *BATCHING_FLAGS, name="wine")


@pytest.fixture(scope="module")
def start_server_module(server_logs: pathlib.Path) -> Iterator[StartServer]:
    """`start_server` for servers shared by this module's tests."""
    import contextlib

    from support.server import running_server

    with contextlib.ExitStack() as stack:

        def start(model_dir: pathlib.Path, *extra: str, name: str | None = None) -> ServerHandle:
            return stack.enter_context(
                running_server(model_dir, *extra, name=name, log_dir=server_logs)
            )

        yield start


@pytest.fixture(scope="module")
def wine_expected(wine_pyfunc: PyFuncModel, wine_frame: pd.DataFrame) -> np.ndarray:
    expected: np.ndarray = wine_pyfunc.predict(wine_frame)
    return expected


def pd_request(request_id: str, columns: dict[str, float]) -> pb.ModelInferRequest:
    """One row of named FP64 columns, asking for them as a DataFrame (`content_type: pd`)."""
    request = pb.ModelInferRequest(model_name=ECHO, id=request_id)
    request.parameters["content_type"].string_param = "pd"
    for name, value in columns.items():
        v2.add_input(request, name, np.array([value]), "FP64", typed=False)
    return request


def answered_columns(response: pb.ModelInferResponse) -> dict[str, float]:
    return {
        name: float(v2.output_array(response, name)[0, 0]) for name in v2.output_names(response)
    }


def assert_echo_served(url: str) -> None:
    columns = {"x": 1.25, "y\0z": -2.5}
    with grpc.insecure_channel(url) as channel:
        response = v2.model_infer(channel)(pd_request("good", columns), timeout=60)
    assert response.id == "good"
    assert answered_columns(response) == columns


@pytest.mark.parametrize("crafted_first", [True, False], ids=["crafted-first", "honest-first"])
def test_a_name_spelling_another_request_never_shares_its_batch(
    echo_server: ServerHandle, crafted_first: bool
) -> None:
    """Sent back to back within the batch delay: each answer holds its own request's values
    under its own names, whichever arrives first."""
    with grpc.insecure_channel(echo_server.url) as channel:
        infer = v2.model_infer(channel)
        for round_ in range(ROUNDS):
            crafted = {CRAFTED_NAME: 1000.0 + round_}
            honest = {"a": 2000.0 + round_, "b": 3000.0 + round_}
            sent = [("crafted", crafted), ("honest", honest)]
            if not crafted_first:
                sent.reverse()
            futures = [
                (kind, columns, infer.future(pd_request(f"{kind}-{round_}", columns), timeout=60))
                for kind, columns in sent
            ]
            for kind, columns, future in futures:
                response = future.result()
                assert response.id == f"{kind}-{round_}"
                assert answered_columns(response) == columns, f"round {round_}: {kind} misrouted"
    assert_echo_served(echo_server.url)


def test_names_with_nul_quotes_and_unicode_round_trip(echo_server: ServerHandle) -> None:
    """Names are opaque text: whatever they hold, they come back as sent."""
    columns = {"": 1.0, "\0": 2.0, '"q"': 3.0, "é🦀": 4.0, "a|b": 5.0, "[x]": 6.0}
    with grpc.insecure_channel(echo_server.url) as channel:
        response = v2.model_infer(channel)(pd_request("odd-names", columns), timeout=60)
    assert answered_columns(response) == columns
    assert_echo_served(echo_server.url)


def overflowing_wine_request(
    frame: pd.DataFrame, shape: list[int], raw: bytes
) -> pb.ModelInferRequest:
    """A good wine request with one input's shape and bytes replaced."""
    request = v2.columns_request("wine", frame.iloc[:1], "FP64", typed=False)
    index = [t.name for t in request.inputs].index("citric acid")
    del request.inputs[index].shape[:]
    request.inputs[index].shape.extend(shape)
    request.raw_input_contents[index] = raw
    return request


@pytest.mark.parametrize(
    ("shape", "raw"),
    [
        ([2**61 + 1], b"\0" * 8),  # 8 bytes per element wraps to 8 bytes
        ([2**62, 4], b"\0" * 8),  # the element count overflows
        ([2**63 - 1, 0], b""),  # no elements, rows beyond any request
        ([0, 2**40], b""),
    ],
    ids=["size-wraps", "count-overflows", "empty-huge-rows", "empty-huge-inner"],
)
def test_shapes_the_data_cannot_fill_on_a_column_model(
    batching_wine_server: ServerHandle,
    wine_frame: pd.DataFrame,
    wine_expected: np.ndarray,
    shape: list[int],
    raw: bytes,
) -> None:
    request = overflowing_wine_request(wine_frame, shape, raw)
    assert_refused(
        batching_wine_server.url, request, grpc.StatusCode.INVALID_ARGUMENT, "citric acid"
    )
    v2.assert_wine_served(batching_wine_server.url, wine_frame, wine_expected)


@pytest.mark.parametrize("content_type", ["np", "pd", None])
@pytest.mark.parametrize(
    ("datatype", "shape", "raw"),
    [
        ("FP64", [2**63 - 1, 0], b""),
        ("FP64", [2**61 + 1], b"\0" * 8),
        ("BYTES", [2**40], b"\0" * 12),
        ("BYTES", [1], b"\xff\xff\xff\xff" + b"abc"),
        ("BOOL", [2], b"\x01\x07"),
    ],
    ids=["empty-huge", "size-wraps", "bytes-count", "bytes-length", "bool-byte"],
)
def test_shapes_the_data_cannot_fill_without_a_signature(
    echo_server: ServerHandle, content_type: str | None, datatype: str, shape: list[int], raw: bytes
) -> None:
    request = pb.ModelInferRequest(model_name=ECHO)
    if content_type is not None:
        request.parameters["content_type"].string_param = content_type
    request.inputs.add(name="t\0x", datatype=datatype, shape=shape)
    request.raw_input_contents.append(raw)
    assert_refused(echo_server.url, request, grpc.StatusCode.INVALID_ARGUMENT, "t\0x")
    assert_echo_served(echo_server.url)
