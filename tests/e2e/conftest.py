"""Fixtures the TLS and Unix-socket tests share: a few wine rows and MLflow's answer."""

import numpy as np
import pandas as pd
import pytest
from mlflow.pyfunc import PyFuncModel

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
