"""A key reference outside this PKI's namespace is refused (review finding F3), on a real SoftHSM2
token that several PKIs (and another application) share: a store with a ``[pki] id`` touches only
labels ``pki.<id>.<entry>-<8 hex>``, one without only ``pki-<entry>-<8 hex>``; a forged reference to
another PKI's key or to any other object on the token is a `BackendError` "... is not a key of this
PKI (namespace ...)" from delete, signer, public key, export and missing, and the object stays."""

from __future__ import annotations

from pathlib import Path

import pytest

try:
    import pkcs11
except ImportError:  # pragma: no cover - conftest reports it
    pkcs11 = None
from pkcs11 import Attribute

from helpers import Pki, git, git_init, inventory

from pkiascode.backend import KeyRef, KeyRequest, StoreContext
from pkiascode.errors import BackendError
from pkiascode.keytypes import KeyType
from pkiascode.testing import self_signed, verify_signed_by
from pkiascode_pkcs11 import Pkcs11KeyStore, _token

FOREIGN = "is not a key of this PKI (namespace"


def request(name: str = "root") -> KeyRequest:
    return KeyRequest(name=name, key_type=KeyType.ECDSA_P256, authority=True, exportable=False)


def make(tmp_path: Path, softhsm, pki_id: str | None, **settings) -> Pkcs11KeyStore:
    return Pkcs11KeyStore("hsm", {**softhsm.settings(), **settings}, StoreContext(tmp_path, tmp_path / ".pki", pki_id))


def on_token(store: Pkcs11KeyStore, ref: KeyRef) -> int:
    handle = _token.KeyHandle.parse("hsm", ref.id)
    session = store._conn().token.open(rw=False)
    try:
        return len(list(session.get_objects({Attribute.LABEL: handle.label, Attribute.ID: handle.cka_id})))
    finally:
        session.close()


def assert_refused(store: Pkcs11KeyStore, ref: KeyRef) -> None:
    for use, call in {"delete": lambda: store.delete(ref), "signer": lambda: store.signer(ref),
                      "public_key": lambda: store.public_key(ref), "export": lambda: store.export(ref),
                      "release": lambda: store.release(ref), "missing": lambda: store.missing([ref])}.items():
        with pytest.raises(BackendError) as info:
            call()
        text = str(info.value)
        assert FOREIGN in text and text.startswith("backend hsm: ") and "\n" not in text, (use, text)


def test_another_pkis_keys_and_other_objects_are_refused_and_stay(tmp_path, softhsm):
    a, b, legacy = (make(tmp_path, softhsm, i) for i in ("pkiaaaa1", "pkibbbb2", None))
    refs = {s: s.generate(request()) for s in (a, b, legacy)}
    session = a._conn().token.open(rw=True)
    other_app = session.generate_keypair(
        pkcs11.KeyType.EC, store=True, label="payments-signing", id=b"\x0a\x0b",
        public_template={Attribute.EC_PARAMS: pkcs11.util.ec.encode_named_curve_parameters("secp256r1")})
    try:
        outsider = KeyRef("hsm", "payments-signing/0a0b")
        for store in (a, b, legacy):
            for other, ref in refs.items():
                if other is not store:
                    assert_refused(store, ref)
            assert_refused(store, outsider)
        text = str(pytest.raises(BackendError, a.delete, refs[legacy]).value)
        assert "set legacy_keys = true in [backend.hsm]" in text, text
        for ref in refs.values():
            assert on_token(a, ref) == 2, ref  # private and public halves, all still there
        assert len(list(session.get_objects({Attribute.LABEL: "payments-signing"}))) == 2
        for store, ref in refs.items():  # each still uses its own
            verify_signed_by(self_signed(store.signer(ref), store.public_key(ref)), store.public_key(ref))
            assert store.missing([ref]) == set()
    finally:
        for obj in other_app:
            obj.destroy()
        session.close()
        for store, ref in refs.items():
            store.delete(ref)


def test_legacy_keys_reaches_the_unscoped_labels_and_never_another_id(tmp_path, softhsm):
    before = make(tmp_path, softhsm, None)
    after = make(tmp_path, softhsm, "givenid1", legacy_keys=True)
    other = make(tmp_path, softhsm, "otherid2")
    old, theirs = before.generate(request()), other.generate(request())
    try:
        assert after.missing([old]) == set()
        verify_signed_by(self_signed(after.signer(old), after.public_key(old)), after.public_key(old))
        assert_refused(after, theirs)
        assert old not in after.list_keys()  # `pki prune` never takes in the shared unscoped labels
        after.delete(old)
        assert on_token(after, old) == 0
    finally:
        before.delete(old)
        other.delete(theirs)


def test_legacy_keys_is_checked_as_a_boolean(softhsm):
    assert Pkcs11KeyStore.options["legacy_keys"].type is bool


# -- a repository from before ids whose keys are on the token (issue 11, item 4) --------------------

PRE_ID_TOML = """
[defaults]
key = "ecdsa-p256"
subject = { O = "pkiascode pre-id" }

[authority.root]
common_name = "Pre-id Root"
backend = "hsm"

[authority.inter]
issuer = "root"
common_name = "Pre-id Intermediate"
backend = "hsm"
path_length = 0

[certificate.web]
issuer = "inter"
hosts = ["web.example"]
"""
NEW_AUTHORITY = '\n[authority.sub]\nissuer = "root"\ncommon_name = "Sub CA"\nbackend = "hsm"\n'


def test_a_pre_id_repository_on_a_token_gets_an_id_and_legacy_keys(tmp_path, private_hsm):
    """Keys made on the token before the [pki] id (labels pki-…): the next apply writes the id and
    legacy_keys = true into [backend.hsm] (shown in the plan), commits pki.toml with state/, keeps
    signing with the old keys, labels new keys in the namespace, and --replace moves an old one in."""
    hsm = private_hsm
    repo = git_init(tmp_path / "repo")
    table = f'[backend.hsm]\nplugin = "pkcs11"\nmodule = "{hsm.module}"\ntoken = "{hsm.token}"\n'
    (repo / ".gitignore").write_text(".pki/\n")
    (repo / "pki.toml").write_text(table + PRE_ID_TOML)
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "pki.toml")
    pki = Pki(repo, hsm.env())
    (repo / "pki.toml").write_text(table + PRE_ID_TOML + "# edited\n")  # (not HEAD's: apply adds no id)
    pki.apply()
    (repo / "pki.toml").write_text(table + PRE_ID_TOML + NEW_AUTHORITY)
    git(repo, "commit", "-q", "-am", "pki.toml")
    old = {name: obj["key"]["ref"] for name, obj in inventory(repo).items()}
    assert old["root"].startswith("pki-root-") and old["inter"].startswith("pki-inter-"), old

    plan = pki.ok("plan").stdout
    assert ("apply edits pki.toml, in its commit: a random [pki] id, which scopes this PKI's keys and lock in "
            "shared key stores; and legacy_keys = true in [backend.hsm]") in plan, plan
    pki.apply()
    text = (repo / "pki.toml").read_text()
    pki_id = text.split('\n[pki]\nid = "', 1)[1].split('"', 1)[0]
    assert text.startswith(table + "legacy_keys = true # keys made before the [pki] id")
    assert git(repo, "show", "HEAD:pki.toml") == text and git(repo, "status", "--porcelain").strip() == ""
    refs = {name: obj["key"]["ref"] for name, obj in inventory(repo).items()}
    assert {n: r for n, r in refs.items() if n != "sub"} == old
    assert refs["sub"].startswith(f"pki.{pki_id}.sub-"), refs  # signed by the old root key
    assert pki.plan_exit("--detailed-exitcode") == 0

    pki.apply("--replace", "inter")
    assert inventory(repo)["inter"]["key"]["ref"].startswith(f"pki.{pki_id}.inter-")
    rows = pki.ok("keys", "--format", "json").json()
    assert "orphan" not in {r["status"] for r in rows}, rows
    assert pki.plan_exit("--detailed-exitcode") == 0
