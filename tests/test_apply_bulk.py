"""Hundreds of new leaves are made by two processes: the result must be the same as one process's."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography import x509

from pkiascode.apply import BULK_MIN

N = BULK_MIN + 10


def _pki_toml(n: int) -> str:
    parts = ['[defaults]\nkey = "ecdsa-p256"\n\n[authority.ca]\ncommon_name = "Bulk CA"\n']
    parts += [f'[certificate.leaf-{i:04d}]\nissuer = "ca"\nhosts = ["leaf-{i}.internal"]\n' for i in range(n)]
    return "\n".join(parts)


def _pki(repo: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    exe = Path(sys.executable).with_name("pki")
    return subprocess.run([str(exe), "-C", str(repo), *args], capture_output=True, text=True,
                          env=dict(os.environ, NO_COLOR="1", GIT_CONFIG_GLOBAL="/dev/null", **(env or {})))


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    (tmp_path / ".gitignore").write_text(".pki/\n")
    (tmp_path / "pki.toml").write_text(_pki_toml(N))
    return tmp_path


def _check(repo: Path) -> None:
    inv = json.loads((repo / "state" / "inventory.json").read_text())["objects"]
    assert len(inv) == N + 1
    ca = x509.load_pem_x509_certificate((repo / "state/certs/ca.pem").read_bytes())
    serials = set()
    for name, rec in inv.items():
        cert = x509.load_pem_x509_certificate((repo / f"state/certs/{name}.pem").read_bytes())
        cert.verify_directly_issued_by(ca)
        assert format(cert.serial_number, "x") == rec["serial"]
        serials.add(rec["serial"])
    assert len(serials) == len(inv)
    keys = sorted(p.name for p in (repo / ".pki" / "keys").iterdir())
    assert keys == sorted(rec["key"]["ref"] for rec in inv.values()), "one key per record, no orphans"
    audit = [json.loads(line) for line in (repo / "state/audit.jsonl").read_text().splitlines()]
    assert sorted(e["name"] for e in audit if e["action"] == "create") == sorted(inv)
    assert _pki(repo, "audit", "verify").returncode == 0
    assert _pki(repo, "plan", "--detailed-exitcode").returncode == 0


def test_many_leaves_are_made_by_two_processes_with_one_consistent_outcome(repo):
    r = _pki(repo, "apply", "--auto-approve")
    assert r.returncode == 0, r.stderr
    _check(repo)
    log = subprocess.run(["git", "-C", str(repo), "log", "--format=%s"], capture_output=True, text=True).stdout
    assert log.splitlines() == [f"pki apply: {N + 1} created"]


def test_a_crash_after_the_workers_made_their_keys_leaves_no_orphan(repo):
    r = _pki(repo, "apply", "--auto-approve", env={"PKI_TEST_CRASH_AT": "after-sign"})
    assert r.returncode == 137
    assert len(list((repo / ".pki" / "keys").iterdir())) == N + 1  # made, but in no state
    assert not (repo / "state" / "inventory.json").exists()
    r = _pki(repo, "apply", "--auto-approve")
    assert r.returncode == 0, r.stderr
    _check(repo)
