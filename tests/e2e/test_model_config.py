"""ModelConfig as tritonclient's `get_model_config` and perf_analyzer read it: Triton's
message, with the batch dimension left out of `dims` whenever `max_batch_size` > 0."""

import pathlib

import grpc
import pandas as pd
import pytest
import tritonclient.grpc as grpcclient
from support.model_builders import (
    STRING_MODEL_NAME,
    TENSOR_MODEL_NAME,
    WINE_MODEL_NAME,
    save_pixel_pair_model,
)
from support.server import ServerHandle, StartServer
from tritonclient.grpc import model_config_pb2 as mc
from tritonclient.utils import InferenceServerException

# `arrowsmith serve` defaults.
DEFAULT_MAX_BATCH_SIZE = 65536

TensorConfig = tuple[str, int, list[int]]


def tensors(config: list[mc.ModelInput] | list[mc.ModelOutput]) -> list[TensorConfig]:
    """(name, data_type, dims) of each tensor, in the order the server lists them."""
    return [(t.name, t.data_type, list(t.dims)) for t in config]


def model_config(server: ServerHandle, name: str) -> mc.ModelConfig:
    with grpcclient.InferenceServerClient(server.url) as client:
        config: mc.ModelConfig = client.get_model_config(name).config
    return config


def test_wine_config(wine_server: ServerHandle, wine_frame: pd.DataFrame) -> None:
    """Column inputs [-1, 1] are FP64 dims [1] under a batch size; the output [-1] has no
    dims left; requests are batched without delay by default."""
    config = model_config(wine_server, WINE_MODEL_NAME)
    assert config.name == WINE_MODEL_NAME
    assert config.platform == "mlflow"
    assert config.max_batch_size == DEFAULT_MAX_BATCH_SIZE
    assert tensors(config.input) == [(str(c), mc.TYPE_FP64, [1]) for c in wine_frame.columns]
    assert tensors(config.output) == [("output-0", mc.TYPE_FP64, [])]
    assert config.HasField("dynamic_batching")
    assert config.dynamic_batching.max_queue_delay_microseconds == 0


def test_config_as_json_names_what_perf_analyzer_reads(wine_server: ServerHandle) -> None:
    """perf_analyzer reads the JSON form by proto field names: `max_batch_size` decides
    whether it adds a batch dimension, `dynamic_batching` marks the scheduler."""
    with grpcclient.InferenceServerClient(wine_server.url) as client:
        config = client.get_model_config(WINE_MODEL_NAME, as_json=True)["config"]
    assert config["max_batch_size"] == DEFAULT_MAX_BATCH_SIZE
    assert "dynamic_batching" in config
    assert config["input"][0]["dims"] == ["1"]


def test_tensor_config_leaves_out_the_rows(tensor_server: ServerHandle) -> None:
    """A [-1, 8, 8] uint8 tensor spec is TYPE_UINT8 dims [8, 8]."""
    config = model_config(tensor_server, TENSOR_MODEL_NAME)
    assert config.max_batch_size == DEFAULT_MAX_BATCH_SIZE
    assert tensors(config.input) == [("input-0", mc.TYPE_UINT8, [8, 8])]
    assert tensors(config.output) == [("output-0", mc.TYPE_INT64, [])]


def test_string_config_is_type_string(string_server: ServerHandle) -> None:
    """V2 BYTES is Triton's TYPE_STRING."""
    config = model_config(string_server, STRING_MODEL_NAME)
    assert tensors(config.input) == [("text", mc.TYPE_STRING, [1])]
    assert tensors(config.output) == [("upper", mc.TYPE_STRING, [1])]


def test_fixed_first_dimension_is_not_batched(
    start_server: StartServer, tmp_path: pathlib.Path
) -> None:
    """A tensor of exactly [2, 8, 8] has no row dimension: max_batch_size 0 and whole
    shapes, so clients send it as it is instead of adding a dimension."""
    server = start_server(save_pixel_pair_model(tmp_path / "pixel_pair"), name="pixel_pair")
    config = model_config(server, "pixel_pair")
    assert config.max_batch_size == 0
    assert tensors(config.input) == [("input-0", mc.TYPE_UINT8, [2, 8, 8])]
    assert tensors(config.output) == [("output-0", mc.TYPE_INT64, [-1])]


def test_config_reports_the_batching_flags(
    start_server: StartServer, wine_model_dir: pathlib.Path
) -> None:
    """--max-batch-size and --max-batch-delay-ms are the config's batch size and delay."""
    server = start_server(
        wine_model_dir,
        "--max-batch-size",
        "8",
        "--max-batch-delay-ms",
        "2.5",
        name=WINE_MODEL_NAME,
    )
    config = model_config(server, WINE_MODEL_NAME)
    assert config.max_batch_size == 8
    assert config.dynamic_batching.max_queue_delay_microseconds == 2500


def test_unknown_model_config_is_not_found(wine_server: ServerHandle) -> None:
    """As for metadata: NOT_FOUND, naming the model looked up."""
    with (
        grpcclient.InferenceServerClient(wine_server.url) as client,
        pytest.raises(InferenceServerException) as raised,
    ):
        client.get_model_config("nope")
    assert raised.value.status() == str(grpc.StatusCode.NOT_FOUND)
    assert "nope" in str(raised.value.message())


def test_http_config_matches_grpc(wine_server: ServerHandle) -> None:
    """`GET /v2/models/{name}/config` (tritonclient.http's get_model_config) gives the same
    config as the gRPC call, dims as numbers the way Triton writes them; unknown models 404."""
    import tritonclient.http as httpclient

    with grpcclient.InferenceServerClient(wine_server.url) as client:
        over_grpc = client.get_model_config(WINE_MODEL_NAME, as_json=True)["config"]
    client = httpclient.InferenceServerClient(f"127.0.0.1:{wine_server.http_port}")
    try:
        over_http = client.get_model_config(WINE_MODEL_NAME)
        with pytest.raises(InferenceServerException) as raised:
            client.get_model_config("nope")
    finally:
        client.close()
    assert over_http["input"][0]["dims"] == [1]
    for tensor in (*over_grpc["input"], *over_grpc["output"]):
        tensor["dims"] = [int(d) for d in tensor.get("dims", [])]
    assert over_http == over_grpc
    assert "nope" in str(raised.value.message())
