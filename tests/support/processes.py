"""A server's processes as /proc shows them: its children, their command lines, and whether
a process is still the one that was seen (a pid may be reused)."""

import contextlib
import dataclasses
import os
import pathlib
import signal
import time

EXIT_TIMEOUT_S = 10.0
POLL_INTERVAL_S = 0.1


def children(pid: int) -> list[int]:
    """The live child processes of `pid`, whichever of its threads started them."""
    found = []
    for children_file in pathlib.Path(f"/proc/{pid}/task").glob("*/children"):
        with contextlib.suppress(OSError):
            found += [int(child) for child in children_file.read_text().split()]
    return found


def command_line(pid: int) -> list[str]:
    with contextlib.suppress(OSError):
        return pathlib.Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")[:-1]
    return []


def start_time(pid: int) -> str | None:
    """The process's start time (field 22 of stat), which tells it from a later one that
    reuses its pid; None once it is gone or a zombie."""
    try:
        fields = pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return None if fields[0] == "Z" else fields[19]


@dataclasses.dataclass(frozen=True)
class Seen:
    """A process as seen once."""

    pid: int
    started: str | None
    command: list[str]

    @classmethod
    def of(cls, pid: int) -> "Seen":
        return cls(pid, start_time(pid), command_line(pid))

    @property
    def alive(self) -> bool:
        return self.started is not None and start_time(self.pid) == self.started


def wait_gone(process: Seen, timeout: float = EXIT_TIMEOUT_S) -> bool:
    """Whether the process ended within `timeout`; if not, it is killed."""
    deadline = time.monotonic() + timeout
    while process.alive:
        if time.monotonic() > deadline:
            with contextlib.suppress(ProcessLookupError):
                os.kill(process.pid, signal.SIGKILL)
            return False
        time.sleep(POLL_INTERVAL_S)
    return True
