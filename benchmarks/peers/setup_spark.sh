#!/usr/bin/env bash
# Builds Spark's environment for benchmarks/bulk_scoring.py --spark in
# benchmarks/peers/.venv-spark (git-ignored), reinstalled only when spark-requirements.txt
# changes. Spark runs on the machine's Java (17 or later).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
venv="${SPARK_VENV:-$here/.venv-spark}"
requirements="$here/spark-requirements.txt"
stamp="$venv/.installed"

command -v java >/dev/null || { echo "Spark needs a Java runtime (17 or later)" >&2; exit 1; }
if [[ -f "$stamp" && "$stamp" -nt "$requirements" ]]; then
    echo "Spark environment up to date: $venv"
else
    "${PYTHON:-python3}" -m venv "$venv"
    "$venv/bin/python" -m pip install -q --upgrade pip
    "$venv/bin/python" -m pip install -q -r "$requirements"
    "$venv/bin/python" -m pip freeze > "$venv/freeze.txt"
    touch "$stamp"
    echo "Spark environment ready: $venv"
fi
