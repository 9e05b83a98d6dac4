"""The gRPC front with TLS and on Unix sockets, in real server processes serving the wine
model: tritonclient.grpc with `ssl=True`, mutual TLS refusing clients without a certificate
of the configured CA, SIGHUP renewing the certificate of new connections, `unix:` targets
beside TCP, and --uds-only with no TCP port open at all.
"""

import contextlib
import dataclasses
import json
import pathlib
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator

import numpy as np
import pandas as pd
import pytest
import tritonclient.grpc as grpcclient
from arrowsmith.bench import find_binary
from support import v2
from support.certs import TlsFiles, certificate_of, client_context, write_server_pair
from support.model_builders import WINE_MODEL_NAME
from support.server import (
    UNIX_CHANNEL_ARGS,
    Listening,
    ServerHandle,
    StartServer,
    running_server,
)
from support.unix_http import UnixHTTPConnection
from tritonclient.utils import InferenceServerException

TIMEOUT_S = 60.0
#: How long a reload may take to show after SIGHUP.
RELOAD_TIMEOUT_S = 10.0


@pytest.fixture
def socket_dir() -> Iterator[pathlib.Path]:
    """A short folder: socket paths may not be longer than 107 bytes."""
    with tempfile.TemporaryDirectory(prefix="as-") as folder:
        yield pathlib.Path(folder)


def infer(client: grpcclient.InferenceServerClient, rows: pd.DataFrame) -> np.ndarray:
    answer = client.infer(WINE_MODEL_NAME, v2.column_inputs(rows, "FP64"))
    predictions: np.ndarray | None = answer.as_numpy("output-0")
    assert predictions is not None
    return predictions


def grpc_certificate_serial(port: int, tls: TlsFiles) -> int:
    """The serial of the certificate a new TLS connection to the gRPC port is shown."""
    context = client_context(tls.ca, tls.client_cert, tls.client_key)
    context.set_alpn_protocols(["h2"])
    with (
        socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT_S) as raw,
        context.wrap_socket(raw, server_hostname="localhost") as connection,
    ):
        der = connection.getpeercert(binary_form=True)
    assert der is not None
    serial: int = certificate_of(der).serial_number
    return serial


def refused(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) != 0


def test_tritonclient_grpc_infers_over_tls(
    start_server: StartServer,
    wine_model_dir: pathlib.Path,
    tls_files: TlsFiles,
    rows: pd.DataFrame,
    expected: np.ndarray,
) -> None:
    """ssl=True with the CA as root_certificates; a plaintext client gets nothing."""
    server = start_server(wine_model_dir, name=WINE_MODEL_NAME, listening=Listening(tls=tls_files))
    with server.grpc_client() as client:
        np.testing.assert_allclose(infer(client, rows), expected, rtol=1e-9)
    with (
        grpcclient.InferenceServerClient(server.url) as plaintext,
        pytest.raises(InferenceServerException),
    ):
        plaintext.is_server_ready(client_timeout=5)


def test_mutual_tls_serves_a_client_of_the_ca(
    mtls_server: ServerHandle, rows: pd.DataFrame, expected: np.ndarray
) -> None:
    with mtls_server.grpc_client() as client:
        np.testing.assert_allclose(infer(client, rows), expected, rtol=1e-9)


@pytest.mark.parametrize("client", ["no certificate", "the unrelated CA's client"])
def test_mutual_tls_refuses_other_clients(
    mtls_server: ServerHandle, tls_files: TlsFiles, client: str
) -> None:
    credentials = {}
    if client != "no certificate":
        credentials = {
            "private_key": str(tls_files.other_client_key),
            "certificate_chain": str(tls_files.other_client_cert),
        }
    with (
        grpcclient.InferenceServerClient(
            mtls_server.url, ssl=True, root_certificates=str(tls_files.ca), **credentials
        ) as other,
        pytest.raises(InferenceServerException),
    ):
        other.is_server_ready(client_timeout=5)


def test_sighup_renews_the_certificate_of_new_connections(
    start_server: StartServer,
    wine_model_dir: pathlib.Path,
    tls_files: TlsFiles,
    tmp_path: pathlib.Path,
    rows: pd.DataFrame,
    expected: np.ndarray,
) -> None:
    """A channel opened before the reload keeps serving on its connection."""
    cert, key = tmp_path / "server.pem", tmp_path / "server.key"
    shutil.copy(tls_files.server_cert, cert)
    shutil.copy(tls_files.server_key, key)
    tls = dataclasses.replace(tls_files, server_cert=cert, server_key=key)
    server = start_server(
        wine_model_dir, name=WINE_MODEL_NAME, listening=Listening(tls=tls, mutual_tls=True)
    )
    with server.grpc_client() as kept:
        np.testing.assert_allclose(infer(kept, rows), expected, rtol=1e-9)
        old_serial = grpc_certificate_serial(server.port, tls)
        renewed = write_server_pair(tls.issuer, "renewed localhost", cert, key)
        server.process.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + RELOAD_TIMEOUT_S
        serial = old_serial
        while serial != renewed.serial_number and time.monotonic() < deadline:
            time.sleep(0.1)
            serial = grpc_certificate_serial(server.port, tls)
        assert serial == renewed.serial_number, f"still the old certificate:\n{server.log_tail()}"
        np.testing.assert_allclose(infer(kept, rows), expected, rtol=1e-9)


def test_grpc_over_a_unix_socket_beside_tcp(
    wine_model_dir: pathlib.Path,
    server_logs: pathlib.Path,
    socket_dir: pathlib.Path,
    rows: pd.DataFrame,
    expected: np.ndarray,
) -> None:
    """A socket file left by a killed server is taken over; the file goes on stop."""
    path = socket_dir / "grpc.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as dead:
        dead.bind(str(path))
        dead.listen()
    with running_server(
        wine_model_dir,
        name=WINE_MODEL_NAME,
        log_dir=server_logs,
        listening=Listening(grpc_uds=path),
    ) as server:
        with grpcclient.InferenceServerClient(
            f"unix:{path}", channel_args=UNIX_CHANNEL_ARGS
        ) as over_socket:
            np.testing.assert_allclose(infer(over_socket, rows), expected, rtol=1e-9)
        with server.grpc_client() as over_tcp:
            np.testing.assert_allclose(infer(over_tcp, rows), expected, rtol=1e-9)
    assert not path.exists()


def test_tls_covers_the_unix_socket_too(
    start_server: StartServer,
    wine_model_dir: pathlib.Path,
    tls_files: TlsFiles,
    socket_dir: pathlib.Path,
    rows: pd.DataFrame,
    expected: np.ndarray,
) -> None:
    path = socket_dir / "grpc.sock"
    listening = Listening(tls=tls_files, grpc_uds=path)
    start_server(wine_model_dir, name=WINE_MODEL_NAME, listening=listening)
    with grpcclient.InferenceServerClient(
        f"unix:{path}",
        ssl=True,
        root_certificates=str(tls_files.ca),
        channel_args=UNIX_CHANNEL_ARGS,
    ) as client:
        np.testing.assert_allclose(infer(client, rows), expected, rtol=1e-9)
    with (
        grpcclient.InferenceServerClient(
            f"unix:{path}", channel_args=UNIX_CHANNEL_ARGS
        ) as plaintext,
        pytest.raises(InferenceServerException),
    ):
        plaintext.is_server_ready(client_timeout=5)


def test_uds_only_opens_no_tcp_port(
    start_server: StartServer,
    wine_model_dir: pathlib.Path,
    socket_dir: pathlib.Path,
    rows: pd.DataFrame,
    expected: np.ndarray,
) -> None:
    """gRPC on --grpc-uds, HTTP on --http-uds, nothing on --grpc-port and --http-port.
    Readiness is polled over the gRPC socket."""
    listening = Listening(
        grpc_uds=socket_dir / "grpc.sock", http_uds=socket_dir / "http.sock", uds_only=True
    )
    server = start_server(wine_model_dir, name=WINE_MODEL_NAME, listening=listening)
    assert server.url == f"unix:{socket_dir / 'grpc.sock'}"
    with server.grpc_client() as client:
        np.testing.assert_allclose(infer(client, rows), expected, rtol=1e-9)
    with contextlib.closing(server.http_connection()) as connection:
        assert isinstance(connection, UnixHTTPConnection)
        connection.request("GET", "/v2/health/ready")
        assert connection.getresponse().status == 200
    assert refused(server.port)
    assert refused(server.http_port)


@pytest.mark.parametrize("stream", [False, True], ids=["unary", "stream"])
def test_the_load_generator_over_a_unix_socket(
    start_server: StartServer,
    wine_model_dir: pathlib.Path,
    socket_dir: pathlib.Path,
    rows: pd.DataFrame,
    tmp_path: pathlib.Path,
    stream: bool,
) -> None:
    """arrowsmith-bench reaches the server on `unix:PATH` (its `:authority` is
    `localhost`), unary or over one stream, every answer OK and of the right rows."""
    path = socket_dir / "grpc.sock"
    start_server(
        wine_model_dir, name=WINE_MODEL_NAME, listening=Listening(grpc_uds=path, uds_only=True)
    )
    body, report = tmp_path / "request.pb", tmp_path / "report.json"
    request = v2.columns_request(WINE_MODEL_NAME, rows.iloc[:1], "FP64", typed=False)
    body.write_bytes(request.SerializeToString())
    command = [str(find_binary()), "--target", f"unix:{path}", "--body", str(body)]
    command += ["--requests", "200", "--concurrency", "8", "--warmup", "0"]
    command += ["--expect-rows", "1", "--json", str(report)]
    command += ["--stream", "--connections", "1"] if stream else []
    subprocess.run(command, check=True, capture_output=True, timeout=TIMEOUT_S)
    [level] = json.loads(report.read_text())["levels"]
    assert (level["ok"], level["errors"]) == (200, 0), level
