"""The models this server holds, by name: loading, warm-up and readiness. Knows no
transport."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from arrowsmith import _native
from arrowsmith.config import ModelConfig
from arrowsmith.errors import ModelNotFoundError, ModelNotReadyError
from arrowsmith.models import fast_path, loader
from arrowsmith.models.signature import (
    TensorMetadata,
    default_content_type,
    native_signature,
    tensor_metadata,
)
from arrowsmith.models.warmup import warm_up

if TYPE_CHECKING:
    from arrowsmith.batching import ModelRunner, RunnerWatch

logger = logging.getLogger(__name__)


@dataclass
class LoadedModel:
    """A pyfunc model with what the data path needs of its MLflow metadata."""

    name: str
    version: str
    uri: str
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
    runner: ModelRunner | None = None
    ready: bool = field(default=False)

    @property
    def versions(self) -> list[str]:
        return [self.version] if self.version else []

    @property
    def predict_path(self) -> str:
        return fast_path.FAST if self.fast_predict is not None else fast_path.PYFUNC

    @property
    def properties(self) -> dict[str, str]:
        """Model-level metadata: the MLflow flavor, the default content type, the path."""
        properties = {
            "mlflow_loader_module": str(self.pyfunc.loader_module),
            "predict_path": self.predict_path,
        }
        content_type = default_content_type(self.input_schema)
        if content_type is not None:
            properties["content_type"] = content_type
        return properties


def load_model(config: ModelConfig, watch: RunnerWatch | None = None) -> LoadedModel:
    """Loads, describes and warms up one model, then starts its batcher; its runner reports
    to `watch` (which also times its calls) when given."""
    from arrowsmith.batching import ModelRunner

    uri, name = config.uri, config.name
    source = loader.resolve(uri)
    path = loader.local_copy(source)
    pyfunc = loader.load_pyfunc(path)
    metadata = pyfunc.metadata
    input_schema = metadata.get_input_schema()
    params_schema = metadata.get_params_schema()
    model = LoadedModel(
        name=name or source.default_name,
        version=source.version,
        uri=uri,
        pyfunc=pyfunc,
        input_schema=input_schema,
        signature=native_signature(input_schema) if input_schema is not None else None,
        inputs=tensor_metadata(input_schema, "input"),
        outputs=tensor_metadata(metadata.get_output_schema(), "output"),
        param_names=(
            frozenset(p.name for p in params_schema.params) if params_schema is not None else None
        ),
        config=config,
        fast_predict=fast_path.flavor_predict(pyfunc),
    )
    warm_up(model, loader.input_example(pyfunc, path))
    batcher = _native.Batcher(
        model.name,
        model.version,
        config.max_batch_size,
        config.max_batch_delay_ms,
        config.max_queue_size,
    )
    model.runner = ModelRunner(model, batcher, watch)
    model.runner.start()
    model.ready = True
    logger.info(
        "model %s (version %s) from %s is ready: %d inputs, %d outputs, predict path %s",
        model.name,
        model.version or "-",
        uri,
        len(model.inputs),
        len(model.outputs),
        model.predict_path,
    )
    return model


class ModelRegistry:
    """Name -> model. Lookups are lock-free reads of a dict replaced whole on change."""

    def __init__(self, expected: list[str]) -> None:
        #: Names the server was asked to serve; it is ready only when all of them are.
        self._expected = list(expected)
        self._models: dict[str, LoadedModel] = {}
        self._lock = threading.Lock()

    def add(self, model: LoadedModel) -> None:
        with self._lock:
            self._models = {**self._models, model.name: model}

    @property
    def ready(self) -> bool:
        models = self._models
        return bool(self._expected) and all(
            name in models and models[name].ready for name in self._expected
        )

    def names(self) -> list[str]:
        return list(self._models)

    def models(self) -> list[LoadedModel]:
        return list(self._models.values())

    def begin_stop(self) -> None:
        """The server is stopping: every model turns not ready at once (queued and running
        requests are still answered)."""
        for model in self._models.values():
            if model.runner is not None:
                model.runner.begin_stop()
            model.ready = False

    def stop(self, timeout: float) -> None:
        """Stops every model's batcher; queued requests are answered first."""
        self.begin_stop()
        for model in self._models.values():
            if model.runner is not None:
                model.runner.stop(timeout)

    def get(self, name: str, version: str = "") -> LoadedModel:
        """The named model; NOT_FOUND for an unknown name or version, UNAVAILABLE while it
        loads."""
        model = self._models.get(name)
        if model is None:
            if name in self._expected:
                raise ModelNotReadyError(f"model '{name}' is loading and not ready yet")
            known = ", ".join(f"'{n}'" for n in self._models) or "none"
            raise ModelNotFoundError(f"model '{name}' is not served here (models: {known})")
        if version and version != model.version:
            raise ModelNotFoundError(
                f"model '{name}' has no version '{version}' here "
                f"(served version: '{model.version or 'unversioned'}')"
            )
        if not model.ready:
            raise ModelNotReadyError(f"model '{name}' is not ready yet")
        return model
