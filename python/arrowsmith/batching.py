"""One runner thread per model: it takes whole batches from the model's native batcher
(where request threads wait without the interpreter lock), builds the model input,
predicts once, and hands the outputs back to be split by rows. If the model raises on a
batch of several requests, each request is retried alone so only the guilty one fails."""

from __future__ import annotations

import logging
import threading
import time
from typing import TYPE_CHECKING

from arrowsmith import _native, metrics
from arrowsmith.errors import ArrowsmithError
from arrowsmith.payload import batch_input, model_params
from arrowsmith.predictions import content_type, output_tensors, select_outputs
from arrowsmith.runner import predict

if TYPE_CHECKING:
    from arrowsmith.models.registry import LoadedModel

logger = logging.getLogger(__name__)


class ModelRunner:
    """Owns a model's batcher and the thread that drains it."""

    def __init__(self, model: LoadedModel, batcher: _native.Batcher) -> None:
        self.model = model
        self.batcher = batcher
        self._thread = threading.Thread(target=self._run, name=f"runner-{model.name}", daemon=True)
        self._metrics = metrics.BatchMetrics(model.name)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float) -> None:
        """Refuses new requests, lets queued ones finish, then ends the thread."""
        self.batcher.close()
        self._thread.join(timeout)

    def _run(self) -> None:
        while (batch := self.batcher.next_batch()) is not None:
            self._metrics.observe_batch(batch.rows(), batch.queue_waits(), self.batcher.depth)
            started = time.perf_counter()
            self.run_batch(batch)
            self._metrics.predict_time.observe(time.perf_counter() - started)

    def run_batch(self, batch: _native.Batch) -> None:
        """Predicts one batch and answers its requests; never raises."""
        try:
            payload, enforced = batch_input(batch, self.model)
            predictions = predict(self.model, payload, model_params(batch, self.model), enforced)
            outputs = output_tensors(predictions, [o.name for o in self.model.outputs])
            batch.complete(
                select_outputs(outputs, batch.requested_outputs),
                {"content_type": content_type(predictions)},
            )
        except Exception as error:
            if len(batch) > 1:
                logger.info(
                    "a batch of %d requests failed (%s); retrying one by one", len(batch), error
                )
                for single in batch.singles():
                    self.run_batch(single)
                return
            if isinstance(error, ArrowsmithError):
                batch.fail(error.code.value, error.message)
            else:
                logger.exception("unexpected failure predicting with %s", self.model.name)
                batch.fail("INTERNAL", f"internal error: {type(error).__name__}: {error}")
