"""A server's second start of the same model restores it from the snapshot its first start
kept (models/snapshot.py), and answers every path as MLflow does: ModelInfer on the block
call at once, `/invocations` and a `content_type: pd` request through MLflow's own model
object, which loads meanwhile."""

from __future__ import annotations

import pathlib

import grpc
import numpy as np
import requests
import tritonclient.grpc as grpcclient
from support.server import running_server
from support.v2 import column_inputs, columns_request, model_infer, output_array


def test_the_second_start_restores_the_model_and_answers_as_mlflow(
    tmp_path: pathlib.Path, wine_model_dir, wine_frame, wine_pyfunc, server_logs
) -> None:
    folder = str(tmp_path / "snapshots")
    env = {"ARROWSMITH_SNAPSHOT_DIR": folder}
    rows = wine_frame.iloc[:7]
    expected = np.asarray(wine_pyfunc.predict(rows))
    flag = ("--snapshot-dir", folder)
    with running_server(wine_model_dir, *flag, name="wine", log_dir=server_logs) as first:
        assert "kept for the next start" in first.log_text()
    with running_server(wine_model_dir, name="wine", log_dir=server_logs, env=env) as second:
        assert "restored from its snapshot" in second.log_text()
        with grpcclient.InferenceServerClient(second.url) as client:
            answer = client.infer("wine", column_inputs(rows, "FP64")).as_numpy("output-0")
        assert answer is not None and answer.tobytes() == expected.tobytes()
        metadata = requests.get(f"{second.http_url}/v2/models/wine", timeout=30).json()
        assert metadata["properties"]["predict_path"] == "estimator-block"
        request = columns_request("wine", rows, "FP64", typed=False)
        request.parameters["content_type"].string_param = "pd"
        with grpc.insecure_channel(second.url) as channel:
            as_frame = model_infer(channel)(request, timeout=30)
        np.testing.assert_array_equal(output_array(as_frame, "output-0"), expected)
        body = {"dataframe_split": rows.to_dict(orient="split")}
        invoked = requests.post(f"{second.http_url}/invocations", json=body, timeout=30)
        assert invoked.status_code == 200, invoked.text
        np.testing.assert_allclose(invoked.json()["predictions"], expected, rtol=1e-12)
