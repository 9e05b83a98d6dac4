"""The gRPC front: the native module's one gRPC server (tonic) serves every call on the
gRPC port or socket without the interpreter. Python tells it which models it serves, with
their metadata and config, and how ready they are; it collects the front's request counts
into the Prometheus metrics."""

from __future__ import annotations

import logging
import threading

from arrowsmith import _native, metrics
from arrowsmith.config import ServerConfig
from arrowsmith.dataplane import DataPlane
from arrowsmith.grpc.messages import model_config_response, model_metadata
from arrowsmith.models.registry import LoadedModel, ModelRegistry
from arrowsmith.unix_socket import clear_stale_socket

logger = logging.getLogger(__name__)

#: How often the native front's request counts reach the Prometheus metrics (a scrape of
#: this process also collects them; worker processes rely on this interval).
STATS_INTERVAL_SECONDS = 0.5


class GrpcFront:
    """A started gRPC front, not serving (health NOT_SERVING) until told."""

    def __init__(self, config: ServerConfig, dataplane: DataPlane, reuse_port: bool) -> None:
        server = dataplane.server_metadata()
        if config.grpc_uds is not None:
            clear_stale_socket(config.grpc_uds)
        # Workers share the port on purpose; a lone server must not share it by accident
        # with a process already there.
        self.native = _native.GrpcFront(
            config.host,
            None if config.uds_only else config.grpc_port,
            config.max_message_size,
            reuse_port,
            uds=config.grpc_uds,
            server_name=server.name,
            server_version=server.version,
            expected_models=[m.served_name for m in config.models],
            tls_cert=config.tls_cert,
            tls_key=config.tls_key,
            tls_client_ca=config.tls_client_ca,
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
        """Serves the model from now on: its calls, metadata and config."""
        assert model.runner is not None, "only a loaded model is served"
        self.native.serve(
            model.name,
            model.version,
            model.runner.batcher,
            model_metadata(model),
            model_config_response(model),
            model.signature,
        )

    @property
    def running(self) -> bool:
        """False once the native front's thread has ended."""
        return bool(self.native.running)

    def publish_readiness(self, registry: ModelRegistry, serving: bool) -> None:
        """Each model's readiness as the registry has it; the server's health `serving`."""
        for model in registry.models():
            self.native.set_model_ready(model.name, model.ready)
        self.native.set_serving(serving)

    def reload_tls(self) -> None:
        """Reads the certificate files again (SIGHUP); raises OSError when they are not
        usable, the ones in use staying."""
        self.native.reload_tls()

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
        self.native.set_serving(False)
        self.native.stop(grace_seconds)
        self._stopped.set()
        self._stats.join()
