"""The readiness watch of a front-group process: a model group is ready while its process's
gRPC health of the whole server says SERVING, and not ready at once when it says anything
else, when the stream breaks or while the socket does not answer; a process that comes
back is followed again. The model group here is grpcio's own health service on a Unix
socket."""

import pathlib
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest
from arrowsmith.config import RoutedGroup
from arrowsmith.routing import watch
from arrowsmith.routing.remote import RoutedModels
from arrowsmith.routing.watch import HealthWatch
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

#: Seconds a change may take to be seen (the watch retries every RETRY_SECONDS).
SEEN_WITHIN_S = 5.0


class HealthServer:
    """A gRPC server with only the health service, on a Unix socket; restartable."""

    def __init__(self, socket: pathlib.Path) -> None:
        self.socket = socket
        self.servicer = health.HealthServicer()
        self.server: grpc.Server | None = None

    def start(self) -> None:
        self.servicer = health.HealthServicer()
        self.server = grpc.server(ThreadPoolExecutor(max_workers=4))
        health_pb2_grpc.add_HealthServicer_to_server(self.servicer, self.server)
        self.server.add_insecure_port(f"unix:{self.socket}")
        self.server.start()

    def set(self, status: int) -> None:
        self.servicer.set("", status)

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop(grace=None).wait()
            self.server = None


class Seen:
    """The readiness the watch reported, as it changes."""

    def __init__(self, group: RoutedGroup) -> None:
        self.changed = threading.Condition()
        self.routed = RoutedModels((group,), self._on_change)

    def _on_change(self) -> None:
        with self.changed:
            self.changed.notify_all()

    def wait_for(self, ready: bool) -> float:
        """Seconds until the routed model's readiness is `ready`."""
        started = time.monotonic()
        with self.changed:
            assert self.changed.wait_for(lambda: self.routed.ready == ready, SEEN_WITHIN_S), (
                f"readiness never became {ready}"
            )
        return time.monotonic() - started


@pytest.fixture
def socket(tmp_path: pathlib.Path) -> pathlib.Path:
    return tmp_path / "g.sock"


@pytest.fixture
def server(socket: pathlib.Path) -> Iterator[HealthServer]:
    server = HealthServer(socket)
    yield server
    server.stop()


@pytest.fixture
def seen(socket: pathlib.Path) -> Iterator[Seen]:
    seen = Seen(RoutedGroup(("forest",), str(socket), None))
    health_watch = HealthWatch(seen.routed)
    health_watch.start()
    yield seen
    health_watch.stop()


def test_readiness_follows_the_health_of_the_whole_server(server: HealthServer, seen: Seen) -> None:
    server.start()
    server.set(health_pb2.HealthCheckResponse.NOT_SERVING)
    server.set(health_pb2.HealthCheckResponse.SERVING)
    seen.wait_for(True)
    server.set(health_pb2.HealthCheckResponse.NOT_SERVING)
    assert seen.wait_for(False) < 1.0
    server.set(health_pb2.HealthCheckResponse.SERVING)
    seen.wait_for(True)


def test_a_process_that_goes_away_is_not_ready_at_once_and_followed_when_back(
    server: HealthServer, seen: Seen
) -> None:
    server.start()
    server.set(health_pb2.HealthCheckResponse.SERVING)
    seen.wait_for(True)
    server.stop()
    assert seen.wait_for(False) < 1.0
    server.start()
    server.set(health_pb2.HealthCheckResponse.SERVING)
    assert seen.wait_for(True) < 2 * watch.RETRY_SECONDS + 1.0


def test_a_socket_nobody_listens_on_is_not_ready_until_somebody_does(
    server: HealthServer, seen: Seen
) -> None:
    time.sleep(2 * watch.RETRY_SECONDS)
    assert not seen.routed.ready
    server.start()
    server.set(health_pb2.HealthCheckResponse.SERVING)
    seen.wait_for(True)


def test_stop_ends_the_threads_while_a_watch_is_open(
    server: HealthServer, socket: pathlib.Path
) -> None:
    server.start()
    server.set(health_pb2.HealthCheckResponse.SERVING)
    seen = Seen(RoutedGroup(("forest",), str(socket), None))
    health_watch = HealthWatch(seen.routed)
    health_watch.start()
    seen.wait_for(True)
    started = time.monotonic()
    health_watch.stop()
    assert time.monotonic() - started < 1.0
    assert not any(t.name.startswith("watch ") and t.is_alive() for t in threading.enumerate())
