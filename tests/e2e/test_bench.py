"""`arrowsmith bench` against a real server: the compiled load generator runs, every
answer it gets is checked, and the JSON and PNG reports are written."""

import json
import pathlib
import subprocess
import sys

from support.server import ServerHandle

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def bench(server: ServerHandle, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "arrowsmith", "bench", "--target", server.url, *args],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_generated_requests_from_metadata(wine_server: ServerHandle, tmp_path: pathlib.Path):
    report, plot = tmp_path / "bench.json", tmp_path / "bench.png"
    done = bench(
        wine_server,
        *("--model", "wine", "--rows", "3", "--concurrency", "1,4"),
        *("--duration", "1", "--warmup", "0.2", "--json", str(report), "--plot", str(plot)),
    )
    assert done.returncode == 0, done.stderr
    levels = json.loads(report.read_text())["levels"]
    assert [level["level"] for level in levels] == [1, 4]
    for level in levels:
        assert level["ok"] > 0
        assert level["errors"] == 0
        assert level["p50_ms"] <= level["p99_ms"] <= level["max_ms"]
    assert plot.read_bytes().startswith(PNG_SIGNATURE)
    assert "p99" in done.stdout


def test_request_from_a_v2_json_body(wine_server: ServerHandle, tmp_path: pathlib.Path, wine_frame):
    body = {
        "inputs": [
            {
                "name": name,
                "datatype": "FP64",
                "shape": [2, 1],
                "data": wine_frame[name][:2].tolist(),
            }
            for name in wine_frame.columns
        ]
    }
    request = tmp_path / "request.json"
    request.write_text(json.dumps(body))
    report = tmp_path / "bench.json"
    done = bench(
        wine_server,
        *("--model", "wine", "--request", str(request), "--rate", "200"),
        *("--duration", "1", "--warmup", "0.2", "--json", str(report)),
    )
    assert done.returncode == 0, done.stderr
    (level,) = json.loads(report.read_text())["levels"]
    assert (level["mode"], level["errors"]) == ("open", 0)
    assert level["ok"] > 100


def test_unknown_model_is_a_clear_error(wine_server: ServerHandle):
    done = bench(wine_server, "--model", "nope", "--duration", "1")
    assert done.returncode == 2
    assert "model 'nope' is not served here" in done.stderr


def test_refused_requests_are_counted_by_status(wine_server: ServerHandle, tmp_path: pathlib.Path):
    """Requests the server refuses (here: most wine columns missing) are reported as non-OK
    statuses (INVALID_ARGUMENT is 3), never as throughput, and the run exits non-zero."""
    body = {"inputs": [{"name": "alcohol", "datatype": "INT64", "shape": [1, 1], "data": [9]}]}
    request = tmp_path / "bad.json"
    request.write_text(json.dumps(body))
    report = tmp_path / "bench.json"
    done = bench(
        wine_server,
        *("--model", "wine", "--request", str(request), "--concurrency", "2"),
        *("--requests", "50", "--duration", "5", "--warmup", "0", "--json", str(report)),
    )
    assert done.returncode == 1
    (level,) = json.loads(report.read_text())["levels"]
    assert level["ok"] == 0
    assert level["statuses"] == {"3": level["errors"]}


def test_http_body_sent_as_it_is(wine_server: ServerHandle, tmp_path: pathlib.Path, wine_frame):
    """`--http /invocations`: MLflow's `dataframe_split` body goes to the HTTP front as it is;
    every answer is a 200."""
    split = {"dataframe_split": json.loads(wine_frame.iloc[:1].to_json(orient="split"))}
    request = tmp_path / "split.json"
    request.write_text(json.dumps(split))
    report = tmp_path / "bench.json"
    done = subprocess.run(
        [
            *(sys.executable, "-m", "arrowsmith", "bench"),
            *("--target", f"127.0.0.1:{wine_server.http_port}"),
            *("--http", "/invocations", "--request", str(request), "--concurrency", "4"),
            *("--duration", "1", "--warmup", "0.2", "--json", str(report)),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    document = json.loads(report.read_text())
    (level,) = document["levels"]
    assert level["ok"] > 0
    assert level["errors"] == 0
    assert document["protocol"] == "http"
