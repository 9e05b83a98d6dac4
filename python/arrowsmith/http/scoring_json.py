"""MLflow's scoring server as the `/invocations` front uses it: the module, imported on
first use, and its answers' JSON written as it writes them."""

from __future__ import annotations

import functools
import importlib
import json
from typing import Any


@functools.cache
def scoring_server() -> Any:
    """MLflow's scoring server module (untyped), imported on first use: MLflow is heavy, and
    the model loader imports it anyway."""
    return importlib.import_module("mlflow.pyfunc.scoring_server")


def render(predictions: Any, unwrapped: bool) -> bytes:
    """The bytes of MLflow's `predictions_to_json` (`unwrapped_predictions_to_json`): its
    JSON-able object and its encoder, written by `json.dumps`, whose C encoder gives in one
    pass what `json.dump` streams through the pure-Python one (a few times slower)."""
    server = scoring_server()
    jsonable = server._get_jsonable_obj(predictions, pandas_orient="records")
    document = jsonable if unwrapped else {"predictions": jsonable}
    return json.dumps(document, cls=server.NumpyEncoder).encode()
