"""Plugins: the built-in backends register like a third party's, a tiny plugin declared here works
end to end, and every hook has a test."""

from __future__ import annotations

import datetime as dt
import importlib.metadata
import inspect
import re
import subprocess
import sys
import threading
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding

from pkiascode import hookspecs
from pkiascode.apply import execute
from pkiascode.backend import KeyRef, KeyRequest, KeyStore, StoreContext
from pkiascode.errors import BackendError, KeyNotExportable, KeyNotFound
from pkiascode.hookspecs import hookimpl
from pkiascode.keytypes import generate_private_key
from pkiascode.signers import external_key
from pkiascode.plugins import ENTRY_POINT_GROUP, Plugins
from pkiascode.project import Project
from pkiascode.testing import KeyStoreConformance

_KEYS: dict[str, Any] = {}  # the "memory" store's keys, shared by its instances in this process


class MemoryKeyStore(KeyStore):
    """A third party's store, in a few lines: keys in a dict."""

    plugin = "memory"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._lock = threading.Lock()

    def _add(self, request: KeyRequest, key: Any, origin: str) -> KeyRef:
        with self._lock:
            # (a key made for `exportable = false` says so in its reference)
            key_id = f"{request.name}-{request.suffix or len(_KEYS)}-{len(_KEYS)}{'' if request.exportable else '-sealed'}"
            _KEYS[key_id] = key
        return KeyRef(self.name, key_id, origin)

    def generate(self, request: KeyRequest) -> KeyRef:
        return self._add(request, generate_private_key(request.key_type), "generated")

    def import_key(self, request: KeyRequest, key: Any) -> KeyRef:
        return self._add(request, key, "imported")

    def _get(self, ref: KeyRef) -> Any:
        try:
            return _KEYS[ref.id]
        except KeyError:
            raise KeyNotFound(f"backend {self.name}: no key {ref.id}") from None

    def signer(self, ref: KeyRef) -> Any:
        key = self._get(ref)
        if self.is_exportable(ref):
            return key
        # kept inside: a signer that signs and reveals nothing
        rsa_or_ec = not isinstance(key, ed25519.Ed25519PrivateKey)

        def sign(data: bytes, algorithm: Any) -> bytes:
            if isinstance(key, ec.EllipticCurvePrivateKey):
                return key.sign(data, ec.ECDSA(algorithm))
            return key.sign(data, padding.PKCS1v15(), algorithm) if rsa_or_ec else key.sign(data)

        return external_key(key.public_key(), sign, label=f"memory:{ref.id}")

    def public_key(self, ref: KeyRef) -> Any:
        return self._get(ref).public_key()

    def export(self, ref: KeyRef) -> Any:
        if not self.is_exportable(ref):
            raise KeyNotExportable(f"backend {self.name}: key {ref.id} is not exportable")
        return self._get(ref)

    def is_exportable(self, ref: KeyRef) -> bool:
        return not ref.id.endswith("-sealed")

    def list_keys(self) -> list[KeyRef]:
        return [KeyRef(self.name, key_id) for key_id in sorted(_KEYS)]

    def missing(self, refs: Iterable[KeyRef]) -> set[KeyRef]:
        return {r for r in refs if r.id not in _KEYS}

    def delete(self, ref: KeyRef) -> None:
        _KEYS.pop(ref.id, None)


class MemoryPlugin:
    @hookimpl
    def pki_register_backends(self, register: Any) -> None:
        register("memory", MemoryKeyStore)


class TestMemoryStoreConformance(KeyStoreConformance):
    """The shared suite runs against a third party's store as it does against ours."""

    @pytest.fixture
    def store(self, tmp_path: Path) -> KeyStore:
        return MemoryKeyStore("mem", {}, StoreContext(tmp_path, tmp_path / ".pki"))


def test_every_hook_has_a_test() -> None:
    hooks = {name for name, _ in inspect.getmembers(hookspecs, inspect.isfunction) if name.startswith("pki_")}
    assert hooks == {"pki_register_backends"}
    source = Path(__file__).read_text()
    # implemented here as a plugin would (a hookimpl), by a plugin the tests below register
    assert all(re.search(rf"@hookimpl\n\s+def {hook}\(", source) for hook in hooks)


def test_the_built_in_backends_register_through_entry_points() -> None:
    names = {ep.name: ep.value for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)}
    assert names == {"local": "pkiascode_local", "vault": "pkiascode_vault", "pkcs11": "pkiascode_pkcs11"}
    assert Plugins().names() == ["local", "pkcs11", "vault"]


def test_a_plan_on_local_keys_loads_no_other_plugin() -> None:
    code = ("import sys; from pkiascode.plugins import Plugins; p = Plugins(); p.factory('local'); "
            "print(sorted(m for m in sys.modules if m.startswith(('pkiascode_', 'hvac', 'pkcs11'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "['pkiascode_local']"


def test_a_plugin_declared_here_plans_and_applies(tmp_path: Path) -> None:
    (tmp_path / "pki.toml").write_text(
        '[pki]\ncommit = false\n\n[backend.mem]\nplugin = "memory"\n\n[defaults]\nbackend = "mem"\n'
        'key = "ecdsa-p256"\n\n[authority.root]\ncommon_name = "Root"\n\n'
        '[certificate.web]\nissuer = "root"\nhosts = ["web.internal"]\n')
    plugins = Plugins(extra=[MemoryPlugin()])
    project = Project(tmp_path / "pki.toml", plugins=plugins)
    now = dt.datetime.now(dt.timezone.utc).replace(microsecond=0)
    plan = project.plan(at=now)
    assert [c.action.value for c in plan.changes] == ["create", "create"]
    execute(project, plan, commit=False)
    project = Project(tmp_path / "pki.toml", plugins=plugins)
    assert project.plan(at=now).empty
    inventory = (tmp_path / "state" / "inventory.json").read_text()
    assert '"backend": "mem"' in inventory and '"plugin": "memory"' in inventory


def test_an_unknown_plugin_is_a_config_error(tmp_path: Path) -> None:
    from pkiascode.errors import ConfigError

    (tmp_path / "pki.toml").write_text('[backend.x]\nplugin = "nosuch"\n')
    with pytest.raises(ConfigError, match=r"pki.toml:2: backend.x.plugin: no backend plugin 'nosuch'"):
        Project(tmp_path / "pki.toml", plugins=Plugins(extra=[MemoryPlugin()])).desired()


def test_a_name_registered_twice_or_not_a_key_store_is_refused() -> None:
    class Twice:
        @hookimpl
        def pki_register_backends(self, register: Any) -> None:
            register("memory", type("Other", (MemoryKeyStore,), {}))

    with pytest.raises(BackendError, match="registered twice"):
        Plugins(load_entry_points=False, extra=[MemoryPlugin(), Twice()]).factory("memory")

    class Wrong:
        @hookimpl
        def pki_register_backends(self, register: Any) -> None:
            register("wrong", object)

    with pytest.raises(BackendError, match="not a KeyStore subclass"):
        Plugins(load_entry_points=False, extra=[Wrong()]).factory("wrong")


# -- nothing outside the project ----------------------------------------------------------------

def test_plugins_are_found_without_writing_outside_the_project(tmp_path: Path) -> None:
    """No cache in the user's home: a plan writes nothing under $HOME or $XDG_CACHE_HOME, and a
    distribution installed afterwards (a dist-info on the import path) is found at once."""
    import json
    import os

    home, cache, site = tmp_path / "home", tmp_path / "cache", tmp_path / "site"
    for d in (home, cache, site):
        d.mkdir()
    env = {**os.environ, "HOME": str(home), "XDG_CACHE_HOME": str(cache),
           "PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)}
    probe = "import json; from pkiascode.plugins import Plugins; print(json.dumps(Plugins().names()))"

    def names() -> list[str]:
        return json.loads(subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                                         check=True, env=env).stdout)

    assert names() == ["local", "pkcs11", "vault"]
    (site / "pki_memory_plugin.py").write_text(
        "from pkiascode.hookspecs import hookimpl\n"
        "from pkiascode.backend import KeyStore\n"
        "class Mem(KeyStore):\n    plugin = 'mem'\n"
        "@hookimpl\ndef pki_register_backends(register):\n    register('mem', Mem)\n")
    dist = site / "pki_memory_plugin-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: pki-memory-plugin\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[pkiascode]\nmem = pki_memory_plugin\n")
    assert names() == ["local", "mem", "pkcs11", "vault"]
    assert list(home.iterdir()) == [] and list(cache.iterdir()) == []
