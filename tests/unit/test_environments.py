"""Models' own environments without building any: what a model's files ask for (`spec`), the
cache key and the cache's folders (`cache`), `arrowsmith env list|prune`, the interpreters
found here, the refusals of `build`, Arrowsmith as a wheel, the differences `--env-manager
local` warns of, and whether a model fits the environment a process runs in (`running`).

Environments here are fake folders (an interpreter symlink and a few files) moved into a
temporary cache with EnvironmentCache.complete; nothing is downloaded or installed."""

import base64
import csv
import hashlib
import io
import json
import logging
import os
import platform
import re
import shutil
import sys
import sysconfig
import threading
import time
import zipfile
from importlib import metadata
from pathlib import Path
from typing import Any

import arrowsmith
import pytest
from arrowsmith import cli
from arrowsmith.environments import build, interpreters, local, running, wheel
from arrowsmith.environments.cache import (
    BUILDING_PREFIX,
    MANIFEST_FILE,
    RECORD_FILE,
    USED_FILE,
    Environment,
    EnvironmentCache,
    damage,
    environment_key,
)
from arrowsmith.environments.spec import EnvironmentSpec, EnvironmentSpecError, read_spec

PYTHON = platform.python_version()
PYTHON_MINOR = ".".join(PYTHON.split(".")[:2])
#: A process id no process can have (Linux's pid_max is at most 2**22).
DEAD_PID = 99_999_999
DAY = 86_400.0


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def python_env(model_dir: Path, python: str = "3.11.7", *dependencies: str) -> Path:
    """A model folder with a python_env.yaml (its dependencies `-r requirements.txt`
    unless given)."""
    lines = dependencies or ("-r requirements.txt",)
    write(
        model_dir / "python_env.yaml",
        f"python: {python}\nbuild_dependencies:\n- pip\ndependencies:\n"
        + "".join(f"- {json.dumps(line)}\n" for line in lines),
    )
    return model_dir


def model_with(model_dir: Path, requirements: str, python: str = "3.11.7") -> Path:
    """A model folder with python_env.yaml and `requirements` as its requirements.txt."""
    write(model_dir / "requirements.txt", requirements)
    return python_env(model_dir, python)


def sha256_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


# --- spec.read_spec -------------------------------------------------------------------------


def test_python_env_with_requirements_drops_comments_and_blank_lines(tmp_path: Path) -> None:
    write(
        tmp_path / "python_env.yaml",
        "python: 3.11.7\n"
        "build_dependencies:\n- pip==24.0\n- setuptools\n- wheel\n"
        "dependencies:\n- -r requirements.txt\n",
    )
    write(
        tmp_path / "requirements.txt",
        "# saved by MLflow\n\nmlflow==3.10.0  # the server\n   \nnumpy>=1.26\n  # indented\n",
    )
    spec = read_spec(tmp_path)
    assert spec.python == "3.11.7"
    assert spec.python_minor == "3.11"
    assert spec.build_requirements == ("pip==24.0", "setuptools", "wheel")
    assert spec.requirements == ("mlflow==3.10.0", "numpy>=1.26")
    assert spec.constraints == ()
    assert spec.local_files == ()
    assert spec.source == "python_env.yaml"


def test_nested_requirement_and_constraint_files_are_read_relative_to_their_file(
    tmp_path: Path,
) -> None:
    model_with(
        tmp_path,
        "mlflow==3.10.0\n-r extra/more.txt\n-c constraints.txt\nscikit-learn\n",
    )
    write(tmp_path / "constraints.txt", "numpy<3  # top level\n")
    # Relative to extra/, not to the model folder.
    write(tmp_path / "extra" / "more.txt", "pandas\n-r deeper.txt\n-c pins.txt\n")
    write(tmp_path / "extra" / "deeper.txt", "pyarrow>=16\n")
    write(tmp_path / "extra" / "pins.txt", "pandas<3\n-r pin-more.txt\n")
    write(tmp_path / "extra" / "pin-more.txt", "pyarrow<30\n")
    spec = read_spec(tmp_path)
    assert spec.requirements == ("mlflow==3.10.0", "pandas", "pyarrow>=16", "scikit-learn")
    assert spec.constraints == ("pandas<3", "pyarrow<30", "numpy<3")


def test_long_option_names_of_included_files(tmp_path: Path) -> None:
    model_with(tmp_path, "--requirement a.txt\n--constraint b.txt\n")
    write(tmp_path / "a.txt", "numpy\n")
    write(tmp_path / "b.txt", "numpy<3\n")
    spec = read_spec(tmp_path)
    assert spec.requirements == ("numpy",)
    assert spec.constraints == ("numpy<3",)


def test_a_local_wheel_is_made_absolute_and_identified_by_its_content(tmp_path: Path) -> None:
    content = b"not really a wheel, but its bytes are what count"
    model = model_with(tmp_path / "model", "numpy\n./wheels/pkg-1.0-py3-none-any.whl\n")
    wheel_file = model / "wheels" / "pkg-1.0-py3-none-any.whl"
    wheel_file.parent.mkdir()
    wheel_file.write_bytes(content)
    spec = read_spec(model)
    absolute = str(wheel_file.resolve())
    assert spec.requirements == ("numpy", absolute)
    assert spec.local_files == ((absolute, sha256_of(content)),)
    assert spec.identity() == {
        "build_requirements": ["pip"],
        "requirements": ["numpy", sha256_of(content)],
        "constraints": [],
    }


def test_a_wheel_named_in_a_nested_file_is_relative_to_that_file(tmp_path: Path) -> None:
    model = model_with(tmp_path, "-r sub/reqs.txt\n")
    write(model / "sub" / "reqs.txt", "pkg-1.0-py3-none-any.whl\n")
    (model / "sub" / "pkg-1.0-py3-none-any.whl").write_bytes(b"wheel")
    spec = read_spec(model)
    assert spec.requirements == (str((model / "sub" / "pkg-1.0-py3-none-any.whl").resolve()),)
    assert spec.identity()["requirements"] == [sha256_of(b"wheel")]


def test_the_same_wheel_in_two_folders_is_the_same_environment(tmp_path: Path) -> None:
    def model(folder: str, content: bytes) -> EnvironmentSpec:
        model_dir = model_with(tmp_path / folder, "numpy\n./pkg-1.0-py3-none-any.whl\n")
        (model_dir / "pkg-1.0-py3-none-any.whl").write_bytes(content)
        return read_spec(model_dir)

    first = model("first", b"version one")
    moved = model("moved", b"version one")
    changed = model("changed", b"version two")
    assert first.requirements != moved.requirements  # the paths differ
    assert first.identity() == moved.identity()
    assert first.identity() != changed.identity()
    assert environment_key(first.identity()) == environment_key(moved.identity())
    assert environment_key(first.identity()) != environment_key(changed.identity())


def test_a_requirement_named_like_a_missing_file_stays_as_written(tmp_path: Path) -> None:
    spec = read_spec(model_with(tmp_path, "./absent-1.0-py3-none-any.whl\n"))
    assert spec.requirements == ("./absent-1.0-py3-none-any.whl",)
    assert spec.local_files == ()


def test_dependencies_listed_in_python_env_itself(tmp_path: Path) -> None:
    spec = read_spec(python_env(tmp_path, "3.10.13", "numpy==1.26.4", "# a comment", ""))
    assert spec.python_minor == "3.10"
    assert spec.requirements == ("numpy==1.26.4",)


def test_conda_yaml_alone_gives_python_and_the_pip_section(tmp_path: Path) -> None:
    write(
        tmp_path / "conda.yaml",
        "name: mlflow-env\nchannels:\n- conda-forge\ndependencies:\n- python=3.11.7\n"
        "- pip\n- setuptools\n- wheel\n- pip:\n  - mlflow==3.10.0\n  - -r requirements.txt\n",
    )
    write(tmp_path / "requirements.txt", "numpy==1.26.4\n")
    spec = read_spec(tmp_path)
    assert spec.python == "3.11.7"
    assert spec.build_requirements == ()
    assert spec.requirements == ("mlflow==3.10.0", "numpy==1.26.4")
    assert spec.source == "conda.yaml"


def test_python_env_is_preferred_to_conda_yaml(tmp_path: Path) -> None:
    write(tmp_path / "conda.yaml", "dependencies:\n- python=3.9.1\n- libgomp\n")
    spec = read_spec(model_with(tmp_path, "numpy\n"))
    assert spec.source == "python_env.yaml"
    assert spec.python == "3.11.7"


def test_another_conda_package_is_refused_by_name(tmp_path: Path) -> None:
    write(
        tmp_path / "conda.yaml",
        "dependencies:\n- python=3.11.7\n- pip\n- libgomp\n- pip:\n  - numpy\n",
    )
    with pytest.raises(EnvironmentSpecError, match="libgomp") as refused:
        read_spec(tmp_path)
    assert "--env-manager local" in str(refused.value)


def test_conda_yaml_without_python_is_refused(tmp_path: Path) -> None:
    write(tmp_path / "conda.yaml", "dependencies:\n- pip\n- pip:\n  - numpy\n")
    with pytest.raises(EnvironmentSpecError, match="which Python"):
        read_spec(tmp_path)


def test_a_model_without_environment_files_is_refused(tmp_path: Path) -> None:
    write(tmp_path / "requirements.txt", "numpy\n")
    with pytest.raises(EnvironmentSpecError, match="--env-manager local") as refused:
        read_spec(tmp_path)
    assert "python_env.yaml" in str(refused.value)
    assert "conda.yaml" in str(refused.value)


@pytest.mark.parametrize("version", ["three", '"3"', "3.x.1", "", "[3, 11]", '"3.11-rc"'])
def test_a_bad_python_version_is_refused(tmp_path: Path, version: str) -> None:
    write(tmp_path / "python_env.yaml", f"python: {version}\ndependencies: [numpy]\n")
    with pytest.raises(EnvironmentSpecError, match=r"is not like 3\.11\.7"):
        read_spec(tmp_path)


def test_a_bad_conda_python_version_is_refused(tmp_path: Path) -> None:
    write(tmp_path / "conda.yaml", "dependencies:\n- python=latest\n")
    with pytest.raises(EnvironmentSpecError, match=r"is not like 3\.11\.7"):
        read_spec(tmp_path)


@pytest.mark.parametrize(
    "text",
    ["- just a list\n", "python: 3.11.7\ndependencies: numpy\n", "python: [3.11\n"],
    ids=["not a mapping", "dependencies not a list", "not yaml"],
)
def test_a_malformed_python_env_is_refused(tmp_path: Path, text: str) -> None:
    write(tmp_path / "python_env.yaml", text)
    with pytest.raises(EnvironmentSpecError, match=r"python_env\.yaml"):
        read_spec(tmp_path)


def test_a_loop_of_included_files_is_refused(tmp_path: Path) -> None:
    model_with(tmp_path, "numpy\n-r a.txt\n")
    write(tmp_path / "a.txt", "pandas\n-r b.txt\n")
    write(tmp_path / "b.txt", "-r a.txt\n")
    with pytest.raises(EnvironmentSpecError, match=r"a\.txt.*cannot be read"):
        read_spec(tmp_path)


def test_a_file_including_itself_is_refused(tmp_path: Path) -> None:
    model_with(tmp_path, "-r requirements.txt\n")
    with pytest.raises(EnvironmentSpecError, match="cannot be read"):
        read_spec(tmp_path)


def test_the_same_file_included_twice_is_not_a_loop(tmp_path: Path) -> None:
    model_with(tmp_path, "-r common.txt\n-c common.txt\n")
    write(tmp_path / "common.txt", "numpy<3\n")
    spec = read_spec(tmp_path)
    assert spec.requirements == ("numpy<3",)
    assert spec.constraints == ("numpy<3",)


@pytest.mark.parametrize("option", ["-r", "-c"])
def test_a_missing_included_file_is_refused_by_path(tmp_path: Path, option: str) -> None:
    model_with(tmp_path, f"numpy\n{option} missing.txt\n")
    with pytest.raises(EnvironmentSpecError, match="cannot be read") as refused:
        read_spec(tmp_path)
    assert str((tmp_path / "missing.txt").resolve()) in str(refused.value)
    assert f"{option} missing.txt" in str(refused.value)


@pytest.mark.parametrize(
    ("version", "minor"), [("3.11.7", "3.11"), ("3.10.13", "3.10"), ("3.9", "3.9")]
)
def test_python_minor(version: str, minor: str) -> None:
    assert EnvironmentSpec(version, (), (), (), (), "python_env.yaml").python_minor == minor


# --- cache.environment_key ------------------------------------------------------------------

IDENTITY: dict[str, Any] = {
    "manager": "uv",
    "python": "3.11.7",
    "arrowsmith": "0.1.0+0123456789abcdef",
    "build_requirements": ["pip"],
    "requirements": ["numpy==1.26.4", "pandas"],
    "constraints": [],
}


def test_environment_key_does_not_depend_on_the_order_of_the_dict() -> None:
    reordered = dict(reversed(list(IDENTITY.items())))
    assert list(reordered) != list(IDENTITY)
    assert environment_key(reordered) == environment_key(IDENTITY)
    assert environment_key(dict(IDENTITY)) == environment_key(IDENTITY)
    assert re.fullmatch(r"[0-9a-f]{20}", environment_key(IDENTITY))


@pytest.mark.parametrize(
    ("part", "value"),
    [
        ("manager", "virtualenv"),
        ("python", "3.11.8"),
        ("arrowsmith", "0.1.0+fedcba9876543210"),
        ("build_requirements", ["pip==24.0"]),
        ("requirements", ["numpy==1.26.3", "pandas"]),
        ("requirements", ["pandas", "numpy==1.26.4"]),
        ("constraints", ["numpy<2"]),
    ],
)
def test_environment_key_differs_when_any_part_differs(part: str, value: Any) -> None:
    assert environment_key({**IDENTITY, part: value}) != environment_key(IDENTITY)


def test_environment_key_differs_with_an_extra_part() -> None:
    assert environment_key({**IDENTITY, "extra": 1}) != environment_key(IDENTITY)


# --- cache.EnvironmentCache -----------------------------------------------------------------


def fake_environment(
    cache: EnvironmentCache,
    key: str,
    used: float | None = None,
    models: tuple[str, ...] = ("models:/wine/1",),
) -> Environment:
    """A complete environment of a few files: an interpreter, a library, a module."""
    folder = cache.building_folder(key)
    (folder / "bin").mkdir(parents=True)
    (folder / "bin" / "python").symlink_to(sys.executable)
    site = folder / "lib" / "python3.11" / "site-packages" / "pkg"
    site.mkdir(parents=True)
    (site / "__init__.py").write_text("VALUE = 1\n")
    (site / "_speedups.cpython-311-x86_64-linux-gnu.so").write_bytes(b"\x7fELF" + b"\0" * 2000)
    (folder / "lib" / "x.so").write_bytes(b"\x7fELF" + b"\0" * 4000)
    (folder / "pyvenv.cfg").write_text("home = /usr/bin\n")
    record = {
        "manager": "uv",
        "python": PYTHON,
        "requirements": ["numpy==1.26.4"],
        "models": list(models),
        "created": time.time(),
    }
    environment = cache.complete(key, folder, record)
    if used is not None:
        os.utime(environment.path / USED_FILE, (used, used))
    return environment


@pytest.fixture
def cache(tmp_path: Path) -> EnvironmentCache:
    return EnvironmentCache(tmp_path / "envs")


def test_a_completed_environment_is_whole(cache: EnvironmentCache) -> None:
    environment = fake_environment(cache, "k1")
    assert environment == cache.environment("k1")
    assert environment.path == cache.root / "k1"
    assert environment.python.resolve() == Path(sys.executable).resolve()
    assert environment.record()["key"] == "k1"
    assert environment.record()["manager"] == "uv"
    assert (environment.path / MANIFEST_FILE).is_file()
    assert (environment.path / USED_FILE).is_file()
    assert not any(entry.name.startswith(BUILDING_PREFIX) for entry in cache.root.iterdir())
    assert damage(environment) is None


def test_complete_replaces_an_environment_already_there(cache: EnvironmentCache) -> None:
    old = fake_environment(cache, "k1")
    (old.path / "stale-file").write_text("from the damaged build")
    new = fake_environment(cache, "k1")
    assert not (new.path / "stale-file").exists()
    assert damage(new) is None
    assert [entry.name for entry in cache.root.iterdir() if not entry.name.startswith(".")] == [
        "k1"
    ]


def test_damage_names_a_deleted_file(cache: EnvironmentCache) -> None:
    environment = fake_environment(cache, "k1")
    (environment.path / "lib" / "python3.11" / "site-packages" / "pkg" / "__init__.py").unlink()
    problem = damage(environment)
    assert problem is not None
    assert "pkg/__init__.py is missing" in problem


def test_damage_names_a_deleted_folder(cache: EnvironmentCache) -> None:
    environment = fake_environment(cache, "k1")
    site = environment.path / "lib" / "python3.11" / "site-packages"
    shutil.rmtree(site)
    problem = damage(environment)
    assert problem is not None
    assert "site-packages" in problem
    assert "missing" in problem


def test_damage_names_a_truncated_library(cache: EnvironmentCache) -> None:
    environment = fake_environment(cache, "k1")
    with open(environment.path / "lib" / "x.so", "r+b") as library:
        library.truncate(100)
    assert damage(environment) == "lib/x.so has 100 bytes, 4004 when built"


def test_damage_names_a_missing_interpreter(cache: EnvironmentCache) -> None:
    environment = fake_environment(cache, "k1")
    environment.python.unlink()
    (environment.path / "bin" / "python").symlink_to(cache.root / "no-such-interpreter")
    problem = damage(environment)
    assert problem is not None
    assert "interpreter" in problem


def test_damage_names_a_record_of_another_environment(cache: EnvironmentCache) -> None:
    environment = fake_environment(cache, "k1")
    record = environment.record()
    (environment.path / RECORD_FILE).write_text(json.dumps({**record, "key": "k2"}))
    problem = damage(environment)
    assert problem is not None
    assert RECORD_FILE in problem
    assert "another environment" in problem


def test_damage_names_a_missing_record(cache: EnvironmentCache) -> None:
    environment = fake_environment(cache, "k1")
    (environment.path / RECORD_FILE).unlink()
    assert damage(environment) is not None


@pytest.mark.parametrize("manifest", [None, "{not json"], ids=["missing", "unreadable"])
def test_damage_names_a_missing_manifest(cache: EnvironmentCache, manifest: str | None) -> None:
    environment = fake_environment(cache, "k1")
    if manifest is None:
        (environment.path / MANIFEST_FILE).unlink()
    else:
        (environment.path / MANIFEST_FILE).write_text(manifest)
    problem = damage(environment)
    assert problem is not None
    assert MANIFEST_FILE in problem


def test_bytecode_and_use_written_later_are_not_damage(cache: EnvironmentCache) -> None:
    environment = fake_environment(cache, "k1")
    package = environment.path / "lib" / "python3.11" / "site-packages" / "pkg"
    (package / "__pycache__").mkdir()
    (package / "__pycache__" / "__init__.cpython-311.pyc").write_bytes(b"\0" * 64)
    (environment.path / "__pycache__").mkdir()
    environment.mark_used()
    environment.note_model("models:/other/2")
    assert damage(environment) is None


def test_bytecode_there_at_build_may_go_later(cache: EnvironmentCache) -> None:
    folder = cache.building_folder("k1")
    (folder / "bin").mkdir(parents=True)
    (folder / "bin" / "python").symlink_to(sys.executable)
    (folder / "__pycache__").mkdir()
    (folder / "__pycache__" / "module.cpython-311.pyc").write_bytes(b"\0")
    environment = cache.complete("k1", folder, {})
    (environment.path / "__pycache__" / "module.cpython-311.pyc").unlink()
    (environment.path / "__pycache__").rmdir()
    (environment.path / USED_FILE).unlink()
    assert damage(environment) is None


def test_locked_makes_a_second_builder_wait(
    cache: EnvironmentCache, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="arrowsmith.environments")
    order: list[str] = []
    held = threading.Event()
    release = threading.Event()

    def first() -> None:
        with cache.locked("k1"):
            order.append("first in")
            held.set()
            release.wait(10)
            order.append("first out")

    def second() -> None:
        with cache.locked("k1"):
            order.append("second in")

    first_thread = threading.Thread(target=first)
    first_thread.start()
    assert held.wait(10)
    second_thread = threading.Thread(target=second)
    second_thread.start()
    deadline = time.monotonic() + 10
    while not any(
        "another process is building it; waiting" in r.getMessage() for r in caplog.records
    ):
        assert time.monotonic() < deadline, "the second builder did not wait"
        time.sleep(0.01)
    time.sleep(0.05)
    assert order == ["first in"]
    release.set()
    first_thread.join(10)
    second_thread.join(10)
    assert order == ["first in", "first out", "second in"]
    waiting = [r for r in caplog.records if "waiting" in r.getMessage()]
    assert len(waiting) == 1
    assert waiting[0].levelno == logging.INFO
    assert "k1" in waiting[0].getMessage()


def test_locks_of_different_keys_do_not_wait(
    cache: EnvironmentCache, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="arrowsmith.environments")
    with cache.locked("k1"), cache.locked("k2"):
        pass
    with cache.locked("k1"):
        pass
    assert not any("waiting" in r.getMessage() for r in caplog.records)


def test_leftovers_are_unfinished_builds_of_dead_processes(cache: EnvironmentCache) -> None:
    fake_environment(cache, "k1")
    dead = cache.root / f"{BUILDING_PREFIX}k2-{DEAD_PID}"
    alive = cache.root / f"{BUILDING_PREFIX}k3-{os.getpid()}"
    nameless = cache.root / f"{BUILDING_PREFIX}k4-nopid"
    for folder in (dead, alive, nameless):
        (folder / "bin").mkdir(parents=True)
    assert sorted(cache.leftovers()) == sorted([dead, nameless])
    # A building folder of this process is fresh: building_folder clears it.
    assert cache.building_folder("k3") == alive
    assert not alive.exists()


def test_an_absent_cache_is_empty(tmp_path: Path) -> None:
    cache = EnvironmentCache(tmp_path / "absent")
    assert cache.environments() == []
    assert cache.leftovers() == []
    assert not cache.root.exists()


def test_environments_are_ordered_by_last_use(cache: EnvironmentCache) -> None:
    now = time.time()
    fake_environment(cache, "middle", used=now - 2 * DAY)
    fake_environment(cache, "recent", used=now - 60)
    fake_environment(cache, "oldest", used=now - 40 * DAY)
    (cache.wheels).mkdir()
    (cache.root / f"{BUILDING_PREFIX}k9-{DEAD_PID}").mkdir()
    assert [environment.key for environment in cache.environments()] == [
        "oldest",
        "middle",
        "recent",
    ]
    cache.environment("oldest").mark_used()
    assert cache.environments()[-1].key == "oldest"


def test_last_used_falls_back_to_the_record(cache: EnvironmentCache) -> None:
    environment = fake_environment(cache, "k1")
    (environment.path / USED_FILE).unlink()
    os.utime(environment.path / RECORD_FILE, (1_000_000.0, 1_000_000.0))
    assert environment.last_used() == 1_000_000.0
    assert cache.environment("absent").last_used() == 0.0


def test_note_model_adds_a_uri_once(cache: EnvironmentCache) -> None:
    environment = fake_environment(cache, "k1", models=("models:/wine/1",))
    environment.note_model("models:/wine/2")
    environment.note_model("models:/wine/2")
    environment.note_model("models:/wine/1")
    assert environment.record()["models"] == ["models:/wine/1", "models:/wine/2"]
    assert environment.record()["key"] == "k1"
    assert damage(environment) is None


def test_remove_deletes_an_environment(cache: EnvironmentCache) -> None:
    environment = fake_environment(cache, "k1")
    cache.remove(environment.path)
    assert not environment.path.exists()
    assert cache.environments() == []
    assert cache.leftovers() == []
    cache.remove(environment.path)  # already gone: nothing to do


# --- build: refusals and the cache, without a build -----------------------------------------


def test_check_manager_refuses_conda_naming_uv() -> None:
    with pytest.raises(ValueError, match="--env-manager uv"):
        build.check_manager("conda")


def test_check_manager_refuses_an_unknown_manager() -> None:
    with pytest.raises(ValueError, match="'pipenv' is not one of local, uv, virtualenv"):
        build.check_manager("pipenv")


@pytest.mark.parametrize("manager", ["local", "uv", "virtualenv"])
def test_check_manager_allows_the_managers_that_work(manager: str) -> None:
    build.check_manager(manager)


@pytest.fixture(scope="module")
def installed() -> list[str]:
    """The interpreter versions found here (asked of each once: it takes a moment)."""
    return interpreters.installed_versions()


def test_missing_python_message_names_the_versions_found(
    installed: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(interpreters, "installed_versions", lambda: installed)
    spec = EnvironmentSpec("3.4.0", (), ("numpy",), (), (), "python_env.yaml")
    message = build.missing_python_message("models:/old/3", spec)
    assert message.startswith("models:/old/3 needs Python 3.4 (from its python_env.yaml: 3.4.0)")
    assert f"found: {', '.join(installed)}" in message
    assert PYTHON in message
    assert "--env-manager local" in message


def test_missing_python_message_when_none_is_found(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(interpreters, "installed_versions", list)
    spec = EnvironmentSpec("3.4.0", (), (), (), (), "conda.yaml")
    assert "(found: none)" in build.missing_python_message("/models/old", spec)


def test_ensure_environment_refuses_a_missing_python_before_building(
    cache: EnvironmentCache, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(interpreters, "installed_versions", lambda: ["3.11.7"])
    spec = EnvironmentSpec("3.4.0", (), ("numpy",), (), (), "python_env.yaml")
    with pytest.raises(ValueError, match=r"needs Python 3\.4 .*found: 3\.11\.7"):
        build.ensure_environment(spec, "uv", cache, "/models/old")
    assert not cache.root.exists()


def test_ensure_environment_refuses_conda_before_building(cache: EnvironmentCache) -> None:
    spec = EnvironmentSpec(PYTHON, (), ("numpy",), (), (), "conda.yaml")
    with pytest.raises(ValueError, match="--env-manager uv"):
        build.ensure_environment(spec, "conda", cache, "/models/m")
    assert not cache.root.exists()


def test_ensure_environment_builds_once_and_again_when_damaged(
    cache: EnvironmentCache, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A fake build in place of uv's: the cache is consulted, and a damaged environment is
    built again."""
    caplog.set_level(logging.INFO, logger="arrowsmith.environments")
    builds: list[str] = []

    def fake_build(
        key: str, spec: EnvironmentSpec, manager: str, cache: EnvironmentCache, *rest: Any
    ) -> Environment:
        builds.append(key)
        return fake_environment(cache, key, models=("/models/first",))

    monkeypatch.setattr(build, "_build", fake_build)
    spec = EnvironmentSpec(PYTHON, (), ("numpy",), (), (), "python_env.yaml")
    first = build.ensure_environment(spec, "uv", cache, "/models/first")
    assert builds == [first.key]
    again = build.ensure_environment(spec, "uv", cache, "/models/second")
    assert again == first
    assert builds == [first.key]
    assert again.record()["models"] == ["/models/first", "/models/second"]
    assert any("cached at" in r.getMessage() for r in caplog.records)
    other = build.ensure_environment(spec, "virtualenv", cache, "/models/first")
    assert other.key != first.key
    assert builds == [first.key, other.key]

    with open(first.path / "lib" / "x.so", "r+b") as library:
        library.truncate(10)
    rebuilt = build.ensure_environment(spec, "uv", cache, "/models/first")
    assert rebuilt.key == first.key
    assert builds == [first.key, other.key, first.key]
    assert damage(rebuilt) is None
    damaged = [r for r in caplog.records if "is damaged" in r.getMessage()]
    assert len(damaged) == 1
    assert damaged[0].levelno == logging.WARNING
    assert "lib/x.so" in damaged[0].getMessage()


def test_a_whole_environment_is_used_without_the_lock(
    cache: EnvironmentCache, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A cache baked into a read-only image layer: no lock file can be made there, and none
    is needed to use what is already whole."""
    spec = EnvironmentSpec(PYTHON, (), ("numpy",), (), (), "python_env.yaml")
    monkeypatch.setattr(
        build, "_build", lambda key, *rest: fake_environment(cache, key, models=("/m",))
    )
    built = build.ensure_environment(spec, "uv", cache, "/m")

    def read_only(key: str) -> Any:
        raise OSError(30, "Read-only file system")

    monkeypatch.setattr(cache, "locked", read_only)
    monkeypatch.setattr(build, "_build", lambda *args: pytest.fail("built again"))
    assert build.ensure_environment(spec, "uv", cache, "/m") == built


# --- commands: arrowsmith env list|prune ----------------------------------------------------


def env_command(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    code = cli.main(["env", *argv])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert err == ""
    return out


def test_env_list_as_json(cache: EnvironmentCache, capsys: pytest.CaptureFixture[str]) -> None:
    now = time.time()
    fake_environment(cache, "recent", used=now - 60, models=("models:/a/1", "models:/a/2"))
    fake_environment(cache, "old", used=now - 40 * DAY)
    listed = json.loads(env_command(capsys, "list", "--json", "--env-cache", str(cache.root)))
    assert [entry["key"] for entry in listed] == ["old", "recent"]
    recent = listed[1]
    assert recent["path"] == str(cache.root / "recent")
    assert recent["manager"] == "uv"
    assert recent["python"] == PYTHON
    assert recent["requirements"] == ["numpy==1.26.4"]
    assert recent["models"] == ["models:/a/1", "models:/a/2"]
    assert recent["last_used"] == pytest.approx(now - 60, abs=1)
    assert recent["created"] == pytest.approx(now, abs=60)
    assert recent["size_bytes"] > 6000


def test_env_list_as_a_table(cache: EnvironmentCache, capsys: pytest.CaptureFixture[str]) -> None:
    fake_environment(cache, "k1", models=("models:/wine/1",))
    out = env_command(capsys, "list", "--env-cache", str(cache.root))
    header, row = out.splitlines()
    assert header.split() == ["KEY", "MANAGER", "PYTHON", "SIZE", "LAST", "USED", "MODELS"]
    assert row.startswith("k1")
    assert "uv" in row
    assert PYTHON in row
    assert row.endswith("models:/wine/1")


def test_env_list_of_an_empty_cache(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = tmp_path / "envs"
    assert json.loads(env_command(capsys, "list", "--json", "--env-cache", str(root))) == []
    assert env_command(capsys, "list", "--env-cache", str(root)) == f"no environments in {root}\n"


@pytest.fixture
def aged_cache(cache: EnvironmentCache) -> EnvironmentCache:
    """An environment used 40 days ago, one used a minute ago, a dead builder's folder and a
    live builder's folder."""
    now = time.time()
    fake_environment(cache, "old", used=now - 40 * DAY)
    fake_environment(cache, "recent", used=now - 60)
    (cache.root / f"{BUILDING_PREFIX}dead-{DEAD_PID}" / "bin").mkdir(parents=True)
    (cache.root / f"{BUILDING_PREFIX}live-{os.getpid()}" / "bin").mkdir(parents=True)
    return cache


def remaining(cache: EnvironmentCache) -> list[str]:
    return sorted(entry.name for entry in cache.root.iterdir() if entry.is_dir())


ALL_FOLDERS = sorted(
    ["old", "recent", f"{BUILDING_PREFIX}dead-{DEAD_PID}", f"{BUILDING_PREFIX}live-{os.getpid()}"]
)


def test_env_prune_dry_run_removes_nothing(
    aged_cache: EnvironmentCache, capsys: pytest.CaptureFixture[str]
) -> None:
    root = aged_cache.root
    out = env_command(capsys, "prune", "--dry-run", "--all", "--env-cache", str(root))
    assert sorted(out.splitlines()) == sorted(
        [
            f"would remove {root / 'old'}",
            f"would remove {root / 'recent'}",
            f"would remove {root / f'{BUILDING_PREFIX}dead-{DEAD_PID}'}",
        ]
    )
    assert remaining(aged_cache) == ALL_FOLDERS


def test_env_prune_removes_environments_unused_for_30_days_and_dead_builds(
    aged_cache: EnvironmentCache, capsys: pytest.CaptureFixture[str]
) -> None:
    root = aged_cache.root
    out = env_command(capsys, "prune", "--env-cache", str(root))
    assert sorted(out.splitlines()) == sorted(
        [f"removed {root / 'old'}", f"removed {root / f'{BUILDING_PREFIX}dead-{DEAD_PID}'}"]
    )
    assert remaining(aged_cache) == sorted(["recent", f"{BUILDING_PREFIX}live-{os.getpid()}"])
    assert damage(aged_cache.environment("recent")) is None


def test_env_prune_unused_days_0_removes_every_environment_not_in_use_now(
    aged_cache: EnvironmentCache, capsys: pytest.CaptureFixture[str]
) -> None:
    root = aged_cache.root
    out = env_command(capsys, "prune", "--unused-days", "0", "--env-cache", str(root))
    assert f"removed {root / 'recent'}" in out.splitlines()
    assert remaining(aged_cache) == [f"{BUILDING_PREFIX}live-{os.getpid()}"]


def test_env_prune_all_removes_environments_just_used(
    aged_cache: EnvironmentCache, capsys: pytest.CaptureFixture[str]
) -> None:
    aged_cache.environment("recent").mark_used()
    os.utime(aged_cache.root / "recent" / USED_FILE)
    env_command(capsys, "prune", "--all", "--env-cache", str(aged_cache.root))
    assert remaining(aged_cache) == [f"{BUILDING_PREFIX}live-{os.getpid()}"]
    assert aged_cache.environments() == []


def test_env_prune_with_nothing_to_remove(
    cache: EnvironmentCache, capsys: pytest.CaptureFixture[str]
) -> None:
    fake_environment(cache, "recent")
    out = env_command(capsys, "prune", "--env-cache", str(cache.root))
    assert out == "nothing to remove\n"
    assert remaining(cache) == ["recent"]
    assert env_command(capsys, "prune", "--env-cache", str(cache.root / "absent")) == (
        "nothing to remove\n"
    )


# --- interpreters ---------------------------------------------------------------------------


def test_find_the_running_version_gives_the_running_interpreter() -> None:
    found = interpreters.find(PYTHON)
    assert found.version == PYTHON
    assert found.minor == PYTHON_MINOR
    assert found.path.exists()


def test_find_an_absent_minor_version_raises_missing_interpreter() -> None:
    with pytest.raises(interpreters.MissingInterpreter, match=r"3\.4"):
        interpreters.find("3.4.0")


def test_installed_versions_include_the_running_one(installed: list[str]) -> None:
    assert PYTHON in installed
    assert "3.4.0" not in installed
    as_numbers = [tuple(int(part) for part in version.split(".")) for version in installed]
    assert as_numbers == sorted(set(as_numbers))


# --- wheel ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def wheels(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("wheels")


@pytest.fixture(scope="module")
def built_wheel(wheels: Path) -> Path:
    return wheel.build_wheel(wheels)


def test_build_wheel_names_the_wheel_by_version_abi3_and_platform(
    built_wheel: Path, wheels: Path
) -> None:
    platform_tag = sysconfig.get_platform().replace("-", "_").replace(".", "_")
    assert built_wheel.parent == wheels
    assert built_wheel.name == (
        f"arrowsmith-{arrowsmith.__version__}-cp311-abi3-{platform_tag}.whl"
    )
    assert sorted(path.name for path in wheels.iterdir()) == [built_wheel.name]


def test_the_wheel_is_a_zip_whose_record_lists_every_file(built_wheel: Path) -> None:
    dist_info = f"arrowsmith-{arrowsmith.__version__}.dist-info"
    with zipfile.ZipFile(built_wheel) as archive:
        assert archive.testzip() is None
        names = archive.namelist()
        record = list(csv.reader(io.StringIO(archive.read(f"{dist_info}/RECORD").decode())))
        listed = {row[0]: row[1:] for row in record}
        assert sorted(listed) == sorted(names)
        assert listed[f"{dist_info}/RECORD"] == ["", ""]
        for name in names:
            if name == f"{dist_info}/RECORD":
                continue
            data = archive.read(name)
            digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=")
            assert listed[name] == [f"sha256={digest.decode()}", str(len(data))], name
    assert len(names) == len(set(names))
    for required in (
        "arrowsmith/__init__.py",
        "arrowsmith/cli.py",
        "arrowsmith/environments/spec.py",
        f"{dist_info}/METADATA",
        f"{dist_info}/WHEEL",
        f"{dist_info}/entry_points.txt",
    ):
        assert required in names
    assert not [name for name in names if "__pycache__" in name or name.endswith(".pyc")]
    assert all(name.startswith(("arrowsmith/", f"{dist_info}/")) for name in names)


def test_the_wheel_declares_its_name_dependencies_and_tag(built_wheel: Path) -> None:
    dist_info = f"arrowsmith-{arrowsmith.__version__}.dist-info"
    with zipfile.ZipFile(built_wheel) as archive:
        metadata_text = archive.read(f"{dist_info}/METADATA").decode()
        wheel_text = archive.read(f"{dist_info}/WHEEL").decode()
        entry_points = archive.read(f"{dist_info}/entry_points.txt").decode()
    lines = metadata_text.splitlines()
    assert "Name: arrowsmith" in lines
    assert f"Version: {arrowsmith.__version__}" in lines
    requires = [line for line in lines if line.startswith("Requires-Dist: ")]
    assert requires
    assert any(line.startswith("Requires-Dist: mlflow") for line in requires)
    tag = built_wheel.name.removesuffix(".whl").split("-", 2)[2]
    assert tag.startswith("cp311-abi3-")
    assert f"Tag: {tag}" in wheel_text.splitlines()
    assert "Wheel-Version: 1.0" in wheel_text.splitlines()
    assert "Root-Is-Purelib: false" in wheel_text.splitlines()
    assert "arrowsmith.cli:main" in entry_points


def test_a_second_build_returns_the_same_wheel_without_building(
    built_wheel: Path, wheels: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = built_wheel.stat()

    def no_rebuild() -> list[Path]:
        raise AssertionError("the wheel was built again")

    monkeypatch.setattr(wheel, "_package_files", no_rebuild)
    assert wheel.build_wheel(wheels) == built_wheel
    after = built_wheel.stat()
    assert (after.st_ino, after.st_mtime_ns, after.st_size) == (
        before.st_ino,
        before.st_mtime_ns,
        before.st_size,
    )


def test_fingerprint_is_stable_between_calls() -> None:
    first = wheel.fingerprint()
    assert first == wheel.fingerprint()
    assert re.fullmatch(re.escape(arrowsmith.__version__) + r"\+[0-9a-f]{16}", first)


# --- local.differences ----------------------------------------------------------------------


OTHER_MINOR = "3.9.18" if PYTHON_MINOR != "3.9" else "3.10.13"


def test_differences_list_what_this_environment_lacks(tmp_path: Path) -> None:
    packaging_version = metadata.version("packaging")
    model = model_with(
        tmp_path,
        "numpy==0.0.1\nnot-a-real-package-xyz==1.0\n"
        f"packaging=={packaging_version}\n"
        'numpy==0.0.2; python_version < "3"\n'
        "./wheels/pkg-1.0-py3-none-any.whl\n",
        python=OTHER_MINOR,
    )
    assert local.differences(model) == [
        f"Python {OTHER_MINOR} (running {PYTHON})",
        f"numpy==0.0.1 (installed {metadata.version('numpy')})",
        "not-a-real-package-xyz==1.0 (not installed)",
    ]


def test_no_differences_for_what_is_installed(tmp_path: Path) -> None:
    model = model_with(tmp_path, f"packaging=={metadata.version('packaging')}\nnumpy\n", PYTHON)
    assert local.differences(model) == []


def test_no_differences_without_environment_files(tmp_path: Path) -> None:
    assert local.differences(tmp_path) == []


def test_warn_differences_logs_one_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="arrowsmith.environments")
    model = model_with(tmp_path, "numpy==0.0.1\nnot-a-real-package-xyz==1.0\n", PYTHON)
    local.warn_differences("wine", model)
    warnings = [r for r in caplog.records if r.name == "arrowsmith.environments"]
    assert len(warnings) == 1
    assert warnings[0].levelno == logging.WARNING
    message = warnings[0].getMessage()
    assert message.startswith("wine: ")
    assert "numpy==0.0.1" in message
    assert "not-a-real-package-xyz==1.0 (not installed)" in message
    assert "--env-manager uv" in message


def test_warn_differences_is_quiet_when_nothing_differs(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="arrowsmith.environments")
    local.warn_differences("wine", model_with(tmp_path, "numpy\n", PYTHON))
    assert [r for r in caplog.records if r.name == "arrowsmith.environments"] == []


# --- running.check_fits ---------------------------------------------------------------------


def test_check_fits_does_nothing_outside_a_model_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sys, "prefix", str(tmp_path / "plain-venv"))
    assert running.running_record() is None
    # Even a folder without environment files is not read.
    running.check_fits("wine", "1", tmp_path / "no-model")


@pytest.fixture
def running_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """This process as if it ran in the environment of the model in `model-1`."""
    model = model_with(tmp_path / "model-1", "numpy==1.26.4\npandas\n", PYTHON)
    prefix = tmp_path / "env"
    write(
        prefix / RECORD_FILE,
        json.dumps({"python": PYTHON, "key": "abc123", "identity": read_spec(model).identity()}),
    )
    monkeypatch.setattr(sys, "prefix", str(prefix))
    return model


def test_a_model_with_the_same_spec_fits(running_environment: Path, tmp_path: Path) -> None:
    running.check_fits("wine", "1", running_environment)
    same = model_with(tmp_path / "model-2", "# the same\nnumpy==1.26.4\n\npandas\n", PYTHON)
    running.check_fits("wine", "2", same)
    other_patch = model_with(tmp_path / "model-3", "numpy==1.26.4\npandas\n", f"{PYTHON_MINOR}.99")
    running.check_fits("wine", "3", other_patch)


def test_a_model_with_another_requirement_needs_another_environment(
    running_environment: Path, tmp_path: Path
) -> None:
    other = model_with(tmp_path / "model-2", "numpy==2.0.0\npandas\n", PYTHON)
    with pytest.raises(running.NeedsOtherEnvironment, match="abc123") as refused:
        running.check_fits("wine", "2", other)
    assert "model wine version 2" in str(refused.value)


def test_a_model_of_another_python_minor_needs_another_environment(
    running_environment: Path, tmp_path: Path
) -> None:
    other = model_with(tmp_path / "model-2", "numpy==1.26.4\npandas\n", OTHER_MINOR)
    with pytest.raises(running.NeedsOtherEnvironment):
        running.check_fits("wine", "", other)


def test_a_model_without_environment_files_is_refused_in_a_model_environment(
    running_environment: Path, tmp_path: Path
) -> None:
    with pytest.raises(EnvironmentSpecError):
        running.check_fits("wine", "2", tmp_path)


# --- forms MLflow and pip write ------------------------------------------------------------


def test_conda_yaml_as_mlflow_writes_it_is_read(tmp_path: Path) -> None:
    write(
        tmp_path / "conda.yaml",
        "channels: [conda-forge]\ndependencies:\n- python=3.11.7\n- pip<=24.0\n"
        "- pip:\n  - mlflow==3.10.0\n  - scikit-learn==1.7.2\nname: mlflow-env\n",
    )
    spec = read_spec(tmp_path)
    assert spec.python == "3.11.7"
    assert spec.requirements == ("mlflow==3.10.0", "scikit-learn==1.7.2")


def test_a_python_version_is_read_as_written_not_as_a_number(tmp_path: Path) -> None:
    write(tmp_path / "requirements.txt", "numpy\n")
    python_env(tmp_path, "3.10")
    assert read_spec(tmp_path).python_minor == "3.10"


@pytest.mark.parametrize("line", ["-rmore.txt", "--requirement=more.txt", "-r  more.txt"])
def test_every_form_of_an_included_file_is_read(tmp_path: Path, line: str) -> None:
    write(tmp_path / "more.txt", "numpy==2.0.0\n")
    write(tmp_path / "requirements.txt", f"{line}\n")
    python_env(tmp_path)
    assert read_spec(tmp_path).requirements == ("numpy==2.0.0",)


def test_a_local_folder_is_made_absolute_and_identified_by_its_content(tmp_path: Path) -> None:
    for copy in ("a", "b"):
        write(tmp_path / copy / "pkg" / "setup.py", "print('same')\n")
        model_with(tmp_path / copy, "./pkg\n")
    first, second = read_spec(tmp_path / "a"), read_spec(tmp_path / "b")
    assert first.requirements == (str(tmp_path / "a" / "pkg"),)
    assert first.identity() == second.identity()
    write(tmp_path / "b" / "pkg" / "setup.py", "print('other')\n")
    assert read_spec(tmp_path / "b").identity() != first.identity()


def test_pre_release_interpreters_are_listed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(interpreters, "_path_names", lambda: {"python3.14"})
    monkeypatch.setattr(
        interpreters,
        "_on_path",
        lambda minor: interpreters.Interpreter("3.14.0rc2", Path("/nowhere/python3.14")),
    )
    assert "3.14.0rc2" in interpreters.installed_versions()
