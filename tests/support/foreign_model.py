"""Build an MLflow model under another scikit-learn than the tests' own, in a virtual
environment of its own: the model a server needs `--env-manager uv` for.

The model is a random forest on the wine data, pickled (cloudpickle) by scikit-learn 1.7.2.
Its requirements.txt, written by MLflow from that environment, pins scikit-learn==1.7.2 and
the rest of what was installed there. The expected answers are computed in that same
environment, by MLflow's own loader, so they are what the model says where it was made.

What the dev environment's scikit-learn 1.9.1 does with this pickle (checked by hand): it
loads it, with an InconsistentVersionWarning per estimator (the forest, its 20 trees and the
tree template; 22 in all) and MLflow's warning that the requirements differ, and its
predictions for the 50 rows are still identical. So serving it with `--env-manager local`
works but is unsupported by scikit-learn; only the model's own environment is exact by
construction.

uv resolves the pins from its index (PyPI); with uv's cache warm, the build takes a few
seconds for the environment and about ten for the training.
"""

import dataclasses
import os
import pathlib
import shutil
import subprocess
import sys

import numpy as np
import pandas as pd
from uv import find_uv_bin

from support.model_builders import WINE_CSV, WINE_TARGET, read_wine_features

SKLEARN_VERSION = "1.7.2"
#: What the training environment is made of: the foreign scikit-learn, and the versions uv
#: resolves beside it on Python 3.11 (the same numpy, pandas and scipy as the dev pins, so
#: only scikit-learn differs). Pinned, so the model and its requirements never drift.
TRAINING_REQUIREMENTS = (
    f"scikit-learn=={SKLEARN_VERSION}",
    "mlflow==3.17.2",
    "numpy==2.4.6",
    "pandas==3.1.1",
    "scipy==1.17.1",
    "pyarrow==25.0.1",
    "cloudpickle==3.1.3",
)
#: The packages MLflow itself infers for a cloudpickled scikit-learn model; written out so
#: the save skips MLflow's slow inference subprocess, with the versions installed there.
MODEL_REQUIREMENTS = (
    "mlflow",
    "cloudpickle",
    "numpy",
    "pandas",
    "pyarrow",
    "scikit-learn",
    "scipy",
)
ROWS = 50
MODEL_FOLDER = "model"
EXPECTED_FILE = "expected.npy"
BUILD_TIMEOUT_S = 600

# Run by the training environment's interpreter: argv = csv, output folder, rows, packages.
TRAIN_SCRIPT = """
import pathlib, sys
from importlib import metadata

import mlflow.pyfunc
import mlflow.sklearn
import numpy as np
import pandas as pd
import sklearn
from mlflow.models import infer_signature
from sklearn.ensemble import RandomForestRegressor

csv, output, rows, target = sys.argv[1], pathlib.Path(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
packages = sys.argv[5:]
data = pd.read_csv(csv, sep=";")
features = data.drop(columns=[target]).astype("float64")
model = RandomForestRegressor(n_estimators=20, max_depth=6, random_state=0)
model.fit(features, data[target])
model_dir = output / "model"
mlflow.sklearn.save_model(
    model,
    str(model_dir),
    signature=infer_signature(features, model.predict(features)),
    input_example=features.head(3),
    serialization_format="cloudpickle",
    pip_requirements=[f"{name}=={metadata.version(name)}" for name in packages],
)
predictions = mlflow.pyfunc.load_model(str(model_dir)).predict(features.head(rows))
np.save(output / "expected.npy", np.asarray(predictions, dtype="float64"))
print(sklearn.__version__)
"""


@dataclasses.dataclass(frozen=True, eq=False)
class ForeignModel:
    """A saved model, the rows the tests send it and its answers where it was made."""

    model_dir: pathlib.Path
    #: `mlflow.pyfunc.load_model(model_dir).predict(rows)` in the training environment.
    expected: np.ndarray
    rows: pd.DataFrame
    sklearn_version: str


def _python() -> str:
    """The interpreter the tests' venv was made from: its Python is the one the model asks
    for, so any server on this machine finds it."""
    base = getattr(sys, "_base_executable", "")
    return base if base and os.path.exists(base) else f"{sys.version_info[0]}.{sys.version_info[1]}"


def _run(command: list[str], env: dict[str, str]) -> str:
    """Run a build step; fail with its own output, which says what went wrong."""
    result = subprocess.run(
        command,
        capture_output=True,
        text=True,
        env=env,
        stdin=subprocess.DEVNULL,
        timeout=BUILD_TIMEOUT_S,
        check=False,
    )
    if result.returncode != 0:
        raise RuntimeError(
            f"{' '.join(command[:3])} ... failed ({result.returncode}):\n"
            f"{result.stdout[-3000:]}\n{result.stderr[-6000:]}"
        )
    return result.stdout


def build_foreign_model(work_dir: pathlib.Path) -> ForeignModel:
    """Make a virtual environment with uv under `work_dir`, train and save the model there,
    and return it; the environment is removed afterwards (uv's cache keeps the packages)."""
    uv = find_uv_bin()
    env = {**os.environ, "UV_PYTHON_DOWNLOADS": "never"}
    env.pop("VIRTUAL_ENV", None)
    venv = work_dir / "training-venv"
    python = venv / "bin" / "python"
    _run([uv, "venv", "--quiet", "--python", _python(), str(venv)], env)
    try:
        install = [uv, "pip", "install", "--quiet", "--python", str(python)]
        _run([*install, *TRAINING_REQUIREMENTS], env)
        args = [str(WINE_CSV), str(work_dir), str(ROWS), WINE_TARGET, *MODEL_REQUIREMENTS]
        stdout = _run([str(python), "-c", TRAIN_SCRIPT, *args], env)
    finally:
        shutil.rmtree(venv, ignore_errors=True)
    version = stdout.strip().splitlines()[-1]
    if version != SKLEARN_VERSION:
        raise RuntimeError(f"the model was trained with scikit-learn {version}")
    return ForeignModel(
        model_dir=work_dir / MODEL_FOLDER,
        expected=np.load(work_dir / EXPECTED_FILE).astype(np.float64),
        rows=read_wine_features().head(ROWS),
        sklearn_version=version,
    )
