"""Serving from the model registry as the seeds deploy it (PostgreSQL backend store, S3
artifacts behind the tracking server's proxy): the URIs answer the version they point to,
versions are served side by side, the repository API works through tritonclient, and a
version that cannot load never takes traffic."""

import json
import pathlib
import time
from collections.abc import Callable

import numpy as np
import pandas as pd
import pytest
import requests
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from support import v2
from support.model_builders import read_wine_features
from support.registry_stack import (
    ARTIFACT_NAME,
    ARTIFACTS_PREFIX,
    CHAMPION,
    REGISTERED_NAME,
    RegistryStack,
    expected_predictions,
    mlflow_webhook,
    move_alias,
    tracking,
)
from support.server import ServerHandle, StartServer
from tritonclient.utils import InferenceServerException

OUTPUT = "output-0"
ROWS = 4
RTOL = 1e-9
#: How long a followed reference may take to be noticed and loaded, beyond the poll interval.
LOAD_ALLOWANCE_S = 5.0
POLL_S = 0.1
#: New connections a check opens: SO_REUSEPORT spreads them over the workers, so with two
#: workers all of them landing on one is a chance of 2^-15.
FRESH_CONNECTIONS = 16
CHAMPION_URI = f"models:/{REGISTERED_NAME}@{CHAMPION}"
PRODUCTION_URI = f"models:/{REGISTERED_NAME}/Production"


@pytest.fixture(scope="module")
def rows() -> pd.DataFrame:
    return read_wine_features().iloc[:ROWS]


def answer(
    client: grpcclient.InferenceServerClient, rows: pd.DataFrame, version: str = ""
) -> tuple[str, np.ndarray]:
    """The version that answered and its predictions."""
    result = client.infer(REGISTERED_NAME, v2.column_inputs(rows, "FP64"), model_version=version)
    return result.get_response().model_version, result.as_numpy(OUTPUT).reshape(-1)


def assert_answers(
    stack: RegistryStack,
    client: grpcclient.InferenceServerClient,
    rows: pd.DataFrame,
    version: int,
    asked: str = "",
) -> None:
    answered, values = answer(client, rows, asked)
    assert answered == str(version)
    np.testing.assert_allclose(values, expected_predictions(stack, version, rows), rtol=RTOL)


def wait_for(condition: Callable[[], bool], what: str, timeout: float) -> float:
    """Seconds until `condition` held; fails after `timeout`."""
    started = time.monotonic()
    while not condition():
        if time.monotonic() - started > timeout:
            pytest.fail(f"{what} not within {timeout} s")
        time.sleep(POLL_S)
    return time.monotonic() - started


def serve(
    start_server: StartServer, stack: RegistryStack, uri: str | None, *args: str
) -> ServerHandle:
    return start_server(uri, *args, env=stack.env)


def test_the_seeds_uris_answer_the_version_they_point_to(
    start_server: StartServer, registry_stack: RegistryStack, rows: pd.DataFrame
) -> None:
    """`models:/ElasticNetWineModel/Production` and `@champion` (both on version 1) answer
    version 1's predictions and report that version; clients may not load or unload by
    default."""
    for uri in (PRODUCTION_URI, CHAMPION_URI):
        server = serve(start_server, registry_stack, uri, "--poll-interval", "0")
        with server.grpc_client() as client:
            assert_answers(registry_stack, client, rows, 1)
            assert client.get_model_metadata(REGISTERED_NAME).versions == ["1"]
            [entry] = client.get_model_repository_index().models
            assert (entry.name, entry.version, entry.state) == (REGISTERED_NAME, "1", "READY")
            with pytest.raises(InferenceServerException, match="--model-control-mode"):
                client.unload_model(REGISTERED_NAME)


def test_every_uri_form_of_a_version(
    start_server: StartServer, registry_stack: RegistryStack, rows: pd.DataFrame
) -> None:
    """Version 2 as an MLflow 3 logged model (`models:/<model_id>`), through the tracking
    server's artifact proxy (`mlflow-artifacts:`) and straight from S3 (`s3://`, with
    MLFLOW_S3_ENDPOINT_URL): each answers version 2's predictions."""
    client = registry_stack.client()
    # A registered version's source is its logged model: `models:/<model_id>`.
    source = client.get_model_version(REGISTERED_NAME, "2").source
    assert source.startswith("models:/m-"), source
    model_id = source.removeprefix("models:/")
    proxied = client.get_logged_model(model_id).artifact_location
    assert proxied.startswith("mlflow-artifacts:/"), proxied
    in_s3 = (
        f"s3://{registry_stack.bucket}/{ARTIFACTS_PREFIX}/"
        f"{proxied.removeprefix('mlflow-artifacts:/')}"
    )
    expected = expected_predictions(registry_stack, 2, rows)
    for uri in (f"models:/{model_id}", proxied, in_s3):
        server = serve(
            start_server, registry_stack, uri, "--name", REGISTERED_NAME, "--poll-interval", "0"
        )
        with server.grpc_client() as grpc_client:
            answered, values = answer(grpc_client, rows)
        assert answered == ""
        np.testing.assert_allclose(values, expected, rtol=RTOL, err_msg=uri)


@pytest.fixture
def side_by_side(
    start_server: StartServer, registry_stack: RegistryStack, tmp_path: pathlib.Path
) -> ServerHandle:
    """`@champion` (version 1) with versions 1 and 2 served side by side; clients may load
    and unload."""
    config = tmp_path / "models.yaml"
    config.write_text(f"models:\n  - uri: {CHAMPION_URI}\n    versions: [1, 2]\n")
    return serve(
        start_server,
        registry_stack,
        None,
        "--config",
        str(config),
        "--poll-interval",
        "0",
        "--model-control-mode",
        "explicit",
    )


def test_versions_side_by_side(
    side_by_side: ServerHandle, registry_stack: RegistryStack, rows: pd.DataFrame
) -> None:
    """A request naming a version gets that version's predictions; one naming none gets the
    alias's version. Metadata and readiness are per version."""
    with side_by_side.grpc_client() as client:
        assert_answers(registry_stack, client, rows, 1)
        assert_answers(registry_stack, client, rows, 2, asked="2")
        assert_answers(registry_stack, client, rows, 1, asked="1")
        assert client.get_model_metadata(REGISTERED_NAME, "2").versions == ["2"]
        assert client.is_model_ready(REGISTERED_NAME, "2")
        assert not client.is_model_ready(REGISTERED_NAME, "7")
        with pytest.raises(InferenceServerException, match=r"served versions: '1', '2'"):
            answer(client, rows, "7")
        index = {(e.version, e.state) for e in client.get_model_repository_index().models}
        assert index == {("1", "READY"), ("2", "READY")}
    body = {
        "inputs": [
            {"name": column, "shape": [ROWS, 1], "datatype": "FP64", "data": rows[column].tolist()}
            for column in rows.columns
        ]
    }
    url = f"{side_by_side.http_url}/v2/models/{REGISTERED_NAME}/versions/2/infer"
    document = requests.post(url, json=body, timeout=30).json()
    assert document["model_version"] == "2"
    np.testing.assert_allclose(
        document["outputs"][0]["data"], expected_predictions(registry_stack, 2, rows), rtol=RTOL
    )


def test_config_entries_of_one_name_are_versions(
    start_server: StartServer,
    registry_stack: RegistryStack,
    rows: pd.DataFrame,
    tmp_path: pathlib.Path,
) -> None:
    """`--config` listing `models:/ElasticNetWineModel/1` and `/2` under one name serves
    both: the first listed by default, the other by its version."""
    config = tmp_path / "models.yaml"
    config.write_text(
        f"models:\n  - uri: models:/{REGISTERED_NAME}/1\n  - uri: models:/{REGISTERED_NAME}/2\n"
    )
    server = serve(start_server, registry_stack, None, "--config", str(config))
    with server.grpc_client() as client:
        assert_answers(registry_stack, client, rows, 1)
        assert_answers(registry_stack, client, rows, 2, asked="2")


def test_repository_api_through_tritonclient(
    side_by_side: ServerHandle, wine_model_dir: pathlib.Path, rows: pd.DataFrame
) -> None:
    """Load by URI (tritonclient's `config`), unload (drained, then UNAVAILABLE with a
    reason, never READY), load again from what the server knows, over gRPC and HTTP."""
    local = "wine-local"
    with side_by_side.grpc_client() as client:
        with pytest.raises(InferenceServerException, match="give its URI"):
            client.load_model("nowhere")
        client.load_model(local, config=json.dumps({"uri": str(wine_model_dir)}))
        assert client.is_model_ready(local)
        assert client.infer(local, v2.column_inputs(rows, "FP64")).as_numpy(OUTPUT).shape[0] == ROWS
        client.unload_model(local)
        assert not client.is_model_ready(local)
        entries = [e for e in client.get_model_repository_index().models if e.name == local]
        assert [(e.state, e.reason) for e in entries] == [("UNAVAILABLE", "unloaded by request")]
        with pytest.raises(InferenceServerException, match="not served here"):
            client.infer(local, v2.column_inputs(rows, "FP64"))
        assert client.is_server_ready()
    http = httpclient.InferenceServerClient(f"127.0.0.1:{side_by_side.http_port}")
    try:
        http.load_model(local)
        assert http.is_model_ready(local)
        ready = http.get_model_repository_index()
        assert {(e["name"], e["state"]) for e in ready} >= {(local, "READY")}
        http.unload_model(local)
        assert not http.is_model_ready(local)
    finally:
        http.close()


def test_webhooks_are_off_without_a_secret(side_by_side: ServerHandle) -> None:
    """Without --webhook-secret, webhook deliveries are refused (403), naming the flag."""
    url = f"{side_by_side.http_url}/v2/repository/webhooks/mlflow"
    response = requests.post(url, data=b"{}", timeout=10)
    assert response.status_code == 403 and "--webhook-secret" in response.json()["error"]


def _break_version(stack: RegistryStack) -> int:
    """Registers a new version whose estimator file is gone from S3: MLflow lists it, but it
    cannot load."""
    import mlflow.sklearn
    from sklearn.dummy import DummyRegressor

    features = read_wine_features()
    with tracking(stack):
        model = DummyRegressor().fit(features, np.zeros(len(features)))
        info = mlflow.sklearn.log_model(
            model,
            name=ARTIFACT_NAME,
            registered_model_name=REGISTERED_NAME,
            pip_requirements=mlflow.sklearn.get_default_pip_requirements(include_skops=True),
        )
    s3 = stack.s3_client()
    listed = s3.list_objects_v2(Bucket=stack.bucket).get("Contents", [])
    estimators = [
        o["Key"]
        for o in listed
        if info.model_id in o["Key"] and o["Key"].endswith((".skops", ".pkl"))
    ]
    assert estimators, f"no estimator file of {info.model_id} in the bucket"
    for key in estimators:
        s3.delete_object(Bucket=stack.bucket, Key=key)
    return int(info.registered_model_version)


def test_a_broken_version_never_takes_traffic(
    start_server: StartServer, registry_stack: RegistryStack, rows: pd.DataFrame
) -> None:
    """The alias moves to a version that fails to load: the old version keeps answering,
    the index and the metrics say why, and moving the alias on to a good version swaps."""
    server = serve(start_server, registry_stack, CHAMPION_URI, "--poll-interval", "0.5")
    broken = _break_version(registry_stack)
    move_alias(registry_stack, broken)
    try:
        with server.grpc_client() as client:

            def failure_indexed() -> bool:
                return any(
                    e.version == str(broken) and e.state == "UNAVAILABLE"
                    for e in client.get_model_repository_index().models
                )

            wait_for(failure_indexed, "the failed load in the index", LOAD_ALLOWANCE_S + 5)
            # One entry for the version: UNAVAILABLE, or LOADING while it is tried again
            # (every poll), with the reason either way.
            [failed] = [
                e for e in client.get_model_repository_index().models if e.version == str(broken)
            ]
            assert failed.state in ("UNAVAILABLE", "LOADING") and "failed to load" in failed.reason
            for _ in range(3):
                assert_answers(registry_stack, client, rows, 1)
            metrics = requests.get(f"{server.http_url}/metrics", timeout=10).text
            assert f'version="{broken}"' in metrics and 'outcome="failed"' in metrics
            move_alias(registry_stack, 2)
            wait_for(lambda: answer(client, rows)[0] == "2", "the swap to version 2", 10)
            assert_answers(registry_stack, client, rows, 2)
            states = {(e.version, e.state) for e in client.get_model_repository_index().models}
            assert states == {("2", "READY")}
    finally:
        move_alias(registry_stack, 1)
        registry_stack.client().delete_model_version(REGISTERED_NAME, str(broken))


def test_every_worker_follows_a_webhook(
    start_server: StartServer, registry_stack: RegistryStack, rows: pd.DataFrame
) -> None:
    """With --workers 2, the webhook reaches one worker; the supervisor has every worker look
    at the registry at once, so new connections (spread over both workers) all answer the
    new version soon after, with no polling."""
    secret = "workers-secret"
    server = serve(
        start_server,
        registry_stack,
        CHAMPION_URI,
        "--workers",
        "2",
        "--poll-interval",
        "0",
        "--webhook-secret",
        secret,
    )

    def fresh_connections_answer(version: str) -> bool:
        for _ in range(FRESH_CONNECTIONS):
            with server.grpc_client() as fresh:
                if answer(fresh, rows)[0] != version:
                    return False
        return True

    url = f"{server.http_url}/v2/repository/webhooks/mlflow"
    with mlflow_webhook(registry_stack, "arrowsmith-workers", url, secret):
        try:
            assert fresh_connections_answer("1")
            move_alias(registry_stack, 2)
            wait_for(lambda: fresh_connections_answer("2"), "every worker on version 2", 10)
        finally:
            move_alias(registry_stack, 1)
