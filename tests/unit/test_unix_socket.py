"""A Unix socket listener takes over a socket file a dead process left, never a live one
nor a file that is not a socket, and removes its file when it closes (unless another
listener has replaced it since)."""

import pathlib
import socket
import tempfile
from collections.abc import Iterator

import pytest
from arrowsmith.unix_socket import UnixListener


@pytest.fixture
def socket_dir() -> Iterator[pathlib.Path]:
    """A short folder: socket paths may not be longer than 107 bytes."""
    with tempfile.TemporaryDirectory(prefix="as-") as folder:
        yield pathlib.Path(folder)


def accepts(path: pathlib.Path) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
        try:
            client.connect(str(path))
        except ConnectionRefusedError:
            return False
    return True


def test_listens_and_removes_its_file(socket_dir: pathlib.Path) -> None:
    path = socket_dir / "s.sock"
    listener = UnixListener(str(path))
    assert accepts(path)
    listener.close()
    assert not path.exists()


def test_replaces_a_stale_socket(socket_dir: pathlib.Path) -> None:
    """A process killed while listening leaves its file; nothing answers there."""
    path = socket_dir / "s.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as dead:
        dead.bind(str(path))
        dead.listen()
    assert path.is_socket()
    assert not accepts(path)
    listener = UnixListener(str(path))
    try:
        assert accepts(path)
    finally:
        listener.close()


def test_refuses_a_live_socket(socket_dir: pathlib.Path) -> None:
    path = socket_dir / "s.sock"
    live = UnixListener(str(path))
    try:
        with pytest.raises(OSError, match=f"another process already listens on .*{path}"):
            UnixListener(str(path))
        assert accepts(path)
    finally:
        live.close()


def test_refuses_a_file_that_is_not_a_socket(socket_dir: pathlib.Path) -> None:
    path = socket_dir / "notes.txt"
    path.write_text("keep me")
    with pytest.raises(FileExistsError, match="exists and is not a Unix socket"):
        UnixListener(str(path))
    assert path.read_text() == "keep me"


def test_close_leaves_a_successors_socket(socket_dir: pathlib.Path) -> None:
    """The file was replaced (another server took the path over after this one was
    thought dead): closing must not remove the newcomer's socket."""
    path = socket_dir / "s.sock"
    first = UnixListener(str(path))
    first.socket.close()
    second = UnixListener(str(path))
    try:
        first.close()
        assert accepts(path)
    finally:
        second.close()
    assert not path.exists()
