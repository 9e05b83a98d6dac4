"""A served model as Triton's `ModelConfig`, the description perf_analyzer needs before it
sends a request and tritonclient's `get_model_config` returns.

Triton's batching convention: with `max_batch_size > 0` every input and output has a leading
batch dimension that `dims` leave out, and clients (perf_analyzer among them) put it back in
front. Our tensors are described with a leading -1 (rows) exactly when the model takes any
number of rows, so a model whose inputs and outputs all start with -1 is reported as
batching, with that dimension dropped; any other model as `max_batch_size` 0 with its shapes
whole, which keeps clients from adding a dimension the model does not have."""

from __future__ import annotations

from arrowsmith._proto import grpc_service_pb2 as pb
from arrowsmith.models.loaded import LoadedModel
from arrowsmith.models.signature import TensorMetadata

#: Platform name, as ModelMetadata reports it.
PLATFORM = "mlflow"


def data_type(datatype: str) -> str:
    """The name of Triton's `DataType` for a V2 datatype; BYTES is TYPE_STRING there."""
    return "TYPE_STRING" if datatype == "BYTES" else f"TYPE_{datatype}"


def takes_batches(model: LoadedModel) -> bool:
    """Whether every input and output has a leading dimension of rows."""
    return all(t.shape[:1] == (-1,) for t in (*model.inputs, *model.outputs))


def model_config(model: LoadedModel) -> pb.ModelConfig:
    """The model's config. `dynamic_batching` is always there: every request goes through
    the model's batcher, which waits up to --max-batch-delay-ms for company."""
    batched = takes_batches(model)

    def dims(tensor: TensorMetadata) -> list[int]:
        return list(tensor.shape[1:] if batched else tensor.shape)

    return pb.ModelConfig(
        name=model.name,
        platform=PLATFORM,
        max_batch_size=model.config.max_batch_size if batched else 0,
        input=[
            pb.ModelInput(name=t.name, data_type=data_type(t.datatype), dims=dims(t))
            for t in model.inputs
        ],
        output=[
            pb.ModelOutput(name=t.name, data_type=data_type(t.datatype), dims=dims(t))
            for t in model.outputs
        ],
        dynamic_batching=pb.ModelDynamicBatching(
            max_queue_delay_microseconds=round(model.config.max_batch_delay_ms * 1000)
        ),
    )
