"""`arrowsmith score MODEL_URI_OR_TARGET INPUT OUTPUT`: files scored through Arrow Flight,
with MLflow's answers, streaming, so that memory stays flat for a file of 10 million rows.
"""

import contextlib
import dataclasses
import pathlib
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq
import pytest
from mlflow.pyfunc import PyFuncModel
from support.model_builders import WINE_MODEL_NAME
from support.processes import children
from support.server import StartServer, free_port

SCORE_TIMEOUT_S = 600.0
#: The big file: 10 million rows of the 11 wine features, in row groups of a million.
BIG_ROWS = 10_000_000
ROW_GROUP = 1_000_000
#: The rows of the big file checked against MLflow.
SAMPLE = 2_000
POLL_S = 0.1


def score(*args: str, timeout: float = SCORE_TIMEOUT_S) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "arrowsmith", "score", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)


def wine_features(wine_csv: pathlib.Path) -> pa.Table:
    table = pa_csv.read_csv(wine_csv, parse_options=pa_csv.ParseOptions(delimiter=";"))
    return table.drop_columns(["quality"])


def test_the_wine_csv_scored_into_parquet_and_csv(
    wine_model_dir: pathlib.Path,
    wine_csv: pathlib.Path,
    wine_pyfunc: PyFuncModel,
    tmp_path: pathlib.Path,
) -> None:
    """A model folder: a server is started for it, every row of the semicolon CSV is scored
    in order, as MLflow scores the same frame, into Parquet and into CSV."""
    features = wine_features(wine_csv)
    source = tmp_path / "wine.csv"
    pa_csv.write_csv(features, source, pa_csv.WriteOptions(delimiter=";"))
    expected = np.asarray(wine_pyfunc.predict(features.to_pandas()))
    for output in (tmp_path / "scores.parquet", tmp_path / "scores.csv"):
        done = score(
            str(wine_model_dir), str(source), str(output), "--delimiter", ";", "--batch-rows", "300"
        )
        assert done.returncode == 0, done.stderr
        assert f"scored {len(expected):,} rows" in done.stderr
        if output.suffix == ".parquet":
            answers = pq.read_table(output)
        else:
            answers = pa_csv.read_csv(output, parse_options=pa_csv.ParseOptions(delimiter=";"))
        assert answers.num_rows == len(expected)
        np.testing.assert_allclose(answers.column(0).to_numpy(), expected, rtol=1e-12)


def test_a_running_server_as_target_and_its_refusal(
    start_server: StartServer,
    wine_model_dir: pathlib.Path,
    wine_csv: pathlib.Path,
    wine_pyfunc: PyFuncModel,
    tmp_path: pathlib.Path,
) -> None:
    """`grpc://host:port` with --model-name scores through a running server; a file the
    model refuses (a column missing) exits 1 with the server's message, naming the column."""
    port = free_port()
    start_server(wine_model_dir, "--flight-port", str(port), name=WINE_MODEL_NAME)
    target = f"grpc://127.0.0.1:{port}"
    features = wine_features(wine_csv).slice(0, 100)
    source = tmp_path / "wine.arrow"
    with pa.OSFile(str(source), "wb") as sink, pa.ipc.new_file(sink, features.schema) as writer:
        writer.write_table(features)
    output = tmp_path / "scores.parquet"
    done = score(target, str(source), str(output), "--model-name", WINE_MODEL_NAME, "--quiet")
    assert done.returncode == 0, done.stderr
    expected = np.asarray(wine_pyfunc.predict(features.to_pandas()))
    np.testing.assert_allclose(pq.read_table(output).column(0).to_numpy(), expected, rtol=1e-12)

    missing = tmp_path / "missing.parquet"
    pq.write_table(features.drop_columns(["alcohol"]), missing)
    done = score(
        target, str(missing), str(tmp_path / "no.parquet"), "--model-name", WINE_MODEL_NAME
    )
    assert done.returncode == 1, done.stderr
    assert "alcohol" in done.stderr

    done = score(target, str(missing), str(tmp_path / "no.parquet"))
    assert done.returncode == 2
    assert "--model-name" in done.stderr


def write_big_parquet(path: pathlib.Path, frame: pd.DataFrame) -> None:
    """BIG_ROWS rows drawn from the wine rows with a little noise, a row group at a time (the
    test itself never holds the whole file)."""
    rng = np.random.default_rng(15)
    base = frame.to_numpy()
    schema = pa.schema([(str(name), pa.float64()) for name in frame.columns])
    with pq.ParquetWriter(path, schema) as writer:
        for _ in range(BIG_ROWS // ROW_GROUP):
            picks = base[rng.integers(0, len(base), ROW_GROUP)]
            values = picks * rng.uniform(0.95, 1.05, size=picks.shape)
            columns = [pa.array(values[:, i]) for i in range(values.shape[1])]
            writer.write_table(pa.Table.from_arrays(columns, schema=schema))


def rss_bytes(pid: int) -> int:
    """Resident memory of the process now (0 once gone)."""
    with contextlib.suppress(OSError):
        for line in pathlib.Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


@dataclasses.dataclass
class Peaks:
    """The highest RSS seen of the scoring process and of the server it started."""

    client: int = 0
    server: int = 0


@contextlib.contextmanager
def watching(process: subprocess.Popen[str]) -> Iterator[Peaks]:
    peaks = Peaks()
    stop = threading.Event()

    def watch() -> None:
        while not stop.is_set():
            peaks.client = max(peaks.client, rss_bytes(process.pid))
            for child in children(process.pid):
                peaks.server = max(peaks.server, rss_bytes(child))
            time.sleep(POLL_S)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        yield peaks
    finally:
        stop.set()
        watcher.join()


@pytest.mark.slow
def test_ten_million_rows_stream_with_flat_memory(
    wine_model_dir: pathlib.Path,
    wine_frame: pd.DataFrame,
    wine_pyfunc: PyFuncModel,
    tmp_path: pathlib.Path,
) -> None:
    """The 10-million-row file's features take 880 MB in memory; neither the scoring process
    nor its server comes near that (holding the input whole would pass it, with its copies
    well past), every row is answered, and a sample of them equals MLflow's answers. The
    bound leaves room for the server's resting size with MLflow loaded (~270 MB, loaded
    beside the first batches when the model starts from its snapshot) and the batches in
    flight."""
    source = tmp_path / "big.parquet"
    write_big_parquet(source, wine_frame)
    output = tmp_path / "scores.parquet"
    command = [sys.executable, "-m", "arrowsmith", "score", str(wine_model_dir), str(source)]
    process = subprocess.Popen(
        [*command, str(output)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    with watching(process) as peaks:
        try:
            _, stderr = process.communicate(timeout=SCORE_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            process.kill()
            _, stderr = process.communicate()
            pytest.fail(f"scoring took over {SCORE_TIMEOUT_S} s:\n{stderr[-3000:]}")
    assert process.returncode == 0, stderr[-6000:]
    in_memory = BIG_ROWS * len(wine_frame.columns) * 8
    assert peaks.client < in_memory * 3 / 4, (peaks, stderr[-2000:])
    assert peaks.server < in_memory * 3 / 4, (peaks, stderr[-2000:])
    scored = pq.ParquetFile(output)
    assert scored.metadata.num_rows == BIG_ROWS
    answers = pq.read_table(output).column(0).to_numpy()
    rng = np.random.default_rng(3)
    source_file = pq.ParquetFile(source)
    for group in (0, BIG_ROWS // ROW_GROUP - 1):
        rows = np.sort(rng.choice(ROW_GROUP, SAMPLE, replace=False))
        features = source_file.read_row_group(group).take(rows).to_pandas()
        expected = np.asarray(wine_pyfunc.predict(features))
        got = answers[group * ROW_GROUP + rows]
        np.testing.assert_allclose(got, expected, rtol=1e-12)


def test_an_input_unreadable_midway_fails_the_run_without_hanging(
    start_server: StartServer,
    wine_model_dir: pathlib.Path,
    wine_frame: pd.DataFrame,
    tmp_path: pathlib.Path,
) -> None:
    """A CSV whose rows past its first block hold text in a number column: the rows read
    before are scored, then the run exits 1 with the reader's error (it neither hangs nor
    says it scored everything)."""
    port = free_port()
    start_server(wine_model_dir, "--flight-port", str(port), name=WINE_MODEL_NAME)
    rows = pd.concat([wine_frame] * 300, ignore_index=True)  # ~480,000 rows, several blocks
    source = tmp_path / "late-error.csv"
    rows.to_csv(source, index=False)
    with source.open("a") as csv:
        csv.write(",".join(["not-a-number"] * len(rows.columns)) + "\n")
    target = f"grpc://127.0.0.1:{port}"
    done = score(
        target, str(source), str(tmp_path / "out.csv"), "--model-name", WINE_MODEL_NAME,
        timeout=120,
    )  # fmt: skip
    assert done.returncode == 1, done.stderr
    assert "not-a-number" in done.stderr, done.stderr
