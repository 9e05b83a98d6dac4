"""`arrowsmith health`, what a container's HEALTHCHECK and the sidecar's exec probe run: exit 0
when the server's gRPC health says SERVING, 1 for any other status, for a service name the
server does not know and when nothing answers. Checked against a running Arrowsmith server,
and over a Unix socket against grpcio's own health service (whose status the test sets)."""

import os
import pathlib
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest
from arrowsmith.health_check import decode_status, encode_request
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from support.certs import TlsFiles
from support.model_builders import WINE_MODEL_NAME
from support.server import ServerHandle, free_port


def health_command(*args: str, env: dict[str, str] | None = None) -> tuple[int, str]:
    """Runs `arrowsmith health *args`; its exit code and what it printed."""
    result = subprocess.run(
        [sys.executable, "-m", "arrowsmith", "health", *args],
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, **(env or {})},
    )
    return result.returncode, result.stdout + result.stderr


@pytest.mark.parametrize("service", ["", "wine", "é" * 100])
def test_request_is_the_health_protos_message(service):
    """The hand-written request reads back as grpc.health.v1's own message (a name over 127
    bytes needs a two-byte length)."""
    assert health_pb2.HealthCheckRequest.FromString(encode_request(service)).service == service


@pytest.mark.parametrize("status", [0, 1, 2, 3])
def test_status_is_read_from_the_health_protos_message(status):
    message = health_pb2.HealthCheckResponse(status=status).SerializeToString()
    assert decode_status(message) == status


def test_fields_it_does_not_know_are_skipped():
    # field 2 (length-delimited "ab"), field 3 (fixed64), then status NOT_SERVING.
    message = b"\x12\x02ab" + b"\x19" + bytes(8) + b"\x08\x02"
    assert decode_status(message) == 2


@pytest.mark.parametrize("message", [b"\x08", b"\x12\x05ab", b"\x0b"])
def test_a_message_that_is_no_response_is_refused(message):
    """A cut varint, a field longer than the message, a group (wire type 3)."""
    with pytest.raises(ValueError):
        decode_status(message)


def test_serving_server_exits_0(wine_server: ServerHandle):
    code, output = health_command("--target", f"127.0.0.1:{wine_server.port}")
    assert (code, output.strip()) == (0, "SERVING")


def test_a_models_name_is_a_service(wine_server: ServerHandle):
    """The target defaults to ARROWSMITH_GRPC_PORT, as in the server's container."""
    code, output = health_command(
        "--service", WINE_MODEL_NAME, env={"ARROWSMITH_GRPC_PORT": str(wine_server.port)}
    )
    assert (code, output.strip()) == (0, "SERVING")


def test_unknown_service_exits_1(wine_server: ServerHandle):
    code, output = health_command(
        "--target", f"127.0.0.1:{wine_server.port}", "--service", "no-such-model"
    )
    assert code == 1
    assert "NOT_FOUND" in output


def test_nothing_listening_exits_1():
    code, output = health_command("--target", f"127.0.0.1:{free_port()}", "--timeout", "2")
    assert code == 1
    assert "UNAVAILABLE" in output


@pytest.fixture
def grpcio_health(tmp_path: pathlib.Path) -> Iterator[tuple[pathlib.Path, health.HealthServicer]]:
    """grpcio's health service on a Unix socket, and the servicer that sets its statuses."""
    socket = tmp_path / "grpc.sock"
    servicer = health.HealthServicer()
    server = grpc.server(ThreadPoolExecutor(max_workers=2))
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    server.add_insecure_port(f"unix:{socket}")
    server.start()
    try:
        yield socket, servicer
    finally:
        server.stop(grace=None).wait()


def test_unix_socket_and_not_serving(grpcio_health):
    socket, servicer = grpcio_health
    servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    assert health_command("--uds", str(socket)) == (0, "SERVING\n")
    servicer.set("", health_pb2.HealthCheckResponse.NOT_SERVING)
    assert health_command("--uds", str(socket)) == (1, "NOT_SERVING\n")


def test_a_mutual_tls_server_is_asked_over_tls(mtls_server: ServerHandle, tls_files: TlsFiles):
    """The CA and the client certificate as the container's variables (the server's own
    ARROWSMITH_TLS_* variables are the server's, and are left alone)."""
    target = f"127.0.0.1:{mtls_server.port}"
    env = {
        "ARROWSMITH_HEALTH_TLS_CA": str(tls_files.ca),
        "ARROWSMITH_HEALTH_TLS_CLIENT_CERT": str(tls_files.client_cert),
        "ARROWSMITH_HEALTH_TLS_CLIENT_KEY": str(tls_files.client_key),
        "ARROWSMITH_TLS_CERT": str(tls_files.server_cert),
    }
    assert health_command("--target", target, env=env) == (0, "SERVING\n")
    assert health_command(
        "--target", f"localhost:{mtls_server.port}", "--tls-server-name", "localhost", env=env
    ) == (0, "SERVING\n")


@pytest.mark.parametrize(
    "flags",
    [
        [],
        ["--tls-ca", "CA"],
        ["--tls-ca", "OTHER_CA", "--tls-client-cert", "CERT", "--tls-client-key", "KEY"],
    ],
    ids=["plaintext", "no client certificate", "a CA that did not sign the server's"],
)
def test_a_tls_server_refuses_what_it_cannot_trust(
    mtls_server: ServerHandle, tls_files: TlsFiles, flags: list[str]
):
    files = {
        "CA": tls_files.ca,
        "OTHER_CA": tls_files.other_ca,
        "CERT": tls_files.client_cert,
        "KEY": tls_files.client_key,
    }
    args = [str(files.get(flag, flag)) for flag in flags]
    code, output = health_command(
        "--target", f"127.0.0.1:{mtls_server.port}", "--timeout", "2", *args
    )
    assert code == 1
    assert "UNAVAILABLE" in output


def test_tls_flags_without_a_ca_are_refused():
    code, output = health_command("--tls-client-cert", "c.pem", "--tls-client-key", "k.pem")
    assert code == 2
    assert "--tls-ca" in output
