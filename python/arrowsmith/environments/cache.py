"""The environment cache: one folder per environment under the cache root, named by its
key (a digest of the interpreter's version, the model's requirements, the manager and
Arrowsmith's fingerprint), beside `wheels/` (Arrowsmith's wheel per installation).

An environment is built in a folder of its own (`.building-<key>-<pid>`) and renamed into
place once complete, so a half-built one is never used; concurrent builders of one key take
turns on a file lock, and the second finds the first one's result. Each environment holds a
record (`arrowsmith-env.json`: what it was built from) and a manifest of its files' sizes,
checked on every use, so a damaged one is found and built again."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

logger = logging.getLogger("arrowsmith.environments")

RECORD_FILE = "arrowsmith-env.json"
MANIFEST_FILE = "arrowsmith-manifest.json"
USED_FILE = "arrowsmith-used"
BUILDING_PREFIX = ".building-"
LOCK_SUFFIX = ".lock"
#: What Python and Arrowsmith write into an environment while it is used: not part of its
#: manifest.
_UNTRACKED = ("__pycache__",)
_VOLATILE = (USED_FILE, MANIFEST_FILE)


def default_root() -> Path:
    """`$XDG_CACHE_HOME/arrowsmith/envs`, else `~/.cache/arrowsmith/envs`."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "arrowsmith" / "envs"


def environment_key(identity: dict[str, Any]) -> str:
    """The folder name of an environment: a digest of what makes it what it is."""
    text = json.dumps(identity, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:20]


@dataclass(frozen=True)
class Environment:
    """A complete environment in the cache."""

    key: str
    path: Path

    @property
    def python(self) -> Path:
        return self.path / "bin" / "python"

    def record(self) -> dict[str, Any]:
        try:
            data = json.loads((self.path / RECORD_FILE).read_text())
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def note_model(self, uri: str) -> None:
        """Adds `uri` to the models the record lists as served from this environment."""
        record = self.record()
        models = record.get("models", [])
        if isinstance(models, list) and uri not in models:
            with contextlib.suppress(OSError):
                record["models"] = [*models, uri]
                (self.path / RECORD_FILE).write_text(json.dumps(record, indent=1))

    def mark_used(self) -> None:
        with contextlib.suppress(OSError):
            (self.path / USED_FILE).write_text(f"{time.time()}\n")

    def last_used(self) -> float:
        try:
            return (self.path / USED_FILE).stat().st_mtime
        except OSError:
            return (self.path / RECORD_FILE).stat().st_mtime if self.path.exists() else 0.0


def _survey(folder: Path) -> dict[str, Any]:
    """What the manifest holds of a folder: every directory with the names it holds, and
    the size of every shared library (the largest files, the likeliest to be cut short).
    Checking it costs a listing per directory and a stat per library, so every start can
    afford it (~0.06 s for an MLflow and scikit-learn environment of 2,600 folders)."""
    directories: dict[str, list[str]] = {}
    libraries: dict[str, int] = {}
    pending = [folder]
    while pending:
        directory = pending.pop()
        names = []
        with contextlib.suppress(OSError), os.scandir(directory) as entries:
            for entry in entries:
                if entry.name in _UNTRACKED or entry.name in _VOLATILE:
                    continue
                names.append(entry.name)
                if entry.is_dir(follow_symlinks=False):
                    pending.append(Path(entry.path))
                elif ".so" in entry.name:
                    libraries[os.path.relpath(entry.path, folder)] = entry.stat(
                        follow_symlinks=False
                    ).st_size
        directories[os.path.relpath(directory, folder)] = sorted(names)
    return {"directories": directories, "libraries": libraries}


def write_manifest(folder: Path) -> None:
    """Records what a finished environment holds."""
    (folder / MANIFEST_FILE).write_text(json.dumps(_survey(folder), separators=(",", ":")))


def damage(environment: Environment) -> str | None:
    """What is wrong with a cached environment, or None when it is whole: its interpreter
    is there, its record names its key, every file and folder it was built with is there,
    and its shared libraries have the sizes they were built with."""
    if not environment.python.exists():
        return f"{environment.python} is missing or its interpreter is gone"
    if environment.record().get("key") != environment.key:
        return f"{RECORD_FILE} is missing or names another environment"
    try:
        expected = json.loads((environment.path / MANIFEST_FILE).read_text())
    except (OSError, ValueError):
        return f"{MANIFEST_FILE} is missing or unreadable"
    root = str(environment.path)
    for directory, names in expected.get("directories", {}).items():
        try:
            present = set(os.listdir(os.path.join(root, directory)))
        except OSError:
            return f"{directory} is missing"
        missing = [name for name in names if name not in present]
        if missing:
            return f"{os.path.join(directory, missing[0])} is missing"
    for library, size in expected.get("libraries", {}).items():
        try:
            found: int | None = os.lstat(os.path.join(root, library)).st_size
        except OSError:
            found = None
        if found != size:
            return f"{library} has {found} bytes, {size} when built"
    return None


def size_of(path: Path) -> int:
    """Bytes of the files under `path`."""
    total = 0
    for directory, _, files in os.walk(path):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(directory, name)).st_size
    return total


class EnvironmentCache:
    """The cache under `root`."""

    def __init__(self, root: Path) -> None:
        self.root = root

    @property
    def wheels(self) -> Path:
        return self.root / "wheels"

    def environment(self, key: str) -> Environment:
        return Environment(key, self.root / key)

    @contextlib.contextmanager
    def locked(self, key: str) -> Iterator[None]:
        """Holds the key's lock (waits, logging once, while another process has it)."""
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / f".{key}{LOCK_SUFFIX}", "a+") as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                logger.info("environment %s: another process is building it; waiting", key)
                fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def building_folder(self, key: str) -> Path:
        """A fresh folder to build `key` in, renamed into place by `complete`."""
        folder = self.root / f"{BUILDING_PREFIX}{key}-{os.getpid()}"
        shutil.rmtree(folder, ignore_errors=True)
        return folder

    def complete(self, key: str, folder: Path, record: dict[str, Any]) -> Environment:
        """Moves a built environment into place (replacing a damaged one)."""
        (folder / RECORD_FILE).write_text(json.dumps({**record, "key": key}, indent=1))
        write_manifest(folder)
        environment = self.environment(key)
        if environment.path.exists():
            self.remove(environment.path)
        os.rename(folder, environment.path)
        environment.mark_used()
        return environment

    def remove(self, path: Path) -> None:
        """Deletes an environment: renamed aside first, so no one finds it half deleted."""
        aside = self.root / f"{BUILDING_PREFIX}removed-{path.name}-{os.getpid()}"
        with contextlib.suppress(FileNotFoundError):
            os.rename(path, aside)
            shutil.rmtree(aside, ignore_errors=True)

    def environments(self) -> list[Environment]:
        """Every complete environment, oldest use first."""
        if not self.root.is_dir():
            return []
        found = [
            self.environment(entry.name)
            for entry in self.root.iterdir()
            if entry.is_dir() and (entry / RECORD_FILE).is_file()
        ]
        return sorted(found, key=lambda environment: environment.last_used())

    def leftovers(self) -> list[Path]:
        """Folders of builds that did not finish, whose builder is gone."""
        if not self.root.is_dir():
            return []
        stale = []
        for entry in self.root.iterdir():
            if not entry.name.startswith(BUILDING_PREFIX):
                continue
            pid = entry.name.rsplit("-", 1)[-1]
            if not (pid.isdigit() and _alive(int(pid))):
                stale.append(entry)
        return stale


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
