"""Threat: text from a file reaches the reviewer's terminal raw (review F12). ``pki show --file`` is
git's textconv for ``state/crl/*.crl`` (README), so ``git diff`` of a pull request that changes a
CRL or certificate prints whatever its subject holds; ``pki show NAME`` and ``pki list`` print what a
committed certificate and inventory record hold; ``pki import`` prints file names.

ESC, BEL, C1 controls (U+009B, the one-byte CSI) and bidirectional overrides (U+202E) are shown
escaped (``\\x1b``, ``\\x07``, ``\\x9b``, ``\\u202e``), as `errors.printable` writes them; nothing
raw reaches stdout or stderr.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from helpers import SMALL_PKI, Pki, commit_all, new_repo

#: a terminal title, a colour, a right-to-left override and a C1 CSI
EVIL = "ok\x1b]0;OWNED\x07\x1b[31mRED\u202eevil\u009b2J"
RAW = ("\x1b", "\x07", "\u202e", "\u009b")
ESCAPED = ("\\x1b", "\\x07", "\\u202e", "\\x9b")


def _assert_escaped(text: str) -> None:
    for ch in RAW:
        assert ch not in text, f"{ch!r} printed raw: {text!r}"
    for esc in ESCAPED:
        assert esc in text, f"{esc} missing: {text!r}"


def _evil_cert(cn: str = EVIL) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    now = dt.datetime.now(dt.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=1))
            .not_valid_after(now + dt.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    return cert, key


def _evil_crl(cn: str = EVIL) -> x509.CertificateRevocationList:
    cert, key = _evil_cert(cn)
    now = dt.datetime.now(dt.timezone.utc)
    revoked = x509.RevokedCertificateBuilder().serial_number(0x1234).revocation_date(now).build()
    return (x509.CertificateRevocationListBuilder().issuer_name(cert.subject).last_update(now)
            .next_update(now + dt.timedelta(days=7)).add_revoked_certificate(revoked)
            .add_extension(x509.CRLNumber(7), critical=False).sign(key, hashes.SHA256()))


@pytest.mark.parametrize("what", ["certificate pem", "certificate der", "crl pem", "crl der"])
def test_show_file_escapes_control_and_bidi_characters(tmp_path, env, what):
    obj = _evil_cert()[0] if what.startswith("certificate") else _evil_crl()
    encoding = serialization.Encoding.PEM if what.endswith("pem") else serialization.Encoding.DER
    path = tmp_path / "evil.bin"
    path.write_bytes(obj.public_bytes(encoding))
    r = Pki(tmp_path, env)("show", "--file", str(path), expect=0)
    assert "OWNED" in r.stdout
    _assert_escaped(r.stdout)
    assert not any(ch in r.stderr for ch in RAW)


def test_git_diff_of_a_crl_through_the_textconv_is_escaped(tmp_path, env):
    """The README's diff driver: `git diff` of a pull request that changes a CRL."""
    from helpers import git, pki_command

    repo = new_repo(tmp_path / "repo", SMALL_PKI, commit=True)
    (repo / ".gitattributes").write_text("*.crl diff=pki-crl\n")
    git(repo, "config", "diff.pki-crl.textconv", " ".join(pki_command() + ["show", "--file"]))
    (repo / "x.crl").write_bytes(_evil_crl(cn="benign").public_bytes(serialization.Encoding.PEM))
    commit_all(repo, "a CRL")
    (repo / "x.crl").write_bytes(_evil_crl().public_bytes(serialization.Encoding.PEM))  # the pull request
    out = git(repo, "diff", "--no-color", "--", "x.crl")
    assert "OWNED" in out
    _assert_escaped(out)


@pytest.fixture
def tampered(tmp_path: Path, env: dict[str, str]) -> tuple[Path, Pki]:
    """An applied PKI whose state, as a pull request may commit it, holds a certificate and inventory
    record for ``server`` with `EVIL` in its subject."""
    from pkiascode.state import certificate_file
    from pkiascode.x509 import fingerprint

    repo = new_repo(tmp_path / "repo", SMALL_PKI, commit=True)
    pki = Pki(repo, env)
    pki.apply()
    cert = _evil_cert()[0]
    (repo / "state" / "certs" / "server.pem").write_bytes(
        certificate_file(cert, cert.public_bytes(serialization.Encoding.DER)))
    inv_path = repo / "state" / "inventory.json"
    inv = json.loads(inv_path.read_text())
    inv["objects"]["server"].update(subject=f"CN={EVIL}", sha256=fingerprint(cert))
    inv_path.write_text(json.dumps(inv, indent=2) + "\n")
    return repo, pki


def test_show_name_escapes_what_the_state_certificate_holds(tampered):
    repo, pki = tampered
    r = pki("show", "server", expect=0)
    assert "OWNED" in r.stdout
    _assert_escaped(r.stdout)


def test_list_escapes_what_the_inventory_holds(tampered):
    repo, pki = tampered
    r = pki("list", expect=0)
    assert "OWNED" in r.stdout
    _assert_escaped(r.stdout)
    data = pki("list", "--format", "json", expect=0).stdout  # JSON escapes them itself
    assert not any(ch in data for ch in RAW)
    assert EVIL in {row["subject"] for row in json.loads(data)} | {row["subject"].removeprefix("CN=")
                                                                     for row in json.loads(data)}
