"""The HTTP front's TLS: a server context built from --tls-cert, --tls-key and
--tls-client-ca, which `reload` replaces with one built afresh from the same files.

uvicorn hands the context it was started with to every listener, so the first context stays
the one every handshake starts on; its SNI callback (called for each ClientHello, with or
without a server name) moves the connection onto the newest context before a certificate is
chosen. A reload thus changes what new connections see, drops no open connection, and, by
building a whole new context rather than loading into the live one, retires a client CA
removed from the bundle and never leaves a half-loaded certificate in use."""

from __future__ import annotations

import ssl
from dataclasses import dataclass


class TlsFileError(ValueError):
    """A TLS file that cannot be used: `flag` names the setting, `path` the file."""

    def __init__(self, flag: str, path: str, reason: str) -> None:
        super().__init__(f"{flag} {path}: {reason}")
        self.flag = flag
        self.path = path
        self.reason = reason


@dataclass(frozen=True)
class TlsFiles:
    """Where the PEM files are; read again on each reload."""

    cert: str
    key: str
    client_ca: str | None = None


def _read(flag: str, path: str) -> None:
    try:
        with open(path, "rb"):
            pass
    except OSError as error:
        raise TlsFileError(flag, path, f"cannot be read: {error.strerror}") from None


def _check_certificates(flag: str, path: str) -> None:
    """Refuses a file without a PEM certificate (OpenSSL's own error names neither file)."""
    _read(flag, path)
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_verify_locations(cafile=path)
    except ssl.SSLError:
        raise TlsFileError(flag, path, "holds no PEM certificate") from None


def build_context(files: TlsFiles) -> ssl.SSLContext:
    """A TLS 1.2+ server context with the certificate chain and key, requiring a client
    certificate signed by the client CA when there is one. Raises TlsFileError."""
    _check_certificates("--tls-cert", files.cert)
    _read("--tls-key", files.key)

    def encrypted() -> bytes:
        # Without a callback OpenSSL would ask for the passphrase on the terminal.
        raise TlsFileError("--tls-key", files.key, "is encrypted; give an unencrypted key")

    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        context.load_cert_chain(files.cert, files.key, password=encrypted)
    except ssl.SSLError as error:
        reason = (
            f"is not the key of the certificate in {files.cert}"
            if error.reason == "KEY_VALUES_MISMATCH"
            else "holds no PEM private key"
        )
        raise TlsFileError("--tls-key", files.key, reason) from None
    if files.client_ca is not None:
        _check_certificates("--tls-client-ca", files.client_ca)
        context.load_verify_locations(cafile=files.client_ca)
        context.verify_mode = ssl.CERT_REQUIRED
    return context


class ReloadableContext:
    """`context` goes to uvicorn once; `reload` changes what later handshakes use."""

    def __init__(self, files: TlsFiles) -> None:
        self.files = files
        self.context = build_context(files)
        self._current = self.context
        self.context.sni_callback = self._select

    def _select(self, connection: ssl.SSLObject, server_name: str | None, _: object) -> None:
        current = self._current
        if connection.context is not current:
            connection.context = current

    def reload(self) -> None:
        """Builds a context from the files as they are now; on failure (TlsFileError) the
        one in use stays."""
        self._current = build_context(self.files)
