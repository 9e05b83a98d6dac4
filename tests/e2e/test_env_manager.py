"""Model environments (`--env-manager`): a model saved by scikit-learn 1.7.2, served by a
server whose own environment has another scikit-learn.

With `uv` or `virtualenv` the server builds the model's own environment from its MLflow files
into the cache (`--env-cache`) and runs its worker there, under the environment's
interpreter, while `arrowsmith serve` stays the supervisor. Answers are checked against
MLflow's in the environment the model was made in, and the cache through its life: built,
found again, found damaged, built by two processes at once, listed and pruned.

One cache serves the module, so the tests after the first reuse its build; each test that
needs a built environment builds it when run alone. Keys are never assumed: they are read
from the log or from `env list --json`.
"""

import contextlib
import dataclasses
import json
import os
import pathlib
import platform
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from importlib import metadata

import grpc
import numpy as np
import pytest
import yaml
from support import server as server_support
from support import v2
from support.foreign_model import ForeignModel
from support.processes import Seen, children, wait_gone
from support.server import (
    ServerHandle,
    free_port,
    running_server,
    server_command,
    stop_process_group,
)

MODEL_NAME = "foreign"
#: A server that builds an environment first is ready in minutes, not seconds.
BUILD_TIMEOUT_S = 600.0
#: pytest-timeout for a test that may build one or two environments.
TEST_TIMEOUT_S = 1500
#: A start-up that must fail, or warn, before any model is loaded.
QUICK_TIMEOUT_S = 120.0
CALL_TIMEOUT_S = 60.0
POLL_INTERVAL_S = 0.1
#: A Python no machine running these tests has, nor can uv build an environment for.

BUILDING = re.compile(r"environment (?P<key>[^\s:]+): building with (?P<manager>\S+) for ")
BUILT = re.compile(r"environment (?P<key>[^\s:]+): built in [\d.]+ s at (?P<path>\S+)")
CACHED = re.compile(r"environment (?P<key>[^\s:]+): cached at (?P<path>\S+)")
DAMAGED = re.compile(
    r"environment (?P<key>[^\s:]+) at (?P<path>\S+) is damaged \((?P<reason>.*)\); "
    r"building it again"
)
WAITING = "another process is building it; waiting"
REQUIREMENTS_DIFFER = "the model's requirements differ from this environment:"
ENV_LIST_KEYS = {
    "key",
    "path",
    "manager",
    "python",
    "requirements",
    "models",
    "created",
    "last_used",
    "size_bytes",
}


@pytest.fixture(scope="module")
def env_cache(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    """The environment cache the module's servers share."""
    return tmp_path_factory.mktemp("env-cache")


@pytest.fixture(autouse=True)
def build_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    """Wait for readiness long enough for a build (support.server reads it at each start)."""
    monkeypatch.setattr(server_support, "STARTUP_TIMEOUT_S", BUILD_TIMEOUT_S)


def environments(cache: pathlib.Path) -> list[pathlib.Path]:
    """Every folder of `cache` holding an interpreter: complete environments, and any
    unfinished build left behind."""
    return sorted(path for path in cache.iterdir() if (path / "bin" / "python").exists())


def same_path(a: pathlib.Path | str, b: pathlib.Path | str) -> bool:
    return pathlib.Path(a).resolve() == pathlib.Path(b).resolve()


def serve_args(cache: pathlib.Path, manager: str = "uv") -> tuple[str, ...]:
    return ("--env-manager", manager, "--env-cache", str(cache))


def assert_answers(server: ServerHandle, model: ForeignModel) -> None:
    """The 50 rows over gRPC: exactly the answers of the model's own environment."""
    request = v2.columns_request(MODEL_NAME, model.rows, "FP64", typed=False)
    with grpc.insecure_channel(server.url) as channel:
        try:
            response = v2.model_infer(channel)(request, timeout=CALL_TIMEOUT_S)
        except grpc.RpcError as error:
            pytest.fail(f"refused: {error.code()}: {error.details()}; log:\n{server.log_tail()}")
    answer = v2.output_array(response, "output-0")
    np.testing.assert_allclose(answer.reshape(-1), model.expected, rtol=1e-12, atol=0)


def built_environment(log: str, cache: pathlib.Path, manager: str = "uv") -> pathlib.Path:
    """The environment a server's log says it built (by `manager`), checked to be the
    cache's folder named by its key."""
    building = BUILDING.search(log)
    built = BUILT.search(log)
    assert building is not None, f"no 'building with' line:\n{log[-6000:]}"
    assert built is not None, f"no 'built in ... at' line:\n{log[-6000:]}"
    assert building["manager"] == manager, building[0]
    assert built["key"] == building["key"], (building[0], built[0])
    assert same_path(built["path"], cache / built["key"]), built[0]
    return cache / built["key"]


def cached_environment(log: str, cache: pathlib.Path) -> pathlib.Path:
    """The environment a server's log says it found in the cache."""
    cached = CACHED.search(log)
    assert cached is not None, f"no 'cached at' line:\n{log[-6000:]}"
    assert "building with" not in log, log[-6000:]
    assert same_path(cached["path"], cache / cached["key"]), cached[0]
    return cache / cached["key"]


def the_worker(server: ServerHandle) -> Seen:
    """The server's one worker process: a child of `arrowsmith serve`."""
    seen = [Seen.of(pid) for pid in children(server.process.pid)]
    workers = [process for process in seen if "arrowsmith.workers" in process.command]
    assert len(workers) == 1, f"children of the server: {seen}"
    return workers[0]


def assert_runs_in(worker: Seen, environment: pathlib.Path) -> None:
    """The worker is `<environment>/bin/python -m arrowsmith.workers`, and the scikit-learn
    it has loaded is the environment's."""
    interpreter = pathlib.Path(worker.command[0])
    assert interpreter.name.startswith("python"), worker.command
    assert same_path(interpreter.parent, environment / "bin"), worker.command
    assert worker.command[1:3] == ["-m", "arrowsmith.workers"], worker.command
    maps = pathlib.Path(f"/proc/{worker.pid}/maps").read_text()
    mapped = {line.split(maxsplit=5)[-1] for line in maps.splitlines() if "/sklearn/" in line}
    site = str(environment.resolve() / "lib")
    assert mapped, "the worker has loaded no compiled part of scikit-learn"
    assert all(path.startswith(site) for path in mapped), sorted(mapped)


def assert_gone(worker: Seen) -> None:
    """The worker did not outlive its server; if it did, it is killed and the test fails."""
    if not wait_gone(worker):
        pytest.fail(f"worker {worker.pid} outlived its server: {worker.command}")


@contextlib.contextmanager
def serving(
    model_dir: pathlib.Path | None, *args: str, log_dir: pathlib.Path
) -> Iterator[tuple[ServerHandle, Seen]]:
    """A ready server for the foreign model and its worker; the worker must be gone once
    the server is stopped."""
    name_args = ("--name", MODEL_NAME) if model_dir is not None else ()
    with running_server(model_dir, *args, *name_args, log_dir=log_dir) as server:
        worker = the_worker(server)
        yield server, worker
    assert_gone(worker)


def ensure_built(model: ForeignModel, cache: pathlib.Path, log_dir: pathlib.Path) -> None:
    """Build the uv environment into `cache` by serving once, unless it is already there
    (from an earlier test of the module)."""
    if not environments(cache):
        with serving(model.model_dir, *serve_args(cache), log_dir=log_dir):
            pass


@dataclasses.dataclass(frozen=True)
class Finished:
    """How a CLI run ended."""

    code: int
    stdout: str
    stderr: str

    def report(self) -> str:
        return f"exit {self.code}\nstdout:\n{self.stdout[-3000:]}\nstderr:\n{self.stderr[-6000:]}"

    def last_line(self) -> str:
        lines = self.stdout.strip().splitlines()
        assert lines, self.report()
        return lines[-1].strip()


@dataclasses.dataclass(frozen=True)
class Started:
    """A CLI process in a process group of its own, its stdout and stderr in files."""

    process: subprocess.Popen[bytes]
    stdout_path: pathlib.Path
    stderr_path: pathlib.Path

    def stderr(self) -> str:
        return self.stderr_path.read_text(encoding="utf-8", errors="replace")

    def finish(self, timeout: float) -> Finished:
        """Wait for the end; a run still going after `timeout` is stopped and fails the test."""
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            stop_process_group(self.process)
            pytest.fail(f"still running after {timeout} s:\n{self.stderr()[-6000:]}")
        return Finished(
            self.process.returncode,
            self.stdout_path.read_text(encoding="utf-8", errors="replace"),
            self.stderr(),
        )


@contextlib.contextmanager
def started(command: list[str], log_dir: pathlib.Path, label: str) -> Iterator[Started]:
    """Start `command`; whatever happens, its whole process group is stopped afterwards."""
    stdout_path = log_dir / f"{label}-{free_port()}.out"
    stderr_path = stdout_path.with_suffix(".err")
    with stdout_path.open("wb") as stdout, stderr_path.open("wb") as stderr:
        process = subprocess.Popen(
            command,
            stdout=stdout,
            stderr=stderr,
            stdin=subprocess.DEVNULL,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
            start_new_session=True,
        )
    try:
        yield Started(process, stdout_path, stderr_path)
    finally:
        stop_process_group(process)


def arrowsmith(*args: str) -> list[str]:
    return [sys.executable, "-m", "arrowsmith", *args]


def run(command: list[str], log_dir: pathlib.Path, label: str, timeout: float) -> Finished:
    with started(command, log_dir, label) as process:
        return process.finish(timeout)


def serve_command(model_dir: pathlib.Path, *args: str) -> list[str]:
    return server_command(model_dir, free_port(), *args)


@pytest.mark.slow
@pytest.mark.timeout(TEST_TIMEOUT_S)
def test_uv_builds_the_environment_and_serves_in_it(
    foreign_model: ForeignModel, env_cache: pathlib.Path, server_logs: pathlib.Path
) -> None:
    """The first start builds the model's environment; its worker runs under that
    environment's interpreter and answers as the model did where it was made."""
    assert not environments(env_cache), "the module's cache should start empty"
    with serving(foreign_model.model_dir, *serve_args(env_cache), log_dir=server_logs) as (
        server,
        worker,
    ):
        environment = built_environment(server.log_text(), env_cache)
        assert_answers(server, foreign_model)
        assert_runs_in(worker, environment)
    assert environments(env_cache) == [environment]


@pytest.mark.slow
@pytest.mark.timeout(TEST_TIMEOUT_S)
def test_a_second_start_finds_it_in_the_cache(
    foreign_model: ForeignModel, env_cache: pathlib.Path, server_logs: pathlib.Path
) -> None:
    ensure_built(foreign_model, env_cache, server_logs)
    with serving(foreign_model.model_dir, *serve_args(env_cache), log_dir=server_logs) as (
        server,
        worker,
    ):
        environment = cached_environment(server.log_text(), env_cache)
        assert_answers(server, foreign_model)
        assert_runs_in(worker, environment)


@pytest.mark.slow
@pytest.mark.timeout(TEST_TIMEOUT_S)
def test_env_manager_in_the_config_file(
    foreign_model: ForeignModel,
    env_cache: pathlib.Path,
    server_logs: pathlib.Path,
    tmp_path: pathlib.Path,
) -> None:
    """`env_manager: uv` on a `--config` entry does what the flag does."""
    ensure_built(foreign_model, env_cache, server_logs)
    config = tmp_path / "models.yaml"
    entry = {"uri": str(foreign_model.model_dir), "name": MODEL_NAME, "env_manager": "uv"}
    config.write_text(yaml.safe_dump({"models": [entry]}))
    args = ("--config", str(config), "--env-cache", str(env_cache))
    with serving(None, *args, log_dir=server_logs) as (server, worker):
        environment = cached_environment(server.log_text(), env_cache)
        assert_answers(server, foreign_model)
        assert_runs_in(worker, environment)


@pytest.mark.slow
@pytest.mark.timeout(TEST_TIMEOUT_S)
def test_a_damaged_environment_is_built_again(
    foreign_model: ForeignModel, env_cache: pathlib.Path, server_logs: pathlib.Path
) -> None:
    """A file of scikit-learn missing from the cached environment: the server says so,
    builds it again and serves from the repaired one."""
    ensure_built(foreign_model, env_cache, server_logs)
    (environment,) = environments(env_cache)
    (damaged,) = environment.glob("lib/python3*/site-packages/sklearn/__init__.py")
    damaged.unlink()
    with serving(foreign_model.model_dir, *serve_args(env_cache), log_dir=server_logs) as (
        server,
        worker,
    ):
        log = server.log_text()
        found = DAMAGED.search(log)
        assert found is not None, f"no 'is damaged' line:\n{log[-6000:]}"
        assert same_path(found["path"], environment), found[0]
        assert log.index(found[0]) < log.index("building with"), log[-6000:]
        assert built_environment(log, env_cache) == environment
        assert_answers(server, foreign_model)
        assert_runs_in(worker, environment)
    assert damaged.is_file()
    assert environments(env_cache) == [environment]


@pytest.mark.parametrize("flags", [(), ("--env-manager", "local")], ids=["default", "local"])
def test_local_warns_that_the_requirements_differ(
    foreign_model: ForeignModel, server_logs: pathlib.Path, flags: tuple[str, ...]
) -> None:
    """Served in the server's own environment, the model's pins that this environment does
    not meet are named with what is installed, and `--env-manager uv` is suggested."""
    installed = metadata.version("scikit-learn")
    assert installed != foreign_model.sklearn_version
    command = serve_command(foreign_model.model_dir, *flags, "--name", MODEL_NAME)
    with started(command, server_logs, "local") as server:
        deadline = time.monotonic() + QUICK_TIMEOUT_S
        while REQUIREMENTS_DIFFER not in server.stderr():
            if server.process.poll() is not None or time.monotonic() > deadline:
                break
            time.sleep(POLL_INTERVAL_S)
        stderr = server.stderr()
    lines = [line for line in stderr.splitlines() if REQUIREMENTS_DIFFER in line]
    assert lines, f"no requirements warning:\n{stderr[-6000:]}"
    warning = stderr[stderr.index(lines[0]) :]
    assert " WARNING " in lines[0], lines[0]
    assert f"scikit-learn=={foreign_model.sklearn_version} (installed {installed})" in warning
    assert "--env-manager uv" in warning, warning[:3000]
    # numpy is pinned to the version installed here: it does not differ.
    assert f"numpy=={np.__version__} (installed" not in warning, warning[:3000]


def missing_python_minor() -> str:
    """A Python minor version no interpreter on this machine has (3.5 where it is absent,
    else an older one)."""
    from arrowsmith.environments.interpreters import installed_versions

    present = {".".join(version.split(".")[:2]) for version in installed_versions()}
    candidates = [f"3.{minor}" for minor in range(5, -1, -1)] + ["2.5", "2.4"]
    return next(minor for minor in candidates if minor not in present)


def test_a_python_no_interpreter_has_stops_the_server(
    foreign_model: ForeignModel, server_logs: pathlib.Path, tmp_path: pathlib.Path
) -> None:
    """python_env.yaml asks for a Python minor version no interpreter here has: exit
    status 2 before serving, naming what was asked for, the versions found and
    `--env-manager local`."""
    minor = missing_python_minor()
    model_dir = tmp_path / "needs-old-python"
    shutil.copytree(foreign_model.model_dir, model_dir)
    python_env = model_dir / "python_env.yaml"
    spec = yaml.safe_load(python_env.read_text())
    spec["python"] = f"{minor}.0"
    python_env.write_text(yaml.safe_dump(spec))
    cache = tmp_path / "env-cache"
    command = serve_command(model_dir, *serve_args(cache))
    finished = run(command, server_logs, "old-python", QUICK_TIMEOUT_S)
    assert finished.code == 2, finished.report()
    stderr = finished.stderr
    assert f"needs Python {minor}" in stderr, finished.report()
    assert "found: " in stderr, finished.report()
    found = stderr[stderr.index("found: ") :]
    assert platform.python_version() in found, finished.report()
    assert "--env-manager local" in stderr, finished.report()
    assert not cache.exists() or not environments(cache)


def test_conda_is_refused(
    foreign_model: ForeignModel, server_logs: pathlib.Path, tmp_path: pathlib.Path
) -> None:
    cache = tmp_path / "env-cache"
    command = serve_command(foreign_model.model_dir, *serve_args(cache, "conda"))
    finished = run(command, server_logs, "conda", QUICK_TIMEOUT_S)
    assert finished.code == 2, finished.report()
    assert "--env-manager uv" in finished.stderr, finished.report()
    assert not cache.exists() or not environments(cache)


@pytest.mark.slow
@pytest.mark.timeout(TEST_TIMEOUT_S)
def test_two_builders_at_once_build_it_once(
    foreign_model: ForeignModel, server_logs: pathlib.Path, tmp_path: pathlib.Path
) -> None:
    """Two `env build` of one model on an empty cache: one builds, the other waits for it
    (or finds its result); both print the one environment."""
    cache = tmp_path / "env-cache"
    command = arrowsmith("env", "build", str(foreign_model.model_dir), *serve_args(cache))
    with (
        started(command, server_logs, "env-build-a") as first,
        started(command, server_logs, "env-build-b") as second,
    ):
        runs = [first.finish(BUILD_TIMEOUT_S), second.finish(BUILD_TIMEOUT_S)]
    for finished in runs:
        assert finished.code == 0, finished.report()
    paths = [finished.last_line() for finished in runs]
    assert paths[0] == paths[1], paths
    environment = pathlib.Path(paths[0])
    assert same_path(environment.parent, cache), paths[0]
    assert [path.resolve() for path in environments(cache)] == [environment.resolve()]
    logs = [finished.stderr + finished.stdout for finished in runs]
    assert sum("building with uv" in log for log in logs) == 1, "\n----\n".join(logs)
    assert any(WAITING in log or CACHED.search(log) for log in logs), "\n----\n".join(logs)


@pytest.mark.slow
@pytest.mark.timeout(TEST_TIMEOUT_S)
def test_env_list_and_prune(
    foreign_model: ForeignModel, env_cache: pathlib.Path, server_logs: pathlib.Path
) -> None:
    """`env build` finds the environment the servers built; `env list --json` describes it;
    `env prune` keeps what was used lately, and removes everything with `--all`."""
    before = environments(env_cache)
    model_uri = str(foreign_model.model_dir)
    cache_args = ("--env-cache", str(env_cache))

    def cli(*args: str, timeout: float = QUICK_TIMEOUT_S) -> Finished:
        finished = run(arrowsmith("env", *args, *cache_args), server_logs, "env", timeout)
        assert finished.code == 0, finished.report()
        return finished

    built = cli("build", model_uri, "--env-manager", "uv", timeout=BUILD_TIMEOUT_S)
    environment = pathlib.Path(built.last_line())
    assert (environment / "bin" / "python").exists(), built.report()
    if before:
        assert [path.resolve() for path in before] == [environment.resolve()], built.report()

    listed = json.loads(cli("list", "--json").stdout)
    assert isinstance(listed, list) and len(listed) == 1, listed
    (entry,) = listed
    assert entry.keys() >= ENV_LIST_KEYS, entry
    assert same_path(entry["path"], environment), entry
    assert environment.name == entry["key"], entry
    assert entry["manager"] == "uv", entry
    assert str(entry["python"]).startswith("3.11."), entry
    assert model_uri in entry["models"] or foreign_model.model_dir.as_uri() in entry["models"]
    assert f"scikit-learn=={foreign_model.sklearn_version}" in entry["requirements"], entry
    assert isinstance(entry["size_bytes"], int) and entry["size_bytes"] > 0, entry

    cli("prune", "--unused-days", "30")
    assert environment.is_dir(), "an environment used just now was pruned"
    dry_run = cli("prune", "--all", "--dry-run")
    assert entry["key"] in dry_run.stdout, dry_run.report()
    assert environment.is_dir(), "--dry-run removed the environment"

    pruned = cli("prune", "--all")
    assert entry["key"] in pruned.stdout, pruned.report()
    assert not environment.exists()
    assert json.loads(cli("list", "--json").stdout) == []


@pytest.mark.slow
@pytest.mark.timeout(TEST_TIMEOUT_S)
def test_virtualenv_builds_with_pip_and_serves(
    foreign_model: ForeignModel, env_cache: pathlib.Path, server_logs: pathlib.Path
) -> None:
    """`--env-manager virtualenv`: the same answers from an environment of its own."""
    args = serve_args(env_cache, "virtualenv")
    with serving(foreign_model.model_dir, *args, log_dir=server_logs) as (server, worker):
        environment = built_environment(server.log_text(), env_cache, "virtualenv")
        assert_answers(server, foreign_model)
        assert_runs_in(worker, environment)
