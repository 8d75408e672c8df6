"""Threat (security review F2): whoever writes ``.pki/cache`` (a CI cache restored from another
branch) forges the remembered no-op plan ``noop.json``: with a stamp over an empty file list it made
plan and apply say "No changes" while pki.toml had a new certificate, and with its own key store
settings it sent the Vault token to an address of its choosing.

The memo never chooses which files are stamped (they are listed from the state directory) nor how a
key store is reached (pki.toml's settings, every time): both forgeries plan the long way.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import socket
import threading
from pathlib import Path

import pytest

from pkiascode import __version__
from pkiascode.config import config_digest
from helpers import MEMO_PKI as PKI, apply_in_process
from pkiascode.project import Project

NEW_ONE = '\n[certificate.newone]\nissuer = "root"\nhosts = ["newone.internal"]\n'
NOW = dt.datetime.now(dt.timezone.utc).replace(microsecond=0)


@pytest.fixture
def applied(tmp_path: Path) -> Path:
    return apply_in_process(tmp_path, PKI, at=NOW)


def plan(directory: Path, at: dt.datetime = NOW):
    """What `pki plan` does: an empty plan may come from the memo."""
    project = Project(directory / "pki.toml")
    try:
        return project.plan(at=at, remembered=True)
    finally:
        project.close()


def plugin_ids(directory: Path) -> dict[str, str]:
    project = Project(directory / "pki.toml")
    try:
        return project._plugin_ids(project.desired().stores.values())
    finally:
        project.close()


def forge(directory: Path, **fields: object) -> None:
    cache = directory / ".pki" / "cache"
    cache.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(directory / ".pki", 0o700)
    os.chmod(cache, 0o700)
    (cache / "noop.json").write_text(json.dumps(fields))
    os.chmod(cache / "noop.json", 0o600)


def reviewers_memo(directory: Path, **extra: object) -> dict[str, object]:
    """The reviewer's forgery: the committed pki.toml's digest, the stamp of an EMPTY file list."""
    memo: dict[str, object] = {
        "schema": 1, "version": __version__, "config_digest": config_digest((directory / "pki.toml").read_bytes()),
        "state_digest": "0" * 64, "files": [], "stamp": hashlib.sha256().hexdigest(), "csrs": {}, "stores": {},
        "refs": {}, "quiet_until": None}
    memo.update(extra)
    return memo


def current_layout(memo: dict[str, object]) -> dict[str, object]:
    """The same forgery in the memo's current layout (no file list, no store settings of its own)."""
    from pkiascode import memo as memo_module

    out = {k: v for k, v in memo.items() if k not in ("files", "stores")}
    out["schema"] = memo_module.SCHEMA
    out.setdefault("plugins", {})
    return out


@pytest.mark.parametrize("layout", ["reviewer", "current"])
def test_a_forged_memo_over_no_files_does_not_hide_a_new_certificate(applied, layout):
    (applied / "pki.toml").write_text(PKI + NEW_ONE)
    memo = reviewers_memo(applied)
    forge(applied, **(memo if layout == "reviewer" else current_layout(memo)))
    p = plan(applied)
    assert [(c.action.value, c.name) for c in p.changes] == [("create", "newone")]


class _Listener:
    """A TCP listener on 127.0.0.1 that counts connections and records what it is sent."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.connections = 0
        self.received = b""
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            self.connections += 1
            conn.settimeout(1)
            try:
                self.received += conn.recv(65536)
            except OSError:
                pass
            conn.close()

    def close(self) -> None:
        self.stop.set()
        self.thread.join(5)
        self.sock.close()


@pytest.mark.parametrize("layout", ["reviewer", "current"])
def test_a_forged_memo_never_chooses_where_a_key_store_connects(applied, layout, monkeypatch):
    """The reviewer's memo named a Vault store at its own address with TLS verification off; pki.toml
    has no Vault at all. Nothing connects there and the token is never sent."""
    monkeypatch.delenv("VAULT_ADDR", raising=False)
    monkeypatch.setenv("VAULT_TOKEN", "s.JOB-TOKEN-777")
    listener = _Listener()
    try:
        memo = reviewers_memo(applied, refs={"vault": [["transit:pki.root-00000000@1", "generated"]]},
                              stores={"vault": {"plugin": "vault", "settings": {
                                  "address": f"https://127.0.0.1:{listener.port}", "tls_verify": False}}})
        forge(applied, **(memo if layout == "reviewer" else current_layout(memo)))
        p = plan(applied)
    finally:
        listener.close()
    assert p.empty  # planned the long way: nothing to do, and no Vault asked
    assert listener.connections == 0 and b"JOB-TOKEN" not in listener.received


def test_a_forged_horizon_fools_at_most_plan_never_apply(applied):
    """The remaining trust (README, `pkiascode.memo`): whoever can write this user's ``.pki/`` can
    push the memo's horizon past a renewal window, and `pki plan` then answers "no changes" from it;
    `pki apply` never reads the memo: it plans the long way and renews what is due."""
    from pkiascode.apply import execute

    assert plan(applied).empty
    memo_path = applied / ".pki" / "cache" / "noop.json"
    memo = json.loads(memo_path.read_text())
    assert memo["quiet_until"] is not None
    memo["quiet_until"] = "2999-01-01T00:00:00+00:00"
    memo_path.write_text(json.dumps(memo))
    later = NOW + dt.timedelta(days=85)  # web (90d, renew_before 10d) is due
    assert plan(applied, later).empty  # (plan trusts the memo: a .pki/ private to the user)
    serial = json.loads((applied / "state/inventory.json").read_text())["objects"]["web"]["serial"]
    project = Project(applied / "pki.toml")
    try:
        the_plan = project.plan(at=later)  # what `pki apply` plans
        assert ("renew", "web") in [(c.action.value, c.name) for c in the_plan.changes]
        execute(project, the_plan, commit=False)
    finally:
        project.close()
    assert json.loads((applied / "state/inventory.json").read_text())["objects"]["web"]["serial"] != serial
