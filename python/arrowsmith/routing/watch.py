"""How a process of the front group knows whether the model groups are ready: one thread
per group follows its process's gRPC health of the whole server (Health/Watch on ""),
ready on SERVING and not ready at once on anything else, on a broken stream or while the
socket does not answer; it then tries again every RETRY_SECONDS.

The two health messages are written and read here as bytes: grpcio-health-checking is not
among Arrowsmith's dependencies (its releases pin protobuf), and these messages are one
optional field each."""

from __future__ import annotations

import logging
import threading
from typing import Any

import grpc

from arrowsmith.config import RoutedGroup
from arrowsmith.routing.remote import RoutedModels

logger = logging.getLogger(__name__)

WATCH_METHOD = "/grpc.health.v1.Health/Watch"
CHECK_METHOD = "/grpc.health.v1.Health/Check"
#: Seconds the check of a possible successor may take.
CHECK_SECONDS = 1.0
#: HealthCheckRequest for service "": a field at its default is not written.
WHOLE_SERVER = b""
#: HealthCheckResponse with status SERVING (field 1, varint 1).
SERVING = b"\x08\x01"
RETRY_SECONDS = 0.5
#: Seconds `stop` waits for each thread.
STOP_SECONDS = 2.0
#: grpc-core's default authority on a `unix:` target (the socket's percent-encoded path) is
#: refused by h2, which the native front is built on.
#: A process that stops answering (stopped, or stuck below Python) breaks the Watch within
#: about 2 s through HTTP/2 PINGs, and its models turn not ready.
CHANNEL_OPTIONS = [
    ("grpc.default_authority", "localhost"),
    ("grpc.keepalive_time_ms", 1000),
    ("grpc.keepalive_timeout_ms", 1000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.max_pings_without_data", 0),
]


class HealthWatch:
    def __init__(self, routed: RoutedModels) -> None:
        self._routed = routed
        self._stopped = threading.Event()
        #: Each group's open Watch call, cancelled by `stop`.
        self._calls: dict[RoutedGroup, Any] = {}
        self._lock = threading.Lock()
        self._threads = [
            threading.Thread(
                target=self._watch, args=(group,), name=f"watch {group.grpc_uds}", daemon=True
            )
            for group in routed.groups
        ]

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        self._stopped.set()
        with self._lock:
            for call in self._calls.values():
                call.cancel()
        for thread in self._threads:
            if thread.is_alive():
                thread.join(STOP_SECONDS)

    def _watch(self, group: RoutedGroup) -> None:
        while not self._stopped.is_set():
            try:
                if self._follow(group):
                    continue
            except grpc.RpcError as error:
                logger.debug("health of %s: %s", group.grpc_uds, error)
            self._routed.set_ready(group, False)
            self._stopped.wait(RETRY_SECONDS)

    def _successor_serves(self, group: RoutedGroup) -> bool:
        """Whether the process now at the group's socket serves: when a group's process is
        replaced (a new environment), its successor takes the socket before the old one
        stops serving, and the group stays ready throughout."""
        try:
            with grpc.insecure_channel(
                f"unix:{group.grpc_uds}", options=CHANNEL_OPTIONS
            ) as channel:
                answer = channel.unary_unary(CHECK_METHOD)(WHOLE_SERVER, timeout=CHECK_SECONDS)
        except grpc.RpcError:
            return False
        return bool(answer == SERVING)

    def _follow(self, group: RoutedGroup) -> bool:
        """The group's readiness as its health says, until the stream ends; True when it
        ended because a successor serves at the socket (to be followed at once)."""
        with grpc.insecure_channel(f"unix:{group.grpc_uds}", options=CHANNEL_OPTIONS) as channel:
            call = channel.unary_stream(WATCH_METHOD)(WHOLE_SERVER)
            with self._lock:
                if self._stopped.is_set():
                    call.cancel()
                    return False
                self._calls[group] = call
            try:
                for message in call:
                    if message != SERVING and self._successor_serves(group):
                        return True
                    self._routed.set_ready(group, message == SERVING)
            finally:
                with self._lock:
                    self._calls.pop(group, None)
        return False
