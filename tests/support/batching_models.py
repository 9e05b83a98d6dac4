"""Pyfunc models for the batching tests, saved beside each model through `code_paths`.

Each row carries a client-chosen `row_id` that the model echoes back, so a test can tell
exactly which rows reached which answer. Two payload values steer the model from the
client: a HOLD row keeps it busy long enough for later requests to queue behind it (making
batching certain instead of likely), and a POISON row makes it raise.
"""

import time
from typing import Any

import numpy as np
import pandas as pd
from mlflow.pyfunc.model import PythonModel, PythonModelContext

ROW_ID = "row_id"
PAYLOAD = "payload"
TWICE = "twice"
# Rows in the model call that answered this row: how a client sees what it was batched with.
BATCH_ROWS = "batch_rows"

HOLD_PAYLOAD = -2.0
POISON_PAYLOAD = -1.0
HOLD_SECONDS = 1.0
# Every call sleeps a little, so concurrent requests pile up while the model is busy.
CALL_SECONDS = 0.003


class EchoRowIdModel(PythonModel):
    """Answers each row's id, twice its payload, and the number of rows of the call."""

    def predict(
        self,
        context: PythonModelContext | None,
        model_input: pd.DataFrame,
        params: dict[str, Any] | None = None,
    ) -> pd.DataFrame:
        """Raises on a poison row, naming it; sleeps longer when a hold row is present."""
        ids = model_input[ROW_ID].to_numpy()
        payload = model_input[PAYLOAD].to_numpy()
        poisoned = ids[payload == POISON_PAYLOAD]
        if len(poisoned):
            raise ValueError(f"poison row {poisoned[0]} refused")
        time.sleep(HOLD_SECONDS if (payload == HOLD_PAYLOAD).any() else CALL_SECONDS)
        return pd.DataFrame(
            {
                ROW_ID: ids.copy(),
                TWICE: payload * 2,
                BATCH_ROWS: np.full(len(ids), len(ids), dtype=np.int64),
            }
        )


class DropLastRowModel(EchoRowIdModel):
    """A broken model: one row too few in every answer, so a batch's rows cannot be split."""

    def predict(
        self,
        context: PythonModelContext | None,
        model_input: pd.DataFrame,
        params: dict[str, Any] | None = None,
    ) -> pd.DataFrame:
        """The echo answer without its last row."""
        return super().predict(context, model_input, params).iloc[:-1]
