"""The vault backend against a real OpenBao: conformance, Transit and KV guarantees, every fault."""

from __future__ import annotations

import datetime
import subprocess
import sys
import time
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import NameOID

from helpers import assert_one_line, free_port, spki_der
from pkiascode.backend import KeyRef, KeyRequest
from pkiascode.errors import (BackendError, BackendUnavailable, KeyNotExportable, KeyNotFound,
                              UnsupportedKeyType)
from pkiascode.keytypes import KeyType, generate_private_key, signature_hash
from pkiascode.testing import KeyStoreConformance, self_signed, verify_signed_by

from pkiascode_vault import POLICY_FILE as _POLICY

pytestmark = pytest.mark.vault

POLICY_FILE = Path(_POLICY)


def authority(name: str = "root", key_type: KeyType = KeyType.ECDSA_P256) -> KeyRequest:
    return KeyRequest(name, key_type, authority=True, exportable=False)


def leaf(name: str = "node-0", key_type: KeyType = KeyType.ECDSA_P256, exportable: bool = True) -> KeyRequest:
    return KeyRequest(name, key_type, authority=False, exportable=exportable)


def leaf_cert(issuer_key, issuer_public, subject_public, cn: str = "leaf") -> x509.Certificate:
    now = datetime.datetime.now(datetime.timezone.utc)
    return (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
            .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "ca")]))
            .public_key(subject_public).serial_number(x509.random_serial_number())
            .not_valid_before(now).not_valid_after(now + datetime.timedelta(days=1))
            .sign(issuer_key, signature_hash(issuer_public)))


def one_line_without(error: BaseException, *secrets: str) -> str:
    return assert_one_line(str(error), *secrets)


class Calls:
    """Counts a store's round-trips to Vault."""

    def __init__(self, store) -> None:
        self.log: list[tuple[str, str]] = []
        client = store._client
        original = client.call

        def call(method, path, *args, **kwargs):
            self.log.append((method, path))
            return original(method, path, *args, **kwargs)

        client.call = call


# -- conformance --------------------------------------------------------------------------------------
class TestVaultConformance(KeyStoreConformance):
    shared_between_pkis = True

    @pytest.fixture
    def store(self, vault_env, make_store):
        return make_store()


def test_conformance_for_kv_leaf_keys_from_threads(vault_env, make_store):
    store = make_store()
    import concurrent.futures

    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        refs = list(pool.map(lambda i: store.generate(leaf(f"n{i}")), range(8)))
    assert len(set(refs)) == 8 and all(r.id.startswith("kv:") for r in refs)
    assert store.missing(refs) == set()


# -- references, Transit, KV --------------------------------------------------------------------------
def test_reference_formats(vault_env, make_store):
    store = make_store(prefix="pki")
    a = store.generate(authority("root"))
    b = store.generate(leaf("node-0"))
    assert a.id.startswith("transit:pki-root-") and a.id.endswith("@1")
    assert len(a.id) == len("transit:pki-root-") + 8 + 2
    assert b.id.startswith("kv:pki/keys/node-0-") and len(b.id) == len("kv:pki/keys/node-0-") + 8
    assert (a.origin, b.origin) == ("generated", "generated")
    assert not store.is_exportable(a) and store.is_exportable(b)
    store.delete(a)
    store.delete(b)


def test_authority_key_is_transit_non_exportable_and_signs_inside_vault(vault_env, make_store):
    store = make_store()
    ref = store.generate(authority("root", KeyType.RSA_2048))
    _, name, _ = store._parse(ref.id)
    _, info = vault_env.api("GET", f"transit/keys/{name}")
    assert info["data"]["exportable"] is False and info["data"]["allow_plaintext_backup"] is False
    with pytest.raises(KeyNotExportable) as error:
        store.export(ref)
    text = one_line_without(error.value)
    assert "vault" in text and "Transit" in text and "never leaves" in text
    signer = store.signer(ref)
    with pytest.raises(KeyNotExportable):
        signer.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())
    assert "PRIVATE" not in repr(signer)
    # RSA must be PKCS#1 v1.5 (Transit's default would be PSS): cryptography checks it here
    cert = self_signed(signer, store.public_key(ref))
    verify_signed_by(cert, store.public_key(ref))


def test_key_version_is_pinned_across_rotation(vault_env, make_store):
    store = make_store()
    ref = store.generate(authority("root"))
    original = store.public_key(ref)
    _, name, version = store._parse(ref.id)
    assert version == 1
    vault_env.api("POST", f"transit/keys/{name}/rotate")
    vault_env.api("POST", f"transit/keys/{name}/rotate")
    _, info = vault_env.api("GET", f"transit/keys/{name}")
    assert info["data"]["latest_version"] == 3
    # a fresh store (nothing cached) still signs with version 1
    fresh = make_store(prefix=store.prefix)
    assert spki_der(fresh.public_key(ref)) == spki_der(original)
    signer = fresh.signer(ref)
    cert = leaf_cert(signer, original, generate_private_key(KeyType.ECDSA_P256).public_key())
    verify_signed_by(cert, original)
    crl = (x509.CertificateRevocationListBuilder().issuer_name(cert.issuer)
           .last_update(datetime.datetime.now(datetime.timezone.utc))
           .next_update(datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(days=1))
           .sign(signer, signature_hash(original)))
    assert crl.is_signature_valid(original)
    # the newest version is another key: a reference to it is another signer
    newest = KeyRef(store.name, f"transit:{name}@3")
    assert spki_der(fresh.public_key(newest)) != spki_der(original)


def test_a_signature_from_the_wrong_version_is_refused(vault_env, make_store):
    from pkiascode_vault.store import _TransitKey

    store = make_store()
    ref = store.generate(authority("root"))
    _, name, _ = store._parse(ref.id)
    vault_env.api("POST", f"transit/keys/{name}/rotate")
    v2 = store.public_key(KeyRef(store.name, f"transit:{name}@2"))
    # pretend the inventory's public key were version 2's while the reference pins version 1
    store._transit_cache[ref.id] = _TransitKey(name, 1, KeyType.ECDSA_P256, v2)
    with pytest.raises(BackendError, match="does not verify"):
        self_signed(store.signer(ref), v2)


def test_trimmed_version_is_key_not_found(vault_env, make_store):
    store = make_store()
    ref = store.generate(authority("root"))
    _, name, _ = store._parse(ref.id)
    with pytest.raises(KeyNotFound, match="no version 7"):
        store.public_key(KeyRef(store.name, f"transit:{name}@7"))


def test_leaf_asked_non_exportable_goes_to_transit(vault_env, make_store):
    store = make_store()
    ref = store.generate(leaf("secret-svc", KeyType.ED25519, exportable=False))
    assert ref.id.startswith("transit:") and not store.is_exportable(ref)
    with pytest.raises(KeyNotExportable):
        store.export(ref)
    public = store.public_key(ref)
    verify_signed_by(self_signed(store.signer(ref), public), public)


def test_leaf_key_in_kv_is_pkcs8_and_readable_by_services(vault_env, make_store):
    store = make_store()
    ref = store.generate(leaf("node-0", KeyType.RSA_2048))
    _, path, _ = store._parse(ref.id)
    _, body = vault_env.api("GET", f"secret/data/{path}")
    record = body["data"]["data"]
    assert record["private_key"].startswith("-----BEGIN PRIVATE KEY-----")
    assert record["key_type"] == "rsa-2048" and record["entry"] == "node-0" and record["origin"] == "generated"
    key = serialization.load_pem_private_key(record["private_key"].encode(), None)
    assert spki_der(key.public_key()) == spki_der(store.public_key(ref)) == spki_der(store.export(ref).public_key())
    assert body["data"]["metadata"]["version"] == 1


def test_kv_keys_are_written_with_cas_and_never_overwritten(vault_env, make_store, monkeypatch):
    import pkiascode_vault.store as vault_store

    store = make_store()
    suffixes = iter(["aaaaaaaa", "aaaaaaaa", "bbbbbbbb", "cccccccc", "cccccccc", "dddddddd"])
    monkeypatch.setattr(vault_store.secrets, "token_hex", lambda n: next(suffixes))
    first = store.generate(leaf("node-0"))
    second = store.generate(leaf("node-0"))  # the same random part comes up: CAS refuses, a new one is drawn
    assert first.id.endswith("-aaaaaaaa") and second.id.endswith("-bbbbbbbb")
    _, path, _ = store._parse(first.id)
    _, body = vault_env.api("GET", f"secret/data/{path}")
    assert body["data"]["metadata"]["version"] == 1
    assert spki_der(store.export(first).public_key()) != spki_der(store.export(second).public_key())
    # a plain cas=0 write on the existing key is refused by Vault itself
    status, body = vault_env.api("POST", f"secret/data/{path}", {"options": {"cas": 0}, "data": {"x": 1}}, ok=False)
    assert status == 400 and "check-and-set" in str(body)
    # Transit: creating under a taken name would silently return the old key, so the store looks first
    a = store.generate(authority("root"))
    b = store.generate(authority("root"))
    assert a.id.endswith("-cccccccc@1") and b.id.endswith("-dddddddd@1")
    assert spki_der(store.public_key(a)) != spki_der(store.public_key(b))


def test_import_into_transit_is_byok_non_exportable(vault_env, make_store):
    store = make_store()
    original = generate_private_key(KeyType.ECDSA_P384)
    ref = store.import_key(authority("root", KeyType.ECDSA_P384), original)
    assert ref.id.startswith("transit:") and ref.origin == "imported" and not store.is_exportable(ref)
    _, name, _ = store._parse(ref.id)
    _, info = vault_env.api("GET", f"transit/keys/{name}")
    assert info["data"]["imported_key"] is True and info["data"]["exportable"] is False
    assert spki_der(store.public_key(ref)) == spki_der(original.public_key())
    with pytest.raises(KeyNotExportable):
        store.export(ref)


def test_import_leaf_into_kv_and_move_back_out(vault_env, make_store):
    store = make_store()
    original = generate_private_key(KeyType.ED25519)
    ref = store.import_key(leaf("node-1", KeyType.ED25519), original)
    assert ref.id.startswith("kv:") and ref.origin == "imported" and store.is_exportable(ref)
    exported = store.export(ref)
    assert exported.private_bytes_raw() == original.private_bytes_raw()


def test_move_from_local_store_to_vault(vault_env, make_store, tmp_path):
    """What the core's move_key does: release from the old store, import, prove, delete the old copy.
    (The local authority key is not exportable: `pki export` refuses it, but it may move.)"""
    from pkiascode.backend import StoreContext
    from pkiascode_local import LocalKeyStore

    local = LocalKeyStore("files", {}, StoreContext(tmp_path, tmp_path / ".pki"))
    vault = make_store()
    old = local.generate(authority("intermediate", KeyType.RSA_2048))
    cert = self_signed(local.signer(old), local.public_key(old), "intermediate")
    with pytest.raises(KeyNotExportable):
        local.export(old)
    new = vault.import_key(authority("intermediate", KeyType.RSA_2048), local.release(old))
    proof = self_signed(vault.signer(new), cert.public_key(), "intermediate")
    verify_signed_by(proof, cert.public_key())
    local.delete(old)
    assert not local.exists(old) and vault.exists(new)


def test_unsupported_key_is_refused(vault_env, make_store):
    from cryptography.hazmat.primitives.asymmetric import ec

    store = make_store()
    with pytest.raises(UnsupportedKeyType):
        store.import_key(authority("root"), ec.generate_private_key(ec.SECP521R1()))


# -- round-trips ---------------------------------------------------------------------------------------
def test_one_sign_call_per_signature_and_cached_metadata(vault_env, make_store):
    store = make_store()
    ref = store.generate(authority("root"))
    calls = Calls(store)
    public = store.public_key(ref)
    signer = store.signer(ref)
    assert calls.log == []  # the key's metadata was cached when it was made
    for i in range(3):
        leaf_cert(signer, public, generate_private_key(KeyType.ECDSA_P256).public_key(), f"n{i}")
    assert [m for m, _ in calls.log] == ["POST"] * 3 and all("/sign/" in p for _, p in calls.log)
    # a new store looks the key up once, then signs with one call each
    other = make_store(prefix=store.prefix)
    calls = Calls(other)
    signer = other.signer(ref)
    other.public_key(ref)
    leaf_cert(signer, public, generate_private_key(KeyType.ECDSA_P256).public_key())
    assert [m for m, _ in calls.log] == ["GET", "POST"]


def test_missing_uses_one_list_per_place(vault_env, make_store):
    store = make_store()
    refs = [store.generate(authority(f"a{i}")) for i in range(3)] + [store.generate(leaf(f"l{i}")) for i in range(3)]
    ghosts = [KeyRef(store.name, refs[0].id.replace("@1", "0@1")), KeyRef(store.name, refs[-1].id + "x"),
              KeyRef(store.name, "nonsense")]
    calls = Calls(store)
    assert store.missing(refs + ghosts) == set(ghosts)
    assert sorted(m for m, _ in calls.log) == ["LIST", "LIST"]


def test_discard_deletes_in_the_engine_the_request_went_to_only(vault_env, make_store):
    """A key made for a journaled request whose answer was lost: one request for KV, two for Transit
    (allow deletion, delete), and nothing there is no error."""
    store = make_store()
    made = {request: store.generate(request) for request in (authority().with_suffix(), leaf().with_suffix())}
    calls = Calls(store)
    for request, ref in made.items():
        store.discard(request)
        assert store.missing([ref]) == {ref}
    assert [m for m, _ in calls.log] == ["POST", "DELETE", "LIST", "DELETE", "LIST"]
    for request in made:
        store.discard(request)  # already gone


# -- configuration ---------------------------------------------------------------------------------------
def test_validate_options():
    from pkiascode_vault import VaultKeyStore

    assert VaultKeyStore.validate({"address": "https://vault.example:8200", "lock_ttl": "5m", "lock_timeout": 30,
                                   "prefix": "team/pki", "kv_mount": "kv", "transit_mount": "ops/transit"}) == []
    problems = dict(VaultKeyStore.validate({"address": "vault.example:8200", "lock_ttl": "5 minutes",
                                            "lock_timeout": -1, "prefix": "a b", "transit_mount": "x y",
                                            "timeout": 0, "client_cert": "c.pem"}))
    assert set(problems) == {"address", "lock_ttl", "lock_timeout", "prefix", "transit_mount", "timeout",
                             "client_cert"}
    assert VaultKeyStore.validate({"lock_ttl": "0s"}) == [("lock_ttl", "must be at least 1s")]
    assert set(VaultKeyStore.options) >= {"address", "namespace", "kv_mount", "transit_mount", "prefix",
                                          "ca_cert", "tls_verify", "lock_ttl", "lock_timeout"}
    assert "token" not in VaultKeyStore.options


def test_plugin_registers_and_imports_no_client_library():
    from pkiascode.plugins import Plugins

    import pkiascode_vault

    assert Plugins(load_entry_points=False, extra=[pkiascode_vault]).factory("vault") is pkiascode_vault.VaultKeyStore
    code = ("import sys, pkiascode_vault; heavy = [m for m in ('hvac', 'requests', 'cryptography') "
            "if m in sys.modules]; print(heavy); sys.exit(1 if heavy else 0)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


def test_shipped_policy_is_enough_and_forbids_overwrites(vault_env, make_store, monkeypatch):
    token = vault_env.make_token(POLICY_FILE.read_text(), name="pki-apply")
    monkeypatch.setenv("VAULT_TOKEN", token)
    store = make_store(prefix="pki")  # the policy is written for the default prefix
    store.check()
    root = store.generate(authority("root", KeyType.ED25519))
    node = store.generate(leaf("node-0"))
    public = store.public_key(root)
    verify_signed_by(leaf_cert(store.signer(root), public, store.public_key(node)), public)
    moved = store.import_key(authority("inter"), generate_private_key(KeyType.ECDSA_P256))
    kept = store.import_key(leaf("old"), generate_private_key(KeyType.ECDSA_P256))
    assert store.export(node) and store.export(kept)
    assert store.missing([root, node, moved, kept]) == set()
    with store.lock("policy-test", {"user": "ci", "host": "runner", "pid": "1"}):
        pass
    # the token may create keys in KV but never update one, with or without CAS
    _, path, _ = store._parse(node.id)
    status, _ = vault_env.api("POST", f"secret/data/{path}", {"data": {"private_key": "x"}}, token=token, ok=False)
    assert status == 403
    for ref in (root, node, moved, kept):
        store.delete(ref)
    assert store.missing([root, node, moved, kept]) == {root, node, moved, kept}


# -- faults: one clear line, never the token -----------------------------------------------------------------
def test_unreachable_address(vault_env, make_store, monkeypatch):
    monkeypatch.setenv("VAULT_ADDR", f"http://127.0.0.1:{free_port()}")
    store = make_store(timeout=2)
    for action in (store.check, lambda: store.generate(authority()), lambda: store.public_key(
            KeyRef("vault", f"transit:{store.prefix}-root-00000000@1"))):
        with pytest.raises(BackendUnavailable) as error:
            action()
        text = one_line_without(error.value, vault_env.token)
        assert "cannot reach Vault at http://127.0.0.1:" in text and text.startswith("backend vault:")


def test_missing_token_and_address(vault_env, make_store, monkeypatch, tmp_path):
    monkeypatch.delenv("VAULT_TOKEN")
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.vault-token either
    with pytest.raises(BackendUnavailable, match=r"set \$VAULT_TOKEN, log in \(`vault login` or `bao login` "
                                                 r"write ~/.vault-token\)"):
        make_store().check()
    monkeypatch.setenv("VAULT_TOKEN", vault_env.token)
    monkeypatch.delenv("VAULT_ADDR")
    with pytest.raises(BackendUnavailable, match=r"\$VAULT_ADDR"):
        make_store().generate(leaf())


def test_wrong_token(vault_env, make_store, monkeypatch):
    monkeypatch.setenv("VAULT_TOKEN", "s.this-is-not-a-token-4711")
    store = make_store()
    for action in (store.check, lambda: store.generate(authority()), lambda: store.generate(leaf())):
        with pytest.raises(BackendUnavailable) as error:
            action()
        text = one_line_without(error.value, "this-is-not-a-token-4711", vault_env.token)
        assert "rejected the token in $VAULT_TOKEN" in text
    assert "4711" not in repr(store) and "4711" not in repr(store._client)


def test_expired_token(vault_env, make_store, monkeypatch):
    token = vault_env.make_token(ttl="1s")
    monkeypatch.setenv("VAULT_TOKEN", token)
    store = make_store()
    store.check()  # valid for now
    time.sleep(1.5)
    fresh = make_store()
    with pytest.raises(BackendUnavailable) as error:
        fresh.check()
    assert "expired" in one_line_without(error.value, token)
    with pytest.raises(BackendUnavailable):
        store.generate(leaf())  # a store that was fine a moment ago says the same


def test_permission_denied_names_the_request(vault_env, make_store, monkeypatch):
    policy = POLICY_FILE.read_text().replace('path "transit/sign/pki-*"', 'path "transit/sign/other-*"')
    token = vault_env.make_token(policy, name="pki-no-sign")
    monkeypatch.setenv("VAULT_TOKEN", token)
    store = make_store(prefix="pki")
    store.check()
    ref = store.generate(authority("root"))
    with pytest.raises(BackendError) as error:
        self_signed(store.signer(ref), store.public_key(ref))
    text = one_line_without(error.value, token)
    assert not isinstance(error.value, BackendUnavailable)
    assert "permission denied: POST transit/sign/pki-root-" in text and "pki-apply.hcl" in text


def test_missing_transit_mount_says_how_to_enable_it(vault_env, make_store):
    store = make_store(transit_mount="pki-transit")
    with pytest.raises(BackendUnavailable) as error:
        store.check()
    assert "vault secrets enable -path=pki-transit transit" in one_line_without(error.value)
    with pytest.raises(BackendError) as error:
        store.generate(authority())
    assert "vault secrets enable -path=pki-transit transit" in one_line_without(error.value)
    assert store.generate(leaf()).id.startswith("kv:")  # KV is still there


def test_missing_or_wrong_kv_mount(vault_env, make_store):
    with pytest.raises(BackendUnavailable, match="vault secrets enable -path=pki-kv kv-v2"):
        make_store(kv_mount="pki-kv").check()
    with pytest.raises(BackendError, match="vault secrets enable -path=pki-kv kv-v2"):
        make_store(kv_mount="pki-kv").generate(leaf())
    with pytest.raises(BackendUnavailable, match="is a transit mount, not kv"):
        make_store(kv_mount="transit").check()
    status, _ = vault_env.api("GET", "sys/mounts/kv1", ok=False)
    if status != 200:
        vault_env.api("POST", "sys/mounts/kv1", {"type": "kv", "options": {"version": "1"}})
    with pytest.raises(BackendUnavailable, match="KV version 1"):
        make_store(kv_mount="kv1").check()


def test_missing_keys_are_key_not_found(vault_env, make_store):
    store = make_store()
    ghosts = [KeyRef("vault", f"transit:{store.prefix}-root-00000000@1"),
              KeyRef("vault", f"kv:{store.prefix}/keys/node-00000000")]
    for ghost in ghosts:
        for action in (store.public_key, store.signer):
            with pytest.raises(KeyNotFound) as error:
                action(ghost)
            one_line_without(error.value, vault_env.token)
    with pytest.raises(KeyNotFound):
        store.export(ghosts[1])
    for ghost in ghosts:
        store.delete(ghost)  # already gone: not an error
    with pytest.raises(BackendError, match="not a Vault key reference"):
        store.public_key(KeyRef("vault", "files:node-0.pem"))


def test_key_deleted_behind_the_stores_back(vault_env, make_store):
    store = make_store()
    ref = store.generate(authority())
    signer = store.signer(ref)
    _, name, _ = store._parse(ref.id)
    vault_env.api("POST", f"transit/keys/{name}/config", {"deletion_allowed": True})
    vault_env.api("DELETE", f"transit/keys/{name}")
    with pytest.raises(KeyNotFound):
        self_signed(signer, store.public_key(ref))
    assert store.missing([ref]) == {ref}


def test_tls_verification(bao_tls_server, make_store, monkeypatch):
    monkeypatch.setenv("VAULT_TOKEN", bao_tls_server.token)
    monkeypatch.delenv("VAULT_ADDR", raising=False)  # the address from the backend table, then
    monkeypatch.delenv("VAULT_CACERT", raising=False)
    with pytest.raises(BackendUnavailable, match="TLS verification failed.*ca_cert"):
        make_store(address=bao_tls_server.address).check()
    make_store(address=bao_tls_server.address, ca_cert=str(bao_tls_server.ca_cert)).check()
    monkeypatch.setenv("VAULT_CACERT", str(bao_tls_server.ca_cert))
    store = make_store(address=bao_tls_server.address)
    assert store.generate(leaf()).id.startswith("kv:")
    monkeypatch.delenv("VAULT_CACERT")
    make_store(address=bao_tls_server.address, tls_verify=False).check()


# -- a real (non-dev) server: sealed, stopped, restarted with its data ------------------------------------------
@pytest.fixture
def file_env(bao_file_server, monkeypatch):
    if not bao_file_server.running:
        bao_file_server.start()
    monkeypatch.setenv("VAULT_ADDR", bao_file_server.address)
    monkeypatch.setenv("VAULT_TOKEN", bao_file_server.token)
    yield bao_file_server
    if not bao_file_server.running:
        bao_file_server.start()
    status, body = bao_file_server.api("GET", "sys/seal-status", ok=False)
    if body.get("sealed"):
        bao_file_server.unseal()


def test_sealed_server(file_env, make_store):
    store = make_store()
    ref = store.generate(authority())
    store.check()
    file_env.seal()
    for action in (store.check, lambda: make_store().signer(ref), lambda: store.generate(leaf())):
        with pytest.raises(BackendUnavailable) as error:
            action()
        text = one_line_without(error.value, file_env.token)
        assert "is sealed" in text and "operator unseal" in text
    file_env.unseal()
    public = store.public_key(ref)
    verify_signed_by(self_signed(store.signer(ref), public), public)


def test_server_stopped_and_restarted_keeps_keys(file_env, make_store):
    store = make_store()
    root = store.generate(authority("root", KeyType.RSA_2048))
    node = store.generate(leaf("node-0"))
    public = store.public_key(root)
    signer = store.signer(root)
    file_env.stop(kill=True)
    with pytest.raises(BackendUnavailable, match="cannot reach Vault"):
        leaf_cert(signer, public, store.public_key(node))  # the server died between two signatures
    file_env.start()
    verify_signed_by(leaf_cert(signer, public, store.public_key(node)), public)
    fresh = make_store(prefix=store.prefix)
    assert spki_der(fresh.public_key(root)) == spki_der(public)
    assert fresh.missing([root, node]) == set()
    assert spki_der(fresh.export(node).public_key()) == spki_der(store.public_key(node))


def test_namespace(vault_env, make_store):
    status, _ = vault_env.api("GET", "sys/namespaces/pki-ns", ok=False)
    if status != 200:
        vault_env.api("POST", "sys/namespaces/pki-ns", {})
        ns = {"X-Vault-Namespace": "pki-ns", "X-Vault-Token": vault_env.token}
        for mount, body in (("transit", {"type": "transit"}), ("secret", {"type": "kv", "options": {"version": "2"}})):
            r = vault_env._http.post(f"{vault_env.address}/v1/sys/mounts/{mount}", json=body, headers=ns, timeout=10)
            assert r.status_code in (200, 204), r.text
    store = make_store(namespace="pki-ns")
    deadline = time.monotonic() + 10
    while True:  # a new KV v2 mount takes a moment before it accepts writes
        try:
            node = store.generate(leaf())
            break
        except BackendError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)
    store.check()
    root = store.generate(authority())
    public = store.public_key(root)
    verify_signed_by(leaf_cert(store.signer(root), public, store.public_key(node)), public)
    outside = make_store(prefix=store.prefix)  # the root namespace has neither key
    assert outside.missing([root, node]) == {root, node}


def test_bad_tls_files_and_addresses_are_one_line(vault_env, make_store, tmp_path, monkeypatch):
    with pytest.raises(BackendUnavailable, match="ca_cert .*missing.pem is not a file"):
        make_store(ca_cert="missing.pem").check()
    monkeypatch.delenv("VAULT_ADDR")
    (tmp_path / "c.pem").write_text("not a certificate")
    with pytest.raises(BackendUnavailable) as error:
        make_store(address="https://127.0.0.1:1", client_cert="c.pem", client_key="nope.pem").check()
    one_line_without(error.value, vault_env.token)
    monkeypatch.setenv("VAULT_ADDR", "vault.example:8200")
    with pytest.raises(BackendUnavailable, match="must start with http"):
        make_store().generate(leaf())


def test_dev_server_stop_and_start(vault_env, make_store):
    """The dev server restarts on the same address, empty (dev mode keeps nothing in memory)."""
    store = make_store()
    ref = store.generate(authority())
    vault_env.stop()
    try:
        with pytest.raises(BackendUnavailable, match="cannot reach Vault"):
            store.check()
    finally:
        vault_env.start()
    store.check()
    assert store.missing([ref]) == {ref}
    assert store.generate(authority()).id.startswith("transit:")
