"""The typed facade through which the core reaches plugins. Nothing else calls ``pm.hook``.

Plugins are loaded on request, not at import time: asking for the ``local`` backend loads the entry
point named ``local`` only (a plan that uses files never imports the Vault client). A plugin name no
entry point carries makes every entry point load, since a distribution may register backends under
other names than its entry point's.

The ``pkiascode`` entry points found are remembered per user (``$XDG_CACHE_HOME/pkiascode``, else
``~/.cache/pkiascode``), keyed by the interpreter, its import path, the listing of each directory on
it and the time stamp of every installed distribution's ``entry_points.txt``: installing, removing or
editing a plugin distribution changes that key. Importing ``importlib.metadata`` and reading every
installed distribution costs more than the rest of a small plan.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import os
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import pluggy

from . import hookspecs
from .backend import KeyStore, KeyStoreFactory, StoreContext
from .errors import BackendError

__all__ = ["Plugins", "ENTRY_POINT_GROUP", "entry_points"]

ENTRY_POINT_GROUP = "pkiascode"
_CACHED_ENVIRONMENTS = 8  # interpreters/virtualenvs/import paths remembered at once


def _cache_file() -> Path | None:
    if os.environ.get("PKI_NO_ENTRY_POINT_CACHE"):
        return None
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "pkiascode" / "entry-points.json" if os.path.isabs(base) else None


def _environment_key() -> str:
    """Changes whenever a distribution is installed, removed or has its entry points edited."""
    h = hashlib.sha256(f"{ENTRY_POINT_GROUP}\0{sys.executable}\0{sys.prefix}".encode())
    for entry in sys.path:
        try:
            names = sorted(os.listdir(entry or "."))
        except OSError:
            h.update(b"\0-" + entry.encode(errors="replace"))
            continue
        h.update(b"\0" + entry.encode(errors="replace") + b"\0" + "\0".join(names).encode(errors="replace"))
        for name in names:
            if name.endswith((".dist-info", ".egg-info")):
                try:
                    h.update(b"%d" % os.stat(os.path.join(entry or ".", name, "entry_points.txt")).st_mtime_ns)
                except OSError:
                    h.update(b"-")
    return h.hexdigest()


def _scan_entry_points() -> dict[str, str]:
    import importlib.metadata

    return {ep.name: ep.value for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)}


def entry_points(*, fresh: bool = False) -> dict[str, str]:
    """The ``pkiascode`` entry points installed: name -> ``module:attr``."""
    cache = _cache_file()
    key = _environment_key() if cache is not None else ""
    known: dict[str, Any] = {}  # environment key -> entry points, for the last few environments
    if cache is not None:
        try:
            known = json.loads(cache.read_bytes())["environments"]
            if not isinstance(known, dict):
                known = {}
            hit = known.get(key)
            if isinstance(hit, dict) and not fresh:
                return {str(k): str(v) for k, v in hit.items()}
        except (OSError, ValueError, KeyError, TypeError):
            known = {}
    found = _scan_entry_points()
    if cache is not None:
        known.pop(key, None)
        known[key] = found
        kept = dict(list(known.items())[-_CACHED_ENVIRONMENTS:])  # the most recent last
        try:
            cache.parent.mkdir(parents=True, exist_ok=True)
            tmp = cache.with_name(f".{cache.name}.{os.getpid()}.tmp")
            tmp.write_text(json.dumps({"environments": kept}))
            os.replace(tmp, cache)
        except OSError:
            pass  # a read-only home: scan each time
    return found


def load_entry_point(value: str) -> Any:
    """What ``importlib.metadata.EntryPoint.load`` returns for ``module:attr.attr [extras]``."""
    module, _, attrs = value.split("[", 1)[0].strip().partition(":")
    obj: Any = importlib.import_module(module.strip())
    for attr in filter(None, attrs.strip().split(".")):
        obj = getattr(obj, attr)
    return obj


class Plugins:
    """Loads plugins on request and hands out key-store classes by plugin name."""

    def __init__(self, *, load_entry_points: bool = True, extra: Iterable[object] = ()) -> None:
        self._pm = pluggy.PluginManager("pkiascode")
        self._pm.add_hookspecs(hookspecs)
        self._extra = list(extra)
        self._entry_points: dict[str, str] | None = None if load_entry_points else {}
        self._fresh = False  # entry points scanned in this process, not taken from the cache
        self._loaded: set[str] = set()
        self._factories: dict[str, KeyStoreFactory] = {}
        self._started = False

    def _eps(self) -> dict[str, str]:
        if self._entry_points is None:
            self._entry_points = entry_points()
        return self._entry_points

    def _load(self, name: str) -> Any:
        try:
            return load_entry_point(self._eps()[name])
        except (ImportError, AttributeError):
            if self._fresh:
                raise
            self._fresh = True  # remembered entry points that no longer load: look again
            self._entry_points = entry_points(fresh=True)
            return load_entry_point(self._entry_points[name])

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

