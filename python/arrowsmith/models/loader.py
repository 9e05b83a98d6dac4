"""From a model URI to a loaded pyfunc model: a local folder, `file:`, `runs:/`, an
artifact-store URI (`s3://` with `MLFLOW_S3_ENDPOINT_URL` for S3-compatible stores,
`mlflow-artifacts:` through the tracking server, ...), an MLflow 3 logged model
(`models:/m-...`), or the Model Registry (`models:/Name/3`, `models:/Name/Production`,
`models:/Name/latest`, `models:/Name@alias`). Registry URIs are pinned to the version they
resolve to, so the version served is the version reported. MLflow is imported here and
nowhere earlier."""

from __future__ import annotations

import contextlib
import logging
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

logger = logging.getLogger(__name__)

#: A download in progress is reported this often.
DOWNLOAD_PROGRESS_SECONDS = 2.0


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
    reference = registry_reference(uri)
    if reference is not None:
        return reference.name
    if uri.startswith("models:/"):
        return uri.removeprefix("models:/").strip("/")
    if _is_remote(uri):
        path = urlparse(uri).path.strip("/")
        return path.rsplit("/", 1)[-1] or "model"
    return _local_path(uri).name


def _is_remote(uri: str) -> bool:
    """A URI MLflow downloads (`runs:/`, `models:/`, `s3://`, `mlflow-artifacts:`,
    `https://`, ...); a Windows drive letter or `file:` is local."""
    scheme = urlparse(uri).scheme
    return len(scheme) > 1 and scheme != "file"


def _local_path(uri: str) -> Path:
    path = unquote(urlparse(uri).path) if uri.startswith("file:") else uri
    return Path(path).expanduser().resolve()


@dataclass(frozen=True)
class RegistryReference:
    """What a registry URI names: `models:/Name@alias`, or `models:/Name/<reference>` (a
    version number, `latest` or a stage)."""

    name: str
    alias: str | None = None
    reference: str | None = None

    @property
    def version_number(self) -> str | None:
        """The version a `models:/Name/<number>` URI pins; None for one that may move."""
        return self.reference if self.reference is not None and self.reference.isdigit() else None

    @property
    def moves(self) -> bool:
        """An alias, a stage or `latest`: it can point to another version later."""
        return self.version_number is None


def registry_reference(uri: str) -> RegistryReference | None:
    """The registry reference a URI is; None for other URIs (MLflow 3 logged-model ids
    `models:/m-...` included). Parses only; no registry call."""
    if not uri.startswith("models:/"):
        return None
    reference = uri.removeprefix("models:/").strip("/")
    if "@" in reference:
        name, alias = reference.split("@", 1)
        return RegistryReference(name, alias=alias)
    if "/" in reference:
        name, rest = reference.split("/", 1)
        return RegistryReference(name, reference=rest)
    return None


def registry_version(uri: str, version: str) -> ModelSource:
    """Version `version` of the registered model `uri` names."""
    reference = registry_reference(uri)
    if reference is None:
        raise ValueError(f"{uri} is not a registry URI (models:/Name...): it has no versions")
    return ModelSource(uri, f"models:/{reference.name}/{version}", reference.name, version)


def resolve(uri: str) -> ModelSource:
    """Names and pins a model URI; registry look-ups need MLFLOW_TRACKING_URI."""
    reference = registry_reference(uri)
    if reference is not None:
        name = reference.name
        if reference.alias is not None:
            from mlflow import MlflowClient

            alias = reference.alias
            version = str(MlflowClient().get_model_version_by_alias(name, alias).version)
        else:
            version = _registry_version(name, reference.reference or "")
        return ModelSource(uri, f"models:/{name}/{version}", name, version)
    if _is_remote(uri):
        # `runs:/`, an MLflow 3 logged model (`models:/m-...`), an artifact store: MLflow
        # downloads it; no registry version.
        return ModelSource(uri, uri, default_name(uri), "")
    return ModelSource(uri, str(_local_path(uri)), default_name(uri), "")


@dataclass(frozen=True)
class LocalCopy:
    """A local folder holding the model, and the temporary folder to delete once the
    model is unloaded (None when the model was local already)."""

    path: Path
    download: Path | None = None

    def remove(self) -> None:
        """Deletes the download, if this copy is one."""
        if self.download is not None:
            shutil.rmtree(self.download, ignore_errors=True)


def local_copy(source: ModelSource) -> LocalCopy:
    """The model as a local folder, downloaded into a temporary one when remote."""
    local = Path(source.pinned_uri)
    if local.is_dir():
        return LocalCopy(local)
    from mlflow.artifacts import download_artifacts

    logger.info("downloading %s", source.pinned_uri)
    destination = Path(tempfile.mkdtemp(prefix="arrowsmith-model-"))
    try:
        with _DownloadProgress(source.pinned_uri, destination):
            path = download_artifacts(artifact_uri=source.pinned_uri, dst_path=str(destination))
    except BaseException:
        shutil.rmtree(destination, ignore_errors=True)
        raise
    return LocalCopy(Path(path), destination)


class _DownloadProgress:
    """Logs how much of a download has arrived, every few seconds until it ends, so a large
    model's start shows progress whatever store it comes from."""

    def __init__(self, uri: str, folder: Path) -> None:
        self._uri = uri
        self._folder = folder
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._report, name="download", daemon=True)
        self._started = time.monotonic()

    def __enter__(self) -> None:
        self._thread.start()

    def __exit__(self, *_: object) -> None:
        self._done.set()
        self._thread.join()
        elapsed = time.monotonic() - self._started
        logger.info(
            "downloaded %s: %.1f MB in %.1f s", self._uri, _bytes_under(self._folder) / 1e6, elapsed
        )

    def _report(self) -> None:
        while not self._done.wait(DOWNLOAD_PROGRESS_SECONDS):
            logger.info(
                "downloading %s: %.1f MB so far", self._uri, _bytes_under(self._folder) / 1e6
            )


def _bytes_under(folder: Path) -> int:
    total = 0
    for path in folder.rglob("*"):
        with contextlib.suppress(OSError):
            if path.is_file():
                total += path.stat().st_size
    return total


def load_pyfunc(path: Path) -> Any:
    """Loads the model's python_function flavor from a local folder. MLflow's warnings
    about a Python or requirements mismatch are left to `environments.local`, which says
    the same once, with the flag that fixes it."""
    import mlflow.pyfunc

    return mlflow.pyfunc.load_model(str(path), suppress_warnings=True)


def input_example(model: Any, path: Path) -> Any | None:
    """The model's saved input example, if it has one."""
    try:
        return model.metadata.load_input_example(str(path))
    except Exception:
        logger.warning("the input example of %s could not be read", path, exc_info=True)
        return None
