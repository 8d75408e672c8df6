"""Hundreds of new leaves are made by two processes: the result must be the same as one process's."""

from __future__ import annotations

from pathlib import Path

import pytest

from helpers import Pki, audit_lines, git, inventory, key_files, new_repo, state_cert
from pkiascode.apply import BULK_MIN

N = BULK_MIN + 10


def _pki_toml(n: int) -> str:
    parts = ['[defaults]\nkey = "ecdsa-p256"\n\n[authority.ca]\ncommon_name = "Bulk CA"\n']
    parts += [f'[certificate.leaf-{i:04d}]\nissuer = "ca"\nhosts = ["leaf-{i}.internal"]\n' for i in range(n)]
    return "\n".join(parts)


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    return new_repo(tmp_path, _pki_toml(N))


def _check(repo: Path) -> None:
    inv = inventory(repo)
    assert len(inv) == N + 1
    ca = state_cert(repo, "ca")
    serials = set()
    for name, rec in inv.items():
        cert = state_cert(repo, name)
        cert.verify_directly_issued_by(ca)
        assert format(cert.serial_number, "x") == rec["serial"]
        serials.add(rec["serial"])
    assert len(serials) == len(inv)
    keys = sorted(key_files(repo))
    assert keys == sorted(rec["key"]["ref"] for rec in inv.values()), "one key per record, no orphans"
    audit = audit_lines(repo)
    assert sorted(e["name"] for e in audit if e["action"] == "create") == sorted(inv)
    pki = Pki(repo)
    assert pki("audit", "verify").returncode == 0
    assert pki("plan", "--detailed-exitcode").returncode == 0


def test_many_leaves_are_made_by_two_processes_with_one_consistent_outcome(repo):
    r = Pki(repo)("apply", "--auto-approve")
    assert r.returncode == 0, r.stderr
    _check(repo)
    log = git(repo, "log", "--format=%s")
    assert log.splitlines() == [f"pki apply: {N + 1} created"]


def test_a_crash_after_the_workers_made_their_keys_leaves_no_orphan(repo):
    r = Pki(repo)("apply", "--auto-approve", env={"PKI_TEST_CRASH_AT": "after-sign"})
    assert r.returncode == 137
    assert len(list((repo / ".pki" / "keys").iterdir())) == N + 1  # made, but in no state
    assert not (repo / "state" / "inventory.json").exists()
    r = Pki(repo)("apply", "--auto-approve")
    assert r.returncode == 0, r.stderr
    _check(repo)
