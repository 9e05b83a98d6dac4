"""Several server processes on the same ports (SO_REUSEPORT lets the kernel spread the
connections): a supervisor starts N workers, restarts one that crashes, serves their
combined metrics, passes SIGHUP and SIGUSR1 on to them, and on SIGTERM stops them all, each
draining its in-flight requests.
A worker whose models fail to load (EXIT_LOAD_FAILED) stops the whole server: restarting
it would only fail again."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

from arrowsmith.config import ModelConfig, ServerConfig
from arrowsmith.server import EXIT_LOAD_FAILED, configure_logging, stop_on_signals

logger = logging.getLogger("arrowsmith.workers")

_CONFIG_ENV = "ARROWSMITH_WORKER_CONFIG"
#: Seconds a stopping worker gets beyond its --drain-timeout before it is killed.
KILL_MARGIN_SECONDS = 5.0


#: What a worker run by another interpreter must not inherit from this one's environment.
_OWN_ENVIRONMENT_ONLY = ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")


def _spawn(
    index: int, config: ServerConfig, metrics_dir: str, python: str
) -> subprocess.Popen[bytes]:
    inherited = {
        key: value
        for key, value in os.environ.items()
        if python == sys.executable or key not in _OWN_ENVIRONMENT_ONLY
    }
    env = {
        **inherited,
        _CONFIG_ENV: json.dumps(dataclasses.asdict(config)),
        "ARROWSMITH_WORKER_INDEX": str(index),
        "PROMETHEUS_MULTIPROC_DIR": metrics_dir,
    }
    return subprocess.Popen([python, "-m", "arrowsmith.workers"], env=env)


def _serve_metrics(config: ServerConfig, metrics_dir: str) -> None:
    from prometheus_client import CollectorRegistry, start_http_server
    from prometheus_client.multiprocess import MultiProcessCollector

    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=metrics_dir)  # type: ignore[no-untyped-call]
    start_http_server(config.metrics_port, addr=config.host, registry=registry)
    logger.info("metrics of %d workers on :%d/metrics", config.workers, config.metrics_port)


def supervise(config: ServerConfig, python: str = sys.executable) -> int:
    """Runs `config.workers` workers under the interpreter `python` (a model environment's,
    or this one's) until a stop signal."""
    configure_logging(config)
    stop = stop_on_signals()
    metrics_dir = tempfile.mkdtemp(prefix="arrowsmith-metrics-")
    workers: dict[int, subprocess.Popen[bytes]] = {}
    status = 0
    try:
        for index in range(config.workers):
            workers[index] = _spawn(index, config, metrics_dir, python)
        if config.metrics_port:
            _serve_metrics(config, metrics_dir)
        # SIGHUP reloads the TLS files: each worker does it for its own fronts (left alone,
        # the signal would end the supervisor and orphan its workers). SIGUSR1, from a worker
        # that received an MLflow webhook, has every worker look at the registry at once.
        for forwarded in (signal.SIGHUP, signal.SIGUSR1):
            signal.signal(forwarded, lambda signum, frame: _forward(signum, workers))
        while not stop.wait(0.5):
            for index, process in list(workers.items()):
                code = process.poll()
                if code is None:
                    continue
                _mark_dead(process.pid, metrics_dir)
                if code == EXIT_LOAD_FAILED:
                    logger.error("worker %d could not load its models; stopping", index)
                    status = 1
                    stop.set()
                    break
                logger.warning("worker %d ended (exit %s); starting it again", index, code)
                workers[index] = _spawn(index, config, metrics_dir, python)
    finally:
        _stop_all(list(workers.values()), config.drain_timeout + KILL_MARGIN_SECONDS)
        shutil.rmtree(metrics_dir, ignore_errors=True)
    return status


def _forward(signum: int, workers: dict[int, subprocess.Popen[bytes]]) -> None:
    """Sends `signum` on to every running worker."""
    for process in list(workers.values()):
        if process.poll() is None:
            process.send_signal(signum)


def _mark_dead(pid: int, metrics_dir: str) -> None:
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(pid, metrics_dir)  # type: ignore[no-untyped-call]


def _stop_all(processes: list[subprocess.Popen[bytes]], patience: float) -> None:
    """SIGTERM to every worker, then wait up to `patience` seconds for them to drain; kill
    the ones that hang."""
    for process in processes:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + patience
    for process in processes:
        try:
            process.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            logger.error("worker %d did not stop in time; killing it", process.pid)
            process.kill()
            process.wait()


def worker_main() -> int:
    """Entry point of a worker process: the supervisor's configuration, one server."""
    from arrowsmith.server import serve

    raw = json.loads(os.environ[_CONFIG_ENV])
    models = tuple(
        ModelConfig(**{**m, "versions": tuple(m["versions"])}) for m in raw.pop("models")
    )
    config = ServerConfig(models=models, **{**raw, "workers": 1})
    return serve(config, worker=True)


if __name__ == "__main__":
    raise SystemExit(worker_main())
