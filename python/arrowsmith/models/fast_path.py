"""The fast call: once the native side has enforced a model's signature, MLflow's
`PyFuncModel.predict` would only enforce it a second time (in Python, per call, costlier
than many models themselves) and then call the flavor's predict function. For the flavors
listed here, Arrowsmith calls that function directly. A flavor joins the list only with a
differential test proving identical predictions (tests/differential/test_fast_path.py);
every other model goes through `PyFuncModel.predict`."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

#: pyfunc loader modules whose predict, after enforcement, is exactly `_predict_fn`.
FAST_PATH_LOADERS = frozenset({"mlflow.sklearn"})

FAST = "native-enforcement"
PYFUNC = "pyfunc"


def flavor_predict(pyfunc: Any) -> Callable[..., Any] | None:
    """The flavor's own predict function when the fast call is proven for this model."""
    metadata = pyfunc.metadata
    if pyfunc.loader_module not in FAST_PATH_LOADERS or metadata.get_input_schema() is None:
        return None
    # Signatures from type hints or examples get conversions of their own in MLflow.
    if metadata._is_signature_from_type_hint() or metadata._is_type_hint_from_example():
        return None
    predict_fn: Callable[..., Any] | None = getattr(pyfunc, "_predict_fn", None)
    return predict_fn


def enforce_params(params: dict[str, Any] | None, pyfunc: Any) -> dict[str, Any] | None:
    """MLflow's own ParamSchema enforcement (defaults filled, unknown params dropped with a
    warning, invalid ones refused), which the fast call must still apply."""
    from mlflow.models.utils import _enforce_params_schema

    schema = pyfunc.metadata.get_params_schema()
    if params is None and schema is None:
        return None
    enforced: dict[str, Any] | None = _enforce_params_schema(params, schema)
    return enforced
