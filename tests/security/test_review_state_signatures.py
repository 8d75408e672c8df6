"""State is checked, not trusted (security review F4, F8, F9): a committed state edit that keeps the
inventory's digests consistent is still caught, because `pki plan` checks each certificate's
signature under its issuer's certificate (a root's under its own key), compares the inventory's
validity dates with the certificates and CRL files, and compares each authority's CRL file (signed
under the authority's certificate) with the inventory's revocations by that authority."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from helpers import Pki, assert_one_line, commit_all, edit_toml, state_cert


def edit_inventory(repo: Path, edit) -> None:
    path = repo / "state/inventory.json"
    inv = json.loads(path.read_text())
    edit(inv)
    path.write_text(json.dumps(inv, indent=1, sort_keys=True) + "\n")
    commit_all(repo, "PR: an edited inventory")


def plan_error(pki: Pki) -> str:
    return assert_one_line(pki("plan", expect=1).stderr.strip())


def test_removed_revocations_fail_the_plan_naming_the_authority_and_its_crl(applied):
    """F4: a key_compromise revocation removed from the inventory would be dropped from the next CRL."""
    repo, pki = applied
    edit_toml(repo, 'common_name = "client-1"', 'common_name = "client-1"\nrevoked = { reason = "key_compromise" }')
    commit_all(repo, "revoke client")
    pki.apply()
    assert pki.plan_exit() == 0
    edit_inventory(repo, lambda inv: inv.update(revocations=[]))
    line = plan_error(pki)
    assert "authority.inter" in line and "state/crl/inter.crl" in line and "revok" in line
    assert pki("plan", "--offline", expect=1).returncode == 1
    assert pki("apply", "--auto-approve", "--at", "+6d", expect=1).returncode == 1


def test_an_added_revocation_of_a_live_intermediate_fails_the_plan(applied):
    """F4, reverse: a revocation of the live intermediate added to the inventory would revoke it."""
    repo, pki = applied
    serial = json.loads((repo / "state/inventory.json").read_text())["objects"]["inter"]["serial"]
    edit_inventory(repo, lambda inv: inv["revocations"].append(
        {"issuer": "root", "serial": serial, "reason": "key_compromise", "date": "2026-01-01T00:00:00Z",
         "name": "old-test"}))
    line = plan_error(pki)
    assert "authority.root" in line and "state/crl/root.crl" in line and serial in line


def test_a_substituted_root_with_matching_digests_fails_the_plan(applied):
    """F8: the attacker's key in a root certificate copying the real one's subject, serial, validity and
    extensions (SKI included), written as pkiascode writes it, with the inventory's digests updated."""
    from pkiascode.state import certificate_file

    repo, pki = applied
    real = state_cert(repo, "root")
    key = ec.generate_private_key(ec.SECP256R1())
    b = (x509.CertificateBuilder().subject_name(real.subject).issuer_name(real.issuer)
         .public_key(key.public_key()).serial_number(real.serial_number)
         .not_valid_before(real.not_valid_before_utc).not_valid_after(real.not_valid_after_utc))
    for ext in real.extensions:
        b = b.add_extension(ext.value, ext.critical)
    fake = b.sign(key, hashes.SHA256())
    der = fake.public_bytes(serialization.Encoding.DER)
    (repo / "state/certs/root.pem").write_bytes(certificate_file(fake, der))
    spki = key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    edit_inventory(repo, lambda inv: inv["objects"]["root"].update(
        sha256=hashlib.sha256(der).hexdigest(), public_key_sha256=hashlib.sha256(spki).hexdigest()))
    line = plan_error(pki)
    assert "signature does not verify" in line and "authority.root" in line
    # and `pki export` hands out no chain with the attacker's root in it
    out = repo.parent / "export"
    r = pki("export", "inter", "--dir", str(out), "--no-key", expect=1)
    assert "signature does not verify" in r.stderr and not out.exists()


@pytest.mark.parametrize("field", ["not_after", "not_before"])
def test_an_inventory_date_that_is_not_the_certificates_fails_the_plan(applied, field):
    """F9: a not_after moved to 2099 would suppress renewals."""
    repo, pki = applied
    edit_inventory(repo, lambda inv: [o.update({field: "2099-01-01T00:00:00Z"}) for o in inv["objects"].values()])
    line = plan_error(pki)
    assert field in line and "2099" in line


@pytest.mark.parametrize("field", ["next_update", "this_update"])
def test_an_inventory_crl_date_that_is_not_the_crls_fails_the_plan(applied, field):
    """F9: a CRL next_update moved to 2099 would suppress CRL refreshes."""
    repo, pki = applied
    edit_inventory(repo, lambda inv: [o["crl"].update({field: "2099-01-01T00:00:00Z"})
                                      for o in inv["objects"].values() if o.get("crl")])
    line = plan_error(pki)
    assert field in line and "state/crl/" in line
    assert pki("plan", "--at", "+10d", expect=1).returncode == 1
