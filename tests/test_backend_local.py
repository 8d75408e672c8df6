"""The local backend passes the shared conformance suite, plus file-level guarantees."""

from __future__ import annotations

import os
import stat

import pytest

from pkiascode.backend import KeyRequest, StoreContext
from pkiascode.errors import BackendUnavailable
from pkiascode.keytypes import KeyType
from pkiascode.testing import KeyStoreConformance
from pkiascode_local import LocalKeyStore


class TestLocalConformance(KeyStoreConformance):
    @pytest.fixture
    def store(self, tmp_path):
        return LocalKeyStore("files", {"path": ".pki/keys"}, StoreContext(tmp_path, tmp_path / ".pki"))


class TestLocalEncryptedConformance(KeyStoreConformance):
    @pytest.fixture
    def store(self, tmp_path, monkeypatch):
        monkeypatch.setenv("TEST_PASSPHRASE", "correct horse")
        return LocalKeyStore("files", {"path": "keys", "passphrase_env": "TEST_PASSPHRASE"},
                             StoreContext(tmp_path, tmp_path / ".pki"))


def test_files_are_0600_in_0700_dir_and_pkcs8(tmp_path):
    store = LocalKeyStore("files", {}, StoreContext(tmp_path, tmp_path / ".pki"))
    ref = store.generate(KeyRequest("node-0", KeyType.ECDSA_P256, authority=False, exportable=True))
    path = tmp_path / ".pki" / "keys" / ref.id
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert path.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")
    assert ref.id.startswith("node-0-")
    assert not [p for p in path.parent.iterdir() if p.name.endswith(".tmp")]


def test_too_open_directory_is_tightened(tmp_path):
    keys = tmp_path / ".pki" / "keys"
    keys.mkdir(parents=True)
    os.chmod(keys, 0o755)
    store = LocalKeyStore("files", {}, StoreContext(tmp_path, tmp_path / ".pki"))
    store.generate(KeyRequest("a", KeyType.ED25519, authority=False, exportable=True))
    assert stat.S_IMODE(keys.stat().st_mode) == 0o700


def test_encrypted_keys_need_their_passphrase(tmp_path, monkeypatch):
    monkeypatch.setenv("PKI_TEST_PASS", "s3cret")
    store = LocalKeyStore("files", {"passphrase_env": "PKI_TEST_PASS"}, StoreContext(tmp_path, tmp_path / ".pki"))
    ref = store.generate(KeyRequest("a", KeyType.ECDSA_P256, authority=True, exportable=False))
    assert b"ENCRYPTED PRIVATE KEY" in (store.path / ref.id).read_bytes()
    store = LocalKeyStore("files", {"passphrase_env": "PKI_TEST_PASS"}, StoreContext(tmp_path, tmp_path / ".pki"))
    monkeypatch.delenv("PKI_TEST_PASS")
    with pytest.raises(BackendUnavailable, match=r"set \$PKI_TEST_PASS"):
        store.signer(ref)
    monkeypatch.setenv("PKI_TEST_PASS", "wrong")
    with pytest.raises(Exception, match="wrong passphrase"):
        store.signer(ref)
