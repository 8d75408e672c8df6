"""Hundreds of new leaves in one apply: one consistent outcome, a sound commit, and a crash anywhere
converges."""

from __future__ import annotations

from pathlib import Path

import pytest

from helpers import Pki, assert_state_sound, audit_lines, git, inventory, new_repo, state_cert
N = 210


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
    for name in inv:
        state_cert(repo, name).verify_directly_issued_by(ca)
    assert len({rec["serial"] for rec in inv.values()}) == len(inv)
    audit = audit_lines(repo)
    assert sorted(e["name"] for e in audit if e["action"] == "create") == sorted(inv)
    assert_state_sound(repo, Pki(repo), exact_keys=True)


def _no_temporaries(repo: Path) -> None:
    left = [p.name for d in ("state", "state/certs", "state/crl") if (repo / d).is_dir()
            for p in (repo / d).iterdir() if p.name.endswith(".tmp")]
    assert left == []


def _git_is_sound(repo: Path) -> None:
    """git checks every object of the commit, and it holds the files as written."""
    git(repo, "fsck", "--strict", "--full")
    for name in ("ca", "leaf-0000", f"leaf-{N - 1:04d}"):
        assert git(repo, "show", f"HEAD:state/certs/{name}.pem") == (repo / f"state/certs/{name}.pem").read_text()


def test_many_leaves_make_one_consistent_outcome_in_one_sound_commit(repo):
    r = Pki(repo)("apply", "--auto-approve")
    assert r.returncode == 0, r.stderr
    _check(repo)
    assert git(repo, "log", "--format=%s").splitlines() == [f"pki apply: {N + 1} created"]
    _no_temporaries(repo)
    _git_is_sound(repo)


def test_a_sha256_repository_gets_a_sound_commit(tmp_path):
    from helpers import write_project

    git(tmp_path, "init", "-q", "--object-format=sha256")
    write_project(tmp_path, _pki_toml(N))
    r = Pki(tmp_path)("apply", "--auto-approve")
    assert r.returncode == 0, r.stderr
    assert len(git(tmp_path, "rev-parse", "HEAD").strip()) == 64
    _git_is_sound(tmp_path)
    _check(tmp_path)
    # a removal too (a deletion in the index has the zero id of the repository's hash)
    write_project(tmp_path, _pki_toml(N).replace(f'[certificate.leaf-{N - 1:04d}]', "[certificate.gone]")
                  .replace(f'hosts = ["leaf-{N - 1}.internal"]', 'hosts = ["gone.internal"]'))
    r = Pki(tmp_path)("apply", "--auto-approve")
    assert r.returncode == 0, r.stderr
    listed = git(tmp_path, "ls-tree", "--name-only", "HEAD", "state/certs/")
    assert "state/certs/gone.pem" in listed and f"leaf-{N - 1:04d}.pem" not in listed
    git(tmp_path, "fsck", "--strict", "--full")


@pytest.mark.parametrize("point", ["after-sign", "after-txn", "after-state"])
def test_a_crash_while_state_is_written_converges(repo, point):
    """Killed before the transaction, nothing is in state/ (after-sign: the keys were made, and the
    next run leaves none of them orphaned); after it, state comes from the transaction, whatever was
    left in state/ meanwhile."""
    r = Pki(repo)("apply", "--auto-approve", env={"PKI_TEST_CRASH_AT": point})
    assert r.returncode == 137
    if point == "after-sign":
        assert len(list((repo / ".pki" / "keys").iterdir())) == N + 1  # made, but in no state
        assert not (repo / "state" / "inventory.json").exists()
    certs = repo / "state" / "certs"
    if point == "after-state":
        assert len(list(certs.iterdir())) == N + 1
        (certs / "leaf-0000.pem").write_text("damaged")  # what the transaction holds wins
    else:
        assert not certs.exists() or not list(certs.iterdir())
    r = Pki(repo)("apply", "--auto-approve")
    assert r.returncode == 0, r.stderr
    _no_temporaries(repo)
    _check(repo)
    _git_is_sound(repo)
