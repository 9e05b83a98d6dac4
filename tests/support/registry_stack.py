"""The "seeds" deployment of MLflow for end-to-end tests that follow the model registry.

PostgreSQL is the backend store, an S3 bucket the artifact store, and `mlflow server` sits in
front of both, proxying artifacts (clients see `mlflow-artifacts:` URIs). Everything listens
on 127.0.0.1 only, on free ports, and every process is stopped when the stack closes, also
when start-up fails halfway. `ElasticNetWineModel` gets two versions that predict clearly
differently; version 1 holds the `champion` alias and the Production stage.

The S3 side is moto's server mode: MinIO is not installable from the package registries this
project can reach, while moto speaks the S3 REST API from PyPI with no extra binary.
"""

import contextlib
import dataclasses
import os
import pathlib
import pwd
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import boto3
import mlflow
import mlflow.pyfunc
import mlflow.sklearn
import numpy as np
import pandas as pd
import pytest
from cryptography.fernet import Fernet
from mlflow import MlflowClient
from mlflow.models import infer_signature
from mlflow.pyfunc import PyFuncModel
from sklearn.linear_model import ElasticNet

from support import model_builders
from support.server import free_port, stop_process_group

REGISTERED_NAME = "ElasticNetWineModel"
CHAMPION = "champion"
PRODUCTION = "Production"
#: The stages MLflow can archive the previous holders of (in its canonical lower case).
ACTIVE_STAGES = {"staging", "production"}
ARTIFACT_NAME = "model"
BUCKET = "mlflow-artifacts"
ARTIFACTS_PREFIX = "artifacts"
DATABASE = "mlflow"
#: The cluster's superuser; also the system user the cluster runs as when the tests run as
#: root, since initdb and postgres refuse to run as root.
PG_USER = "postgres"
#: Version -> ElasticNet alpha: the example's regularisation, then a tenfold weaker one,
#: which moves the first rows' predictions by 0.09 to 0.34.
ALPHAS = {1: 0.5, 2: 0.05}
#: moto accepts any credentials; boto3 and MLflow only need some to sign requests with.
S3_CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}
STARTUP_TIMEOUT_S = 90.0
POLL_INTERVAL_S = 0.1
LOG_TAIL_CHARS = 4000


@dataclasses.dataclass(frozen=True)
class RegistryStack:
    """A running deployment: where each part listens and what a server process needs."""

    tracking_url: str
    s3_endpoint: str
    bucket: str
    #: libpq URI of the backend store.
    pg_dsn: str
    #: What a process needs to reach the registry and the artifacts. Clients of a proxied
    #: S3 store fetch artifacts from presigned URLs straight from S3, so they need the S3
    #: endpoint too.
    env: dict[str, str]
    #: Where the stack's processes write their logs.
    log_dir: pathlib.Path
    _models: dict[int, PyFuncModel] = dataclasses.field(default_factory=dict, repr=False)

    def client(self) -> MlflowClient:
        """A client of this stack's tracking server and registry."""
        return MlflowClient(tracking_uri=self.tracking_url, registry_uri=self.tracking_url)

    def s3_client(self) -> Any:
        """A boto3 S3 client of the moto server."""
        return s3_client(self.s3_endpoint)


def s3_client(endpoint: str) -> Any:
    """A boto3 S3 client of the moto server at `endpoint`, with the dummy credentials."""
    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id=S3_CREDENTIALS["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=S3_CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
        region_name=S3_CREDENTIALS["AWS_DEFAULT_REGION"],
    )


def backend_store_uri(pg_dsn: str) -> str:
    """`pg_dsn` as `mlflow server` takes it. SQLAlchemy 2.1 maps a bare `postgresql://` to
    psycopg 3, whose typed parameters break MLflow's queries that compare the integer version
    column with a string (archiving the stage's previous holder does); psycopg2, which MLflow
    is tested with, sends them untyped."""
    return pg_dsn.replace("postgresql://", "postgresql+psycopg2://", 1)


@contextlib.contextmanager
def tracking(stack: RegistryStack) -> Iterator[None]:
    """Point MLflow's fluent API (log_model, load_model of `models:/`) at the stack for a
    while, so the rest of the session keeps its own tracking URI."""
    previous = os.environ.get("MLFLOW_TRACKING_URI")
    mlflow.set_tracking_uri(stack.tracking_url)
    try:
        yield
    finally:
        # None unsets MLFLOW_TRACKING_URI again, which set_tracking_uri had exported.
        mlflow.set_tracking_uri(previous)


@contextlib.contextmanager
def mlflow_webhook(stack: RegistryStack, name: str, url: str, secret: str) -> Iterator[None]:
    """MLflow's webhook for alias moves to `url`, signed with `secret`, while in the block."""
    client = stack.client()
    hook = client.create_webhook(
        name=name, url=url, events=["model_version_alias.created"], secret=secret
    )
    try:
        yield
    finally:
        client.delete_webhook(hook.webhook_id)


def move_alias(stack: RegistryStack, version: int, alias: str = CHAMPION) -> None:
    """Point `alias` at `version`, as a deployer promoting a model does."""
    stack.client().set_registered_model_alias(REGISTERED_NAME, alias, str(version))


def set_stage(stack: RegistryStack, version: int, stage: str) -> None:
    """Transition `version` to `stage`; into Staging or Production, archiving the versions
    that held it, so a stage names one version as a deployer expects."""
    # Stages are deprecated since MLflow 2.9 but still served; the seeds still use them.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        stack.client().transition_model_version_stage(
            REGISTERED_NAME,
            str(version),
            stage,
            archive_existing_versions=stage.lower() in ACTIVE_STAGES,
        )


def expected_predictions(stack: RegistryStack, version: int, rows: pd.DataFrame) -> np.ndarray:
    """MLflow's own answer for `rows` from `models:/ElasticNetWineModel/<version>`; each
    version is loaded once."""
    if version not in stack._models:
        with tracking(stack):
            stack._models[version] = mlflow.pyfunc.load_model(
                f"models:/{REGISTERED_NAME}/{version}"
            )
    return np.asarray(stack._models[version].predict(rows))


def _log_tail(path: pathlib.Path) -> str:
    """Enough of a log to explain a failed start-up."""
    if not path.exists():
        return f"(no log at {path})"
    return path.read_text(encoding="utf-8", errors="replace")[-LOG_TAIL_CHARS:]


def _wait_until(
    ready: Callable[[], bool],
    what: str,
    log_path: pathlib.Path,
    process: subprocess.Popen[bytes] | None = None,
) -> None:
    """Poll `ready` until it says yes; fail with the log if the process dies or stalls."""
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while not ready():
        if process is not None and process.poll() is not None:
            pytest.fail(f"{what} exited with {process.returncode}:\n{_log_tail(log_path)}")
        if time.monotonic() > deadline:
            pytest.fail(f"{what} not up after {STARTUP_TIMEOUT_S} s:\n{_log_tail(log_path)}")
        time.sleep(POLL_INTERVAL_S)


def _answers_ok(url: str) -> bool:
    """Whether GET `url` answers 200; a refused connection just means not yet."""
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return False


def _start_group(
    command: list[str], log_path: pathlib.Path, env: dict[str, str]
) -> subprocess.Popen[bytes]:
    """Start `command` as the leader of a new process group, so stopping the group also
    stops whatever children it starts (mlflow server's uvicorn)."""
    with log_path.open("wb") as log:
        return subprocess.Popen(
            command,
            cwd=log_path.parent,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            start_new_session=True,
        )


def _postgres_bindir() -> pathlib.Path:
    """Where initdb and pg_ctl are: pg_config's word, else the newest Debian cluster version,
    else PATH. Debian keeps them off PATH, and pg_config may belong to another version."""
    candidates = []
    pg_config = shutil.which("pg_config")
    if pg_config is not None:
        answer = subprocess.run(
            [pg_config, "--bindir"], capture_output=True, text=True, check=False
        ).stdout.strip()
        if answer:
            candidates.append(pathlib.Path(answer))
    versions = [
        p for p in pathlib.Path("/usr/lib/postgresql").glob("*/bin") if p.parent.name.isdigit()
    ]
    candidates += sorted(versions, key=lambda p: int(p.parent.name), reverse=True)
    initdb = shutil.which("initdb")
    if initdb is not None:
        candidates.append(pathlib.Path(initdb).resolve().parent)
    for bindir in candidates:
        if (bindir / "initdb").is_file() and (bindir / "pg_ctl").is_file():
            return bindir
    pytest.fail("PostgreSQL's initdb and pg_ctl are missing; `make postgres` installs them")


def _postgres_account() -> pwd.struct_passwd | None:
    """The account the cluster runs as: None for the tests' own, `postgres` under root,
    created as a system user if it does not exist yet."""
    if os.geteuid() != 0:
        return None
    try:
        return pwd.getpwnam(PG_USER)
    except KeyError:
        subprocess.run(
            ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", PG_USER],
            check=True,
        )
        return pwd.getpwnam(PG_USER)


@dataclasses.dataclass(frozen=True)
class _Cluster:
    """A throwaway PostgreSQL cluster and how to run its tools."""

    bindir: pathlib.Path
    root: pathlib.Path
    account: pwd.struct_passwd | None
    port: int

    @property
    def data(self) -> pathlib.Path:
        return self.root / "data"

    @property
    def log_path(self) -> pathlib.Path:
        return self.root / "postgres.log"

    def run(self, tool: str, *args: str) -> subprocess.CompletedProcess[str]:
        """Run one of the cluster's tools as the cluster's account."""
        account: dict[str, Any] = {}
        if self.account is not None:
            account = {
                "user": self.account.pw_uid,
                "group": self.account.pw_gid,
                "extra_groups": [],
            }
        return subprocess.run(
            [str(self.bindir / tool), *args],
            cwd=self.root,
            capture_output=True,
            text=True,
            timeout=STARTUP_TIMEOUT_S,
            check=False,
            **account,
        )

    def check(self, tool: str, *args: str) -> None:
        """`run`, failing with the tool's output and the server log if it fails."""
        result = self.run(tool, *args)
        if result.returncode != 0:
            pytest.fail(
                f"{tool} {shlex.join(args)} exited with {result.returncode}:\n"
                f"{result.stdout}{result.stderr}\n{_log_tail(self.log_path)}"
            )

    def stop(self) -> None:
        """`pg_ctl stop -m fast`; SIGKILL to the postmaster's group if that fails (pg_ctl
        starts the postmaster in a session of its own, with its backends)."""
        pid_file = self.data / "postmaster.pid"
        if not pid_file.exists():
            return
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.run("pg_ctl", "stop", "-D", str(self.data), "-m", "fast", "-w")
        with contextlib.suppress(FileNotFoundError, ProcessLookupError, ValueError):
            os.killpg(int(pid_file.read_text().split()[0]), signal.SIGKILL)

    def keep_log(self, log_dir: pathlib.Path) -> None:
        """Copy the server log out of the cluster directory, which is removed at exit."""
        if self.log_path.exists():
            shutil.copyfile(self.log_path, log_dir / self.log_path.name)


def _start_postgres(exits: contextlib.ExitStack, log_dir: pathlib.Path) -> str:
    """Init, start and stop (at exit) a trust-auth cluster on 127.0.0.1 with the `mlflow`
    database; its DSN.

    The cluster lives in a directory of its own under the system temp dir: pytest's are
    private to the tests' user, which the `postgres` account could not enter. It also keeps
    the Unix socket's path well below the kernel's 107-byte limit."""
    bindir = _postgres_bindir()
    account = _postgres_account()
    root = pathlib.Path(exits.enter_context(tempfile.TemporaryDirectory(prefix="pg-")))
    if account is not None:
        os.chown(root, account.pw_uid, account.pw_gid)
    cluster = _Cluster(bindir, root, account, free_port())
    exits.callback(cluster.keep_log, log_dir)
    cluster.check(
        "initdb", "-D", str(cluster.data), "-U", PG_USER, "--auth=trust", "--no-locale",
        "-E", "UTF8", "--no-sync",
    )  # fmt: skip
    exits.callback(cluster.stop)
    # The cluster is thrown away afterwards: durability is only start-up and test time.
    options = (
        f"-c listen_addresses=127.0.0.1 -p {cluster.port} -k {shlex.quote(str(root))}"
        " -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
    )
    cluster.check(
        "pg_ctl", "start", "-D", str(cluster.data), "-l", str(cluster.log_path), "-w",
        "-t", str(int(STARTUP_TIMEOUT_S)), "-o", options,
    )  # fmt: skip
    cluster.check("createdb", "-h", "127.0.0.1", "-p", str(cluster.port), "-U", PG_USER, DATABASE)
    return f"postgresql://{PG_USER}@127.0.0.1:{cluster.port}/{DATABASE}"


def _start_moto(exits: contextlib.ExitStack, log_dir: pathlib.Path) -> str:
    """moto's S3 server with an empty BUCKET; its endpoint."""
    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    log_path = log_dir / "moto.log"
    command = [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)]
    process = _start_group(command, log_path, dict(os.environ))
    exits.callback(stop_process_group, process)
    _wait_until(lambda: _answers_ok(f"{endpoint}/moto-api/"), "moto server", log_path, process)
    s3_client(endpoint).create_bucket(Bucket=BUCKET)
    return endpoint


def _start_mlflow_server(
    exits: contextlib.ExitStack, log_dir: pathlib.Path, pg_dsn: str, s3_env: dict[str, str]
) -> str:
    """`mlflow server` on the cluster and the bucket, proxying artifacts; its URL once
    /health answers."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log_path = log_dir / "mlflow-server.log"
    command = [
        sys.executable, "-m", "mlflow", "server",
        "--backend-store-uri", backend_store_uri(pg_dsn),
        "--artifacts-destination", f"s3://{BUCKET}/{ARTIFACTS_PREFIX}",
        "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
    ]  # fmt: skip
    env = {
        **os.environ,
        **s3_env,
        # The background job runner (a pool of consumer processes) serves no registry call.
        "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
        # Webhook receivers in the tests listen on plain-HTTP loopback URLs, which MLflow
        # refuses by default (https only, public addresses only).
        "MLFLOW_WEBHOOK_ALLOWED_SCHEMES": "http,https",
        "MLFLOW_WEBHOOK_ALLOW_PRIVATE_IPS": "true",
        # Subscribers are otherwise cached per event for 60 s: a webhook created after the
        # seeding's own alias event would miss the next minute's deliveries.
        "MLFLOW_WEBHOOK_CACHE_TTL": "0",
        # Webhook secrets are stored encrypted; one fixed key for every worker the server
        # may start, rather than a random key per process.
        "MLFLOW_WEBHOOK_SECRET_ENCRYPTION_KEY": Fernet.generate_key().decode(),
    }
    process = _start_group(command, log_path, env)
    exits.callback(stop_process_group, process)
    _wait_until(lambda: _answers_ok(f"{url}/health"), "mlflow server", log_path, process)
    return url


def _train(alpha: float) -> ElasticNet:
    """The wine ElasticNet on every row, with the example's other hyper-parameters."""
    data = pd.read_csv(model_builders.WINE_CSV, sep=";")
    features = data.drop(columns=[model_builders.WINE_TARGET])
    model = ElasticNet(alpha=alpha, l1_ratio=0.5, random_state=42)
    return model.fit(features, data[[model_builders.WINE_TARGET]])


def _register_versions(stack: RegistryStack) -> None:
    """Register version 1 and 2 in order, then give version 1 the alias and the stage."""
    features = model_builders.read_wine_features()
    with tracking(stack):
        for version, alpha in ALPHAS.items():
            model = _train(alpha)
            with mlflow.start_run(run_name=f"elasticnet-alpha-{alpha}"):
                info = mlflow.sklearn.log_model(
                    model,
                    name=ARTIFACT_NAME,
                    signature=infer_signature(features, model.predict(features)),
                    input_example=features.iloc[:5],
                    registered_model_name=REGISTERED_NAME,
                    # Explicit, so MLflow does not infer them in a slow subprocess; skops
                    # because that is the format MLflow 3 saves sklearn models in.
                    pip_requirements=mlflow.sklearn.get_default_pip_requirements(
                        include_skops=True
                    ),
                )
            assert str(info.registered_model_version) == str(version), info.registered_model_version
    move_alias(stack, 1)
    set_stage(stack, 1, PRODUCTION)


@contextlib.contextmanager
def running_registry_stack(tmp_dir: pathlib.Path) -> Iterator[RegistryStack]:
    """Start PostgreSQL, moto and `mlflow server`, register the two versions, and yield the
    stack; stop every process afterwards. Logs go to `tmp_dir`."""
    with contextlib.ExitStack() as exits:
        pg_dsn = _start_postgres(exits, tmp_dir)
        s3_endpoint = _start_moto(exits, tmp_dir)
        s3_env = {"MLFLOW_S3_ENDPOINT_URL": s3_endpoint, **S3_CREDENTIALS}
        tracking_url = _start_mlflow_server(exits, tmp_dir, pg_dsn, s3_env)
        stack = RegistryStack(
            tracking_url=tracking_url,
            s3_endpoint=s3_endpoint,
            bucket=BUCKET,
            pg_dsn=pg_dsn,
            env={"MLFLOW_TRACKING_URI": tracking_url, **s3_env},
            log_dir=tmp_dir,
        )
        _register_versions(stack)
        yield stack
