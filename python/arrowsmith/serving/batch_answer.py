"""What a batch means to an MLflow model: its requests' inputs as the model's input, one
prediction, and the outputs the requests asked for. The runner calls it per batch."""

from __future__ import annotations

from typing import Any

from arrowsmith import _native
from arrowsmith.batching.runner import AnswerBatch
from arrowsmith.models.loaded import LoadedModel
from arrowsmith.models.predict import predict, predict_block
from arrowsmith.payload import batch_input, estimator_block, model_params
from arrowsmith.predictions import content_type, output_tensors, select_outputs


def batch_answerer(model: LoadedModel) -> AnswerBatch:
    """The runner's callable for `model`."""
    output_names = [o.name for o in model.outputs]

    def answer(batch: _native.Batch) -> tuple[list[Any], dict[str, str]]:
        params = model_params(batch, model)
        block = estimator_block(batch, model)
        if block is not None:
            predictions = predict_block(model, block, params)
        else:
            payload, enforced = batch_input(batch, model)
            predictions = predict(model, payload, params, enforced)
        outputs = output_tensors(predictions, output_names)
        return (
            select_outputs(outputs, batch.requested_outputs),
            {"content_type": content_type(predictions)},
        )

    return answer
