"""From a model URI to a loaded pyfunc model: a local folder, `file:`, `runs:/`, or the
Model Registry (`models:/Name/3`, `models:/Name/Production`, `models:/Name/latest`,
`models:/Name@alias`). Registry URIs are pinned to the version they resolve to, so the
version served is the version reported. MLflow is imported here and nowhere earlier."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelSource:
    """Where a model comes from and what it is called by default."""

    uri: str
    #: The URI actually loaded: registry references pinned to a version number.
    pinned_uri: str
    default_name: str
    #: The registry version, or "" for models outside the registry.
    version: str


def _registry_version(name: str, reference: str) -> str:
    """The version number a registry reference (`3`, `latest`, a stage) stands for."""
    from mlflow import MlflowClient

    if reference.isdigit():
        return reference
    client = MlflowClient()
    if reference.lower() == "latest":
        versions = client.search_model_versions(f"name='{name}'")
    else:
        versions = client.get_latest_versions(name, stages=[reference])
    if not versions:
        raise ValueError(f"registered model '{name}' has no version for '{reference}'")
    return str(max(int(v.version) for v in versions))


def default_name(uri: str) -> str:
    """The name a model is served under unless one is given: the registered model's name,
    else the model folder's (or run artifact's) name. Parses only; no registry call."""
    if uri.startswith("models:/"):
        reference = uri.removeprefix("models:/").strip("/")
        return reference.split("@", 1)[0].split("/", 1)[0]
    if uri.startswith("runs:/"):
        path = urlparse(uri).path.strip("/")
        return path.rsplit("/", 1)[-1] or "model"
    return _local_path(uri).name


def _local_path(uri: str) -> Path:
    path = unquote(urlparse(uri).path) if uri.startswith("file:") else uri
    return Path(path).expanduser().resolve()


def resolve(uri: str) -> ModelSource:
    """Names and pins a model URI; registry look-ups need MLFLOW_TRACKING_URI."""
    if uri.startswith("models:/"):
        reference = uri.removeprefix("models:/").strip("/")
        if "@" in reference:
            from mlflow import MlflowClient

            name, alias = reference.split("@", 1)
            version = str(MlflowClient().get_model_version_by_alias(name, alias).version)
        elif "/" in reference:
            name, ref = reference.split("/", 1)
            version = _registry_version(name, ref)
        else:
            # MLflow 3 logged-model id (`models:/m-...`): no registry version.
            return ModelSource(uri, uri, default_name(uri), "")
        return ModelSource(uri, f"models:/{name}/{version}", name, version)
    if uri.startswith("runs:/"):
        return ModelSource(uri, uri, default_name(uri), "")
    return ModelSource(uri, str(_local_path(uri)), default_name(uri), "")


def local_copy(source: ModelSource) -> Path:
    """A local folder holding the model (downloaded when the URI is remote)."""
    local = Path(source.pinned_uri)
    if local.is_dir():
        return local
    from mlflow.artifacts import download_artifacts

    logger.info("downloading %s", source.pinned_uri)
    return Path(download_artifacts(artifact_uri=source.pinned_uri))


def load_pyfunc(path: Path) -> Any:
    """Loads the model's python_function flavor from a local folder."""
    import mlflow.pyfunc

    return mlflow.pyfunc.load_model(str(path))


def input_example(model: Any, path: Path) -> Any | None:
    """The model's saved input example, if it has one."""
    try:
        return model.metadata.load_input_example(str(path))
    except Exception:
        logger.warning("the input example of %s could not be read", path, exc_info=True)
        return None
