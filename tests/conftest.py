"""Shared fixtures: the wine data, the three test models, servers running them, and TLS
certificates.

Models are built once per session in a temporary folder (training the wine model takes a few
seconds); each server is a real `arrowsmith serve` process on its own free port.
"""

import contextlib
import os
import pathlib
from collections.abc import Generator, Iterator, Mapping

import pandas as pd
import pytest
from mlflow.pyfunc import PyFuncModel
from support import model_builders
from support.certs import TlsFiles, make_tls_files
from support.server import PLAIN_TCP, Listening, ServerHandle, StartServer, running_server


@pytest.fixture(scope="session")
def wine_csv() -> pathlib.Path:
    """The shipped copy of the red wine quality data set."""
    return model_builders.WINE_CSV


@pytest.fixture(scope="session")
def wine_frame() -> pd.DataFrame:
    """All 1,599 rows of the 11 features as float64; tests must not modify it."""
    return model_builders.read_wine_features()


@pytest.fixture(autouse=True, scope="session")
def snapshot_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[pathlib.Path]:
    """Model snapshots of this session (and of the servers it starts) in a folder of its
    own: the first start of a model keeps one, later starts restore it."""
    folder = tmp_path_factory.mktemp("snapshots")
    previous = os.environ.get("ARROWSMITH_SNAPSHOT_DIR")
    os.environ["ARROWSMITH_SNAPSHOT_DIR"] = str(folder)
    yield folder
    if previous is None:
        del os.environ["ARROWSMITH_SNAPSHOT_DIR"]
    else:
        os.environ["ARROWSMITH_SNAPSHOT_DIR"] = previous


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    """One folder for every model this session saves."""
    return tmp_path_factory.mktemp("models")


@pytest.fixture(scope="session")
def wine_model_dir(models_dir: pathlib.Path) -> pathlib.Path:
    """The example ElasticNet, trained by examples/wine/train.py."""
    return model_builders.train_wine_model(models_dir / "wine")


@pytest.fixture(scope="session")
def tensor_model_dir(models_dir: pathlib.Path) -> pathlib.Path:
    """A pyfunc with one unnamed uint8 [-1, 8, 8] TensorSpec input and int64 [-1] output."""
    model_dir = model_builders.save_pixel_sum_model(models_dir / "pixel_sum")
    model_builders.check_loads_in_fresh_process(model_dir)
    return model_dir


@pytest.fixture(scope="session")
def string_model_dir(models_dir: pathlib.Path) -> pathlib.Path:
    """A pyfunc with a `text: string` column in and an `upper: string` column out."""
    model_dir = model_builders.save_upper_case_model(models_dir / "upper_case")
    model_builders.check_loads_in_fresh_process(model_dir)
    return model_dir


@pytest.fixture(scope="session")
def wine_pyfunc(wine_model_dir: pathlib.Path) -> PyFuncModel:
    """The wine model as MLflow serves it in-process: the reference answers."""
    return model_builders.load_pyfunc(wine_model_dir)


@pytest.fixture(scope="session")
def tensor_pyfunc(tensor_model_dir: pathlib.Path) -> PyFuncModel:
    """The pixel-sum model as MLflow loads it."""
    return model_builders.load_pyfunc(tensor_model_dir)


@pytest.fixture(scope="session")
def string_pyfunc(string_model_dir: pathlib.Path) -> PyFuncModel:
    """The upper-case model as MLflow loads it."""
    return model_builders.load_pyfunc(string_model_dir)


@pytest.fixture(scope="session")
def server_logs(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    """Where every server process of the session writes its log."""
    return tmp_path_factory.mktemp("server-logs")


@pytest.fixture(scope="session")
def wine_server(wine_model_dir: pathlib.Path, server_logs: pathlib.Path) -> Iterator[ServerHandle]:
    """A server for the wine model, named `wine`, shared by the whole session."""
    with running_server(
        wine_model_dir, name=model_builders.WINE_MODEL_NAME, log_dir=server_logs
    ) as server:
        yield server


@pytest.fixture(scope="session")
def tensor_server(
    tensor_model_dir: pathlib.Path, server_logs: pathlib.Path
) -> Iterator[ServerHandle]:
    """A server for the pixel-sum model, named `pixel_sum`."""
    with running_server(
        tensor_model_dir, name=model_builders.TENSOR_MODEL_NAME, log_dir=server_logs
    ) as server:
        yield server


@pytest.fixture(scope="session")
def string_server(
    string_model_dir: pathlib.Path, server_logs: pathlib.Path
) -> Iterator[ServerHandle]:
    """A server for the upper-case model, named `upper_case`."""
    with running_server(
        string_model_dir, name=model_builders.STRING_MODEL_NAME, log_dir=server_logs
    ) as server:
        yield server


#: The dedicated servers each test started, by test id, for the report of a failure.
_STARTED: dict[str, list[ServerHandle]] = {}


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """A failed test's report ends with the log tail of each server it started: a server
    gone by the time a test looks is otherwise a riddle."""
    report = yield
    if report.failed:
        for server in _STARTED.get(item.nodeid, []):
            report.sections.append((f"log of the server on :{server.port}", server.log_tail()))
    if report.when == "teardown":
        _STARTED.pop(item.nodeid, None)
    return report


@pytest.fixture
def start_server(
    server_logs: pathlib.Path, request: pytest.FixtureRequest
) -> Iterator[StartServer]:
    """Start dedicated servers (e.g. with special flags); they stop when the test ends."""
    started = _STARTED.setdefault(request.node.nodeid, [])
    with contextlib.ExitStack() as stack:

        def start(
            model_dir: pathlib.Path | str | None,
            *extra_args: str,
            name: str | None = None,
            listening: Listening = PLAIN_TCP,
            env: Mapping[str, str] | None = None,
        ) -> ServerHandle:
            server = running_server(
                model_dir,
                *extra_args,
                name=name,
                log_dir=server_logs,
                listening=listening,
                env=env,
            )
            handle = stack.enter_context(server)
            started.append(handle)
            return handle

        yield start


@pytest.fixture(scope="session")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    """A test CA with a server certificate (localhost, 127.0.0.1) and a client certificate,
    and an unrelated CA with a client certificate; tests must not change these files."""
    return make_tls_files(tmp_path_factory.mktemp("tls"))


@pytest.fixture(scope="session")
def mtls_server(
    wine_model_dir: pathlib.Path, server_logs: pathlib.Path, tls_files: TlsFiles
) -> Iterator[ServerHandle]:
    """The wine model under mutual TLS (the test CA's server certificate, clients of that CA
    only); readiness is polled over gRPC with TLS and the CA's client certificate."""
    with running_server(
        wine_model_dir,
        name=model_builders.WINE_MODEL_NAME,
        log_dir=server_logs,
        listening=Listening(tls=tls_files, mutual_tls=True),
    ) as server:
        yield server
