"""Threat (issue 10): a pull request un-revokes a certificate by editing state. It deletes the
authority's CRL file (what proved the revocations) and removes the revocation from
``state/inventory.json``; `pki plan` then showed a CRL refresh, and `pki apply` re-signed the CRL
without the revoked serial.

The audit log (hash-chained, its head signed with the pinned audit key) records every revocation:
plan refuses an inventory whose revocations lack one it records, naming the authority, the serial
and the CRL file; rewriting the log to hide the revocation breaks its signed head. A CRL file lost
with the revocations intact is still refreshed as before.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from helpers import (SMALL_PKI, Pki, assert_one_line, clean_env, commit_all, crl_serials, edit_toml, git, head,
                     new_repo, state_crl)


@pytest.fixture(scope="module")
def revoked(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    """An applied, committed PKI with two revocations under authority.inter: ``server`` revoked in
    pki.toml (its record stays, marked revoked) and ``client`` replaced (its old serial revoked)."""
    repo = new_repo(tmp_path_factory.mktemp("revoked") / "repo", SMALL_PKI, commit=True)
    pki = Pki(repo, clean_env())
    pki.apply()
    client = json.loads((repo / "state/inventory.json").read_text())["objects"]["client"]["serial"]
    edit_toml(repo, 'common_name = "localhost"', 'common_name = "localhost"\nrevoked = { reason = "key_compromise" }')
    commit_all(repo, "revoke server")
    pki.apply()
    pki.apply("--replace", "client")
    server = json.loads((repo / "state/inventory.json").read_text())["objects"]["server"]["serial"]
    assert crl_serials(state_crl(repo, "inter")) == {int(server, 16), int(client, 16)}
    return repo, {"server": server, "client": client}


@pytest.fixture
def clone(revoked: tuple[Path, dict[str, str]], tmp_path: Path) -> tuple[Path, Pki, dict[str, str]]:
    src, serials = revoked
    shutil.copytree(src, tmp_path / "repo", symlinks=True)
    return tmp_path / "repo", Pki(tmp_path / "repo", clean_env()), serials


def drop_revocation(repo: Path, serial: str, *, crl: bool = True) -> None:
    """The pull request: the CRL file deleted (``crl``) and ``serial``'s revocation removed."""
    path = repo / "state/inventory.json"
    inv = json.loads(path.read_text())
    inv["revocations"] = [r for r in inv["revocations"] if r["serial"] != serial]
    for obj in inv["objects"].values():
        if obj["serial"] == serial:
            obj["revoked"] = None  # (the record of an entry revoked in pki.toml, un-marked too)
    path.write_text(json.dumps(inv, indent=2, sort_keys=True) + "\n")
    if crl:
        (repo / "state/crl/inter.crl").unlink()
    commit_all(repo, "PR: state edit")


@pytest.mark.parametrize("which", ["client", "server"])
def test_a_pr_that_deletes_the_crl_and_drops_a_revocation_is_refused(clone, which):
    """``client``: only the audit log proves its old serial was revoked (its record is the new one);
    ``server``: revoked in pki.toml too. Plan and apply refuse; nothing is signed or committed."""
    repo, pki, serials = clone
    serial = serials[which]
    before = head(repo)
    drop_revocation(repo, serial)
    pr = head(repo)
    line = assert_one_line(pki("plan", expect=1).stderr.strip())
    assert "authority.inter" in line and serial in line and "state/crl/inter.crl" in line, line
    assert "restore" in line and "git" in line, line
    assert pki("plan", "--offline", expect=1).returncode == 1
    assert_one_line(pki.apply(expect=1).stderr.strip())
    assert head(repo) == pr != before
    assert not (repo / "state/crl/inter.crl").exists()  # nothing signed
    assert git(repo, "status", "--porcelain", "--", "state").strip() == ""


def test_a_rewritten_audit_log_that_hides_the_revocation_is_refused(clone):
    """The attacker also removes the revocation's line from audit.jsonl and re-hashes the chain (and
    the inventory's audit head): the log no longer ends in a head signed with the pinned key."""
    from pkiascode.audit import GENESIS, line_hash

    repo, pki, serials = clone
    serial = serials["client"]
    lines = [json.loads(t) for t in (repo / "state/audit.jsonl").read_text().splitlines()]
    kept = [ln for ln in lines if ln.get("revoked_serial") != serial and ln.get("serial") != serial]
    assert len(kept) < len(lines)
    prev = GENESIS
    for seq, ln in enumerate(kept, 1):
        ln.update(seq=seq, prev=prev)
        ln["hash"] = prev = line_hash(ln)
    (repo / "state/audit.jsonl").write_text("".join(json.dumps(ln, sort_keys=True) + "\n" for ln in kept))
    inv_path = repo / "state/inventory.json"
    inv = json.loads(inv_path.read_text())
    inv["audit_head"] = {"seq": len(kept), "hash": prev}
    inv_path.write_text(json.dumps(inv, indent=2, sort_keys=True) + "\n")
    drop_revocation(repo, serial)
    line = assert_one_line(pki("plan", expect=1).stderr.strip())
    assert "audit" in line and "restore" in line, line
    assert not (repo / "state/crl/inter.crl").exists()


def test_a_lost_crl_with_its_revocations_intact_is_refreshed(clone):
    """The normal repair: the CRL file deleted, the inventory untouched: plan refreshes it, apply
    signs it with both revocations."""
    repo, pki, serials = clone
    (repo / "state/crl/inter.crl").unlink()
    commit_all(repo, "lost CRL")
    plan = pki.plan_json()
    assert [(c["action"], c["name"]) for c in plan["changes"]] == [("update_crl", "inter")]
    pki.apply()
    assert crl_serials(state_crl(repo, "inter")) == {int(s, 16) for s in serials.values()}
    assert pki.plan_exit() == 0


def edit_inventory(repo: Path, change) -> None:
    """The pull request: ``change(inventory)``, then the CRL files named deleted by the caller."""
    path = repo / "state/inventory.json"
    inv = json.loads(path.read_text())
    change(inv)
    path.write_text(json.dumps(inv, indent=2, sort_keys=True) + "\n")


def test_a_revocation_moved_to_another_authority_is_refused(clone):
    """The review's issuer swap: the replaced ``client``'s revocation moved from inter to root and both
    CRL files deleted (root's new CRL would list a serial nobody checks there, inter's would drop it)."""
    repo, pki, serials = clone

    def move(inv):
        for r in inv["revocations"]:
            if r["serial"] == serials["client"]:
                r["issuer"] = "root"
    edit_inventory(repo, move)
    for name in ("inter", "root"):
        (repo / f"state/crl/{name}.crl").unlink()
    commit_all(repo, "PR: tidy state")
    line = assert_one_line(pki("plan", expect=1).stderr.strip())
    assert "authority.inter" in line and serials["client"] in line and "un-revoke" in line, line
    assert_one_line(pki.apply(expect=1).stderr.strip())
    assert not (repo / "state/crl/inter.crl").exists()


def test_a_revocation_rewritten_to_a_hold_dated_later_is_refused(clone):
    """The review's reason/date rewrite: ``server``'s key_compromise made a certificate_hold dated
    2099 (record and revocation alike), its CRL deleted: the audit line records reason and date."""
    repo, pki, serials = clone

    def hold(inv):
        for r in inv["revocations"]:
            if r["serial"] == serials["server"]:
                r.update(reason="certificate_hold", date="2099-12-31T00:00:00Z")
        inv["objects"]["server"]["revoked"] = {"reason": "certificate_hold", "date": "2099-12-31T00:00:00Z"}
    edit_inventory(repo, hold)
    (repo / "state/crl/inter.crl").unlink()
    commit_all(repo, "PR: tidy state")
    line = assert_one_line(pki("plan", expect=1).stderr.strip())
    assert "authority.inter" in line and serials["server"] in line and "date" in line and "reason" in line, line
    assert not (repo / "state/crl/inter.crl").exists()


def test_a_retired_authority_does_not_excuse_another_authoritys_revocation(clone):
    """The review's retire bypass: an unrelated authority retired after the replacement; the
    replacement's revocation (by inter, which stays) then removed with inter's CRL file. Retiring
    spare legitimately still plans clean (its own revocations went with its CRL)."""
    repo, pki, serials = clone
    spare = '\n[authority.spare]\nissuer = "root"\ncommon_name = "Spare CA"\nvalidity = "1y"\npath_length = 0\n'
    (repo / "pki.toml").write_text((repo / "pki.toml").read_text() + spare)
    commit_all(repo, "spare")
    pki.apply()
    (repo / "pki.toml").write_text((repo / "pki.toml").read_text().replace(spare, ""))
    commit_all(repo, "retire spare")
    pki.apply()
    assert pki.plan_exit() == 0
    drop_revocation(repo, serials["client"])
    line = assert_one_line(pki("plan", expect=1).stderr.strip())
    assert "authority.inter" in line and serials["client"] in line, line


def test_a_revocation_adopted_by_pki_import_cannot_be_dropped(tmp_path):
    """The review's import case: `pki import` adopts a CA with its CRL (serial abc revoked,
    key_compromise); its audit line records that revocation whole, so a pull request that empties
    the inventory's revocations and deletes crl/ca.crl is refused."""
    import datetime as dt

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = dt.datetime.now(dt.timezone.utc)
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Old CA")])
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(1000).not_valid_before(now - dt.timedelta(days=1))
            .not_valid_after(now + dt.timedelta(days=365))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256()))
    revoked = (x509.RevokedCertificateBuilder().serial_number(0xabc).revocation_date(now - dt.timedelta(hours=1))
               .add_extension(x509.CRLReason(x509.ReasonFlags.key_compromise), critical=False).build())
    crl = (x509.CertificateRevocationListBuilder().issuer_name(name).last_update(now)
           .next_update(now + dt.timedelta(days=7)).add_extension(x509.CRLNumber(5), critical=False)
           .add_revoked_certificate(revoked).sign(key, hashes.SHA256()))
    src = tmp_path / "src"
    src.mkdir()
    (src / "ca.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (src / "ca.key").write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                   serialization.NoEncryption()))
    (src / "ca.crl").write_bytes(crl.public_bytes(serialization.Encoding.PEM))
    repo = new_repo(tmp_path / "repo", "", commit=True)
    pki = Pki(repo, clean_env())
    pki.ok("import", str(src))
    commit_all(repo, "adopt")
    [line] = [ln for ln in json.loads("[" + ",".join((repo / "state/audit.jsonl").read_text().splitlines()) + "]")
              if ln["action"] == "import"]
    assert [(r["issuer"], r["serial"], r["reason"]) for r in line["revocations"]] == [("ca", "abc", "key_compromise")]
    assert pki.plan_exit() == 0

    edit_inventory(repo, lambda inv: inv.update(revocations=[]))
    (repo / "state/crl/ca.crl").unlink()
    commit_all(repo, "PR: tidy state")
    err = assert_one_line(pki("plan", expect=1).stderr.strip())
    assert "authority.ca" in err and "abc" in err and "state/crl/ca.crl" in err, err
    assert not (repo / "state/crl/ca.crl").exists()


def test_a_shallow_clone_is_refused_saying_to_fetch_the_full_history(revoked, tmp_path):
    """The review's shallow case: in a depth-1 clone git's history cannot say which audit key was
    pinned first (the clone's one commit seems to add the file as the pull request left it), so a
    re-chained log without the signatures file would pass; plan refuses instead, in one line saying
    to fetch the full history. A full clone plans as usual."""
    src, _ = revoked
    shallow = tmp_path / "shallow"
    git(tmp_path, "clone", "-q", "--depth", "1", f"file://{src}", str(shallow))
    line = assert_one_line(Pki(shallow, clean_env())("plan", "--offline", expect=1).stderr.strip())
    assert "shallow" in line and "fetch-depth: 0" in line and "GIT_DEPTH: 0" in line, line
    git(shallow, "fetch", "-q", "--unshallow")
    assert Pki(shallow, clean_env())("plan", "--offline", "--detailed-exitcode", expect=(0, 2)).returncode in (0, 2)


def test_replacing_an_authority_that_lists_a_revoked_certificate_keeps_planning(clone):
    """The review's wedge: `--replace inter` reissues inter's live certificates under its new key, not
    the revoked ``server`` (signed by inter's earlier key). Later plans are clean, and ``server``'s
    revocation is still proved by the audit log."""
    repo, pki, serials = clone
    pki.apply("--replace", "inter")
    assert pki.plan_exit() == 0
    pki.ok("audit", "verify")
    edit_inventory(repo, lambda inv: inv.update(revocations=[r for r in inv["revocations"]
                                                             if r["serial"] != serials["server"]]))
    (repo / "state/crl/inter.crl").unlink()
    commit_all(repo, "PR: state edit")
    line = assert_one_line(pki("plan", expect=1).stderr.strip())
    assert "authority.inter" in line and serials["server"] in line, line


def test_a_revocation_dated_to_come_is_refused_before_it_is_signed(clone):
    """Plan refuses a revocation dated after its audit line (a later date on a CRL holds a
    certificate valid until then), so pki.toml cannot ask for one: one line at pki.toml's line."""
    repo, pki, _ = clone
    edit_toml(repo, 'common_name = "client-1"',
              'common_name = "client-1"\nrevoked = { reason = "superseded", date = 2099-01-02 }')
    commit_all(repo, "revoke client as of 2099")
    line = assert_one_line(pki("plan", expect=1).stderr.strip())
    assert line.startswith("pki.toml:") and "certificate.client.revoked" in line and "2099-01-02" in line, line
    assert_one_line(pki.apply(expect=1).stderr.strip())
