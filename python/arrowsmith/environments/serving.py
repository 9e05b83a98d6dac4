"""The environments a server's models run in, found or built before any worker starts: each
model's files are read where they lie (a local folder) or fetched (its environment files
alone when they suffice, else the whole model), and the models are grouped by environment,
each group's processes running under its interpreter."""

from __future__ import annotations

import logging
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, replace
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


#: The group of the models that run in the server's own environment (env_manager local).
LOCAL = "local"


@dataclass(frozen=True)
class EnvironmentGroup:
    """Models that run in one environment: a built one, or the server's own (None)."""

    environment: Environment | None
    models: tuple[ModelConfig, ...]

    @property
    def key(self) -> str:
        return LOCAL if self.environment is None else self.environment.key


def plan_groups(config: ServerConfig) -> list[EnvironmentGroup]:
    """The models of `config` by the environment each runs in, every environment found or
    built now. Raises ValueError when a model cannot have one (conda, a missing Python)."""
    cache = cache_of(config)
    groups = group_by_environment(config.models, lambda model: model_environment(model, cache))
    for number, group in enumerate(groups if len(groups) > 1 else []):
        names = ", ".join(dict.fromkeys(model.served_name for model in group.models))
        where = (
            "the server's environment" if group.environment is None else f"environment {group.key}"
        )
        role = "on the ports" if number == 0 else "behind the ports, in a process of its own"
        logger.info("%s: in %s, %s", names, where, role)
    return groups


def group_by_environment(
    models: tuple[ModelConfig, ...], environment_of: Callable[[ModelConfig], Environment]
) -> list[EnvironmentGroup]:
    """`models` grouped by environment (`environment_of` a model whose env_manager is not
    local), each group in the order of its first model, so the first model's group comes
    first: it serves the ports. Calls are forwarded by model name, so the versions of one
    name must share an environment (ValueError otherwise)."""
    groups: dict[str, EnvironmentGroup] = {}
    key_of_name: dict[str, str] = {}
    for model in models:
        environment = None if model.env_manager == LOCAL else environment_of(model)
        group = EnvironmentGroup(environment, ())
        group = groups.get(group.key, group)
        name = model.served_name
        if key_of_name.setdefault(name, group.key) != group.key:
            raise ValueError(
                f"the versions of model '{name}' need different environments "
                f"({key_of_name[name]}, {group.key}): versions of one model must share one"
            )
        groups[group.key] = replace(group, models=(*group.models, model))
    return list(groups.values())
