"""The HTTP front with TLS and on a Unix socket, in real server processes serving the wine
model: HTTPS for tritonclient.http, requests and curl, with the same predictions as plain
HTTP; mutual TLS refusing clients without a certificate of the configured CA; SIGHUP
giving new connections a renewed certificate while open ones carry on; V2 REST and
/invocations over --http-uds, a stale socket file replaced and the file removed on stop.

These servers' readiness is polled over HTTP: this file tests the HTTP front alone.
"""

import contextlib
import dataclasses
import http.client
import json
import pathlib
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import time
from collections.abc import Iterator

import numpy as np
import pandas as pd
import pytest
import requests
import tritonclient.http as httpclient
from support.certs import TlsFiles, certificate_of, client_context, write_server_pair
from support.model_builders import WINE_MODEL_NAME
from support.server import Listening, ServerHandle, StartServer, running_server
from support.unix_http import UnixHTTPConnection

TIMEOUT_S = 60
#: How long a reload may take to show after SIGHUP.
RELOAD_TIMEOUT_S = 10.0
#: TLS 1.3 clients learn that their certificate was refused only when they next read.
REFUSED = (ssl.SSLError, ConnectionError)


@pytest.fixture(scope="module")
def tls_server(
    wine_model_dir: pathlib.Path, server_logs: pathlib.Path, tls_files: TlsFiles
) -> Iterator[ServerHandle]:
    listening = Listening(tls=tls_files, ready_over="http")
    with running_server(
        wine_model_dir, name=WINE_MODEL_NAME, log_dir=server_logs, listening=listening
    ) as server:
        yield server


@pytest.fixture
def socket_dir() -> Iterator[pathlib.Path]:
    """A short folder: socket paths may not be longer than 107 bytes."""
    with tempfile.TemporaryDirectory(prefix="as-") as folder:
        yield pathlib.Path(folder)


def split_body(rows: pd.DataFrame) -> bytes:
    """An /invocations body in MLflow's `dataframe_split` form."""
    return json.dumps(
        {"dataframe_split": {"columns": list(rows.columns), "data": rows.to_numpy().tolist()}}
    ).encode()


def invocations(connection: http.client.HTTPConnection, rows: pd.DataFrame) -> list[float]:
    connection.request(
        "POST", "/invocations", split_body(rows), {"Content-Type": "application/json"}
    )
    response = connection.getresponse()
    body = response.read()
    assert response.status == 200, body
    predictions: list[float] = json.loads(body)["predictions"]
    return predictions


def served_certificate_serial(connection: http.client.HTTPConnection) -> int:
    """GET /v2/health/live (connecting if needed); the serial of the server's certificate."""
    connection.request("GET", "/v2/health/live")
    response = connection.getresponse()
    assert (response.status, response.read()) == (200, b'{"live":true}')
    assert isinstance(connection.sock, ssl.SSLSocket)
    der = connection.sock.getpeercert(binary_form=True)
    assert der is not None
    serial: int = certificate_of(der).serial_number
    return serial


def test_tritonclient_http_infers_over_https(
    tls_server: ServerHandle, tls_files: TlsFiles, rows: pd.DataFrame, expected: np.ndarray
) -> None:
    inputs = []
    for column in rows.columns:
        tensor = httpclient.InferInput(column, [len(rows), 1], "FP64")
        tensor.set_data_from_numpy(rows[[column]].to_numpy())
        inputs.append(tensor)
    url = f"127.0.0.1:{tls_server.http_port}"
    options = {"ca_certs": str(tls_files.ca)}
    with httpclient.InferenceServerClient(url, ssl=True, ssl_options=options) as client:
        assert client.is_server_ready()
        answer = client.infer(WINE_MODEL_NAME, inputs).as_numpy("output-0")
    np.testing.assert_allclose(answer, expected, rtol=1e-9)


def test_invocations_over_https_answer_as_plain_http_does(
    tls_server: ServerHandle, wine_server: ServerHandle, tls_files: TlsFiles, rows: pd.DataFrame
) -> None:
    headers = {"Content-Type": "application/json"}
    body = split_body(rows)
    secure = requests.post(
        f"{tls_server.http_url}/invocations",
        data=body,
        headers=headers,
        verify=str(tls_files.ca),
        timeout=TIMEOUT_S,
    )
    plain = requests.post(
        f"{wine_server.http_url}/invocations", data=body, headers=headers, timeout=TIMEOUT_S
    )
    assert tls_server.http_url.startswith("https://")
    assert (secure.status_code, secure.content) == (200, plain.content)


def test_plain_http_to_the_https_port_gets_no_answer(tls_server: ServerHandle) -> None:
    with pytest.raises(requests.ConnectionError):
        requests.get(f"http://127.0.0.1:{tls_server.http_port}/v2/health/ready", timeout=TIMEOUT_S)


def test_mutual_tls_serves_a_client_of_the_ca(
    mtls_server: ServerHandle, tls_files: TlsFiles, rows: pd.DataFrame, expected: np.ndarray
) -> None:
    """curl as the README shows it, then http.client with an SSLContext."""
    curl = subprocess.run(
        [
            "curl",
            "--silent",
            "--show-error",
            "--fail",
            "--cacert",
            str(tls_files.ca),
            "--cert",
            str(tls_files.client_cert),
            "--key",
            str(tls_files.client_key),
            "-H",
            "Content-Type: application/json",
            "--data-binary",
            "@-",
            f"{mtls_server.http_url}/invocations",
        ],
        input=split_body(rows),
        capture_output=True,
        timeout=TIMEOUT_S,
        check=False,
    )
    assert curl.returncode == 0, curl.stderr
    np.testing.assert_allclose(json.loads(curl.stdout)["predictions"], expected, rtol=1e-9)
    with contextlib.closing(mtls_server.http_connection()) as connection:
        np.testing.assert_allclose(invocations(connection, rows), expected, rtol=1e-9)


@pytest.mark.parametrize("client", ["no certificate", "the unrelated CA's client"])
def test_mutual_tls_refuses_other_clients(
    mtls_server: ServerHandle, tls_files: TlsFiles, rows: pd.DataFrame, client: str
) -> None:
    if client == "no certificate":
        context = client_context(tls_files.ca)
    else:
        context = client_context(
            tls_files.ca, tls_files.other_client_cert, tls_files.other_client_key
        )
    connection = http.client.HTTPSConnection(
        "127.0.0.1", mtls_server.http_port, timeout=TIMEOUT_S, context=context
    )
    with contextlib.closing(connection), pytest.raises(REFUSED):
        invocations(connection, rows)


def test_sighup_renews_the_certificate_of_new_connections(
    start_server: StartServer,
    wine_model_dir: pathlib.Path,
    tls_files: TlsFiles,
    tmp_path: pathlib.Path,
) -> None:
    """The files are replaced by a renewed certificate and key, then SIGHUP: a connection
    opened after it sees the renewed certificate, one kept open from before serves on."""
    cert, key = tmp_path / "server.pem", tmp_path / "server.key"
    shutil.copy(tls_files.server_cert, cert)
    shutil.copy(tls_files.server_key, key)
    tls = dataclasses.replace(tls_files, server_cert=cert, server_key=key)
    server = start_server(
        wine_model_dir, name=WINE_MODEL_NAME, listening=Listening(tls=tls, ready_over="http")
    )
    with contextlib.closing(server.http_connection()) as kept:
        old_serial = served_certificate_serial(kept)
        renewed = write_server_pair(tls.issuer, "renewed localhost", cert, key)
        server.process.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + RELOAD_TIMEOUT_S
        serial = old_serial
        while serial != renewed.serial_number and time.monotonic() < deadline:
            time.sleep(0.1)
            with contextlib.closing(server.http_connection()) as fresh:
                serial = served_certificate_serial(fresh)
        assert serial == renewed.serial_number, f"still the old certificate:\n{server.log_tail()}"
        assert served_certificate_serial(kept) == old_serial


def test_http_over_a_unix_socket(
    wine_model_dir: pathlib.Path,
    server_logs: pathlib.Path,
    socket_dir: pathlib.Path,
    expected: np.ndarray,
    rows: pd.DataFrame,
) -> None:
    """A socket file left by a killed server is taken over; V2 REST and /invocations
    answer on the socket (curl --unix-socket, http.client); the file goes on stop."""
    path = socket_dir / "http.sock"
    with running_server(
        wine_model_dir,
        name=WINE_MODEL_NAME,
        log_dir=server_logs,
        listening=Listening(http_uds=_stale_socket(path)),
    ):
        curl = subprocess.run(
            ["curl", "--silent", "--unix-socket", str(path), "http://localhost/v2/health/ready"],
            capture_output=True,
            timeout=TIMEOUT_S,
            check=True,
        )
        assert json.loads(curl.stdout) == {"ready": True}
        with contextlib.closing(UnixHTTPConnection(path, TIMEOUT_S)) as connection:
            np.testing.assert_allclose(invocations(connection, rows), expected, rtol=1e-9)
    assert not path.exists()


def _stale_socket(path: pathlib.Path) -> pathlib.Path:
    """A socket file nothing listens on, as a server killed with SIGKILL leaves it."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as dead:
        dead.bind(str(path))
        dead.listen()
    assert path.is_socket()
    return path
