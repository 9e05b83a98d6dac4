"""Draw the swap timeline that tests/e2e/test_swaps_under_load.py records: for each server
(following by polling, by webhook), requests answered per second, p99 latency per second and
the version answering, against the moves of the alias; and print the figures RESULTS.md
quotes.

    ARROWSMITH_SWAP_TIMELINE_DIR=DIR pytest tests/e2e/test_swaps_under_load.py
    python benchmarks/swap_timeline.py DIR --png benchmarks/swap-timeline.png

(`make bench-swap` runs both.)"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
from pathlib import Path

BIN_S = 1.0
SERVERS = ("poll", "webhook")


def read_timeline(path: Path) -> list[tuple[float, float, str, str]]:
    with path.open() as handle:
        return [
            (
                float(r["t_seconds_since_start"]),
                float(r["latency_seconds"]),
                r["status"],
                r["model_version"],
            )
            for r in csv.DictReader(handle)
        ]


def per_bin(
    rows: list[tuple[float, float, str, str]],
) -> tuple[list[float], list[int], list[float], list[float]]:
    """Bin start, answers OK, p99 latency (ms) and the share answered by version 2."""
    bins: dict[int, list[tuple[float, float, str, str]]] = {}
    for row in rows:
        bins.setdefault(int(row[0] // BIN_S), []).append(row)
    starts, oks, p99s, shares = [], [], [], []
    for index in sorted(bins):
        members = bins[index]
        latencies = sorted(r[1] for r in members)
        starts.append(index * BIN_S)
        oks.append(sum(1 for r in members if r[2] == "OK"))
        p99s.append(latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))] * 1000)
        shares.append(sum(1 for r in members if r[3] == "2") / len(members))
    return starts, oks, p99s, shares


def summary(folder: Path) -> str:
    moves = json.loads((folder / "moves.json").read_text())
    lines = [
        "| following by | requests | failed | wrong answers | p99 ms | switch s, median / max "
        "| RSS MB after swap 1 / 20 |",
        "|---|---|---|---|---|---|---|",
    ]
    for label in SERVERS:
        [level] = json.loads((folder / f"bench-{label}.json").read_text())["levels"]
        delays = [float(m[label]) for m in moves]
        lines.append(
            f"| {label} | {level['ok'] + level['errors']} | {level['errors']} | "
            f"{level['wrong_answers']} | {level['p99_ms']:.1f} | "
            f"{statistics.median(delays):.2f} / {max(delays):.2f} | "
            f"{moves[0][f'rss_{label}'] / 1e6:.0f} / {moves[-1][f'rss_{label}'] / 1e6:.0f} |"
        )
    return "\n".join(lines)


def draw(folder: Path, png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    moves = json.loads((folder / "moves.json").read_text())
    figure, axes = plt.subplots(3, 1, figsize=(11, 8), sharex=True)
    for label in SERVERS:
        starts, oks, p99s, shares = per_bin(read_timeline(folder / f"timeline-{label}.csv"))
        axes[0].plot(starts, oks, label=f"following by {label}")
        axes[1].plot(starts, p99s, label=f"following by {label}")
        axes[2].step(starts, shares, where="post", label=f"following by {label}")
    for move in moves:
        for axis in axes:
            axis.axvline(float(move["at"]), color="grey", linewidth=0.5, alpha=0.5)
    axes[0].set_ylabel("answered OK / s")
    axes[1].set_ylabel("p99 latency, ms")
    axes[2].set_ylabel("share answered\nby version 2")
    axes[2].set_xlabel("seconds (grey: the alias moves)")
    axes[0].set_title("champion moved 20 times under 100 requests/s per server: no request failed")
    for axis in axes:
        axis.legend(loc="upper right", fontsize="small")
    figure.tight_layout()
    figure.savefig(png, dpi=100)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path)
    parser.add_argument("--png", type=Path, required=True)
    args = parser.parse_args()
    draw(args.folder, args.png)
    print(summary(args.folder))


if __name__ == "__main__":
    main()
