"""The typed facade through which the core reaches plugins. Nothing else calls ``pm.hook``.

Plugins are loaded on request, not at import time: asking for the ``local`` backend loads the entry
point named ``local`` only (a plan that uses files never imports the Vault client or the PKCS#11
library). A plugin name no entry point carries makes every entry point load, since a distribution
may register backends under other names than its entry point's. The entry points are read from the
installed distributions each time (no cache: nothing is written outside the project).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import pluggy

from . import hookspecs
from .backend import KeyStore, KeyStoreFactory, StoreContext
from .errors import BackendError

__all__ = ["Plugins", "ENTRY_POINT_GROUP", "entry_points"]

ENTRY_POINT_GROUP = "pkiascode"


def entry_points() -> dict[str, Any]:
    """The ``pkiascode`` entry points installed, by name (not loaded)."""
    import importlib.metadata

    return {ep.name: ep for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)}


class Plugins:
    """Loads plugins on request and hands out key-store classes by plugin name."""

    def __init__(self, *, load_entry_points: bool = True, extra: Iterable[object] = ()) -> None:
        self._pm = pluggy.PluginManager("pkiascode")
        self._pm.add_hookspecs(hookspecs)
        self._extra = list(extra)
        self._entry_points: dict[str, Any] | None = None if load_entry_points else {}
        self._loaded: set[str] = set()
        self._factories: dict[str, KeyStoreFactory] = {}
        self._started = False

    def _eps(self) -> dict[str, Any]:
        if self._entry_points is None:
            self._entry_points = entry_points()
        return self._entry_points

    def _load(self, name: str) -> Any:
        return self._eps()[name].load()

    def _register(self, names: Iterable[str]) -> None:
        changed = not self._started
        if not self._started:
            for plugin in self._extra:
                self._pm.register(plugin)
            self._started = True
        for name in names:
            if name in self._loaded:
                continue
            self._loaded.add(name)
            if self._pm.get_plugin(name) is None and not self._pm.is_blocked(name):
                self._pm.register(self._load(name), name=name)
                changed = True
        if changed:
            self._pm.check_pending()
            self._collect()

    def _collect(self) -> None:
        factories: dict[str, KeyStoreFactory] = {}

        def register(plugin: str, factory: KeyStoreFactory) -> None:
            if not (isinstance(factory, type) and issubclass(factory, KeyStore)):
                raise BackendError(f"plugin {plugin!r}: {factory!r} is not a KeyStore subclass")
            if plugin in factories and factories[plugin] is not factory:
                raise BackendError(f"backend plugin {plugin!r} is registered twice "
                                   f"({factories[plugin].__module__} and {factory.__module__})")
            factories[plugin] = factory

        self._pm.hook.pki_register_backends(register=register)
        self._factories = factories

    def names(self) -> list[str]:
        self._register(self._eps())
        return sorted(self._factories)

    def options(self, plugin: str) -> Mapping[str, Any] | None:
        """The settings a plugin's stores take (its `KeyStore.options`), or None if it is not installed."""
        factory = self.factory(plugin)
        return None if factory is None else factory.options

    def factory(self, plugin: str) -> KeyStoreFactory | None:
        if plugin not in self._factories:
            self._register([plugin] if plugin in self._eps() else [])
        if plugin not in self._factories:
            self._register(self._eps())  # registered under another entry point's name, or not at all
        return self._factories.get(plugin)

    def create(self, name: str, plugin: str, settings: Mapping[str, Any], context: StoreContext) -> KeyStore:
        factory = self.factory(plugin)
        if factory is None:
            raise BackendError(f"backend {name}: no backend plugin {plugin!r} is installed "
                               f"(installed: {', '.join(self.names())})")
        return factory(name, settings, context)

