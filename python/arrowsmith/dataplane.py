"""Transport-neutral inference: request bytes in, response bytes out, through the native
decoder, the model's signature, the model and the native encoder. The gRPC servicer (and
any later front end) calls this and nothing below it."""

from __future__ import annotations

from dataclasses import dataclass

from arrowsmith import __version__, _native
from arrowsmith.models.registry import LoadedModel, ModelRegistry
from arrowsmith.payload import model_input, model_params
from arrowsmith.predictions import output_tensors, select_outputs
from arrowsmith.runner import predict

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

    def infer(self, request_bytes: bytes) -> bytes:
        """Answers a serialized ModelInferRequest with a serialized ModelInferResponse."""
        request = _native.decode_request(request_bytes)
        model = self.registry.get(request.model_name, request.model_version)
        payload, enforced = model_input(request, model)
        predictions = predict(model, payload, model_params(request, model), enforced)
        outputs = output_tensors(predictions, [o.name for o in model.outputs])
        outputs = select_outputs(outputs, request.requested_outputs)
        return _native.encode_response(model.name, model.version, request.id, outputs)
