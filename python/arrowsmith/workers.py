"""Several server processes under one supervisor: N workers on the same ports (SO_REUSEPORT
lets the kernel spread the connections) and, when models need different environments, one
process per other environment on private Unix sockets, which the workers on the ports
forward to (`arrowsmith.routing`). The supervisor restarts a process that crashes, serves
their combined metrics, passes SIGHUP and SIGUSR1 on to them, and on SIGTERM stops them,
each draining its in-flight requests: the workers on the ports first, since they drain
what they forward.
A worker whose models fail to load (EXIT_LOAD_FAILED) stops the whole server: restarting
it would only fail again.

When a model's reference moves to a version that needs another environment, a worker says
so (SIGUSR2, or exiting with EXIT_ENVIRONMENT_CHANGED when it starts): the supervisor plans
the environments again in the background (building the new one while the old workers
serve), starts the group's workers under the new interpreter, and once each is ready (it
touches its ready file) stops its predecessor, which drains: no request goes unanswered."""

from __future__ import annotations

import ctypes
import dataclasses
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace

from arrowsmith.config import ModelConfig, RoutedGroup, ServerConfig
from arrowsmith.routing.groups import GroupConfig, ProcessGroup, group_configs
from arrowsmith.server import (
    EXIT_ENVIRONMENT_CHANGED,
    EXIT_LOAD_FAILED,
    EXIT_MODEL_FAILED,
    READY_FILE_ENV,
    configure_logging,
    stop_on_signals,
)
from arrowsmith.tracing import TracingConfig

logger = logging.getLogger("arrowsmith.workers")

_CONFIG_ENV = "ARROWSMITH_WORKER_CONFIG"
_SUPERVISOR_ENV = "ARROWSMITH_SUPERVISOR_PID"
#: prctl(2)'s option asking for a signal when the parent dies (linux/prctl.h).
_PR_SET_PDEATHSIG = 1
#: Seconds a stopping worker gets beyond its --drain-timeout before it is killed.
KILL_MARGIN_SECONDS = 5.0
#: Seconds a worker started under a new environment has to load its models and serve
#: (downloads included) before it is given up and its predecessor kept.
SUCCESSOR_READY_SECONDS = 600.0


#: What a worker run by another interpreter (a model environment's) must not inherit from
#: this one's environment. PYTHONDONTWRITEBYTECODE too: an environment is built without its
#: bytecode, which its first start writes for what it imports (without it, every start of
#: MLflow's dependencies compiles them again, ~6 s here).
_OWN_ENVIRONMENT_ONLY = ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "PYTHONDONTWRITEBYTECODE")


def _spawn(
    slot: _Slot,
    metrics_dir: str,
    config: ServerConfig | None = None,
    ready_file: str | None = None,
) -> subprocess.Popen[bytes]:
    """Starts the slot's worker (with `config` in place of its group's, and a file to touch
    once ready, when it replaces one)."""
    python = slot.group.python
    inherited = {
        key: value
        for key, value in os.environ.items()
        if python == sys.executable or key not in _OWN_ENVIRONMENT_ONLY
    }
    env = {
        **inherited,
        _CONFIG_ENV: json.dumps(dataclasses.asdict(config or slot.group.config)),
        "ARROWSMITH_WORKER_INDEX": str(slot.index),
        _SUPERVISOR_ENV: str(os.getpid()),
        "PROMETHEUS_MULTIPROC_DIR": metrics_dir,
    }
    if ready_file is not None:
        env[READY_FILE_ENV] = ready_file
    return subprocess.Popen([python, "-m", "arrowsmith.workers"], env=env)


def _serve_metrics(config: ServerConfig, metrics_dir: str, processes: int) -> None:
    from prometheus_client import CollectorRegistry, start_http_server
    from prometheus_client.multiprocess import MultiProcessCollector

    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=metrics_dir)  # type: ignore[no-untyped-call]
    start_http_server(config.metrics_port, addr=config.host, registry=registry)
    logger.info("metrics of %d processes on :%d/metrics", processes, config.metrics_port)


@dataclass(frozen=True)
class _Slot:
    """One worker: its index (its metrics' `worker` label), what it serves under which
    interpreter, and whether it owns the ports (the front group) or serves a model group."""

    index: int
    group: GroupConfig
    front: bool

    def describe(self) -> str:
        if self.front:
            return f"worker {self.index}"
        names = dict.fromkeys(model.served_name for model in self.group.config.models)
        return f"worker {self.index} (serving {', '.join(names)})"


def _slots(config: ServerConfig, groups: Sequence[ProcessGroup], runtime_dir: str) -> list[_Slot]:
    """`config.workers` workers of the front group, then one per model group."""
    if len(groups) == 1:
        front, model_groups = GroupConfig(groups[0].python, config), []
    else:
        front, *model_groups = group_configs(config, list(groups), runtime_dir)
    slots = [_Slot(index, front, True) for index in range(config.workers)]
    return slots + [
        _Slot(config.workers + number, group, False) for number, group in enumerate(model_groups)
    ]


def supervise(
    config: ServerConfig,
    groups: Sequence[ProcessGroup] = (),
    replan: Callable[[], Sequence[ProcessGroup]] | None = None,
) -> int:
    """Runs the workers until a stop signal: `config.workers` under this interpreter; or,
    given the models by interpreter (`groups`, the first model's first), as many under the
    first group's, serving its models on the ports, and one process for each other group,
    which they forward to. `replan` plans the groups again when a worker needs another
    environment (None: nobody can). Exits 2 when the groups cannot be set up."""
    configure_logging(config)
    groups = groups or [ProcessGroup(sys.executable, config.models)]
    # Private: only this user's processes reach the sockets, which serve without TLS.
    runtime_dir = tempfile.mkdtemp(prefix="arrowsmith-")
    try:
        slots = _slots(config, groups, runtime_dir)
    except ValueError as error:
        logger.error("cannot serve these models together: %s", error)
        shutil.rmtree(runtime_dir, ignore_errors=True)
        return 2
    supervisor = _Supervisor(config, slots, runtime_dir, replan)
    try:
        return supervisor.run()
    finally:
        shutil.rmtree(runtime_dir, ignore_errors=True)


@dataclass
class _Incoming:
    """A worker started under a new environment's interpreter, until it is ready."""

    slot: _Slot
    process: subprocess.Popen[bytes]
    ready_file: str
    #: Its sockets as started (model groups), and where they go once it is ready.
    moves: list[tuple[str, str]]
    #: When it is given up (killed) if not ready by then; its predecessor stays.
    deadline: float


class _Supervisor:
    def __init__(
        self,
        config: ServerConfig,
        slots: list[_Slot],
        runtime_dir: str,
        replan: Callable[[], Sequence[ProcessGroup]] | None,
    ) -> None:
        self.config = config
        self.slots = {slot.index: slot for slot in slots}
        self.runtime_dir = runtime_dir
        self.metrics_dir = tempfile.mkdtemp(prefix="arrowsmith-metrics-")
        self.processes: dict[int, subprocess.Popen[bytes]] = {}
        #: Slots whose worker exited for another environment, until the plan is redone.
        self.waiting: set[int] = set()
        self.incoming: dict[int, _Incoming] = {}
        #: Predecessors draining, and when they will be killed.
        self.retiring: list[tuple[subprocess.Popen[bytes], float]] = []
        self.replanner = _Replanner(replan) if replan is not None else None
        self.patience = config.drain_timeout + KILL_MARGIN_SECONDS
        self.stop = stop_on_signals()
        self.status = 0

    def run(self) -> int:
        try:
            for slot in self.slots.values():
                self.processes[slot.index] = _spawn(slot, self.metrics_dir)
            if self.config.metrics_port:
                _serve_metrics(self.config, self.metrics_dir, len(self.slots))
            # SIGHUP reloads the TLS files: each worker does it for its own fronts (left
            # alone, the signal would end the supervisor and orphan its workers). SIGUSR1,
            # from a worker that received an MLflow webhook, has every worker look at the
            # registry at once. SIGUSR2: a worker found a version needing another environment.
            for forwarded in (signal.SIGHUP, signal.SIGUSR1):
                signal.signal(forwarded, lambda signum, frame: _forward(signum, self.processes))
            signal.signal(signal.SIGUSR2, lambda signum, frame: self._environment_wanted())
            while not self.stop.wait(0.5):
                self._watch_workers()
                self._take_plan()
                self._watch_incoming()
                self._watch_retiring(kill_late=True)
        finally:
            everyone = list(self.processes.values())
            everyone += [incoming.process for incoming in self.incoming.values()]
            front = {i for i, slot in self.slots.items() if slot.front}
            _stop_all([p for i, p in self.processes.items() if i in front], self.patience)
            _stop_all([p for p in everyone if p.poll() is None], self.patience)
            self._watch_retiring(kill_late=False)
            shutil.rmtree(self.metrics_dir, ignore_errors=True)
        return self.status

    def _environment_wanted(self) -> None:
        if self.replanner is not None:
            self.replanner.want()

    def _watch_workers(self) -> None:
        for index, slot in self.slots.items():
            process = self.processes.get(index)
            if process is None or index in self.waiting:
                continue
            code = process.poll()
            if code is None:
                continue
            _mark_dead(process.pid, self.metrics_dir)
            if code == EXIT_LOAD_FAILED:
                logger.error("%s could not load its models; stopping", slot.describe())
                self.status = 1
                self.stop.set()
                return
            if code == EXIT_ENVIRONMENT_CHANGED and self.replanner is not None:
                logger.info("%s needs another environment; planning again", slot.describe())
                self.waiting.add(index)
                self.replanner.want()
                continue
            logger.warning("%s ended (exit %s); starting it again", slot.describe(), code)
            self.processes[index] = _spawn(slot, self.metrics_dir)

    def _take_plan(self) -> None:
        """Applies a plan the replanner finished: each group whose interpreter changed gets
        new workers (a worker waiting for it starts at once). A plan that would arrange the
        models in other groups is not applied: the workers stay as they are."""
        if self.replanner is None:
            return
        plan = self.replanner.take()
        if plan is None:
            return
        by_group = _group_slots(self.slots.values())
        if [_names(group.models) for group in plan] != [
            _names(slots[0].group.config.models) for slots in by_group
        ]:
            if self.waiting:
                # A worker is down and cannot start as its group stands: the server stops,
                # to be started again (a new start plans the groups afresh).
                logger.error(
                    "the models now need their environments arranged in other groups; "
                    "stopping, to be started again"
                )
                self.status = EXIT_MODEL_FAILED
                self.stop.set()
                return
            logger.error(
                "the models now need their environments arranged in other groups, which "
                "takes a restart of the server; until then the workers stay as they are"
            )
            return
        for group, slots in zip(plan, by_group, strict=True):
            for slot in slots:
                if slot.index in self.waiting:
                    self.waiting.discard(slot.index)
                    self.slots[slot.index] = replace(
                        slot, group=GroupConfig(group.python, slot.group.config)
                    )
                    self.processes[slot.index] = _spawn(self.slots[slot.index], self.metrics_dir)
                elif group.python != slot.group.python and slot.index not in self.incoming:
                    self._start_successor(slot, group.python)

    def _start_successor(self, slot: _Slot, python: str) -> None:
        successor = replace(slot, group=GroupConfig(python, slot.group.config))
        config = slot.group.config
        moves = []
        if not slot.front:
            staged = {path: f"{path}.next" for path in (config.grpc_uds, config.http_uds) if path}
            moves = [(staged_path, path) for path, staged_path in staged.items()]
            config = dataclasses.replace(
                config,
                grpc_uds=staged.get(config.grpc_uds or "", config.grpc_uds),
                http_uds=staged.get(config.http_uds or "", config.http_uds),
            )
        ready_file = os.path.join(self.runtime_dir, f"ready-{slot.index}-{time.monotonic_ns()}")
        logger.info("%s: starting its successor under %s", slot.describe(), python)
        process = _spawn(successor, self.metrics_dir, config, ready_file)
        deadline = time.monotonic() + SUCCESSOR_READY_SECONDS
        self.incoming[slot.index] = _Incoming(successor, process, ready_file, moves, deadline)

    def _watch_incoming(self) -> None:
        for index, incoming in list(self.incoming.items()):
            code = incoming.process.poll()
            if code is not None:
                _mark_dead(incoming.process.pid, self.metrics_dir)
                logger.error(
                    "%s: its successor ended before it was ready (exit %s); the worker stays",
                    incoming.slot.describe(),
                    code,
                )
                del self.incoming[index]
                continue
            if not os.path.exists(incoming.ready_file):
                if time.monotonic() > incoming.deadline:
                    logger.error(
                        "%s: its successor was not ready within %g s; killing it, the worker stays",
                        incoming.slot.describe(),
                        SUCCESSOR_READY_SECONDS,
                    )
                    incoming.process.kill()
                    incoming.process.wait()
                    _mark_dead(incoming.process.pid, self.metrics_dir)
                    del self.incoming[index]
                continue
            # The successor serves: it takes the sockets, and its predecessor drains.
            for staged, final in incoming.moves:
                os.replace(staged, final)
            predecessor = self.processes.get(index)
            if predecessor is not None and predecessor.poll() is None:
                predecessor.send_signal(signal.SIGTERM)
                self.retiring.append((predecessor, time.monotonic() + self.patience))
            self.slots[index] = incoming.slot
            self.processes[index] = incoming.process
            del self.incoming[index]
            logger.info(
                "%s now runs under %s", incoming.slot.describe(), incoming.slot.group.python
            )

    def _watch_retiring(self, kill_late: bool) -> None:
        """Predecessors that finished draining leave the list; one past its time is
        killed (all of them are waited for when `kill_late` is False)."""
        still = []
        for process, deadline in self.retiring:
            if not kill_late:
                try:
                    process.wait(max(0.1, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
            elif process.poll() is None:
                if time.monotonic() < deadline:
                    still.append((process, deadline))
                    continue
                logger.error("worker %d did not stop in time; killing it", process.pid)
                process.kill()
                process.wait()
            _mark_dead(process.pid, self.metrics_dir)
        self.retiring = still


def _group_slots(slots: Iterable[_Slot]) -> list[list[_Slot]]:
    """The slots by group, in the plan's order: the front group's first (they share one
    configuration), then each model group's."""
    ordered: dict[int, list[_Slot]] = {}
    for slot in sorted(slots, key=lambda s: s.index):
        ordered.setdefault(-1 if slot.front else slot.index, []).append(slot)
    return list(ordered.values())


def _names(models: Iterable[ModelConfig]) -> frozenset[str]:
    return frozenset(model.served_name for model in models)


class _Replanner:
    """Plans the groups again on a thread of its own (building environments takes a while,
    and the supervisor keeps watching its workers meanwhile). A want while planning is
    remembered and planned after."""

    def __init__(self, plan: Callable[[], Sequence[ProcessGroup]]) -> None:
        self._plan = plan
        self._lock = threading.Lock()
        self._running = False
        self._again = False
        self._result: list[ProcessGroup] | None = None

    def want(self) -> None:
        with self._lock:
            if self._running:
                self._again = True
                return
            self._running = True
        threading.Thread(target=self._work, name="environments", daemon=True).start()

    def take(self) -> list[ProcessGroup] | None:
        with self._lock:
            result, self._result = self._result, None
            return result

    def _work(self) -> None:
        while True:
            try:
                result: list[ProcessGroup] | None = list(self._plan())
            except Exception:
                logger.exception("planning the environments again failed; the workers stay")
                result = None
            with self._lock:
                if result is not None:
                    self._result = result
                if not self._again:
                    self._running = False
                    return
                self._again = False


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


def config_from_json(text: str) -> ServerConfig:
    """A worker's configuration, as the supervisor wrote it (`dataclasses.asdict`, JSON)."""
    raw = json.loads(text)
    models = tuple(
        ModelConfig(**{**m, "versions": tuple(m["versions"])}) for m in raw.pop("models")
    )
    routes = tuple(RoutedGroup(**{**r, "names": tuple(r["names"])}) for r in raw.pop("routes"))
    tracing = raw.pop("tracing")
    if tracing is not None:
        tracing = TracingConfig(**tracing)
    return ServerConfig(models=models, routes=routes, tracing=tracing, **{**raw, "workers": 1})


def _end_with_supervisor() -> None:
    """Asks the kernel for SIGTERM (a drain) when the supervisor dies, however it dies: a
    supervisor killed outright (SIGKILL, the OOM killer) must not leave workers holding the
    ports. The supervisor spawns from its main thread, whose end is the process's. A
    supervisor already gone before the request was made is caught by the parent check."""
    supervisor = int(os.environ.get(_SUPERVISOR_ENV, "0"))
    if not sys.platform.startswith("linux") or supervisor <= 0:
        return
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0) != 0:
        logger.warning("cannot follow the supervisor's end: %s", os.strerror(ctypes.get_errno()))
        return
    if os.getppid() != supervisor:
        os.kill(os.getpid(), signal.SIGTERM)


def worker_main() -> int:
    """Entry point of a worker process: the supervisor's configuration, one server."""
    from arrowsmith.server import serve

    _end_with_supervisor()
    return serve(config_from_json(os.environ[_CONFIG_ENV]), worker=True)


if __name__ == "__main__":
    raise SystemExit(worker_main())
