"""Model snapshots (models/snapshot.py): a second load of the same model restores the
estimator-block call without MLflow, proven to predict what the full load's MLflow model
predicted; anything that changed, or a snapshot that no longer predicts as recorded, means a
full load. Each test keeps its snapshots in a folder of its own."""

from __future__ import annotations

import pathlib
import shutil

import numpy as np
import pytest
from arrowsmith import _native, payload
from arrowsmith.config import ModelConfig
from arrowsmith.models import snapshot
from arrowsmith.models.deferred import Deferred, DeferredLoad
from arrowsmith.models.loaded import LoadedModel, load_model
from arrowsmith.models.predict import predict_block
from mlflow.pyfunc import PyFuncModel
from support.v2 import columns_request


@pytest.fixture()
def snapshots(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> pathlib.Path:
    folder = tmp_path / "snapshots"
    monkeypatch.setenv("ARROWSMITH_SNAPSHOT_DIR", str(folder))
    return folder


@pytest.fixture()
def wine_copy(tmp_path: pathlib.Path, wine_model_dir: pathlib.Path) -> pathlib.Path:
    return pathlib.Path(shutil.copytree(wine_model_dir, tmp_path / "wine"))


def restored(model: LoadedModel) -> bool:
    return type(model.pyfunc) is Deferred


def block_predictions(model: LoadedModel, frame) -> np.ndarray:
    body = columns_request("wine", frame, "FP64", typed=False).SerializeToString()
    batch = _native.decode_request(body).job(model.signature).as_batch()
    block = payload.estimator_block(batch, model)
    assert block is not None
    return np.asarray(predict_block(model, block, None))


def test_a_second_load_restores_the_snapshot_and_predicts_what_mlflow_does(
    snapshots, wine_copy, wine_frame, wine_pyfunc
) -> None:
    first = load_model(ModelConfig(str(wine_copy), "wine"))
    assert not restored(first) and len(list(snapshots.iterdir())) == 1
    second = load_model(ModelConfig(str(wine_copy), "wine"))
    assert restored(second)
    assert second.predict_path == first.predict_path == "estimator-block"
    assert second.properties == first.properties
    assert (second.inputs, second.outputs) == (first.inputs, first.outputs)
    assert second.param_names == first.param_names
    expected = np.asarray(wine_pyfunc.predict(wine_frame))
    assert block_predictions(second, wine_frame).tobytes() == expected.tobytes()
    # MLflow's own object arrives for the other paths, as MLflow loads it.
    assert isinstance(second.pyfunc, PyFuncModel)
    assert second.input_schema == first.input_schema
    assert np.asarray(second.pyfunc.predict(wine_frame.iloc[:3])).tobytes() == (
        expected[:3].tobytes()
    )


def test_a_changed_model_file_means_a_full_load(snapshots, wine_copy) -> None:
    load_model(ModelConfig(str(wine_copy), "wine"))
    with (wine_copy / "requirements.txt").open("a") as requirements:
        requirements.write("\n")
    again = load_model(ModelConfig(str(wine_copy), "wine"))
    assert not restored(again)
    assert len(list(snapshots.iterdir())) == 2


def test_a_snapshot_that_no_longer_predicts_as_recorded_is_not_used(
    snapshots, wine_copy, caplog
) -> None:
    load_model(ModelConfig(str(wine_copy), "wine"))
    (kept,) = snapshots.iterdir()
    proof = dict(np.load(kept / "proof.npz"))
    proof["expected_0"] = proof["expected_0"] + 1.0
    np.savez(kept / "proof.npz", **proof)
    again = load_model(ModelConfig(str(wine_copy), "wine"))
    assert not restored(again)
    assert "no longer predicts as recorded" in caplog.text


def test_an_unreadable_snapshot_means_a_full_load(snapshots, wine_copy, caplog) -> None:
    load_model(ModelConfig(str(wine_copy), "wine"))
    (kept,) = snapshots.iterdir()
    (kept / "estimator.pickle").write_bytes(b"not a pickle")
    assert not restored(load_model(ModelConfig(str(wine_copy), "wine")))
    assert "unreadable" in caplog.text


def test_a_snapshot_others_could_have_written_is_not_used(snapshots, wine_copy, caplog) -> None:
    load_model(ModelConfig(str(wine_copy), "wine"))
    (kept,) = snapshots.iterdir()
    kept.chmod(0o777)
    assert not restored(load_model(ModelConfig(str(wine_copy), "wine")))
    assert "writable by its group or by others" in caplog.text
    kept.chmod(0o700)
    assert restored(load_model(ModelConfig(str(wine_copy), "wine")))


def test_snapshots_can_be_turned_off(tmp_path, monkeypatch, wine_copy) -> None:
    monkeypatch.setenv("ARROWSMITH_SNAPSHOT_DIR", "off")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    load_model(ModelConfig(str(wine_copy), "wine"))
    assert not restored(load_model(ModelConfig(str(wine_copy), "wine")))
    assert snapshot.root() is None and not (tmp_path / "cache").exists()


def test_a_model_without_the_block_call_keeps_no_snapshot(snapshots, tensor_model_dir) -> None:
    model = load_model(ModelConfig(str(tensor_model_dir), "pixels"))
    assert model.block_call is None
    assert not snapshots.exists() or not list(snapshots.iterdir())


def test_a_failed_deferred_load_fails_each_use_with_its_reason() -> None:
    def fail() -> None:
        raise SystemExit("model code exited")

    reasons: list[str] = []
    load = DeferredLoad("model m", fail, on_failure=reasons.append)
    load.start()
    stand_in = Deferred(load.value)
    with pytest.raises(RuntimeError, match="model m could not be loaded: model code exited"):
        stand_in.metadata  # noqa: B018
    with pytest.raises(RuntimeError, match="could not be loaded"):
        stand_in()
    assert reasons == ["model m could not be loaded: model code exited"]


def test_a_restored_model_mlflow_cannot_load_drops_its_snapshot_and_is_fatal(
    snapshots, wine_copy, monkeypatch
) -> None:
    """As without a snapshot, where MLflow's failing load would leave the model unserved:
    the process is to be replaced, and its next start loads in full."""
    from arrowsmith.models import loader

    load_model(ModelConfig(str(wine_copy), "wine"))
    (kept,) = snapshots.iterdir()

    def broken(path: pathlib.Path) -> None:
        raise OSError(f"cannot read {path}")

    monkeypatch.setattr(loader, "load_pyfunc", broken)
    reasons: list[str] = []
    model = load_model(ModelConfig(str(wine_copy), "wine"), fatal=reasons.append)
    assert restored(model)
    with pytest.raises(RuntimeError, match="could not be loaded"):
        model.pyfunc.metadata  # noqa: B018
    assert reasons == [f"model wine could not be loaded: cannot read {wine_copy}"]
    assert not kept.exists()
