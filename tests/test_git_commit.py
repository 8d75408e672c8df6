"""The commit of state/: git's own plumbing makes it, in every kind of repository, and git checks it.

Each case applies three times (create, a one-host reissue, a removal that deletes a file) and then
`git fsck --full --strict` must pass; each commit holds only state/ files, and what the user had
staged stays staged. A user whose git config asks for signed commits gets a signed apply commit
(`git verify-commit` with an ssh key made here), and a signature that cannot be made stops the apply
before the branch moves.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from helpers import (
    SMALL_PKI, Pki, assert_state_sound, commit_all, edit_toml, git, head, require_tool, write_project,
)


def _apply_three_times(directory: Path, pki: Pki) -> list[str]:
    """Create, reissue one host, remove the client; returns the three commits, newest first."""
    pki.apply()
    edit_toml(directory, 'hosts = ["localhost", "127.0.0.1"]', 'hosts = ["localhost"]')
    pki.apply()
    text = (directory / "pki.toml").read_text()
    (directory / "pki.toml").write_text(text[:text.index("[certificate.client]")])
    pki.apply()
    return git(directory, "log", "-3", "--format=%H").split()


def _check_commits(directory: Path, commits: list[str]) -> None:
    top = Path(git(directory, "rev-parse", "--show-toplevel").strip())
    prefix = directory.resolve().relative_to(top.resolve()).as_posix()
    state = f"{prefix}/state/" if prefix != "." else "state/"
    for commit in commits:
        files = git(directory, "diff-tree", "--root", "--no-commit-id", "-r", "--name-only", commit).split()
        assert files and all(f.startswith(state) for f in files), (commit, files)
        assert git(directory, "log", "-1", "--format=%s", commit).startswith("pki apply: ")
    assert f"{state}certs/client.pem" in git(directory, "diff-tree", "--no-commit-id", "-r", "--name-only",
                                             "--diff-filter=D", commits[0])
    git(directory, "fsck", "--full", "--strict")


@pytest.mark.parametrize("object_format", ["sha1", "sha256"])
@pytest.mark.parametrize("layout", ["branch", "unborn", "detached", "worktree"])
def test_every_kind_of_repository_gets_sound_commits_of_state_only(tmp_path, env, layout, object_format):
    main = tmp_path / "repo"
    main.mkdir()
    git(main, "init", "-q", "-b", "main", f"--object-format={object_format}")
    write_project(main, SMALL_PKI)
    directory = main
    if layout != "unborn":
        commit_all(main)
    if layout == "detached":
        git(main, "checkout", "-q", "--detach")
    elif layout == "worktree":
        directory = tmp_path / "wt"
        git(main, "worktree", "add", "-q", str(directory), "-b", "wt")
    (directory / "notes.txt").write_text("staged by the user\n")
    git(directory, "add", "notes.txt")
    pki = Pki(directory, env)

    commits = _apply_three_times(directory, pki)

    _check_commits(directory, commits)
    assert len(commits[0]) == (64 if object_format == "sha256" else 40)
    assert git(directory, "diff", "--cached", "--name-only").split() == ["notes.txt"]
    assert git(directory, "status", "--porcelain", "--", "state") == ""
    if layout == "detached":
        assert git(directory, "rev-parse", "--abbrev-ref", "HEAD").strip() == "HEAD"
    assert_state_sound(directory, pki, exact_keys=True)


def test_a_subdirectory_project_commits_only_its_state(tmp_path, env):
    repo = tmp_path / "mono"
    repo.mkdir()
    git(repo, "init", "-q", "-b", "main")
    (repo / "README").write_text("monorepo\n")
    sub = repo / "infra" / "pki"
    write_project(sub, SMALL_PKI)
    commit_all(repo)
    commits = _apply_three_times(sub, Pki(sub, env))
    _check_commits(sub, commits)


# -- signed commits ------------------------------------------------------------------------------

def _ssh_signing(repo: Path, tmp_path: Path) -> Path:
    """An ssh signing key made here, and the repository's git config asking for signed commits."""
    require_tool("ssh-keygen")
    key = tmp_path / "signing"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "pki-test", "-f", str(key)], check=True)
    allowed = tmp_path / "allowed_signers"
    allowed.write_text(f"pki-test@example.invalid namespaces=\"git\" {(key.with_suffix('.pub')).read_text()}")
    for name, value in (("gpg.format", "ssh"), ("user.signingkey", str(key.with_suffix(".pub"))),
                        ("commit.gpgsign", "true"), ("gpg.ssh.allowedSignersFile", str(allowed))):
        git(repo, "config", "--local", name, value)
    return key


def test_an_apply_commit_is_signed_when_git_config_asks(project, pki, tmp_path):
    commit_all(project)
    _ssh_signing(project, tmp_path)
    pki.apply()
    edit_toml(project, 'hosts = ["localhost", "127.0.0.1"]', 'hosts = ["localhost"]')
    pki.apply()
    for rev in ("HEAD", "HEAD~1"):
        assert git(project, "log", "-1", "--format=%s", rev).startswith("pki apply: ")
        r = subprocess.run(["git", "verify-commit", rev], cwd=project, capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
        assert 'Good "git" signature for pki-test@example.invalid' in r.stderr
    git(project, "fsck", "--full", "--strict")


def test_a_signature_that_cannot_be_made_stops_before_the_branch_moves(project, pki, tmp_path):
    commit_all(project)
    key = _ssh_signing(project, tmp_path)
    first = head(project)
    public = key.with_suffix(".pub")
    hidden = tmp_path / "elsewhere.pub"
    public.rename(hidden)  # the configured key is not there
    r = pki("apply", "--auto-approve", expect=1)
    line = r.stderr.strip().splitlines()[-1]
    assert "signing the commit failed (commit.gpgsign is set)" in line and "nothing was committed" in line
    assert "the next `pki apply` commits it" in line
    assert head(project) == first
    assert git(project, "status", "--porcelain", "--", "state") != ""  # written, not committed
    hidden.rename(public)
    r = pki.apply()
    assert "completed an interrupted apply" in r.stderr
    assert git(project, "log", "--format=%s", "-2").splitlines() == ["pki apply: 4 created", "pki.toml"]
    subprocess.run(["git", "verify-commit", "HEAD"], cwd=project, check=True, capture_output=True)
    assert_state_sound(project, pki, exact_keys=True)
