"""V2 REST and /metrics on the HTTP port, as `tritonclient.http`, curl-like clients and a
Prometheus scraper see them: health, metadata mirroring gRPC's, infer with JSON and binary
tensors, errors with the right status (the server keeps serving after each), and metrics
after traffic."""

import json
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd
import pytest
import requests
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from mlflow.pyfunc import PyFuncModel
from prometheus_client.parser import text_string_to_metric_families
from support.model_builders import STRING_MODEL_NAME, TENSOR_MODEL_NAME, WINE_MODEL_NAME
from support.server import ServerHandle, StartServer

TIMEOUT_S = 60
BATCH_ROWS = 10


def v2_url(server: ServerHandle, path: str) -> str:
    return f"{server.http_url}/v2{path}"


def wine_inputs(rows: pd.DataFrame, datatype: str = "FP64") -> list[dict[str, Any]]:
    """JSON inputs, one [n, 1] tensor per column, `data` nested row by row."""
    return [
        {
            "name": column,
            "shape": [len(rows), 1],
            "datatype": datatype,
            "data": rows[[column]].to_numpy().tolist(),
        }
        for column in rows.columns
    ]


def infer(server: ServerHandle, body: Any, model: str = WINE_MODEL_NAME) -> requests.Response:
    return requests.post(v2_url(server, f"/models/{model}/infer"), json=body, timeout=TIMEOUT_S)


@pytest.fixture(scope="module")
def wine_expected(wine_pyfunc: PyFuncModel, wine_frame: pd.DataFrame) -> np.ndarray:
    expected: np.ndarray = wine_pyfunc.predict(wine_frame.iloc[:BATCH_ROWS])
    return expected


def assert_wine_still_served(
    server: ServerHandle, frame: pd.DataFrame, expected: np.ndarray
) -> None:
    answer = infer(server, {"inputs": wine_inputs(frame.iloc[:BATCH_ROWS])})
    assert answer.status_code == 200, answer.text
    np.testing.assert_allclose(answer.json()["outputs"][0]["data"], expected, rtol=0, atol=1e-9)


def test_health(wine_server: ServerHandle) -> None:
    """Live and ready as status and body; tritonclient.http agrees."""
    live = requests.get(v2_url(wine_server, "/health/live"), timeout=TIMEOUT_S)
    ready = requests.get(v2_url(wine_server, "/health/ready"), timeout=TIMEOUT_S)
    model = requests.get(v2_url(wine_server, f"/models/{WINE_MODEL_NAME}/ready"), timeout=TIMEOUT_S)
    assert (live.status_code, live.json()) == (200, {"live": True})
    assert (ready.status_code, ready.json()) == (200, {"ready": True})
    assert (model.status_code, model.json()) == (200, {"name": WINE_MODEL_NAME, "ready": True})
    with httpclient.InferenceServerClient(wine_server.http_url.removeprefix("http://")) as client:
        assert client.is_server_live()
        assert client.is_server_ready()
        assert client.is_model_ready(WINE_MODEL_NAME)
        assert not client.is_model_ready("nope")


def test_server_metadata(wine_server: ServerHandle) -> None:
    metadata = requests.get(v2_url(wine_server, ""), timeout=TIMEOUT_S).json()
    assert metadata["name"] == "arrowsmith"
    assert metadata["version"].strip()
    assert "binary_tensor_data" in metadata["extensions"]


def grpc_metadata(server: ServerHandle, model: str) -> dict[str, Any]:
    """ModelMetadata over gRPC as tritonclient reads it (Triton's messages have no tensor
    parameters nor model properties), in the REST document's shape."""
    with grpcclient.InferenceServerClient(server.url) as client:
        message = client.get_model_metadata(model)

    def tensor(t: Any) -> dict[str, Any]:
        return {"name": t.name, "datatype": t.datatype, "shape": list(t.shape)}

    return {
        "name": message.name,
        "versions": list(message.versions),
        "platform": message.platform,
        "inputs": [tensor(t) for t in message.inputs],
        "outputs": [tensor(t) for t in message.outputs],
    }


# model: (input content types, output content types, model content type, MLflow loader)
CONTENT_TYPES = {
    WINE_MODEL_NAME: (["np"] * 11, ["np"], "pd", "mlflow.sklearn"),
    TENSOR_MODEL_NAME: (["np"], ["np"], "np", "mlflow.pyfunc.model"),
    STRING_MODEL_NAME: (["str"], ["str"], "pd", "mlflow.pyfunc.model"),
}


@pytest.mark.parametrize(
    ("server_fixture", "model"),
    [
        ("wine_server", WINE_MODEL_NAME),
        ("tensor_server", TENSOR_MODEL_NAME),
        ("string_server", STRING_MODEL_NAME),
    ],
)
def test_model_metadata_mirrors_grpc(
    server_fixture: str, model: str, request: pytest.FixtureRequest
) -> None:
    """The REST document says what gRPC's ModelMetadata says, plus each tensor's content
    type and the model's properties."""
    server: ServerHandle = request.getfixturevalue(server_fixture)
    answer = requests.get(v2_url(server, f"/models/{model}"), timeout=TIMEOUT_S)
    assert answer.status_code == 200, answer.text
    document = answer.json()
    inputs, outputs, content_type, loader = CONTENT_TYPES[model]
    assert [t.pop("parameters") for t in document["inputs"]] == [
        {"content_type": c} for c in inputs
    ]
    assert [t.pop("parameters") for t in document["outputs"]] == [
        {"content_type": c} for c in outputs
    ]
    properties = document.pop("properties")
    assert properties["content_type"] == content_type
    assert properties["mlflow_loader_module"] == loader
    assert document == grpc_metadata(server, model)


def triton_inputs(rows: pd.DataFrame, binary: bool) -> list[httpclient.InferInput]:
    inputs = []
    for column in rows.columns:
        tensor = httpclient.InferInput(column, [len(rows), 1], "FP64")
        tensor.set_data_from_numpy(rows[[column]].to_numpy(), binary_data=binary)
        inputs.append(tensor)
    return inputs


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_tritonclient_infer(
    binary: bool, wine_server: ServerHandle, wine_frame: pd.DataFrame, wine_expected: np.ndarray
) -> None:
    """tritonclient.http with binary data on and off, inputs and outputs: MLflow's answer."""
    rows = wine_frame.iloc[:BATCH_ROWS]
    output = httpclient.InferRequestedOutput("output-0", binary_data=binary)
    with httpclient.InferenceServerClient(wine_server.http_url.removeprefix("http://")) as client:
        result = client.infer(
            WINE_MODEL_NAME, triton_inputs(rows, binary), outputs=[output], request_id="r-7"
        )
    answer = result.as_numpy("output-0")
    assert answer is not None
    np.testing.assert_allclose(answer, wine_expected, rtol=0, atol=1e-9)
    response = result.get_response()
    assert response["id"] == "r-7"
    assert response["parameters"] == {"content_type": "np"}
    assert ("binary_data_size" in response["outputs"][0].get("parameters", {})) == binary


@pytest.mark.parametrize("compression", ["gzip", "deflate"])
def test_tritonclient_compressed_request_all_outputs(
    compression: str,
    wine_server: ServerHandle,
    wine_frame: pd.DataFrame,
    wine_expected: np.ndarray,
) -> None:
    """A compressed body, and no requested outputs (tritonclient then asks for all of them
    in binary)."""
    rows = wine_frame.iloc[:BATCH_ROWS]
    with httpclient.InferenceServerClient(wine_server.http_url.removeprefix("http://")) as client:
        result = client.infer(
            WINE_MODEL_NAME,
            triton_inputs(rows, binary=True),
            request_compression_algorithm=compression,
        )
    np.testing.assert_allclose(result.as_numpy("output-0"), wine_expected, rtol=0, atol=1e-9)


def test_big_json_body_is_answered_like_a_small_one(
    wine_server: ServerHandle, wine_frame: pd.DataFrame, wine_pyfunc: PyFuncModel
) -> None:
    """Every wine row in one JSON body (larger than what is parsed on the event loop, so it
    is parsed and rendered on the handler pool): MLflow's answer for each row."""
    body = {"inputs": wine_inputs(wine_frame)}
    # arrowsmith.http.v2_rest.INLINE_BODY_LIMIT (not imported: its protobuf messages would
    # clash with tritonclient's in this process).
    assert len(json.dumps(body)) > 64 * 1024
    answer = infer(wine_server, body)
    assert answer.status_code == 200, answer.text
    (output,) = answer.json()["outputs"]
    assert output["shape"] == [len(wine_frame)]
    expected = np.asarray(wine_pyfunc.predict(wine_frame), dtype=np.float64)
    np.testing.assert_allclose(output["data"], expected, rtol=0, atol=1e-9)


def test_json_infer_flat_and_nested_data(
    wine_server: ServerHandle, wine_frame: pd.DataFrame, wine_expected: np.ndarray
) -> None:
    """`data` nested by shape or flat: the same answer, as JSON with the V2 fields."""
    rows = wine_frame.iloc[:BATCH_ROWS]
    nested = wine_inputs(rows)
    flat = [{**tensor, "data": rows[tensor["name"]].tolist()} for tensor in nested]
    answers = [infer(wine_server, {"id": "x", "inputs": inputs}) for inputs in (nested, flat)]
    for answer in answers:
        assert answer.status_code == 200, answer.text
        document = answer.json()
        assert document["model_name"] == WINE_MODEL_NAME
        assert document["id"] == "x"
        (output,) = document["outputs"]
        assert (output["name"], output["datatype"], output["shape"]) == (
            "output-0",
            "FP64",
            [BATCH_ROWS],
        )
        np.testing.assert_allclose(output["data"], wine_expected, rtol=0, atol=1e-9)


def test_json_fp32_inputs(
    wine_server: ServerHandle, wine_frame: pd.DataFrame, wine_pyfunc: PyFuncModel
) -> None:
    """FP32 into `double` columns is a safe conversion (MLflow's float -> double)."""
    rows = wine_frame.iloc[:BATCH_ROWS]
    answer = infer(wine_server, {"inputs": wine_inputs(rows, "FP32")})
    assert answer.status_code == 200, answer.text
    expected = wine_pyfunc.predict(rows.astype(np.float32).astype(np.float64))
    np.testing.assert_allclose(answer.json()["outputs"][0]["data"], expected, rtol=1e-9)


def test_bytes_in_and_out_as_text(string_server: ServerHandle) -> None:
    """BYTES travel as JSON strings both ways; the DataFrame answer is content type `pd`."""
    body = {
        "inputs": [{"name": "text", "shape": [2, 1], "datatype": "BYTES", "data": ["héllo", "b"]}]
    }
    answer = infer(string_server, body, STRING_MODEL_NAME)
    assert answer.status_code == 200, answer.text
    document = answer.json()
    assert document["parameters"] == {"content_type": "pd"}
    assert document["outputs"] == [
        {"name": "upper", "datatype": "BYTES", "shape": [2, 1], "data": ["HÉLLO", "B"]}
    ]


def test_bytes_binary_output(string_server: ServerHandle) -> None:
    """A binary BYTES output is length-prefixed, as tritonclient reads it."""
    tensor = httpclient.InferInput("text", [2, 1], "BYTES")
    tensor.set_data_from_numpy(np.array([["ab"], ["xyz"]], dtype=object), binary_data=True)
    output = httpclient.InferRequestedOutput("upper", binary_data=True)
    with httpclient.InferenceServerClient(string_server.http_url.removeprefix("http://")) as client:
        result = client.infer(STRING_MODEL_NAME, [tensor], outputs=[output])
    assert result.as_numpy("upper").tolist() == [[b"AB"], [b"XYZ"]]


def test_tensor_model_nested_uint8(tensor_server: ServerHandle) -> None:
    """A tensor signature from nested JSON integers: UINT8 [2, 8, 8] in, INT64 sums out."""
    images = np.arange(128, dtype=np.uint8).reshape(2, 8, 8)
    body = {
        "inputs": [
            {"name": "input-0", "shape": [2, 8, 8], "datatype": "UINT8", "data": images.tolist()}
        ]
    }
    answer = infer(tensor_server, body, TENSOR_MODEL_NAME)
    assert answer.status_code == 200, answer.text
    (output,) = answer.json()["outputs"]
    assert output["datatype"] == "INT64"
    assert output["data"] == images.reshape(2, -1).astype(np.int64).sum(axis=1).tolist()


def spoiled(frame: pd.DataFrame, column: str, **changes: Any) -> dict[str, Any]:
    """A good wine body whose input `column` gets `changes`."""
    inputs = wine_inputs(frame.iloc[:2])
    for tensor in inputs:
        if tensor["name"] == column:
            tensor.update(changes)
    return {"inputs": inputs}


def without(frame: pd.DataFrame, column: str) -> dict[str, Any]:
    return {"inputs": [t for t in wine_inputs(frame.iloc[:2]) if t["name"] != column]}


Send = Callable[[ServerHandle, pd.DataFrame], requests.Response]


def post_raw(path: str, body: bytes, headers: dict[str, str] | None = None) -> Send:
    def send(server: ServerHandle, frame: pd.DataFrame) -> requests.Response:
        return requests.post(v2_url(server, path), data=body, headers=headers, timeout=TIMEOUT_S)

    return send


def post_json(make: Callable[[pd.DataFrame], Any], model: str = WINE_MODEL_NAME) -> Send:
    def send(server: ServerHandle, frame: pd.DataFrame) -> requests.Response:
        return infer(server, make(frame), model)

    return send


def get(path: str) -> Send:
    def send(server: ServerHandle, frame: pd.DataFrame) -> requests.Response:
        return requests.get(v2_url(server, path), timeout=TIMEOUT_S)

    return send


BINARY_PH_HEADER = {
    "inputs": [
        {"name": "pH", "shape": [1], "datatype": "FP64", "parameters": {"binary_data_size": 8}}
    ]
}


def with_binary(header: dict[str, Any], tail: bytes) -> tuple[bytes, dict[str, str]]:
    """A binary-extension body: the JSON header, then `tail`, and its length header."""
    encoded = json.dumps(header).encode()
    return encoded + tail, {"Inference-Header-Content-Length": str(len(encoded))}


# name: (how to send it, expected status, words the error must contain)
ERROR_CASES: dict[str, tuple[Send, int, tuple[str, ...]]] = {
    "unknown_model_infer": (
        post_json(lambda f: {"inputs": wine_inputs(f.iloc[:1])}, "nope"),
        404,
        ("nope",),
    ),
    "unknown_model_metadata": (get("/models/nope"), 404, ("nope",)),
    "unknown_model_ready": (get("/models/nope/ready"), 404, ("nope",)),
    "unknown_version": (get(f"/models/{WINE_MODEL_NAME}/versions/9"), 404, ("9",)),
    "malformed_json": (
        post_raw(f"/models/{WINE_MODEL_NAME}/infer", b'{"inputs": ['),
        400,
        ("JSON",),
    ),
    "not_an_object": (post_raw(f"/models/{WINE_MODEL_NAME}/infer", b"[1, 2]"), 400, ("object",)),
    "no_inputs": (post_json(lambda f: {"inputs": []}), 400, ("inputs",)),
    "missing_column": (post_json(lambda f: without(f, "pH")), 400, ("pH",)),
    "text_in_fp64": (post_json(lambda f: spoiled(f, "pH", data=[["a"], ["b"]])), 400, ("pH",)),
    "count_differs_from_shape": (post_json(lambda f: spoiled(f, "pH", data=[1.0])), 400, ("pH",)),
    "unknown_datatype": (
        post_json(lambda f: spoiled(f, "pH", datatype="FP128")),
        400,
        ("pH", "FP128"),
    ),
    "bf16_in_json": (post_json(lambda f: spoiled(f, "pH", datatype="BF16")), 400, ("pH",)),
    "int8_out_of_range": (
        post_json(lambda f: spoiled(f, "pH", datatype="INT8", data=[[300], [1]])),
        400,
        ("pH", "INT8"),
    ),
    "int64_into_double_column": (
        post_json(lambda f: spoiled(f, "pH", datatype="INT64", data=[[3], [4]])),
        400,
        ("pH",),
    ),
    "negative_shape": (post_json(lambda f: spoiled(f, "pH", shape=[-2, 1])), 400, ("pH",)),
    "unknown_requested_output": (
        post_json(lambda f: {"inputs": wine_inputs(f.iloc[:1]), "outputs": [{"name": "nope"}]}),
        400,
        ("nope",),
    ),
    "binary_size_past_the_body": (
        post_raw(f"/models/{WINE_MODEL_NAME}/infer", *with_binary(BINARY_PH_HEADER, b"1234")),
        400,
        ("pH", "binary_data_size"),
    ),
    "binary_bytes_left_over": (
        post_raw(f"/models/{WINE_MODEL_NAME}/infer", *with_binary(BINARY_PH_HEADER, b"8" * 12)),
        400,
        ("4 bytes",),
    ),
    "header_length_not_a_number": (
        post_raw(
            f"/models/{WINE_MODEL_NAME}/infer", b"{}", {"Inference-Header-Content-Length": "x"}
        ),
        400,
        ("Inference-Header-Content-Length",),
    ),
    "unknown_content_encoding": (
        post_raw(f"/models/{WINE_MODEL_NAME}/infer", b"{}", {"Content-Encoding": "br"}),
        400,
        ("br",),
    ),
    "bad_gzip": (
        post_raw(f"/models/{WINE_MODEL_NAME}/infer", b"not gzip", {"Content-Encoding": "gzip"}),
        400,
        ("gzip",),
    ),
    "wrong_method": (get(f"/models/{WINE_MODEL_NAME}/infer"), 405, ("Method Not Allowed",)),
    "unknown_path": (get("/nothing/here"), 404, ("Not Found",)),
}


@pytest.mark.parametrize("case", list(ERROR_CASES))
def test_errors(
    case: str, wine_server: ServerHandle, wine_frame: pd.DataFrame, wine_expected: np.ndarray
) -> None:
    """`{"error": ...}` with the status of the error table, naming the culprit."""
    send, status, words = ERROR_CASES[case]
    answer = send(wine_server, wine_frame)
    assert answer.status_code == status, answer.text
    message = answer.json()["error"]
    for word in words:
        assert word in message, f"{word!r} is not in {message!r}"
    assert_wine_still_served(wine_server, wine_frame, wine_expected)


def samples(server: ServerHandle) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of /metrics on the HTTP port, by (name, sorted labels)."""
    text = requests.get(f"{server.http_url}/metrics", timeout=TIMEOUT_S).text
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def total(
    found: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str
) -> float:
    """The sum over the samples `name` whose labels include `labels` (e.g. every worker)."""
    wanted = set(labels.items())
    return sum(value for (n, have), value in found.items() if n == name and wanted <= set(have))


def test_metrics_after_traffic(wine_server: ServerHandle, wine_frame: pd.DataFrame) -> None:
    """Counters by model, protocol and status, and stage histograms, move with traffic."""
    rows = wine_frame.iloc[:2]
    before = samples(wine_server)
    assert infer(wine_server, {"inputs": wine_inputs(rows)}).status_code == 200
    assert infer(wine_server, without(rows, "pH")).status_code == 400
    split = {"dataframe_split": json.loads(rows.to_json(orient="split"))}
    assert (
        requests.post(
            f"{wine_server.http_url}/invocations", json=split, timeout=TIMEOUT_S
        ).status_code
        == 200
    )
    after = samples(wine_server)

    def grew(name: str, by: float, **labels: str) -> None:
        change = total(after, name, **labels) - total(before, name, **labels)
        assert change == by, f"{name}{labels} grew by {change}, not {by}"

    wine = {"model": WINE_MODEL_NAME}
    grew("arrowsmith_requests_total", 1, protocol="rest", status="OK", **wine)
    grew("arrowsmith_requests_total", 1, protocol="rest", status="INVALID_INPUT", **wine)
    grew("arrowsmith_requests_total", 1, protocol="mlflow", status="OK", **wine)
    # The refused request was parsed; the native decoder refused it, so it has no decode
    # time (only successful decodes are timed) and was never rendered.
    for protocol, stage, count in (
        ("rest", "parse", 2),
        ("rest", "decode", 1),
        ("rest", "render", 1),
        ("mlflow", "parse", 1),
        ("mlflow", "decode", 1),
        ("mlflow", "render", 1),
    ):
        grew("arrowsmith_stage_seconds_count", count, protocol=protocol, stage=stage, **wine)
    assert total(after, "arrowsmith_predict_seconds_count", **wine) >= 2
    assert total(after, "arrowsmith_queue_wait_seconds_count", **wine) >= 2


def test_metrics_of_all_workers(
    start_server: StartServer, wine_model_dir: Any, wine_frame: pd.DataFrame
) -> None:
    """With two workers on the port, whichever answers /metrics counts every worker's
    requests. Each request opens its own connection, so the kernel spreads them."""
    server = start_server(wine_model_dir, "--workers", "2", name=WINE_MODEL_NAME)
    body = {"inputs": wine_inputs(wine_frame.iloc[:1])}
    answered = 0
    for _ in range(600):
        status = infer(server, body).status_code
        if status == 200:
            answered += 1
            if answered == 20:
                break
        else:
            assert status == 503, "only a worker still loading may refuse"
            time.sleep(0.05)
    assert answered == 20
    found = samples(server)
    ok = {"model": WINE_MODEL_NAME, "protocol": "rest", "status": "OK"}
    assert total(found, "arrowsmith_requests_total", **ok) == 20
