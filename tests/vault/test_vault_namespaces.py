"""A namespace per PKI (issue 11.4): with a ``[pki] id`` the Vault key paths, Transit names and the
lock are scoped by it, so two repositories on one Vault never share a lock or a key path; without
one the paths of earlier versions stay."""

from __future__ import annotations

import concurrent.futures
import os
from pathlib import Path

import pytest

from helpers import Pki, clean_env, inventory, vault_project
from pkiascode.backend import KeyRequest, StoreContext
from pkiascode.keytypes import KeyType

from pkiascode_vault import VaultKeyStore

pytestmark = pytest.mark.vault

ROOT = KeyRequest("root", KeyType.ECDSA_P256, authority=True, exportable=False)
LEAF = KeyRequest("web", KeyType.ECDSA_P256, authority=False, exportable=True)
HOLDER = {"actor": "ci", "host": "runner", "pid": "1"}


def scoped(tmp_path: Path, prefix: str, pki_id: str | None) -> VaultKeyStore:
    return VaultKeyStore("vault", {"prefix": prefix}, StoreContext(tmp_path, tmp_path / ".pki", pki_id))


def test_keys_and_locks_are_scoped_by_the_pki_id(vault_env, tmp_path):
    prefix = f"ns{os.getpid()}"
    alpha, beta, legacy = (scoped(tmp_path, prefix, i) for i in ("alpha1234", "beta5678", None))
    try:
        refs = {s: (s.generate(ROOT), s.generate(LEAF)) for s in (alpha, beta, legacy)}
        assert refs[alpha][0].id.startswith(f"transit:{prefix}.alpha1234.root-")
        assert refs[alpha][1].id.startswith(f"kv:{prefix}/alpha1234/keys/web-")
        assert refs[legacy][0].id.startswith(f"transit:{prefix}-root-")  # as before ids
        assert refs[legacy][1].id.startswith(f"kv:{prefix}/keys/web-")
        for store in (alpha, beta, legacy):
            assert set(store.list_keys()) == set(refs[store]), store  # its own keys, only
        # one lock each, held at the same time
        with alpha.lock("state", HOLDER), beta.lock("state", HOLDER), legacy.lock("state", HOLDER):
            for store, folder in ((alpha, f"{prefix}/alpha1234"), (beta, f"{prefix}/beta5678"), (legacy, prefix)):
                record = vault_env.api("GET", f"secret/data/{folder}/locks/state")[1]["data"]["data"]
                assert record["state"] == "held"
        for store in (alpha, beta, legacy):
            for ref in refs[store]:
                store.delete(ref)
            assert store.list_keys() == []
    finally:
        for store in (alpha, beta, legacy):
            store.close()


def test_an_invalid_pki_id_is_refused():
    for bad in ("", "a/b", "../x", "a.b", "x" * 33):
        with pytest.raises(ValueError, match=r"\[pki\] id"):
            StoreContext(Path("."), Path(".pki"), bad)


def test_two_repositories_on_one_vault_apply_in_parallel(vault_env, tmp_path):
    prefix = f"par{os.getpid()}"  # the same prefix for both: only the id tells them apart
    env = clean_env(VAULT_ADDR=vault_env.address, VAULT_TOKEN=vault_env.token)
    repos = {pki_id: vault_project(tmp_path / pki_id, prefix, pki_id) for pki_id in ("team0alpha", "team0beta")}
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        results = list(pool.map(lambda repo: Pki(repo, env)("apply", "--auto-approve"), repos.values()))
    assert [r.returncode for r in results] == [0, 0], results
    for pki_id, repo in repos.items():
        refs = {name: obj["key"]["ref"] for name, obj in inventory(repo).items()}
        assert refs and all(f".{pki_id}." in ref or f"/{pki_id}/keys/" in ref for ref in refs.values()), refs
        assert Pki(repo, env).plan_exit() == 0
        lock = vault_env.api("GET", f"secret/data/{prefix}/{pki_id}/locks/state")[1]["data"]["data"]
        assert lock["state"] == "free"
    status, _ = vault_env.api("GET", f"secret/data/{prefix}/locks/state", ok=False)
    assert status == 404  # nobody used the unscoped lock
