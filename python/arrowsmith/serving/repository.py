"""The models this process serves, by name and version: the one place that wires loaded
models to their batchers and runners, and changes them while requests flow.

A change never fails a request. A new version is loaded and warmed up while the old one
serves; it then goes live at once (the front's default version switches atomically), and
only afterwards is the old version taken out: no lookup finds it any more, what it already
queued is answered, its runner ends and its memory is freed. A version that fails to load
never takes traffic; the failure is kept for the index until a load of that model
succeeds. Lookups are lock-free reads of a dict replaced whole on change."""

from __future__ import annotations

import gc
import logging
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Protocol

from arrowsmith import _native, metrics
from arrowsmith.batching.runner import BatchRunner
from arrowsmith.batching.watch import RunnerWatch
from arrowsmith.config import ModelConfig
from arrowsmith.environments.running import NeedsOtherEnvironment
from arrowsmith.errors import InternalError, ModelNotFoundError, ModelNotReadyError
from arrowsmith.models import loader
from arrowsmith.models.loaded import LoadedModel, load_model
from arrowsmith.serving.batch_answer import batch_answerer

logger = logging.getLogger(__name__)

#: Seconds a version taken out of service still takes requests before its queue closes:
#: a request that found it just before the switch must still get in.
RETIRE_GRACE_SECONDS = 1.0

READY = "READY"
UNAVAILABLE = "UNAVAILABLE"
LOADING = "LOADING"


@dataclass
class ServedVersion:
    """A loaded model version with the runner that answers its batches."""

    model: LoadedModel
    runner: BatchRunner

    @property
    def name(self) -> str:
        return self.model.name

    @property
    def version(self) -> str:
        return self.model.version

    @property
    def batcher(self) -> _native.Batcher:
        return self.runner.batcher

    @property
    def ready(self) -> bool:
        return self.runner.healthy and not self.runner.stopping


@dataclass(frozen=True)
class ServedModel:
    """A name's versions (in the order they went live) and the default one, for requests
    that name no version."""

    name: str
    versions: dict[str, ServedVersion]
    default: str | None
    #: Versions served whatever the reference points to (`versions` in the configuration).
    pinned: frozenset[str] = frozenset()

    def default_version(self) -> ServedVersion | None:
        return self.versions.get(self.default) if self.default is not None else None


@dataclass(frozen=True)
class IndexEntry:
    """One row of the repository index (Triton's `ModelIndex`)."""

    name: str
    version: str
    state: str
    reason: str = ""


class Front(Protocol):
    """What the repository tells the native gRPC front (which finds models without Python)."""

    def serve_version(self, served: ServedVersion) -> None: ...

    def set_default_version(self, name: str, version: str) -> None: ...

    def unserve_version(self, name: str, version: str) -> None: ...

    def set_expected(self, names: list[str]) -> None: ...


def _quoted(names: Iterable[str]) -> str:
    return ", ".join(f"'{n or 'unversioned'}'" for n in names)


@dataclass
class _Notes:
    """What the index says of a name besides its served versions."""

    #: The version being loaded ("" when not known yet).
    loading: dict[str, str] = field(default_factory=dict)
    #: The last failed load of a name: version and reason.
    failed: dict[str, tuple[str, str]] = field(default_factory=dict)
    #: Names unloaded on request, with the reason.
    unloaded: dict[str, str] = field(default_factory=dict)


class ModelRepository:
    """Name -> served model. `on_change` is called whenever readiness may have changed;
    `resolve` pins a model URI to the version it points to now (MLflow's registry). What
    lookups and the index read (the models, the configurations, the names expected) is
    replaced whole on change, never changed in place."""

    def __init__(
        self,
        configs: Iterable[ModelConfig],
        watch: RunnerWatch,
        drain_timeout: float,
        on_change: Callable[[], None] = lambda: None,
        resolve: Callable[[str], loader.ModelSource] = loader.resolve,
    ) -> None:
        self.resolve = resolve
        #: Each name's configuration (the first listed: its default version), and the
        #: entries listed after it under the same name, served beside it.
        self._configs: dict[str, ModelConfig] = {}
        self._beside: dict[str, tuple[ModelConfig, ...]] = {}
        for config in configs:
            name = config.served_name
            if name in self._configs:
                self._beside[name] = (*self._beside.get(name, ()), config)
            else:
                self._configs[name] = config
        #: Names the server must serve to be ready: the configured ones, until unloaded.
        self._expected = list(self._configs)
        self._models: dict[str, ServedModel] = {}
        self._watch = watch
        self._drain_timeout = drain_timeout
        self._on_change = on_change
        self._front: Front | None = None
        self._notes = _Notes()
        self._stopping = False
        #: Serializes changes (loads, swaps, unloads); lookups never take it.
        self._changes = threading.RLock()

    # Lookups -------------------------------------------------------------------------

    def get(self, name: str, version: str = "") -> ServedVersion:
        """The version of `name` a request goes to: the named one, else the default.
        NOT_FOUND for an unknown name or version, UNAVAILABLE while it loads or is not
        ready (the native front says the same in the same words)."""
        model = self._models.get(name)
        if model is None:
            if name in self._expected:
                raise ModelNotReadyError(f"model '{name}' is loading and not ready yet")
            known = _quoted(self._models) or "none"
            raise ModelNotFoundError(f"model '{name}' is not served here (models: {known})")
        if version:
            served = model.versions.get(version)
            if served is None:
                raise ModelNotFoundError(
                    f"model '{name}' has no version '{version}' here "
                    f"(served versions: {_quoted(model.versions)})"
                )
            if not served.ready:
                raise ModelNotReadyError(f"model '{name}' version '{version}' is not ready yet")
            return served
        served = model.default_version()
        if served is None:
            raise ModelNotReadyError(f"model '{name}' has no version ready to serve")
        if not served.ready:
            raise ModelNotReadyError(f"model '{name}' is not ready yet")
        return served

    @property
    def ready(self) -> bool:
        """Every expected model has a ready default version (none expected, after unloads:
        ready, as Triton is with no model loaded)."""
        if self._stopping:
            return False
        for name in self._expected:
            model = self._models.get(name)
            served = model.default_version() if model is not None else None
            if served is None or not served.ready:
                return False
        return True

    def names(self) -> list[str]:
        return list(self._models)

    def versions(self) -> list[ServedVersion]:
        return [v for m in self._models.values() for v in m.versions.values()]

    def config(self, name: str) -> ModelConfig | None:
        return self._configs.get(name)

    def default_version(self, name: str) -> str | None:
        model = self._models.get(name)
        return model.default if model is not None else None

    def index(self, ready_only: bool = False) -> list[IndexEntry]:
        """Every model known here, each served version and what happened to the others:
        being loaded, failed to load (with the reason), unloaded."""
        entries: list[IndexEntry] = []
        models = self._models
        notes = self._notes
        for name in dict.fromkeys([*self._configs, *models, *notes.failed]):
            model = models.get(name)
            for served in model.versions.values() if model is not None else ():
                state, reason = (READY, "") if served.ready else (UNAVAILABLE, "not ready")
                entries.append(IndexEntry(name, served.version, state, reason))
            # Read once each: a change may drop a note between a test and a lookup.
            loading, failed = notes.loading.get(name), notes.failed.get(name)
            unloaded = notes.unloaded.get(name)
            # One entry per version: a failed version being tried again is LOADING, with
            # the reason it failed last time.
            retrying = failed is not None and loading == failed[0]
            if loading is not None:
                last = f"retrying; last time {failed[1]}" if failed and retrying else ""
                entries.append(IndexEntry(name, loading, LOADING, last))
            if failed is not None and not retrying:
                entries.append(IndexEntry(name, failed[0], UNAVAILABLE, failed[1]))
            if model is None and unloaded is not None:
                entries.append(IndexEntry(name, "", UNAVAILABLE, unloaded))
        if ready_only:
            return [e for e in entries if e.state == READY]
        return entries

    # Changes ------------------------------------------------------------------------

    def attach(self, front: Front) -> None:
        """From now on the front is told of every change; it is given what is served now."""
        with self._changes:
            self._front = front
            for model in self._models.values():
                for served in model.versions.values():
                    front.serve_version(served)
                if model.default is not None:
                    front.set_default_version(model.name, model.default)
            front.set_expected(list(self._expected))

    def load_configured(self) -> None:
        """Loads every configured model (at start)."""
        for config in list(self._configs.values()):
            self.load(config)

    def load(self, config: ModelConfig, beside: tuple[ModelConfig, ...] | None = None) -> None:
        """Loads every version `config` names, and the entries `beside` it (None: those
        configured under its name), and serves them; a name already served is replaced
        without a failed request. Raises InternalError when a version fails to load (what
        was served stays)."""
        name = config.served_name
        with self._changes:
            beside = self._beside.get(name, ()) if beside is None else beside
            entries = self._resolved(config, beside)
            loaded = [self._load_version(entry, source) for entry, source in entries]
            default = loaded[0].version
            pinned = frozenset(m.version for m in loaded[1:])
            self._go_live(name, loaded, default, pinned, replace_all=True)
            # Only what went live becomes the configuration (a failed load keeps the old).
            self._configs = {**self._configs, name: config}
            self._beside = {**self._beside, name: beside}
            if name not in self._expected:
                self._expected = [*self._expected, name]
                if self._front is not None:
                    self._front.set_expected(list(self._expected))
            self._notes.unloaded.pop(name, None)
        self._on_change()

    def follow(self, name: str, source: loader.ModelSource, moved_at: float) -> None:
        """The reference `name` follows now points to `source`'s version: that version
        becomes the default (loaded first unless it is served already), and the previous
        default is taken out unless pinned. `moved_at` (monotonic) is when the move was
        seen, for the swap-time metric. Raises InternalError when the new version does not
        load; the old one keeps serving."""
        with self._changes:
            model = self._models.get(name)
            config = self._configs.get(name)
            if model is None or config is None or model.default == source.version:
                return
            if source.version in model.versions:
                self._switch(model, source.version)
            else:
                loaded = self._load_version(config, source)
                self._go_live(name, [loaded], loaded.version, model.pinned, replace_all=False)
            metrics.observe_swap(name, source.version, time.monotonic() - moved_at)
            logger.info(
                "model %s now answers with version %s (was %s)",
                name,
                source.version,
                model.default or "-",
            )
        self._on_change()

    def unload(self, name: str, reason: str) -> None:
        """Takes every version of `name` out of service and drains it; the index then says
        UNAVAILABLE with `reason`. The server's readiness no longer waits for it."""
        with self._changes:
            model = self._models.get(name)
            if model is None:
                if name not in self._configs:
                    raise ModelNotFoundError(f"model '{name}' is not served here")
                return
            self._models = {n: m for n, m in self._models.items() if n != name}
            self._expected = [n for n in self._expected if n != name]
            self._notes.unloaded[name] = reason
            if self._front is not None:
                self._front.set_expected(list(self._expected))
            retired = list(model.versions.values())
            self._retire(retired)
        self._on_change()
        for served in retired:
            self._drain(served, grace=RETIRE_GRACE_SECONDS)
        gc.collect()

    def begin_stop(self) -> None:
        """The server is stopping: every model turns not ready at once (queued and running
        requests are still answered)."""
        self._stopping = True
        for served in self.versions():
            served.runner.begin_stop()

    def runners(self) -> list[tuple[str, Callable[[float], bool]]]:
        """Each runner's `stop(timeout)`, by label, for the drain at shutdown."""
        return [
            (f"model {v.name}" + (f" version {v.version}" if v.version else ""), v.runner.stop)
            for v in self.versions()
        ]

    def stop(self, timeout: float) -> None:
        """Stops every runner; queued requests are answered first."""
        self.begin_stop()
        for _, stop in self.runners():
            stop(timeout)

    # Internals ----------------------------------------------------------------------

    def _resolved(
        self, config: ModelConfig, beside: tuple[ModelConfig, ...]
    ) -> list[tuple[ModelConfig, loader.ModelSource]]:
        """The versions a configuration serves, each with the entry that gives its
        settings: what its URI points to (the default) first, then the pinned `versions`,
        then the entries beside it (a version served already counts once)."""
        name = config.served_name
        try:
            default = self.resolve(config.uri)
            pinned = [loader.registry_version(config.uri, v) for v in config.versions]
            entries = [(config, default)]
            entries += [(config, s) for s in pinned if s.version != default.version]
            for entry in beside:
                source = self.resolve(entry.uri)
                if not source.version or source.version not in {s.version for _, s in entries}:
                    entries.append((entry, source))
        except Exception as error:
            raise self._failed(name, "", f"{config.uri} could not be resolved: {error}") from error
        return entries

    def _load_version(self, config: ModelConfig, source: loader.ModelSource) -> LoadedModel:
        name = config.served_name
        self._notes.loading[name] = source.version
        try:
            model = load_model(config, source, self._watch.fatal)
        except NeedsOtherEnvironment as error:
            # Not a failure: this version runs once workers run in its environment.
            self._notes.failed[name] = (source.version, str(error))
            raise
        except BaseException as error:
            # Loading runs the model's code (unpickling, load_context, the warm-up): whatever
            # it raises, `SystemExit` included, fails this load and nothing else.
            what = source.version or source.pinned_uri
            raise self._failed(
                name, source.version, f"version {what} failed to load: {error}"
            ) from error
        finally:
            self._notes.loading.pop(name, None)
        self._notes.failed.pop(name, None)
        metrics.count_load(name, model.version, "loaded")
        return model

    def _failed(self, name: str, version: str, reason: str) -> InternalError:
        """Records a failed load for the index, the metrics and the log; the error to raise."""
        self._notes.failed[name] = (version, reason)
        metrics.count_load(name, version, "failed")
        logger.error("model %s: %s; what is served stays", name, reason, exc_info=True)
        return InternalError(f"model '{name}': {reason}")

    def _start(self, model: LoadedModel) -> ServedVersion:
        config = model.config
        batcher = _native.Batcher(
            model.name,
            model.version,
            config.max_batch_size,
            config.max_batch_delay_ms,
            config.max_queue_size,
        )
        runner = BatchRunner(model.name, batcher, batch_answerer(model), self._watch)
        runner.start()
        return ServedVersion(model, runner)

    def _go_live(
        self,
        name: str,
        loaded: list[LoadedModel],
        default: str,
        pinned: frozenset[str],
        replace_all: bool,
    ) -> None:
        """Serves `loaded` beside what `name` serves, makes `default` the default, then
        takes out the previous default (all previous versions with `replace_all`) unless
        it is one of the new ones or pinned."""
        old = self._models.get(name)
        added = [self._start(model) for model in loaded]
        replaced = {v.version for v in added}
        kept: dict[str, ServedVersion] = {}
        retired: list[ServedVersion] = []
        if old is not None:
            for version, served in old.versions.items():
                outdated = replace_all or version == old.default
                if version in replaced or (outdated and version not in pinned):
                    retired.append(served)
                else:
                    kept[version] = served
        versions = {**kept, **{v.version: v for v in added}}
        self._models = {**self._models, name: ServedModel(name, versions, default, pinned)}
        if self._front is not None:
            for served in added:
                self._front.serve_version(served)
            self._front.set_default_version(name, default)
        self._retire(retired, still_served=replaced)
        metrics.set_versions_loaded(name, len(versions))
        self._retire_later(retired)

    def _switch(self, model: ServedModel, version: str) -> None:
        """Makes a served version the default; the previous default goes unless pinned."""
        previous = model.default_version()
        versions = dict(model.versions)
        retired = []
        if previous is not None and previous.version not in model.pinned:
            retired.append(versions.pop(previous.version))
        self._models = {
            **self._models,
            model.name: ServedModel(model.name, versions, version, model.pinned),
        }
        if self._front is not None:
            self._front.set_default_version(model.name, version)
        self._retire(retired)
        metrics.set_versions_loaded(model.name, len(versions))
        self._retire_later(retired)

    def _retire(
        self, retired: list[ServedVersion], still_served: frozenset[str] | set[str] = frozenset()
    ) -> None:
        """Out of the front's table (they are out of `_models` already): requests no longer
        find these versions (a version number served anew, `still_served`, already points to
        its replacement there)."""
        if self._front is None:
            return
        for served in retired:
            if served.version not in still_served:
                self._front.unserve_version(served.name, served.version)

    def _retire_later(self, retired: list[ServedVersion]) -> None:
        if retired:
            threading.Thread(
                target=self._drain_all, args=(retired,), name="retire", daemon=True
            ).start()

    def _drain_all(self, retired: list[ServedVersion]) -> None:
        for served in retired:
            self._drain(served, grace=RETIRE_GRACE_SECONDS)
        gc.collect()

    def _drain(self, served: ServedVersion, grace: float) -> None:
        """Lets the version take what was already on its way, answers its queue, ends its
        runner."""
        time.sleep(grace)
        if not served.runner.stop(self._drain_timeout):
            logger.error(
                "model %s version %s still busy after %g s; left to finish",
                served.name,
                served.version,
                self._drain_timeout,
            )
        if served.model.local_copy is not None:
            served.model.local_copy.remove()
        metrics.count_unload(served.name, served.version)
        logger.info("model %s version %s unloaded", served.name, served.version or "-")
