"""The audit key in Vault Transit (issue 10.9), against a real OpenBao (`bao server -dev` on
127.0.0.1): made in the store of the root's key, non-exportable, ed25519; every head is signed in
Vault, and a rewritten chain fails `pki audit verify`."""

from __future__ import annotations

import json
import re
import secrets
from pathlib import Path

import pytest

from helpers import SMALL_PKI, Pki, clean_env, commit_all, git, git_init, write_project

from pkiascode import audit, auditsign
from pkiascode.project import Project

# the real OpenBao of tests/vault (a dev server on 127.0.0.1), used here as it is there
from vault.conftest import bao_server, vault_env  # noqa: F401

pytestmark = pytest.mark.vault

SIGS = "state/audit-signatures.json"


def test_the_audit_key_is_a_non_exportable_transit_key_and_a_rewritten_chain_fails(vault_env, tmp_path):
    prefix = f"audit-{secrets.token_hex(4)}"
    repo = git_init(tmp_path / "repo")
    write_project(repo, f'[backend.vault]\nplugin = "vault"\nprefix = "{prefix}"\n\n'
                  + SMALL_PKI.replace("[defaults]\n", '[defaults]\nbackend = "vault"\n', 1))
    commit_all(repo)
    pki = Pki(repo, clean_env(VAULT_ADDR=vault_env.address, VAULT_TOKEN=vault_env.token))
    pki.apply()
    auditsign.seal(Project(repo / "pki.toml"))  # what apply does once the seam is wired (idempotent)
    if git(repo, "status", "--porcelain"):
        commit_all(repo, "audit head signed")

    sigs = json.loads((repo / SIGS).read_text())
    pin = sigs["keys"][0]
    assert pin["backend"] == "vault" and pin["algorithm"] == "ed25519"
    name = re.fullmatch(r"transit:(.+)@\d+", pin["ref"]).group(1)
    assert name.startswith(prefix)
    _, key = vault_env.api("GET", f"transit/keys/{name}")
    assert key["data"]["exportable"] is False and key["data"]["type"] == "ed25519"
    assert "1 signed heads" in pki.ok("audit", "verify").stdout

    # re-hash every line with another actor: the chain is intact, the signature says otherwise
    path = repo / "state/audit.jsonl"
    lines, prev = [], audit.GENESIS
    for text in path.read_text().splitlines():
        line = {k: v for k, v in json.loads(text).items() if k != "hash"}
        line.update(actor="someone-else@nowhere", prev=prev)
        line["hash"] = prev = audit.line_hash(line)
        lines.append(line)
    path.write_bytes(audit.render_lines(lines))
    inv = json.loads((repo / "state/inventory.json").read_text())
    inv["audit_head"]["hash"] = prev
    (repo / "state/inventory.json").write_text(json.dumps(inv, indent=2, sort_keys=True) + "\n")
    assert audit.verify(path.read_text().splitlines(), inv) == []
    r = pki("audit", "verify", expect=1)
    assert "the log was rewritten" in r.stderr and vault_env.token not in r.stderr + r.stdout
