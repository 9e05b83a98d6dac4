"""`arrowsmith.client` against real servers: DataFrames, pyarrow tables and numpy arrays in,
the same predictions as tritonclient and MLflow out; AsyncClient alike; deadlines, retries
while the server is UNAVAILABLE, refusals with the server's status and message, mutual TLS,
and large frames through Arrow Flight.
"""

import asyncio
import pathlib
import tempfile
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import grpc
import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from arrowsmith.client import AsyncClient, Client, InferenceError
from mlflow.pyfunc import PyFuncModel
from support import v2
from support.batching_models import HOLD_PAYLOAD, PAYLOAD, ROW_ID
from support.certs import TlsFiles
from support.model_builders import (
    STRING_MODEL_NAME,
    TENSOR_MODEL_NAME,
    WINE_MODEL_NAME,
    save_batching_model,
)
from support.server import FAST_RECONNECT_ARGS, Listening, ServerHandle, StartServer, free_port
from tritonclient.utils import InferenceServerException

CALL_TIMEOUT_S = 60.0
ROWS = 50
ECHO = "echo"
WORDS = ["client", "ünïcode", "", "a b"]


@pytest.fixture(scope="module")
def rows(wine_frame: pd.DataFrame) -> pd.DataFrame:
    return wine_frame.iloc[:ROWS]


@pytest.fixture(scope="module")
def expected(wine_pyfunc: PyFuncModel, rows: pd.DataFrame) -> np.ndarray:
    """MLflow's own predictions for `rows`."""
    return np.asarray(wine_pyfunc.predict(rows)).reshape(-1)


def only_column(table: pa.Table) -> np.ndarray:
    (name,) = table.column_names
    return np.asarray(table.column(name).to_numpy())


def test_a_dataframe_predicts_as_tritonclient_and_mlflow(
    wine_server: ServerHandle, rows: pd.DataFrame, expected: np.ndarray
) -> None:
    """The same rows as a DataFrame, a pyarrow Table and a RecordBatch: tritonclient's
    answer (columns as [n, 1] FP64 inputs) and MLflow's, to 1e-12; as_="pandas" gives a
    DataFrame of the same column."""
    with wine_server.grpc_client() as triton:
        result = triton.infer(WINE_MODEL_NAME, v2.column_inputs(rows, "FP64"))
    with Client(wine_server.url, timeout=CALL_TIMEOUT_S) as client:
        table = client.predict(WINE_MODEL_NAME, rows)
        (name,) = table.column_names
        answer = only_column(table)
        np.testing.assert_allclose(answer, result.as_numpy(name).reshape(-1), rtol=1e-12, atol=0)
        np.testing.assert_allclose(answer, expected, rtol=1e-12, atol=0)
        arrow = pa.Table.from_pandas(rows, preserve_index=False)
        for frame in (arrow, arrow.to_batches()[0]):
            np.testing.assert_array_equal(
                only_column(client.predict(WINE_MODEL_NAME, frame)), answer
            )
        frame = client.predict(WINE_MODEL_NAME, rows, as_="pandas")
        assert isinstance(frame, pd.DataFrame)
        np.testing.assert_array_equal(frame[name].to_numpy(), answer)


def test_a_tensor_model_takes_a_numpy_array(
    tensor_server: ServerHandle, tensor_pyfunc: PyFuncModel
) -> None:
    """A uint8 [n, 8, 8] array is the model's first input, named by its metadata."""
    pixels = np.random.default_rng(3).integers(0, 256, size=(7, 8, 8), dtype=np.uint8)
    with Client(tensor_server.url, timeout=CALL_TIMEOUT_S) as client:
        table = client.predict(TENSOR_MODEL_NAME, pixels)
    np.testing.assert_array_equal(
        only_column(table), np.asarray(tensor_pyfunc.predict(pixels)).reshape(-1)
    )


def test_a_string_model_answers_text(
    string_server: ServerHandle, string_pyfunc: PyFuncModel
) -> None:
    """Text in (pandas and Arrow strings), text out: the output marked `content_type: str`
    in the model's metadata is a string column."""
    expected = list(np.asarray(string_pyfunc.predict(pd.DataFrame({"text": WORDS}))).reshape(-1))
    with Client(string_server.url, timeout=CALL_TIMEOUT_S) as client:
        for frame in (pd.DataFrame({"text": WORDS}), pa.table({"text": pa.array(WORDS)})):
            table = client.predict(STRING_MODEL_NAME, frame)
            assert table.schema.field(0).type == pa.string()
            assert table.column(0).to_pylist() == expected


def test_the_async_client_answers_the_same(
    wine_server: ServerHandle,
    string_server: ServerHandle,
    rows: pd.DataFrame,
    expected: np.ndarray,
    string_pyfunc: PyFuncModel,
) -> None:
    """Concurrent calls on one AsyncClient, a numeric and a text model."""

    async def predict() -> tuple[list[pa.Table], pa.Table]:
        async with AsyncClient(wine_server.url, timeout=CALL_TIMEOUT_S) as client:
            tables = await asyncio.gather(
                *(client.predict(WINE_MODEL_NAME, rows.iloc[i:]) for i in range(3))
            )
        async with AsyncClient(string_server.url, timeout=CALL_TIMEOUT_S) as client:
            text = await client.predict(STRING_MODEL_NAME, pd.DataFrame({"text": WORDS}))
        return tables, text

    tables, text = asyncio.run(predict())
    for start, table in enumerate(tables):
        np.testing.assert_allclose(only_column(table), expected[start:], rtol=1e-12, atol=0)
    words = np.asarray(string_pyfunc.predict(pd.DataFrame({"text": WORDS}))).reshape(-1)
    assert text.column(0).to_pylist() == list(words)


@pytest.fixture(scope="module")
def echo_model_dir(models_dir: pathlib.Path) -> pathlib.Path:
    return save_batching_model(models_dir / "echo_for_client", "EchoRowIdModel")


def test_a_deadline_ends_a_slow_call(
    start_server: StartServer, echo_model_dir: pathlib.Path
) -> None:
    """A call that cannot be answered within its timeout is DEADLINE_EXCEEDED, sync and
    async; the client's next calls are answered, and `outputs` picks the columns."""
    server = start_server(echo_model_dir, name=ECHO)
    held = pd.DataFrame({ROW_ID: np.array([1], np.int64), PAYLOAD: [HOLD_PAYLOAD]})
    with Client(server.url) as client:
        with pytest.raises(InferenceError) as raised:
            client.predict(ECHO, held, timeout=0.1)
        assert raised.value.code == grpc.StatusCode.DEADLINE_EXCEEDED
        quick = pd.DataFrame({ROW_ID: np.array([2, 3], np.int64), PAYLOAD: [0.5, 1.0]})
        table = client.predict(ECHO, quick, timeout=CALL_TIMEOUT_S, outputs=["twice"])
        assert table.to_pydict() == {"twice": [1.0, 2.0]}

    async def held_async() -> InferenceError:
        async with AsyncClient(server.url, timeout=0.1) as client:
            with pytest.raises(InferenceError) as raised:
                await client.predict(ECHO, held)
            return raised.value

    assert asyncio.run(held_async()).code == grpc.StatusCode.DEADLINE_EXCEEDED


@pytest.fixture
def socket_dir() -> Iterator[pathlib.Path]:
    """A short folder: socket paths may not be longer than 107 bytes."""
    with tempfile.TemporaryDirectory(prefix="as-") as folder:
        yield pathlib.Path(folder)


def test_retries_reach_a_server_that_starts_late(
    start_server: StartServer,
    wine_model_dir: pathlib.Path,
    socket_dir: pathlib.Path,
    rows: pd.DataFrame,
    expected: np.ndarray,
) -> None:
    """A call made before the server exists is answered once it serves, retried while the
    socket refuses connections and the model loads; without retries it is UNAVAILABLE."""
    socket = socket_dir / "grpc.sock"
    target = f"unix:{socket}"
    with Client(target, retries=0) as impatient, pytest.raises(InferenceError) as raised:
        impatient.predict(WINE_MODEL_NAME, rows)
    assert raised.value.code == grpc.StatusCode.UNAVAILABLE
    patient = Client(target, retries=20, backoff=0.05, channel_options=FAST_RECONNECT_ARGS)
    with patient, ThreadPoolExecutor(1) as pool:
        answer = pool.submit(patient.predict, WINE_MODEL_NAME, rows)
        start_server(wine_model_dir, name=WINE_MODEL_NAME, listening=Listening(grpc_uds=socket))
        table = answer.result(timeout=CALL_TIMEOUT_S)
    np.testing.assert_allclose(only_column(table), expected, rtol=1e-12, atol=0)


def test_a_refusal_carries_the_servers_status_and_message(
    wine_server: ServerHandle, rows: pd.DataFrame
) -> None:
    """A missing column: INVALID_ARGUMENT with the details tritonclient gets, naming it."""
    missing = rows.drop(columns=["alcohol"])
    with (
        wine_server.grpc_client() as triton,
        pytest.raises(InferenceServerException) as triton_raised,
    ):
        triton.infer(WINE_MODEL_NAME, v2.column_inputs(missing, "FP64"))
    with Client(wine_server.url, timeout=CALL_TIMEOUT_S) as client:
        with pytest.raises(InferenceError) as raised:
            client.predict(WINE_MODEL_NAME, missing)
        with pytest.raises(InferenceError) as unknown:
            client.predict("nosuch", rows)
    assert raised.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert "alcohol" in raised.value.message
    assert raised.value.message == triton_raised.value.message()
    assert unknown.value.code == grpc.StatusCode.NOT_FOUND


def test_mutual_tls(
    mtls_server: ServerHandle, tls_files: TlsFiles, rows: pd.DataFrame, expected: np.ndarray
) -> None:
    """The test CA and a client certificate it signed reach a mutual-TLS server; without
    the certificate the handshake fails and the call is UNAVAILABLE."""
    with Client(
        mtls_server.url,
        tls_ca=tls_files.ca,
        tls_client_cert=tls_files.client_cert,
        tls_client_key=tls_files.client_key,
        timeout=CALL_TIMEOUT_S,
    ) as client:
        table = client.predict(WINE_MODEL_NAME, rows)
    np.testing.assert_allclose(only_column(table), expected, rtol=1e-12, atol=0)
    with (
        Client(mtls_server.url, tls_ca=tls_files.ca, retries=0) as anonymous,
        pytest.raises(InferenceError) as raised,
    ):
        anonymous.predict(WINE_MODEL_NAME, rows, timeout=CALL_TIMEOUT_S)
    assert raised.value.code == grpc.StatusCode.UNAVAILABLE


def test_frames_over_the_threshold_go_through_flight(
    start_server: StartServer,
    wine_model_dir: pathlib.Path,
    wine_frame: pd.DataFrame,
    wine_pyfunc: PyFuncModel,
) -> None:
    """With the threshold at 1,000 rows, the whole wine frame goes through DoExchange (a
    client whose Flight port answers nothing fails on it, not on a small frame) with
    MLflow's answers, sync and async; Flight's refusals carry ModelInfer's status and
    message."""
    port = free_port()
    server = start_server(wine_model_dir, "--flight-port", str(port), name=WINE_MODEL_NAME)
    expected = np.asarray(wine_pyfunc.predict(wine_frame)).reshape(-1)
    small = wine_frame.iloc[:ROWS]
    options = {"flight_threshold": 1000, "flight_target": f"grpc://127.0.0.1:{port}"}
    with Client(server.url, timeout=CALL_TIMEOUT_S, **options) as client:
        np.testing.assert_allclose(
            only_column(client.predict(WINE_MODEL_NAME, wine_frame)), expected, rtol=1e-12, atol=0
        )
        with pytest.raises(InferenceError) as by_flight:
            client.predict(WINE_MODEL_NAME, wine_frame.drop(columns=["alcohol"]))
        with pytest.raises(InferenceError) as by_infer:
            client.predict(WINE_MODEL_NAME, small.drop(columns=["alcohol"]))
    assert by_flight.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert by_flight.value.message == by_infer.value.message

    nowhere = {"flight_threshold": 1000, "flight_target": f"grpc://127.0.0.1:{free_port()}"}
    with Client(server.url, timeout=CALL_TIMEOUT_S, retries=0, **nowhere) as client:
        np.testing.assert_allclose(
            only_column(client.predict(WINE_MODEL_NAME, small)), expected[:ROWS], rtol=1e-12
        )
        with pytest.raises(InferenceError) as raised:
            client.predict(WINE_MODEL_NAME, wine_frame)
        assert raised.value.code == grpc.StatusCode.UNAVAILABLE

    async def by_async_flight() -> pa.Table:
        async with AsyncClient(server.url, timeout=CALL_TIMEOUT_S, **options) as client:
            return await client.predict(WINE_MODEL_NAME, pa.Table.from_pandas(wine_frame))

    table = asyncio.run(by_async_flight())
    np.testing.assert_allclose(only_column(table), expected, rtol=1e-12, atol=0)
