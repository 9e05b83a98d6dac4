"""MLServer's settings.json and model-settings.json for the wine model, one folder per config.

compare.py writes them with the free ports it picked (for W4 serving the digits model as
`digits`); run as a script to write them with MLServer's default ports, for `mlserver start
FOLDER` by hand. Every config turns `debug` off (on by default, it logs every call) and
keeps MLServer's metrics on, as a production deployment would; the configs differ only in
adaptive batching and where inference runs.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent.parent
WINE_MODEL = ROOT / "examples" / "wine" / "model"
MODEL_NAME = "wine"

#: name -> (server-wide settings, model settings) beyond ports and the model's location.
CONFIGS: dict[str, tuple[dict[str, object], dict[str, object]]] = {
    # MLServer's defaults: no batching, inference in one worker process.
    "mlserver": ({}, {}),
    # Adaptive batching: up to 32 requests, waiting at most 5 ms for them.
    "mlserver-batch32": ({}, {"max_batch_size": 32, "max_batch_time": 0.005}),
    # No worker process: inference on the server's own event loop (fastest in §7 on W2).
    "mlserver-pw0": ({"parallel_workers": 0}, {}),
}
DEFAULT_PORTS = {"http_port": 8080, "grpc_port": 8081, "metrics_port": 8082}


def write(
    folder: Path,
    config: str,
    ports: dict[str, int],
    model: Path = WINE_MODEL,
    name: str = MODEL_NAME,
) -> Path:
    """Writes `folder`/settings.json and `folder`/`name`/model-settings.json, serving `model`
    as `name`; returns `folder`."""
    server, model_settings = CONFIGS[config]
    settings = {
        "host": "127.0.0.1",
        "debug": False,
        "metrics_dir": str(folder / ".metrics"),
        "environments_dir": str(folder / ".envs"),
        **ports,
        **server,
    }
    served = {
        "name": name,
        "implementation": "mlserver_mlflow.MLflowRuntime",
        "parameters": {"uri": str(model.resolve())},
        **model_settings,
    }
    (folder / name).mkdir(parents=True, exist_ok=True)
    (folder / "settings.json").write_text(json.dumps(settings, indent=2) + "\n")
    (folder / name / "model-settings.json").write_text(json.dumps(served, indent=2) + "\n")
    return folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="one sub-folder per config")
    parser.add_argument("--model", type=Path, default=WINE_MODEL)
    args = parser.parse_args()
    for config in CONFIGS:
        print(write(args.out / config, config, DEFAULT_PORTS, args.model))


if __name__ == "__main__":
    main()
