"""Listening on a Unix domain socket path (--grpc-uds, --http-uds): a socket file left by a
process that died is replaced, a live server's is never taken over, and the file goes when
its listener closes."""

from __future__ import annotations

import contextlib
import os
import socket
import stat

#: Connections the kernel holds before they are accepted (as for the TCP listeners).
_BACKLOG = 2048
#: How long the probe of an existing socket may wait for a listener that is busy.
_PROBE_SECONDS = 1.0


def clear_stale_socket(path: str) -> None:
    """Removes a socket file at `path` that nothing listens on any more. Refuses (OSError)
    when a process still listens there, or when `path` is not a socket at all."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise FileExistsError(f"{path} exists and is not a Unix socket; not replacing it")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.settimeout(_PROBE_SECONDS)
        try:
            probe.connect(path)
        except ConnectionRefusedError:
            os.unlink(path)
            return
    raise OSError(f"another process already listens on the Unix socket {path}")


class UnixListener:
    """A listening socket bound at `path`; `close` removes the file unless another server
    listens there by then (one that replaced it, taking this one for dead)."""

    def __init__(self, path: str) -> None:
        clear_stale_socket(path)
        self.path = path
        self.socket = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            self.socket.bind(path)
            self.socket.listen(_BACKLOG)
        except OSError as error:
            self.socket.close()
            raise OSError(f"cannot listen on the Unix socket {path}: {error}") from None

    def close(self) -> None:
        self.socket.close()
        # A server listening there by now keeps its socket; so does a file that is not one.
        with contextlib.suppress(OSError):
            clear_stale_socket(self.path)
