"""PKIs on one Vault whose prefixes extend one another (``pki``, ``pki-team``, ``pki/team``) never
see, list, prune or lock each other's keys, against a real OpenBao.

Names are matched by whole parts, never as string prefixes: a KV folder is compared whole, a Transit
name splits at '.' into prefix, ``[pki] id`` and ``<entry>-<suffix>`` (prefixes may not hold a '.'),
and the unscoped Transit namespace of a PKI without an id (``pki-*``) never takes in a name of the
scoped layout (``pki-team.<id>.root-...``). What is left, and documented: two PKIs *without* ids
whose prefixes extend one another (``pki`` and ``pki-team``) share Transit names.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from helpers import SMALL_PKI, Pki, clean_env, commit_all, git_init, inventory, write_project
from pkiascode.backend import KeyRef, KeyRequest, StoreContext
from pkiascode.keytypes import KeyType

from pkiascode_vault import VaultKeyStore, scoped_policy

# the real OpenBao of tests/vault (a dev server on 127.0.0.1)
from vault.conftest import bao_server, vault_env  # noqa: F401

pytestmark = pytest.mark.vault

ROOT = KeyRequest("root", KeyType.ECDSA_P256, authority=True, exportable=False)
LEAF = KeyRequest("web", KeyType.ECDSA_P256, authority=False, exportable=True)


def repository(directory: Path, prefix: str, pki_id: str | None) -> Path:
    git_init(directory)
    head = f'[pki]\nid = "{pki_id}"\n\n' if pki_id else ""
    write_project(directory, f'{head}[backend.vault]\nplugin = "vault"\nprefix = "{prefix}"\n\n'
                  + SMALL_PKI.replace("[defaults]\n", '[defaults]\nbackend = "vault"\n'))
    return directory


def exists(server, ref_id: str) -> bool:
    kind, _, rest = ref_id.partition(":")
    if kind == "transit":
        return server.api("GET", f"transit/keys/{rest.rpartition('@')[0]}", ok=False)[0] == 200
    return server.api("GET", f"secret/data/{rest}", ok=False)[0] == 200


def test_a_pki_without_an_id_never_lists_or_prunes_the_keys_of_one_whose_prefix_extends_its_own(vault_env,
                                                                                                  tmp_path):
    """``pki`` (no id: a repository from before ids) and ``pki-team`` (with an id) on one Vault."""
    prefix = f"ov{os.getpid()}"
    env = clean_env(VAULT_ADDR=vault_env.address, VAULT_TOKEN=vault_env.token)
    old = repository(tmp_path / "old", prefix, None)
    team = repository(tmp_path / "team", f"{prefix}-team", "team0000id")
    pki_old, pki_team = Pki(old, env), Pki(team, env)
    pki_old.apply()
    pki_team.apply()
    commit_all(old, "applied")
    assert "id =" not in (old / "pki.toml").read_text()  # still the unscoped layout: pki-*, pki/keys/
    own = {r: {o["key"]["ref"] for o in inventory(r).values()} for r in (old, team)}
    assert len(own[old]) == len(own[team]) == 4
    for repo, pki in ((old, pki_old), (team, pki_team)):
        rows = json.loads(pki.ok("keys", "--format", "json").stdout)
        # its four keys and the audit log's; another PKI's would be an "orphan"
        assert {row["key"] for row in rows if row["entry"] != "the audit log"} == own[repo], rows
        assert len(rows) == 5 and {row["status"] for row in rows} == {"in use"}, rows
    assert pki_team.ok("prune", "--auto-approve").stdout.strip() == "No orphan keys."
    # a PKI without an id prunes nothing: another id-less PKI's keys would look like its orphans
    r = pki_old("prune", "--auto-approve", expect=1)
    assert "has no [pki] id" in r.stderr and "nothing deleted" in r.stderr, r.stderr
    for ref in own[old] | own[team]:
        assert exists(vault_env, ref), ref
    assert pki_team.plan_exit() == 0


def test_prefixes_that_extend_one_another_with_ids_share_nothing(vault_env, tmp_path):
    """``p``, ``p-team`` and ``p/team`` with ids, and ``p`` without: each store lists, takes and
    locks only its own; another's key reference is refused before Vault is asked."""
    prefix = f"ox{os.getpid()}"

    def store(prefix: str, pki_id: str | None) -> VaultKeyStore:
        return VaultKeyStore("vault", {"prefix": prefix}, StoreContext(tmp_path, tmp_path / ".pki", pki_id))

    stores = [store(prefix, "base0000id"), store(f"{prefix}-team", "dash0000id"),
              store(f"{prefix}/team", "slash000id"), store(prefix, None)]
    made = {s: {s.generate(ROOT), s.generate(LEAF)} for s in stores}
    try:
        for s in stores:
            assert set(s.list_keys()) == made[s], (s.prefix, s.pki_id)
            for other in stores:
                if other is not s:
                    for ref in made[other]:
                        with pytest.raises(Exception, match="is not a key of this PKI"):
                            s.missing([ref])
        held = [s.lock("state", {"actor": f"{s.prefix}.{s.pki_id}"}) for s in stores]
        for lock in held:  # every one held at once: four locks, not one
            lock.__enter__()
        for lock in reversed(held):
            lock.__exit__(None, None, None)
    finally:
        for s in stores:
            for ref in made[s]:
                s.delete(ref)
            s.close()


def test_a_prefix_is_names_matched_whole():
    """A '.' would let prefix ``p.<id>`` spell the Transit names of ``p`` with that id; an empty
    prefix would make every key of the mounts this PKI's."""
    for bad in ("pki.team", "team.pki/x", "", "/"):
        assert "prefix" in dict(VaultKeyStore.validate({"prefix": bad})), bad
        with pytest.raises(ValueError, match="prefix"):
            scoped_policy("abcdefgh", prefix=bad)
    for good in ("pki", "pki-team", "pki/team", "team_a/pki"):
        assert VaultKeyStore.validate({"prefix": good}) == [], good
    # the unscoped layout never takes in a scoped name, whoever made it
    s = VaultKeyStore("vault", {"prefix": "pki"}, StoreContext(Path("."), Path(".pki"), None))
    with pytest.raises(Exception, match="is not a key of this PKI"):
        s.public_key(KeyRef("vault", "transit:pki-team.abcdefgh.root-0123abcd@1"))
