"""The proof (issue 13.5): a PKI with every key type, DNS/IP/email/URI SANs, name constraints, a
CSR-signed leaf, revocations and every usage a profile can hold, made by the real ``pki apply`` in a
real git repository, is accepted by the three judges:

- pkilint's RFC 5280 certificate and CRL linters report no ERROR (after the built-in filter);
- ``openssl verify -x509_strict -crl_check_all`` passes every chain (and refuses the revoked leaf);
- Go's crypto/x509 (tests/go/verify.go) accepts every chain with the right extended key usage and
  host name.
"""

from __future__ import annotations

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from go.verifiers import go_verify, openssl_verify
from helpers import Repo, cert_path, crl_path, edit_toml, inventory, load_cert, load_crl, openssl
from pkiascode.lint import lint_certificate, lint_crl

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("openssl_and_git")]

EVERY_USAGE = ('["digital signature", "content commitment", "key encipherment", "data encipherment", '
               '"key agreement", "encipher only", "server auth", "client auth", "code signing", '
               '"email protection", "ipsec end system", "ipsec tunnel", "ipsec user", "ocsp signing", "any"]')

PROOF_PKI = f"""\
[defaults]
key = "ecdsa-p256"
validity = "90d"
subject = {{ C = "US", O = "pkiascode proof" }}

[profile.kubernetes]                 # shared by RSA, ECDSA and Ed25519 leaves
usages = ["digital signature", "key encipherment", "server auth", "client auth"]

[profile.every]
usages = {EVERY_USAGE}

[profile.decipher]                   # decipher only excludes encipher only (RFC 5280)
usages = ["key agreement", "decipher only", "client auth"]

[profile.tsa]
usages = ["digital signature", "content commitment", "timestamping"]

[authority.root]
common_name = "Proof Root CA"
key = "rsa-4096"
validity = "10y"
crl_url = "http://crl.example.com/root.crl"

[authority.inter-ec]
issuer = "root"
common_name = "Proof EC Intermediate"
key = "ecdsa-p384"
validity = "5y"
path_length = 0
crl_url = "http://crl.example.com/inter-ec.crl"
name_constraints = {{ permitted = [".cluster.local", "example.com", "10.0.0.0/8", "fd00::/8", "@example.com", "uri:.cluster.local"], excluded = ["evil.example.com", "10.99.0.0/16"] }}

[authority.inter-ed]
issuer = "root"
common_name = "Proof Ed25519 Intermediate"
key = "ed25519"
validity = "5y"

[certificate.web]
issuer = "inter-ec"
profile = "kubernetes"
common_name = "web"
hosts = ["api.cluster.local", "*.svc.example.com", "10.0.0.1", "fd00::1", "ops@example.com", "spiffe://trust.cluster.local/ns/web"]

[certificate.node-0]
issuer = "root"
profile = "kubernetes"
key = "rsa-2048"
common_name = "system:node:node-0"
hosts = ["node-0", "127.0.0.1", "root@node-0", "https://node-0:6443/healthz"]

[certificate.every-rsa]
issuer = "root"
profile = "every"
key = "rsa-3072"
hosts = ["every-rsa.example.com"]

[certificate.every-ec]
issuer = "inter-ec"
profile = "every"
key = "ecdsa-p384"
hosts = ["every-ec.cluster.local"]

[certificate.every-ed]
issuer = "inter-ed"
profile = "every"
key = "ed25519"
hosts = ["every-ed.example.com", "ed@example.com"]

[certificate.decipher-ec]
issuer = "inter-ec"
profile = "decipher"
hosts = ["decipher.cluster.local"]

[certificate.tsa]
issuer = "root"
profile = "tsa"
key = "rsa-2048"

[certificate.partner]
issuer = "inter-ec"
common_name = "gw.cluster.local"
hosts = ["gw.cluster.local"]
csr = "csrs/partner.csr"             # an RSA key: its defaults include key encipherment

[certificate.old]
issuer = "inter-ec"
hosts = ["old.cluster.local"]

[certificate.old-root]
issuer = "root"
key = "rsa-2048"
hosts = ["old-root.example.com"]
"""

# leaf → (issuer chain below the root, [(eku, host)]) that Go must accept
GO_CHECKS = {
    "web": (["inter-ec"], [("server auth", "api.cluster.local"), ("server auth", "x.svc.example.com"),
                           ("server auth", "10.0.0.1"), ("server auth", "fd00::1"), ("client auth", "")]),
    "node-0": ([], [("server auth", "node-0"), ("server auth", "127.0.0.1"), ("client auth", "")]),
    "every-rsa": ([], [("code signing", ""), ("email protection", ""), ("ipsec user", ""),
                       ("ocsp signing", ""), ("server auth", "every-rsa.example.com")]),
    "every-ec": (["inter-ec"], [("server auth", "every-ec.cluster.local"), ("ipsec tunnel", "")]),
    "every-ed": (["inter-ed"], [("server auth", "every-ed.example.com"), ("email protection", "")]),
    "decipher-ec": (["inter-ec"], [("client auth", "")]),
    "tsa": ([], [("timestamping", "")]),
    "partner": (["inter-ec"], [("server auth", "gw.cluster.local"), ("client auth", "")]),
}


@pytest.fixture(scope="module")
def proof(tmp_path_factory: pytest.TempPathFactory) -> Repo:
    base = tmp_path_factory.mktemp("proof")
    repo = Repo.create(base / "repo", PROOF_PKI)
    (repo.path / "csrs").mkdir()
    openssl("req", "-new", "-newkey", "rsa:2048", "-nodes", "-keyout", base / "partner.key",
            "-subj", "/C=US/O=pkiascode proof/CN=gw.cluster.local", "-addext", "subjectAltName=DNS:gw.cluster.local",
            "-out", repo.path / "csrs" / "partner.csr")
    repo.git("add", "csrs")
    repo.git("commit", "-q", "-m", "partner CSR")
    repo.apply()
    edit_toml(repo.path, '[certificate.old]\nissuer = "inter-ec"\n',
              '[certificate.old]\nissuer = "inter-ec"\nrevoked = { reason = "key_compromise" }\n')
    edit_toml(repo.path, '[certificate.old-root]\nissuer = "root"\n',
              '[certificate.old-root]\nissuer = "root"\nrevoked = { reason = "superseded" }\n')
    repo.apply()
    assert repo.plan_exit() == 0
    return repo


def _der(obj: x509.Certificate | x509.CertificateRevocationList) -> bytes:
    return obj.public_bytes(serialization.Encoding.DER)


def _errors(findings) -> list[str]:
    return [f"{f.entry}: {f.id}: {f.message}" for f in findings if f.severity in ("FATAL", "ERROR")]


def test_every_key_type_is_in_the_proof(proof: Repo) -> None:
    algorithms = {rec["key"]["algorithm"] for rec in inventory(proof.path).values()}
    assert {"rsa-2048", "rsa-3072", "rsa-4096", "ecdsa-p256", "ecdsa-p384", "ed25519"} <= algorithms
    assert inventory(proof.path)["partner"]["key"]["algorithm"] == "rsa-2048"


def test_pkilint_reports_no_error(proof: Repo) -> None:
    inv = inventory(proof.path)
    errors = []
    for name, rec in inv.items():
        errors += _errors(lint_certificate(_der(load_cert(cert_path(proof.path, name))), entry=name))
        if rec["kind"] == "authority":
            errors += _errors(lint_crl(_der(load_crl(crl_path(proof.path, name))), entry=name))
    assert errors == []


def test_usages_fit_each_key(proof: Repo) -> None:
    def usages(name: str) -> x509.KeyUsage:
        return load_cert(cert_path(proof.path, name)).extensions.get_extension_for_class(x509.KeyUsage).value

    assert not usages("web").key_encipherment and usages("node-0").key_encipherment  # the shared profile
    assert usages("partner").key_encipherment  # the CSR's RSA key decides the defaults
    assert usages("every-rsa").key_encipherment and not usages("every-rsa").key_agreement
    assert usages("every-ec").key_agreement and usages("every-ec").encipher_only
    assert not usages("every-ec").key_encipherment and not usages("every-ec").data_encipherment
    assert usages("decipher-ec").decipher_only and not usages("decipher-ec").encipher_only
    ed = usages("every-ed")
    assert ed.digital_signature and ed.content_commitment and not (
        ed.key_encipherment or ed.data_encipherment or ed.key_agreement)
    eku = load_cert(cert_path(proof.path, "tsa")).extensions.get_extension_for_class(x509.ExtendedKeyUsage)
    assert eku.critical


def test_the_name_constraints_are_in_rfc_5280_form(proof: Repo) -> None:
    nc = load_cert(cert_path(proof.path, "inter-ec")).extensions.get_extension_for_class(x509.NameConstraints)
    assert nc.critical
    assert [g.value for g in nc.value.permitted_subtrees if isinstance(g, x509.DNSName)] == [
        "cluster.local", "example.com"]


def test_openssl_verifies_every_chain_with_every_crl(proof: Repo) -> None:
    path = proof.path
    root = cert_path(path, "root")
    crls = [crl_path(path, n) for n in ("root", "inter-ec", "inter-ed")]
    intermediates = [cert_path(path, n) for n in ("inter-ec", "inter-ed")]
    for name in list(GO_CHECKS) + ["inter-ec", "inter-ed"]:
        ok, out = openssl_verify(cert_path(path, name), roots=[root], intermediates=intermediates, crls=crls)
        assert ok, f"{name}: {out}"
    for name in ("old", "old-root"):  # revoked: the CRLs are really checked
        ok, out = openssl_verify(cert_path(path, name), roots=[root], intermediates=intermediates, crls=crls)
        assert not ok and "certificate revoked" in out, f"{name}: {out}"


def test_openssl_checks_purposes_and_hosts(proof: Repo) -> None:
    path = proof.path
    root, inter = cert_path(path, "root"), cert_path(path, "inter-ec")
    assert openssl_verify(cert_path(path, "web"), roots=[root], intermediates=[inter], purpose="sslserver",
                          host="api.cluster.local")[0]
    assert openssl_verify(cert_path(path, "web"), roots=[root], intermediates=[inter], purpose="sslclient",
                          ip="10.0.0.1")[0]
    assert openssl_verify(cert_path(path, "tsa"), roots=[root], purpose="timestampsign")[0]


def test_go_accepts_every_chain_with_the_right_usage_and_host(proof: Repo) -> None:
    path = proof.path
    failures = []
    for name, (chain, checks) in GO_CHECKS.items():
        for eku, host in checks:
            ok, out = go_verify(cert_path(path, name), roots=[cert_path(path, "root")],
                                intermediates=[cert_path(path, c) for c in chain], eku=eku, host=host)
            if not ok:
                failures.append(f"{name} ({eku}, {host or 'no host'}): {out.strip()}")
    assert failures == []


def test_go_refuses_the_wrong_usage_and_host(proof: Repo) -> None:
    """The Go check can fail: the wrong extended key usage, a host the certificate does not name."""
    root, inter = cert_path(proof.path, "root"), cert_path(proof.path, "inter-ec")
    assert not go_verify(cert_path(proof.path, "web"), roots=[root], intermediates=[inter], eku="code signing")[0]
    assert not go_verify(cert_path(proof.path, "web"), roots=[root], intermediates=[inter], eku="server auth",
                         host="evil.example.com")[0]
    assert not go_verify(cert_path(proof.path, "tsa"), roots=[root], eku="server auth")[0]
