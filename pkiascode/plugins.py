"""The typed facade through which the core reaches plugins. Nothing else calls ``pm.hook``."""

from __future__ import annotations

import importlib.metadata
from collections.abc import Iterable, Mapping
from typing import Any

import pluggy

from . import hookspecs
from .backend import KeyStore, KeyStoreFactory, StoreContext
from .errors import BackendError, ConfigError

__all__ = ["Plugins", "ENTRY_POINT_GROUP"]

ENTRY_POINT_GROUP = "pkiascode"


class Plugins:
    """Loads plugins on request and hands out key-store classes by plugin name."""

    def __init__(self, *, load_entry_points: bool = True, extra: Iterable[object] = ()) -> None:
        self._pm = pluggy.PluginManager("pkiascode")
        self._pm.add_hookspecs(hookspecs)
        self._load_entry_points = load_entry_points
        self._extra = list(extra)
        self._factories: dict[str, KeyStoreFactory] | None = None
        self._owner: dict[str, str] = {}

    def _load(self) -> dict[str, KeyStoreFactory]:
        if self._factories is not None:
            return self._factories
        if self._load_entry_points:
            self._pm.load_setuptools_entrypoints(ENTRY_POINT_GROUP)
        for plugin in self._extra:
            self._pm.register(plugin)
        self._pm.check_pending()
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
        return factories

    def names(self) -> list[str]:
        return sorted(self._load())

    def factory(self, plugin: str) -> KeyStoreFactory | None:
        return self._load().get(plugin)

    def create(self, name: str, plugin: str, settings: Mapping[str, Any], context: StoreContext) -> KeyStore:
        factory = self.factory(plugin)
        if factory is None:
            raise ConfigError("pki.toml", None, f"backend.{name}",
                              f"no backend plugin {plugin!r} is installed (installed: {', '.join(self.names())})")
        return factory(name, settings, context)


def installed_plugin_names() -> list[str]:
    """Entry-point names, without importing anything."""
    return sorted(ep.name for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP))
