#!/usr/bin/env bash
# Builds the peers' environment for benchmarks/compare.py: MLServer 1.7.1 with its MLflow
# runtime in benchmarks/peers/.venv-mlserver (git-ignored), reinstalled only when
# mlserver-requirements.txt changes. Then trains the wine model if it is missing and writes
# MLServer's settings for it (default ports) under benchmarks/results/mlserver/, for a run by
# hand: `PATH=benchmarks/peers/.venv-mlserver/bin:$PATH mlserver start FOLDER`.
# `mlflow models serve` runs from the project's .venv and needs nothing here.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
venv="${MLSERVER_VENV:-$here/.venv-mlserver}"
requirements="$here/mlserver-requirements.txt"
stamp="$venv/.installed"
project_python="${PROJECT_PYTHON:-$root/.venv/bin/python}"

if [[ -f "$stamp" && "$stamp" -nt "$requirements" ]]; then
    echo "MLServer environment up to date: $venv"
else
    "${PYTHON:-python3}" -m venv "$venv"
    "$venv/bin/python" -m pip install -q --upgrade pip
    "$venv/bin/python" -m pip install -q -r "$requirements"
    "$venv/bin/python" -m pip check
    "$venv/bin/python" -m pip freeze > "$venv/freeze.txt"
    touch "$stamp"
    echo "MLServer environment ready: $venv ($("$venv/bin/mlserver" --version))"
fi

if [[ ! -f "$root/examples/wine/model/MLmodel" ]]; then
    "$project_python" "$root/examples/wine/train.py" --output "$root/examples/wine/model"
fi
"$project_python" "$here/mlserver_settings.py" --out "$root/benchmarks/results/mlserver"
