"""The only caller of a model's `predict`: MLflow's refusals become INVALID_ARGUMENT, the
model's own exceptions MODEL_ERROR with the model's message. "Own exceptions" means all of
them: a `sys.exit()` or a `KeyboardInterrupt` raised in model code fails that call, not the
server (stop signals are handled on the main thread, never inside a model's call)."""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Iterator
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
    with _model_call(model):
        if enforced and model.fast_predict is not None:
            return model.fast_predict(payload, params=enforce_params(params, model.pyfunc))
        if params:
            return model.pyfunc.predict(payload, params=params)
        return model.pyfunc.predict(payload)


def predict_block(model: LoadedModel, block: Any, params: dict[str, Any] | None) -> Any:
    """Predicts with the model's proven block call (models/fast_path.py) on an enforced
    batch's rows x columns block. Params the request sent are still judged by MLflow's
    ParamSchema rules (which refuse only params sent), though the flavor ignores them."""
    call = model.block_call
    assert call is not None
    with _model_call(model):
        if params:
            enforce_params(params, model.pyfunc)
        return call.predict(block)


@contextlib.contextmanager
def _model_call(model: LoadedModel) -> Iterator[None]:
    """MLflow's refusals as InvalidInputError, anything else raised as ModelError."""
    try:
        yield
    except BaseException as error:
        refusal = _mlflow_exception(error)
        if refusal is not None:
            if refusal.error_code in _INPUT_ERROR_CODES:
                raise InvalidInputError(refusal.message) from error
            raise ModelError(f"model '{model.name}' failed: {refusal.message}") from error
        # SystemExit, KeyboardInterrupt, GeneratorExit, a foreign extension's panic: raised
        # by the model's code on a runner thread, they end nothing but this call.
        logger.warning("model %s raised %s: %s", model.name, type(error).__name__, error)
        raise ModelError(f"model '{model.name}' failed: {type(error).__name__}: {error}") from error


def _mlflow_exception(error: BaseException) -> Any | None:
    """`error` if MLflow raised it, else None. A call that never imported MLflow (a model
    restored from a snapshot, on its block call) cannot have, and need not import it to
    know."""
    exceptions = sys.modules.get("mlflow.exceptions")
    if exceptions is not None and isinstance(error, exceptions.MlflowException):
        return error
    return None
