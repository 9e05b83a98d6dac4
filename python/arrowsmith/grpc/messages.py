"""What the native gRPC front answers ModelMetadata and ModelConfig with, for one model:
the generated messages, serialized once when the model is served."""

from __future__ import annotations

from typing import Any

from arrowsmith._proto import grpc_service_pb2 as pb
from arrowsmith.models.loaded import LoadedModel
from arrowsmith.models.signature import TensorMetadata
from arrowsmith.models.triton_config import PLATFORM, model_config


def _tensor(tensor: TensorMetadata) -> Any:
    described = pb.ModelMetadataResponse.TensorMetadata(
        name=tensor.name, datatype=tensor.datatype, shape=tensor.shape
    )
    described.parameters["content_type"].string_param = tensor.content_type
    return described


def model_metadata(model: LoadedModel) -> bytes:
    """A serialized `ModelMetadataResponse`."""
    return bytes(
        pb.ModelMetadataResponse(
            name=model.name,
            versions=model.versions,
            platform=PLATFORM,
            inputs=[_tensor(t) for t in model.inputs],
            outputs=[_tensor(t) for t in model.outputs],
            properties=model.properties,
        ).SerializeToString()
    )


def model_config_response(model: LoadedModel) -> bytes:
    """A serialized `ModelConfigResponse`."""
    return bytes(pb.ModelConfigResponse(config=model_config(model)).SerializeToString())
