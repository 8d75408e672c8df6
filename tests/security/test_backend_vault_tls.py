"""TLS trust for the connection that carries the Vault token comes from the environment (review
finding F13): a pull request's pki.toml cannot turn verification off for, or vouch with a committed CA
file for, a non-loopback Vault.

- ``$VAULT_CACERT`` / ``$VAULT_CAPATH`` / ``$VAULT_SKIP_VERIFY`` set: they decide, and a ``ca_cert`` or
  ``tls_verify`` in pki.toml that says otherwise is an error naming both;
- otherwise ``tls_verify = false`` only for a loopback address, and a ``ca_cert`` for any other
  address only outside the repository (checked as written and with links resolved).

No test contacts a non-loopback address: those cases go through `VaultKeyStore.validate` and
`VaultKeyStore._tls`, which decide before any connection exists. The loopback cases run against a
real OpenBao behind TLS.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from helpers import SMALL_PKI, Pki, clean_env, git_init, write_project
from pkiascode.backend import StoreContext
from pkiascode.errors import BackendUnavailable

from pkiascode_vault import VaultKeyStore

REMOTE = "https://vault.example:8200"  # never contacted: every case here fails (or decides) before a connection


@pytest.fixture
def env(monkeypatch):
    for name in ("VAULT_ADDR", "VAULT_CACERT", "VAULT_CAPATH", "VAULT_SKIP_VERIFY", "VAULT_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


@pytest.fixture
def repo(tmp_path) -> Path:
    directory = tmp_path / "repo"
    git_init(directory)
    (directory / "vault-ca.pem").write_text("-----BEGIN CERTIFICATE-----\n")  # as a pull request commits it
    return directory


@pytest.fixture
def outside(tmp_path) -> Path:
    path = tmp_path / "etc" / "vault-ca.pem"  # installed on the runner, outside the repository
    path.parent.mkdir()
    path.write_text("-----BEGIN CERTIFICATE-----\n")
    return path


def tls(repo: Path, **settings):
    store = VaultKeyStore("vault", settings, StoreContext(repo, repo / ".pki", "tls0id"))
    try:
        return store._tls()
    finally:
        store.close()


def refused(repo: Path, **settings) -> str:
    with pytest.raises(BackendUnavailable) as info:
        tls(repo, **settings)
    text = str(info.value)
    assert text.startswith("backend vault: ") and "\n" not in text
    return text


def test_tls_verify_false_only_for_a_loopback_address(env, repo):
    problems = VaultKeyStore.validate({"address": REMOTE, "tls_verify": False})
    assert [p for p, _ in problems] == ["tls_verify"] and "loopback" in problems[0][1]
    assert VaultKeyStore.validate({"address": "https://127.0.0.1:8200", "tls_verify": False}) == []
    env.setenv("VAULT_ADDR", REMOTE)  # the address from the environment, pki.toml says only tls_verify
    assert "tls_verify = false is refused for https://vault.example:8200" in refused(repo, tls_verify=False)
    for loopback in ("https://127.0.0.1:8200", "https://localhost:8200", "https://[::1]:8200"):
        env.setenv("VAULT_ADDR", loopback)
        assert tls(repo, tls_verify=False) is False


def test_a_committed_ca_file_is_refused_for_a_remote_vault(env, repo, outside):
    env.setenv("VAULT_ADDR", REMOTE)
    text = refused(repo, ca_cert="vault-ca.pem")
    assert "refusing ca_cert 'vault-ca.pem'" in text and "inside the repository" in text
    (repo / "sub").mkdir()
    (repo / "sub" / "link.pem").symlink_to(outside)  # a committed link to a file outside: still the repo's
    assert "inside the repository" in refused(repo, ca_cert="sub/link.pem")
    link = outside.parent / "into-repo.pem"
    link.symlink_to(repo / "vault-ca.pem")  # a link outside that resolves into the repository
    assert "inside the repository" in refused(repo, ca_cert=str(link))
    assert tls(repo, ca_cert=str(outside)) == str(outside)  # the runner's own file
    assert tls(repo) is True  # nothing said: the system's trust store
    env.setenv("VAULT_ADDR", "https://127.0.0.1:8200")  # a loopback Vault: a committed CA is harmless
    assert tls(repo, ca_cert="vault-ca.pem") == str(repo / "vault-ca.pem")


def test_the_environment_decides_and_a_different_pki_toml_is_an_error_naming_both(env, repo, outside):
    env.setenv("VAULT_ADDR", REMOTE)
    env.setenv("VAULT_CACERT", str(outside))
    assert tls(repo) == str(outside)
    assert tls(repo, ca_cert=str(outside)) == str(outside)  # the two agree
    text = refused(repo, ca_cert="vault-ca.pem")
    assert f"pki.toml says ca_cert = 'vault-ca.pem' but $VAULT_CACERT is '{outside}'" in text, text
    text = refused(repo, tls_verify=False)
    assert f"pki.toml says tls_verify = false but $VAULT_CACERT is '{outside}'" in text, text
    env.delenv("VAULT_CACERT")
    env.setenv("VAULT_CAPATH", str(outside.parent))
    assert tls(repo) == str(outside.parent)
    assert "$VAULT_CAPATH is" in refused(repo, ca_cert=str(outside))
    env.delenv("VAULT_CAPATH")
    env.setenv("VAULT_SKIP_VERIFY", "true")  # the runner's own decision, for any address
    assert tls(repo) is False
    assert tls(repo, tls_verify=False) is False
    assert "pki.toml says tls_verify = true but $VAULT_SKIP_VERIFY is 'true'" in refused(repo, tls_verify=True)
    assert "$VAULT_SKIP_VERIFY is 'true'" in refused(repo, ca_cert=str(outside))
    env.setenv("VAULT_SKIP_VERIFY", "false")
    assert tls(repo) is True
    assert "pki.toml says tls_verify = false but $VAULT_SKIP_VERIFY is 'false'" in refused(repo, tls_verify=False)
    env.setenv("VAULT_SKIP_VERIFY", "maybe")
    assert "use true or false" in refused(repo)


def test_pki_validate_names_the_line(env, tmp_path):
    repo = tmp_path / "r"
    git_init(repo)
    write_project(repo, f'[backend.vault]\nplugin = "vault"\naddress = "{REMOTE}"\ntls_verify = false\n\n'
                  + SMALL_PKI.replace("[defaults]\n", '[defaults]\nbackend = "vault"\n'))
    r = Pki(repo, clean_env())("validate", expect=1)
    assert "tls_verify" in r.stderr and "loopback" in r.stderr and "pki.toml:" in r.stderr, r


# -- against a real OpenBao behind TLS on 127.0.0.1 ---------------------------------------------------------

from vault.conftest import bao_tls_server  # noqa: E402,F401  (the suite's real OpenBao)


@pytest.mark.vault
def test_loopback_tls_server_with_the_environments_ca(env, bao_tls_server, tmp_path):
    env.setenv("VAULT_ADDR", bao_tls_server.address)
    env.setenv("VAULT_TOKEN", bao_tls_server.token)
    env.setenv("VAULT_CACERT", str(bao_tls_server.ca_cert))
    store = VaultKeyStore("vault", {}, StoreContext(tmp_path, tmp_path / ".pki", "tls0id"))
    try:
        store.check()
    finally:
        store.close()
    # a pki.toml that names another CA is refused before anything is sent, even on loopback
    other = tmp_path / "other-ca.pem"
    other.write_text("-----BEGIN CERTIFICATE-----\n")
    store = VaultKeyStore("vault", {"ca_cert": str(other)}, StoreContext(tmp_path, tmp_path / ".pki", "tls0id"))
    with pytest.raises(BackendUnavailable, match="the environment decides TLS trust"):
        store.check()
    env.delenv("VAULT_CACERT")
    store = VaultKeyStore("vault", {}, StoreContext(tmp_path, tmp_path / ".pki", "tls0id"))
    with pytest.raises(BackendUnavailable, match=r"TLS verification failed.*\$VAULT_CACERT"):
        store.check()
    assert os.environ.get("VAULT_SKIP_VERIFY") is None
