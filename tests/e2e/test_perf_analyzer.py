"""Triton's perf_analyzer, unchanged, against a real server over gRPC and HTTP.

perf_analyzer reads ServerMetadata, ModelMetadata and ModelConfig (the batch dimension it
puts in front of `dims` when `max_batch_size` > 0), then sends generated requests and
reports the throughput. The binary is the one tritonclient 2.51.0's wheel ships (newer ones
need glibc 2.38), installed by `make perf-analyzer` into .venv/perf-analyzer with the CUDA
runtime library it links against (no GPU is used: it only loads the library).
"""

import csv
import os
import pathlib
import re
import subprocess
import sys

import pytest
from support.model_builders import WINE_MODEL_NAME
from support.server import ServerHandle

PERF_ANALYZER_HOME = pathlib.Path(sys.prefix) / "perf-analyzer"
PERF_ANALYZER = PERF_ANALYZER_HOME / "bin" / "perf_analyzer"
CUDA_RUNTIME_LIB = PERF_ANALYZER_HOME / "nvidia" / "cuda_runtime" / "lib"
TIMEOUT_S = 120

#: The summary perf_analyzer prints last, one line per concurrency level.
SUMMARY_LINE = re.compile(
    r"^Concurrency: (\d+), throughput: ([\d.]+) infer/sec, latency (\d+) usec$", re.MULTILINE
)


def perf_analyzer(
    server: ServerHandle, report: pathlib.Path, *args: str, protocol: str = "grpc"
) -> dict[int, float]:
    """Run perf_analyzer on the wine model, check it succeeded, and return its throughput
    (inferences per second) for each concurrency level, after checking that the summary
    lines and the CSV report agree on the levels measured.

    Half-second windows keep the run to a few seconds; the generous stability threshold
    stops a busy 2-core machine from failing the run as "unstable" (this test checks that
    perf_analyzer works with the server, not how steady the machine is)."""
    if not PERF_ANALYZER.is_file():
        pytest.fail(f"{PERF_ANALYZER} is missing: run `make perf-analyzer`")
    library_path = [str(CUDA_RUNTIME_LIB), os.environ.get("LD_LIBRARY_PATH", "")]
    done = subprocess.run(
        [
            str(PERF_ANALYZER),
            *("-m", WINE_MODEL_NAME, "-i", protocol),
            *("-u", server.url if protocol == "grpc" else f"127.0.0.1:{server.http_port}"),
            *("--measurement-interval", "500", "--stability-percentage", "1000"),
            *("-f", str(report), *args),
        ],
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
        env={**os.environ, "LD_LIBRARY_PATH": os.pathsep.join(filter(None, library_path))},
    )
    assert done.returncode == 0, f"stdout:\n{done.stdout}\nstderr:\n{done.stderr}"
    summary = {int(level): float(rate) for level, rate, _ in SUMMARY_LINE.findall(done.stdout)}
    with report.open(newline="") as rows:
        reported = {
            int(row["Concurrency"]): float(row["Inferences/Second"]) for row in csv.DictReader(rows)
        }
    assert sorted(reported) == sorted(summary), done.stdout
    return summary


def test_perf_analyzer_measures_the_wine_model(
    wine_server: ServerHandle, tmp_path: pathlib.Path
) -> None:
    """Synchronous requests of one row at concurrency 1 and 2: exit 0, nonzero throughput."""
    throughput = perf_analyzer(wine_server, tmp_path / "sync.csv", "--concurrency-range", "1:2")
    assert list(throughput) == [1, 2]
    assert all(rate > 0 for rate in throughput.values()), throughput


def test_perf_analyzer_batches_of_four_async(
    wine_server: ServerHandle, tmp_path: pathlib.Path
) -> None:
    """`-b 4` makes perf_analyzer send [4, 1] tensors, the batch dimension put back in front
    of the config's dims [1]; asynchronous calls go through the same service."""
    throughput = perf_analyzer(
        wine_server, tmp_path / "batch.csv", "-b", "4", "--async", "--concurrency-range", "2"
    )
    assert list(throughput) == [2]
    assert throughput[2] > 0


def test_perf_analyzer_over_http(wine_server: ServerHandle, tmp_path: pathlib.Path) -> None:
    """Over V2 REST it reads the model's config from `/v2/models/{name}/config`."""
    throughput = perf_analyzer(
        wine_server, tmp_path / "http.csv", "--concurrency-range", "1", protocol="http"
    )
    assert list(throughput) == [1]
    assert throughput[1] > 0
