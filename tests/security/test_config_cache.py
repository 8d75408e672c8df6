"""Threat: whoever can write ``.pki/cache`` (a CI cache restored from another branch, a directory
made group-writable by ``umask 002``) runs code as the user of ``pki apply``, or makes it issue from
another pki.toml than the committed one (issue 10, first finding).

pki.toml is parsed on every run and nothing under ``.pki/cache`` is read: a real pickle whose
unpickling would create a file, a pickled `Desired` with other SANs and no name constraints under
the committed file's digest (what the old cache trusted), and assorted junk change nothing.
"""

from __future__ import annotations

import dataclasses
import os
import pickle
import re
from pathlib import Path

import pytest
from cryptography import x509

from helpers import ROOT as SOURCE_ROOT
from helpers import Pki, new_repo, state_cert

PKI_TOML = """\
[authority.root]
common_name = "Root"
name_constraints = { permitted = ["example.com"] }

[certificate.web]
issuer = "root"
hosts = ["web.example.com"]
"""
EVIL_TOML = PKI_TOML.replace('name_constraints = { permitted = ["example.com"] }\n', "").replace(
    '"web.example.com"', '"web.example.com", "login.bank.example"')


class _OpensAFile:
    """Unpickling this calls ``open(marker, "w")``: a file appears iff the pickle is loaded."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (open, (str(self.marker), "w"))


def _old_cache_name(digest: str) -> str:
    """Where the removed parse cache kept the parse of the pki.toml with this digest."""
    return f"config-{digest[:32]}.pickle"


def _evil_desired(tmp_path: Path, digest: str) -> object:
    """A real `Desired` of EVIL_TOML, claiming to be the parse of the committed pki.toml."""
    from pkiascode.config import load_config
    from pkiascode.plugins import Plugins

    path = tmp_path / "evil" / "pki.toml"
    path.parent.mkdir()
    path.write_text(EVIL_TOML)
    desired = load_config(path, options_for=Plugins().options)
    return dataclasses.replace(desired, digest=digest)


@pytest.mark.parametrize("poison", ["code", "substitution"])
def test_nothing_under_pki_cache_is_read(tmp_path, env, poison):
    from pkiascode.config import config_digest

    repo = new_repo(tmp_path / "repo", PKI_TOML, commit=True)
    cache = repo / ".pki" / "cache"
    cache.mkdir(parents=True, mode=0o700)  # (a group-writable one is refused outright, as it should be)
    marker = tmp_path / "marker"
    digest = config_digest((repo / "pki.toml").read_bytes())
    payload = _OpensAFile(marker) if poison == "code" else _evil_desired(tmp_path, digest)
    for name in (_old_cache_name(digest), _old_cache_name("0" * 64), "config.pickle", "desired.pickle"):
        (cache / name).write_bytes(pickle.dumps(payload, protocol=pickle.HIGHEST_PROTOCOL))
    # and junk: a damaged pickle, a directory and a FIFO (reading it would wait forever)
    (cache / _old_cache_name("1" * 64)).write_bytes(b"\x80\x05not a pickle")
    (cache / _old_cache_name("2" * 64)).mkdir()
    os.mkfifo(cache / _old_cache_name("3" * 64))
    assert not marker.exists()

    pki = Pki(repo)
    pki("validate", expect=0, timeout=60)
    plan = pki.plan_json()
    assert sorted(c["name"] for c in plan["changes"]) == ["root", "web"]
    pki.apply(timeout=120)

    assert not marker.exists()
    web = state_cert(repo, "web")
    sans = web.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.DNSName) == ["web.example.com"]
    constraints = state_cert(repo, "root").extensions.get_extension_for_class(x509.NameConstraints).value
    assert [n.value for n in constraints.permitted_subtrees] == ["example.com"]
    assert pki.plan_exit() == 0
    assert not marker.exists()


def test_no_module_unpickles_or_evaluates():
    """Nothing read from disk is unpickled, unmarshalled or evaluated: none of these is used at all."""
    pattern = re.compile(r"^\s*(import|from)\s+(pickle|_pickle|marshal|shelve|dill|cloudpickle)\b"
                         r"|\b(pickle|marshal|shelve)\.(loads?|Unpickler|open)\b|\beval\(|\bexec\(", re.M)
    sources = [p for d in ("pkiascode", "plugins") for p in (SOURCE_ROOT / d).rglob("*.py")]
    assert len(sources) > 20
    found = [f"{p.relative_to(SOURCE_ROOT)}: {m.group(0).strip()}" for p in sources
             for m in pattern.finditer(p.read_text(encoding="utf-8"))]
    assert found == []
