"""Model URIs -> the name a model is served under and the URI actually loaded. Only URIs that
need no tracking server here; aliases, stages and `latest` are in tests/e2e/test_registry.py."""

import pathlib

import pytest
from arrowsmith.models import loader


@pytest.mark.parametrize(
    ("uri", "name"),
    [
        ("runs:/0a1b2c/model", "model"),
        ("runs:/0a1b2c/nested/path/classifier", "classifier"),
        ("runs:/0a1b2c/model/", "model"),
        ("models:/Name/3", "Name"),
        ("models:/Name@champion", "Name"),
        ("models:/Name/Production", "Name"),
        ("models:/Name/latest", "Name"),
        ("models:/m-123abc", "m-123abc"),
    ],
)
def test_default_name_of_remote_uris(uri: str, name: str) -> None:
    assert loader.default_name(uri) == name


def test_default_name_of_local_folder(tmp_path: pathlib.Path) -> None:
    folder = tmp_path / "wine"
    assert loader.default_name(str(folder)) == "wine"
    assert loader.default_name(f"{folder}/") == "wine"
    assert loader.default_name(folder.as_uri()) == "wine"


def test_default_name_of_relative_path(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`.` is the folder the server was started in, by its real name."""
    folder = tmp_path / "elasticnet"
    folder.mkdir()
    monkeypatch.chdir(folder)
    assert loader.default_name(".") == "elasticnet"
    assert loader.default_name("file:.") == "elasticnet"


def test_resolve_local_folder(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Local models load from their absolute path and have no registry version."""
    folder = tmp_path / "wine"
    folder.mkdir()
    monkeypatch.chdir(tmp_path)
    for uri in ("wine", str(folder), folder.as_uri(), "file:wine"):
        source = loader.resolve(uri)
        assert source == loader.ModelSource(uri, str(folder), "wine", "")
        assert loader.local_copy(source) == loader.LocalCopy(folder)


def test_file_uri_is_percent_decoded(tmp_path: pathlib.Path) -> None:
    folder = tmp_path / "space dir" / "my model"
    folder.mkdir(parents=True)
    source = loader.resolve(folder.as_uri())
    assert "%20" in folder.as_uri()
    assert (source.default_name, source.pinned_uri) == ("my model", str(folder))
    assert loader.local_copy(source) == loader.LocalCopy(folder)


def test_resolve_run_uri_is_loaded_as_given() -> None:
    source = loader.resolve("runs:/0a1b2c/model")
    assert source == loader.ModelSource("runs:/0a1b2c/model", "runs:/0a1b2c/model", "model", "")


def test_resolve_numbered_version_needs_no_registry_call() -> None:
    """`models:/Name/3` already names its version (no tracking server runs here)."""
    source = loader.resolve("models:/Name/3")
    assert source == loader.ModelSource("models:/Name/3", "models:/Name/3", "Name", "3")


def test_resolve_logged_model_id_has_no_version() -> None:
    """An MLflow 3 logged model (`models:/m-...`) lives outside the registry."""
    source = loader.resolve("models:/m-123abc")
    assert source == loader.ModelSource("models:/m-123abc", "models:/m-123abc", "m-123abc", "")
