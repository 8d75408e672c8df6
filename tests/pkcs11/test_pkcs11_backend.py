"""The pkcs11 backend against a real SoftHSM2 token: the shared conformance suite, then what an HSM
adds: keys that cannot be read off the token (checked through PKCS#11 and with OpenSC's
pkcs11-tool), imports that stay valid for existing certificates, exact labels, and one clear line for
every fault."""

from __future__ import annotations

import concurrent.futures
import datetime
import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

try:
    import pkcs11
except ImportError:  # conftest's softhsm fixture explains; on CI this is an error
    if os.environ.get("CI"):
        raise
    pytest.skip("python-pkcs11 is not installed", allow_module_level=True)
from pkcs11 import Attribute, ObjectClass
from pkcs11 import exceptions as p11e

from helpers import assert_one_line, require_tool
from pkiascode.backend import KeyRef, KeyRequest, StoreContext
from pkiascode.errors import (
    BackendError,
    BackendUnavailable,
    KeyNotExportable,
    KeyNotFound,
    UnsupportedKeyType,
)
from pkiascode.keytypes import KeyType, generate_private_key, signature_hash
from pkiascode.plugins import Plugins
from pkiascode.testing import KeyStoreConformance, self_signed, verify_signed_by
from pkiascode_pkcs11 import Pkcs11KeyStore, _token

pytestmark = pytest.mark.pkcs11


def make_store(tmp_path: Path, settings: dict[str, str], name: str = "hsm") -> Pkcs11KeyStore:
    return Pkcs11KeyStore(name, settings, StoreContext(tmp_path, tmp_path / ".pki"))


@pytest.fixture
def store(tmp_path, softhsm):
    s = make_store(tmp_path, softhsm.settings())
    yield s
    s.close()


@pytest.fixture
def session(store: Pkcs11KeyStore):
    """A second session on the token, to look at objects independently of the store's own."""
    store.check()  # logs the process in; PKCS#11 logins are per application, not per session
    s = store._conn().token.open(rw=True)
    yield s
    s.close()


def request(name: str, key_type: KeyType = KeyType.ECDSA_P256, *, authority: bool = True) -> KeyRequest:
    return KeyRequest(name=name, key_type=key_type, authority=authority, exportable=not authority)


def objects(session, ref: KeyRef) -> dict[ObjectClass, object]:
    handle = _token.KeyHandle.parse("hsm", ref.id)
    found = {}
    for obj in session.get_objects({Attribute.LABEL: handle.label, Attribute.ID: handle.cka_id}):
        found[obj[Attribute.CLASS]] = obj
    return found


def pkcs11_tool_access(softhsm, label: str) -> str:
    """The ``Access:`` line pkcs11-tool prints for the private key labelled ``label``."""
    out = subprocess.run(
        [require_tool("pkcs11-tool"), "--module", softhsm.module, "--token-label", softhsm.token, "--login",
         "--pin", os.environ[softhsm.pin_env], "--list-objects", "--type", "privkey"],
        check=True, capture_output=True, text=True).stdout
    for block in out.split("Private Key Object")[1:]:
        if re.search(rf"^\s*label:\s*{re.escape(label)}\s*$", block, re.M):
            return re.search(r"^\s*Access:\s*(.*)$", block, re.M).group(1)
    raise AssertionError(f"pkcs11-tool does not list {label}:\n{out}")


# -- the shared suite -----------------------------------------------------------------------------

class TestPkcs11Conformance(KeyStoreConformance):
    # SoftHSM 2.6 has CKM_EC_EDWARDS_KEY_PAIR_GEN and CKM_EDDSA: every key type works on it.
    unsupported: set[KeyType] = set()
    shared_between_pkis = True

    @pytest.fixture
    def store(self, tmp_path, softhsm):
        s = make_store(tmp_path, softhsm.settings())
        yield s
        s.close()


def test_softhsm_offers_eddsa_so_ed25519_is_supported(store):
    conn = store._conn()
    assert {pkcs11.Mechanism.EC_EDWARDS_KEY_PAIR_GEN, pkcs11.Mechanism.EDDSA} <= conn.mechanisms
    # and SoftHSM has raw ECDSA only, so ECDSA signatures take the hash-here path
    assert pkcs11.Mechanism.ECDSA in conn.mechanisms
    assert pkcs11.Mechanism.ECDSA_SHA256 not in conn.mechanisms


# -- the key stays on the token -------------------------------------------------------------------

@pytest.mark.parametrize("key_type", [KeyType.ECDSA_P256, KeyType.RSA_2048, KeyType.ED25519],
                         ids=lambda k: k.value)
def test_generated_private_key_cannot_be_read_from_the_token(store, session, softhsm, key_type):
    ref = store.generate(request("root", key_type))
    private = objects(session, ref)[ObjectClass.PRIVATE_KEY]
    assert private[Attribute.TOKEN] is True
    assert private[Attribute.PRIVATE] is True
    assert private[Attribute.SENSITIVE] is True
    assert private[Attribute.EXTRACTABLE] is False
    assert private[Attribute.ALWAYS_SENSITIVE] is True
    assert private[Attribute.NEVER_EXTRACTABLE] is True
    assert private[Attribute.LOCAL] is True  # made on the token
    assert private[Attribute.SIGN] is True
    assert private[Attribute.DECRYPT] is False and private[Attribute.UNWRAP] is False
    secret = Attribute.PRIVATE_EXPONENT if key_type.is_rsa else Attribute.VALUE
    with pytest.raises(p11e.AttributeSensitive):
        private[secret]
    with pytest.raises(p11e.PKCS11Error):  # and it cannot be made extractable afterwards
        private[Attribute.EXTRACTABLE] = True
    with pytest.raises(p11e.PKCS11Error):
        private[Attribute.SENSITIVE] = False
    access = pkcs11_tool_access(softhsm, _token.KeyHandle.parse("hsm", ref.id).label)
    assert {"sensitive", "always sensitive", "never extractable", "local"} <= set(access.split(", "))
    assert "extractable" not in access.replace("never extractable", "")
    store.delete(ref)


@pytest.mark.parametrize("key_type", [KeyType.RSA_2048, KeyType.ECDSA_P384, KeyType.ED25519],
                         ids=lambda k: k.value)
def test_imported_key_is_sensitive_non_extractable_and_signs_for_the_existing_certificate(
        store, session, softhsm, key_type):
    original = generate_private_key(key_type)
    existing_ca = self_signed(original, original.public_key(), "Existing CA")
    ref = store.import_key(request("root", key_type), original)
    assert ref.origin == "imported" and not store.is_exportable(ref)
    private = objects(session, ref)[ObjectClass.PRIVATE_KEY]
    assert private[Attribute.SENSITIVE] is True
    assert private[Attribute.EXTRACTABLE] is False
    assert private[Attribute.TOKEN] is True and private[Attribute.PRIVATE] is True
    # honest flags: the key existed outside the token before
    assert private[Attribute.LOCAL] is False and private[Attribute.NEVER_EXTRACTABLE] is False
    with pytest.raises(p11e.AttributeSensitive):
        private[Attribute.PRIVATE_EXPONENT if key_type.is_rsa else Attribute.VALUE]
    access = pkcs11_tool_access(softhsm, _token.KeyHandle.parse("hsm", ref.id).label)
    assert "sensitive" in access.split(", ")
    assert "extractable" not in access.replace("never extractable", "")

    # the public key on the token is the certificate's, and the token signs what it verifies
    spki = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    assert store.public_key(ref).public_bytes(*spki) == existing_ca.public_key().public_bytes(*spki)
    signer = store.signer(ref)
    now = datetime.datetime.now(datetime.timezone.utc)
    crl = (x509.CertificateRevocationListBuilder().issuer_name(existing_ca.subject)
           .last_update(now).next_update(now + datetime.timedelta(days=7))
           .sign(signer, signature_hash(existing_ca.public_key())))
    assert crl.is_signature_valid(existing_ca.public_key())
    leaf_key = generate_private_key(KeyType.ECDSA_P256)
    leaf = (x509.CertificateBuilder().subject_name(x509.Name.from_rfc4514_string("CN=leaf"))
            .issuer_name(existing_ca.subject).public_key(leaf_key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now)
            .not_valid_after(now + datetime.timedelta(days=1))
            .sign(signer, signature_hash(existing_ca.public_key())))
    leaf.verify_directly_issued_by(existing_ca)
    with pytest.raises(KeyNotExportable, match="backend hsm: .* can never be exported"):
        store.export(ref)
    store.delete(ref)


def test_import_refuses_keys_pkiascode_does_not_use(store):
    from cryptography.hazmat.primitives.asymmetric import ec

    with pytest.raises(UnsupportedKeyType, match="backend hsm: cannot import the key: EC curve secp521r1"):
        store.import_key(request("root"), ec.generate_private_key(ec.SECP521R1()))


# -- references and labels ------------------------------------------------------------------------

def test_reference_is_label_and_random_cka_id(store, session):
    ref = store.generate(request("node-0", authority=False))
    assert re.fullmatch(r"pki-node-0-[0-9a-f]{8}/[0-9a-f]{32}", ref.id)
    label, cka_id = ref.id.split("/")
    found = objects(session, ref)
    assert set(found) == {ObjectClass.PRIVATE_KEY, ObjectClass.PUBLIC_KEY}
    for obj in found.values():
        assert obj[Attribute.LABEL] == label and obj[Attribute.ID] == bytes.fromhex(cka_id)
    store.delete(ref)
    assert objects(session, ref) == {}


def foreign_key_pair(session, label: str) -> tuple[object, object]:
    return session.generate_keypair(
        pkcs11.KeyType.EC, store=True, label=label, id=b"\x01\x02",
        public_template={Attribute.EC_PARAMS: pkcs11.util.ec.encode_named_curve_parameters("secp256r1")})


def foreign_data_object(session, label: str) -> tuple[object]:
    return (session.create_object({Attribute.CLASS: ObjectClass.DATA, Attribute.TOKEN: True,
                                   Attribute.LABEL: label, Attribute.APPLICATION: "someone else",
                                   Attribute.VALUE: b"not a key"}),)


@pytest.mark.parametrize("make_foreign", [foreign_key_pair, foreign_data_object], ids=["key-pair", "data"])
def test_foreign_object_with_our_label_makes_lookup_fail_clearly(store, session, make_foreign):
    ref = store.generate(request("root"))
    label = ref.id.split("/")[0]
    foreign = make_foreign(session, label)
    for call in (store.public_key, store.signer):
        with pytest.raises(BackendError, match=rf"backend hsm: label '{label}' on PKCS#11 token "
                                               r"'pki-test' is also carried by objects pkiascode did not make"):
            call(ref)
    assert store.missing([ref]) == set()  # still there, just ambiguous
    store.delete(ref)  # deletes only its own pair
    assert len(list(session.get_objects({Attribute.LABEL: label}))) == len(foreign)
    for obj in foreign:
        obj.destroy()


def test_generate_never_reuses_a_taken_label(store, session, monkeypatch):
    foreign = foreign_data_object(session, "pki-clash-deadbeef")
    monkeypatch.setattr(_token, "_random_suffix", lambda: "deadbeef")
    with pytest.raises(BackendError, match=r"label 'pki-clash-deadbeef' is already taken on PKCS#11 "
                                           r"token 'pki-test' by an object pkiascode did not make"):
        store.generate(request("clash"))
    with pytest.raises(BackendError, match="already taken"):
        store.import_key(request("clash"), generate_private_key(KeyType.ECDSA_P256))
    assert len(list(session.get_objects({Attribute.LABEL: "pki-clash-deadbeef"}))) == 1  # untouched
    for obj in foreign:
        obj.destroy()


def test_malformed_references_are_missing_not_crashes(store):
    refs = [KeyRef("hsm", "no-such-key-0000"), KeyRef("hsm", "pki-x-00000000/zz"),
            KeyRef("hsm", "pki-x-00000000/" + "00" * 16)]
    assert store.missing(refs) == set(refs)
    with pytest.raises(KeyNotFound, match="is not a key of this store"):
        store.public_key(refs[0])
    with pytest.raises(KeyNotFound, match="is not on PKCS#11 token 'pki-test'"):
        store.signer(refs[2])
    store.delete(refs[0])


# -- sessions and threads -------------------------------------------------------------------------

def test_one_login_per_process_shared_by_stores(tmp_path, softhsm, monkeypatch):
    first = make_store(tmp_path, softhsm.settings(), "hsm")
    first.check()
    # another spelling of the same module and another store name: the same connection
    link = tmp_path / "elsewhere" / "softhsm.so"
    link.parent.mkdir()
    link.symlink_to(softhsm.module)
    second = make_store(tmp_path / "repo", softhsm.settings(module=str(link)), "hsm2")
    assert second._conn() is first._conn()
    monkeypatch.delenv(softhsm.pin_env)  # logged in already: the PIN is not needed again
    ref = second.generate(request("again"))
    assert first.exists(KeyRef("hsm", ref.id))
    second.delete(ref)


def test_a_lost_session_is_opened_again(store, monkeypatch):
    unraisable = []
    monkeypatch.setattr(sys, "unraisablehook", unraisable.append)
    ref = store.generate(request("root"))
    conn = store._conn()
    conn.close()  # logged out and closed, as after a token was re-inserted
    assert store.missing([ref]) == set()
    conn.close()
    verify_signed_by(self_signed(store.signer(ref), store.public_key(ref)), store.public_key(ref))
    conn.close()
    store.delete(store.generate(request("after")))
    store.delete(ref)
    # python-pkcs11's finaliser of the failed search does not reach stderr as "Exception ignored"
    assert unraisable == []


def test_signing_from_threads(store):
    ref = store.generate(request("root", KeyType.ECDSA_P256))
    public = store.public_key(ref)
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        certs = list(pool.map(lambda i: self_signed(store.signer(ref), public, f"t{i}"), range(12)))
    for cert in certs:
        verify_signed_by(cert, public)
    store.delete(ref)


# -- configuration --------------------------------------------------------------------------------

def test_options_and_validation():
    assert set(Pkcs11KeyStore.options) == {"module", "module_env", "token", "pin_env", "legacy_keys"}
    assert Pkcs11KeyStore.options["pin_env"].default == "PKI_PKCS11_PIN"
    assert Pkcs11KeyStore.validate({"token": "pki-ca"}) == []
    problems = dict(Pkcs11KeyStore.validate({"module": "", "pin_env": "NOT A NAME"}))
    assert set(problems) == {"token", "module", "pin_env"}
    assert "required" in problems["token"]
    assert Pkcs11KeyStore.validate({"token": "x" * 33})[0][0] == "token"
    assert dict(Pkcs11KeyStore.validate({"token": "t", "module": "lib/p11.so"}))["module"].startswith(
        "must be the absolute path of a PKCS#11 module outside the repository")
    assert dict(Pkcs11KeyStore.validate({"token": "t", "module": "/m.so", "module_env": "M"})) == {
        "module_env": "set module or module_env, not both"}
    assert "module_env" in dict(Pkcs11KeyStore.validate({"token": "t", "module_env": "not a name"}))


def test_registered_through_the_entry_point():
    assert Plugins().factory("pkcs11") is Pkcs11KeyStore


def test_plugin_import_does_not_load_python_pkcs11():
    code = "import sys, pkiascode_pkcs11; assert 'pkcs11' not in sys.modules, 'pkcs11 imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_without_python_pkcs11_the_store_says_what_to_install(tmp_path):
    code = textwrap.dedent("""
        import sys
        sys.modules["pkcs11"] = None  # as if python-pkcs11 were not installed
        from pathlib import Path
        from pkiascode.backend import StoreContext
        from pkiascode.errors import BackendUnavailable
        from pkiascode_pkcs11 import Pkcs11KeyStore
        try:
            Pkcs11KeyStore("hsm", {"token": "t"}, StoreContext(Path("."), Path(".pki"))).check()
        except BackendUnavailable as exc:
            print(exc)
    """)
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout
    assert out.strip() == ("backend hsm: the pkcs11 backend needs python-pkcs11; install it with "
                           "pip install 'pkiascode[pkcs11]'")


def test_default_module_is_the_first_softhsm_found(tmp_path, softhsm, monkeypatch):
    store = make_store(tmp_path, {"token": softhsm.token})
    assert store.module == next(m for m in _token.DEFAULT_MODULES if os.path.exists(m))
    store.check()
    monkeypatch.setattr(_token, "DEFAULT_MODULES", (str(tmp_path / "nowhere.so"),))
    with pytest.raises(BackendUnavailable, match=r"backend hsm: no PKCS#11 module configured and SoftHSM2 "
                                                 r"is not installed .*; set module = "):
        make_store(tmp_path, {"token": softhsm.token}).check()


# -- faults: one line, what to do, never the PIN --------------------------------------------------

def assert_one_safe_line(message: str) -> None:
    assert_one_line(message, os.environ.get("PKI_PKCS11_PIN", "246810"), "246810", "97531", "000000")


def test_module_not_found(tmp_path, softhsm):
    bad = tmp_path / "libnothere.so"
    with pytest.raises(BackendUnavailable) as info:
        make_store(tmp_path / "repo", softhsm.settings(module=str(bad))).check()
    assert str(info.value) == (
        f"backend hsm: PKCS#11 module {bad} not found; install it (SoftHSM2: apt install softhsm2) "
        "or set module = \"/path/to/pkcs11-module.so\" in [backend.hsm]")
    assert_one_safe_line(str(info.value))


def test_module_not_loadable(tmp_path, softhsm):
    junk = tmp_path / "junk.so"
    junk.write_bytes(b"not a shared object")
    with pytest.raises(BackendUnavailable, match=rf"backend hsm: cannot load PKCS#11 module {junk}: ") as info:
        make_store(tmp_path / "repo", softhsm.settings(module=str(junk))).generate(request("root"))
    assert_one_safe_line(str(info.value))


def test_token_not_found(tmp_path, softhsm):
    with pytest.raises(BackendUnavailable) as info:
        make_store(tmp_path, softhsm.settings(token="no-such-token")).check()
    message = str(info.value)
    assert message.startswith(f"backend hsm: no token labelled 'no-such-token' in {softhsm.module} (found: ")
    assert "'pki-test'" in message and "'pki-fault'" in message
    assert "softhsm2-util --init-token --free --label no-such-token" in message
    assert_one_safe_line(message)


def test_wrong_pin(tmp_path, softhsm, monkeypatch):
    monkeypatch.setenv(softhsm.fault_pin_env, "000000")
    store = make_store(tmp_path, softhsm.settings(token=softhsm.fault_token, pin_env=softhsm.fault_pin_env))
    with pytest.raises(BackendUnavailable) as info:
        store.check()
    assert str(info.value) == ("backend hsm: login to PKCS#11 token 'pki-fault' failed: the PIN in "
                               "$PKI_TEST_FAULT_PIN is wrong")
    with pytest.raises(BackendUnavailable, match="is wrong"):  # and nothing was cached
        store.generate(request("root"))
    assert_one_safe_line(str(info.value))


def test_pin_env_unset(tmp_path, softhsm, monkeypatch):
    monkeypatch.delenv(softhsm.fault_pin_env, raising=False)
    store = make_store(tmp_path, softhsm.settings(token=softhsm.fault_token, pin_env=softhsm.fault_pin_env))
    for call in (store.check, lambda: store.generate(request("root")),
                 lambda: store.missing([KeyRef("hsm", "pki-a-00000000/00")])):
        with pytest.raises(BackendUnavailable) as info:
            call()
        assert str(info.value) == ("backend hsm: set $PKI_TEST_FAULT_PIN to the user PIN of PKCS#11 token "
                                   "'pki-fault'")


def test_pin_is_never_in_any_message(tmp_path, softhsm, monkeypatch):
    monkeypatch.setenv(softhsm.fault_pin_env, softhsm.pin + "9")
    with pytest.raises(BackendUnavailable) as info:
        make_store(tmp_path, softhsm.settings(token=softhsm.fault_token, pin_env=softhsm.fault_pin_env)).check()
    assert softhsm.pin + "9" not in str(info.value) and softhsm.pin not in str(info.value)


# Token full: SoftHSM2 keeps objects in files and has no quota, so CKR_DEVICE_MEMORY cannot be
# provoked cheaply; the mapping from PKCS#11 errors to messages is tested directly instead.
@pytest.mark.parametrize("exc, kind, text", [
    (p11e.DeviceMemory(), BackendError,
     "backend hsm: generating a rsa-4096 key on PKCS#11 token 'pki-ca' failed: the token is full "
     "(CKR_DEVICE_MEMORY); delete objects it no longer needs or use a token with more room"),
    (p11e.MechanismInvalid(), UnsupportedKeyType,
     "backend hsm: generating a rsa-4096 key on PKCS#11 token 'pki-ca' failed: the token does not "
     "support it (CKR_MECHANISM_INVALID); choose another key type or another backend"),
    (p11e.KeySizeRange(), UnsupportedKeyType, "(CKR_KEY_SIZE_RANGE)"),
    (p11e.PinIncorrect(), BackendUnavailable, "not logged in (CKR_PIN_INCORRECT)"),
    (p11e.TokenNotPresent(), BackendUnavailable, "the token is not reachable (CKR_TOKEN_NOT_PRESENT)"),
    (p11e.TokenWriteProtected(), BackendUnavailable, "write-protected (CKR_TOKEN_WRITE_PROTECTED)"),
    (p11e.AttributeSensitive(), KeyNotExportable, "sensitive and stays on the token"),
    (p11e.GeneralError(), BackendError, "failed (CKR_GENERAL_ERROR)"),
    (p11e.PKCS11Error("Unmapped error code 0x80000001"), BackendError, "failed (Unmapped error code 0x80000001)"),
], ids=lambda v: type(v).__name__ if isinstance(v, Exception) else None)
def test_error_mapping(exc, kind, text):
    err = _token.translate(exc, store="hsm", token="pki-ca", doing="generating a rsa-4096 key")
    assert type(err) is kind
    assert text in str(err) and "\n" not in str(err)


MISSING_MECHANISMS = """
import json, sys
from pathlib import Path
from pkiascode.backend import StoreContext, KeyRequest
from pkiascode.errors import UnsupportedKeyType
from pkiascode.keytypes import KeyType, generate_private_key
from pkiascode.testing import self_signed, verify_signed_by
from pkiascode_pkcs11 import Pkcs11KeyStore

store = Pkcs11KeyStore("hsm", {"module": sys.argv[1], "token": "restricted"},
                       StoreContext(Path("."), Path(".pki")))
out = {}
for what, call in [
    ("generate", lambda: store.generate(KeyRequest("root", KeyType.ED25519, True, False))),
    ("import", lambda: store.import_key(KeyRequest("root", KeyType.ED25519, True, False),
                                        generate_private_key(KeyType.ED25519))),
]:
    try:
        call()
        out[what] = "no error"
    except UnsupportedKeyType as exc:
        out[what] = str(exc)
# RSA without CKM_SHA256_RSA_PKCS: hashed here, DigestInfo signed with CKM_RSA_PKCS
ref = store.generate(KeyRequest("root", KeyType.RSA_2048, True, False))
public = store.public_key(ref)
verify_signed_by(self_signed(store.signer(ref), public), public)
out["mechanisms"] = sorted(m.name for m in store._conn().mechanisms if hasattr(m, "name"))
print(json.dumps(out))
"""


def test_missing_mechanisms(tmp_path, softhsm):
    """A token without EdDSA and without CKM_SHA*_RSA_PKCS: SoftHSM2 restricted by its own config.

    SoftHSM reads its configuration once per process, so this runs in a child process. (SoftHSM 2.6
    ignores the first entry of a ``-`` list, hence the sacrificial CKM_MD5.)
    """
    tokens = tmp_path / "tokens"
    tokens.mkdir()
    conf = tmp_path / "softhsm2.conf"
    conf.write_text(f"directories.tokendir = {tokens}\nobjectstore.backend = file\nlog.level = ERROR\n"
                    "slots.mechanisms = -CKM_MD5,CKM_EC_EDWARDS_KEY_PAIR_GEN,CKM_EDDSA,"
                    "CKM_SHA256_RSA_PKCS,CKM_SHA384_RSA_PKCS,CKM_SHA512_RSA_PKCS\n")
    env = {**os.environ, "SOFTHSM2_CONF": str(conf), "PKI_PKCS11_PIN": softhsm.pin}
    subprocess.run([softhsm.util, "--init-token", "--free", "--label", "restricted", "--so-pin", softhsm.so_pin,
                    "--pin", softhsm.pin], check=True, capture_output=True, env=env)
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(MISSING_MECHANISMS), softhsm.module],
                          capture_output=True, text=True, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert "EDDSA" not in out["mechanisms"] and "SHA256_RSA_PKCS" not in out["mechanisms"]
    assert out["generate"] == ("backend hsm: PKCS#11 token 'restricted' cannot make ed25519 keys: it lacks "
                               "CKM_EC_EDWARDS_KEY_PAIR_GEN; choose another key type or another backend")
    assert out["import"] == ("backend hsm: PKCS#11 token 'restricted' cannot sign with ed25519 keys: it "
                             "lacks CKM_EDDSA; choose another key type or another backend")


# -- a namespace per PKI ----------------------------------------------------------------------------

def test_labels_and_listing_are_scoped_by_the_pki_id(tmp_path, softhsm):
    scoped = Pkcs11KeyStore("hsm", softhsm.settings(), StoreContext(tmp_path, tmp_path / ".pki", "team0alpha"))
    other = Pkcs11KeyStore("hsm", softhsm.settings(), StoreContext(tmp_path, tmp_path / ".pki", "team0beta"))
    legacy = make_store(tmp_path, softhsm.settings())
    refs = {s: s.generate(request("root")) for s in (scoped, other, legacy)}
    assert refs[scoped].id.startswith("pki.team0alpha.root-") and refs[legacy].id.startswith("pki-root-")
    for store in (scoped, other, legacy):
        listed = store.list_keys()
        assert refs[store] in listed
        assert not {refs[s] for s in (scoped, other, legacy) if s is not store} & set(listed)
    for store, ref in refs.items():
        store.delete(ref)


def test_a_forged_journal_request_never_becomes_a_label(store):
    for name, suffix in (("pki-root", "../x"), ("Root", "00000000"), ("root", "0000000g")):
        with pytest.raises(BackendError, match="invalid key request"):
            store.discard(KeyRequest(name, KeyType.ECDSA_P256, True, False, suffix))
