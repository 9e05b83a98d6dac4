"""The Python interpreters on this machine an environment may be built on. Nothing is
downloaded: a model that asks for a minor version none of them has is refused.

Looked for, in this order: the interpreter running Arrowsmith, `python3.X` on PATH, pyenv's
versions, and the interpreters uv installed earlier. The version of each is read from where
it lies (pyenv's and uv's folders are named by it) or asked of it once."""

from __future__ import annotations

import os
import platform
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

_VERSION = re.compile(r"(\d+)\.(\d+)\.(\d+)")


class MissingInterpreter(ValueError):
    """No interpreter of the minor version a model needs."""


@dataclass(frozen=True)
class Interpreter:
    version: str
    path: Path

    @property
    def minor(self) -> str:
        return ".".join(self.version.split(".")[:2])


def _own() -> Interpreter:
    # The base interpreter, not a virtual environment's: environments are made from it.
    base = getattr(sys, "_base_executable", None) or sys.executable
    return Interpreter(platform.python_version(), Path(base))


def _managed_folders() -> list[Path]:
    """pyenv's `versions/` and uv's installed interpreters, where they exist."""
    pyenv = Path(os.environ.get("PYENV_ROOT") or Path.home() / ".pyenv") / "versions"
    data = Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share")
    uv = Path(os.environ.get("UV_PYTHON_INSTALL_DIR") or data / "uv" / "python")
    return [folder for folder in (pyenv, uv) if folder.is_dir()]


def _managed(minor: str | None) -> list[Interpreter]:
    """Interpreters in pyenv's and uv's folders (of `minor` only, when given)."""
    found = []
    for folder in _managed_folders():
        for entry in sorted(folder.iterdir()):
            match = _VERSION.search(entry.name)
            if match is None or (entry.name[0].isalpha() and not entry.name.startswith("cpython")):
                continue
            version = match.group(0)
            if minor is not None and not version.startswith(minor + "."):
                continue
            executable = entry / "bin" / f"python{match.group(1)}.{match.group(2)}"
            if executable.is_file() and os.access(executable, os.X_OK):
                found.append(Interpreter(version, executable))
    return found


def _version_of(executable: Path) -> str | None:
    try:
        answer = subprocess.run(
            [str(executable), "-c", "import platform; print(platform.python_version())"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return answer.stdout.strip() or None


def _on_path(minor: str) -> Interpreter | None:
    found = shutil.which(f"python{minor}")
    if found is None:
        return None
    version = _version_of(Path(found))
    return Interpreter(version, Path(found)) if version is not None else None


def find(version: str) -> Interpreter:
    """An interpreter of `version`'s minor version: the exact version if one is here, else
    the first found. Raises MissingInterpreter naming the versions there are."""
    minor = ".".join(version.split(".")[:2])
    own = _own()
    candidates = [own] if own.minor == minor else []
    candidates += _managed(minor)
    for candidate in candidates:
        if candidate.version == version:
            return candidate
    if not candidates:
        on_path = _on_path(minor)
        if on_path is not None and on_path.minor == minor:
            candidates.append(on_path)
    if candidates:
        return candidates[0]
    raise MissingInterpreter(minor)


def _path_names() -> set[str]:
    """`python3.X` names of the executables on PATH."""
    names = set()
    for folder in os.get_exec_path():
        try:
            names |= {name for name in os.listdir(folder) if re.fullmatch(r"python3\.\d+", name)}
        except OSError:
            continue
    return names


def installed_versions() -> list[str]:
    """Every interpreter version found (for the message that refuses a model)."""
    versions = {_own().version, *(i.version for i in _managed(None))}
    for name in _path_names():
        found = _on_path(name.removeprefix("python"))
        if found is not None:
            versions.add(found.version)
    return sorted(versions, key=lambda v: tuple(int(part) for part in re.findall(r"\d+", v)))
