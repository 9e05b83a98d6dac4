"""A pyfunc model with a ParamSchema, for the MLflow scoring-protocol tests.

Saved beside the model through `code_paths`, like `pyfunc_models.py`. Its `output` param
picks the kind of object it returns, so one model shows how each kind is answered.
"""

from typing import Any

import pandas as pd
from mlflow.pyfunc.model import PythonModel, PythonModelContext


class ScaleModel(PythonModel):
    """Multiplies column `x` by the `factor` param and answers in the form `output` names."""

    def predict(
        self,
        context: PythonModelContext | None,
        model_input: pd.DataFrame,
        params: dict[str, Any] | None = None,
    ) -> Any:
        """Every answer kind MLflow's scoring server renders differently."""
        params = params or {}
        scaled = model_input["x"].to_numpy() * params.get("factor", 1.0)
        label = params.get("label", "none")
        output = params.get("output", "frame")
        if output == "frame":
            return pd.DataFrame({"y": scaled, "label": [label] * len(scaled)})
        if output == "series":
            return pd.Series(scaled, name="y")
        if output == "unnamed_series":
            return pd.Series(scaled)
        if output == "dict":
            return {"y": scaled, "twice": scaled * 2}
        if output == "array":
            return scaled
        if output == "list":
            return scaled.tolist()
        raise ValueError(f"unknown output kind {output!r}")
