"""W4's model: a tensor-signature classifier of scikit-learn's bundled 8x8 digits, as uint8.

`sklearn.datasets.load_digits()` ships inside scikit-learn (no download): 1,797 images of
8x8 pixels with values 0-16, flattened to 64 features. They are cast to uint8, a
LogisticRegression is trained on three quarters of them (well under a second) and saved
with `mlflow.sklearn.save_model` and a signature inferred from the uint8 array, so its
input is one unnamed TensorSpec uint8 (-1, 64) and its output a TensorSpec int64 (-1,)
(the class labels). Predicting is one 64x10 matrix product per batch, about as cheap as
the wine ElasticNet.

    .venv/bin/python benchmarks/digits_model.py --output /tmp/digits   # compare.py trains it
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

MODEL_NAME = "digits"
#: The signature's tensor spec has no name. Arrowsmith then takes its one input under any
#: name; MLServer's MLflow runtime calls it `input-0` in its metadata (and decodes the
#: first input whatever its name), so requests use that.
INPUT_NAME = "input-0"
FEATURES = 64
SEED = 0


def digits_images() -> tuple[np.ndarray, np.ndarray]:
    """The bundled digits: uint8 images [1797, 64] (values 0-16) and their int64 labels."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    return digits.data.astype(np.uint8), digits.target.astype(np.int64)


def train_and_save(output: Path) -> tuple[Path, float]:
    """Trains the classifier and saves it to `output` (which must not exist); returns the
    model folder and the accuracy on the held-out quarter."""
    import mlflow.sklearn
    from mlflow.models import infer_signature
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import train_test_split

    if output.exists():
        raise FileExistsError(f"refusing to overwrite existing model folder {output}")
    images, labels = digits_images()
    train_x, test_x, train_y, test_y = train_test_split(images, labels, random_state=SEED)
    model = LogisticRegression(max_iter=1000).fit(train_x, train_y)
    accuracy = float(model.score(test_x, test_y))
    signature = infer_signature(train_x, model.predict(train_x))
    # Explicit requirements: inferring them loads the model in a subprocess, slow and
    # needless for a flavor whose dependencies are known (as examples/wine/train.py).
    mlflow.sklearn.save_model(
        model,
        str(output),
        signature=signature,
        pip_requirements=mlflow.sklearn.get_default_pip_requirements(include_skops=True),
    )
    return output, accuracy


def digits_model(work: Path) -> Path:
    """The digits model in `work`/digits, trained there when missing."""
    target = work / "digits"
    if (target / "MLmodel").exists():
        return target
    path, accuracy = train_and_save(target)
    print(f"trained the digits classifier (held-out accuracy {accuracy:.1%}) into {path}")
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, required=True, help="model folder to create")
    args = parser.parse_args()
    path, accuracy = train_and_save(args.output)
    print(f"held-out accuracy {accuracy:.1%}; saved to {path}")
    print((path / "MLmodel").read_text())


if __name__ == "__main__":
    main()
