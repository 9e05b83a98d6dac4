"""`arrowsmith health`: one grpc.health.v1.Health/Check call to a running server, exit status 0
when the answer is SERVING and 1 otherwise (not serving, an unknown service name, nothing
listening, no answer in time). It is what a container's HEALTHCHECK or an exec probe runs;
Kubernetes' own gRPC probe needs no command, but cannot reach a Unix socket. A server that
serves TLS is asked over TLS with `--tls-ca` (and a client certificate under mutual TLS).

The server answers "" (the whole server) SERVING once every model is loaded and warmed up,
and each model's name while its default version is ready. The two messages are one optional
field each, written and read here as bytes: grpcio-health-checking is not a dependency."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

CHECK_METHOD = "/grpc.health.v1.Health/Check"
#: HealthCheckResponse.ServingStatus.
STATUS_NAMES = {0: "UNKNOWN", 1: "SERVING", 2: "NOT_SERVING", 3: "SERVICE_UNKNOWN"}
SERVING = 1
#: grpc-core's default authority on a `unix:` target (the socket's percent-encoded path) is
#: refused by h2, which the native front is built on.
UNIX_OPTIONS = [("grpc.default_authority", "localhost")]


def _varint(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def encode_request(service: str) -> bytes:
    """HealthCheckRequest{service}: field 1, length-delimited; "" is not written."""
    name = service.encode()
    return b"\x0a" + _varint(len(name)) + name if name else b""


def _read_varint(data: bytes, at: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if at >= len(data):
            raise ValueError("truncated varint")
        byte = data[at]
        value |= (byte & 0x7F) << shift
        at += 1
        if not byte & 0x80:
            return value, at
        shift += 7


def decode_status(message: bytes) -> int:
    """HealthCheckResponse's status (field 1, a varint); 0 (UNKNOWN) when absent. Fields this
    module does not know are skipped."""
    status = 0
    at = 0
    while at < len(message):
        key, at = _read_varint(message, at)
        field, wire_type = key >> 3, key & 0x7
        if wire_type == 0:
            value, at = _read_varint(message, at)
            if field == 1:
                status = value
        elif wire_type == 2:
            length, at = _read_varint(message, at)
            at += length
        elif wire_type in (1, 5):
            at += 8 if wire_type == 1 else 4
        else:
            raise ValueError(f"wire type {wire_type} in a HealthCheckResponse")
    if at > len(message):
        raise ValueError("truncated HealthCheckResponse")
    return status


@dataclass(frozen=True)
class Tls:
    """How to reach a server that serves TLS: the CAs to trust, a client certificate for
    mutual TLS, and the name its certificate must carry (default: the target's host)."""

    ca: Path
    client_cert: Path | None = None
    client_key: Path | None = None
    server_name: str | None = None

    def credentials(self) -> grpc.ChannelCredentials:
        return grpc.ssl_channel_credentials(
            root_certificates=self.ca.read_bytes(),
            private_key=self.client_key.read_bytes() if self.client_key else None,
            certificate_chain=self.client_cert.read_bytes() if self.client_cert else None,
        )


def _channel(target: str, tls: Tls | None) -> grpc.Channel:
    options = list(UNIX_OPTIONS) if target.startswith("unix:") else []
    if tls is None:
        return grpc.insecure_channel(target, options=options)
    if tls.server_name:
        options.append(("grpc.ssl_target_name_override", tls.server_name))
    return grpc.secure_channel(target, tls.credentials(), options=options)


def check(target: str, service: str, timeout: float, tls: Tls | None = None) -> int:
    """The status the server at `target` (host:port, or unix:PATH) gives `service`; raises
    grpc.RpcError when the call fails (NOT_FOUND: a service name the server does not know;
    INTERNAL: an answer that is no HealthCheckResponse; UNAVAILABLE: no connection, a TLS
    handshake included)."""
    with _channel(target, tls) as channel:
        call: Any = channel.unary_unary(
            CHECK_METHOD, request_serializer=encode_request, response_deserializer=decode_status
        )
        status: int = call(service, timeout=timeout)
    return status


def run(args: argparse.Namespace) -> int:
    """Prints the status (or why there is none); 0 when SERVING, else 1."""
    target = f"unix:{args.uds}" if args.uds else args.target
    tls = None
    if args.tls_ca:
        tls = Tls(
            Path(args.tls_ca),
            Path(args.tls_client_cert) if args.tls_client_cert else None,
            Path(args.tls_client_key) if args.tls_client_key else None,
            args.tls_server_name,
        )
    elif args.tls_client_cert or args.tls_client_key or args.tls_server_name:
        print("--tls-client-cert, --tls-client-key and --tls-server-name need --tls-ca")
        return 2
    if (args.tls_client_cert is None) != (args.tls_client_key is None):
        print("--tls-client-cert and --tls-client-key go together")
        return 2
    try:
        status = check(target, args.service, args.timeout, tls)
    except OSError as error:
        print(f"{target}: {error}")
        return 1
    except grpc.RpcError as error:
        print(f"{target}: {error.code().name}: {error.details()}")
        return 1
    print(STATUS_NAMES.get(status, f"status {status}"))
    return 0 if status == SERVING else 1
