"""Pyfunc models for the batching tests, saved beside each model through `code_paths`.

Each row carries a client-chosen `row_id` that the model echoes back, so a test can tell
exactly which rows reached which answer. Two payload values steer the model from the
client: a HOLD row keeps it busy long enough for later requests to queue behind it (making
batching certain instead of likely), and a POISON row makes it raise.
"""

import sys
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
# For UnrulyEchoModel: a row with this payload makes it call sys.exit(), or raise
# KeyboardInterrupt; a payload of SLEEP_BASE + s makes it sleep s seconds.
EXIT_PAYLOAD = -3.0
INTERRUPT_PAYLOAD = -4.0
SLEEP_BASE = 1000.0
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


class UnrulyEchoModel(EchoRowIdModel):
    """The echo model with model code that misbehaves on request: `sys.exit()`, a
    KeyboardInterrupt, or a call that takes as long as the client asks."""

    def predict(
        self,
        context: PythonModelContext | None,
        model_input: pd.DataFrame,
        params: dict[str, Any] | None = None,
    ) -> pd.DataFrame:
        """Exits or interrupts on those payloads, naming the row; sleeps on SLEEP_BASE + s."""
        ids = model_input[ROW_ID].to_numpy()
        payload = model_input[PAYLOAD].to_numpy()
        exits = ids[payload == EXIT_PAYLOAD]
        if len(exits):
            sys.exit(f"row {exits[0]} asked the model to exit")
        interrupts = ids[payload == INTERRUPT_PAYLOAD]
        if len(interrupts):
            raise KeyboardInterrupt(f"row {interrupts[0]} interrupted the model")
        sleeps = payload[payload >= SLEEP_BASE]
        if len(sleeps):
            time.sleep(float(sleeps.max()) - SLEEP_BASE)
            return pd.DataFrame(
                {
                    ROW_ID: ids.copy(),
                    TWICE: payload * 2,
                    BATCH_ROWS: np.full(len(ids), len(ids), dtype=np.int64),
                }
            )
        return super().predict(context, model_input, params)
