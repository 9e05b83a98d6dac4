"""Transport-neutral inference: request bytes in, response bytes out, through the native
decoder, the model's signature, the model and the native encoder. The gRPC servicer (and
any later front end) calls this and nothing below it."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from arrowsmith import __version__, _native, metrics
from arrowsmith.errors import ArrowsmithError, ModelNotReadyError
from arrowsmith.models.registry import LoadedModel, ModelRegistry

SERVER_NAME = "arrowsmith"


@dataclass(frozen=True)
class ServerMetadata:
    name: str
    version: str
    extensions: tuple[str, ...]


class DataPlane:
    def __init__(self, registry: ModelRegistry) -> None:
        self.registry = registry

    def server_metadata(self) -> ServerMetadata:
        return ServerMetadata(SERVER_NAME, __version__, ())

    def model(self, name: str, version: str = "") -> LoadedModel:
        return self.registry.get(name, version)

    def infer(
        self,
        request_bytes: bytes,
        timeout: float | None = None,
        on_cancel: Callable[[Callable[[], None]], object] | None = None,
        protocol: str = "grpc",
    ) -> bytes:
        """Answers a serialized ModelInferRequest with a serialized ModelInferResponse.

        `timeout`: seconds left before the client's deadline. `on_cancel` registers a
        callback the transport calls when the client goes away."""
        # Only served models' names become metric labels, never what a client made up.
        model_name = ""
        try:
            started = time.perf_counter()
            request = _native.decode_request(request_bytes)
            model = self.registry.get(request.model_name, request.model_version)
            model_name = model.name
            if model.runner is None:
                raise ModelNotReadyError(f"model '{model.name}' is not ready yet")
            job = request.job(model.signature, timeout)
            metrics.observe_stage(model_name, protocol, "decode", time.perf_counter() - started)
            if on_cancel is not None:
                on_cancel(job.cancel)
            response = model.runner.batcher.submit(job)
        except ArrowsmithError as error:
            metrics.count_request(model_name, protocol, error.code.value)
            raise
        metrics.count_request(model_name, protocol, "OK")
        return response
