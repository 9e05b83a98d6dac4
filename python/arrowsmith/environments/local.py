"""`--env-manager local`: the model runs in the server's own environment, and what that
environment lacks of the model's recorded requirements (and Python version) is logged once
as the model loads, as MLflow warns when it loads a model, with the flag that fixes it."""

from __future__ import annotations

import logging
import platform
from importlib import metadata
from pathlib import Path

from packaging.requirements import InvalidRequirement, Requirement

from arrowsmith.environments.spec import EnvironmentSpecError, read_spec

logger = logging.getLogger("arrowsmith.environments")


def _mismatch(line: str) -> str | None:
    """`name==x (installed y)` when this environment does not satisfy `line`."""
    try:
        requirement = Requirement(line)
    except InvalidRequirement:
        return None  # a path or URL: not comparable by name
    if requirement.marker is not None and not requirement.marker.evaluate():
        return None
    try:
        installed = metadata.version(requirement.name)
    except metadata.PackageNotFoundError:
        return f"{line} (not installed)"
    if requirement.specifier and not requirement.specifier.contains(installed, prereleases=True):
        return f"{line} (installed {installed})"
    return None


def differences(model_dir: Path) -> list[str]:
    """What the model asks for that this environment does not have."""
    try:
        spec = read_spec(model_dir)
    except EnvironmentSpecError:
        return []
    found = [entry for line in spec.requirements if (entry := _mismatch(line)) is not None]
    running = platform.python_version()
    if spec.python_minor != ".".join(running.split(".")[:2]):
        found.insert(0, f"Python {spec.python} (running {running})")
    return found


def warn_differences(name: str, model_dir: Path) -> None:
    """Logs, once, how this environment differs from what the model was saved with."""
    found = differences(model_dir)
    if found:
        logger.warning(
            "%s: the model's requirements differ from this environment: %s; its predictions "
            "may differ from its own environment's, or it may not load: --env-manager uv "
            "serves it in its own environment",
            name,
            ", ".join(found),
        )
