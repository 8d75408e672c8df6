"""Threat: ``pki keys`` and ``pki prune`` trust the ``pki_id`` of audit lines no signed head covers
(second review, finding F2), against a real OpenBao.

Two PKIs, a victim and an attacker, with different ``[pki] id`` share one Vault and one prefix. The
attacker's pull request sets the victim's id in pki.toml and in the inventory, empties the inventory's
objects, and appends one hash-chained but unsigned audit line recording the victim's id: the id is
then "recorded by the audit log" and the victim's keys look like the attacker's orphans. ``pki keys``
and ``pki prune`` refuse (an id counts only under a signed head): nothing is listed as orphan, nothing
deleted, and the victim still plans nothing.
"""

from __future__ import annotations

import json
import os
import secrets
from pathlib import Path

import pytest

from helpers import Pki, clean_env, commit_all, edit_toml, git, vault_project

from pkiascode import audit

# the real OpenBao of tests/vault (a dev server on 127.0.0.1), used here as it is there
from vault.conftest import bao_server, vault_env  # noqa: F401

pytestmark = pytest.mark.vault

VICTIM, ATTACKER = "victimvict01", "attackattk01"
TOML = """\
[defaults]
key = "ecdsa-p256"
validity = "90d"

[authority.root]
common_name = "Root"
validity = "10y"

[certificate.web]
issuer = "root"
hosts = ["web.example.test"]
"""


def _exists(server, ref: str) -> bool:
    kind, _, rest = ref.partition(":")
    if kind == "transit":
        return server.api("GET", f"transit/keys/{rest.rpartition('@')[0]}", ok=False)[0] == 200
    return server.api("GET", f"secret/data/{rest}", ok=False)[0] == 200


def _refs(repo: Path) -> set[str]:
    """The key references of the inventory's objects and of the pinned audit keys."""
    state = repo / "state"
    objects = json.loads((state / "inventory.json").read_text())["objects"]
    refs = {o["key"]["ref"] for o in objects.values()}
    return refs | {k["ref"] for k in json.loads((state / "audit-signatures.json").read_text())["keys"]}


def _take_the_victims_id(repo: Path) -> None:
    """The attacker's pull request: the victim's id in pki.toml and the inventory, no objects, and one
    unsigned line (hash-chained) recording that id."""
    edit_toml(repo, f'id = "{ATTACKER}"', f'id = "{VICTIM}"')
    path = repo / "state/inventory.json"
    inv = json.loads(path.read_text())
    inv["pki_id"] = VICTIM
    inv["objects"] = {}
    inv.pop("pending_deletes", None)
    log = repo / "state/audit.jsonl"
    lines = [json.loads(t) for t in log.read_text().splitlines()]
    ev = audit.event("update_crl", "authority", "root", time="2026-12-07T03:00:00Z", actor="ci", serial=None,
                     sha256=None, not_after=None, backend="vault", plan=None, pki_id=VICTIM)
    new = audit.chain([ev], prev=lines[-1]["hash"], seq=lines[-1]["seq"])
    with log.open("ab") as f:
        f.write(audit.render_lines(new))
    inv["audit_head"] = {"seq": new[-1]["seq"], "hash": new[-1]["hash"]}
    path.write_text(json.dumps(inv, indent=2, sort_keys=True) + "\n")
    commit_all(repo, "use the shared id")


def test_an_unsigned_line_recording_another_pkis_id_takes_none_of_its_keys(vault_env, tmp_path):
    prefix = f"sl{os.getpid()}{secrets.token_hex(3)}"
    env = clean_env(VAULT_ADDR=vault_env.address, VAULT_TOKEN=vault_env.token)
    victim = vault_project(tmp_path / "victim", prefix, VICTIM, TOML)
    attacker = vault_project(tmp_path / "attacker", prefix, ATTACKER, TOML)
    pki_v, pki_a = Pki(victim, env), Pki(attacker, env)
    pki_v.apply()
    pki_a.apply()
    refs = _refs(victim)
    assert len(refs) == 3 and all(_exists(vault_env, ref) for ref in refs), refs
    assert pki_a.ok("prune", "--auto-approve").stdout.strip() == "No orphan keys."
    _take_the_victims_id(attacker)
    before = git(attacker, "rev-parse", "HEAD")

    r = pki_a("keys", expect=None)
    assert r.returncode != 0, f"pki keys took the victim's id:\n{r}"
    assert "orphan" not in r.stdout and not any(ref.split(":")[-1] in r.stdout for ref in refs), r
    r = pki_a("prune", "--auto-approve", expect=None)
    assert r.returncode != 0, f"pki prune took the victim's id:\n{r}"
    assert "Deleted" not in r.stdout, r
    assert git(attacker, "rev-parse", "HEAD") == before

    missing = {ref for ref in refs if not _exists(vault_env, ref)}
    assert not missing, f"the victim's keys were deleted: {sorted(missing)}"
    assert pki_v.plan_exit() == 0, pki_v("plan")
