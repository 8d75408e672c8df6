"""The lint gate: pkilint over what a plan would sign, the private-PKI filter (a test per entry), and
the findings in the plan model."""

from __future__ import annotations

import datetime as dt
import types

import pytest

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import NameOID

from planner_fakes import T0, World, load
from pkiascode import lint
from pkiascode.keytypes import KeyType, generate_private_key
from pkiascode.lint import PRIVATE_PKI_FILTER, lint_certificate, lint_crl, lint_plan, refusal, with_findings
from pkiascode.model import Observed
from pkiascode.plan import Finding, Plan
from pkiascode.planner import plan as make_plan

KEY = generate_private_key(KeyType.ECDSA_P256)


def _cert(*names: x509.GeneralName, key_usage: x509.KeyUsage | None = None, key=KEY) -> bytes:
    """A self-signed leaf certificate made directly with cryptography, to feed pkilint names pkiascode
    never makes."""
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "lint test")])
    b = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
         .serial_number(x509.random_serial_number()).not_valid_before(T0).not_valid_after(T0 + dt.timedelta(days=1))
         .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
         .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
         .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(key.public_key()), critical=False))
    if names:
        b = b.add_extension(x509.SubjectAlternativeName(list(names)), critical=False)
    if key_usage is not None:
        b = b.add_extension(key_usage, critical=True)
    return b.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.DER)


def _ids(findings) -> list[str]:
    return sorted(f.id for f in findings if f.severity in ("FATAL", "ERROR"))


# --- the built-in filter: one test per entry, each showing what it drops and what it keeps ---------

def test_filter_single_label_dns_names():
    der = _cert(x509.DNSName("node-0"), x509.DNSName("kubernetes"))
    assert _ids(lint_certificate(der, unfiltered=True)) == ["pkix.invalid_domain_name_syntax"] * 2
    assert _ids(lint_certificate(der)) == []


def test_filter_wildcard_dns_names():
    der = _cert(x509.DNSName("*.example.com"), x509.DNSName("*.node-0"))
    assert _ids(lint_certificate(der, unfiltered=True)) == ["pkix.invalid_domain_name_syntax"] * 2
    assert _ids(lint_certificate(der)) == []


def test_filter_keeps_dns_names_that_are_really_bad():
    der = _cert(x509.DNSName("-bad-.example.com"), x509.DNSName("a..example.com"), x509.DNSName("a*.example.com"))
    assert _ids(lint_certificate(der)) == ["pkix.invalid_domain_name_syntax"] * 3


def test_filter_uris_of_any_scheme_and_single_label_hosts():
    der = _cert(x509.UniformResourceIdentifier("spiffe://cluster.local/ns/default/sa/api"),
                x509.UniformResourceIdentifier("spiffe://trust-domain/ns/a"),
                x509.UniformResourceIdentifier("https://node-0:6443/healthz"))
    assert _ids(lint_certificate(der, unfiltered=True)) == ["pkix.invalid_uri_syntax"] * 3
    assert _ids(lint_certificate(der)) == []


def test_filter_keeps_uris_that_are_really_bad():
    der = _cert(x509.UniformResourceIdentifier("https://exa mple.com/"),
                x509.UniformResourceIdentifier("not a uri"))
    assert _ids(lint_certificate(der)) == ["pkix.invalid_uri_syntax"] * 2


def test_filter_mailboxes_at_single_label_domains():
    der = _cert(x509.RFC822Name("root@node-0"))
    assert _ids(lint_certificate(der, unfiltered=True)) == ["pkix.invalid_email_address_syntax"]
    assert _ids(lint_certificate(der)) == []
    bad = _cert(x509.RFC822Name("root node@node-0"), x509.RFC822Name("@node-0"), x509.RFC822Name("root@-x"))
    assert _ids(lint_certificate(bad)) == ["pkix.invalid_email_address_syntax"] * 3


def test_every_filter_entry_has_a_reason_and_a_test():
    tested = {"pkix.invalid_domain_name_syntax", "pkix.invalid_uri_syntax", "pkix.invalid_email_address_syntax"}
    assert set(PRIVATE_PKI_FILTER) == tested
    assert all(reason for reason, _ in PRIVATE_PKI_FILTER.values())


def test_real_errors_come_through():
    # a key usage with no bit set (encipher only without key agreement): what pkiascode refuses to make
    ku = x509.KeyUsage(digital_signature=False, content_commitment=False, key_encipherment=False,
                       data_encipherment=False, key_agreement=False, key_cert_sign=False, crl_sign=False,
                       encipher_only=False, decipher_only=False)
    findings = lint_certificate(_cert(x509.DNSName("a.example.com"), key_usage=ku), entry="web")
    assert _ids(findings) == ["pkix.no_ku_bits_set"]
    assert all(f.entry == "web" and f.what == "certificate" and f.message for f in findings)


# --- over a plan ------------------------------------------------------------------------------------

PKI = """
[defaults]
key = "ecdsa-p256"
[profile.kubernetes]
usages = ["digital signature", "key encipherment", "server auth", "client auth"]
[profile.stamp]
usages = ["digital signature", "timestamping"]
[authority.root]
common_name = "Root"
key = "rsa-2048"
crl_url = "http://crl.example.com/root.crl"
[authority.inter]
issuer = "root"
common_name = "Inter"
key = "ecdsa-p384"
name_constraints = { permitted = [".cluster.local", "10.0.0.0/8", "@example.com", "uri:trust-domain"], excluded = ["evil.cluster.local"] }
[certificate.node-0]
issuer = "inter"
profile = "kubernetes"
hosts = ["node-0.cluster.local", "10.0.0.1", "ops@example.com", "spiffe://trust-domain/ns/a"]
[certificate.kubernetes]
issuer = "root"
profile = "kubernetes"
key = "ed25519"
hosts = ["kubernetes", "node-0", "root@node-0", "*.svc.example.com"]
[certificate.tsa]
issuer = "root"
profile = "stamp"
key = "rsa-2048"
[certificate.gone]
issuer = "root"
revoked = { reason = "key_compromise" }
"""


@pytest.fixture
def linted(monkeypatch) -> list[tuple[str, str]]:
    """(what, entry) of each certificate and CRL linted (walked whole, or in the parts where it differs
    from the first of its shape)."""
    seen: list[tuple[str, str]] = []
    real_cert, real_crl = lint._lint_certificate, lint.lint_crl

    def spy_cert(der, entry, unfiltered, like):
        seen.append(("certificate", entry))
        return real_cert(der, entry, unfiltered, like)

    def spy_crl(der, *, entry="", unfiltered=False):
        seen.append(("crl", entry))
        return real_crl(der, entry=entry, unfiltered=unfiltered)

    monkeypatch.setattr(lint, "_lint_certificate", spy_cert)
    monkeypatch.setattr(lint, "lint_crl", spy_crl)
    return seen


def test_a_plan_that_signs_everything_has_no_finding_after_the_filter(linted):
    desired = load(PKI)
    plan = World().plan(desired, T0)
    assert lint_plan(desired, plan) == ()
    assert sorted(linted) == [("certificate", n) for n in ("inter", "kubernetes", "node-0", "root", "tsa")] + [
        ("crl", "inter"), ("crl", "root")]


def test_a_plan_with_nothing_to_sign_is_not_linted(linted):
    desired = load(PKI)
    world = World()
    world.converge(desired, T0)
    plan = world.plan(desired, T0 + dt.timedelta(hours=1))
    assert plan.empty
    assert lint_plan(desired, plan) == () and linted == []


def test_only_what_is_signed_is_linted(linted):
    desired = load(PKI)
    world = World()
    world.converge(desired, T0)
    changed = load(PKI.replace('hosts = ["kubernetes", "node-0"', 'hosts = ["kubernetes", "node-1"'))
    plan = world.plan(changed, T0 + dt.timedelta(hours=1))
    assert [c.name for c in plan.changes] == ["kubernetes"]
    assert lint_plan(changed, plan) == ()
    assert linted == [("certificate", "kubernetes")]


def test_a_revocation_lints_the_issuers_crl(linted):
    desired = load(PKI)
    world = World()
    world.converge(desired, T0)
    revoked = load(PKI.replace('[certificate.tsa]\nissuer = "root"',
                               '[certificate.tsa]\nissuer = "root"\nrevoked = { reason = "superseded" }'))
    plan = world.plan(revoked, T0 + dt.timedelta(hours=1))
    assert {(c.action.value, c.name) for c in plan.changes} >= {("revoke", "tsa")}
    assert lint_plan(revoked, plan) == ()
    assert ("crl", "root") in linted


def test_lint_crl_reports_crl_findings():
    from pkiascode.x509 import build_crl

    root = x509.load_der_x509_certificate(_cert())
    bare = (x509.CertificateRevocationListBuilder().issuer_name(root.subject).last_update(T0)
            .next_update(T0 + dt.timedelta(days=1)).sign(KEY, hashes.SHA256()))
    findings = lint_crl(bare.public_bytes(serialization.Encoding.DER), entry="root")
    assert _ids(findings) == ["pkix.authority_key_identifier_missing", "pkix.crl_number_missing"]
    assert all(f.what == "crl" and f.entry == "root" for f in findings)
    ours = build_crl(root, KEY, [{"serial": "1f", "date": "2030-01-01T00:00:00Z", "reason": "key_compromise"}],
                     number=1, this_update=T0, next_update=T0 + dt.timedelta(days=1))
    assert _ids(lint_crl(ours.public_bytes(serialization.Encoding.DER))) == []


# --- one whole walk per shape: the same findings as a whole walk of each ------------------------------

def _leaves(n: int, hosts: dict[int, str] | None = None) -> str:
    """An authority and ``n`` leaves alike but for their names; ``hosts``: leaf index → a SAN to add."""
    out = ['[defaults]\nkey = "ecdsa-p256"\n[authority.ca]\ncommon_name = "CA"\n']
    for i in range(n):
        extra = f', "{hosts[i]}"' if hosts and i in hosts else ""
        out.append(f'[certificate.leaf-{i:04d}]\nissuer = "ca"\ncommon_name = "leaf-{i}.example.com"\n'
                   f'hosts = ["leaf-{i}.example.com", "10.0.{i // 256}.{i % 256}"{extra}]\n')
    return "\n".join(out)


def test_a_bad_value_in_the_500th_of_1000_alike_leaves_is_found(linted):
    desired = load(_leaves(1000, {499: "db.123"}))  # a numeric top-level label: pkilint's ERROR
    findings = lint_plan(desired, World().plan(desired, T0))
    assert [(f.id, f.severity, f.entry) for f in findings if f.severity in ("FATAL", "ERROR")] == [
        ("pkix.invalid_domain_name_syntax", "ERROR", "leaf-0499")]
    assert len([e for w, e in linted if w == "certificate"]) == 1001  # every certificate went through pkilint


def _whole_and_shaped(ders: list[bytes]) -> tuple[list[list[tuple[str, str, str]]], list[list[tuple[str, str, str]]]]:
    def key(found):
        return sorted((f.id, f.severity, f.message) for _, f in found)

    first = lint._Linted(tuple(lint._lint_certificate(ders[0], "x", False, None)))
    whole = [key(lint._lint_certificate(der, "x", False, None)) for der in ders]
    shaped = [key(lint._lint_certificate(der, "x", False, first)) for der in ders]
    return whole, shaped


def test_the_parts_walk_finds_what_a_whole_walk_finds():
    """Leaves of one shape with good and bad subject and SAN values, and a first one with a finding of
    its own value: each gets exactly a whole walk's findings."""
    from pkiascode.x509 import build_certificate

    desired = load(_leaves(1))
    ca_entry, leaf = desired.entries["ca"], desired.entries["leaf-0000"]
    ca = build_certificate(ca_entry, public_key=KEY.public_key(), signer=KEY, issuer_cert=None, now=T0,
                           not_after=T0 + dt.timedelta(days=30))
    # (organization, DNS name, mailbox) of each: one value or none bad in each, the first one too
    values = [("good", "a..example.com", "ops@example.com"), ("x" * 65, "ok.example.com", "ops@example.com"),
              ("good", "ok.example.com", "not-a-mailbox"), ("good", "-bad-.example.com", "ops@example.com"),
              ("good", "ok.example.com", "ops@example.com")]
    ders, shapes = [], set()
    for org, dns, mailbox in values:
        subject = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, org, _validate=False)])
        cert = build_certificate(leaf, public_key=KEY.public_key(), signer=KEY, issuer_cert=ca, now=T0,
                                 not_after=T0 + dt.timedelta(days=1), subject=subject,
                                 hosts=[("dns", dns), ("email", mailbox)])
        ders.append(cert.public_bytes(serialization.Encoding.DER))
        shapes.add(lint._shape(cert))
    assert len(shapes) == 1
    whole, shaped = _whole_and_shaped(ders)
    assert shaped == whole
    assert [bool(w) for w in whole] == [True, True, True, True, False]  # (else the test shows nothing)
    assert len({tuple(w) for w in whole}) == len(whole)


def test_a_different_shape_is_walked_whole(linted):
    desired = load(_leaves(3).replace('[certificate.leaf-0002]\nissuer = "ca"',
                                      '[certificate.leaf-0002]\nissuer = "ca"\nusages = ["digital signature"]'))
    lint_plan(desired, World().plan(desired, T0))
    wholes = [e for w, e in linted if w == "certificate"]
    assert sorted(wholes) == ["ca", "leaf-0000", "leaf-0001", "leaf-0002"]


def test_one_small_rsa_key_stands_in_for_every_rsa_size(monkeypatch):
    made: list[str] = []
    real = lint._throwaway_key.__wrapped__
    monkeypatch.setattr(lint, "_throwaway_key", lambda algorithm: made.append(algorithm) or real(algorithm))
    desired = load('[authority.ca]\ncommon_name = "CA"\nkey = "rsa-4096"\n'
                   '[certificate.web]\nissuer = "ca"\nkey = "rsa-3072"\nhosts = ["web.example.com"]\n')
    assert lint_plan(desired, World().plan(desired, T0)) == ()
    assert set(made) == {"rsa"}
    assert lint._throwaway_key("rsa").key_size == lint.STAND_IN_RSA_BITS == 1024


def test_the_stand_in_rsa_key_lints_as_a_real_rsa_key_does():
    """pkilint reads an RSA modulus only to verify a signature (here a self-signed one), not its
    length: a certificate with an RSA-specific finding and a bad name has the same findings, message
    for message, whether its key is the stand-in or a real RSA-2048 key."""
    ku = x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                       data_encipherment=False, key_agreement=True, key_cert_sign=False, crl_sign=False,
                       encipher_only=False, decipher_only=False)  # key agreement: not for RSA (RFC 4055)

    def found(key) -> list[tuple[str, str, str]]:
        der = _cert(x509.DNSName("a..example.com"), key_usage=ku, key=key)
        return sorted((f.id, f.severity, f.message) for f in lint_certificate(der))

    stand_in = lint._signing_key(KeyType.RSA_4096)
    assert stand_in.key_size < 2048
    with_stand_in = found(stand_in)
    assert with_stand_in == found(generate_private_key(KeyType.RSA_2048))
    assert {"pkix.key_usage_value_prohibited_for_rsa", "pkix.invalid_domain_name_syntax"} <= {
        i for i, _, _ in with_stand_in}


# --- in the plan model ------------------------------------------------------------------------------

def _finding(id_: str, severity: str = "ERROR", entry: str = "node-0") -> Finding:
    return Finding(id_, severity, entry, "certificate", "a message")


def test_findings_round_trip_through_json():
    plan = Plan(changes=(), warnings=(), at=T0, findings=(_finding("pkix.a"), _finding("pkix.b", "WARNING")))
    assert Plan.from_json(plan.to_json()) == plan
    assert plan.to_json()["findings"][0] == {"id": "pkix.a", "severity": "ERROR", "entry": "node-0",
                                             "what": "certificate", "message": "a message"}


def test_blocking_honours_lint_ignore_globally_and_per_entry():
    desired = load(PKI)
    plan = Plan(changes=(), warnings=(), at=T0, findings=(
        _finding("pkix.a"), _finding("pkix.b", entry="kubernetes"), _finding("pkix.c", "FATAL"),
        _finding("pkix.d", "WARNING")))
    assert [f.id for f in plan.blocking(desired)] == ["pkix.a", "pkix.b", "pkix.c"]
    # Settings.lint_ignore and Entry.lint_ignore, as config.py makes them from pki.toml
    entries = {name: types.SimpleNamespace(lint_ignore=("pkix.b",) if name == "kubernetes" else ())
               for name in desired.entries}
    ignoring = types.SimpleNamespace(settings=types.SimpleNamespace(lint_ignore=("pkix.a",)), entries=entries)
    assert [f.id for f in plan.blocking(ignoring)] == ["pkix.c"]  # type: ignore[arg-type]


def test_with_findings_and_the_refusal():
    desired = load(PKI)
    plan = World().plan(desired, T0)
    assert with_findings(desired, plan, {}).findings == ()
    assert refusal(desired, with_findings(desired, plan, {})) is None
    bad = Plan(changes=(), warnings=(), at=T0, findings=(_finding("pkix.a"), _finding("pkix.b")))
    assert refusal(desired, bad) == ("lint: certificate.node-0: pkix.a: a message (and 1 more); fix pki.toml, "
                                     "or list the id in lint_ignore to sign it anyway")
    crl = Plan(changes=(), warnings=(), at=T0, findings=(Finding("pkix.c", "ERROR", "root", "crl", "m"),))
    assert refusal(desired, crl) == ("lint: authority.root's CRL: pkix.c: m; fix pki.toml, or list the id in "
                                     "lint_ignore to sign it anyway")
    empty = Plan(changes=(), warnings=(), at=T0)
    assert with_findings(desired, empty, {}) is empty


def test_a_csr_entry_is_linted_with_the_csrs_key_and_subject(linted):
    from pkiascode.x509 import load_csr

    toml = PKI + '\n[certificate.partner]\nissuer = "root"\ncommon_name = "gw"\nhosts = ["gw.example.com"]\ncsr = "p.csr"\n'
    desired = load(toml)
    rsa_key = generate_private_key(KeyType.RSA_2048)
    csr = (x509.CertificateSigningRequestBuilder()
           .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "gw")]))
           .add_extension(x509.SubjectAlternativeName([x509.DNSName("gw.example.com")]), critical=False)
           .sign(rsa_key, hashes.SHA256()))
    info = load_csr(csr.public_bytes(serialization.Encoding.PEM))
    assert info.key_type is KeyType.RSA_2048
    plan = make_plan(desired, Observed.empty(), now=T0, csr_key_types={"partner": info.key_type})
    assert not [w for w in plan.warnings if "partner" in w]  # RSA defaults: key encipherment fits
    assert with_findings(desired, plan, {"partner": info}).findings == ()
    assert ("certificate", "partner") in linted


# --- the gate, end to end ---------------------------------------------------------------------------

GATED = """\
[authority.root]
common_name = "Root"

[certificate.db]
issuer = "root"
hosts = ["db.123"]                   # a numeric top-level label: pkilint's ERROR, not filtered
"""


@pytest.mark.slow
@pytest.mark.usefixtures("openssl_and_git")
def test_apply_refuses_an_error_finding_unless_lint_ignore_lists_it(tmp_path):
    from helpers import Repo, edit_toml

    repo = Repo.create(tmp_path / "repo", GATED)
    finding = ("pkix.invalid_domain_name_syntax", "ERROR", "db", "certificate")
    assert [(f["id"], f["severity"], f["entry"], f["what"]) for f in repo.plan_json()["findings"]] == [finding]
    assert "pkix.invalid_domain_name_syntax" in repo.pki("plan").stdout
    assert "pkix.invalid_domain_name_syntax" in repo.pki("plan", "--format", "markdown").stdout
    refused = repo.pki("apply", "--auto-approve", expect=1)
    assert refused.stderr.strip().count("\n") == 0 and "pkix.invalid_domain_name_syntax" in refused.stderr
    assert not (repo.path / "state").exists()
    edit_toml(repo.path, 'hosts = ["db.123"]', 'hosts = ["db.123"]\nlint_ignore = ["pkix.invalid_domain_name_syntax"]')
    saved = tmp_path / "plan.json"
    text = repo.pki("plan", "--out", str(saved)).stdout
    assert "  ERROR certificate.db (certificate): pkix.invalid_domain_name_syntax: " in text  # shown, not blocking
    repo.pki("apply", str(saved))  # planned again with its findings: identical, so applied
    assert repo.plan_exit() == 0
