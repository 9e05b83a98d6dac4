"""The environment a server's models run in, found or built before any worker starts: each
model's files are read where they lie (a local folder) or fetched (its environment files
alone when they suffice, else the whole model), and every model of one server must come to
the same environment, whose interpreter then runs the workers."""

from __future__ import annotations

import logging
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from arrowsmith.config import ModelConfig, ServerConfig
from arrowsmith.environments.build import check_manager, ensure_environment
from arrowsmith.environments.cache import Environment, EnvironmentCache, default_root
from arrowsmith.environments.spec import (
    CONDA_FILE,
    PYTHON_ENV_FILE,
    REQUIREMENTS_FILE,
    EnvironmentSpec,
    EnvironmentSpecError,
    read_spec,
)

if TYPE_CHECKING:
    from arrowsmith.models.loader import ModelSource

logger = logging.getLogger("arrowsmith.environments")
#: The files an environment is read from, fetched alone for a remote model.
ENVIRONMENT_FILES = (PYTHON_ENV_FILE, REQUIREMENTS_FILE, CONDA_FILE)


def cache_of(config: ServerConfig) -> EnvironmentCache:
    return EnvironmentCache(Path(config.env_cache) if config.env_cache else default_root())


def model_spec(uri: str) -> tuple[EnvironmentSpec, str]:
    """What the model at `uri` asks for (registry references as they resolve now), and the
    URI it resolved to (a local folder's absolute path, a registry version's number)."""
    from arrowsmith.models import loader

    source = loader.resolve(uri)
    return _read(source), source.pinned_uri


def _read(source: ModelSource) -> EnvironmentSpec:
    from arrowsmith.models import loader

    local = Path(source.pinned_uri)
    if local.is_dir():
        return read_spec(local)
    folder = Path(tempfile.mkdtemp(prefix="arrowsmith-env-files-"))
    try:
        try:
            return read_spec(_fetch_files(source.pinned_uri, folder))
        except EnvironmentSpecError:
            # Its requirements name files beside them (wheels shipped with the model).
            copy = loader.local_copy(source)
            try:
                return read_spec(copy.path)
            finally:
                copy.remove()
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _fetch_files(uri: str, folder: Path) -> Path:
    """The environment files of a remote model, downloaded into `folder`."""
    from mlflow.artifacts import download_artifacts

    for name in ENVIRONMENT_FILES:
        try:
            download_artifacts(artifact_uri=f"{uri.rstrip('/')}/{name}", dst_path=str(folder))
        except Exception:
            logger.debug("%s has no %s", uri, name, exc_info=True)
    return folder


def model_environment(model: ModelConfig, cache: EnvironmentCache) -> Environment:
    """The environment of one model whose env_manager is not local."""
    check_manager(model.env_manager)
    spec, resolved = model_spec(model.uri)
    return ensure_environment(spec, model.env_manager, cache, resolved)


def server_environment(config: ServerConfig) -> Environment:
    """The one environment every model of `config` runs in. Raises ValueError when a model
    cannot have one (conda, a missing Python) or when models need different ones."""
    cache = cache_of(config)
    found: dict[str, tuple[Environment, str]] = {}
    for model in config.models:
        if model.env_manager == "local":
            raise ValueError(
                f"{model.uri} runs in the server's environment (--env-manager local) while "
                "others have their own: give every model of one server the same env_manager"
            )
        environment = model_environment(model, cache)
        found.setdefault(environment.key, (environment, model.uri))
    if len(found) > 1:
        (first, first_uri), (second, second_uri) = list(found.values())[:2]
        raise ValueError(
            f"{first_uri} and {second_uri} need different environments ({first.key}, "
            f"{second.key}); serve them from separate servers"
        )
    environment, _ = next(iter(found.values()))
    return environment
