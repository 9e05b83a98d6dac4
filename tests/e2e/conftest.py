"""Fixtures the end-to-end tests share: a few wine rows and MLflow's answer (TLS and
Unix-socket tests), the MLflow registry deployment (tests that follow the registry), and a
model made under another scikit-learn (tests of model environments)."""

from collections.abc import Iterator

import numpy as np
import pandas as pd
import pytest
from mlflow.pyfunc import PyFuncModel
from support.foreign_model import ForeignModel, build_foreign_model
from support.registry_stack import RegistryStack, running_registry_stack

#: Rows sent by the tests that only check that a transport carries a prediction.
ROWS = 10


@pytest.fixture(scope="module")
def rows(wine_frame: pd.DataFrame) -> pd.DataFrame:
    """The first ROWS rows of the wine data (modules may define their own `rows`)."""
    return wine_frame.iloc[:ROWS]


@pytest.fixture(scope="module")
def expected(wine_pyfunc: PyFuncModel, rows: pd.DataFrame) -> np.ndarray:
    """MLflow's own predictions for `rows`."""
    predictions: np.ndarray = wine_pyfunc.predict(rows)
    return predictions


@pytest.fixture(scope="session")
def registry_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegistryStack]:
    """PostgreSQL, S3 (moto) and `mlflow server` with ElasticNetWineModel versions 1 and 2,
    `champion` and Production on version 1. Tests that move the alias or the stage put them
    back, so every test starts from that state."""
    with running_registry_stack(tmp_path_factory.mktemp("registry-stack")) as stack:
        yield stack


@pytest.fixture(scope="session")
def foreign_model(tmp_path_factory: pytest.TempPathFactory) -> ForeignModel:
    """A random forest saved by scikit-learn 1.7.2 in an environment of its own, with its
    answers for 50 wine rows there; tests must not change its files."""
    return build_foreign_model(tmp_path_factory.mktemp("foreign-model"))
