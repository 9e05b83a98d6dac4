"""MLflow's scoring protocol, differential: every request goes to the real `mlflow models
serve` and to Arrowsmith, and the answers must agree (status, JSON, predictions to 1e-9,
error codes, the column an error names).

One Arrowsmith server holds two models from a config file: the wine model first (so
`/invocations` serves it) and a model with a ParamSchema; each model also has its own
`mlflow models serve`. Every server starts once for the module.
"""

import io
import json
import math
import pathlib
from collections.abc import Iterator
from typing import Any

import mlflow.pyfunc
import pandas as pd
import pytest
import requests
from mlflow.models import ModelSignature
from mlflow.pyfunc import PyFuncModel, scoring_server
from mlflow.types import ColSpec, ParamSchema, ParamSpec, Schema
from support import model_builders
from support.mlflow_server import running_mlflow_server
from support.server import ServerHandle, running_server

JSON = "application/json"
CSV = "text/csv"
PARAMS_MODEL_NAME = "scale"
PARAMS_MODELS_FILE = pathlib.Path(model_builders.__file__).parent / "params_models.py"
PARAMS_SIGNATURE = ModelSignature(
    inputs=Schema([ColSpec("double", "x")]),
    params=ParamSchema(
        [
            ParamSpec("factor", "double", 1.0),
            ParamSpec("label", "string", "none"),
            ParamSpec("output", "string", "frame"),
        ]
    ),
)
#: Request timeout: generous, the machine is shared.
TIMEOUT_S = 60


@pytest.fixture(scope="module")
def params_model_dir(models_dir: pathlib.Path) -> pathlib.Path:
    """The ScaleModel of params_models.py: `x` in, `factor`, `label`, `output` params."""
    module = model_builders.import_file(PARAMS_MODELS_FILE.stem, PARAMS_MODELS_FILE)
    output_dir = models_dir / PARAMS_MODEL_NAME
    mlflow.pyfunc.save_model(
        str(output_dir),
        python_model=module.ScaleModel(),
        signature=PARAMS_SIGNATURE,
        input_example=pd.DataFrame({"x": [1.0, 2.0]}),
        code_paths=[str(PARAMS_MODELS_FILE)],
        pip_requirements=mlflow.pyfunc.get_default_pip_requirements(),
    )
    model_builders.check_loads_in_fresh_process(output_dir)
    return output_dir


@pytest.fixture(scope="module")
def arrowsmith(
    wine_model_dir: pathlib.Path,
    params_model_dir: pathlib.Path,
    server_logs: pathlib.Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[ServerHandle]:
    """Arrowsmith serving both models; wine is the first, so the default."""
    config = tmp_path_factory.mktemp("invocations") / "models.yaml"
    config.write_text(
        "models:\n"
        f"  - {{uri: '{wine_model_dir}', name: {model_builders.WINE_MODEL_NAME}}}\n"
        f"  - {{uri: '{params_model_dir}', name: {PARAMS_MODEL_NAME}}}\n"
    )
    with running_server(None, "--config", str(config), log_dir=server_logs) as server:
        yield server


@pytest.fixture(scope="module")
def mlflow_wine(wine_model_dir: pathlib.Path, server_logs: pathlib.Path) -> Iterator[str]:
    with running_mlflow_server(wine_model_dir, server_logs) as url:
        yield url


@pytest.fixture(scope="module")
def mlflow_params(params_model_dir: pathlib.Path, server_logs: pathlib.Path) -> Iterator[str]:
    with running_mlflow_server(params_model_dir, server_logs) as url:
        yield url


def post(url: str, body: bytes | str, content_type: str | None) -> requests.Response:
    headers = {} if content_type is None else {"Content-Type": content_type}
    data = body.encode() if isinstance(body, str) else body
    return requests.post(url, data=data, headers=headers, timeout=TIMEOUT_S)


def assert_json_close(ours: Any, theirs: Any, where: str = "$") -> None:
    """Equal JSON, floats to 1e-9."""
    differ = f"{where}: {ours!r} != {theirs!r}"
    if isinstance(theirs, float) and isinstance(ours, int | float):
        assert math.isclose(ours, theirs, rel_tol=0, abs_tol=1e-9), differ
    elif isinstance(theirs, dict):
        assert isinstance(ours, dict) and ours.keys() == theirs.keys(), differ
        for key in theirs:
            assert_json_close(ours[key], theirs[key], f"{where}.{key}")
    elif isinstance(theirs, list):
        assert isinstance(ours, list) and len(ours) == len(theirs), differ
        for index, (mine, reference) in enumerate(zip(ours, theirs, strict=True)):
            assert_json_close(mine, reference, f"{where}[{index}]")
    else:
        assert ours == theirs, differ


def assert_same_predictions(ours: requests.Response, theirs: requests.Response) -> None:
    assert theirs.status_code == 200, theirs.text
    assert ours.status_code == 200, ours.text
    assert ours.headers["content-type"] == theirs.headers["content-type"]
    assert_json_close(ours.json(), theirs.json())


def split_body(frame: pd.DataFrame, **extra: Any) -> str:
    split = {"columns": list(frame.columns), "data": frame.to_numpy().tolist()}
    return json.dumps({"dataframe_split": split, **extra})


def good_wine_requests(frame: pd.DataFrame) -> dict[str, tuple[str, str]]:
    """Bodies MLflow accepts for the wine model, by name: (body, content type)."""
    rows = frame.iloc[:5]
    one = frame.iloc[:1]
    reordered = rows[list(reversed(rows.columns))]
    return {
        "split_one_row": (split_body(one), JSON),
        "split_rows": (split_body(rows), JSON),
        "split_with_index": (f'{{"dataframe_split": {rows.to_json(orient="split")}}}', JSON),
        "split_integers": (split_body(rows.round().astype(int)), JSON),
        "split_reordered": (split_body(reordered), JSON),
        "split_extra_column": (split_body(rows.assign(extra=1.5)), JSON),
        "records": (json.dumps({"dataframe_records": rows.to_dict(orient="records")}), JSON),
        "instances": (json.dumps({"instances": rows.to_dict(orient="records")}), JSON),
        "inputs_columns": (json.dumps({"inputs": rows.to_dict(orient="list")}), JSON),
        "csv": (rows.to_csv(index=False), CSV),
        "charset": (split_body(rows), "application/json; charset=UTF-8"),
        "csv_charset": (rows.to_csv(index=False), "text/csv; charset=utf-8"),
    }


GOOD_WINE = list(good_wine_requests(model_builders.read_wine_features()))


@pytest.mark.parametrize("case", GOOD_WINE)
def test_wine_predictions_equal_mlflow(
    case: str, arrowsmith: ServerHandle, mlflow_wine: str, wine_frame: pd.DataFrame
) -> None:
    """Each input format MLflow accepts gives MLflow's predictions."""
    body, content_type = good_wine_requests(wine_frame)[case]
    ours = post(f"{arrowsmith.http_url}/invocations", body, content_type)
    theirs = post(f"{mlflow_wine}/invocations", body, content_type)
    assert_same_predictions(ours, theirs)


def test_named_model_route_serves_that_model(
    arrowsmith: ServerHandle, mlflow_wine: str, wine_frame: pd.DataFrame
) -> None:
    """/models/{name}/invocations serves the named model, /invocations the first one."""
    body = split_body(wine_frame.iloc[:3])
    named = post(f"{arrowsmith.http_url}/models/wine/invocations", body, JSON)
    default = post(f"{arrowsmith.http_url}/invocations", body, JSON)
    assert_same_predictions(named, post(f"{mlflow_wine}/invocations", body, JSON))
    assert named.json() == default.json()


def test_unknown_model_route_is_not_found(arrowsmith: ServerHandle) -> None:
    answer = post(f"{arrowsmith.http_url}/models/nope/invocations", "{}", JSON)
    assert answer.status_code == 404
    assert answer.json()["error_code"] == "RESOURCE_DOES_NOT_EXIST"
    assert "nope" in answer.json()["message"]


PARAMS_CASES = {
    "defaults": {},
    "frame": {"factor": 2.0, "label": "hi", "output": "frame"},
    "series": {"factor": 3.0, "output": "series"},
    "unnamed_series": {"factor": 0.5, "output": "unnamed_series"},
    "dict": {"factor": 2.0, "output": "dict"},
    "array": {"factor": 1.5, "output": "array"},
    "list": {"factor": 4.0, "output": "list"},
    "integer_factor": {"factor": 2, "output": "array"},
    "unknown_param": {"colour": "red", "output": "array"},
}


@pytest.mark.parametrize("case", list(PARAMS_CASES))
def test_params_and_output_kinds_equal_mlflow(
    case: str, arrowsmith: ServerHandle, mlflow_params: str
) -> None:
    """`params` reach the model, and each kind of answer (DataFrame, Series, dict, array,
    list) is rendered as MLflow renders it."""
    frame = pd.DataFrame({"x": [1.0, 2.5, -4.0]})
    body = split_body(frame, params=PARAMS_CASES[case])
    ours = post(f"{arrowsmith.http_url}/models/{PARAMS_MODEL_NAME}/invocations", body, JSON)
    theirs = post(f"{mlflow_params}/invocations", body, JSON)
    assert_same_predictions(ours, theirs)


def test_params_model_from_csv(arrowsmith: ServerHandle, mlflow_params: str) -> None:
    body = pd.DataFrame({"x": [1.0, 2.0]}).to_csv(index=False)
    ours = post(f"{arrowsmith.http_url}/models/{PARAMS_MODEL_NAME}/invocations", body, CSV)
    assert_same_predictions(ours, post(f"{mlflow_params}/invocations", body, CSV))


def wine_split_with(frame: pd.DataFrame, column: str, value: Any) -> str:
    rows = frame.iloc[:2].astype(object)
    rows[column] = value
    return split_body(rows)


def bad_wine_requests(frame: pd.DataFrame) -> dict[str, tuple[str, str | None, tuple[str, ...]]]:
    """Bodies MLflow refuses, by name: (body, content type, column names the error names)."""
    good = split_body(frame.iloc[:2])
    csv = frame.iloc[:2].to_csv(index=False)
    without_ph = frame.iloc[:2].drop(columns=["pH"])
    return {
        "text_plain": (good, "text/plain", ()),
        "latin1_charset": (good, "application/json; charset=latin-1", ()),
        "unknown_content_parameter": (good, "application/json; format=pandas-split", ()),
        "two_format_keys": (
            json.dumps({**json.loads(good), "instances": [{"pH": 3.0}]}),
            JSON,
            (),
        ),
        "missing_column": (split_body(without_ph), JSON, ("pH",)),
        "text_in_double_column": (
            wine_split_with(frame, "citric acid", "abc"),
            JSON,
            ("citric acid",),
        ),
        # NaN passes the signature; the model itself raises (BAD_REQUEST in MLflow's words).
        "null_in_double_column": (wine_split_with(frame, "density", None), JSON, ()),
        "malformed_json": ('{"dataframe_split": {"columns": [', JSON, ()),
        "malformed_csv": ('pH,alcohol\n3.1,"9.4\n', CSV, ()),
        "bare_list": (json.dumps(frame.iloc[:2].to_numpy().tolist()), JSON, ()),
        "empty_body": ("", JSON, ()),
        "unknown_key": (json.dumps({"rows": [[1.0]]}), JSON, ()),
        "split_is_a_list": (json.dumps({"dataframe_split": [[1.0]]}), JSON, ()),
        "split_without_data": (json.dumps({"dataframe_split": {"columns": ["pH"]}}), JSON, ()),
        "csv_missing_column": (without_ph.to_csv(index=False), CSV, ("pH",)),
        "csv_text_in_double_column": (csv.replace("\n7.4,", "\nabc,", 1), CSV, ()),
        "records_not_a_list": (json.dumps({"dataframe_records": {"pH": 3.0}}), JSON, ()),
        "not_utf8": (b"\xff\xfe{}".decode("latin-1"), JSON, ()),
        # A bare matrix for a column signature: MLflow's enforcement refuses it, both here
        # (the model gets it as MLflow would) and there.
        "inputs_rows": (json.dumps({"inputs": frame.iloc[:2].to_numpy().tolist()}), JSON, ("pH",)),
    }


BAD_WINE = list(bad_wine_requests(model_builders.read_wine_features()))


@pytest.mark.parametrize("case", BAD_WINE)
def test_refusals_equal_mlflow(
    case: str, arrowsmith: ServerHandle, mlflow_wine: str, wine_frame: pd.DataFrame
) -> None:
    """Same status; for JSON errors the same error_code and a message naming the same
    columns; for MLflow's plain-text 415 answers the same text. The server keeps serving."""
    body, content_type, names = bad_wine_requests(wine_frame)[case]
    data = body.encode("latin-1") if case == "not_utf8" else body.encode()
    ours = post(f"{arrowsmith.http_url}/invocations", data, content_type)
    theirs = post(f"{mlflow_wine}/invocations", data, content_type)
    assert ours.status_code == theirs.status_code, (ours.text, theirs.text)
    assert ours.headers["content-type"] == theirs.headers["content-type"]
    if theirs.headers["content-type"] == JSON:
        mine, reference = ours.json(), theirs.json()
        assert mine["error_code"] == reference["error_code"], (mine, reference)
        assert "stack_trace" not in mine
        for name in names:
            assert name in mine["message"] and name in reference["message"], (mine, reference)
    else:
        assert ours.text == theirs.text
    good = split_body(wine_frame.iloc[:1])
    assert_same_predictions(
        post(f"{arrowsmith.http_url}/invocations", good, JSON),
        post(f"{mlflow_wine}/invocations", good, JSON),
    )


@pytest.mark.parametrize(
    ("case", "params"),
    [("bad_param_value", {"factor": "abc"}), ("model_raises", {"output": "no such kind"})],
)
def test_param_and_model_failures_equal_mlflow(
    case: str, params: dict[str, Any], arrowsmith: ServerHandle, mlflow_params: str
) -> None:
    """A param that breaks its ParamSpec, and a model that raises: MLflow's status and code."""
    body = split_body(pd.DataFrame({"x": [1.0]}), params=params)
    ours = post(f"{arrowsmith.http_url}/models/{PARAMS_MODEL_NAME}/invocations", body, JSON)
    theirs = post(f"{mlflow_params}/invocations", body, JSON)
    assert ours.status_code == theirs.status_code, (ours.text, theirs.text)
    assert ours.json()["error_code"] == theirs.json()["error_code"]


def test_missing_content_type_is_unsupported_media(arrowsmith: ServerHandle) -> None:
    """Without a Content-Type MLflow's server fails with a bare 500 (it splits None); we
    answer its 415 instead, naming the types it takes."""
    answer = post(f"{arrowsmith.http_url}/invocations", "{}", None)
    assert answer.status_code == 415
    assert "application/json" in answer.text


@pytest.mark.parametrize("path", ["/ping", "/health", "/version"])
def test_health_and_version_equal_mlflow(
    path: str, arrowsmith: ServerHandle, mlflow_wine: str
) -> None:
    ours = requests.get(f"{arrowsmith.http_url}{path}", timeout=TIMEOUT_S)
    theirs = requests.get(f"{mlflow_wine}{path}", timeout=TIMEOUT_S)
    assert (ours.status_code, ours.text) == (theirs.status_code, theirs.text)
    assert ours.headers["content-type"] == theirs.headers["content-type"]


def test_csv_of_all_rows_equals_mlflow(
    arrowsmith: ServerHandle, mlflow_wine: str, wine_frame: pd.DataFrame
) -> None:
    """The whole data set in one CSV request: the batching path with many rows."""
    buffer = io.StringIO()
    wine_frame.to_csv(buffer, index=False)
    ours = post(f"{arrowsmith.http_url}/invocations", buffer.getvalue(), CSV)
    theirs = post(f"{mlflow_wine}/invocations", buffer.getvalue(), CSV)
    assert_same_predictions(ours, theirs)


def mlflow_answer(model: PyFuncModel, body: str) -> Any:
    """What MLflow's scoring server answers for `body`, computed with its own helpers in
    this process (no third server needed)."""
    parsed = scoring_server._parse_json_data(
        body, model.metadata, model.metadata.get_input_schema()
    )
    output = io.StringIO()
    scoring_server.predictions_to_json(model.predict(parsed.data), output)
    return json.loads(output.getvalue())


def test_text_columns_equal_mlflow(string_server: ServerHandle, string_pyfunc: PyFuncModel) -> None:
    """Text columns travel as BYTES and come back as text records."""
    body = json.dumps({"dataframe_split": {"columns": ["text"], "data": [["héllo"], ["b c"]]}})
    ours = post(f"{string_server.http_url}/invocations", body, JSON)
    assert ours.status_code == 200, ours.text
    assert ours.json() == mlflow_answer(string_pyfunc, body)


@pytest.mark.parametrize("key", ["inputs", "instances"])
def test_tensor_model_equals_mlflow(
    key: str, tensor_server: ServerHandle, tensor_pyfunc: PyFuncModel
) -> None:
    """A tensor signature from `inputs` or `instances` (an ndarray): the native tensor path."""
    images = [[[row * 8 + column for column in range(8)] for row in range(8)]] * 2
    body = json.dumps({key: images})
    ours = post(f"{tensor_server.http_url}/invocations", body, JSON)
    assert ours.status_code == 200, ours.text
    assert ours.json() == mlflow_answer(tensor_pyfunc, body)
