"""Test scaffolding for backend authors: one conformance suite that every key store passes.

Use it from a pytest module by subclassing and providing a ``store`` fixture::

    from pkiascode.testing import KeyStoreConformance

    class TestMyStore(KeyStoreConformance):
        unsupported = {KeyType.ED25519}      # key types the store refuses with UnsupportedKeyType

        @pytest.fixture
        def store(self, tmp_path):
            s = MyStore("mine", {...}, StoreContext(tmp_path, tmp_path / ".pki"))
            yield s
            s.close()

The suite signs real certificates and CRLs with each key type and verifies them with
`cryptography`, so a store that returns a wrong signature, a PSS signature or the wrong key
version fails here.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import datetime
from typing import Any, ClassVar

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding
from cryptography.x509.oid import NameOID

from .backend import KeyRef, KeyRequest, KeyStore
from .errors import BackendError, KeyNotExportable, KeyNotFound, UnsupportedKeyType
from .keytypes import KeyType, generate_private_key, key_type_of, signature_hash

__all__ = ["KeyStoreConformance", "self_signed", "verify_signed_by"]


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def self_signed(signer: Any, public_key: Any, cn: str = "conformance") -> x509.Certificate:
    now = datetime.datetime.now(datetime.timezone.utc)
    return (
        x509.CertificateBuilder()
        .subject_name(_name(cn))
        .issuer_name(_name(cn))
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(signer, signature_hash(public_key))
    )


def _spki(key: Any) -> bytes:
    public = key if not hasattr(key, "public_key") else key.public_key()
    return public.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def verify_signed_by(cert: x509.Certificate, public_key: Any) -> None:
    """Raises if ``cert`` is not signed by ``public_key`` (checked by `cryptography`, not by us)."""
    if isinstance(public_key, ec.EllipticCurvePublicKey):
        public_key.verify(cert.signature, cert.tbs_certificate_bytes, ec.ECDSA(cert.signature_hash_algorithm))
    elif hasattr(public_key, "key_size"):
        public_key.verify(cert.signature, cert.tbs_certificate_bytes, padding.PKCS1v15(),
                          cert.signature_hash_algorithm)
    else:
        public_key.verify(cert.signature, cert.tbs_certificate_bytes)


class KeyStoreConformance:
    """Every key store must pass these. Subclasses provide the ``store`` fixture."""

    #: key types the store refuses with UnsupportedKeyType
    unsupported: ClassVar[set[KeyType]] = set()
    #: whether several PKIs (each its ``[pki] id``) can keep keys in one backing store, as in one Vault
    #: or on one token: then the store must refuse every reference outside its own PKI's namespace
    shared_between_pkis: ClassVar[bool] = False

    @pytest.fixture
    def store(self) -> KeyStore:  # pragma: no cover - provided by subclasses
        raise NotImplementedError("provide a `store` fixture")

    def _request(self, key_type: KeyType, *, authority: bool = True, name: str = "conf") -> KeyRequest:
        return KeyRequest(name=name, key_type=key_type, authority=authority, exportable=not authority)

    @pytest.mark.parametrize("key_type", list(KeyType), ids=lambda k: k.value)
    def test_generate_sign_certificate_and_crl(self, store: KeyStore, key_type: KeyType) -> None:
        if key_type in self.unsupported:
            with pytest.raises(UnsupportedKeyType):
                store.generate(self._request(key_type))
            return
        ref = store.generate(self._request(key_type))
        assert isinstance(ref, KeyRef) and ref.store == store.name and ref.origin == "generated"
        public = store.public_key(ref)
        assert key_type_of(public) is key_type
        signer = store.signer(ref)
        cert = self_signed(signer, public)
        verify_signed_by(cert, public)
        now = datetime.datetime.now(datetime.timezone.utc)
        crl = (x509.CertificateRevocationListBuilder().issuer_name(cert.subject)
               .last_update(now).next_update(now + datetime.timedelta(days=1))
               .sign(signer, signature_hash(public)))
        assert crl.is_signature_valid(public)
        csr = x509.CertificateSigningRequestBuilder().subject_name(_name("csr")).sign(signer, signature_hash(public))
        assert csr.is_signature_valid
        store.delete(ref)

    def test_signer_reveals_nothing(self, store: KeyStore) -> None:
        ref = store.generate(self._request(KeyType.ECDSA_P256))
        signer = store.signer(ref)
        text = repr(signer) + str(ref)
        assert "PRIVATE KEY" not in text
        if not store.is_exportable(ref) and not store.releases_non_exportable:  # kept inside: the signer too
            with pytest.raises(KeyNotExportable):
                signer.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                     serialization.NoEncryption())
        store.delete(ref)

    def test_refs_are_unique_and_never_overwrite(self, store: KeyStore) -> None:
        a = store.generate(self._request(KeyType.ECDSA_P256, name="same"))
        b = store.generate(self._request(KeyType.ECDSA_P256, name="same"))
        assert a != b
        pa, pb = store.public_key(a), store.public_key(b)
        raw = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        assert pa.public_bytes(*raw) != pb.public_bytes(*raw)
        assert store.missing([a, b]) == set()
        store.delete(a)
        store.delete(b)

    def test_missing_exists_delete(self, store: KeyStore) -> None:
        ref = store.generate(self._request(KeyType.ECDSA_P256))
        ghost = KeyRef(store.name, ref.id + "-ghost")
        assert store.missing([ref, ghost]) == {ghost}
        assert store.exists(ref) and not store.exists(ghost)
        store.delete(ref)
        assert not store.exists(ref)
        store.delete(ref)  # already gone: not an error
        with pytest.raises(KeyNotFound):
            store.public_key(ref)
        with pytest.raises(KeyNotFound):
            store.signer(ref)

    @pytest.mark.parametrize("authority", [True, False], ids=["authority", "leaf"])
    @pytest.mark.parametrize("exportable", [True, False], ids=["exportable", "non-exportable"])
    def test_exportable_only_when_the_entry_says_so(self, store: KeyStore, authority: bool, exportable: bool) -> None:
        """A key made for ``exportable = false`` never leaves through `export` (an authority's by
        default); one made for ``exportable = true`` does wherever the store can hand keys out."""
        request = KeyRequest(name="conf", key_type=KeyType.ECDSA_P256, authority=authority, exportable=exportable)
        for ref in (store.generate(request), store.import_key(request, generate_private_key(KeyType.ECDSA_P256))):
            expected = exportable and store.holds_exportable
            assert store.is_exportable(ref) is expected
            if expected:
                assert _spki(store.export(ref)) == _spki(store.public_key(ref))
            else:
                with pytest.raises(KeyNotExportable) as info:
                    store.export(ref)
                assert store.name in str(info.value) and "\n" not in str(info.value)
                if store.releases_non_exportable:  # it may still move into a store that keeps it inside
                    assert _spki(store.release(ref)) == _spki(store.public_key(ref))
                else:
                    with pytest.raises(KeyNotExportable):
                        store.release(ref)
            # the reference says it too, without asking the store: a fresh instance agrees
            assert type(store)(store.name, store.settings, store.context).is_exportable(ref) is expected
            store.delete(ref)

    def test_list_keys(self, store: KeyStore) -> None:
        """`list_keys` names every key of this store's namespace, and only keys: a new one appears,
        a deleted one goes, and what it lists are references the store can use."""
        before = set(store.list_keys())
        a = store.generate(self._request(KeyType.ECDSA_P256, name="listed"))
        b = store.generate(self._request(KeyType.ECDSA_P256, authority=False, name="listed"))
        listed = store.list_keys()
        assert listed == sorted(listed, key=lambda r: r.id)
        assert set(listed) - before == {KeyRef(store.name, a.id), KeyRef(store.name, b.id)}
        assert all(r.store == store.name for r in listed)
        assert store.missing(listed) == set()
        store.delete(a)
        assert set(store.list_keys()) - before == {KeyRef(store.name, b.id)}
        store.delete(b)

    @pytest.mark.parametrize("key_type", [KeyType.RSA_2048, KeyType.ECDSA_P256, KeyType.ECDSA_P384,
                                          KeyType.ED25519], ids=lambda k: k.value)
    def test_import_key_signs_for_the_existing_certificate(self, store: KeyStore, key_type: KeyType) -> None:
        original = generate_private_key(key_type)
        cert = self_signed(original, original.public_key(), "existing")
        if key_type in self.unsupported:
            with pytest.raises(UnsupportedKeyType):
                store.import_key(self._request(key_type), original)
            return
        ref = store.import_key(self._request(key_type), original)
        assert ref.origin == "imported"
        assert not store.is_exportable(ref)  # authority=True: exportable=False
        # the imported key signs something the existing certificate's key verifies
        new_cert = self_signed(store.signer(ref), original.public_key(), "existing")
        verify_signed_by(new_cert, cert.public_key())
        store.delete(ref)

    def test_generate_from_threads(self, store: KeyStore) -> None:
        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            refs = list(pool.map(lambda i: store.generate(self._request(KeyType.ECDSA_P256, name=f"t{i}")),
                                 range(6)))
        assert len(set(refs)) == 6
        assert store.missing(refs) == set()
        for ref in refs:
            store.delete(ref)

    def test_another_pkis_reference_is_refused(self, store: KeyStore) -> None:
        """A reference a pull request could write into state (pending deletions, the inventory, the key
        journal) naming another PKI's key in the same backing store is refused by every method that
        takes one, and the key stays."""
        if not self.shared_between_pkis:
            pytest.skip("the store's keys are not shared between PKIs")
        other = type(store)(store.name, store.settings, dataclasses.replace(store.context, pki_id="otherpki0conf"))
        ref = other.generate(self._request(KeyType.ECDSA_P256))
        try:
            for action in (store.delete, store.signer, store.public_key, store.export, store.release,
                           lambda r: store.missing([r])):
                with pytest.raises(BackendError) as info:
                    action(ref)
                assert "is not a key of this PKI" in str(info.value) and "\n" not in str(info.value)
            assert other.missing([ref]) == set()
        finally:
            other.delete(ref)
            other.close()

    def test_errors_are_backend_errors(self, store: KeyStore) -> None:
        ghost = KeyRef(store.name, "no-such-key-0000")
        with pytest.raises(BackendError) as info:
            store.signer(ghost)
        assert "\n" not in str(info.value)
