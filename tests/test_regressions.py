"""Regressions found in review: each test is a sequence that once went wrong."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers import audit_key_refs, clean_env, git, key_files, new_repo, run_pki
from helpers import openssl as run_openssl

from pkiascode import audit
from pkiascode.errors import StateError
from pkiascode.state import StateDir


def pki(repo: Path, *args: str, code: int = 0, **env: str):  # noqa: ANN201 - helpers.Result
    return run_pki(repo, *args, env=clean_env(**env), expect=code)


def repo_with(tmp_path: Path, toml: str) -> Path:
    return new_repo(tmp_path / "repo", toml)


BASE = '[defaults]\nkey = "ecdsa-p256"\n\n[authority.ca]\ncommon_name = "CA"\n\n' \
       '[certificate.leaf]\nissuer = "ca"\nhosts = ["leaf.internal"]\n'


def openssl(*args: str, cwd: Path) -> str:
    return run_openssl(*args, cwd=cwd).stdout


def old_ca(directory: Path) -> Path:
    """ca.crt + ca.key as an openssl script makes them."""
    directory.mkdir()
    openssl("ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", "ca.key", cwd=directory)
    openssl("req", "-x509", "-new", "-key", "ca.key", "-days", "365", "-subj", "/CN=Old CA",
            "-addext", "basicConstraints=critical,CA:TRUE", "-out", "ca.crt", cwd=directory)
    return directory


def test_an_import_killed_before_pki_toml_was_written_completes_instead_of_revoking(tmp_path):
    old = old_ca(tmp_path / "old")
    repo = repo_with(tmp_path, '# mine\n[defaults]\nkey = "ecdsa-p256"\n')
    pki(repo, "import", str(old), code=137, PKI_TEST_CRASH_AT="after-txn")
    assert "authority" not in (repo / "pki.toml").read_text()  # the crash came before pki.toml was written
    # apply never completes it (the pki.toml it writes is in .pki/, unreviewed): it says how
    r = pki(repo, "apply", "--auto-approve", code=1)
    assert ".pki/journal/txn.json" in r.stderr and "pki import" in r.stderr and "revoked" not in r.stdout
    assert "authority" not in (repo / "pki.toml").read_text()
    pki(repo, "import", str(old))  # the same import again finishes it
    assert "[authority.ca]" in (repo / "pki.toml").read_text()
    assert len(key_files(repo)) == 1
    pki(repo, "plan", "--detailed-exitcode")


def test_a_saved_plan_made_while_an_apply_is_pending_can_be_applied(tmp_path):
    repo = repo_with(tmp_path, BASE)
    pki(repo, "apply", "--auto-approve", code=137, PKI_TEST_CRASH_AT="after-txn")
    pki(repo, "plan", "--out", "p.json", code=0)
    r = pki(repo, "apply", "p.json")
    assert "completed an interrupted apply" in r.stderr


def test_removing_csr_from_an_entry_gives_it_a_key_of_its_own(tmp_path):
    repo = repo_with(tmp_path, BASE)
    (repo / "csrs").mkdir()
    openssl("req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
            "-keyout", str(tmp_path / "gw.key"), "-subj", "/CN=gw", "-out", "csrs/gw.csr", cwd=repo)
    (repo / "pki.toml").write_text(BASE + '\n[certificate.gw]\nissuer = "ca"\ncsr = "csrs/gw.csr"\n')
    pki(repo, "apply", "--auto-approve")
    (repo / "pki.toml").write_text(BASE + '\n[certificate.gw]\nissuer = "ca"\n')
    plan = json.loads(pki(repo, "plan", "--format", "json").stdout)
    assert [(c["action"], c["name"]) for c in plan["changes"]] == [("rekey", "gw")]
    pki(repo, "apply", "--auto-approve")
    pki(repo, "export", "gw", "--dir", str(tmp_path / "out"))
    assert (tmp_path / "out" / "gw-key.pem").exists()


def test_an_authority_made_again_under_a_removed_ones_name_starts_a_clean_crl(tmp_path):
    repo = repo_with(tmp_path, BASE)
    pki(repo, "apply", "--auto-approve")
    (repo / "pki.toml").write_text('[defaults]\nkey = "ecdsa-p256"\n')
    pki(repo, "apply", "--auto-approve")
    (repo / "pki.toml").write_text('[defaults]\nkey = "ecdsa-p256"\n\n[authority.ca]\ncommon_name = "CA"\n')
    pki(repo, "apply", "--auto-approve")
    assert "No Revoked Certificates" in openssl("crl", "-in", "state/crl/ca.crl", "-noout", "-text", cwd=repo)


def test_the_same_certificate_cannot_be_imported_twice(tmp_path):
    old = old_ca(tmp_path / "old")
    again = tmp_path / "again"
    again.mkdir()
    (again / "ca2.crt").write_bytes((old / "ca.crt").read_bytes())
    (again / "ca2.key").write_bytes((old / "ca.key").read_bytes())
    repo = repo_with(tmp_path, '[defaults]\nkey = "ecdsa-p256"\n')
    pki(repo, "import", str(old))
    r = pki(repo, "import", str(again), code=1)
    assert "same certificate" in r.stderr and "authority.ca" in r.stderr


def test_no_commit_then_apply_commits_everything_and_keeps_old_keys_until_then(tmp_path):
    repo = repo_with(tmp_path, BASE)
    pki(repo, "apply", "--auto-approve")
    (repo / "pki.toml").write_text(BASE.replace("ecdsa-p256", "ecdsa-p384"))  # every key is replaced
    before = {p.name for p in (repo / ".pki" / "keys").iterdir()} - audit_key_refs(repo)  # (that key stays)
    pki(repo, "apply", "--auto-approve", "--no-commit")
    assert before <= {p.name for p in (repo / ".pki" / "keys").iterdir()}, "HEAD's certificates keep their keys"
    (repo / "pki.toml").write_text(BASE.replace("ecdsa-p256", "ecdsa-p384") + '\n[certificate.z]\nissuer = "ca"\n')
    pki(repo, "apply", "--auto-approve")
    assert git(repo, "status", "--porcelain", "--", "state") == ""
    assert not before & {p.name for p in (repo / ".pki" / "keys").iterdir()}, "old keys go once committed"


@pytest.mark.parametrize("state_dir", [".", ".pki/state", "./", ".git"])
def test_state_dir_must_be_a_directory_of_its_own(tmp_path, state_dir):
    repo = repo_with(tmp_path, f'[pki]\nstate_dir = "{state_dir}"\n' + BASE)
    r = pki(repo, "validate", code=1)
    assert r.stderr.startswith("pki.toml:2: pki.state_dir: state_dir must be a directory of its own")


def test_a_long_last_audit_line_is_read(tmp_path):
    path = tmp_path / "audit.jsonl"
    lines = audit.chain([{"action": "update_crl", "reasons": ["x" * 200_000]}], prev=audit.GENESIS, seq=0)
    path.write_text(json.dumps(lines[0]) + "\n")
    assert audit.tail_hash(path) == (lines[0]["hash"], 1)
    path.write_text(json.dumps(lines[0]) + "\n{not json\n")
    with pytest.raises(StateError, match="damaged"):
        audit.tail_hash(path)


def _event(name: str) -> dict[str, object]:
    return {"time": "2026-11-27T00:00:00Z", "actor": "t", "action": "create", "kind": "certificate", "name": name,
            "serial": "01", "sha256": "00", "not_after": "2027-11-27T00:00:00Z", "backend": "local", "plan": None}


def test_an_audit_append_cut_short_by_a_crash_is_repaired(tmp_path):
    state = StateDir(tmp_path, "state", tmp_path / ".pki")
    first = audit.chain([_event("a")], prev=audit.GENESIS, seq=0)
    state._append_audit(audit.GENESIS, audit.render_lines(first), 0)
    size = state.audit_size()
    more = audit.chain([_event(f"n{i}") for i in range(50)], prev=first[-1]["hash"], seq=1)
    blob = audit.render_lines(more)
    with open(state.audit_path, "ab") as f:
        f.write(blob[: len(blob) // 2])  # the crash: half of it, mid-line
    state._append_audit(first[-1]["hash"], blob, size)
    assert audit.verify(state.audit_path.read_text().splitlines(), None) == []
    state._append_audit(first[-1]["hash"], blob, size)  # and again: already there
    assert len(state.audit_path.read_text().splitlines()) == 51


def test_adopting_an_authority_keeps_its_crl_number_and_revocations(tmp_path):
    import datetime as dt

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    old = old_ca(tmp_path / "old")
    ca = x509.load_pem_x509_certificate((old / "ca.crt").read_bytes())
    key = serialization.load_pem_private_key((old / "ca.key").read_bytes(), None)
    now = dt.datetime.now(dt.timezone.utc)
    revoked = (x509.RevokedCertificateBuilder().serial_number(0xBADC0DE).revocation_date(now)
               .add_extension(x509.CRLReason(x509.ReasonFlags.key_compromise), critical=False).build())
    crl = (x509.CertificateRevocationListBuilder().issuer_name(ca.subject).last_update(now)
           .next_update(now + dt.timedelta(days=7)).add_extension(x509.CRLNumber(7), critical=False)
           .add_revoked_certificate(revoked).sign(key, hashes.SHA256()))
    (old / "ca.crl").write_bytes(crl.public_bytes(serialization.Encoding.PEM))

    repo = repo_with(tmp_path, '[defaults]\nkey = "ecdsa-p256"\n')
    pki(repo, "import", str(old))
    text = openssl("crl", "-in", "state/crl/ca.crl", "-noout", "-text", cwd=repo)
    assert "X509v3 CRL Number: \n                8" in text.replace("\r", "")
    assert "0BADC0DE" in text.upper() and "Key Compromise" in text
    pki(repo, "plan", "--detailed-exitcode")
    # a CRL another authority signed is refused, and nothing is imported
    stranger = ec.generate_private_key(ec.SECP256R1())
    forged = (x509.CertificateRevocationListBuilder().issuer_name(ca.subject).last_update(now)
              .next_update(now + dt.timedelta(days=1)).sign(stranger, hashes.SHA256()))
    (old / "ca.crl").write_bytes(forged.public_bytes(serialization.Encoding.PEM))
    other = repo_with(tmp_path / "second", '[defaults]\nkey = "ecdsa-p256"\n')
    r = pki(other, "import", str(old), code=1)
    assert "ca.crl" in r.stderr and "not signed by that authority" in r.stderr


def test_a_key_an_earlier_run_could_not_discard_is_not_forgotten(tmp_path, monkeypatch):
    """A run that finds the key journal holding an earlier run's unanswered request (its store could
    not discard the key then) reads the journal at the end rather than trusting its own list."""
    import datetime as dt

    from helpers import SMALL_PKI, Pki, edit_toml

    from pkiascode.apply import execute
    from pkiascode.keytypes import KeyType, generate_private_key
    from pkiascode.project import Project

    repo = new_repo(tmp_path / "repo", SMALL_PKI)
    assert Pki(repo)("apply", "--auto-approve", "--no-commit").returncode == 0
    from cryptography.hazmat.primitives import serialization

    ghost = repo / ".pki" / "keys" / "ghost-deadbeef.pem"
    ghost.write_bytes(generate_private_key(KeyType.ECDSA_P256).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    journal = repo / ".pki" / "journal" / "keys.jsonl"
    journal.parent.mkdir(parents=True, exist_ok=True)
    journal.write_text(json.dumps({"intent": {"store": "local", "request": {
        "name": "ghost", "key_type": "ecdsa-p256", "authority": False, "exportable": True,
        "suffix": "deadbeef"}}}) + "\n")
    edit_toml(repo, 'hosts = ["localhost", "127.0.0.1"]', 'hosts = ["localhost"]')
    project = Project(repo / "pki.toml")
    plan = project.plan(at=dt.datetime.now(dt.timezone.utc).replace(microsecond=0))
    assert [c.action.value for c in plan.changes] == ["reissue"]
    execute(project, plan, commit=False)  # (no `recover` before it: the journal is as a failed discard left it)
    project.close()
    assert not ghost.exists()
    assert not journal.exists() or journal.read_text() == ""
