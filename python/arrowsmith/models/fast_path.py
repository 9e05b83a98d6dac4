"""The fast calls: once the native side has enforced a model's signature, MLflow's
`PyFuncModel.predict` would only enforce it a second time (in Python, per call, costlier
than many models themselves) and then call the flavor's predict function.

- `native-enforcement`: for the flavors listed here, Arrowsmith calls that function
  directly on the enforced DataFrame. A flavor joins the list only with a differential test
  proving identical predictions (tests/differential/test_fast_path.py).
- `estimator-block`: a scikit-learn estimator validates a fresh DataFrame at a cost that
  does not depend on its rows (~0.5 ms and more), an array at a fraction of it. When every
  column has one numeric type, the batch's rows x columns block is exactly the array the
  estimator would draw from that DataFrame, so the estimator is handed the block. Only for a
  model where a check at load proves the two calls bitwise identical, on its input example
  and on generated rows of several sizes (`prove_block_call`).
- `pyfunc`: every other model goes through `PyFuncModel.predict`.
"""

from __future__ import annotations

import dataclasses
import logging
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

#: pyfunc loader modules whose predict, after enforcement, is exactly `_predict_fn`.
FAST_PATH_LOADERS = frozenset({"mlflow.sklearn"})

FAST = "native-enforcement"
BLOCK = "estimator-block"
PYFUNC = "pyfunc"

#: MLflow column types the native side gathers into one block, and the block's dtype.
_BLOCK_DTYPES: dict[str, np.dtype[Any]] = {
    "double": np.dtype("<f8"),
    "float": np.dtype("<f4"),
    "long": np.dtype("<i8"),
    "integer": np.dtype("<i4"),
}

#: Row counts the proof tries: one row, a few, and sizes that take other kernels' paths.
_PROOF_ROWS = (1, 2, 7, 64, 1000)

#: scikit-learn's notice that an array has no column names, for an estimator fitted on a
#: DataFrame: the block's columns are checked against the fitted names at load instead.
_NO_FEATURE_NAMES = "X does not have valid feature names"


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


@dataclass(frozen=True)
class BlockCall:
    """The estimator's own predict, called on a batch's rows x columns block."""

    #: The signature's columns, in the block's order (the estimator's fitted order).
    columns: tuple[str, ...]
    dtype: np.dtype[Any]
    predict: Callable[[np.ndarray[Any, Any]], Any]
    #: The proof: blocks (columns x rows) and what the DataFrame call predicted on each.
    proof: tuple[tuple[np.ndarray[Any, Any], Any], ...] = ()

    def holds(self) -> bool:
        """Whether this call still predicts, bitwise, what its proof recorded."""
        return bool(self.proof) and all(
            _bitwise_equal(self.predict(values.T), expected) for values, expected in self.proof
        )


def block_call(
    pyfunc: Any, frame_predict: Callable[..., Any] | None, example: Any | None
) -> BlockCall | None:
    """The block call for a model, when the proof at load holds; None otherwise (the model
    keeps the DataFrame call). `frame_predict` is the flavor's predict on a DataFrame."""
    if frame_predict is None:
        return None
    candidate = _candidate(pyfunc)
    if candidate is None:
        return None
    try:
        proof = prove_block_call(candidate, frame_predict, example)
    except Exception as error:
        # Whatever fails in the proof (an estimator that wants names, say) keeps the frames.
        logger.info("the block call is not proven for this model: %s", error)
        return None
    return dataclasses.replace(candidate, proof=proof) if proof else None


def _candidate(pyfunc: Any) -> BlockCall | None:
    """The block call a model could take: an sklearn estimator behind MLflow's wrapper,
    called with `predict`, whose signature's columns share one numeric type and are the
    estimator's fitted columns in their fitted order (if it remembers them)."""
    schema = pyfunc.metadata.get_input_schema()
    if schema.is_tensor_spec() or not schema.has_input_names():
        return None
    dtypes = {_BLOCK_DTYPES.get(getattr(spec.type, "name", "")) for spec in schema.inputs}
    if len(dtypes) != 1 or any(not spec.required for spec in schema.inputs):
        return None
    (dtype,) = dtypes
    wrapper = getattr(pyfunc, "_model_impl", None)
    estimator = getattr(wrapper, "sklearn_model", None)
    predict_fn = getattr(pyfunc, "_predict_fn", None)
    if dtype is None or wrapper is None or estimator is None:
        return None
    if getattr(predict_fn, "__func__", None) is not getattr(type(wrapper), "predict", None):
        return None
    columns = tuple(schema.input_names())
    fitted = getattr(estimator, "feature_names_in_", None)
    if fitted is not None and tuple(fitted) != columns:
        return None
    return BlockCall(columns, dtype, estimator.predict)


def prove_block_call(
    call: BlockCall, frame_predict: Callable[..., Any], example: Any | None
) -> tuple[tuple[np.ndarray[Any, Any], Any], ...]:
    """The proof that the block call predicts bitwise what the DataFrame call predicts, on
    the input example and on generated rows (each block laid out as the native side lays a
    batch out: columns x rows, C order, seen transposed); empty where it does not hold."""
    import pandas as pd

    if _fitted_with_names(call):
        ignore_missing_feature_names()
    proof = []
    for values in _proof_blocks(call, example):
        frame = pd.DataFrame(values.T, columns=pd.Index(call.columns), copy=False)
        expected = frame_predict(frame)
        if not _bitwise_equal(call.predict(values.T), expected):
            return ()
        proof.append((values, expected))
    return tuple(proof)


def ignore_missing_feature_names() -> None:
    """Silences scikit-learn's notice for blocks, whose columns were checked at load."""
    warnings.filterwarnings("ignore", message=_NO_FEATURE_NAMES, category=UserWarning)


def _fitted_with_names(call: BlockCall) -> bool:
    estimator = getattr(call.predict, "__self__", None)
    return getattr(estimator, "feature_names_in_", None) is not None


def _proof_blocks(call: BlockCall, example: Any | None) -> Iterator[np.ndarray[Any, Any]]:
    """Blocks (columns x rows) to prove the call on: the input example's rows when it has
    the signature's columns, then generated rows around the example's magnitudes."""
    import pandas as pd

    center = np.zeros(len(call.columns))
    scale = np.ones(len(call.columns))
    if isinstance(example, pd.DataFrame) and set(call.columns) <= set(example.columns):
        rows = example[list(call.columns)].to_numpy(dtype=call.dtype)
        yield np.ascontiguousarray(rows.T)
        center = rows.astype("<f8").mean(axis=0)
        scale = np.abs(center) + 1.0
    generator = np.random.default_rng(20261201)
    for count in _PROOF_ROWS:
        drawn = center[:, None] + scale[:, None] * generator.standard_normal((center.size, count))
        if call.dtype.kind in "iu":
            drawn = np.round(drawn)
        yield np.ascontiguousarray(drawn.astype(call.dtype))


def _bitwise_equal(ours: Any, theirs: Any) -> bool:
    """Equal type, dtype, shape and bytes; only numeric arrays can be proven."""
    if not (isinstance(ours, np.ndarray) and isinstance(theirs, np.ndarray)):
        return False
    if ours.dtype != theirs.dtype or ours.shape != theirs.shape or ours.dtype.kind not in "biuf":
        return False
    return bool(ours.tobytes() == theirs.tobytes())


def enforce_params(params: dict[str, Any] | None, pyfunc: Any) -> dict[str, Any] | None:
    """MLflow's own ParamSchema enforcement (defaults filled, unknown params dropped with a
    warning, invalid ones refused), which the fast call must still apply."""
    from mlflow.models.utils import _enforce_params_schema

    schema = pyfunc.metadata.get_params_schema()
    if params is None and schema is None:
        return None
    enforced: dict[str, Any] | None = _enforce_params_schema(params, schema)
    return enforced
