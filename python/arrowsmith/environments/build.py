"""Finding or building a model's environment: with uv (`uv venv`, `uv pip install`), or with
the standard library's `venv` and pip where uv is not allowed. Either installs the model's
requirements and Arrowsmith's wheel in one resolution, compiles the bytecode (a first start
then imports as fast as a later one), and reports its progress while it runs."""

from __future__ import annotations

import logging
import os
import re
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

from arrowsmith.config import ENV_MANAGERS
from arrowsmith.environments import interpreters, wheel
from arrowsmith.environments.cache import (
    Environment,
    EnvironmentCache,
    damage,
    environment_key,
    logger,
)
from arrowsmith.environments.spec import EnvironmentSpec

#: Seconds between "still building" lines while a build prints nothing.
PROGRESS_SECONDS = 5.0
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
#: A build tool's lines that list single packages: logged only at DEBUG.
_DETAIL = (" + ", " - ", "  Downloading", "Requirement already", "  Using cached")


class EnvironmentBuildError(RuntimeError):
    """A build tool failed; the message ends with what it printed last."""


def check_manager(manager: str) -> None:
    """Refuses a manager that cannot work here, naming the ones that do."""
    if manager == "conda":
        raise ValueError(
            "--env-manager conda: Conda environments cannot be built here (no Conda channel "
            "is reachable, and Conda is not installed); use --env-manager uv (or virtualenv), "
            "which builds the model's environment from its python_env.yaml and "
            "requirements.txt, or --env-manager local to serve it in the server's environment"
        )
    if manager not in ENV_MANAGERS:
        raise ValueError(f"--env-manager {manager!r} is not one of local, uv, virtualenv")


def missing_python_message(uri: str, spec: EnvironmentSpec) -> str:
    found = ", ".join(interpreters.installed_versions()) or "none"
    return (
        f"{uri} needs Python {spec.python_minor} (from its {spec.source}: {spec.python}), and "
        f"this machine has no Python {spec.python_minor} interpreter (found: {found}); "
        f"nothing is downloaded. Install Python {spec.python_minor}, or serve the model in the "
        "server's own environment with --env-manager local"
    )


def _cached(environment: Environment, key: str, uri: str) -> Environment:
    """`environment`, found whole in the cache: noted as used (where the cache is writable)."""
    logger.info("environment %s: cached at %s", key, environment.path)
    environment.mark_used()
    environment.note_model(uri)
    return environment


def ensure_environment(
    spec: EnvironmentSpec,
    manager: str,
    cache: EnvironmentCache,
    uri: str,
    compile_bytecode: bool = False,
) -> Environment:
    """The model's environment from the cache, built first when it is not there (or is
    damaged). Raises ValueError when no interpreter of its Python is here.

    Bytecode is compiled at build only when asked (for an image, whose environment may be
    read-only later): compiling all of MLflow's dependencies takes longer than the rest of
    the build, while a first start compiles only what it imports, once."""
    check_manager(manager)
    try:
        interpreter = interpreters.find(spec.python)
    except interpreters.MissingInterpreter:
        raise ValueError(missing_python_message(uri, spec)) from None
    fingerprint = wheel.fingerprint()
    identity = {
        "manager": manager,
        "python": interpreter.version,
        "arrowsmith": fingerprint,
        **spec.identity(),
    }
    key = environment_key(identity)
    environment = cache.environment(key)
    # A whole environment is used without the lock (environments are renamed into place
    # complete), so a cache baked into a read-only image layer serves as it is.
    if environment.path.exists() and damage(environment) is None:
        return _cached(environment, key, uri)
    with cache.locked(key):
        if environment.path.exists():
            problem = damage(environment)
            if problem is None:
                return _cached(environment, key, uri)
            logger.warning(
                "environment %s at %s is damaged (%s); building it again",
                key,
                environment.path,
                problem,
            )
        if interpreter.version != spec.python:
            logger.info(
                "environment %s: the model was saved with Python %s; building on %s, the "
                "closest found",
                key,
                spec.python,
                interpreter.version,
            )
        return _build(key, spec, manager, cache, interpreter, uri, fingerprint, compile_bytecode)


def _build(
    key: str,
    spec: EnvironmentSpec,
    manager: str,
    cache: EnvironmentCache,
    interpreter: interpreters.Interpreter,
    uri: str,
    fingerprint: str,
    compile_bytecode: bool,
) -> Environment:
    started = time.monotonic()
    logger.info(
        "environment %s: building with %s for %s (Python %s, %d requirements)",
        key,
        manager,
        uri,
        interpreter.version,
        len(spec.requirements),
    )
    arrowsmith_wheel = wheel.build_wheel(cache.wheels)
    folder = cache.building_folder(key)
    try:
        requirements = _write_requirement_files(folder, spec)
        steps = (_uv_steps if manager == "uv" else _venv_steps)(
            folder, interpreter, spec, [*requirements, str(arrowsmith_wheel)], compile_bytecode
        )
        for step in steps:
            _run(key, step, cwd=cache.root)
        record: dict[str, Any] = {
            "manager": manager,
            "python": interpreter.version,
            "interpreter": str(interpreter.path),
            "source": spec.source,
            "requirements": list(spec.requirements),
            "constraints": list(spec.constraints),
            "build_requirements": list(spec.build_requirements),
            "identity": spec.identity(),
            "arrowsmith": fingerprint,
            "models": [uri],
            "created": time.time(),
        }
        environment = cache.complete(key, folder, record)
    except BaseException:
        cache.remove(folder)
        raise
    logger.info(
        "environment %s: built in %.1f s at %s", key, time.monotonic() - started, environment.path
    )
    return environment


def _write_requirement_files(folder: Path, spec: EnvironmentSpec) -> list[str]:
    """The model's requirements (and constraints) as files in the environment, as the
    install command's arguments."""
    folder.mkdir(parents=True)
    files = folder / "arrowsmith-requirements"
    files.mkdir()
    (files / "requirements.txt").write_text("".join(f"{line}\n" for line in spec.requirements))
    arguments = ["-r", str(files / "requirements.txt")]
    if spec.constraints:
        (files / "constraints.txt").write_text("".join(f"{c}\n" for c in spec.constraints))
        arguments += ["-c", str(files / "constraints.txt")]
    return arguments


def _uv_steps(
    folder: Path,
    interpreter: interpreters.Interpreter,
    spec: EnvironmentSpec,
    requirements: list[str],
    compile_bytecode: bool,
) -> list[list[str]]:
    from uv import find_uv_bin

    uv = find_uv_bin()
    python = str(folder / "bin" / "python")
    return [
        [
            uv,
            "venv",
            "--quiet",
            "--relocatable",
            "--allow-existing",
            "--python",
            str(interpreter.path),
            str(folder),
        ],
        [
            uv,
            "pip",
            "install",
            "--python",
            python,
            *(["--compile-bytecode"] if compile_bytecode else []),
            *requirements,
            *spec.build_requirements,
        ],
    ]


def _venv_steps(
    folder: Path,
    interpreter: interpreters.Interpreter,
    spec: EnvironmentSpec,
    requirements: list[str],
    compile_bytecode: bool,
) -> list[list[str]]:
    python = str(folder / "bin" / "python")
    pip = [python, "-m", "pip", "install", "--no-input", "--progress-bar", "off"]
    if not compile_bytecode:
        pip.append("--no-compile")
    steps = [[str(interpreter.path), "-m", "venv", str(folder)]]
    if spec.build_requirements:
        steps.append([*pip, *spec.build_requirements])
    steps.append([*pip, *requirements])
    return steps


def _tool_environment() -> dict[str, str]:
    """The build tools' environment: no interpreter downloads, no progress bars, and
    nothing of the server's own virtual environment."""
    environment = {
        key: value
        for key, value in os.environ.items()
        if key not in ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME", "CONDA_PREFIX")
    }
    environment.update(
        UV_PYTHON_DOWNLOADS="never",
        UV_NO_PROGRESS="1",
        PIP_DISABLE_PIP_VERSION_CHECK="1",
    )
    return environment


def _run(key: str, command: list[str], cwd: Path) -> None:
    """Runs one build step, logging its output as it comes and a line every few seconds
    while it is quiet; raises EnvironmentBuildError with its last lines when it fails."""
    started = time.monotonic()
    last: list[str] = []
    process = subprocess.Popen(
        command,
        cwd=cwd,
        env=_tool_environment(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        text=True,
        errors="replace",
    )
    quiet = threading.Event()

    def heartbeat() -> None:
        while not quiet.wait(PROGRESS_SECONDS):
            logger.info("environment %s: building, %.0f s so far", key, time.monotonic() - started)

    ticker = threading.Thread(target=heartbeat, name="environment progress", daemon=True)
    ticker.start()
    try:
        assert process.stdout is not None
        for raw in process.stdout:
            line = _ANSI.sub("", raw).rstrip()
            if not line:
                continue
            last = [*last[-19:], line]
            level = logging.DEBUG if line.startswith(_DETAIL) else logging.INFO
            logger.log(level, "environment %s: %s", key, line.strip())
        code = process.wait()
    except BaseException:
        process.kill()
        process.wait()
        raise
    finally:
        quiet.set()
        ticker.join()
    if code != 0:
        tail = "\n".join(last)
        raise EnvironmentBuildError(
            f"building environment {key} failed ({Path(command[0]).name} "
            f"{' '.join(command[1:3])} exited with {code}):\n{tail}"
        )
