"""HTTP/1.1 over a Unix socket (what `curl --unix-socket PATH` does), with TLS when given a
client context: the standard library's HTTPConnection on an AF_UNIX socket."""

import http.client
import pathlib
import socket
import ssl

#: The name TLS checks the server's certificate against over a socket path.
TLS_SERVER_NAME = "localhost"


class UnixHTTPConnection(http.client.HTTPConnection):
    """Requests go to the server listening at `path`; the Host header says `localhost`."""

    def __init__(
        self, path: pathlib.Path, timeout: float, context: ssl.SSLContext | None = None
    ) -> None:
        super().__init__(TLS_SERVER_NAME, timeout=timeout)
        self._path = str(path)
        self._context = context

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(self.timeout)
            sock.connect(self._path)
            if self._context is not None:
                sock = self._context.wrap_socket(sock, server_hostname=TLS_SERVER_NAME)
        except BaseException:
            sock.close()
            raise
        self.sock = sock
