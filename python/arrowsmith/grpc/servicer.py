"""Handlers of `inference.GRPCInferenceService`. ModelInfer takes and returns raw bytes
(the native side parses and serializes); the small RPCs use the generated messages. Status
codes come only from `arrowsmith.errors`."""

from __future__ import annotations

import logging
from typing import Any, NoReturn

import grpc

from arrowsmith._proto import grpc_service_pb2 as pb
from arrowsmith.dataplane import DataPlane
from arrowsmith.errors import GRPC_STATUS, ArrowsmithError
from arrowsmith.models.signature import TensorMetadata
from arrowsmith.models.triton_config import PLATFORM, model_config

logger = logging.getLogger(__name__)

SERVICE_NAME = "inference.GRPCInferenceService"


def _abort(context: grpc.ServicerContext, error: ArrowsmithError) -> NoReturn:
    context.abort(getattr(grpc.StatusCode, GRPC_STATUS[error.code]), error.message)
    raise AssertionError("context.abort returned")


class InferenceServicer:
    def __init__(self, dataplane: DataPlane) -> None:
        self.dataplane = dataplane

    def model_infer(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        try:
            return self.dataplane.infer(request, context.time_remaining(), context.add_callback)
        except ArrowsmithError as error:
            _abort(context, error)
        except Exception as error:
            logger.exception("ModelInfer failed")
            context.abort(grpc.StatusCode.INTERNAL, f"internal error: {error}")
            raise

    def server_live(self, request: Any, context: grpc.ServicerContext) -> Any:
        return pb.ServerLiveResponse(live=True)

    def server_ready(self, request: Any, context: grpc.ServicerContext) -> Any:
        return pb.ServerReadyResponse(ready=self.dataplane.registry.ready)

    def model_ready(self, request: Any, context: grpc.ServicerContext) -> Any:
        try:
            self.dataplane.model(request.name, request.version)
        except ArrowsmithError:
            return pb.ModelReadyResponse(ready=False)
        return pb.ModelReadyResponse(ready=True)

    def server_metadata(self, request: Any, context: grpc.ServicerContext) -> Any:
        metadata = self.dataplane.server_metadata()
        return pb.ServerMetadataResponse(
            name=metadata.name, version=metadata.version, extensions=list(metadata.extensions)
        )

    def model_metadata(self, request: Any, context: grpc.ServicerContext) -> Any:
        try:
            model = self.dataplane.model(request.name, request.version)
        except ArrowsmithError as error:
            _abort(context, error)

        def tensor(t: TensorMetadata) -> Any:
            described = pb.ModelMetadataResponse.TensorMetadata(
                name=t.name, datatype=t.datatype, shape=t.shape
            )
            described.parameters["content_type"].string_param = t.content_type
            return described

        return pb.ModelMetadataResponse(
            name=model.name,
            versions=model.versions,
            platform=PLATFORM,
            inputs=[tensor(t) for t in model.inputs],
            outputs=[tensor(t) for t in model.outputs],
            properties=model.properties,
        )

    def model_config(self, request: Any, context: grpc.ServicerContext) -> Any:
        try:
            model = self.dataplane.model(request.name, request.version)
        except ArrowsmithError as error:
            _abort(context, error)
        return pb.ModelConfigResponse(config=model_config(model))

    def method_handlers(self) -> dict[str, grpc.RpcMethodHandler]:
        """The service's handlers; ModelInfer has no (de)serializers, so it sees bytes."""

        def unary(handler: Any, request: Any, response: Any) -> grpc.RpcMethodHandler:
            return grpc.unary_unary_rpc_method_handler(
                handler,
                request_deserializer=request.FromString,
                response_serializer=response.SerializeToString,
            )

        return {
            "ModelInfer": grpc.unary_unary_rpc_method_handler(self.model_infer),
            "ServerLive": unary(self.server_live, pb.ServerLiveRequest, pb.ServerLiveResponse),
            "ServerReady": unary(self.server_ready, pb.ServerReadyRequest, pb.ServerReadyResponse),
            "ModelReady": unary(self.model_ready, pb.ModelReadyRequest, pb.ModelReadyResponse),
            "ServerMetadata": unary(
                self.server_metadata, pb.ServerMetadataRequest, pb.ServerMetadataResponse
            ),
            "ModelMetadata": unary(
                self.model_metadata, pb.ModelMetadataRequest, pb.ModelMetadataResponse
            ),
            "ModelConfig": unary(self.model_config, pb.ModelConfigRequest, pb.ModelConfigResponse),
        }
