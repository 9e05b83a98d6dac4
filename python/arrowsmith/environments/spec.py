"""What environment a model asks for, read from the files MLflow saves beside it:
`python_env.yaml` (the Python version, the build tools, and dependencies that usually say
`-r requirements.txt`), else `conda.yaml` (its `python=` and its pip section).

Requirement files a model's files include (`-r`, `-c`) are read in, and local files they name
(wheels shipped with the model) are identified by their content, so that the same text means
the same environment whatever folder the model was downloaded to."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

PYTHON_ENV_FILE = "python_env.yaml"
CONDA_FILE = "conda.yaml"
REQUIREMENTS_FILE = "requirements.txt"
#: Conda packages that a pip-only environment provides by itself.
CONDA_PROVIDED = frozenset({"python", "pip", "setuptools", "wheel"})
#: `-r file`, `--requirement=file`, `-rfile`, and the same of `-c`.
_INCLUDE = re.compile(r"^(-r|--requirement|-c|--constraint)(?:=|\s+|(?<=-[rc]))(\S.*)$")


class EnvironmentSpecError(ValueError):
    """A model's environment files cannot be used."""


@dataclass(frozen=True)
class EnvironmentSpec:
    """A model's environment: what it asks for, as plain data."""

    #: The Python version it was saved with, e.g. "3.11.7".
    python: str
    #: Installed before the requirements (pip, setuptools, wheel pins).
    build_requirements: tuple[str, ...]
    #: Requirement lines, includes expanded; paths made absolute.
    requirements: tuple[str, ...]
    #: Constraint lines (from `-c` files).
    constraints: tuple[str, ...]
    #: Content digests of local files the requirements name, by the line naming them.
    local_files: tuple[tuple[str, str], ...]
    #: The file the requirements came from (for messages).
    source: str

    @property
    def python_minor(self) -> str:
        """ "3.11" of "3.11.7"."""
        return ".".join(self.python.split(".")[:2])

    def identity(self) -> dict[str, Any]:
        """What makes two environments the same, for the cache key: lines that name a local
        file count by the file's content, not its path."""
        by_line = dict(self.local_files)
        return {
            "build_requirements": list(self.build_requirements),
            "requirements": [by_line.get(line, line) for line in self.requirements],
            "constraints": list(self.constraints),
        }


def read_spec(model_dir: Path) -> EnvironmentSpec:
    """The environment the model in `model_dir` asks for."""
    python_env = model_dir / PYTHON_ENV_FILE
    if python_env.is_file():
        return _from_python_env(model_dir, python_env)
    conda = model_dir / CONDA_FILE
    if conda.is_file():
        return _from_conda(model_dir, conda)
    raise EnvironmentSpecError(
        f"{model_dir} has neither {PYTHON_ENV_FILE} nor {CONDA_FILE}: it does not say what "
        "environment it needs; serve it with --env-manager local"
    )


def _yaml(path: Path) -> dict[str, Any]:
    """The file's settings, every scalar as text (`python: 3.10` stays "3.10")."""
    import yaml

    try:
        document = yaml.load(path.read_text(), Loader=yaml.BaseLoader)
    except (OSError, yaml.YAMLError) as error:
        raise EnvironmentSpecError(f"{path} cannot be read: {error}") from None
    if not isinstance(document, dict):
        raise EnvironmentSpecError(f"{path} is not a mapping of settings")
    return document


def _text_list(path: Path, key: str, value: Any) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise EnvironmentSpecError(f"{path}: `{key}` must be a list of requirement lines")
    return value


def _python_version(path: Path, value: Any) -> str:
    version = str(value).strip() if isinstance(value, str | int | float) else ""
    parts = version.split(".")
    if len(parts) < 2 or not all(part.isdigit() for part in parts):
        raise EnvironmentSpecError(f"{path}: the Python version {value!r} is not like 3.11.7")
    return version


def _from_python_env(model_dir: Path, path: Path) -> EnvironmentSpec:
    document = _yaml(path)
    python = _python_version(path, document.get("python"))
    build = _text_list(path, "build_dependencies", document.get("build_dependencies"))
    lines = _text_list(path, "dependencies", document.get("dependencies"))
    lines_read = _expand(model_dir, lines, set())
    return EnvironmentSpec(python, tuple(build), *lines_read, PYTHON_ENV_FILE)


def _from_conda(model_dir: Path, path: Path) -> EnvironmentSpec:
    document = _yaml(path)
    python: str | None = None
    pip_lines: list[str] = []
    others: list[str] = []
    for item in _conda_items(path, document.get("dependencies")):
        if isinstance(item, dict):
            pip_lines += _text_list(path, "pip", item.get("pip"))
            continue
        name, version = _conda_name_version(item)
        if name == "python":
            python = version
        elif name not in CONDA_PROVIDED:
            others.append(item)
    if others:
        raise EnvironmentSpecError(
            f"{path} asks for Conda packages ({', '.join(others)}) that only Conda installs, "
            "and Conda environments cannot be built here; serve the model with "
            "--env-manager local"
        )
    if python is None:
        raise EnvironmentSpecError(f"{path} does not say which Python the model needs")
    lines_read = _expand(model_dir, pip_lines, set())
    return EnvironmentSpec(_python_version(path, python), (), *lines_read, CONDA_FILE)


def _conda_name_version(item: str) -> tuple[str, str]:
    """`pip<=24.0` -> ("pip", "24.0"); `python=3.11.7` -> ("python", "3.11.7")."""
    match = re.match(r"\s*([A-Za-z0-9_.\-]+)\s*([=<>!~]*)\s*([^\s,]*)", item)
    if match is None:
        return item.strip(), ""
    return match.group(1).lower(), match.group(3)


def _conda_items(path: Path, value: Any) -> list[str | dict[str, Any]]:
    if not isinstance(value, list) or not all(isinstance(item, str | dict) for item in value):
        raise EnvironmentSpecError(f"{path}: `dependencies` must be a list")
    return value


def _expand(
    folder: Path, lines: list[str], seen: set[Path]
) -> tuple[tuple[str, ...], tuple[str, ...], tuple[tuple[str, str], ...]]:
    """Requirement and constraint lines with `-r`/`-c` files read in (relative to the file
    naming them) and local paths made absolute, and the digests of those local files."""
    requirements: list[str] = []
    constraints: list[str] = []
    local_files: list[tuple[str, str]] = []
    for raw in lines:
        line = raw.split(" #", 1)[0].strip()
        if not line or line.startswith("#"):
            continue
        include = _INCLUDE.match(line)
        if include is not None:
            option, argument = include.group(1), include.group(2)
            included = (folder / argument.strip()).resolve()
            if included in seen or not included.is_file():
                raise EnvironmentSpecError(f"{included}, named by `{line}`, cannot be read")
            nested, nested_constraints, files = _expand(
                included.parent, included.read_text().splitlines(), seen | {included}
            )
            if option in ("-c", "--constraint"):
                constraints += nested
            else:
                requirements += nested
            constraints += nested_constraints
            local_files += files
            continue
        local = _local_file(folder, line)
        if local is not None:
            line = str(local)
            local_files.append((line, _digest(local)))
        requirements.append(line)
    return tuple(requirements), tuple(constraints), tuple(local_files)


def _local_file(folder: Path, line: str) -> Path | None:
    """The file or folder a requirement line names by path (a wheel, an sdist or a
    package's source shipped with the model)."""
    if not (line.startswith((".", "/")) or line.endswith((".whl", ".tar.gz", ".zip"))):
        return None
    path = (folder / line).resolve()
    return path if path.exists() else None


def _digest(path: Path) -> str:
    """The content of a file, or of every file under a folder (with their places)."""
    sha = hashlib.sha256()
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    for file in files:
        if file != path:
            sha.update(f"{file.relative_to(path)}\0".encode())
        with file.open("rb") as content:
            for block in iter(lambda: content.read(1 << 20), b""):
                sha.update(block)
    return "sha256:" + sha.hexdigest()
