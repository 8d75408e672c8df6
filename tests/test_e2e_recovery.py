"""Apply is restartable: killed at any point, the next plan/apply converges.

Three ways to kill it:

- real SIGKILLs at points found by watching the files apply writes (mid key generation, as soon as
  ``.pki/journal/txn.json`` appears, as soon as ``state/inventory.json`` is written);
- real SIGKILLs of the whole process group while git runs a hook that pauses (inside ``git commit``,
  and just after it);
- the fault-injection hook ``PKI_TEST_CRASH_AT=after-keys|after-txn|after-state|after-commit``, which
  ends the process with ``os._exit(137)`` at exactly that point.

After each, the same invariants: the next apply converges (plan has nothing to do), ``pki audit
verify`` passes, every inventory entry has its certificate file and its key (and they match), no key
file is left that the inventory does not reference, no serial is issued twice in the audit log, and
git has ``state/`` committed.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
from cryptography import x509

from helpers import (
    SMALL_PKI, Pki, assert_state_sound, audit_lines, commit_all, commit_count, copy_repo, edit_toml, fake_git, git,
    git_init, head, inventory, key_files, wait_for, write_project,
)

CRASH_POINTS = ("after-keys", "after-txn", "after-state", "after-commit")
ISSUING = ("create", "reissue", "renew", "rekey", "import")


def assert_converged(repo: Path, pki: Pki) -> None:
    assert not (repo / ".pki/journal/txn.json").exists(), "a transaction is still pending"
    assert_state_sound(repo, pki, exact_keys=True)

    inv = inventory(repo)
    issued = [line["serial"] for line in audit_lines(repo) if line["action"] in ISSUING]
    assert len(issued) == len(set(issued)), f"a serial was issued twice: {issued}"
    for rec in inv.values():
        assert issued.count(rec["serial"]) == 1

    assert git(repo, "show", "HEAD:state/inventory.json") == (repo / "state/inventory.json").read_text()
    assert git(repo, "show", "HEAD:state/audit.jsonl") == (repo / "state/audit.jsonl").read_text()
    for subject in git(repo, "log", "--format=%s").splitlines():
        assert subject.startswith("pki apply: ") or subject in ("pki.toml", "theirs"), subject


def changes_of(plan: dict) -> list[tuple[str, str]]:
    return [(c["action"], c["name"]) for c in plan["changes"]]


# -- the fault-injection hook, at each point, for a first apply and for an authority rekey -------

@pytest.mark.parametrize("point", CRASH_POINTS)
def test_first_apply_killed_at_each_point_converges(project, pki, point):
    planned = changes_of(pki.plan_json())
    r = pki("apply", "--auto-approve", env={"PKI_TEST_CRASH_AT": point})
    assert r.returncode == 137, r.output

    if point == "after-keys":
        assert len(key_files(project)) == 4  # made, journaled, not used by any state
        assert not (project / "state/inventory.json").exists() and head(project) is None
        assert not (project / ".pki/journal/txn.json").exists()
        assert changes_of(pki.plan_json()) == planned  # the same creates
    elif point == "after-txn":
        assert (project / ".pki/journal/txn.json").exists()
        assert not (project / "state/inventory.json").exists() and head(project) is None
        assert "interrupted apply is pending" in pki.ok("plan").stdout
    elif point == "after-state":
        assert (project / "state/inventory.json").exists() and head(project) is None
        pki("audit", "verify", expect=0)  # state/ is whole, only the commit is missing
    else:
        assert commit_count(project) == 1 and (project / ".pki/journal/txn.json").exists()

    r = pki.apply()
    if point == "after-keys":
        assert "deleted 4 key(s) left by an interrupted apply" in r.stderr
        assert "Apply complete: 4 created" in r.stdout
    else:
        assert "completed an interrupted apply: pki apply: 4 created" in r.stderr
    assert commit_count(project) == 1
    assert git(project, "log", "-1", "--format=%s") == "pki apply: 4 created\n"
    assert_converged(project, pki)


@pytest.mark.parametrize("point", CRASH_POINTS)
def test_authority_replace_killed_at_each_point_converges(applied_project, pki, point):
    before = inventory(applied_project)
    old_keys = key_files(applied_project)
    r = pki("apply", "--auto-approve", "--replace", "inter", env={"PKI_TEST_CRASH_AT": point})
    assert r.returncode == 137, r.output
    if point in ("after-keys", "after-txn", "after-state"):
        assert commit_count(applied_project) == 1
    # the old authority key must survive until the new state is committed
    assert before["inter"]["key"]["ref"] in key_files(applied_project)
    assert old_keys <= key_files(applied_project)

    pki.apply()  # re-run plainly: complete what was started, or (after-keys) clean up
    after = inventory(applied_project)
    if point == "after-keys":
        assert after == before and commit_count(applied_project) == 1
    else:
        assert commit_count(applied_project) == 2
        assert after["inter"]["key"]["ref"] != before["inter"]["key"]["ref"]
        assert before["inter"]["key"]["ref"] not in key_files(applied_project)  # retired after the commit
        for child in ("server", "client"):
            assert after[child]["serial"] != before[child]["serial"]
            assert after[child]["key"]["ref"] == before[child]["key"]["ref"]
        crl = x509.load_pem_x509_crl((applied_project / "state/crl/root.crl").read_bytes())
        assert int(before["inter"]["serial"], 16) in {r.serial_number for r in crl}
    assert_converged(applied_project, pki)


@pytest.fixture(scope="module")
def _killed_after_txn(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = git_init(tmp_path_factory.mktemp("killed") / "repo")
    write_project(directory, SMALL_PKI)
    assert Pki(directory)("apply", "--auto-approve", env={"PKI_TEST_CRASH_AT": "after-txn"}).returncode == 137
    return directory


@pytest.fixture
def killed_after_txn(repo: Path, _killed_after_txn: Path) -> Path:
    """``project`` after a first apply ended once its transaction was written (``after-txn``): ``repo``
    replaced by a copy of one made once per module."""
    shutil.rmtree(repo)
    return copy_repo(_killed_after_txn, repo)


def test_changes_made_after_a_crash_are_applied_after_the_interrupted_ones(killed_after_txn, pki):
    project = killed_after_txn
    edit_toml(project, 'hosts = ["localhost", "127.0.0.1"]', 'hosts = ["localhost", "127.0.0.1", "::1"]')
    plan = pki.plan_json()
    assert changes_of(plan) == [("reissue", "server")]  # on top of the pending transaction
    r = pki.apply()
    assert "completed an interrupted apply" in r.stderr and "Apply complete: 1 reissued" in r.stdout
    assert git(project, "log", "--format=%s").splitlines() == ["pki apply: 1 reissued", "pki apply: 4 created"]
    assert_converged(project, pki)


@pytest.mark.parametrize("damage", ["truncated", "not-ours", "trailing"])
def test_a_damaged_transaction_file_is_one_clear_error_and_changes_nothing(killed_after_txn, pki, damage):
    project = killed_after_txn
    txn = project / ".pki/journal/txn.json"
    data = txn.read_bytes()
    txn.write_bytes({"truncated": data[:-100], "not-ours": b'{"inventory": ""}\n',
                     "trailing": data + b"x"}[damage])
    for command in (("plan",), ("apply", "--auto-approve")):
        r = pki(*command)
        assert r.returncode == 1, r.output
        assert r.stderr.strip().splitlines()[-1].endswith("txn.json is damaged; remove it to discard the interrupted apply")
    assert not (project / "state/inventory.json").exists() and head(project) is None
    txn.unlink()  # as the message says: the interrupted apply is discarded, its keys cleaned up
    r = pki.apply()
    assert "Apply complete: 4 created" in r.stdout
    assert_converged(project, pki)


def test_plan_detailed_exitcode_reports_a_pending_transaction(killed_after_txn, pki):
    assert pki.plan_exit() == 2


def test_rerunning_a_killed_saved_plan_succeeds(project, pki, tmp_path):
    plan = tmp_path / "p.json"
    pki("plan", "--out", str(plan), expect=0)
    assert pki("apply", str(plan), env={"PKI_TEST_CRASH_AT": "after-txn"}).returncode == 137
    r = pki("apply", str(plan))
    assert_converged(project, pki)  # this part holds today
    assert r.returncode == 0, r.stderr


# -- real SIGKILLs -------------------------------------------------------------------------------

MANY_RSA = """\
[defaults]
key = "rsa-3072"
validity = "30d"
renew_before = "5d"
subject = { O = "slow keys" }

[authority.root]
key = "ecdsa-p256"
common_name = "Slow Root"
validity = "1y"
""" + "".join(f"""
[certificate.leaf-{i:02d}]
issuer = "root"
common_name = "leaf-{i:02d}"
""" for i in range(8))


def _journaled(repo: Path) -> int:
    """Keys the store has made and apply has journaled (not the intents written before asking)."""
    try:
        return sum('"id": "' in line for line in (repo / ".pki/journal/keys.jsonl").read_text().splitlines())
    except FileNotFoundError:
        return 0


def _kill_when(proc: subprocess.Popen, ready, timeout: float = 60) -> bool:
    """SIGKILL ``proc`` as soon as ``ready()``; False if it finished first."""
    deadline = time.monotonic() + timeout
    while proc.poll() is None:
        if ready():
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
            return True
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError("apply did not get there in time")
        time.sleep(0.001)  # leave the CPU to the process under test
    return False


def _wait_for_git(repo: Path) -> None:
    """A `git commit` child of the killed apply may still be finishing: let it."""
    time.sleep(0.3)
    deadline = time.monotonic() + 10
    while (repo / ".git/index.lock").exists() and time.monotonic() < deadline:
        time.sleep(0.05)


def test_sigkill_during_key_generation(repo, pki):
    write_project(repo, MANY_RSA)
    planned = changes_of(pki.plan_json())
    assert len(planned) == 9
    proc = pki.popen("apply", "--auto-approve")
    if not _kill_when(proc, lambda: _journaled(repo) >= 2):
        pytest.skip("key generation finished before it could be interrupted")
    assert proc.returncode == -signal.SIGKILL
    made = key_files(repo)
    assert len(made) >= 2, made
    assert not (repo / ".pki/journal/txn.json").exists()
    assert not (repo / "state/inventory.json").exists() and head(repo) is None
    assert changes_of(pki.plan_json()) == planned
    r = pki.apply()
    assert "left by an interrupted apply" in r.stderr
    assert not made & key_files(repo), "keys of the killed apply were not deleted"
    assert commit_count(repo) == 1
    assert_converged(repo, pki)


@pytest.mark.parametrize("watch", ["journal/txn.json", "state/inventory.json"])
def test_sigkill_once_the_transaction_is_written(project, pki, watch):
    target = project / (".pki/" + watch if watch.startswith("journal") else watch)
    proc = pki.popen("apply", "--auto-approve")
    if not _kill_when(proc, target.exists):
        pytest.skip(f"apply finished before {watch} could be seen")
    _wait_for_git(project)
    assert (project / ".pki/journal/txn.json").exists()
    r = pki.apply()
    assert "completed an interrupted apply" in r.stderr
    assert commit_count(project) == 1
    assert_converged(project, pki)


def _killed_in_git(project: Path, pki: Pki, step: str) -> None:
    """Run apply with a `git` on PATH that pauses at ``step`` of the commit; SIGKILL apply and git there.

    ``commit-tree``: the commit object is being made (HEAD not moved yet). ``index``: HEAD has moved
    and git is updating the user's index (the last step of the commit)."""
    marker = project.parent / f"{step}.reached"
    match = {"commit-tree": '[ "$1" = commit-tree ]',
             "index": '[ "$1" = update-index ] && [ -z "$GIT_INDEX_FILE" ]'}[step]
    env = fake_git(project.parent / "paused-git", match, f'touch "{marker}"; sleep 60')
    proc = pki.popen("apply", "--auto-approve", env=env, start_new_session=True)
    try:
        wait_for(marker, proc, "the paused git step")
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def test_killed_inside_git_commit_converges(project, pki):
    _killed_in_git(project, pki, "commit-tree")
    assert head(project) is None
    assert (project / "state/inventory.json").exists()
    assert (project / ".pki/journal/txn.json").exists()
    r = pki.apply()
    assert "completed an interrupted apply" in r.stderr
    assert commit_count(project) == 1
    assert_converged(project, pki)


def test_killed_inside_git_commit_on_a_branch_converges(project, pki):
    """On a branch with history: killed while git makes the commit object, the branch has not
    moved, and the next run commits once."""
    commit_all(project)
    first = head(project)
    _killed_in_git(project, pki, "commit-tree")
    assert head(project) == first
    assert (project / ".pki/journal/txn.json").exists()
    r = pki.apply()
    assert "completed an interrupted apply" in r.stderr
    assert commit_count(project) == 2
    assert git(project, "log", "-1", "--format=%s") == "pki apply: 4 created\n"
    assert git(project, "status", "--porcelain", "--", "state") == ""
    git(project, "fsck", "--full", "--strict")
    assert_converged(project, pki)


def test_a_branch_moved_during_apply_is_not_overwritten(project, pki):
    """Someone commits while an apply makes its commit: HEAD is moved only if it is still the
    commit the new one is based on, so theirs is not dropped; the apply stops with state/ written,
    and the next one commits on top of theirs."""
    commit_all(project)
    go = project.parent / "go"
    env = fake_git(project.parent / "waiting-git", '[ "$1" = commit-tree ]',
                   f'touch "{go}.reached"; while [ ! -e "{go}" ]; do sleep 0.05; done')
    proc = pki.popen("apply", "--auto-approve", env=env)
    wait_for(project.parent / "go.reached", proc, "git commit-tree")
    (project / "NOTES").write_text("theirs\n")
    git(project, "add", "NOTES")
    git(project, "commit", "-q", "-m", "theirs")
    theirs = head(project)
    go.touch()
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 1, (out, err)
    assert "the next `pki apply` commits it" in err
    assert head(project) == theirs
    r = pki.apply()
    assert "completed an interrupted apply" in r.stderr
    assert git(project, "log", "--format=%s", "-3").splitlines() == ["pki apply: 4 created", "theirs", "pki.toml"]
    assert git(project, "rev-parse", "HEAD~1").strip() == theirs
    assert git(project, "status", "--porcelain", "--", "state") == ""
    git(project, "fsck", "--full", "--strict")
    assert_converged(project, pki)


def test_a_linked_worktree_gets_its_commits(project, pki, env):
    """In a `git worktree`, objects live in the main repository's object directory."""
    commit_all(project)
    worktree = project.parent / "wt"
    git(project, "worktree", "add", "-q", str(worktree), "-b", "wt")
    wt = Pki(worktree, env)
    wt.apply()
    edit_toml(worktree, 'hosts = ["localhost", "127.0.0.1"]', 'hosts = ["localhost"]')
    wt.apply()
    assert git(worktree, "log", "--format=%s", "-3").splitlines() == [
        "pki apply: 1 reissued", "pki apply: 4 created", "pki.toml"]
    assert git(worktree, "status", "--porcelain", "--", "state") == ""
    git(project, "fsck", "--full", "--strict")
    assert_converged(worktree, wt)


def test_a_state_file_left_loose_is_committed_too(project, pki):
    """A state file git does not know yet is committed with the apply's own."""
    commit_all(project)
    pki.apply()
    extra = project / "state" / "crl" / "extra.crl"
    extra.write_bytes((project / "state" / "crl" / "inter.crl").read_bytes())
    edit_toml(project, 'hosts = ["localhost", "127.0.0.1"]', 'hosts = ["localhost"]')
    pki.apply()
    assert "state/crl/extra.crl" in git(project, "show", "--name-only", "--format=", "HEAD")
    assert git(project, "status", "--porcelain", "--", "state") == ""
    git(project, "fsck", "--full", "--strict")


def test_git_dates_from_the_environment_are_honoured(project, pki):
    commit_all(project)
    r = pki("apply", "--auto-approve", env={"GIT_AUTHOR_DATE": "2001-02-03T04:05:06Z",
                                           "GIT_COMMITTER_DATE": "2001-02-03T04:05:07Z"})
    assert r.returncode == 0, r.stderr
    assert git(project, "log", "-1", "--format=%aI %cI") == "2001-02-03T04:05:06+00:00 2001-02-03T04:05:07+00:00\n"


def test_a_detached_head_gets_its_commit_too(project, pki):
    commit_all(project)
    git(project, "checkout", "-q", "--detach")
    pki.apply()
    assert git(project, "log", "-1", "--format=%s") == "pki apply: 4 created\n"
    assert git(project, "rev-parse", "--abbrev-ref", "HEAD").strip() == "HEAD"  # still detached
    assert git(project, "status", "--porcelain", "--", "state") == ""
    git(project, "fsck", "--full", "--strict")
    assert_converged(project, pki)


def test_killed_right_after_git_commit_converges(project, pki):
    _killed_in_git(project, pki, "index")
    assert commit_count(project) == 1
    assert (project / ".pki/journal/txn.json").exists()
    r = pki.apply()
    assert "completed an interrupted apply" in r.stderr
    assert commit_count(project) == 1
    # the user's index follows the commit: nothing under state/ shows as staged or changed
    assert git(project, "status", "--porcelain", "--", "state") == ""
    assert_converged(project, pki)


def test_stale_git_index_lock_is_named_in_the_error(project, pki):
    (project / ".git/index.lock").write_text("")
    r = pki("apply", "--auto-approve", expect=1)
    assert "index.lock" in r.stderr, r.stderr
