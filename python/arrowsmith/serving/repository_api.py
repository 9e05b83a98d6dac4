"""Triton's model repository API (index, load, unload) over the repository, for the gRPC
and REST fronts, and the receiver of MLflow's webhooks.

Load takes the model's URI in the `uri` parameter, or a JSON model configuration (our
`--config` entry: uri, max_batch_size, versions, ...) in `config`, the parameter
tritonclient's `load_model(name, config=...)` sends; without either, a model the
configuration names is loaded again (its reference looked up anew). Whether clients may
load and unload at all is `--model-control-mode`'s to say."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

from arrowsmith.config import ModelConfig
from arrowsmith.errors import (
    InvalidInputError,
    ModelNotFoundError,
    UnsupportedError,
)
from arrowsmith.serving import webhooks
from arrowsmith.serving.follower import RegistryFollower
from arrowsmith.serving.repository import IndexEntry, ModelRepository

logger = logging.getLogger(__name__)

#: Model configuration keys a load's `config` parameter may give.
CONFIG_KEYS = ("uri", "max_batch_size", "max_batch_delay_ms", "max_queue_size", "versions")

_REFUSALS = {
    "none": "loading and unloading models is off here (--model-control-mode none); "
    "start the server with --model-control-mode explicit to allow it",
    "poll": "explicit load and unload are not allowed while the server follows the registry "
    "by polling (--model-control-mode poll)",
}


class RepositoryApi:
    def __init__(
        self,
        repository: ModelRepository,
        follower: RegistryFollower | None,
        control_mode: str,
        webhook_secret: str | None,
        on_webhook: Callable[[], None] | None = None,
    ) -> None:
        self._repository = repository
        self._follower = follower
        self._control_mode = control_mode
        self._webhook_secret = webhook_secret
        #: Called after a webhook asked to look at the registry (workers tell each other).
        self._on_webhook = on_webhook

    # Index, load, unload --------------------------------------------------------------

    def index(self, ready_only: bool = False) -> list[IndexEntry]:
        return self._repository.index(ready_only)

    def load(self, name: str, parameters: Mapping[str, Any]) -> None:
        self._check_control()
        if not name:
            raise InvalidInputError("a load needs the model's name")
        config = self._load_config(name, parameters)
        logger.info("loading model %s from %s, as a client asked", name, config.uri)
        # A configuration given by the client replaces the model's whole; none given loads
        # again what the server was configured with.
        given = "uri" in parameters or "config" in parameters
        self._repository.load(config, beside=() if given else None)

    def unload(self, name: str) -> None:
        self._check_control()
        if not name:
            raise InvalidInputError("an unload needs the model's name")
        logger.info("unloading model %s, as a client asked", name)
        self._repository.unload(name, "unloaded by request")

    def _check_control(self) -> None:
        refusal = _REFUSALS.get(self._control_mode)
        if refusal is not None:
            raise UnsupportedError(refusal)

    def _load_config(self, name: str, parameters: Mapping[str, Any]) -> ModelConfig:
        settings: dict[str, Any] = {}
        if "config" in parameters:
            settings = _config_parameter(parameters["config"])
        if "uri" in parameters:
            uri = parameters["uri"]
            if not isinstance(uri, str) or not uri:
                raise InvalidInputError("the 'uri' parameter must be a model URI (a string)")
            settings["uri"] = uri
        if "uri" not in settings:
            known = self._repository.config(name)
            if known is None:
                raise ModelNotFoundError(
                    f"model '{name}' is not in the configuration: give its URI in the 'uri' "
                    "parameter"
                )
            if not settings:
                return known
            settings = {**_settings_of(known), **settings}
        if "versions" in settings:
            versions = settings["versions"]
            if not isinstance(versions, list | tuple):
                raise InvalidInputError("`versions` must be a list of version numbers")
            settings["versions"] = tuple(str(v) for v in versions)
        try:
            return ModelConfig(**{**settings, "name": name})
        except (TypeError, ValueError) as error:
            raise InvalidInputError(
                f"the configuration of '{name}' is not valid: {error}"
            ) from None

    # The gRPC front's handler ---------------------------------------------------------

    def grpc(self, method: str, request: bytes) -> bytes:
        """Answers RepositoryIndex, RepositoryModelLoad and RepositoryModelUnload, from the
        serialized request to the serialized response."""
        from arrowsmith._proto import grpc_service_pb2 as pb

        if method == "RepositoryIndex":
            index_request = pb.RepositoryIndexRequest.FromString(request)
            entries = self.index(index_request.ready)
            response = pb.RepositoryIndexResponse(
                models=[
                    pb.RepositoryIndexResponse.ModelIndex(
                        name=e.name, version=e.version, state=e.state, reason=e.reason
                    )
                    for e in entries
                ]
            )
            return bytes(response.SerializeToString())
        if method == "RepositoryModelLoad":
            load = pb.RepositoryModelLoadRequest.FromString(request)
            self.load(load.model_name, _parameters(load.parameters))
            return bytes(pb.RepositoryModelLoadResponse().SerializeToString())
        if method == "RepositoryModelUnload":
            unload = pb.RepositoryModelUnloadRequest.FromString(request)
            self.unload(unload.model_name)
            return bytes(pb.RepositoryModelUnloadResponse().SerializeToString())
        raise UnsupportedError(f"no repository method {method}")

    # MLflow's webhooks ----------------------------------------------------------------

    def webhook(self, body: bytes, headers: Mapping[str, str]) -> str:
        """Verifies an MLflow webhook delivery and, for an event that can move a followed
        reference, has the registry looked at now; returns what was done. Raises
        webhooks.WebhookRefused."""
        if self._webhook_secret is None:
            raise webhooks.WebhookRefused(
                403, "webhooks are off here: start the server with --webhook-secret"
            )
        webhooks.verify(self._webhook_secret, body, headers, time.time())
        event = webhooks.parse(body)
        if not event.moves_references or self._follower is None:
            return "ignored"
        logger.info(
            "webhook: %s.%s for %s version %s",
            event.entity,
            event.action,
            event.registered_name or "-",
            event.version or "-",
        )
        self._follower.check_now(event.registered_name or None)
        if self._on_webhook is not None:
            self._on_webhook()
        return "checking"


def _settings_of(config: ModelConfig) -> dict[str, Any]:
    return {key: getattr(config, key) for key in CONFIG_KEYS}


def _config_parameter(value: Any) -> dict[str, Any]:
    """The `config` parameter: a JSON object of model settings."""
    try:
        document = json.loads(value) if isinstance(value, str | bytes) else None
    except ValueError as error:
        raise InvalidInputError(f"the 'config' parameter is not JSON: {error}") from None
    if not isinstance(document, dict):
        raise InvalidInputError("the 'config' parameter must be a JSON object of model settings")
    unknown = sorted(set(document) - set(CONFIG_KEYS))
    if unknown:
        raise InvalidInputError(
            f"the 'config' parameter has unknown settings {unknown} (known: {list(CONFIG_KEYS)})"
        )
    return document


def _parameters(parameters: Any) -> dict[str, Any]:
    """A protobuf map of ModelRepositoryParameter as plain values."""
    values: dict[str, Any] = {}
    for key, parameter in parameters.items():
        choice = parameter.WhichOneof("parameter_choice")
        values[key] = getattr(parameter, choice) if choice is not None else None
    return values
