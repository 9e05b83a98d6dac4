"""Counts the cases of the differential tests by outcome, and reports the counts at the end
of the session (with or without `-s`). A failing Hypothesis test's count includes the runs
Hypothesis makes to shrink the failure."""

import logging
from collections import Counter
from collections.abc import Iterator

import pytest

_TALLY = pytest.StashKey[Counter[str]]()


@pytest.fixture(scope="session")
def tally(request: pytest.FixtureRequest) -> Counter[str]:
    """`tally["test: outcome"] += 1` per case; shared by the whole session."""
    return request.config.stash.setdefault(_TALLY, Counter())


@pytest.fixture(autouse=True, scope="session")
def quiet_mlflow() -> Iterator[None]:
    """MLflow logs a warning for every extra input or unknown param, thousands of times here."""
    logger = logging.getLogger("mlflow")
    level = logger.level
    logger.setLevel(logging.ERROR)
    yield
    logger.setLevel(level)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    counts = terminalreporter.config.stash.get(_TALLY, None)
    if not counts:
        return
    terminalreporter.section("differential cases")
    for key, count in sorted(counts.items()):
        terminalreporter.write_line(f"{count:6d}  {key}")
    terminalreporter.write_line(f"{sum(counts.values()):6d}  in total")
