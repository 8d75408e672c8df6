"""GitOps apply against a real OpenBao (issue 11): pipelines are fresh clones of a bare origin, every
key is in Vault, and the branch on the remote is the truth.

- two pipelines from the same base: the first lands; the second, which waited for the Vault lock,
  is refused (its base is behind) and leaves nothing; a push that another push beat between the
  fetch and the push is undone: its keys deleted from Vault, its branch and state/ restored;
- after each, a fresh clone of the remote: every key its state names is in Vault and is the
  certificate's, the plan is what is still to do, and `pki keys` shows no orphan.
"""

from __future__ import annotations

import json
import secrets
import subprocess
from pathlib import Path
from typing import Any

import pytest

from helpers import SMALL_PKI, Pki, audit_key_refs, clean_env, git, load_cert, load_key, spki_der, write_project

pytestmark = pytest.mark.vault


def _toml(prefix: str, pki_id: str, extra: str = "") -> str:
    return (f'[pki]\nid = "{pki_id}"\n\n[backend.vault]\nplugin = "vault"\nprefix = "{prefix}"\n\n'
            + SMALL_PKI.replace("[defaults]\n", '[defaults]\nbackend = "vault"\n', 1) + extra)


WEB = '\n[certificate.web]\nissuer = "inter"\ncommon_name = "web"\nhosts = ["web.example"]\n'


class Pipeline:
    """A fresh clone of the origin's main, as a CI job has it."""

    def __init__(self, tmp_path: Path, origin: Path, name: str, env: dict[str, str]) -> None:
        self.dir = tmp_path / name
        git(tmp_path, "clone", "-q", "-b", "main", str(origin), str(self.dir))
        self.pki = Pki(self.dir, env)

    def head(self) -> str:
        return git(self.dir, "rev-parse", "HEAD").strip()

    def keys(self) -> list[dict[str, Any]]:
        return json.loads(self.pki.ok("keys", "--format", "json").stdout)


@pytest.fixture
def setup(tmp_path: Path, vault_env: Any) -> tuple[Path, dict[str, str], str]:
    env = clean_env(VAULT_ADDR=vault_env.address, VAULT_TOKEN=vault_env.token)
    prefix, pki_id = f"gitops-{secrets.token_hex(4)}", secrets.token_hex(6)
    origin = tmp_path / "origin.git"
    git(tmp_path, "init", "-q", "--bare", "-b", "main", str(origin))
    seed = tmp_path / "seed"
    git(tmp_path, "init", "-q", "-b", "main", str(seed))
    write_project(seed, _toml(prefix, pki_id))
    git(seed, "add", "-A")
    git(seed, "commit", "-q", "-m", "pki.toml")
    git(seed, "push", "-q", str(origin), "HEAD:refs/heads/main")
    first = Pipeline(tmp_path, origin, "base", env)
    first.pki.apply("--push", "--push-to", "origin/main")
    # a merged change: a new leaf
    git(seed, "pull", "-q", "--ff-only", str(origin), "main")
    (seed / "pki.toml").write_text(_toml(prefix, pki_id, WEB))
    git(seed, "commit", "-q", "-am", "add web")
    git(seed, "push", "-q", str(origin), "HEAD:refs/heads/main")
    return origin, env, prefix


def _check_remote(tmp_path: Path, origin: Path, env: dict[str, str], name: str, *, plan_exit: int) -> Pipeline:
    """A fresh clone of the remote: its keys exist and are its certificates' keys, no orphan."""
    fresh = Pipeline(tmp_path, origin, name, env)
    assert fresh.pki.plan_exit("--detailed-exitcode") == plan_exit
    rows = fresh.keys()
    assert {r["status"] for r in rows} <= {"in use", "pending deletion"}, rows
    inv = json.loads((fresh.dir / "state" / "inventory.json").read_text())["objects"]
    used = [r["entry"] for r in rows if r["status"] == "in use"]
    assert used.count("the audit log") == 1, rows  # the audit log's pinned key, in use too
    assert {e.split(".", 1)[1] for e in used if e != "the audit log"} == set(inv)
    out = fresh.dir.parent / f"{name}-export"
    fresh.pki.ok("export", "client", "--dir", str(out))
    assert spki_der(load_key(out / "client-key.pem")) == spki_der(load_cert(out / "client.pem"))
    return fresh


def test_two_pipelines_from_one_base_one_lands_the_other_leaves_nothing(tmp_path, setup):
    origin, env, _ = setup
    a = Pipeline(tmp_path, origin, "a", env)
    b = Pipeline(tmp_path, origin, "b", env)  # the same base
    before_b = b.head()
    r = a.pki.apply("--push", "--push-to", "origin/main")
    assert "Pushed" in r.stdout
    keys_after_a = {r["key"] for r in a.keys()}
    # b got the lock after a: its base is behind now
    r = b.pki("apply", "--auto-approve", "--push", "--push-to", "origin/main", "--lock-timeout", "30s")
    assert r.returncode == 1 and "state is behind origin/main: re-plan on the new tip" in r.stderr, r
    assert b.head() == before_b and git(b.dir, "status", "--porcelain").strip() == ""
    assert {r["key"] for r in a.keys()} == keys_after_a  # b made no key
    _check_remote(tmp_path, origin, env, "fresh", plan_exit=0)


def test_a_push_beaten_between_fetch_and_push_is_undone_in_vault(tmp_path, setup):
    origin, env, _ = setup
    b = Pipeline(tmp_path, origin, "b", env)
    human = Pipeline(tmp_path, origin, "human", env)
    (human.dir / "NOTES.md").write_text("a merge that lands while b applies\n")
    git(human.dir, "add", "NOTES.md")
    git(human.dir, "commit", "-q", "-m", "notes")
    # b's pre-push hook: the human's push lands first, so b's push (made from the old tip) is rejected
    hook = b.dir / ".git" / "hooks" / "pre-push"
    hook.write_text(f"#!/bin/sh\ngit -C '{human.dir}' push -q origin HEAD:main >&2\n")
    hook.chmod(0o755)
    keys_before = {r["key"] for r in b.keys()}
    head = b.head()
    r = b.pki("apply", "--auto-approve", "--push", "--push-to", "origin/main")
    assert r.returncode == 1 and "another apply landed first" in r.stderr, r
    assert b.head() == head and git(b.dir, "status", "--porcelain", "--untracked-files=all").strip() == ""
    assert {r["key"] for r in b.keys()} == keys_before  # the web key b made is gone from Vault
    assert subprocess.run(["git", "-C", str(b.dir), "cat-file", "-e", "origin/main:NOTES.md"]).returncode == 0
    # the remote: the change is still to do, every key it names exists
    _check_remote(tmp_path, origin, env, "fresh1", plan_exit=2)
    hook.unlink()
    # re-run, as the pipeline does: a new clone of the new tip
    again = Pipeline(tmp_path, origin, "again", env)
    assert "Pushed" in again.pki.apply("--push", "--push-to", "origin/main").stdout
    fresh = _check_remote(tmp_path, origin, env, "fresh2", plan_exit=0)
    assert "certificate.web" in {r["entry"] for r in fresh.keys()}


def test_the_first_apply_of_a_pki_without_id_makes_its_keys_and_lock_in_the_new_namespace(tmp_path, vault_env):
    env = clean_env(VAULT_ADDR=vault_env.address, VAULT_TOKEN=vault_env.token)
    prefix = f"gitops-{secrets.token_hex(4)}"
    toml = _toml(prefix, "x").replace('[pki]\nid = "x"\n\n', "")
    origin = tmp_path / "origin.git"
    git(tmp_path, "init", "-q", "--bare", "-b", "main", str(origin))
    seed = tmp_path / "seed"
    git(tmp_path, "init", "-q", "-b", "main", str(seed))
    write_project(seed, toml)
    git(seed, "add", "-A")
    git(seed, "commit", "-q", "-m", "pki.toml")
    git(seed, "push", "-q", str(origin), "HEAD:refs/heads/main")
    job = Pipeline(tmp_path, origin, "job", env)
    job.pki.apply("--push", "--push-to", "origin/main")
    text = git(job.dir, "show", "origin/main:pki.toml")
    pki_id = text.split('[pki]\nid = "', 1)[1].split('"', 1)[0]
    refs = [o["key"]["ref"] for o in json.loads((job.dir / "state" / "inventory.json").read_text())["objects"].values()]
    refs += sorted(audit_key_refs(job.dir))  # the audit log's key, in the namespace too
    assert refs and all(f".{pki_id}." in r or f"/{pki_id}/keys/" in r for r in refs), (pki_id, refs)
    fresh = _check_remote(tmp_path, origin, env, "fresh", plan_exit=0)
    assert len(fresh.keys()) == len(refs)
