"""Health, readiness and metadata as a V2 client, a Kubernetes probe and grpcurl see them."""

from collections.abc import Iterable

import grpc
import pandas as pd
import pytest
import tritonclient.grpc as grpcclient
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from support.model_builders import STRING_MODEL_NAME, TENSOR_MODEL_NAME, WINE_MODEL_NAME
from support.server import ServerHandle
from tritonclient.grpc import service_pb2 as pb
from tritonclient.utils import InferenceServerException

INFERENCE_SERVICE = "inference.GRPCInferenceService"
HEALTH_SERVICE = "grpc.health.v1.Health"

TensorMeta = tuple[str, str, list[int]]


def tensors(metadata: Iterable[pb.ModelMetadataResponse.TensorMetadata]) -> list[TensorMeta]:
    """(name, datatype, shape) of each tensor, in the order the server lists them."""
    return [(t.name, t.datatype, list(t.shape)) for t in metadata]


def test_server_is_live_and_ready(wine_server: ServerHandle) -> None:
    """Liveness and readiness, as tritonclient asks for them."""
    with grpcclient.InferenceServerClient(wine_server.url) as client:
        assert client.is_server_live()
        assert client.is_server_ready()


def test_model_readiness(wine_server: ServerHandle) -> None:
    """A served model is ready; an unknown one is not (false or NOT_FOUND, both V2-legal)."""
    with grpcclient.InferenceServerClient(wine_server.url) as client:
        assert client.is_model_ready(WINE_MODEL_NAME)
        try:
            unknown: bool | str = client.is_model_ready("nope")
        except InferenceServerException as error:
            unknown = error.status()
    assert unknown in (False, str(grpc.StatusCode.NOT_FOUND))


def test_server_metadata(wine_server: ServerHandle) -> None:
    """Clients identify the server by name and version."""
    with grpcclient.InferenceServerClient(wine_server.url) as client:
        metadata = client.get_server_metadata()
    assert metadata.name == "arrowsmith"
    assert metadata.version.strip()


def test_unknown_model_metadata_is_not_found(wine_server: ServerHandle) -> None:
    """An unknown model is NOT_FOUND, and the message says which name was looked up."""
    with (
        grpcclient.InferenceServerClient(wine_server.url) as client,
        pytest.raises(InferenceServerException) as raised,
    ):
        client.get_model_metadata("nope")
    assert raised.value.status() == str(grpc.StatusCode.NOT_FOUND)
    assert "nope" in str(raised.value.message())


def test_wine_metadata_from_column_signature(
    wine_server: ServerHandle, wine_frame: pd.DataFrame
) -> None:
    """Each column of the signature is an input named by it, double -> FP64 [-1, 1]."""
    with grpcclient.InferenceServerClient(wine_server.url) as client:
        metadata = client.get_model_metadata(WINE_MODEL_NAME)
    assert metadata.name == WINE_MODEL_NAME
    assert list(metadata.versions) in ([], ["1"])
    assert tensors(metadata.inputs) == [(str(c), "FP64", [-1, 1]) for c in wine_frame.columns]
    assert tensors(metadata.outputs) == [("output-0", "FP64", [-1])]


def test_tensor_metadata_from_tensor_signature(tensor_server: ServerHandle) -> None:
    """An unnamed TensorSpec becomes `input-0` with the spec's dtype and shape."""
    with grpcclient.InferenceServerClient(tensor_server.url) as client:
        metadata = client.get_model_metadata(TENSOR_MODEL_NAME)
    assert metadata.name == TENSOR_MODEL_NAME
    assert tensors(metadata.inputs) == [("input-0", "UINT8", [-1, 8, 8])]
    assert tensors(metadata.outputs) == [("output-0", "INT64", [-1])]


def test_string_metadata_from_string_columns(string_server: ServerHandle) -> None:
    """MLflow `string` columns are V2 BYTES, in and out."""
    with grpcclient.InferenceServerClient(string_server.url) as client:
        metadata = client.get_model_metadata(STRING_MODEL_NAME)
    assert metadata.name == STRING_MODEL_NAME
    assert tensors(metadata.inputs) == [("text", "BYTES", [-1, 1])]
    assert tensors(metadata.outputs) == [("upper", "BYTES", [-1, 1])]


@pytest.mark.parametrize("service", ["", INFERENCE_SERVICE, "liveness"])
def test_grpc_health_check_serving(wine_server: ServerHandle, service: str) -> None:
    """Kubernetes gRPC probes ask grpc.health.v1 for the server and for the V2 service
    (readiness), and for `liveness`."""
    with grpc.insecure_channel(wine_server.url) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        response = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=10)
    assert response.status == health_pb2.HealthCheckResponse.SERVING


def test_reflection_lists_services(wine_server: ServerHandle) -> None:
    """Tools such as grpcurl discover the services through reflection."""
    with grpc.insecure_channel(wine_server.url) as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        request = reflection_pb2.ServerReflectionRequest(list_services="")
        responses = list(stub.ServerReflectionInfo(iter([request]), timeout=10))
    assert len(responses) == 1
    services = {s.name for s in responses[0].list_services_response.service}
    assert {INFERENCE_SERVICE, HEALTH_SERVICE} <= services
