"""The usages a certificate gets are decided by the key it certifies (names.certificate_usages), the
same way in the plan and in the certificate signed; what is signed passes pkilint."""

from __future__ import annotations

import datetime as dt

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from pkiascode.keytypes import KeyType, generate_private_key
from pkiascode.lint import lint_certificate
from pkiascode.model import Entry, Kind
from pkiascode.names import canonical_usages, certificate_usages
from pkiascode.x509 import build_certificate

NOW = dt.datetime(2030, 1, 1, tzinfo=dt.timezone.utc)
SIGNER = generate_private_key(KeyType.ECDSA_P256)
ROOT = build_certificate(
    Entry(kind=Kind.AUTHORITY, name="root", issuer=None, common_name="root", subject=(), hosts=(),
          usages=canonical_usages(["cert sign", "crl sign", "digital signature"]), validity=86400, renew_before=3600,
          key=KeyType.ECDSA_P256, backend="local", rotate_key=False, exportable=False),
    public_key=SIGNER.public_key(), signer=SIGNER, issuer_cert=None, now=NOW, not_after=NOW + dt.timedelta(days=2))
SHARED = canonical_usages(["digital signature", "key encipherment", "data encipherment", "key agreement",
                           "encipher only", "server auth", "client auth"])


def _issue(key_type: KeyType, usages=SHARED, *, listed_key: KeyType | None = None, csr: bool = False):
    entry = Entry(kind=Kind.CERTIFICATE, name="leaf", issuer="root", common_name="leaf", subject=(),
                  hosts=(("dns", "leaf.example.com"),), usages=tuple(usages), validity=86400, renew_before=3600,
                  key=listed_key or key_type, backend="local", rotate_key=False, exportable=True,
                  csr="leaf.csr" if csr else None)
    key = generate_private_key(key_type)
    return build_certificate(entry, public_key=key.public_key(), signer=SIGNER, issuer_cert=ROOT, now=NOW,
                             not_after=NOW + dt.timedelta(days=1))


def _ku(cert) -> dict[str, bool]:
    ku = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    out = {}
    for attr in ("digital_signature", "key_encipherment", "data_encipherment", "key_agreement"):
        out[attr] = getattr(ku, attr)
    out["encipher_only"] = ku.key_agreement and ku.encipher_only
    return out


@pytest.mark.parametrize("key_type, expected", [
    (KeyType.RSA_2048, {"digital_signature": True, "key_encipherment": True, "data_encipherment": True,
                        "key_agreement": False, "encipher_only": False}),
    (KeyType.ECDSA_P256, {"digital_signature": True, "key_encipherment": False, "data_encipherment": False,
                          "key_agreement": True, "encipher_only": True}),
    (KeyType.ECDSA_P384, {"digital_signature": True, "key_encipherment": False, "data_encipherment": False,
                          "key_agreement": True, "encipher_only": True}),
    (KeyType.ED25519, {"digital_signature": True, "key_encipherment": False, "data_encipherment": False,
                       "key_agreement": False, "encipher_only": False}),
])
def test_the_key_decides_the_key_usage_bits(key_type, expected):
    cert = _issue(key_type)
    assert _ku(cert) == expected
    # what the plan says is what is signed
    kept = certificate_usages(SHARED, listed_key=key_type, key=key_type)[0]
    assert {u for u in kept if u in ("key encipherment", "data encipherment", "key agreement")} == {
        u for u, attr in (("key encipherment", "key_encipherment"), ("data encipherment", "data_encipherment"),
                          ("key agreement", "key_agreement")) if expected[attr]}
    findings = lint_certificate(cert.public_bytes(serialization.Encoding.DER))
    assert [f.id for f in findings if f.severity in ("FATAL", "ERROR")] == []


def test_a_csr_entry_with_default_usages_gets_the_defaults_of_the_csrs_key():
    ec_defaults = canonical_usages(["digital signature", "server auth", "client auth"])
    cert = _issue(KeyType.RSA_2048, ec_defaults, listed_key=KeyType.ECDSA_P256, csr=True)
    assert _ku(cert)["key_encipherment"]
    cert = _issue(KeyType.RSA_2048, ec_defaults, listed_key=KeyType.ECDSA_P256, csr=False)
    assert not _ku(cert)["key_encipherment"]  # not a CSR: listed usages as written


def test_timestamping_makes_the_extended_key_usage_critical():
    cert = _issue(KeyType.ECDSA_P256, canonical_usages(["digital signature", "timestamping"]))
    assert cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).critical
    cert = _issue(KeyType.ECDSA_P256, canonical_usages(["digital signature", "server auth"]))
    assert not cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).critical
