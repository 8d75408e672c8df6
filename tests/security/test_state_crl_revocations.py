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
