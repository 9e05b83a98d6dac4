"""The gRPC front: the native module's one gRPC server (tonic) serves every call on the
gRPC port or socket without the interpreter, or forwards it as it came when another
process of the server serves its model (`ServerConfig.routes`). The model repository tells
it which model versions it serves, with their metadata and config, which version is each
model's default, and how ready they are; the repository API's calls come back to Python.
It collects the front's request counts into the Prometheus metrics."""

from __future__ import annotations

import logging
import threading

from arrowsmith import _native, metrics
from arrowsmith.config import ServerConfig
from arrowsmith.dataplane import DataPlane
from arrowsmith.grpc.messages import model_config_response, model_metadata
from arrowsmith.routing.remote import RoutedModels
from arrowsmith.serving.repository import ModelRepository, ServedVersion
from arrowsmith.serving.repository_api import RepositoryApi
from arrowsmith.unix_socket import clear_stale_socket

logger = logging.getLogger(__name__)

#: How often the native front's request counts reach the Prometheus metrics (a scrape of
#: this process also collects them; worker processes rely on this interval).
STATS_INTERVAL_SECONDS = 0.5


class GrpcFront:
    """A started gRPC front, not serving (health NOT_SERVING) until told."""

    def __init__(
        self,
        config: ServerConfig,
        dataplane: DataPlane,
        reuse_port: bool,
        repository_api: RepositoryApi | None = None,
    ) -> None:
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
            expected_models=list(dict.fromkeys(m.served_name for m in config.models)),
            tls_cert=config.tls_cert,
            tls_key=config.tls_key,
            tls_client_ca=config.tls_client_ca,
            max_inflight_bytes=config.max_inflight_bytes,
            max_concurrent_streams=config.max_concurrent_streams,
            max_connections=config.max_connections,
            keepalive_interval=config.keepalive_interval,
            keepalive_timeout=config.keepalive_timeout,
            idle_timeout=config.idle_timeout,
            flight_port=config.flight_port or None,
        )
        self.port = self.native.port
        self.flight_port = self.native.flight_port
        for group in config.routes:
            for name in group.names:
                self.native.route_to(name, group.grpc_uds)
        if repository_api is not None:
            self.native.set_repository_handler(repository_api.grpc)
        metrics.before_scrape(self._flush_stats)
        self._stopped = threading.Event()
        self._stats = threading.Thread(target=self._report_stats, name="grpc-stats", daemon=True)
        self._stats.start()

    def serve_version(self, served: ServedVersion) -> None:
        """Serves the version from now on: its calls, metadata and config (the model's
        default version too, when it has none yet)."""
        model = served.model
        self.native.serve(
            model.name,
            model.version,
            served.batcher,
            model_metadata(model),
            model_config_response(model),
            model.signature,
        )

    def set_default_version(self, name: str, version: str) -> None:
        """Requests naming no version go to `version` from the next one on."""
        self.native.set_default_version(name, version)

    def unserve_version(self, name: str, version: str) -> None:
        """Requests no longer find the version; those it holds are still answered."""
        self.native.unserve(name, version)

    def set_expected(self, names: list[str]) -> None:
        """The models the server must serve to be ready."""
        self.native.set_expected(names)

    @property
    def running(self) -> bool:
        """False once the native front's thread has ended."""
        return bool(self.native.running)

    def publish_readiness(
        self, repository: ModelRepository, routed: RoutedModels, serving: bool
    ) -> None:
        """Each version's readiness as the repository has it, each routed model's as its
        process's health says; the server's health `serving`."""
        for served in repository.versions():
            self.native.set_model_ready(served.name, served.version, served.ready)
        for name, ready in routed.readiness():
            self.native.set_remote_ready(name, ready)
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
