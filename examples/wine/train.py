"""Train the red-wine ElasticNet of MLflow's classic example and save it as an MLflow model.

The recipe (seed, split, hyper-parameters) is MLflow's `sklearn_elasticnet_wine` example, so
the saved model answers like the one its users already know: about 5.57 for the first row.
The model is written to a folder with `mlflow.sklearn.save_model`; no tracking server needed.
"""

import argparse
import pathlib

import mlflow.models
import mlflow.sklearn
import numpy as np
import pandas as pd
from sklearn.linear_model import ElasticNet
from sklearn.model_selection import train_test_split

HERE = pathlib.Path(__file__).resolve().parent
DATA_CSV = HERE / "winequality-red.csv"
DEFAULT_OUTPUT = HERE / "model"
TARGET = "quality"


def load_data(csv_path: pathlib.Path = DATA_CSV) -> pd.DataFrame:
    """Read the semicolon-separated UCI file: 11 float64 features and the integer target."""
    return pd.read_csv(csv_path, sep=";")


def train_and_save(output_dir: pathlib.Path) -> pathlib.Path:
    """Train the model and save it to `output_dir`, which must not exist yet."""
    output_dir = pathlib.Path(output_dir)
    if output_dir.exists():
        raise FileExistsError(f"refusing to overwrite existing model folder {output_dir}")
    data = load_data()
    np.random.seed(40)
    train, _test = train_test_split(data)
    train_x = train.drop([TARGET], axis=1)
    train_y = train[[TARGET]]
    lr = ElasticNet(alpha=0.5, l1_ratio=0.5, random_state=42)
    lr.fit(train_x, train_y)
    signature = mlflow.models.infer_signature(train_x, lr.predict(train_x))
    # Explicit requirements: inferring them loads the model in a subprocess, slow and
    # needless for a flavor whose dependencies are known.
    mlflow.sklearn.save_model(
        lr,
        str(output_dir),
        signature=signature,
        input_example=train_x.iloc[:5],
        pip_requirements=mlflow.sklearn.get_default_pip_requirements(include_skops=True),
    )
    return output_dir


def main() -> None:
    """Train only when the model folder is missing, so repeated runs are cheap."""
    parser = argparse.ArgumentParser(description="Train and save the red-wine example model.")
    parser.add_argument(
        "--output",
        type=pathlib.Path,
        default=DEFAULT_OUTPUT,
        help=f"model folder to create (default: {DEFAULT_OUTPUT})",
    )
    args = parser.parse_args()
    if args.output.exists():
        print(f"model already present at {args.output}; not retraining")
        return
    path = train_and_save(args.output)
    print(f"trained ElasticNet on {DATA_CSV.name} and saved the MLflow model to {path}")


if __name__ == "__main__":
    main()
