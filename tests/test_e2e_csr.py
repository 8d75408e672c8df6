"""End to end: certificates signed from CSRs committed to the repository (``csr = "csrs/NAME.csr"``).

The requester makes its key and CSR with ``openssl req`` (SANs via ``-addext subjectAltName``) and
keeps the key; pkiascode signs, never stores a key, and a TLS handshake works with the requester's
own key."""

from __future__ import annotations

import datetime as dt
import re
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from helpers import Repo, concat, copy_repo, load_cert, openssl, spki_der, tls_handshake

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("openssl_and_git")]


CSR_PKI = """\
# Partner gateways send us CSRs; we sign them.
[defaults]
key = "ecdsa-p256"
subject = { C = "US", O = "Example" }

[authority.root]
common_name = "CSR Root CA"
validity = "5y"

[certificate.partner-gw]
issuer = "root"
common_name = "gw.partner.example"
subject = { O = "Partner" }
hosts = ["gw.partner.example", "127.0.0.1"]
usages = ["digital signature", "server auth"]
validity = "90d"
csr = "csrs/partner-gw.csr"
"""

SUBJ = "/C=US/O=Partner/CN=gw.partner.example"
SAN = "subjectAltName=DNS:gw.partner.example,IP:127.0.0.1"


def requester_csr(repo: Repo, *, subj: str = SUBJ, san: str | None = SAN, name: str = "partner-gw",
                  keydir: Path | None = None) -> Path:
    """What the partner does: a new key and a CSR with ``openssl req``; the key stays with them."""
    keydir = keydir or repo.path.parent / "partner-private"
    keydir.mkdir(exist_ok=True)
    key = keydir / f"{name}.key"
    (repo.path / "csrs").mkdir(exist_ok=True)
    args = ["req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-keyout", key,
            "-subj", subj, "-out", repo.path / "csrs" / f"{name}.csr"]
    if san:
        args += ["-addext", san]
    openssl(*args)
    return key


def csr_repo(tmp_path: Path, toml: str = CSR_PKI) -> tuple[Repo, Path]:
    repo = Repo.create(tmp_path / "repo", toml)
    key = requester_csr(repo)
    repo.git("add", "csrs")
    repo.git("commit", "-q", "-m", "partner CSR")
    return repo, key


@pytest.fixture(scope="module")
def _applied_csr_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("csr")
    repo, _ = csr_repo(base)
    repo.apply()
    return base


@pytest.fixture
def applied_csr_repo(_applied_csr_repo: Path, tmp_path: Path) -> tuple[Repo, Path]:
    """`csr_repo` after `pki apply`, and the partner's key: a copy of one applied once per module."""
    for name in ("repo", "partner-private"):
        copy_repo(_applied_csr_repo / name, tmp_path / name)
    return Repo(tmp_path / "repo"), tmp_path / "partner-private" / "partner-gw.key"


def test_sign_an_openssl_csr_and_complete_a_handshake_with_the_requesters_key(tmp_path: Path) -> None:
    repo, partner_key = csr_repo(tmp_path)
    r = repo.pki("plan")
    assert "from csrs/partner-gw.csr" in r.stdout
    repo.apply()

    cert = repo.cert("partner-gw")
    csr = x509.load_pem_x509_csr((repo.path / "csrs/partner-gw.csr").read_bytes())
    assert spki_der(cert) == spki_der(csr)
    assert cert.subject == csr.subject
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "gw.partner.example"
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["gw.partner.example"]
    assert [str(i) for i in san.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    # the entry's usages and validity apply, not anything the CSR asked for
    assert list(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value) == [ExtendedKeyUsageOID.SERVER_AUTH]
    lifetime = cert.not_valid_after_utc - cert.not_valid_before_utc
    assert dt.timedelta(days=90) <= lifetime <= dt.timedelta(days=90, minutes=10)
    assert openssl("verify", "-CAfile", repo.cert_path("root"), repo.cert_path("partner-gw"),
                   expect=None).returncode == 0

    # nothing stored in a backend for it: only the root's key exists
    rec = repo.record("partner-gw")
    assert rec["key"]["backend"] == "csr"
    assert repo.key_files() == {repo.record("root")["key"]["ref"]}
    rows = {row["name"]: row for row in repo.pki("list", "--format", "json").json()}
    assert rows["partner-gw"]["backend"] == "csr" and rows["partner-gw"]["status"] == "ok"

    # the partner's server, with the signed certificate and its own key; a client trusting our root
    outcome = tls_handshake(server_cert=repo.cert_path("partner-gw"), server_key=partner_key,
                            client_cafile=repo.cert_path("root"), server_hostname="gw.partner.example")
    assert outcome.ok, outcome
    wrong_name = tls_handshake(server_cert=repo.cert_path("partner-gw"), server_key=partner_key,
                               client_cafile=repo.cert_path("root"), server_hostname="other.example")
    assert not wrong_name.ok  # the client really checks what we signed
    repo.pki("plan", "--detailed-exitcode", expect=0)


@pytest.mark.parametrize("field, subj, san, needle, message", [
    ("subject", "/C=US/O=Someone Else/CN=gw.partner.example", SAN, "subject = ",
     r"subject of csrs/partner-gw\.csr is C=US, O=Someone Else, CN=gw\.partner\.example, but pki\.toml says "
     r"C=US, O=Partner, CN=gw\.partner\.example"),
    ("subject", "/C=US/O=Partner/CN=evil.partner.example", SAN, "subject = ", r"subject of .*CN=evil\.partner\.example, but"),
    ("hosts", SUBJ, "subjectAltName=DNS:gw.partner.example,DNS:extra.partner.example,IP:127.0.0.1", "hosts = ",
     r"SANs of csrs/partner-gw\.csr are .*extra\.partner\.example.*, but pki\.toml hosts are "
     r"gw\.partner\.example, 127\.0\.0\.1"),
    ("hosts", SUBJ, None, "hosts = ", r"SANs of csrs/partner-gw\.csr are \(none\)"),
])
def test_csr_that_does_not_match_its_entry_is_a_plan_error_naming_the_field(
        tmp_path: Path, field: str, subj: str, san: str | None, needle: str, message: str) -> None:
    repo = Repo.create(tmp_path / "repo", CSR_PKI)
    requester_csr(repo, subj=subj, san=san)
    line = repo.line_of(needle, after="[certificate.partner-gw]")
    for cmd in (["plan"], ["validate"], ["apply", "--auto-approve"]):
        r = repo.pki(*cmd, expect=1)
        assert re.search(rf"^(?:Error: )?pki\.toml:{line}: certificate\.partner-gw\.{field}: {message}", r.stderr,
                         flags=re.M), r
    assert not repo.state.exists() or not list(repo.state.rglob("*.pem")), "nothing may be signed"


def test_csr_with_a_bad_signature_is_refused(tmp_path: Path) -> None:
    repo = Repo.create(tmp_path / "repo", CSR_PKI)
    requester_csr(repo)
    path = repo.path / "csrs/partner-gw.csr"
    der = bytearray(x509.load_pem_x509_csr(path.read_bytes()).public_bytes(serialization.Encoding.DER))
    der[-5] ^= 0x01  # inside the signature value
    path.write_bytes(bytes(der))
    line = repo.line_of("csr = ")
    r = repo.pki("plan", expect=1)
    assert re.match(rf"(?:Error: )?pki\.toml:{line}: certificate\.partner-gw\.csr: csrs/partner-gw\.csr: its signature "
                    r"does not verify", r.stderr), r


def test_changed_csr_plans_rekey_and_the_new_certificate_carries_the_new_key(applied_csr_repo, tmp_path) -> None:
    repo, old_key = applied_csr_repo
    old = repo.cert("partner-gw")
    repo.pki("plan", "--detailed-exitcode", expect=0)

    new_key = requester_csr(repo, keydir=tmp_path / "partner-new")  # the partner rotates its key
    r = repo.pki("plan", "--detailed-exitcode", expect=2)
    assert "certificate.partner-gw will get a new key and certificate" in r.stdout
    plan = repo.plan_json()
    assert [(c["action"], c["name"]) for c in plan["changes"]] == [("rekey", "partner-gw")], plan
    assert any("csrs/partner-gw.csr requests a new key" in reason for reason in plan["changes"][0]["reasons"])
    repo.apply()
    new = repo.cert("partner-gw")
    new_pub = serialization.load_pem_private_key(new_key.read_bytes(), None)
    assert spki_der(new) == spki_der(new_pub) != spki_der(old)
    assert repo.key_files() == {repo.record("root")["key"]["ref"]}
    outcome = tls_handshake(server_cert=repo.cert_path("partner-gw"), server_key=new_key,
                            client_cafile=repo.cert_path("root"), server_hostname="gw.partner.example")
    assert outcome.ok, outcome
    repo.pki("plan", "--detailed-exitcode", expect=0)


def test_renewal_re_signs_the_same_csr(applied_csr_repo) -> None:
    repo, key = applied_csr_repo
    old = repo.cert("partner-gw")
    plan = repo.plan_json("--at", "+80d")
    renew = [c for c in plan["changes"] if c["name"] == "partner-gw"]
    assert [c["action"] for c in renew] == ["renew"], plan
    assert not renew[0].get("new_key")
    repo.apply("--at", "+80d")
    new = repo.cert("partner-gw")
    assert new.serial_number != old.serial_number
    assert spki_der(new) == spki_der(old), "a renewal re-signs the same CSR (same key)"
    assert new.subject == old.subject
    assert repo.key_files() == {repo.record("root")["key"]["ref"]}
    assert tls_handshake(server_cert=repo.cert_path("partner-gw"), server_key=key,
                         client_cafile=repo.cert_path("root"), server_hostname="gw.partner.example").ok


def test_export_of_a_csr_entry_writes_no_key(applied_csr_repo, tmp_path: Path) -> None:
    repo, _ = applied_csr_repo
    out = tmp_path / "export"
    r = repo.pki("export", "partner-gw", "--dir", str(out))
    assert sorted(p.name for p in out.iterdir()) == ["partner-gw-ca.pem", "partner-gw.pem"]
    assert "key" not in r.stdout
    assert load_cert(out / "partner-gw.pem") == repo.cert("partner-gw")
    assert load_cert(out / "partner-gw-ca.pem") == repo.cert("root")
    chain = concat(tmp_path / "bundle.pem", out / "partner-gw-ca.pem")
    assert openssl("verify", "-CAfile", chain, out / "partner-gw.pem", expect=None).returncode == 0


def test_csr_entry_cannot_be_replaced_and_takes_no_key_settings(applied_csr_repo) -> None:
    repo, _ = applied_csr_repo
    r = repo.pki("plan", "--replace", "partner-gw", expect=1)
    assert "partner-gw" in r.stderr and "CSR" in r.stderr
    repo.edit_toml('csr = "csrs/partner-gw.csr"\n', 'csr = "csrs/partner-gw.csr"\nkey = "rsa-2048"\n')
    line = repo.line_of('key = "rsa-2048"')
    r = repo.pki("plan", expect=1)
    assert re.match(rf"(?:Error: )?pki\.toml:{line}: certificate\.partner-gw\.key: key does not apply to an entry signed "
                    r"from a CSR", r.stderr), r


def test_a_der_csr_is_accepted(tmp_path: Path) -> None:
    repo = Repo.create(tmp_path / "repo", CSR_PKI)
    requester_csr(repo)
    path = repo.path / "csrs/partner-gw.csr"
    der = x509.load_pem_x509_csr(path.read_bytes()).public_bytes(serialization.Encoding.DER)
    path.write_bytes(der)
    repo.apply()
    assert spki_der(repo.cert("partner-gw")) == spki_der(x509.load_der_x509_csr(der))


def test_revoking_and_removing_a_csr_entry(applied_csr_repo) -> None:
    repo, _ = applied_csr_repo
    serial = repo.cert("partner-gw").serial_number
    repo.edit_toml('validity = "90d"\n', 'validity = "90d"\nrevoked = { reason = "affiliation_changed" }\n')
    repo.apply()
    crl = repo.crl_path("root")
    assert "Affiliation Changed" in openssl("crl", "-in", crl, "-noout", "-text").output
    p = openssl("verify", "-crl_check", "-CAfile", repo.cert_path("root"), "-CRLfile", crl, repo.cert_path("partner-gw"),
                expect=None)
    assert p.returncode != 0 and "certificate revoked" in p.stdout + p.stderr
    assert serial in {r.serial_number for r in repo.crl("root")}
    # removed: it leaves state; there is no key to delete, and no backend is asked for one
    text = repo.read_toml()
    repo.write_toml(text[:text.index("[certificate.partner-gw]")])
    repo.apply()
    assert not repo.cert_path("partner-gw").exists()
    assert repo.key_files() == {repo.record("root")["key"]["ref"]}
    repo.pki("plan", "--detailed-exitcode", expect=0)
