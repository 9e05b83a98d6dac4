"""Model snapshots: what a start needs of a model whose batches take the estimator-block
call (models/fast_path.py), kept so that the next start of the same model, in the same
installation, serves without importing MLflow first.

A full load (MLflow's own) writes one: the estimator pickled, the signature and metadata as
the data path reads them, and the load's proof (blocks, and what MLflow's flavor predicted
on each). A start finding one for the same files and the same installed packages restores
the estimator, checks that it still predicts every proof block bitwise as MLflow did, and
is ready; MLflow's model object is loaded on a thread of its own meanwhile
(models/deferred.py) for the paths that need it. Anything amiss (no snapshot, another
package version, a failed check) means a full load, as without snapshots; so does a start
after MLflow's own load failed behind a restored model (the snapshot is dropped, and the
process replaced).

Snapshots live in `$ARROWSMITH_SNAPSHOT_DIR`, else `$XDG_CACHE_HOME/arrowsmith/snapshots`
(`~/.cache/...`); `ARROWSMITH_SNAPSHOT_DIR=off` turns them off. The folder is created
private to the user, and a snapshot whose folders belong to another user or are writable
by anyone else is not used: a pickle is code, so whoever can write there can run code in
the server, as whoever can write the model's own files can.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import pickle
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from arrowsmith import _native
from arrowsmith.models.fast_path import BlockCall, ignore_missing_feature_names
from arrowsmith.models.signature import TensorMetadata

logger = logging.getLogger(__name__)

#: Changes whenever what a snapshot holds changes.
FORMAT = "2"
#: Larger models are not snapshotted: hashing their files on every start would cost more
#: than the snapshot saves.
MAX_MODEL_BYTES = 64 * 1024 * 1024

_ESTIMATOR = "estimator.pickle"
_PROOF = "proof.npz"
_DESCRIPTION = "model.json"


def root() -> Path | None:
    """The snapshot folder; None when snapshots are off."""
    configured = os.environ.get("ARROWSMITH_SNAPSHOT_DIR")
    if configured == "off":
        return None
    if configured:
        return Path(configured)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "arrowsmith" / "snapshots"


def key(model_dir: Path) -> str | None:
    """A digest of the model's files and of every package installed (name and version),
    Python's version and this installation of Arrowsmith; None for a model too large."""
    from arrowsmith.environments.wheel import fingerprint

    digest = hashlib.sha256(f"{FORMAT}\0{sys.version}\0{fingerprint()}\n".encode())
    for name in _installed_distributions():
        digest.update(f"{name}\n".encode())
    total = 0
    for path in sorted(p for p in model_dir.rglob("*") if p.is_file()):
        total += path.stat().st_size
        if total > MAX_MODEL_BYTES:
            return None
        digest.update(f"{path.relative_to(model_dir)}\0".encode())
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()[:32]


def _installed_distributions() -> list[str]:
    """The `name-version.dist-info` folders on the import path, sorted: which packages, at
    which versions, the estimator's code comes from."""
    found: set[str] = set()
    for entry in sys.path:
        folder = Path(entry or ".")
        if folder.is_dir():
            found.update(p.name for p in folder.glob("*.dist-info"))
    return sorted(found)


def place(model_dir: Path) -> Path | None:
    """Where the snapshot of the model in `model_dir` is (or would be) kept; None when
    snapshots are off or the model is too large for one. Worked out once per load: it
    hashes the model's files."""
    folder = root()
    if folder is None:
        return None
    snapshot_key = key(model_dir)
    return folder / snapshot_key if snapshot_key is not None else None


def keep(model: Any, where: Path) -> None:
    """Writes the snapshot of a fully loaded `model` (a LoadedModel on the block call) at
    `where` (`place`); failing to is logged, never fatal."""
    call = model.block_call
    if call is None or where.is_dir():
        return
    try:
        _write(where, model, call)
    except Exception as error:
        logger.warning("no snapshot of model %s was kept: %s", model.name, error)


def forget(where: Path) -> None:
    """Drops the snapshot at `where`: the model it stands for no longer loads as it did."""
    shutil.rmtree(where, ignore_errors=True)
    logger.warning("snapshot %s dropped", where)


def _write(where: Path, model: Any, call: BlockCall) -> None:
    folder = where.parent
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    # mkdtemp's folder is private (0o700); it becomes the snapshot's as it is.
    staging = Path(tempfile.mkdtemp(prefix=".writing-", dir=folder))
    try:
        estimator = call.predict.__self__  # type: ignore[attr-defined]
        (staging / _ESTIMATOR).write_bytes(pickle.dumps(estimator, protocol=5))
        arrays = {}
        for i, (values, expected) in enumerate(call.proof):
            arrays[f"values_{i}"] = values
            arrays[f"expected_{i}"] = np.asarray(expected)
        np.savez(staging / _PROOF, **arrays)  # type: ignore[arg-type]
        (staging / _DESCRIPTION).write_text(json.dumps(_description(model, call)))
        try:
            staging.rename(where)
        except OSError:
            if not where.is_dir():
                raise
            shutil.rmtree(staging, ignore_errors=True)
            return  # another worker kept the same snapshot first
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    logger.info("model %s: snapshot %s kept for the next start", model.name, where.name)


def _description(model: Any, call: BlockCall) -> dict[str, Any]:
    schema = model.input_schema
    return {
        "columns": list(call.columns),
        "dtype": call.dtype.str,
        "required": [bool(spec.required) for spec in schema.inputs],
        "column_types": [spec.type.name for spec in schema.inputs],
        "inputs": [_tensor(t) for t in model.inputs],
        "outputs": [_tensor(t) for t in model.outputs],
        "param_names": sorted(model.param_names) if model.param_names is not None else None,
        "loader_module": model.loader_module,
        "content_type": model.content_type,
        "proofs": len(call.proof),
    }


def _tensor(metadata: TensorMetadata) -> list[Any]:
    return [metadata.name, metadata.datatype, list(metadata.shape), metadata.content_type]


def restore(where: Path) -> Restored | None:
    """The snapshot at `where` (`place`), checked; None without a sound one."""
    if not where.is_dir():
        return None
    unsafe = _writable_by_others(where.parent, where)
    if unsafe is not None:
        logger.warning("snapshot %s is not used, loading in full: %s", where, unsafe)
        return None
    try:
        restored = _read(where)
    except Exception as error:
        logger.warning("snapshot %s is unreadable, loading in full: %s", where, error)
        return None
    if not restored.call.holds():
        logger.warning("snapshot %s no longer predicts as recorded, loading in full", where)
        return None
    return restored


def _writable_by_others(*folders: Path) -> str | None:
    """Why a snapshot may have been written by someone else (a pickle is code), or None:
    its folders must belong to this user and be writable by no one else."""
    for folder in folders:
        status = folder.stat()
        if status.st_uid != os.getuid():
            return f"{folder} belongs to another user"
        if status.st_mode & 0o022:
            return f"{folder} is writable by its group or by others"
    return None


class Restored:
    """A snapshot read back: the block call and the metadata the data path needs."""

    def __init__(self, description: dict[str, Any], call: BlockCall) -> None:
        self.call = call
        self.signature = _native.Signature.columns(
            [
                (name, column_type, required)
                for name, column_type, required in zip(
                    description["columns"],
                    description["column_types"],
                    description["required"],
                    strict=True,
                )
            ]
        )
        self.inputs = [_metadata(t) for t in description["inputs"]]
        self.outputs = [_metadata(t) for t in description["outputs"]]
        names = description["param_names"]
        self.param_names = frozenset(names) if names is not None else None
        self.loader_module: str = description["loader_module"]
        self.content_type: str | None = description["content_type"]


def _metadata(fields: list[Any]) -> TensorMetadata:
    name, datatype, shape, content_type = fields
    return TensorMetadata(name, datatype, tuple(shape), content_type)


def _read(where: Path) -> Restored:
    description = json.loads((where / _DESCRIPTION).read_text())
    estimator = pickle.loads((where / _ESTIMATOR).read_bytes())
    with np.load(where / _PROOF, allow_pickle=False) as arrays:
        proof = tuple(
            (arrays[f"values_{i}"], arrays[f"expected_{i}"]) for i in range(description["proofs"])
        )
    if getattr(estimator, "feature_names_in_", None) is not None:
        ignore_missing_feature_names()
    call = BlockCall(
        tuple(description["columns"]), np.dtype(description["dtype"]), estimator.predict, proof
    )
    return Restored(description, call)
