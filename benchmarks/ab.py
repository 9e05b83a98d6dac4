"""Arrowsmith against an earlier build of itself, on the same host, in one run: hosts differ
too much for figures taken on different days to show a change (the same code has measured
2.7x apart). The earlier build is an unpacked wheel (`--baseline DIR`, the `arrowsmith`
package with its native module) served from the same virtualenv through PYTHONPATH; both
servers get W1, W2 and W4 as `compare.py` drives them (server on core 0, the compiled load
generator on core 1), in alternating order, and the report gives current / baseline.

    git worktree add /tmp/base REV && (cd /tmp/base && maturin build --release -o /tmp/wheel)
    python -m zipfile -e /tmp/wheel/arrowsmith-*.whl benchmarks/results/baseline
    .venv/bin/python benchmarks/ab.py --baseline benchmarks/results/baseline
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

from compare import (
    DIGITS,
    HEADER,
    RESULTS,
    WINE,
    Session,
    digits_model,
    expected_predictions,
    free_port,
    measure_grpc,
    row,
    wine_model,
)


def sessions(model: Path, digits: Path, baseline: Path) -> list[Session]:
    """The current build and the baseline, each once per model."""
    result = []
    for server, pythonpath in (("arrowsmith", None), ("baseline", baseline)):
        for path, name, workloads in ((model, "wine", WINE), (digits, DIGITS, ("W4",))):
            port = free_port()
            command = [sys.executable, "-m", "arrowsmith", "serve", str(path), "--name", name]
            command += ["--workers", "1", "--http-port", "0", "--metrics-port", "0"]
            command += ["--flight-port", "0"]
            command += ["--grpc-port", str(port), "--log-level", "WARNING"]
            result.append(Session(server, workloads, tuple(command), port, pythonpath=pythonpath))
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", type=Path, required=True, help="an unpacked earlier wheel")
    parser.add_argument("--repeat", type=int, default=3, help="runs of every (server, workload)")
    parser.add_argument("--duration", type=float, default=4.0, help="measured seconds per level")
    parser.add_argument("--warmup", type=float, default=1.0, help="unmeasured seconds first")
    args = parser.parse_args()
    if not (args.baseline / "arrowsmith" / "__init__.py").exists():
        raise SystemExit(f"{args.baseline} holds no arrowsmith package")
    work = RESULTS / "compare-logs"
    work.mkdir(parents=True, exist_ok=True)
    (RESULTS / "bodies").mkdir(exist_ok=True)
    model, digits = wine_model(work), digits_model(work)
    args.expected = expected_predictions(model, digits)
    plan = sessions(model, digits, args.baseline.resolve())
    print(HEADER)
    runs = []
    for repetition in range(1, args.repeat + 1):
        runs += measure_grpc(args, repetition, plan if repetition % 2 else plan[::-1])
    print("\nworkload  current req/s  baseline req/s  current / baseline")
    for workload in ("W1", "W2", "W4"):
        mean = {
            server: statistics.mean(
                r.rps for r in runs if (r.server, r.workload) == (server, workload)
            )
            for server in ("arrowsmith", "baseline")
        }
        ratio = mean["arrowsmith"] / mean["baseline"]
        print(
            f"{workload:<9} {mean['arrowsmith']:>13,.0f} {mean['baseline']:>15,.0f} {ratio:>19.2f}"
        )
    for run in runs:
        print(row(run))


if __name__ == "__main__":
    main()
