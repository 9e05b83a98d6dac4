"""Arrow Flight on --flight-port, through `pyarrow.flight` unchanged: DoExchange scores
record batches of feature columns with MLflow's answers, refuses what MLflow refuses with
the status and message ModelInfer gives, and GetSchema / GetFlightInfo describe the model.
"""

import json
import pathlib
import time
from collections.abc import Iterator

import grpc
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.flight as flight
import pytest
import yaml
from mlflow.pyfunc import PyFuncModel
from support import v2
from support.certs import TlsFiles
from support.model_builders import STRING_MODEL_NAME, TENSOR_MODEL_NAME, WINE_MODEL_NAME
from support.server import ServerHandle, StartServer, free_port
from tritonclient.grpc import service_pb2 as pb
from tritonclient.utils import np_to_triton_dtype

CALL_TIMEOUT_S = 60.0
#: Rows per record batch the client sends: several batches per exchange.
CHUNK_ROWS = 400

#: The exception pyarrow.flight raises for each gRPC status the server answers with.
FLIGHT_ERRORS: dict[grpc.StatusCode, type[Exception]] = {
    grpc.StatusCode.INVALID_ARGUMENT: pa.ArrowInvalid,
    grpc.StatusCode.NOT_FOUND: KeyError,
    grpc.StatusCode.UNIMPLEMENTED: NotImplementedError,
    grpc.StatusCode.INTERNAL: flight.FlightInternalError,
    grpc.StatusCode.UNAVAILABLE: flight.FlightUnavailableError,
}


class FlightServer:
    """A server with its Flight port, and a pyarrow.flight client of it."""

    def __init__(self, server: ServerHandle, client: flight.FlightClient) -> None:
        self.server = server
        self.client = client

    @classmethod
    def on(cls, server: ServerHandle, port: int) -> "FlightServer":
        """The server's Flight port `port`, in the clear."""
        return cls(server, flight.connect(f"grpc://127.0.0.1:{port}"))

    def exchange(self, table: pa.Table, *path: str, chunk: int = CHUNK_ROWS) -> pa.Table:
        """Streams `table` in batches of `chunk` rows to the model at `path`; its answers."""
        options = flight.FlightCallOptions(timeout=CALL_TIMEOUT_S)
        descriptor = flight.FlightDescriptor.for_path(*path)
        writer, reader = self.client.do_exchange(descriptor, options)
        with writer:
            writer.begin(table.schema)
            for batch in table.to_batches(max_chunksize=chunk):
                writer.write_batch(batch)
            writer.done_writing()
            return reader.read_all()


def start_flight(start_server: StartServer, model_dir: pathlib.Path, name: str) -> FlightServer:
    port = free_port()
    server = start_server(model_dir, "--flight-port", str(port), name=name)
    return FlightServer.on(server, port)


@pytest.fixture
def wine_flight(start_server: StartServer, wine_model_dir: pathlib.Path) -> Iterator[FlightServer]:
    flight_server = start_flight(start_server, wine_model_dir, WINE_MODEL_NAME)
    yield flight_server
    flight_server.client.close()


def wine_table(wine_csv: pathlib.Path) -> pa.Table:
    """The wine CSV's feature columns as pyarrow reads them (quality, the label, dropped)."""
    table = pa_csv.read_csv(wine_csv, parse_options=pa_csv.ParseOptions(delimiter=";"))
    return table.drop_columns(["quality"])


def modelinfer_refusal(server: ServerHandle, frame: pd.DataFrame, model: str) -> grpc.RpcError:
    """How ModelInfer refuses `frame` sent as one 1-D tensor per column, raw."""
    request = pb.ModelInferRequest(model_name=model)
    for column in frame.columns:
        values = frame[column].to_numpy()
        datatype = "BYTES" if values.dtype == object else np_to_triton_dtype(values.dtype)
        v2.add_input(request, str(column), values, datatype, typed=False)
        if datatype == "BYTES":
            # Text, as MLServer's codecs mark a column of str.
            request.inputs[-1].parameters["content_type"].string_param = "str"
    with grpc.insecure_channel(server.url) as channel, pytest.raises(grpc.RpcError) as raised:
        v2.model_infer(channel)(request, timeout=CALL_TIMEOUT_S)
    return raised.value


def test_the_wine_csv_scores_with_mlflows_answers(
    wine_flight: FlightServer, wine_csv: pathlib.Path, wine_pyfunc: PyFuncModel
) -> None:
    """All 1,599 rows in batches of 400 come back in order, row for row, as MLflow answers
    the same frame."""
    table = wine_table(wine_csv)
    answers = wine_flight.exchange(table, WINE_MODEL_NAME)
    assert answers.num_rows == table.num_rows
    expected = np.asarray(wine_pyfunc.predict(table.to_pandas()))
    (column,) = answers.column_names
    np.testing.assert_allclose(answers.column(column).to_numpy(), expected, rtol=1e-12, atol=0)


def test_a_version_in_the_path_and_an_empty_exchange(
    start_server: StartServer,
    wine_model_dir: pathlib.Path,
    wine_csv: pathlib.Path,
    tmp_path: pathlib.Path,
) -> None:
    """`[name, version]` reaches that version, `[name]` the default one; an exchange of no
    batches answers none, with the predictions' schema."""
    config = tmp_path / "models.yaml"
    entries = [
        {"uri": str(wine_model_dir), "name": WINE_MODEL_NAME, "version": version}
        for version in ("1", "2")
    ]
    config.write_text(yaml.safe_dump({"models": entries}))
    port = free_port()
    served = FlightServer.on(
        start_server(None, "--config", str(config), "--flight-port", str(port)), port
    )
    table = wine_table(wine_csv).slice(0, 10)
    versioned = served.exchange(table, WINE_MODEL_NAME, "2")
    plain = served.exchange(table, WINE_MODEL_NAME)
    assert versioned.equals(plain)
    info = served.client.get_flight_info(flight.FlightDescriptor.for_path(WINE_MODEL_NAME, "2"))
    assert json.loads(info.app_metadata) == {"name": WINE_MODEL_NAME, "version": "2"}
    with pytest.raises(KeyError, match="'3'"):
        served.exchange(table, WINE_MODEL_NAME, "3")
    empty = served.exchange(table.slice(0, 0), WINE_MODEL_NAME)
    assert empty.num_rows == 0
    assert empty.schema.equals(plain.schema)
    served.client.close()


@pytest.mark.parametrize(
    "change",
    ["int64 column", "string column", "missing column", "extra column"],
)
def test_column_types_are_enforced_as_mlflow_does(
    wine_flight: FlightServer,
    wine_csv: pathlib.Path,
    wine_pyfunc: PyFuncModel,
    change: str,
) -> None:
    """A column of another type, a missing or an extra one: MLflow's verdict on the frame
    (the same predictions, or a refusal), and a refusal carries ModelInfer's status and
    message."""
    table = wine_table(wine_csv).slice(0, 50)
    if change == "int64 column":
        table = table.set_column(
            0, "fixed acidity", pa.compute.cast(table[0], pa.int64(), safe=False)
        )
    elif change == "string column":
        table = table.set_column(1, "volatile acidity", pa.compute.cast(table[1], pa.string()))
    elif change == "missing column":
        table = table.drop_columns(["alcohol"])
    else:
        table = table.append_column("colour", pa.array(["red"] * table.num_rows))
    # A text column reaches the model as V2's BYTES do: an object column.
    frame = table.to_pandas()
    for field in table.schema:
        if pa.types.is_string(field.type):
            frame[field.name] = frame[field.name].astype(object)
    try:
        expected = np.asarray(wine_pyfunc.predict(frame))
    except Exception:
        expected = None
    if expected is not None:
        answers = wine_flight.exchange(table, WINE_MODEL_NAME)
        np.testing.assert_allclose(answers.column(0).to_numpy(), expected, rtol=1e-12, atol=0)
        return
    refusal = modelinfer_refusal(wine_flight.server, frame, WINE_MODEL_NAME)
    with pytest.raises(FLIGHT_ERRORS[refusal.code()]) as raised:
        wine_flight.exchange(table, WINE_MODEL_NAME)
    assert refusal.details() in str(raised.value), (refusal.details(), str(raised.value))


def test_a_bad_batch_ends_the_exchange_after_the_good_ones(
    wine_flight: FlightServer, wine_csv: pathlib.Path, wine_pyfunc: PyFuncModel
) -> None:
    """With `alcohol` as bytes (which MLflow parses as numbers), a batch whose bytes are no
    number ends the stream with its refusal after the good batch's answer; the server keeps
    serving."""
    table = wine_table(wine_csv).slice(0, 20)
    alcohol = table.schema.get_field_index("alcohol")
    as_bytes = pa.array([str(v).encode() for v in table["alcohol"].to_pylist()], pa.binary())
    good = table.set_column(alcohol, "alcohol", as_bytes).to_batches()[0]
    bad = good.set_column(alcohol, "alcohol", pa.array([b"x"] * good.num_rows, pa.binary()))
    descriptor = flight.FlightDescriptor.for_path(WINE_MODEL_NAME)
    writer, reader = wine_flight.client.do_exchange(
        descriptor, flight.FlightCallOptions(timeout=CALL_TIMEOUT_S)
    )
    received = []
    with pytest.raises(pa.ArrowInvalid, match="alcohol"), writer:
        writer.begin(good.schema)
        writer.write_batch(good)
        received.append(reader.read_chunk().data)
        writer.write_batch(bad)
        writer.done_writing()
        while True:
            received.append(reader.read_chunk().data)
    assert len(received) == 1
    expected = np.asarray(wine_pyfunc.predict(table.to_pandas()))
    np.testing.assert_allclose(received[0].column(0).to_numpy(), expected, rtol=1e-12)
    again = wine_flight.exchange(table, WINE_MODEL_NAME)
    np.testing.assert_allclose(again.column(0).to_numpy(), expected, rtol=1e-12)


@pytest.mark.parametrize(
    ("path", "error", "words"),
    [
        (("nosuch",), KeyError, "nosuch"),
        ((WINE_MODEL_NAME, "7"), KeyError, "7"),
        (("a", "b", "c"), pa.ArrowInvalid, "path descriptor"),
    ],
)
def test_unknown_models_and_bad_descriptors_are_refused(
    wine_flight: FlightServer,
    wine_csv: pathlib.Path,
    path: tuple[str, ...],
    error: type[Exception],
    words: str,
) -> None:
    table = wine_table(wine_csv).slice(0, 3)
    with pytest.raises(error, match=words):
        wine_flight.exchange(table, *path)
    with pytest.raises(error, match=words):
        wine_flight.client.get_schema(flight.FlightDescriptor.for_path(*path))
    command = flight.FlightDescriptor.for_command(WINE_MODEL_NAME)
    with pytest.raises(pa.ArrowInvalid, match="command"):
        wine_flight.client.get_flight_info(command)


def test_schema_and_flight_info_describe_the_model(
    wine_flight: FlightServer, wine_csv: pathlib.Path
) -> None:
    """GetSchema: the signature's columns; GetFlightInfo: the predictions' columns (what
    DoExchange answers with) and the model's name and version."""
    descriptor = flight.FlightDescriptor.for_path(WINE_MODEL_NAME)
    inputs = wine_flight.client.get_schema(descriptor).schema
    table = wine_table(wine_csv)
    assert inputs.names == table.column_names
    assert all(field.type == pa.float64() for field in inputs)
    info = wine_flight.client.get_flight_info(descriptor)
    answers = wine_flight.exchange(table.slice(0, 5), WINE_MODEL_NAME)
    assert info.schema.equals(answers.schema)
    assert info.descriptor.path == [WINE_MODEL_NAME.encode()]
    # A model served from a folder has no version.
    assert json.loads(info.app_metadata) == {"name": WINE_MODEL_NAME, "version": ""}
    assert info.total_records == -1


def test_a_tensor_model_takes_lists_of_lists(
    start_server: StartServer, tensor_model_dir: pathlib.Path, tensor_pyfunc: PyFuncModel
) -> None:
    """The pixel-sum model's [-1, 8, 8] uint8 input as a column of 8 lists of 8 values per
    row; a flat list of 64 has the wrong shape, refused as MLflow refuses it."""
    served = start_flight(start_server, tensor_model_dir, TENSOR_MODEL_NAME)
    rng = np.random.default_rng(7)
    pixels = rng.integers(0, 256, size=(30, 8, 8), dtype=np.uint8)
    flat = pa.array(pixels.reshape(-1))
    rows = pa.FixedSizeListArray.from_arrays(pa.FixedSizeListArray.from_arrays(flat, 8), 8)
    name = served.client.get_schema(flight.FlightDescriptor.for_path(TENSOR_MODEL_NAME)).schema
    column = name.names[0]
    answers = served.exchange(pa.table({column: rows}), TENSOR_MODEL_NAME, chunk=7)
    expected = np.asarray(tensor_pyfunc.predict(pixels))
    np.testing.assert_array_equal(answers.column(0).to_numpy(), expected.reshape(-1))
    flat_rows = pa.FixedSizeListArray.from_arrays(flat, 64)
    with pytest.raises(pa.ArrowInvalid, match="shape"):
        served.exchange(pa.table({column: flat_rows}), TENSOR_MODEL_NAME)
    served.client.close()


def test_a_string_model_answers_text(
    start_server: StartServer, string_model_dir: pathlib.Path, string_pyfunc: PyFuncModel
) -> None:
    """A `text: string` column in, the `upper: string` column out as Arrow strings."""
    served = start_flight(start_server, string_model_dir, STRING_MODEL_NAME)
    words = ["flight", "ünïcode", "", "a b"]
    answers = served.exchange(pa.table({"text": words}), STRING_MODEL_NAME)
    expected = string_pyfunc.predict(pd.DataFrame({"text": words}))
    assert answers.schema.field(0).type == pa.string()
    assert answers.column(0).to_pylist() == list(np.asarray(expected).reshape(-1))
    served.client.close()


def test_flight_over_mutual_tls_on_the_grpc_port(
    mtls_server: ServerHandle, tls_files: TlsFiles, wine_csv: pathlib.Path, wine_pyfunc: PyFuncModel
) -> None:
    """Flight is served on the gRPC port too, under its TLS: with the test CA and a client
    certificate pyarrow.flight scores; without the certificate the handshake fails."""
    table = wine_table(wine_csv).slice(0, 30)
    location = f"grpc+tls://localhost:{mtls_server.port}"
    client = flight.connect(
        location,
        tls_root_certs=tls_files.ca.read_bytes(),
        cert_chain=tls_files.client_cert.read_bytes(),
        private_key=tls_files.client_key.read_bytes(),
    )
    served = FlightServer(mtls_server, client)
    answers = served.exchange(table, WINE_MODEL_NAME)
    expected = np.asarray(wine_pyfunc.predict(table.to_pandas()))
    np.testing.assert_allclose(answers.column(0).to_numpy(), expected, rtol=1e-12)
    client.close()
    anonymous = flight.connect(location, tls_root_certs=tls_files.ca.read_bytes())
    with pytest.raises((flight.FlightUnavailableError, OSError)):
        anonymous.get_schema(
            flight.FlightDescriptor.for_path(WINE_MODEL_NAME), flight.FlightCallOptions(timeout=10)
        )
    anonymous.close()


def test_each_batch_is_an_access_log_line(
    start_server: StartServer, wine_model_dir: pathlib.Path, wine_csv: pathlib.Path
) -> None:
    """With --access-log json, every record batch of an exchange is one line: protocol
    `flight`, call `DoExchange`, the model and its rows."""
    port = free_port()
    server = start_server(
        wine_model_dir, "--flight-port", str(port), "--access-log", "json", name=WINE_MODEL_NAME
    )
    served = FlightServer.on(server, port)
    served.exchange(wine_table(wine_csv).slice(0, 50), WINE_MODEL_NAME, chunk=20)
    served.client.close()

    def flight_lines() -> list[dict[str, object]]:
        lines = [json.loads(line) for line in server.log_text().splitlines() if line[:1] == "{"]
        return [line for line in lines if line.get("protocol") == "flight"]

    deadline = time.monotonic() + 10
    while len(flight_lines()) < 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    lines = flight_lines()
    assert [line["rows"] for line in lines] == [20, 20, 10], lines
    assert all(line["call"] == "DoExchange" and line["status"] == "OK" for line in lines)
    assert all(line["model"] == WINE_MODEL_NAME for line in lines)
