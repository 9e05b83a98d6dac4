"""The model repository in one process, with the wine model: a followed reference that
moves swaps versions with no request lost (the old version answers what it already took),
a version that fails to load never takes traffic, and the repository API's control mode,
load and unload. The registry is stood in for by a table of what each URI points to."""

import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from arrowsmith import _native
from arrowsmith.batching.watch import RunnerWatch
from arrowsmith.config import ModelConfig
from arrowsmith.dataplane import DataPlane
from arrowsmith.errors import (
    InternalError,
    ModelNotFoundError,
    ModelNotReadyError,
    UnsupportedError,
)
from arrowsmith.models.loader import ModelSource
from arrowsmith.serving import repository as repository_module
from arrowsmith.serving.follower import RegistryFollower
from arrowsmith.serving.repository import ModelRepository, ServedVersion
from arrowsmith.serving.repository_api import RepositoryApi
from support import v2
from support.model_builders import read_wine_features
from tritonclient.grpc import service_pb2 as pb

URI = "models:/Wine@champion"
NAME = "wine"
STOP_WAIT_S = 10.0


class RecordingFront:
    """Stands for the native gRPC front: records what the repository tells it."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, ...]] = []

    def serve_version(self, served: ServedVersion) -> None:
        self.calls.append(("serve", served.name, served.version))

    def set_default_version(self, name: str, version: str) -> None:
        self.calls.append(("default", name, version))

    def unserve_version(self, name: str, version: str) -> None:
        self.calls.append(("unserve", name, version))

    def set_expected(self, names: list[str]) -> None:
        self.calls.append(("expected", *names))


class Registry:
    """What each URI points to now: version -> model folder."""

    def __init__(self, folders: dict[str, Path]) -> None:
        self.folders = folders
        self.current = "1"

    def resolve(self, uri: str) -> ModelSource:
        return ModelSource(uri, str(self.folders[self.current]), "Wine", self.current)


@pytest.fixture
def broken_model_dir(wine_model_dir: Path, tmp_path: Path) -> Path:
    """The wine model with its estimator file emptied: MLflow cannot load it."""
    broken = tmp_path / "broken"
    shutil.copytree(wine_model_dir, broken)
    for artifact in broken.iterdir():
        if artifact.suffix in (".skops", ".pkl"):
            artifact.write_bytes(b"")
    return broken


@pytest.fixture
def registry(wine_model_dir: Path, broken_model_dir: Path) -> Registry:
    return Registry({"1": wine_model_dir, "2": wine_model_dir, "3": broken_model_dir})


@pytest.fixture
def repository(registry: Registry) -> Iterator[ModelRepository]:
    config = ModelConfig(URI, name=NAME)
    repository = ModelRepository([config], RunnerWatch(), drain_timeout=5, resolve=registry.resolve)
    repository.load(config)
    yield repository
    repository.stop(STOP_WAIT_S)


def infer(dataplane: DataPlane, version: str = "") -> pb.ModelInferResponse:
    frame = read_wine_features().head(2)
    request = v2.columns_request(NAME, frame, "FP64", typed=False)
    request.model_version = version
    return pb.ModelInferResponse.FromString(dataplane.infer(request.SerializeToString()))


def wait_stopped(served: ServedVersion) -> None:
    deadline = time.monotonic() + STOP_WAIT_S
    while served.runner._thread.is_alive():
        assert time.monotonic() < deadline, "the retired version's runner did not end"
        time.sleep(0.05)


def test_a_moved_reference_swaps_without_losing_a_request(
    repository: ModelRepository, registry: Registry
) -> None:
    front = RecordingFront()
    repository.attach(front)
    dataplane = DataPlane(repository)
    assert infer(dataplane).model_version == "1"
    old = repository.get(NAME)

    registry.current = "2"
    RegistryFollower(repository, poll_interval=0).check()

    assert repository.get(NAME).version == "2"
    assert infer(dataplane).model_version == "2"
    # The front learnt of the new version, then the switch, then the old one's removal.
    assert front.calls[-3:] == [
        ("serve", NAME, "2"),
        ("default", NAME, "2"),
        ("unserve", NAME, "1"),
    ]
    # A request that found the old version just before the switch is still answered by it.
    frame = read_wine_features().head(1)
    request = v2.columns_request(NAME, frame, "FP64", typed=False).SerializeToString()
    job = _native.decode_request(request).job(old.model.signature)
    assert pb.ModelInferResponse.FromString(old.batcher.submit(job)).model_version == "1"
    with pytest.raises(ModelNotFoundError, match=r"no version '1' here \(served versions: '2'\)"):
        repository.get(NAME, "1")
    wait_stopped(old)
    assert [(e.version, e.state) for e in repository.index()] == [("2", "READY")]


def test_a_version_that_fails_to_load_never_takes_traffic(
    repository: ModelRepository, registry: Registry
) -> None:
    dataplane = DataPlane(repository)
    registry.current = "3"
    follower = RegistryFollower(repository, poll_interval=0)
    follower.check()
    assert repository.get(NAME).version == "1"
    assert infer(dataplane).model_version == "1"
    [served, failed] = repository.index()
    assert (served.version, served.state) == ("1", "READY")
    assert (failed.version, failed.state) == ("3", "UNAVAILABLE")
    assert "failed to load" in failed.reason
    # Tried again at the next look; once the reference moves to a good version, it swaps
    # and the failure leaves the index.
    registry.current = "2"
    follower.check()
    assert [(e.version, e.state) for e in repository.index()] == [("2", "READY")]


def test_the_control_mode_guards_load_and_unload(repository: ModelRepository) -> None:
    for mode in ("none", "poll"):
        api = RepositoryApi(repository, None, mode, None)
        with pytest.raises(UnsupportedError, match="--model-control-mode"):
            api.unload(NAME)
        with pytest.raises(UnsupportedError, match="--model-control-mode"):
            api.load(NAME, {})
    assert [e.state for e in RepositoryApi(repository, None, "none", None).index()] == ["READY"]


def test_unload_drains_and_the_index_never_says_ready(repository: ModelRepository) -> None:
    api = RepositoryApi(repository, None, "explicit", None)
    served = repository.get(NAME)
    api.unload(NAME)
    wait_stopped(served)
    [entry] = api.index()
    assert (entry.name, entry.state, entry.reason) == (NAME, "UNAVAILABLE", "unloaded by request")
    assert api.index(ready_only=True) == []
    with pytest.raises(ModelNotFoundError, match="not served here"):
        repository.get(NAME)
    # Unloaded, it no longer holds the server's readiness back.
    assert repository.ready
    api.load(NAME, {})
    assert repository.ready and repository.get(NAME).version == "1"


def test_load_by_uri_serves_a_new_model(repository: ModelRepository, wine_model_dir: Path) -> None:
    api = RepositoryApi(repository, None, "explicit", None)
    with pytest.raises(ModelNotFoundError, match="give its URI in the 'uri' parameter"):
        api.load("other", {})
    api.load("other", {"uri": str(wine_model_dir)})
    assert repository.get("other").model.name == "other"
    assert {e.name for e in api.index(ready_only=True)} == {NAME, "other"}


def test_a_model_being_loaded_is_unavailable_not_unknown(registry: Registry) -> None:
    config = ModelConfig(URI, name=NAME)
    repository = ModelRepository([config], RunnerWatch(), drain_timeout=5, resolve=registry.resolve)
    with pytest.raises(ModelNotReadyError, match="loading"):
        repository.get(NAME)


def test_entries_listed_under_one_name_are_served_side_by_side(wine_model_dir: Path) -> None:
    """Two `--config` entries of one name, each with its `version`: both served, the first
    listed the default; a request names the other by its version."""
    configs = [
        ModelConfig(str(wine_model_dir), name=NAME, version="a"),
        ModelConfig(str(wine_model_dir), name=NAME, version="b", max_batch_size=4),
    ]
    repository = ModelRepository(configs, RunnerWatch(), drain_timeout=5)
    repository.load_configured()
    try:
        dataplane = DataPlane(repository)
        assert infer(dataplane).model_version == "a"
        assert infer(dataplane, "b").model_version == "b"
        assert repository.get(NAME, "b").model.config.max_batch_size == 4
        index = [(e.version, e.state) for e in repository.index()]
        assert index == [("a", "READY"), ("b", "READY")]
    finally:
        repository.stop(STOP_WAIT_S)


def test_a_failed_load_keeps_the_configuration(
    repository: ModelRepository, registry: Registry
) -> None:
    """A client's load of a URI that does not load leaves the model, and the URI it
    follows, as they were."""
    api = RepositoryApi(repository, None, "explicit", None)
    registry.current = "3"
    with pytest.raises(InternalError, match="failed to load"):
        api.load(NAME, {"uri": "models:/Wine@challenger"})
    config = repository.config(NAME)
    assert config is not None and config.uri == URI
    assert repository.get(NAME).version == "1"


def test_model_code_that_exits_while_loading_fails_only_that_load(
    repository: ModelRepository, registry: Registry, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`sys.exit()` in a model's loading code (unpickling, load_context) is a failed load:
    the old version serves on and the follower looks again at its next poll."""

    def exits(*args: object) -> None:
        raise SystemExit(3)

    monkeypatch.setattr(repository_module, "load_model", exits)
    registry.current = "2"
    RegistryFollower(repository, poll_interval=0).check()
    assert repository.get(NAME).version == "1"
    [_, failed] = repository.index()
    assert (failed.version, failed.state) == ("2", "UNAVAILABLE") and "3" in failed.reason
