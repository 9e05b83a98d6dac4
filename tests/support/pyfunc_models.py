"""Small custom pyfunc models for the end-to-end tests.

They live in their own module, saved beside each model through `code_paths`, because the
server is a separate process: it must import this module when it unpickles the models.
Their answers are trivial to recompute, so a test can check the server's data path exactly.
"""

from typing import Any

import numpy as np
import pandas as pd
from mlflow.pyfunc.model import PythonModel, PythonModelContext


class PixelSumModel(PythonModel):
    """Takes a batch of uint8 8x8 images and answers each image's pixel sum as int64."""

    def predict(
        self,
        context: PythonModelContext | None,
        model_input: np.ndarray,
        params: dict[str, Any] | None = None,
    ) -> np.ndarray:
        """Sum per image: a tensor-signature model whose output is easy to check."""
        sums: np.ndarray = model_input.reshape(len(model_input), -1).astype(np.int64).sum(axis=1)
        return sums


class UpperCaseModel(PythonModel):
    """Upper-cases the `text` column into an `upper` column: strings in, strings out."""

    def predict(
        self,
        context: PythonModelContext | None,
        model_input: pd.DataFrame,
        params: dict[str, Any] | None = None,
    ) -> pd.DataFrame:
        """A DataFrame answer, so the server must encode a named BYTES output column."""
        return pd.DataFrame({"upper": model_input["text"].str.upper()})


class EchoFrameModel(PythonModel):
    """Saved without a signature: answers whatever columns it is given, as they are, so a
    test sees exactly which request's values reached which answer."""

    def predict(
        self,
        context: PythonModelContext | None,
        model_input: pd.DataFrame,
        params: dict[str, Any] | None = None,
    ) -> pd.DataFrame:
        """The input frame, unchanged."""
        return pd.DataFrame(model_input)
