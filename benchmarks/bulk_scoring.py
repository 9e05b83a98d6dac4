"""Bulk scoring: 10 million wine rows (the example model's 11 features, drawn from the
data set with a little noise) scored four ways, one after the other on this machine:

- `arrowsmith score MODEL rows.parquet out.parquet`: a server started for the model, the
  file streamed through Arrow Flight's DoExchange, the answers written to Parquet;
- `arrowsmith score grpc://... rows.parquet out.parquet --model-name wine` against a server
  already running (on core 0, `score` on core 1), `--target-runs` times;
- `mlflow models predict -m MODEL -i rows.csv -o out.json -t csv --env-manager local`;
- the estimator called in-process (`mlflow.sklearn.load_model`, the rows already in memory
  as one float64 array): the bound no server can beat; and read, predict, write from and to
  Parquet in-process, in the same batches `arrowsmith score` sends;
- W2 over gRPC (4,096 rows per ModelInfer, 32 in flight, `arrowsmith bench`), as rows/s;
- with `--spark`, MLflow's `spark_udf` on a local Spark (`local[2]`) from Parquet to Parquet,
  in the environment benchmarks/peers/setup_spark.sh builds.

Wall-clock times include each tool's start (the server's model load for `score`, MLflow's
imports for `mlflow models predict`). Every way scores the same rows; `score`'s and MLflow's
answers are compared on a sample.

    .venv/bin/python benchmarks/bulk_scoring.py [--rows 10000000] [--w2-duration 10]
        [--target-runs 3] [--spark]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq
from routing import example_model, free_port, measure, serve, stop

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
SPARK_PYTHON = HERE / "peers" / ".venv-spark" / "bin" / "python"
WINE_CSV = ROOT / "examples" / "wine" / "winequality-red.csv"
ROW_GROUP = 1_000_000
BATCH_ROWS = 65_536


def write_rows(folder: Path, rows: int) -> tuple[Path, Path]:
    """`rows` wine-like rows as Parquet (row groups of a million) and as CSV."""
    features = pa_csv.read_csv(WINE_CSV, parse_options=pa_csv.ParseOptions(delimiter=";"))
    base = features.drop_columns(["quality"])
    schema = pa.schema([(name, pa.float64()) for name in base.column_names])
    values = np.column_stack([column.to_numpy() for column in base.columns])
    rng = np.random.default_rng(15)
    parquet, csv = folder / "rows.parquet", folder / "rows.csv"
    with pq.ParquetWriter(parquet, schema) as writer, pa_csv.CSVWriter(csv, schema) as csv_writer:
        left = rows
        while left:
            count = min(ROW_GROUP, left)
            picks = values[rng.integers(0, len(values), count)]
            picks = picks * rng.uniform(0.95, 1.05, size=picks.shape)
            table = pa.Table.from_arrays([pa.array(picks[:, i]) for i in range(11)], schema=schema)
            writer.write_table(table)
            csv_writer.write_table(table)
            left -= count
    return parquet, csv


def timed(command: list[str]) -> float:
    started = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - started


def spark(model: Path, parquet: Path, folder: Path) -> float:
    """Wall-clock seconds of spark_udf from Parquet to Parquet, Spark's start included."""
    started = time.perf_counter()
    subprocess.run(
        [str(SPARK_PYTHON), str(HERE / "peers" / "spark_score.py"), str(model), str(parquet),
         str(folder / "spark.parquet")],
        check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    return time.perf_counter() - started


def in_process(model: Path, parquet: Path, folder: Path) -> tuple[float, float]:
    """Seconds for the estimator alone on the rows in memory, and for read + predict +
    write through Parquet in BATCH_ROWS batches."""
    import mlflow.sklearn

    estimator = mlflow.sklearn.load_model(str(model))
    table = pq.read_table(parquet)
    block = np.column_stack([column.to_numpy() for column in table.columns])
    started = time.perf_counter()
    estimator.predict(block)
    alone = time.perf_counter() - started
    del table, block
    started = time.perf_counter()
    source = pq.ParquetFile(parquet, pre_buffer=False)
    schema = pa.schema([("predictions", pa.float64())])
    with pq.ParquetWriter(folder / "in_process.parquet", schema) as writer:
        for batch in source.iter_batches(batch_size=BATCH_ROWS):
            rows = np.column_stack([column.to_numpy() for column in batch.columns])
            answers = pa.array(estimator.predict(rows))
            writer.write_table(pa.Table.from_arrays([answers], schema=schema))
    return alone, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--w2-duration", type=float, default=10.0)
    parser.add_argument("--spark", action="store_true", help="also MLflow's spark_udf")
    parser.add_argument("--target-runs", type=int, default=3)
    args = parser.parse_args()
    if args.spark and not SPARK_PYTHON.exists():
        raise SystemExit("--spark needs benchmarks/peers/setup_spark.sh to have run")
    model = example_model()
    with tempfile.TemporaryDirectory(prefix="bulk-") as name:
        folder = Path(name)
        parquet, csv = write_rows(folder, args.rows)
        python = sys.executable
        score_s = timed(
            [python, "-m", "arrowsmith", "score", str(model), str(parquet),
             str(folder / "score.parquet"), "--quiet"]
        )  # fmt: skip
        mlflow_bin = str(Path(python).parent / "mlflow")
        mlflow_s = timed(
            [mlflow_bin, "models", "predict", "-m", str(model), "-i", str(csv),
             "-o", str(folder / "mlflow.json"), "-t", "csv", "--env-manager", "local"]
        )  # fmt: skip
        spark_s = spark(model, parquet, folder) if args.spark else None
        alone_s, in_process_s = in_process(model, parquet, folder)
        ours = pq.read_table(folder / "score.parquet").column(0).to_numpy()
        theirs = np.asarray(json.loads((folder / "mlflow.json").read_text())["predictions"])
        sample = np.random.default_rng(1).choice(args.rows, 10_000, replace=False)
        np.testing.assert_allclose(ours[sample], theirs[sample], rtol=1e-12)
        flight_port = free_port()
        served = [str(model), "--name", "wine", "--flight-port", str(flight_port)]
        process, port = serve(served, subprocess.DEVNULL)
        try:
            target = [
                "taskset", "-c", "1", python, "-m", "arrowsmith", "score",
                f"grpc://127.0.0.1:{flight_port}", str(parquet), str(folder / "target.parquet"),
                "--model-name", "wine", "--quiet",
            ]  # fmt: skip
            target_s = [timed(target) for _ in range(args.target_runs)]
            level = measure(port, args.w2_duration, folder, rows=4096)
        finally:
            stop(process)
    rows = args.rows
    table = [
        ("`arrowsmith score MODEL` (a server started for it; Flight, Parquet in and out)", score_s),
        (
            "`arrowsmith score grpc://...` against a running server (median of "
            f"{', '.join(f'{t:.2f}' for t in target_s)} s)",
            statistics.median(target_s),
        ),
        ("`mlflow models predict` (CSV in, JSON out)", mlflow_s),
        *([("MLflow `spark_udf`, local[2] (Parquet in and out)", spark_s)] if spark_s else []),
        ("in-process: read, predict, write Parquet (65,536-row batches)", in_process_s),
        ("in-process: the estimator alone, rows in memory", alone_s),
    ]
    print(f"| way ({rows:,} rows) | seconds | rows/s | vs `mlflow models predict` |")
    print("|---|---|---|---|")
    for label, seconds in table:
        print(f"| {label} | {seconds:.2f} | {rows / seconds:,.0f} | {mlflow_s / seconds:.1f}x |")
    w2_rows = level["throughput_rps"] * 4096
    print(f"| W2 over gRPC, 4,096 rows per ModelInfer, 32 in flight | - | {w2_rows:,.0f} | "
          f"{w2_rows / (rows / mlflow_s):.1f}x |")  # fmt: skip


if __name__ == "__main__":
    main()
