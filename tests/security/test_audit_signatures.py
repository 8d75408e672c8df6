"""The audit log is tamper-evident beyond its own hashes (issue 10.9).

Each apply signs the log's new head with a key in the PKI's key store, pinned in
state/audit-signatures.json on first use; `pki audit verify` checks the signatures, that nothing
follows the last signed head, that the pinned key is the one first committed, and that every
certificate and CRL file is the one the inventory records. Real git repositories, the real local key
store, the real `pki` command.

Apply calls `auditsign.seal` itself; the fixture calls the same function again (a no-op on a head
already signed) so the module's own tests also cover a head signed outside apply.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import stat
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from helpers import Pki, assert_one_line, commit_all, edit_toml, git

from pkiascode import audit, auditsign
from pkiascode.errors import StateError
from pkiascode.model import Kind, utc_now
from pkiascode.plan import AUDIT_KEY, AUDIT_LOG, Action, Change, Plan
from pkiascode.project import Project

SIGS = "state/audit-signatures.json"
NO_CHANGES = Plan(changes=(), warnings=(), at=utc_now())


def seal(repo: Path) -> dict:
    """Sign the audit head as apply does, and commit the file (idempotent once apply signs itself)."""
    auditsign.seal(Project(repo / "pki.toml"))
    if git(repo, "status", "--porcelain"):
        commit_all(repo, "audit head signed")
    return json.loads((repo / SIGS).read_text())


@pytest.fixture
def signed(applied: tuple[Path, Pki]) -> tuple[Path, Pki]:
    repo, pki = applied
    seal(repo)
    return repo, pki


def rewrite_chain(repo: Path, edit) -> None:
    """What an attacker with write access does: edit lines, re-hash the whole chain, and make the
    inventory's head agree, so that the hash chain alone is intact."""
    path = repo / "state/audit.jsonl"
    lines = [json.loads(t) for t in path.read_text().splitlines()]
    lines = edit(lines)
    prev, out = audit.GENESIS, []
    for n, line in enumerate(lines, 1):
        line = {k: v for k, v in line.items() if k != "hash"}
        line.update(seq=n, prev=prev)
        line["hash"] = prev = audit.line_hash(line)
        out.append(line)
    path.write_bytes(audit.render_lines(out))
    inv_path = repo / "state/inventory.json"
    inv = json.loads(inv_path.read_text())
    inv["audit_head"] = {"seq": len(out), "hash": prev}
    inv_path.write_text(json.dumps(inv, indent=2, sort_keys=True) + "\n")


def verify_fails(pki: Pki, *words: str) -> str:
    r = pki("audit", "verify", expect=1)
    for word in words:
        assert word in r.stderr, r.stderr
    return r.stderr


def test_a_signed_log_verifies_and_its_key_stays_in_the_local_store(signed):
    repo, pki = signed
    sigs = json.loads((repo / SIGS).read_text())
    key = sigs["keys"][0]
    assert key["algorithm"] == "ed25519" and key["endorsement"] is None and key["backend"] == "local"
    # the key is in the root's store, marked non-exportable, and it is the pinned one
    key_file = repo / ".pki/keys" / key["ref"]
    assert key["ref"].startswith("audit-log-") and key["ref"].endswith(".noexport.pem")
    assert stat.S_IMODE(os.lstat(key_file).st_mode) == 0o600
    private = serialization.load_pem_private_key(key_file.read_bytes(), None)
    assert isinstance(private, ed25519.Ed25519PrivateKey)
    spki = private.public_key().public_bytes(serialization.Encoding.DER,
                                             serialization.PublicFormat.SubjectPublicKeyInfo)
    assert hashlib.sha256(spki).hexdigest() == key["fingerprint"]
    assert base64.b64decode(key["public_key"]) == spki
    # no private key material in committed state
    assert b"PRIVATE KEY" not in (repo / SIGS).read_bytes()
    lines = (repo / "state/audit.jsonl").read_text().splitlines()
    assert sigs["heads"][-1]["seq"] == len(lines)
    assert sigs["heads"][-1]["hash"] == json.loads(lines[-1])["hash"]
    r = pki.ok("audit", "verify")
    assert "1 signed heads" in r.stdout and key["fingerprint"][:16] in r.stdout and r.stderr == ""
    assert pki.plan_exit() == 0  # the new state file is no drift


def test_a_rewritten_chain_fails_verify(signed):
    """The issue's test: re-hashing every line passes the hash chain, not the signatures."""
    repo, pki = signed
    rewrite_chain(repo, lambda lines: [dict(line, actor="someone-else@nowhere") for line in lines])
    lines = (repo / "state/audit.jsonl").read_text().splitlines()
    inv = json.loads((repo / "state/inventory.json").read_text())
    assert audit.verify(lines, inv) == []  # the chain alone cannot tell
    verify_fails(pki, "is not the line that was signed", "rewritten")
    git(repo, "checkout", "--", "state")
    pki.ok("audit", "verify")


def test_a_removed_last_line_fails_verify(signed):
    repo, pki = signed
    rewrite_chain(repo, lambda lines: lines[:-1])
    # (the last line is a CRL's: without it the chain and the inventory still agree)
    assert audit.verify((repo / "state/audit.jsonl").read_text().splitlines(),
                        json.loads((repo / "state/inventory.json").read_text())) == []
    verify_fails(pki, "has no line")


def test_a_line_appended_after_the_last_signed_head_fails_verify(signed):
    repo, pki = signed
    rewrite_chain(repo, lambda lines: lines + [dict(lines[-1], action="update_crl", time="2030-01-01T00:00:00Z")])
    verify_fails(pki, "lines after the last signature")


def test_a_head_whose_signature_was_edited_fails_verify(signed):
    repo, pki = signed
    sigs = json.loads((repo / SIGS).read_text())
    sig = bytearray(base64.b64decode(sigs["heads"][0]["signature"]))
    sig[0] ^= 1
    sigs["heads"][0]["signature"] = base64.b64encode(bytes(sig)).decode()
    (repo / SIGS).write_text(json.dumps(sigs))
    verify_fails(pki, "does not verify with the pinned key")


def attacker_key() -> tuple[ed25519.Ed25519PrivateKey, dict]:
    key = ed25519.Ed25519PrivateKey.generate()
    der = key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return key, {"fingerprint": hashlib.sha256(der).hexdigest(), "public_key": base64.b64encode(der).decode(),
                 "algorithm": "ed25519"}


def resign(repo: Path, sigs: dict, key: ed25519.Ed25519PrivateKey, fingerprint: str) -> None:
    """Every head signed again by ``key``, naming the log's lines as they are now."""
    hashes = {obj["seq"]: obj["hash"] for obj in map(json.loads, (repo / "state/audit.jsonl").read_text().splitlines())}
    for head in sigs["heads"]:
        head["key"] = fingerprint
        head["hash"] = hashes[head["seq"]]
        head["signature"] = base64.b64encode(key.sign(auditsign.head_message(head))).decode()


def test_a_swapped_pinned_key_fails_verify_and_apply(signed):
    """Replacing the pin and re-signing every head with one's own key: the pin the file's first
    commit made is another key (verify), and the store's key is not the pinned one (apply)."""
    repo, pki = signed
    rewrite_chain(repo, lambda lines: [dict(line, actor="someone-else@nowhere") for line in lines])
    sigs = json.loads((repo / SIGS).read_text())
    key, pin = attacker_key()
    sigs["keys"][0].update(pin)
    resign(repo, sigs, key, pin["fingerprint"])
    (repo / SIGS).write_text(json.dumps(sigs))
    assert auditsign.verify((repo / "state/audit.jsonl").read_text().splitlines(), sigs) == ([], [])
    verify_fails(pki, "the pinned key was swapped")
    # committed, it still fails: git's history has the first pin
    commit_all(repo, "innocent-looking change")
    verify_fails(pki, "the pinned key was swapped")
    # and the next apply stops before any change: the store's key is not the swapped pin
    with pytest.raises(StateError, match="is not the audit key pinned"):
        auditsign.check_ready(Project(repo / "pki.toml"), NO_CHANGES)


def test_an_added_pin_without_the_old_keys_endorsement_fails_verify(signed):
    repo, pki = signed
    rewrite_chain(repo, lambda lines: lines + [dict(lines[-1], time="2030-01-01T00:00:00Z")])
    sigs = json.loads((repo / SIGS).read_text())
    key, pin = attacker_key()
    seq = sigs["heads"][-1]["seq"] + 1
    forged = dict(sigs["keys"][0], **pin, since_seq=seq, endorsement=base64.b64encode(b"x" * 64).decode())
    sigs["keys"].append(forged)
    head = {"seq": seq, "hash": json.loads((repo / "state/audit.jsonl").read_text().splitlines()[-1])["hash"],
            "time": "2030-01-01T00:00:00Z", "key": pin["fingerprint"]}
    head["signature"] = base64.b64encode(key.sign(auditsign.head_message(head))).decode()
    sigs["heads"].append(head)
    (repo / SIGS).write_text(json.dumps(sigs))
    verify_fails(pki, "is not endorsed by keys[0]")


@pytest.mark.parametrize("what", ["certificate", "crl"])
def test_a_replaced_certificate_or_crl_file_fails_verify(signed, what):
    repo, pki = signed
    if what == "certificate":
        (repo / "state/certs/client.pem").write_bytes((repo / "state/certs/server.pem").read_bytes())
        verify_fails(pki, "state/certs/client.pem", "does not match the inventory", "certificate.client")
    else:
        (repo / "state/crl/inter.crl").write_bytes((repo / "state/crl/root.crl").read_bytes())
        verify_fails(pki, "state/crl/inter.crl", "does not match the inventory", "authority.inter")
    git(repo, "checkout", "--", "state")
    pki.ok("audit", "verify")


def test_a_certificate_file_the_inventory_does_not_list_fails_verify(signed):
    repo, pki = signed
    (repo / "state/certs/extra.pem").write_bytes((repo / "state/certs/server.pem").read_bytes())
    verify_fails(pki, "state/certs/extra.pem: not in the inventory")


def test_signed_heads_removed_with_the_key_left_pinned_fail_verify(signed):
    repo, pki = signed
    sigs = json.loads((repo / SIGS).read_text())
    sigs["heads"] = []
    (repo / SIGS).write_text(json.dumps(sigs))
    verify_fails(pki, "a key is pinned but no head is signed")


def test_a_removed_signatures_file_fails_verify_once_committed(signed):
    repo, pki = signed
    (repo / SIGS).unlink()
    verify_fails(pki, "missing or without keys", "pinned audit key")


def test_a_log_without_signed_heads_passes_with_a_warning(applied):
    """A log from a version before signed heads (never had the file): a warning, never a silent pass."""
    repo, pki = applied
    if (repo / SIGS).exists():  # apply signs once the seam is wired: make the older version's log
        git(repo, "rm", "-q", SIGS)
        git(repo, "commit", "-q", "--amend", "--no-edit")
    r = pki.ok("audit", "verify")
    assert "NOT signed" in r.stdout
    warning = assert_one_line(r.stderr.strip())
    assert warning.startswith("warning: state/audit-signatures.json: no signed heads")
    assert "a rewritten chain would pass" in warning
    # the next signing pins a key on first use and signs the whole log so far
    seal(repo)
    assert pki.ok("audit", "verify").stderr == ""


@pytest.mark.parametrize("content, says", [
    (b"not json", "not JSON"),
    (b'{"format_version": 2, "keys": [], "heads": []}', "format_version 2"),
    (b'{"format_version": 1, "keys": [], "heads": [], "x": 1}', "exactly format_version"),
    (b'{"format_version": 1, "keys": [{"fingerprint": "00"}], "heads": []}', "keys[0]: fields must be"),
])
def test_a_malformed_signatures_file_is_one_line_naming_it(signed, content, says):
    repo, pki = signed
    (repo / SIGS).write_bytes(content)
    r = pki("audit", "verify", expect=1)
    line = assert_one_line(r.stderr.strip())
    assert "state/audit-signatures.json" in line and says in line


@pytest.mark.parametrize("line, says", [
    ('["seq", "hash", "prev"]', "audit.jsonl:1: not a JSON object"),
    ("not json", "audit.jsonl:1: not JSON"),
])
def test_a_malformed_audit_line_is_one_line_naming_it(signed, line, says):
    repo, pki = signed
    path = repo / "state/audit.jsonl"
    path.write_text(line + "\n" + path.read_text().split("\n", 1)[1])
    r = pki("audit", "verify", expect=1)
    assert assert_one_line(r.stderr.strip()) == f"state/{says}"


def test_a_head_naming_a_key_that_is_not_the_fingerprint_of_its_public_key_is_refused(signed):
    repo, pki = signed
    sigs = json.loads((repo / SIGS).read_text())
    sigs["keys"][0]["fingerprint"] = "0" * 64
    (repo / SIGS).write_text(json.dumps(sigs))
    r = pki("audit", "verify", expect=1)
    assert "fingerprint is not the SHA-256 of public_key" in assert_one_line(r.stderr.strip())


def rekey_as_apply_does(repo: Path) -> None:
    """What `pki apply --replace @audit` does once the seam is wired: the plan's rekey becomes an audit
    line (`auditsign.plan_events`) in apply's transaction, and `seal` pins the new key from it."""
    project = Project(repo / "pki.toml")
    state = project.state
    inv, _ = state.load()
    plan = Plan(changes=(Change(Action.REKEY_AUDIT_KEY, Kind.AUTHORITY, AUDIT_LOG, ("--replace @audit",)),),
                warnings=(), at=utc_now(), replace=(AUDIT_KEY,))
    events = auditsign.plan_events(project, plan, time="2030-01-01T00:00:00Z", actor="pki-test@ci",
                                   digest=plan.digest())
    txn = state.transaction(objects=inv["objects"], revocations=inv["revocations"], files={}, events=events,
                            message="pki apply: 1 audit key rekeyed\n", commit=False)
    state.roll_forward(txn)
    auditsign.seal(project, txn["audit"])
    commit_all(repo, "pki apply: 1 audit key rekeyed")


def test_a_rekey_pins_a_new_key_endorsed_by_the_old_one_and_later_heads_verify(signed):
    repo, pki = signed
    old = json.loads((repo / SIGS).read_text())["keys"][0]
    rekey_as_apply_does(repo)
    sigs = json.loads((repo / SIGS).read_text())
    new = sigs["keys"][1]
    last = json.loads((repo / "state/audit.jsonl").read_text().splitlines()[-1])
    assert (last["action"], last["name"], last["replaces"]) == ("rekey_audit_key", "audit-log", old["fingerprint"])
    assert new["fingerprint"] != old["fingerprint"] and new["endorsement"] and new["since_seq"] == last["seq"]
    assert sigs["heads"][-1]["key"] == new["fingerprint"] and sigs["heads"][0]["key"] == old["fingerprint"]
    assert (repo / ".pki/keys" / old["ref"]).exists()  # kept: nothing needs it, but deleting is not verify's
    # a later head is signed by the new key
    edit_toml(repo, 'common_name = "client-1"', 'common_name = "client-2"')
    commit_all(repo)
    pki.apply()
    sigs = seal(repo)
    assert [k["fingerprint"] for k in sigs["keys"]] == [old["fingerprint"], new["fingerprint"]]
    assert [h["key"] for h in sigs["heads"]] == [old["fingerprint"], new["fingerprint"], new["fingerprint"]]
    r = pki.ok("audit", "verify")
    assert "3 signed heads" in r.stdout and new["fingerprint"][:16] in r.stdout
    # a head after the rekey signed by the old key is refused
    forged = json.loads((repo / SIGS).read_text())
    key = serialization.load_pem_private_key((repo / ".pki/keys" / old["ref"]).read_bytes(), None)
    head = forged["heads"][-1]
    head["key"] = old["fingerprint"]
    head["signature"] = base64.b64encode(key.sign(auditsign.head_message(head))).decode()
    (repo / SIGS).write_text(json.dumps(forged))
    verify_fails(pki, "not the key pinned for it")


def test_a_lost_audit_key_stops_apply_and_a_rekey_without_it_needs_trust_pin(signed):
    """A fresh clone without the local key: apply stops before any change unless the plan replaces the
    key; the new pin cannot be endorsed, so verify refuses it until told to trust it."""
    repo, pki = signed
    old = json.loads((repo / SIGS).read_text())["keys"][0]
    (repo / ".pki/keys" / old["ref"]).unlink()
    with pytest.raises(StateError, match=r"the audit key .* is missing from backend local .*--replace @audit"):
        auditsign.check_ready(Project(repo / "pki.toml"), NO_CHANGES)
    rekey_as_apply_does(repo)
    last = json.loads((repo / "state/audit.jsonl").read_text().splitlines()[-1])
    assert (last["action"], last["endorsed"], last["replaces"]) == ("rekey_audit_key", False, old["fingerprint"])
    new = json.loads((repo / SIGS).read_text())["keys"][1]
    assert new["endorsement"] is None
    err = verify_fails(pki, "is not endorsed by keys[0]", f"--trust-pin {new['fingerprint']}")
    assert "Traceback" not in err
    r = pki.ok("audit", "verify", "--trust-pin", new["fingerprint"])
    assert "2 signed heads" in r.stdout
    assert "warning: state/audit-signatures.json: keys[1]" in r.stderr and "trusted as --trust-pin says" in r.stderr
    # trusting another fingerprint does not help
    verify_fails_with = pki("audit", "verify", "--trust-pin", old["fingerprint"], expect=1)
    assert "is not endorsed by keys[0]" in verify_fails_with.stderr


def test_a_pin_whose_endorsement_was_made_for_another_key_fails_verify(signed):
    repo, pki = signed
    rekey_as_apply_does(repo)
    sigs = json.loads((repo / SIGS).read_text())
    _, pin = attacker_key()
    sigs["keys"][1].update(pin)  # the old key's endorsement kept, the key swapped
    (repo / SIGS).write_text(json.dumps(sigs))
    verify_fails(pki, "is not endorsed by keys[0]")


def test_apply_itself_signs_every_new_head(applied):
    repo, pki = applied
    sigs = json.loads((repo / SIGS).read_text())
    assert len(sigs["heads"]) == 1
    assert git(repo, "status", "--porcelain") == ""  # committed with the apply
    edit_toml(repo, 'common_name = "client-1"', 'common_name = "client-2"')
    commit_all(repo)
    pki.apply()
    sigs = json.loads((repo / SIGS).read_text())
    assert len(sigs["heads"]) == 2 and git(repo, "status", "--porcelain") == ""
    assert "2 signed heads" in pki.ok("audit", "verify").stdout
    # the reviewed rekey: planned, applied, recorded, endorsed
    r = pki.ok("plan", "--replace", "@audit")
    assert "-/+ the audit log's key will be replaced by a new key" in r.stdout
    assert "Plan: 1 audit key to rekey." in r.stdout
    assert "1 audit key rekeyed" in pki.apply("--replace", "@audit").stdout
    assert git(repo, "log", "-1", "--format=%s").strip() == "pki apply: 1 audit key rekeyed"
    sigs = json.loads((repo / SIGS).read_text())
    assert len(sigs["keys"]) == 2 and sigs["keys"][1]["endorsement"] and sigs["heads"][-1]["key"] == \
        sigs["keys"][1]["fingerprint"]
    assert "3 signed heads" in pki.ok("audit", "verify").stdout
    assert pki.plan_exit() == 0


def test_a_pin_added_without_endorsement_is_refused_by_plan_unless_the_store_holds_its_key(signed):
    """A lost audit key's successor is pinned without an endorsement; plan trusts such a pin only when
    this PKI's store holds its key. A pull request's own key, pinned so and signing lines it appended
    (a retirement, an id), is refused by plan and apply, not only by `pki audit verify`."""
    repo, pki = signed
    rewrite_chain(repo, lambda lines: lines + [dict(lines[-1], time="2030-01-01T00:00:00Z")])
    sigs = json.loads((repo / SIGS).read_text())
    key, pin = attacker_key()
    seq = sigs["heads"][-1]["seq"] + 1
    sigs["keys"].append(dict(sigs["keys"][0], **pin, since_seq=seq, endorsement=None))
    head = {"seq": seq, "hash": json.loads((repo / "state/audit.jsonl").read_text().splitlines()[-1])["hash"],
            "time": "2030-01-01T00:00:00Z", "key": pin["fingerprint"]}
    head["signature"] = base64.b64encode(key.sign(auditsign.head_message(head))).decode()
    sigs["heads"].append(head)
    (repo / SIGS).write_text(json.dumps(sigs))
    for args in (["plan"], ["apply", "--auto-approve"]):
        r = pki(*args, expect=1)
        assert "is not endorsed by keys[0]" in assert_one_line(r.stderr.strip()), r
