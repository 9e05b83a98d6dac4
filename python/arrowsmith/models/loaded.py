"""A loaded model: the pyfunc and what the data path needs of its MLflow metadata, as plain
data, and how one is made (resolve, download, load, describe, warm up). Knows no batching
and no transport."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from arrowsmith import _native
from arrowsmith.config import ModelConfig
from arrowsmith.environments.local import warn_differences
from arrowsmith.environments.running import check_fits
from arrowsmith.models import deferred, fast_path, loader, snapshot
from arrowsmith.models.signature import (
    TensorMetadata,
    default_content_type,
    native_signature,
    tensor_metadata,
)
from arrowsmith.models.warmup import warm_up

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class LoadedModel:
    """One version of a model, loaded and warmed up."""

    name: str
    version: str
    #: The URI as configured, and the one loaded (registry references pinned to a version).
    uri: str
    pinned_uri: str
    pyfunc: Any
    #: The MLflow input schema and its native form; None when the model has no signature.
    input_schema: Any | None
    signature: _native.Signature | None
    inputs: list[TensorMetadata]
    outputs: list[TensorMetadata]
    #: Names of the params the model's ParamSchema declares (None: no ParamSchema).
    param_names: frozenset[str] | None
    #: The settings it is served with (batch size, delay, queue), for clients that ask.
    config: ModelConfig
    #: The flavor's predict function, called directly once the signature is enforced
    #: natively; None: every call goes through `PyFuncModel.predict`.
    fast_predict: Callable[..., Any] | None = None
    #: The estimator's own predict on a batch's block, where proven at load (fast_path.py).
    block_call: fast_path.BlockCall | None = None
    #: Where its files are (a download is deleted when the version is unloaded).
    local_copy: loader.LocalCopy | None = None
    #: The pyfunc flavor's loader module (`mlflow.sklearn`, ...).
    loader_module: str = ""
    #: The form it takes its input in, as MLServer names it (`pd`, `np`, `dict`); None
    #: without a signature.
    content_type: str | None = None

    @property
    def versions(self) -> list[str]:
        return [self.version] if self.version else []

    @property
    def predict_path(self) -> str:
        if self.block_call is not None:
            return fast_path.BLOCK
        return fast_path.FAST if self.fast_predict is not None else fast_path.PYFUNC

    @property
    def properties(self) -> dict[str, str]:
        """Model-level metadata: the MLflow flavor, the default content type, the path."""
        properties = {
            "mlflow_loader_module": self.loader_module,
            "predict_path": self.predict_path,
        }
        if self.content_type is not None:
            properties["content_type"] = self.content_type
        return properties


def load_model(
    config: ModelConfig,
    source: loader.ModelSource | None = None,
    fatal: Callable[[str], None] | None = None,
) -> LoadedModel:
    """Loads, describes and warms up one model: `config.uri`, or the version `source`
    already resolved it to. `fatal(reason)`: called if a model restored from its snapshot
    then fails MLflow's own load (models/deferred.py), for the process to be replaced; the
    snapshot is dropped first, so the next start loads in full and fails as MLflow does."""
    source = source if source is not None else loader.resolve(config.uri)
    copy = loader.local_copy(source)
    try:
        # Only a local folder served in this environment has a snapshot.
        local = copy.download is None and config.env_manager == "local"
        kept_at = snapshot.place(copy.path) if local else None
        restored = _restored(config, source, copy, kept_at, fatal) if kept_at is not None else None
        if restored is not None:
            return restored
        model = _describe(config, source, copy)
    except BaseException:
        copy.remove()
        raise
    if kept_at is not None:
        snapshot.keep(model, kept_at)
    return model


def _restored(
    config: ModelConfig,
    source: loader.ModelSource,
    copy: loader.LocalCopy,
    kept_at: Path,
    fatal: Callable[[str], None] | None,
) -> LoadedModel | None:
    """The model from its snapshot at `kept_at` (models/snapshot.py), serving its block
    call at once while MLflow's model object loads on a thread of its own; None without a
    sound snapshot."""
    steps = _Steps()
    found = snapshot.restore(kept_at)
    if found is None:
        return None
    steps.done("snapshot read and checked")
    name = config.name or source.default_name
    warn_differences(name, copy.path)

    def failed(reason: str) -> None:
        snapshot.forget(kept_at)
        if fatal is not None:
            fatal(reason)

    pyfunc = deferred.DeferredLoad(
        f"model {name}", lambda: loader.load_pyfunc(copy.path), on_failure=failed
    )
    pyfunc.start()
    model = LoadedModel(
        name=name,
        version=source.version or config.version or "",
        uri=config.uri,
        pinned_uri=source.pinned_uri,
        pyfunc=deferred.Deferred(pyfunc.value),
        input_schema=deferred.Deferred(lambda: pyfunc.value().metadata.get_input_schema()),
        signature=found.signature,
        inputs=found.inputs,
        outputs=found.outputs,
        param_names=found.param_names,
        config=config,
        fast_predict=deferred.Deferred(lambda: pyfunc.value()._predict_fn),
        block_call=found.call,
        local_copy=copy,
        loader_module=found.loader_module,
        content_type=found.content_type,
    )
    logger.info(
        "model %s (version %s) from %s is restored from its snapshot: predict path %s (%s)",
        model.name,
        model.version or "-",
        source.pinned_uri,
        model.predict_path,
        steps,
    )
    return model


def _describe(
    config: ModelConfig, source: loader.ModelSource, copy: loader.LocalCopy
) -> LoadedModel:
    path = copy.path
    steps = _Steps()
    if config.env_manager == "local":
        warn_differences(config.name or source.default_name, path)
    else:
        check_fits(config.name or source.default_name, source.version, path)
    pyfunc = loader.load_pyfunc(path)
    steps.done("MLflow's load")
    metadata = pyfunc.metadata
    input_schema = metadata.get_input_schema()
    params_schema = metadata.get_params_schema()
    if config.version and source.version and config.version != source.version:
        raise ValueError(
            f"{config.uri} is version {source.version} in the registry, not {config.version}"
        )
    fast_predict = fast_path.flavor_predict(pyfunc)
    example = loader.input_example(pyfunc, path)
    block_call = fast_path.block_call(pyfunc, fast_predict, example)
    steps.done("input example and proof")
    model = LoadedModel(
        name=config.name or source.default_name,
        version=source.version or config.version or "",
        uri=config.uri,
        pinned_uri=source.pinned_uri,
        pyfunc=pyfunc,
        input_schema=input_schema,
        signature=native_signature(input_schema) if input_schema is not None else None,
        inputs=tensor_metadata(input_schema, "input"),
        outputs=tensor_metadata(metadata.get_output_schema(), "output"),
        param_names=(
            frozenset(p.name for p in params_schema.params) if params_schema is not None else None
        ),
        config=config,
        fast_predict=fast_predict,
        block_call=block_call,
        local_copy=copy,
        loader_module=str(pyfunc.loader_module),
        content_type=default_content_type(input_schema),
    )
    warm_up(model, example)
    steps.done("warm-up")
    logger.info(
        "model %s (version %s) from %s is loaded: %d inputs, %d outputs, predict path %s (%s)",
        model.name,
        model.version or "-",
        source.pinned_uri,
        len(model.inputs),
        len(model.outputs),
        model.predict_path,
        steps,
    )
    return model


class _Steps:
    """How long each step of a load took, for its log line."""

    def __init__(self) -> None:
        self._last = time.monotonic()
        self._parts: list[str] = []

    def done(self, step: str) -> None:
        now = time.monotonic()
        self._parts.append(f"{step} {now - self._last:.2f} s")
        self._last = now

    def __str__(self) -> str:
        return ", ".join(self._parts)
