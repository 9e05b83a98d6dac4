"""Whether a model fits the environment this process runs in. A worker runs under a
model environment's interpreter; a version of a model whose environment would differ (a
registry reference moved to a version with other requirements) must not be loaded here:
it is refused with NeedsOtherEnvironment, and the supervisor builds that environment and
starts workers under it (see `workers`)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from arrowsmith.environments.cache import RECORD_FILE
from arrowsmith.environments.spec import read_spec


class NeedsOtherEnvironment(ValueError):
    """A model version whose environment is not the one this process runs in."""


def running_record() -> dict[str, Any] | None:
    """The record of the model environment this process runs in; None outside one."""
    try:
        record = json.loads((Path(sys.prefix) / RECORD_FILE).read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def check_fits(name: str, version: str, model_dir: Path) -> None:
    """Raises NeedsOtherEnvironment when the model in `model_dir` asks for another
    environment than the one running (nothing outside a model environment)."""
    record = running_record()
    if record is None:
        return
    spec = read_spec(model_dir)
    running_minor = ".".join(str(record.get("python", "")).split(".")[:2])
    if spec.python_minor != running_minor or spec.identity() != record.get("identity"):
        raise NeedsOtherEnvironment(
            f"model {name} version {version or '-'} needs another environment than this "
            f"process's ({record.get('key')}): its Python or requirements differ"
        )
