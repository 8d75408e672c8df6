"""A key reference outside this PKI's namespace is refused (review finding F3), against a real OpenBao.

Two PKIs, A and B, share one Vault and one prefix. A pull request to A can put B's keys in A's
committed pending deletions, in a forged ``.pki/journal/keys.jsonl``, or in A's inventory; A's store
refuses every one of them ("... is not a key of this PKI (namespace ...)") before Vault is asked, so
B's root survives A's apply. A store without an id (the layout from before ids) refuses references
carrying any id; keys made before an id are used only with ``legacy_keys = true``. The shipped
per-PKI policy (`pkiascode_vault.scoped_policy`) makes Vault refuse the same, whatever the client.
"""

from __future__ import annotations

import json
import os
import secrets
from pathlib import Path

import pytest

from helpers import vault_project, Pki, clean_env, commit_all, inventory
from pkiascode.backend import KeyRef, KeyRequest, StoreContext
from pkiascode.errors import BackendError
from pkiascode.keytypes import KeyType
from pkiascode.testing import self_signed, verify_signed_by

from pkiascode_vault import SCOPED_POLICY_FILE, VaultKeyStore, scoped_policy

# the real OpenBao of tests/vault (a dev server on 127.0.0.1), used here as it is there
from vault.conftest import bao_server, vault_env  # noqa: F401

pytestmark = pytest.mark.vault

ROOT = KeyRequest("root", KeyType.ECDSA_P256, authority=True, exportable=False)
LEAF = KeyRequest("web", KeyType.ECDSA_P256, authority=False, exportable=True)
FOREIGN = "is not a key of this PKI (namespace"


def store(tmp_path: Path, prefix: str, pki_id: str | None, **settings) -> VaultKeyStore:
    return VaultKeyStore("vault", {"prefix": prefix, **settings}, StoreContext(tmp_path, tmp_path / ".pki", pki_id))


def exists(server, ref: KeyRef) -> bool:
    kind, _, rest = ref.id.partition(":")
    if kind == "transit":
        return server.api("GET", f"transit/keys/{rest.rpartition('@')[0]}", ok=False)[0] == 200
    return server.api("GET", f"secret/data/{rest}", ok=False)[0] == 200


def every_use(s: VaultKeyStore, ref: KeyRef):
    return {"delete": lambda: s.delete(ref), "signer": lambda: s.signer(ref), "public_key": lambda: s.public_key(ref),
            "export": lambda: s.export(ref), "release": lambda: s.release(ref), "missing": lambda: s.missing([ref]),
            "exists": lambda: s.exists(ref)}


def assert_refused(s: VaultKeyStore, ref: KeyRef) -> None:
    for use, call in every_use(s, ref).items():
        with pytest.raises(BackendError) as info:
            call()
        text = str(info.value)
        assert FOREIGN in text and text.startswith("backend vault: ") and "\n" not in text, (use, text)


@pytest.fixture
def prefix() -> str:
    return f"ns{os.getpid()}{secrets.token_hex(3)}"


def test_another_pkis_keys_are_refused_by_every_method_and_survive(vault_env, tmp_path, prefix):
    a, b, legacy = store(tmp_path, prefix, "alpha0a"), store(tmp_path, prefix, "beta0b"), store(tmp_path, prefix, None)
    try:
        theirs = [b.generate(ROOT), b.generate(LEAF)]
        old = [legacy.generate(ROOT), legacy.generate(LEAF)]
        for ref in theirs:
            assert_refused(a, KeyRef("vault", ref.id))  # A cannot touch B's keys
            assert_refused(legacy, KeyRef("vault", ref.id))  # nor can a store without id: B's carry one
        for ref in old:
            assert_refused(a, KeyRef("vault", ref.id))  # keys from before ids: not A's unless it says so
        text = str(pytest.raises(BackendError, a.delete, KeyRef("vault", old[0].id)).value)
        assert "set legacy_keys = true in [backend.vault]" in text, text
        for ref in theirs + old:
            assert exists(vault_env, ref), ref
        # B and the legacy store still use their own, and sign with them
        for s, (root, leaf) in ((b, theirs), (legacy, old)):
            verify_signed_by(self_signed(s.signer(root), s.public_key(root)), s.public_key(root))
            assert s.missing([root, leaf]) == set()
        # paths that only look like A's
        mine = a.generate(LEAF)
        folder = mine.id.rpartition("/")[0]
        for forged in (f"{folder}/sub/web-00000000", f"kv:{prefix}/keys/../alpha0a/keys/web-00000000",
                       f"kv:{prefix}/alpha0a/keys/../../beta0b/keys/{theirs[1].id.rpartition('/')[2]}",
                       f"kv:other/alpha0a/keys/web-00000000", f"transit:{prefix}.alpha0ab.root-00000000@1",
                       f"transit:{prefix}-alpha0a.root-00000000@1"):
            with pytest.raises(BackendError):
                a.delete(KeyRef("vault", forged))
        assert exists(vault_env, theirs[1])
        a.delete(mine)
        assert not exists(vault_env, mine)
    finally:
        for s in (a, b, legacy):
            for ref in s.list_keys():
                s.delete(ref)
            s.close()


def test_legacy_keys_lets_a_pki_given_an_id_use_the_keys_it_made_before(vault_env, tmp_path, prefix):
    before = store(tmp_path, prefix, None)
    after = store(tmp_path, prefix, "given0id", legacy_keys=True)
    other = store(tmp_path, prefix, "other0id")
    try:
        root, leaf = before.generate(ROOT), before.generate(LEAF)
        assert after.missing([root, leaf]) == set()
        verify_signed_by(self_signed(after.signer(root), after.public_key(root)), after.public_key(root))
        assert after.export(leaf)
        theirs = other.generate(ROOT)
        assert_refused(after, theirs)  # legacy_keys opens the unscoped layout, never another id
        after.delete(root)
        assert not exists(vault_env, root)
        assert after.list_keys() == []  # `pki prune` never takes in the shared unscoped keys
        after.delete(leaf)
    finally:
        for s in (before, after, other):
            for ref in s.list_keys():
                s.delete(ref)
            s.close()


def test_a_pull_request_to_a_cannot_delete_bs_root(vault_env, tmp_path, prefix):
    """The reproduction of F3: B's root in A's committed pending deletions, then in a forged key
    journal: A's apply deletes nothing of B's, and says why."""
    env = clean_env(VAULT_ADDR=vault_env.address, VAULT_TOKEN=vault_env.token)
    repo_a, repo_b = vault_project(tmp_path / "a", prefix, "pkiaaaa1"), vault_project(tmp_path / "b", prefix, "pkibbbb2")
    pki_a, pki_b = Pki(repo_a, env), Pki(repo_b, env)
    pki_a.apply()
    pki_b.apply()
    b_root = inventory(repo_b)["root"]["key"]["ref"]
    b_leaf = next(o["key"]["ref"] for o in inventory(repo_b).values() if o["key"]["ref"].startswith("kv:"))
    assert b_root.startswith(f"transit:{prefix}.pkibbbb2.root-")
    # the pull request to A
    path = repo_a / "state" / "inventory.json"
    inv = json.loads(path.read_text())
    inv["pending_deletes"] = [["vault", b_root], ["vault", b_leaf]]
    path.write_text(json.dumps(inv, indent=1, sort_keys=True) + "\n")
    commit_all(repo_a, "a pull request")
    result = pki_a("apply", "--auto-approve", expect=None)
    # refused twice over: no apply of A's retired it (history), and it is not in A's namespace
    out = result.stdout + result.stderr
    assert "not a key an apply retired, kept" in out and b_root in out, result
    # a forged key journal, as an interrupted apply would have left it
    journal = repo_a / ".pki" / "journal"
    journal.mkdir(parents=True, exist_ok=True, mode=0o700)
    (journal / "keys.jsonl").write_text(json.dumps({"store": "vault", "id": b_root, "suffix": None}) + "\n")
    (journal / "keys.jsonl").chmod(0o600)
    pki_a("apply", "--auto-approve", expect=None)
    for ref in (b_root, b_leaf):
        assert exists(vault_env, KeyRef("vault", ref)), ref
    assert pki_b.plan_exit() == 0  # B plans nothing: every key it names is there


def test_the_scoped_policy_confines_a_token_to_one_pki(vault_env, tmp_path, monkeypatch):
    """`pki-apply-scoped.hcl` rendered for A: A's store works with it; Vault itself refuses A's token
    on B's keys (deleting, signing, reading, locking), whatever a client asks."""
    assert "PKI_ID" in Path(SCOPED_POLICY_FILE).read_text()
    b = store(tmp_path, "pki", "pkibbbb2")
    theirs = [b.generate(ROOT), b.generate(LEAF)]
    token = vault_env.make_token(scoped_policy("pkiaaaa1"), name="pki-apply-pkiaaaa1")
    monkeypatch.setenv("VAULT_TOKEN", token)
    a = store(tmp_path, "pki", "pkiaaaa1")
    try:
        a.check()
        root, leaf = a.generate(ROOT), a.generate(LEAF)
        verify_signed_by(self_signed(a.signer(root), a.public_key(root)), a.public_key(root))
        assert a.export(leaf)
        with a.lock("state", {"actor": "ci", "host": "runner", "pid": "1"}):
            pass
        assert a.missing([root, leaf]) == set()
        a.delete(root)
        a.delete(leaf)
        b_transit = theirs[0].id[len("transit:"):].rpartition("@")[0]
        b_kv = theirs[1].id[len("kv:"):]
        for method, path, body in (("POST", f"transit/keys/{b_transit}/config", {"deletion_allowed": True}),
                                   ("DELETE", f"transit/keys/{b_transit}", None),
                                   ("POST", f"transit/sign/{b_transit}", {"input": "aGk="}),
                                   ("DELETE", f"secret/metadata/{b_kv}", None),
                                   ("GET", f"secret/data/{b_kv}", None),
                                   ("POST", "secret/data/pki/pkibbbb2/locks/state", {"data": {"state": "held"}}),
                                   ("POST", "transit/keys/pki-root-00000000", {"type": "ecdsa-p256"})):
            status, _ = vault_env.api(method, path, body, token=token, ok=False)
            assert status == 403, (method, path, status)
        for ref in theirs:
            assert exists(vault_env, ref)
    finally:
        monkeypatch.setenv("VAULT_TOKEN", vault_env.token)
        for ref in theirs:
            b.delete(ref)
        a.close()
        b.close()


def test_scoped_policy_refuses_a_bad_id():
    for bad in ("", "a/b", "a.b", "*", "x" * 33):
        with pytest.raises(ValueError):
            scoped_policy(bad)
    text = scoped_policy("abc", prefix="team/pki", kv_mount="kv", transit_mount="tr")
    assert 'path "tr/keys/team-pki.abc.*"' in text and 'path "kv/data/team/pki/abc/keys/*"' in text
    assert "PKI_ID" not in text and '"secret/' not in text and '"transit/' not in text
