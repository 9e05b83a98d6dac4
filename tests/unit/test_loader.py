"""Model URIs -> the name a model is served under and the URI actually loaded. Only URIs that
need no tracking server here; aliases, stages and `latest` are in tests/e2e/test_registry.py."""

import logging
import pathlib
import time

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
        ("s3://bucket/experiments/1/models/m-1/artifacts", "artifacts"),
        ("mlflow-artifacts:/0/models/m-1/artifacts/", "artifacts"),
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


def test_a_download_shows_its_progress_and_is_removed_with_the_model(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A slow download is reported while it runs (bytes so far), and its temporary folder
    goes when the copy is removed."""
    import mlflow.artifacts

    def slow_download(artifact_uri: str, dst_path: str) -> str:
        for part in range(4):
            (pathlib.Path(dst_path) / f"part-{part}").write_bytes(b"x" * 1_000_000)
            time.sleep(0.05)
        return dst_path

    monkeypatch.setattr(mlflow.artifacts, "download_artifacts", slow_download)
    monkeypatch.setattr(loader, "DOWNLOAD_PROGRESS_SECONDS", 0.02)
    caplog.set_level(logging.INFO, logger=loader.__name__)
    source = loader.resolve("s3://bucket/models/wine")
    assert source == loader.ModelSource(
        "s3://bucket/models/wine", "s3://bucket/models/wine", "wine", ""
    )
    copy = loader.local_copy(source)
    assert copy.download is not None and copy.path == copy.download
    progress = [r.getMessage() for r in caplog.records if "so far" in r.getMessage()]
    assert progress and all("s3://bucket/models/wine" in line for line in progress)
    assert any(
        "downloaded s3://bucket/models/wine: 4.0 MB" in r.getMessage() for r in caplog.records
    )
    copy.remove()
    assert not copy.download.exists()
