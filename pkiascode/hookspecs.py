"""Hook specifications: how a plugin adds to pkiascode.

A plugin is a module registered under the ``pkiascode`` entry-point group in its distribution's
metadata, e.g. ``[project.entry-points.pkiascode] mystore = "mypackage.pki_plugin"``. pkiascode
loads those modules explicitly when it needs backends (never at import time) and calls their hooks
through `pkiascode.plugins.Plugins`. The built-in backends (``local``, ``vault``, ``pkcs11``) are
plugins registered exactly this way.

Keep plugin modules light: import heavy client libraries inside the key store's methods, so a
``pki plan`` that does not touch a store never pays for them.
"""

from __future__ import annotations

from typing import Protocol

import pluggy

from .backend import KeyStoreFactory

__all__ = ["hookspec", "hookimpl", "BackendRegistry", "pki_register_backends"]

hookspec = pluggy.HookspecMarker("pkiascode")
hookimpl = pluggy.HookimplMarker("pkiascode")


class BackendRegistry(Protocol):
    def __call__(self, plugin: str, factory: KeyStoreFactory) -> None:
        """Offer ``factory`` for ``plugin = "<plugin>"`` tables in pki.toml."""


@hookspec
def pki_register_backends(register: BackendRegistry) -> None:
    """Register key-store classes.

    Called once per process with a ``register(plugin_name, KeyStoreSubclass)`` callable. A name
    registered twice is an error naming both plugins.
    """
