"""Build the MLflow models the end-to-end tests serve: the wine example and two custom pyfuncs.

The wine model comes from the shipped example script itself, so the tests serve exactly what
a user gets. The custom pyfuncs pin down the two other signature kinds: a uint8 TensorSpec
and string columns. Every model is checked to load in a fresh interpreter, because the
server loads it in its own process, where nothing the test process imported is available.
"""

import importlib.util
import pathlib
import subprocess
import sys
import types

import mlflow.pyfunc
import numpy as np
import pandas as pd
from mlflow.models import ModelSignature
from mlflow.pyfunc import PyFuncModel
from mlflow.types import ColSpec, Schema, TensorSpec

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]
WINE_DIR = REPO_ROOT / "examples" / "wine"
WINE_CSV = WINE_DIR / "winequality-red.csv"
WINE_TRAIN_SCRIPT = WINE_DIR / "train.py"
WINE_TARGET = "quality"
PYFUNC_MODELS_FILE = pathlib.Path(__file__).resolve().parent / "pyfunc_models.py"
# The top-level name the pickled model classes refer to. `code_paths` ships the file beside
# each model, and MLflow puts that folder on the server's sys.path, so the name resolves.
PYFUNC_MODELS_MODULE = PYFUNC_MODELS_FILE.stem

# The names the session's servers give the three models (`--name`).
WINE_MODEL_NAME = "wine"
TENSOR_MODEL_NAME = "pixel_sum"
STRING_MODEL_NAME = "upper_case"

PIXEL_SUM_SIGNATURE = ModelSignature(
    inputs=Schema([TensorSpec(np.dtype("uint8"), (-1, 8, 8))]),
    outputs=Schema([TensorSpec(np.dtype("int64"), (-1,))]),
)
# The pixel-sum model again, for exactly two images: a tensor without a dimension of rows.
PIXEL_PAIR_SIGNATURE = ModelSignature(
    inputs=Schema([TensorSpec(np.dtype("uint8"), (2, 8, 8))]),
    outputs=Schema([TensorSpec(np.dtype("int64"), (-1,))]),
)
UPPER_CASE_SIGNATURE = ModelSignature(
    inputs=Schema([ColSpec("string", "text")]),
    outputs=Schema([ColSpec("string", "upper")]),
)


def import_file(module_name: str, path: pathlib.Path) -> types.ModuleType:
    """Import a file by path under `module_name`, whatever pytest's import mode is."""
    if module_name in sys.modules:
        return sys.modules[module_name]
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot import {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    spec.loader.exec_module(module)
    return module


def read_wine_features() -> pd.DataFrame:
    """The 11 features of all 1,599 rows, float64, in the CSV's column order."""
    data = pd.read_csv(WINE_CSV, sep=";")
    return data.drop(columns=[WINE_TARGET]).astype("float64")


def train_wine_model(output_dir: pathlib.Path) -> pathlib.Path:
    """Train and save through the example's own `train_and_save`."""
    train = import_file("arrowsmith_example_wine_train", WINE_TRAIN_SCRIPT)
    model_dir: pathlib.Path = train.train_and_save(output_dir)
    return model_dir


def _save_custom_pyfunc(
    output_dir: pathlib.Path,
    class_name: str,
    signature: ModelSignature,
    input_example: np.ndarray | pd.DataFrame,
) -> pathlib.Path:
    """Save one of the classes of `pyfunc_models.py`, shipping that file as model code."""
    models = import_file(PYFUNC_MODELS_MODULE, PYFUNC_MODELS_FILE)
    mlflow.pyfunc.save_model(
        str(output_dir),
        python_model=getattr(models, class_name)(),
        signature=signature,
        input_example=input_example,
        code_paths=[str(PYFUNC_MODELS_FILE)],
        # Explicit, so MLflow does not infer requirements in a slow subprocess.
        pip_requirements=mlflow.pyfunc.get_default_pip_requirements(),
    )
    return output_dir


def save_pixel_sum_model(output_dir: pathlib.Path) -> pathlib.Path:
    """uint8 [-1, 8, 8] images in, int64 pixel sums out."""
    example = np.zeros((2, 8, 8), dtype=np.uint8)
    return _save_custom_pyfunc(output_dir, "PixelSumModel", PIXEL_SUM_SIGNATURE, example)


def save_pixel_pair_model(output_dir: pathlib.Path) -> pathlib.Path:
    """uint8 [2, 8, 8] in (exactly two images), int64 pixel sums out."""
    example = np.zeros((2, 8, 8), dtype=np.uint8)
    return _save_custom_pyfunc(output_dir, "PixelSumModel", PIXEL_PAIR_SIGNATURE, example)


def save_upper_case_model(output_dir: pathlib.Path) -> pathlib.Path:
    """A `text` string column in, an `upper` string column out."""
    example = pd.DataFrame({"text": ["hello"]})
    return _save_custom_pyfunc(output_dir, "UpperCaseModel", UPPER_CASE_SIGNATURE, example)


def save_echo_frame_model(output_dir: pathlib.Path) -> pathlib.Path:
    """A model without a signature that answers its input frame as it is."""
    models = import_file(PYFUNC_MODELS_MODULE, PYFUNC_MODELS_FILE)
    mlflow.pyfunc.save_model(
        str(output_dir),
        python_model=models.EchoFrameModel(),
        code_paths=[str(PYFUNC_MODELS_FILE)],
        pip_requirements=mlflow.pyfunc.get_default_pip_requirements(),
    )
    check_loads_in_fresh_process(output_dir)
    return output_dir


def load_pyfunc(model_dir: pathlib.Path) -> PyFuncModel:
    """MLflow's own loader: its predictions are what the server's answers must equal."""
    model: PyFuncModel = mlflow.pyfunc.load_model(str(model_dir))
    return model


def check_loads_in_fresh_process(model_dir: pathlib.Path) -> None:
    """Load the model in a new interpreter started outside the repository, as the server is."""
    code = "import sys, mlflow.pyfunc; mlflow.pyfunc.load_model(sys.argv[1])"
    result = subprocess.run(
        [sys.executable, "-c", code, str(model_dir)],
        cwd=model_dir.parent,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if result.returncode != 0:
        raise AssertionError(f"{model_dir} does not load in a fresh process:\n{result.stderr}")


BATCHING_MODELS_FILE = PYFUNC_MODELS_FILE.parent / "batching_models.py"
ECHO_SIGNATURE = ModelSignature(
    inputs=Schema([ColSpec("long", "row_id"), ColSpec("double", "payload")]),
    outputs=Schema(
        [ColSpec("long", "row_id"), ColSpec("double", "twice"), ColSpec("long", "batch_rows")]
    ),
)


def save_batching_model(output_dir: pathlib.Path, class_name: str) -> pathlib.Path:
    """Save a class of `batching_models.py` (row ids and payloads in), shipping that file."""
    models = import_file(BATCHING_MODELS_FILE.stem, BATCHING_MODELS_FILE)
    mlflow.pyfunc.save_model(
        str(output_dir),
        python_model=getattr(models, class_name)(),
        signature=ECHO_SIGNATURE,
        input_example=pd.DataFrame({"row_id": [0, 1], "payload": [0.5, 1.5]}),
        code_paths=[str(BATCHING_MODELS_FILE)],
        pip_requirements=mlflow.pyfunc.get_default_pip_requirements(),
    )
    check_loads_in_fresh_process(output_dir)
    return output_dir
