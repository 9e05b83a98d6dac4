"""The models other processes of this server serve for it, as a process of the front group
sees them: which process serves each, and whether it is ready (not until its process's
health says so)."""

from __future__ import annotations

import threading
from collections.abc import Callable

from arrowsmith.config import RoutedGroup


class RoutedModels:
    """`on_change` is called whenever a group's readiness changed."""

    def __init__(
        self, groups: tuple[RoutedGroup, ...], on_change: Callable[[], None] = lambda: None
    ) -> None:
        self.groups = groups
        self.on_change = on_change
        self._by_name = {name: group for group in groups for name in group.names}
        self._ready = dict.fromkeys(groups, False)
        self._lock = threading.Lock()

    def group_of(self, name: str) -> RoutedGroup | None:
        """The group serving `name`; None for a model not routed (served here, or unknown)."""
        return self._by_name.get(name)

    @property
    def ready(self) -> bool:
        """Every routed model is ready (true when none is routed)."""
        return all(self._ready.values())

    def readiness(self) -> list[tuple[str, bool]]:
        """Each routed model's readiness."""
        return [(name, self._ready[group]) for name, group in self._by_name.items()]

    def set_ready(self, group: RoutedGroup, ready: bool) -> None:
        with self._lock:
            changed = self._ready[group] != ready
            self._ready[group] = ready
        if changed:
            self.on_change()
