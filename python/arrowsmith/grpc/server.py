"""The gRPC front: a native HTTP/2 server on the gRPC port answers ModelInfer for ready
models without the interpreter, and passes every other call (the small RPCs, health,
reflection, ModelInfer for a model it does not hold) to grpcio's synchronous server, which
listens on a Unix socket of this process only."""

from __future__ import annotations

import logging
import pathlib
import tempfile
import threading
from concurrent.futures import ThreadPoolExecutor

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from arrowsmith import _native, metrics
from arrowsmith.config import ServerConfig
from arrowsmith.dataplane import DataPlane
from arrowsmith.grpc.servicer import SERVICE_NAME, InferenceServicer
from arrowsmith.models.registry import LoadedModel

logger = logging.getLogger(__name__)

#: How often the native front's request counts reach the Prometheus metrics (a scrape of
#: this process also collects them; worker processes rely on this interval).
STATS_INTERVAL_SECONDS = 0.5


class GrpcFront:
    """A started gRPC front whose health follows the server's readiness."""

    def __init__(self, config: ServerConfig, dataplane: DataPlane, reuse_port: bool) -> None:
        size = config.max_message_size
        self._socket_dir = tempfile.TemporaryDirectory(prefix="arrowsmith-grpc-")
        backend_socket = pathlib.Path(self._socket_dir.name) / "grpc.sock"
        self.server = grpc.server(
            ThreadPoolExecutor(max_workers=config.grpc_threads, thread_name_prefix="grpc"),
            options=[
                ("grpc.max_receive_message_length", size),
                ("grpc.max_send_message_length", size),
            ],
        )
        servicer = InferenceServicer(dataplane)
        self.server.add_registered_method_handlers(SERVICE_NAME, servicer.method_handlers())
        self.health = health.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        reflection.enable_server_reflection(
            (SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), self.server
        )
        self.set_serving(False)
        self.server.add_insecure_port(f"unix:{backend_socket}")
        self.server.start()
        # Workers share the port on purpose; a lone server must not share it by accident
        # with a process already there.
        self.native = _native.GrpcFront(
            config.host,
            config.grpc_port,
            str(backend_socket),
            size,
            reuse_port,
            max_inflight_bytes=config.max_inflight_bytes,
            max_concurrent_streams=config.max_concurrent_streams,
            max_connections=config.max_connections,
            keepalive_interval=config.keepalive_interval,
            keepalive_timeout=config.keepalive_timeout,
            idle_timeout=config.idle_timeout,
        )
        self.port = self.native.port
        metrics.before_scrape(self._flush_stats)
        self._stopped = threading.Event()
        self._stats = threading.Thread(target=self._report_stats, name="grpc-stats", daemon=True)
        self._stats.start()

    def serve_model(self, model: LoadedModel) -> None:
        """Answers the model's ModelInfer calls natively from now on."""
        assert model.runner is not None, "only a loaded model is served natively"
        self.native.serve(model.name, model.version, model.runner.batcher, model.signature)

    @property
    def running(self) -> bool:
        """False once the native front's thread has ended."""
        return bool(self.native.running)

    def set_serving(self, serving: bool) -> None:
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if serving
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        for service in ("", SERVICE_NAME):
            self.health.set(service, status)

    def _report_stats(self) -> None:
        while not self._stopped.wait(STATS_INTERVAL_SECONDS):
            self._flush_stats()
        self._flush_stats()

    def _flush_stats(self) -> None:
        requests, decode_seconds = self.native.take_stats()
        for model, status, count in requests:
            metrics.count_request(model, "grpc", status, count)
        for model, times in decode_seconds:
            metrics.observe_stages(model, "grpc", "decode", times)

    def stop(self, grace_seconds: float) -> None:
        self.set_serving(False)
        self.native.stop(grace_seconds)
        self.server.stop(grace_seconds).wait()
        self._stopped.set()
        self._stats.join()
        self._socket_dir.cleanup()
