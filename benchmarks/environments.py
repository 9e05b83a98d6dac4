"""Model environments: what serving the example wine model in its own environment costs.

1. Cold build, time to first answer: seconds from process start until the first POST
   /invocations (`dataframe_split`, one wine row) answers 200, for

   - `arrowsmith serve MODEL --env-manager uv --env-cache <fresh dir> --workers 1`, and
   - `mlflow models serve -m MODEL --env-manager virtualenv -w 1` with MLFLOW_ENV_ROOT at a
     fresh dir (no `--no-conda`: it means `--env-manager local`). MLflow 3.17.2's virtualenv
     manager asks pyenv for the model's Python (`pyenv install --skip-existing 3.11.7`, so
     pyenv must be on PATH and an installed version is not built again), makes the
     environment with that interpreter's `-m venv` and installs with its pip.

   Both build from the model's python_env.yaml and requirements.txt; each builds once, not
   pinned (a build uses every core it may). By default uv's and pip's package caches are
   used as they are (the report gives their sizes before the builds); `--cold-cache` points
   UV_CACHE_DIR and PIP_CACHE_DIR at fresh directories, one pair per server, so both
   download every package.
2. Warm start to ServerReady: then `--runs` starts each of `--env-manager uv` on the same,
   now built, cache and `--env-manager local` (the server's own environment), the server
   pinned to core 0, seconds from process start to gRPC ServerReady true.

The servers run with the caller's environment as it is (a model environment's workers write
the bytecode of what they import at their first start, PYTHONDONTWRITEBYTECODE or not: the
supervisor does not pass it on to them). Every server
runs in its own process group, stopped with it (and any descendant that left it) on success,
error or Ctrl-C; the temporary directories are removed at the end.

    .venv/bin/python benchmarks/environments.py [--runs 5] [--cold-cache]
        [--json FILE]
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import http.client
import json
import os
import platform
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
from floors import cpu_model
from http_compare import free_port, stop_group, wine_model, write_bodies
from tritonclient.grpc import service_pb2 as pb

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
SERVER_CORE = "0"
READY_TIMEOUT_S = 120.0
POLL_S = 0.01
RECONNECT_OPTIONS = [
    ("grpc.initial_reconnect_backoff_ms", 10),
    ("grpc.min_reconnect_backoff_ms", 10),
    ("grpc.max_reconnect_backoff_ms", 10),
]


def start_time(pid: int) -> str | None:
    """When a process started (clock ticks after boot), None once it is gone: a process
    id and its start time name one process, even if the id is used again later."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text[text.rindex(")") + 2 :].split()[19]


def descendants(pid: int) -> set[int]:
    """Every live process below `pid`, from /proc."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError):
            text = stat.read_text()
            parent = int(text[text.rindex(")") + 2 :].split()[1])
            children.setdefault(parent, []).append(int(stat.parent.name))
    found: set[int] = set()
    todo = [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def argv0s(pids: set[int]) -> list[str]:
    """The program each process was started as (its argv[0])."""
    names = []
    for pid in pids:
        with contextlib.suppress(OSError):
            names.append(Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode())
    return names


@contextlib.contextmanager
def started(
    command: list[str], env: dict[str, str], log: Path
) -> Iterator[tuple[subprocess.Popen[bytes], float]]:
    """A server in its own process group and the monotonic time it was started at; on the
    way out its group gets SIGTERM (SIGKILL after 30 s), then any descendant that left the
    group SIGKILL."""
    with log.open("wb") as out:
        began = time.monotonic()
        process = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
    try:
        yield process, began
    finally:
        below = {pid: start_time(pid) for pid in descendants(process.pid)}
        stop_group(process)
        for pid, began_at in below.items():
            if began_at is not None and start_time(pid) == began_at:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)


def log_tail(log: Path, lines: int = 40) -> str:
    text = log.read_text(errors="replace").splitlines()
    return "\n".join(f"    {line}" for line in text[-lines:])


def first_answer(
    url: str, body: bytes, process: subprocess.Popen[bytes], began: float, timeout: float
) -> tuple[float, Any]:
    """Seconds from `began` until a POST of `body` to `url` answers 200, and the answer's
    predictions."""
    request = urllib.request.Request(url, body, {"Content-Type": "application/json"})
    while time.monotonic() - began < timeout:
        if process.poll() is not None:
            raise RuntimeError(f"the server exited ({process.returncode}) before it answered")
        with (
            contextlib.suppress(OSError, http.client.HTTPException),
            urllib.request.urlopen(request, timeout=10) as answer,
        ):
            if answer.status == 200:
                seconds = time.monotonic() - began
                return seconds, json.load(answer).get("predictions")
        time.sleep(POLL_S)
    raise RuntimeError(f"no answer from {url} within {timeout:.0f} s")


def seconds_to_ready(port: int, process: subprocess.Popen[bytes], began: float) -> float:
    """Seconds from `began` until gRPC ServerReady answers true (polled as startup.py does,
    but reconnecting every 10 ms: with its default backoff a channel refused for a while
    retries only seconds apart, late by that much when the port opens late, as it does when
    the environment's worker must load the model before the server listens)."""
    with grpc.insecure_channel(f"127.0.0.1:{port}", options=RECONNECT_OPTIONS) as channel:
        ready = channel.unary_unary(
            "/inference.GRPCInferenceService/ServerReady",
            request_serializer=pb.ServerReadyRequest.SerializeToString,
            response_deserializer=pb.ServerReadyResponse.FromString,
        )
        while time.monotonic() - began < READY_TIMEOUT_S:
            if process.poll() is not None:
                raise RuntimeError(f"the server exited ({process.returncode}) before ready")
            try:
                if ready(pb.ServerReadyRequest(), timeout=0.5).ready:
                    return time.monotonic() - began
            except grpc.RpcError:
                pass
            time.sleep(POLL_S)
    raise RuntimeError(f"the server was not ready within {READY_TIMEOUT_S:.0f} s")


def arrowsmith_command(
    model: Path, env_manager: str, env_cache: Path | None, grpc_port: int, http_port: int
) -> list[str]:
    command = [sys.executable, "-m", "arrowsmith", "serve", str(model), "--name", "wine"]
    command += ["--env-manager", env_manager]
    if env_cache is not None:
        command += ["--env-cache", str(env_cache)]
    command += ["--workers", "1", "--grpc-port", str(grpc_port), "--http-port", str(http_port)]
    return [*command, "--metrics-port", "0", "--flight-port", "0"]


def mlflow_command(model: Path, port: int) -> list[str]:
    command = [str(BIN / "mlflow"), "models", "serve", "-m", str(model)]
    return [*command, "--env-manager", "virtualenv", "-w", "1", "-h", "127.0.0.1", "-p", str(port)]


def base_env() -> dict[str, str]:
    """This environment with the venv's bin first on PATH (mlflow, uv) and pyenv's bin kept
    (or added, from PYENV_ROOT or ~/.pyenv, when it is not on PATH)."""
    path = f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"
    if shutil.which("pyenv", path=path) is None:
        root = Path(os.environ.get("PYENV_ROOT") or Path.home() / ".pyenv")
        path += f"{os.pathsep}{root / 'bin'}"
    if shutil.which("pyenv", path=path) is None:
        raise SystemExit("MLflow's virtualenv manager needs pyenv, and none is on PATH")
    return {**os.environ, "PATH": path}


def cache_dir(env: dict[str, str], tool: str) -> Path:
    """Where uv or pip keeps its package cache under `env`."""
    command = [str(BIN / "uv"), "cache", "dir"] if tool == "uv" else [
        sys.executable, "-m", "pip", "cache", "dir"
    ]  # fmt: skip
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=True)
    return Path(done.stdout.strip())


def size_mb(path: Path) -> float:
    if not path.exists():
        return 0.0
    done = subprocess.run(["du", "-sb", str(path)], capture_output=True, text=True, check=True)
    return int(done.stdout.split()[0]) / 1e6


def cache_state(env: dict[str, str]) -> dict[str, float]:
    return {f"{tool} cache MB": round(size_mb(cache_dir(env, tool)), 1) for tool in ("uv", "pip")}


def cold_arrowsmith(
    model: Path, env: dict[str, str], env_cache: Path, body: bytes, work: Path, timeout: float
) -> tuple[float, Any]:
    http, grpc_port = free_port(), free_port()
    log = work / "arrowsmith-cold.log"
    command = arrowsmith_command(model, "uv", env_cache, grpc_port, http)
    try:
        with started(command, env, log) as (process, began):
            seconds, predictions = first_answer(
                f"http://127.0.0.1:{http}/invocations", body, process, began, timeout
            )
            check_interpreter(process.pid, env_cache)
    except RuntimeError as error:
        raise RuntimeError(f"arrowsmith, cold: {error}; its log ends:\n{log_tail(log)}") from None
    return seconds, predictions


def cold_mlflow(
    model: Path, env: dict[str, str], body: bytes, work: Path, timeout: float
) -> tuple[float, Any]:
    port = free_port()
    log = work / "mlflow-cold.log"
    try:
        with started(mlflow_command(model, port), env, log) as (process, began):
            return first_answer(
                f"http://127.0.0.1:{port}/invocations", body, process, began, timeout
            )
    except RuntimeError as error:
        raise RuntimeError(f"mlflow, cold: {error}; its log ends:\n{log_tail(log)}") from None


def check_interpreter(pid: int, env_cache: Path) -> None:
    """Warns unless some process of the server runs an interpreter from `env_cache`."""
    programs = argv0s(descendants(pid) | {pid})
    if not any(Path(p).is_relative_to(env_cache) for p in programs if p.startswith("/")):
        print(f"warning: no process of the server runs from the env cache: {programs}")


def environments_in(env_cache: Path) -> list[str]:
    """The environment folders of an env cache (not its wheels nor folders being built)."""
    return sorted(
        entry.name
        for entry in env_cache.iterdir()
        if entry.is_dir() and entry.name != "wheels" and not entry.name.startswith(".")
    )


def warm_start(
    model: Path, env: dict[str, str], env_manager: str, env_cache: Path | None, work: Path, run: int
) -> float:
    grpc_port = free_port()
    log = work / f"arrowsmith-warm-{env_manager}-{run}.log"
    command = arrowsmith_command(model, env_manager, env_cache, grpc_port, 0)
    built = environments_in(env_cache) if env_cache is not None else []
    try:
        with started(["taskset", "-c", SERVER_CORE, *command], env, log) as (process, began):
            seconds = seconds_to_ready(grpc_port, process, began)
            if env_cache is not None:
                check_interpreter(process.pid, env_cache)
    except RuntimeError as error:
        raise RuntimeError(
            f"arrowsmith, warm, {env_manager}: {error}; its log ends:\n{log_tail(log)}"
        ) from None
    if env_cache is not None and environments_in(env_cache) != built:
        # Arrowsmith's own files are part of an environment's key: changed during the run,
        # they make this start build anew, and its figure is no warm start.
        raise RuntimeError(
            f"a warm start built another environment ({environments_in(env_cache)}, was "
            f"{built}): did Arrowsmith's files change during the run?"
        )
    return seconds


def version(command: list[str]) -> str:
    try:
        done = subprocess.run(command, capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        return "?"
    return done.stdout.strip().splitlines()[-1]


def report_markdown(result: dict[str, Any]) -> str:
    cold, warm = result["cold"], result["warm"]
    caches = result["package caches"]
    before = cold["package caches before"]
    state = (
        "fresh, empty uv and pip caches for each server (everything downloaded)"
        if caches == "fresh"
        else f"uv's and pip's caches as found (uv {before['uv cache MB']:.0f} MB, "
        f"pip {before['pip cache MB']:.0f} MB)"
    )
    lines = [
        f"Cold build to first /invocations answer; package caches: {state}.",
        "",
        "| server | seconds |",
        "|---|---:|",
        f"| `arrowsmith serve --env-manager uv` | {cold['arrowsmith uv s']:.1f} |",
        f"| `mlflow models serve --env-manager virtualenv` | {cold['mlflow virtualenv s']:.1f} |",
        f"| mlflow / arrowsmith | {cold['mlflow / arrowsmith']:.1f}x |",
        "",
        f"Warm start to gRPC ServerReady, {result['settings']['runs']} runs each, "
        f"server on core {SERVER_CORE}.",
        "",
        "| `arrowsmith serve` | median s | min s | max s |",
        "|---|---:|---:|---:|",
    ]
    for name in ("uv", "local"):
        values = warm[name]
        lines.append(
            f"| `--env-manager {name}`{' (built)' if name == 'uv' else ''} | "
            f"{statistics.median(values):.2f} | {min(values):.2f} | {max(values):.2f} |"
        )
    lines.append(
        f"| uv - local | {warm['uv - local median s']:+.2f} | {warm['uv - local min s']:+.2f} | |"
    )
    return "\n".join(lines)


def measure(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    model = wine_model(work)
    body = write_bodies(work / "bodies")["W3"].read_bytes()
    env = base_env()
    envs = {"arrowsmith": dict(env), "mlflow": dict(env, MLFLOW_ENV_ROOT=str(work / "mlflow-env"))}
    if args.cold_cache:
        for name, server_env in envs.items():
            server_env["UV_CACHE_DIR"] = str(work / f"{name}-uv-cache")
            server_env["PIP_CACHE_DIR"] = str(work / f"{name}-pip-cache")
    before = None if args.cold_cache else cache_state(env)
    env_cache = work / "env-cache"
    print(f"model {model}; package caches: {before or 'fresh, one pair per server'}")

    print("cold: arrowsmith --env-manager uv ...", flush=True)
    ours, our_answer = cold_arrowsmith(
        model, envs["arrowsmith"], env_cache, body, work, args.timeout
    )
    print(f"  first answer after {ours:.2f} s: {our_answer}", flush=True)
    print("cold: mlflow --env-manager virtualenv (this takes minutes) ...", flush=True)
    theirs, their_answer = cold_mlflow(model, envs["mlflow"], body, work, args.timeout)
    print(f"  first answer after {theirs:.2f} s: {their_answer}", flush=True)
    if json.dumps(our_answer) != json.dumps(their_answer):
        print(f"warning: the servers disagree: {our_answer} vs {their_answer}")

    warm: dict[str, Any] = {"uv": [], "local": []}
    for run in range(args.runs):
        for name in ("uv", "local") if run % 2 == 0 else ("local", "uv"):
            cache = env_cache if name == "uv" else None
            seconds = warm_start(model, envs["arrowsmith"], name, cache, work, run)
            print(f"warm {run + 1}/{args.runs} --env-manager {name}: {seconds:.2f} s", flush=True)
            warm[name].append(seconds)
    warm["uv - local median s"] = statistics.median(warm["uv"]) - statistics.median(warm["local"])
    warm["uv - local min s"] = min(warm["uv"]) - min(warm["local"])
    return {
        "package caches": "fresh" if args.cold_cache else "as found",
        "cold": {
            "arrowsmith uv s": ours,
            "mlflow virtualenv s": theirs,
            "mlflow / arrowsmith": theirs / ours,
            "package caches before": before,
            "env cache MB": round(size_mb(env_cache), 1),
            "mlflow env MB": round(size_mb(work / "mlflow-env"), 1),
        },
        "warm": warm,
    }


def interrupted(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5, help="warm starts of each env manager")
    parser.add_argument(
        "--cold-cache", action="store_true", help="fresh uv and pip package caches for the builds"
    )
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds per cold build")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, interrupted)

    date = datetime.datetime.now(datetime.UTC)
    load_before = os.getloadavg()[0]
    work = Path(tempfile.mkdtemp(prefix="bench-environments-"))
    try:
        result = measure(args, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    result = {
        "date": date.isoformat(timespec="seconds"),
        "command": shlex.join([sys.executable, *sys.argv]),
        "machine": {
            "cpus": os.cpu_count(),
            "cpu_model": cpu_model(),
            "kernel": platform.release(),
            # Other work on the machine shows here: the figures are no better than it is idle.
            "loadavg_1m before, after": [load_before, os.getloadavg()[0]],
        },
        "versions": {
            "python": platform.python_version(),
            "mlflow": version([str(BIN / "mlflow"), "--version"]),
            "uv": version([str(BIN / "uv"), "--version"]),
            "pyenv": version(["pyenv", "--version"]),
            "arrowsmith": version(["git", "-C", str(ROOT), "describe", "--always", "--dirty"]),
        },
        "settings": {
            "runs": args.runs,
            "cold_cache": args.cold_cache,
            "timeout": args.timeout,
        },
        **result,
    }
    print(f"\nload average (1 min) before and after: {load_before:.2f}, {os.getloadavg()[0]:.2f}")
    print()
    print(report_markdown(result))
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")
        print(f"\nwrote {args.json}")


if __name__ == "__main__":
    main()
