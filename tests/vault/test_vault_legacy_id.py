"""A repository from before ``[pki] id`` whose keys are already in Vault (issue 11, item 4), against a
real OpenBao: its next apply gives pki.toml an id AND ``legacy_keys = true`` in the Vault backend's
table, both shown in every plan format first and committed with state/; the old keys keep working,
new keys go into the id's namespace, and the lock moves there, away from the unscoped lock that
every PKI without an id on that Vault shares (the apply that adds the id takes both).

A pre-id repository is made as an old version made it: keys made with no id (an apply while pki.toml
was edited, which adds none), inventory without ``pki_id``, pki.toml without ``[pki] id``.
"""

from __future__ import annotations

import json
import re
import secrets
from pathlib import Path
from typing import Any

import pytest

from helpers import SMALL_PKI, Pki, audit_key_refs, clean_env, git, load_cert, load_key, spki_der, write_project

pytestmark = pytest.mark.vault

WEB = '\n[certificate.web]\nissuer = "inter"\ncommon_name = "web"\nhosts = ["web.example"]\n'
HOLDER = {"actor": "another pki", "host": "elsewhere", "pid": "1", "since": "2026-01-01T00:00:00Z"}


def _toml(prefix: str, extra: str = "", backend: str = "") -> str:
    pki = SMALL_PKI.replace("[defaults]\n", '[defaults]\nbackend = "vault"\n', 1)
    return (f'# a PKI from before ids\n[backend.vault]  # shared with other teams\nplugin = "vault"\n{backend}'
            f'prefix = "{prefix}"\n\n' + pki + extra)


def _refs(repo: Path) -> dict[str, str]:
    objects = json.loads((repo / "state" / "inventory.json").read_text())["objects"]
    return {name: obj["key"]["ref"] for name, obj in objects.items()}


def _pre_id_origin(tmp_path: Path, name: str, prefix: str, env: dict[str, str], backend: str = "") -> Path:
    """A bare origin holding a PKI applied by a version without ids, then a merged change (web)."""
    origin = tmp_path / f"{name}.git"
    git(tmp_path, "init", "-q", "--bare", "-b", "main", str(origin))
    seed = tmp_path / f"{name}-seed"
    git(tmp_path, "init", "-q", "-b", "main", str(seed))
    write_project(seed, _toml(prefix, backend=backend))
    git(seed, "add", "-A")
    git(seed, "commit", "-q", "-m", "pki.toml")
    (seed / "pki.toml").write_text(_toml(prefix, backend=backend) + "# edited\n")  # (not HEAD's: apply adds no id)
    Pki(seed, env).apply()
    git(seed, "commit", "-q", "-am", "pki.toml")
    assert "pki_id" not in json.loads((seed / "state" / "inventory.json").read_text())
    refs = list(_refs(seed).values()) + sorted(audit_key_refs(seed))
    assert refs and all(r.startswith((f"transit:{prefix}-", f"kv:{prefix}/keys/")) for r in refs), refs
    (seed / "pki.toml").write_text(_toml(prefix, WEB, backend))
    git(seed, "commit", "-q", "-am", "add web")
    git(seed, "push", "-q", str(origin), "HEAD:refs/heads/main")
    return origin


def _clone(tmp_path: Path, origin: Path, name: str, env: dict[str, str]) -> tuple[Path, Pki]:
    directory = tmp_path / name
    git(tmp_path, "clone", "-q", "-b", "main", str(origin), str(directory))
    return directory, Pki(directory, env)


def _unscoped_lock(tmp_path: Path, vault: Any, prefix: str) -> Any:
    """The lock every PKI without an id at ``prefix`` takes (another team's pre-id repository)."""
    from pkiascode.backend import StoreContext
    from pkiascode_vault import VaultKeyStore

    store = VaultKeyStore("vault", {"address": vault.address, "prefix": prefix},
                          StoreContext(tmp_path, tmp_path / ".pki-other", None))
    return store, store.lock("state", HOLDER)


def test_a_pre_id_repository_gets_an_id_and_legacy_keys_and_its_old_keys_keep_working(tmp_path, vault_env):
    env = clean_env(VAULT_ADDR=vault_env.address, VAULT_TOKEN=vault_env.token)
    prefix = f"legacy-{secrets.token_hex(4)}"
    origin = _pre_id_origin(tmp_path, "a", prefix, env)
    job, pki = _clone(tmp_path, origin, "job", env)
    old = _refs(job)
    old_audit = audit_key_refs(job)

    # the plan shows both edits, in every format, offline (a pull request's job) too
    edit = ("apply edits pki.toml, in its commit: a random [pki] id, which scopes this PKI's keys and lock in "
            "shared key stores; and legacy_keys = true in [backend.vault]")
    for args in (["plan"], ["plan", "--format", "markdown"], ["plan", "--offline"]):
        assert edit in pki(*args).stdout, args
    assert any(w.startswith(edit) for w in json.loads(pki("plan", "--format", "json").stdout)["warnings"])

    # the apply that adds the id locks in its new namespace AND takes the unscoped lock the repository
    # took until now (review F-K): while another apply without the id (another clone's, drawing
    # another id) holds it, this one stops before anything changes
    head = git(job, "rev-parse", "HEAD")
    other, lock = _unscoped_lock(tmp_path, vault_env, prefix)
    try:
        with lock:
            r = pki("apply", "--auto-approve", "--push", "--push-to", "origin/main", expect=1)
    finally:
        other.close()
    assert "state 'state' is being applied by another pki@elsewhere (pid 1)" in r.stderr, r
    assert git(job, "rev-parse", "HEAD") == head and git(job, "status", "--porcelain").strip() == ""
    applied = pki.apply("--push", "--push-to", "origin/main")
    assert "Pushed" in applied.stdout, applied
    text = git(job, "show", "origin/main:pki.toml")
    pki_id = re.search(r'^id = "([a-z0-9]+)"', text, re.M).group(1)
    assert text == (_toml(prefix, WEB).replace(
        f'prefix = "{prefix}"\n',
        f'prefix = "{prefix}"\nlegacy_keys = true # keys made before the [pki] id keep their names: see the README, '
        "'Several PKIs on one Vault'\n")
        + f'\n[pki]\nid = "{pki_id}" # scopes this PKI\'s keys and locks in shared key stores; never change it\n')
    assert git(job, "show", "--name-only", "--format=", "HEAD").split().count("pki.toml") == 1  # with state/
    assert json.loads(git(job, "show", "origin/main:state/inventory.json"))["pki_id"] == pki_id
    new = _refs(job)
    assert {n: r for n, r in new.items() if n != "web"} == old  # the old keys stay where they are
    assert new["web"].startswith(f"kv:{prefix}/{pki_id}/keys/web-"), new  # a new key: in the namespace
    assert audit_key_refs(job) == old_audit

    # a fresh clone: nothing to do, an old key exports and is its certificate's, no orphan
    fresh, fresh_pki = _clone(tmp_path, origin, "fresh", env)
    assert fresh_pki.plan_exit("--detailed-exitcode") == 0
    out = tmp_path / "export"
    fresh_pki.ok("export", "client", "--dir", str(out))
    assert spki_der(load_key(out / "client-key.pem")) == spki_der(load_cert(out / "client.pem"))
    rows = json.loads(fresh_pki.ok("keys", "--format", "json").stdout)
    assert "orphan" not in {r["status"] for r in rows}, rows
    # both namespaces: the keys made before the id that state uses are listed, in use (never orphans)
    users = {ref: f"{'authority' if n in ('root', 'inter') else 'certificate'}.{n}" for n, ref in new.items()}
    users.update({ref: "the audit log" for ref in audit_key_refs(fresh)})
    assert {r["key"]: r["entry"] for r in rows if r["status"] == "in use"} == users, rows

    # --replace moves a key made before the id into the namespace; the old one goes
    fresh_pki.apply("--push", "--replace", "client")
    moved = _refs(fresh)["client"]
    assert moved.startswith(f"kv:{prefix}/{pki_id}/keys/client-"), moved
    status, _ = vault_env.api("GET", f"secret/data/{old['client'].split(':', 1)[1]}", ok=False)
    assert status == 404
    assert git(fresh, "show", "HEAD:pki.toml") == text  # nothing more is written into pki.toml


def test_an_apply_killed_after_its_transaction_is_completed_with_the_id_and_legacy_keys(tmp_path, vault_env):
    env = clean_env(VAULT_ADDR=vault_env.address, VAULT_TOKEN=vault_env.token)
    prefix = f"legacy-{secrets.token_hex(4)}"
    origin = _pre_id_origin(tmp_path, "b", prefix, env, backend='lock_ttl = "1s"\n')
    job, pki = _clone(tmp_path, origin, "job", env)
    before = (job / "pki.toml").read_text()
    killed = pki("apply", "--auto-approve", env={**env, "PKI_TEST_CRASH_AT": "after-txn"})
    assert killed.returncode == 137, killed
    assert (job / "pki.toml").read_text() == before
    # the next run finishes it, pki.toml and all (its key stores opened with the journal's pki.toml: the
    # id and legacy_keys), and commits them together
    again = pki.apply("--lock-timeout", "20s")  # (the dead run's lease runs out)
    assert "completed an interrupted apply" in again.stderr, again
    text = (job / "pki.toml").read_text()
    assert "legacy_keys = true" in text and "\n[pki]\nid = " in text
    pki_id = re.search(r'^id = "([a-z0-9]+)"', text, re.M).group(1)
    assert git(job, "status", "--porcelain").strip() == ""
    assert git(job, "show", "HEAD:pki.toml") == text
    assert _refs(job)["web"].startswith(f"kv:{prefix}/{pki_id}/keys/web-")
    assert pki.plan_exit("--detailed-exitcode") == 0
    out = tmp_path / "export"
    pki.ok("export", "client", "--dir", str(out))
    assert spki_der(load_key(out / "client-key.pem")) == spki_der(load_cert(out / "client.pem"))
