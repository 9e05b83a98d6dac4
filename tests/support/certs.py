"""Certificates made at run time for the TLS tests: a CA, a server certificate for
`localhost` and 127.0.0.1 and a client certificate it signed, and an unrelated CA with a
client certificate of its own (which the server must refuse). Written as PEM files.

Keys are ECDSA P-256: quick to make, and accepted by OpenSSL, BoringSSL (grpcio) and rustls.
"""

import dataclasses
import datetime
import ipaddress
import pathlib
import ssl

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

#: How long the certificates are valid, from a day before they are made.
VALIDITY = datetime.timedelta(days=30)


@dataclasses.dataclass(frozen=True)
class Issuer:
    """A CA: its key and certificate, to sign others with."""

    key: ec.EllipticCurvePrivateKey
    cert: x509.Certificate


@dataclasses.dataclass(frozen=True)
class TlsFiles:
    """PEM files: `ca` signed the server's and the client's certificates; `other_ca` signed
    only `other_client_cert`."""

    directory: pathlib.Path
    ca: pathlib.Path
    server_cert: pathlib.Path
    server_key: pathlib.Path
    client_cert: pathlib.Path
    client_key: pathlib.Path
    other_ca: pathlib.Path
    other_client_cert: pathlib.Path
    other_client_key: pathlib.Path
    #: The CA itself, to issue more certificates (a renewed server certificate, say).
    issuer: Issuer


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Arrowsmith tests"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _builder(
    subject: str, key: ec.EllipticCurvePrivateKey, issuer: x509.Name
) -> x509.CertificateBuilder:
    now = datetime.datetime.now(datetime.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + VALIDITY)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
    )


def make_ca(common_name: str) -> Issuer:
    """A self-signed CA that may sign end-entity certificates only."""
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        _builder(common_name, key, _name(common_name))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(key, hashes.SHA256())
    )
    return Issuer(key, cert)


def issue(
    issuer: Issuer, common_name: str, server: bool
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """A key and a certificate signed by `issuer`: for a server at `localhost` and
    127.0.0.1, or for a client."""
    key = ec.generate_private_key(ec.SECP256R1())
    usage = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
    builder = (
        _builder(common_name, key, issuer.cert.subject)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer.key.public_key()), False
        )
    )
    if server:
        names = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    return key, builder.sign(issuer.key, hashes.SHA256())


def write_cert(path: pathlib.Path, cert: x509.Certificate) -> pathlib.Path:
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return path


def write_key(path: pathlib.Path, key: ec.EllipticCurvePrivateKey) -> pathlib.Path:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    path.chmod(0o600)
    return path


def write_server_pair(
    issuer: Issuer, common_name: str, cert_path: pathlib.Path, key_path: pathlib.Path
) -> x509.Certificate:
    """A new server certificate (and key) from `issuer`, written over `cert_path` and
    `key_path`."""
    key, cert = issue(issuer, common_name, server=True)
    write_key(key_path, key)
    write_cert(cert_path, cert)
    return cert


def make_tls_files(directory: pathlib.Path) -> TlsFiles:
    """Every certificate and key the TLS tests use, as PEM files in `directory`."""
    ca = make_ca("Arrowsmith test CA")
    other = make_ca("Unrelated test CA")
    server_cert, server_key = directory / "server.pem", directory / "server.key"
    write_server_pair(ca, "localhost", server_cert, server_key)
    client_key, client_cert = issue(ca, "test client", server=False)
    other_key, other_cert = issue(other, "unrelated client", server=False)
    return TlsFiles(
        directory=directory,
        ca=write_cert(directory / "ca.pem", ca.cert),
        server_cert=server_cert,
        server_key=server_key,
        client_cert=write_cert(directory / "client.pem", client_cert),
        client_key=write_key(directory / "client.key", client_key),
        other_ca=write_cert(directory / "other-ca.pem", other.cert),
        other_client_cert=write_cert(directory / "other-client.pem", other_cert),
        other_client_key=write_key(directory / "other-client.key", other_key),
        issuer=ca,
    )


def client_context(
    ca: pathlib.Path, cert: pathlib.Path | None = None, key: pathlib.Path | None = None
) -> ssl.SSLContext:
    """A client's context that trusts `ca` only and, given them, presents `cert` and `key`."""
    context = ssl.create_default_context(cafile=str(ca))
    if cert is not None:
        context.load_cert_chain(str(cert), None if key is None else str(key))
    return context


def certificate_of(der: bytes) -> x509.Certificate:
    """A peer's certificate as `getpeercert(binary_form=True)` gives it."""
    return x509.load_der_x509_certificate(der)
