"""The only caller of a model's `predict`: MLflow's refusals become INVALID_ARGUMENT, the
model's own exceptions MODEL_ERROR with the model's message. "Own exceptions" means all of
them: a `sys.exit()` or a `KeyboardInterrupt` raised in model code fails that call, not the
server (stop signals are handled on the main thread, never inside a model's call)."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from arrowsmith.errors import InvalidInputError, ModelError
from arrowsmith.models.fast_path import enforce_params

if TYPE_CHECKING:
    from arrowsmith.models.loaded import LoadedModel

logger = logging.getLogger(__name__)

#: MLflow error codes that mean "the input was wrong", not "the model failed".
_INPUT_ERROR_CODES = frozenset({"INVALID_PARAMETER_VALUE", "BAD_REQUEST"})


def predict(
    model: LoadedModel, payload: Any, params: dict[str, Any] | None, enforced: bool = False
) -> Any:
    """Predicts. `enforced`: the payload already conforms to the signature (the native side
    applied it), so models on the fast path skip MLflow's second enforcement."""
    from mlflow.exceptions import MlflowException

    try:
        if enforced and model.fast_predict is not None:
            return model.fast_predict(payload, params=enforce_params(params, model.pyfunc))
        if params:
            return model.pyfunc.predict(payload, params=params)
        return model.pyfunc.predict(payload)
    except MlflowException as error:
        if error.error_code in _INPUT_ERROR_CODES:
            raise InvalidInputError(error.message) from error
        raise ModelError(f"model '{model.name}' failed: {error.message}") from error
    except BaseException as error:
        # SystemExit, KeyboardInterrupt, GeneratorExit, a foreign extension's panic: raised
        # by the model's code on a runner thread, they end nothing but this call.
        logger.warning("model %s raised %s: %s", model.name, type(error).__name__, error)
        raise ModelError(f"model '{model.name}' failed: {type(error).__name__}: {error}") from error
