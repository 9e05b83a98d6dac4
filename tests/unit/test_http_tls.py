"""The HTTP front with TLS and a Unix socket, in a process of its own: `reload_tls` gives
new connections the certificate (and client CAs) the files hold now while open connections
carry on, a reload that fails names the file and keeps what was in use, and `stop` removes
the socket file. Its SIGHUP trigger is the server process's and is tested end to end."""

import contextlib
import http.client
import pathlib
import socket
import ssl
import subprocess
import sys
import tempfile
from collections.abc import Iterator

import pytest
from cryptography import x509
from support.certs import (
    TlsFiles,
    certificate_of,
    client_context,
    make_tls_files,
    write_server_pair,
)
from support.server import free_port
from support.unix_http import UnixHTTPConnection

TIMEOUT_S = 10.0
#: Run by path: importing it here would load arrowsmith's protobuf messages beside
#: tritonclient's.
FRONT_SCRIPT = pathlib.Path(__file__).parents[1] / "support" / "http_front_process.py"
#: TLS 1.3 clients learn that their certificate was refused only when they next read.
REFUSED = (ssl.SSLError, ConnectionError)


class FrontProcess:
    """An HTTP front in its own process (support/http_front_process.py), told what to do."""

    def __init__(self, process: subprocess.Popen[str]) -> None:
        self.process = process
        self.port = int(self._answer().removeprefix("serving "))

    def _answer(self) -> str:
        assert self.process.stdout is not None
        line = self.process.stdout.readline().strip()
        assert line, f"the front process ended (exit {self.process.wait()})"
        return line

    def _tell(self, command: str) -> str:
        assert self.process.stdin is not None
        self.process.stdin.write(command + "\n")
        self.process.stdin.flush()
        return self._answer()

    def reload_tls(self) -> str:
        """`reloaded`, or `failed PATH: MESSAGE`."""
        return self._tell("reload")

    def stop(self) -> None:
        assert self._tell("stop") == "stopped"
        assert self.process.wait(TIMEOUT_S) == 0


@contextlib.contextmanager
def running_front(
    tls: TlsFiles, mutual: bool, http_uds: pathlib.Path | None = None
) -> Iterator[FrontProcess]:
    args = ["--tls-cert", str(tls.server_cert), "--tls-key", str(tls.server_key)]
    args += ["--tls-client-ca", str(tls.ca)] if mutual else []
    args += [] if http_uds is None else ["--http-uds", str(http_uds)]
    command = [sys.executable, str(FRONT_SCRIPT), "--port", str(free_port()), *args]
    with subprocess.Popen(
        command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    ) as process:
        try:
            yield FrontProcess(process)
        finally:
            if process.poll() is None:
                process.kill()


@pytest.fixture
def tls(tmp_path: pathlib.Path) -> TlsFiles:
    """Certificates of this test only: the test rewrites them."""
    return make_tls_files(tmp_path)


@pytest.fixture
def socket_path() -> Iterator[pathlib.Path]:
    """In a short folder: socket paths may not be longer than 107 bytes."""
    with tempfile.TemporaryDirectory(prefix="as-") as folder:
        yield pathlib.Path(folder) / "http.sock"


def connect(front: FrontProcess, context: ssl.SSLContext) -> http.client.HTTPSConnection:
    return http.client.HTTPSConnection("127.0.0.1", front.port, timeout=TIMEOUT_S, context=context)


def live(connection: http.client.HTTPConnection) -> x509.Certificate:
    """GET /v2/health/live on the connection (opening it if needed): the server's
    certificate on it."""
    connection.request("GET", "/v2/health/live")
    response = connection.getresponse()
    assert (response.status, response.read()) == (200, b'{"live":true}')
    assert isinstance(connection.sock, ssl.SSLSocket)
    der = connection.sock.getpeercert(binary_form=True)
    assert der is not None
    return certificate_of(der)


def test_reload_serves_the_new_certificate_to_new_connections_only(tls: TlsFiles) -> None:
    context = client_context(tls.ca)
    with running_front(tls, mutual=False) as front:
        before = connect(front, context)
        old = live(before)
        open_socket = before.sock
        renewed = write_server_pair(tls.issuer, "renewed", tls.server_cert, tls.server_key)
        assert front.reload_tls() == "reloaded"
        after = connect(front, context)
        assert live(after).serial_number == renewed.serial_number != old.serial_number
        # The keep-alive connection opened before the reload is the same one and serves on.
        assert live(before).serial_number == old.serial_number
        assert before.sock is open_socket
        before.close()
        after.close()
        front.stop()


def test_failed_reload_names_the_file_and_keeps_the_certificate(tls: TlsFiles) -> None:
    context = client_context(tls.ca)
    with running_front(tls, mutual=False) as front:
        first = connect(front, context)
        in_use = live(first).serial_number
        first.close()
        # A renewed certificate whose key did not arrive: the old key does not match it.
        key = tls.server_key.read_bytes()
        write_server_pair(tls.issuer, "renewed", tls.server_cert, tls.server_key)
        tls.server_key.write_bytes(key)
        assert front.reload_tls() == (
            f"failed {tls.server_key}: --tls-key {tls.server_key}: is not the key of the "
            f"certificate in {tls.server_cert}"
        )
        tls.server_key.unlink()
        assert front.reload_tls() == (
            f"failed {tls.server_key}: --tls-key {tls.server_key}: cannot be read: "
            "No such file or directory"
        )
        again = connect(front, context)
        assert live(again).serial_number == in_use
        again.close()
        front.stop()


def test_reload_retires_a_client_ca_removed_from_the_bundle(tls: TlsFiles) -> None:
    """Mutual TLS: once the bundle holds the other CA instead, clients of the first CA are
    refused and the other CA's clients are served."""
    first_ca_client = client_context(tls.ca, tls.client_cert, tls.client_key)
    other_ca_client = client_context(tls.ca, tls.other_client_cert, tls.other_client_key)
    with running_front(tls, mutual=True) as front:
        served = connect(front, first_ca_client)
        live(served)
        served.close()
        with pytest.raises(REFUSED):
            live(connect(front, other_ca_client))
        tls.ca.write_bytes(tls.other_ca.read_bytes())
        assert front.reload_tls() == "reloaded"
        with pytest.raises(REFUSED):
            live(connect(front, first_ca_client))
        now_served = connect(front, other_ca_client)
        live(now_served)
        now_served.close()
        front.stop()


def test_unix_socket_serves_tls_and_goes_when_the_front_stops(
    tls: TlsFiles, socket_path: pathlib.Path
) -> None:
    """TLS covers every listener of the front, its Unix socket too."""
    served = x509.load_pem_x509_certificate(tls.server_cert.read_bytes())
    with running_front(tls, mutual=False, http_uds=socket_path) as front:
        assert socket_path.is_socket()
        connection = UnixHTTPConnection(socket_path, TIMEOUT_S, client_context(tls.ca))
        assert live(connection).serial_number == served.serial_number
        connection.close()
        front.stop()
    assert not socket_path.exists()
    with socket.socket(socket.AF_UNIX) as client, pytest.raises(FileNotFoundError):
        client.connect(str(socket_path))
