"""Threat: a pull request sets ``[pki] id`` to another PKI's id; ``pki keys`` then calls that PKI's
keys in a shared Vault "orphan" and ``pki prune`` deletes them (review F6), against a real OpenBao.

Two PKIs, A and B, share one Vault and one prefix. ``pki keys`` and ``pki prune`` in A refuse, in
one line, while pki.toml's id is not the one A's inventories record (``pki_id``), nor the one
HEAD's and the upstream's pki.toml say, nor one A's store accepts the keys of A's state under; every
key offered for deletion is checked by its store to be A's. B's keys survive and B plans nothing.
"""

from __future__ import annotations

import json
import os
import secrets

import pytest

from helpers import Pki, assert_one_line, clean_env, commit_all, edit_toml, inventory, vault_project

# the real OpenBao of tests/vault (a dev server on 127.0.0.1), used here as it is there
from vault.conftest import bao_server, vault_env  # noqa: F401

pytestmark = pytest.mark.vault

A_ID, B_ID = "pkiaaaa1", "pkibbbb2"


def exists(server, ref_id: str) -> bool:
    kind, _, rest = ref_id.partition(":")
    if kind == "transit":
        return server.api("GET", f"transit/keys/{rest.rpartition('@')[0]}", ok=False)[0] == 200
    return server.api("GET", f"secret/data/{rest}", ok=False)[0] == 200


@pytest.fixture
def two(vault_env, tmp_path):
    prefix = f"pr{os.getpid()}{secrets.token_hex(3)}"
    env = clean_env(VAULT_ADDR=vault_env.address, VAULT_TOKEN=vault_env.token)
    repo_a, repo_b = vault_project(tmp_path / "a", prefix, A_ID), vault_project(tmp_path / "b", prefix, B_ID)
    pki_a, pki_b = Pki(repo_a, env), Pki(repo_b, env)
    pki_a.apply()
    pki_b.apply()
    b_keys = {o["key"]["ref"] for o in inventory(repo_b).values()}
    assert len(b_keys) == 4 and all(A_ID not in k for k in b_keys)
    return repo_a, pki_a, repo_b, pki_b, b_keys


def _b_intact(vault_env, pki_b, b_keys):
    for ref in b_keys:
        assert exists(vault_env, ref), ref
    assert pki_b.plan_exit() == 0


def _refused(pki_a, *needles):
    for args in (["keys"], ["prune", "--auto-approve"]):
        r = pki_a(*args, expect=1)
        line = assert_one_line(r.stderr.strip())
        assert "Deleted" not in r.stdout and "orphan key(s) to delete" not in r.stdout, r
        for needle in needles:
            assert needle in line, line


def test_prune_with_another_pkis_id_deletes_nothing(vault_env, two):
    repo_a, pki_a, repo_b, pki_b, b_keys = two
    assert pki_a.ok("prune", "--auto-approve").stdout.strip() == "No orphan keys."
    edit_toml(repo_a, f'id = "{A_ID}"', f'id = "{B_ID}"')
    commit_all(repo_a, "a pull request: B's id")
    _refused(pki_a, f"the [pki] id changed from {A_ID} to {B_ID}")
    _b_intact(vault_env, pki_b, b_keys)


def test_prune_with_another_pkis_id_and_the_inventory_edited_too_deletes_nothing(vault_env, two):
    """The same pull request also drops (or rewrites) the id the inventory records: A's own keys are
    then outside the namespace pki.toml's id gives, and the store says so."""
    repo_a, pki_a, repo_b, pki_b, b_keys = two
    edit_toml(repo_a, f'id = "{A_ID}"', f'id = "{B_ID}"')
    path = repo_a / "state" / "inventory.json"
    inv = json.loads(path.read_text())
    inv.pop("pki_id", None)
    path.write_text(json.dumps(inv, indent=2, sort_keys=True) + "\n")
    commit_all(repo_a, "a pull request: B's id, the inventory's dropped")
    _refused(pki_a, "does not take for this PKI's", "is not a key of this PKI")
    _b_intact(vault_env, pki_b, b_keys)


def test_prune_with_an_uncommitted_id_change_deletes_nothing(vault_env, two):
    repo_a, pki_a, repo_b, pki_b, b_keys = two
    edit_toml(repo_a, f'id = "{A_ID}"', f'id = "{B_ID}"')  # the work tree only
    r = pki_a("prune", "--auto-approve", expect=1)
    assert f"the [pki] id changed from {A_ID} to {B_ID}" in assert_one_line(r.stderr.strip())
    _b_intact(vault_env, pki_b, b_keys)
