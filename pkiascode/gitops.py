"""Committing ``state/`` to git: only ``state/``, never anything holding private key material.

Staging and committing go through the git command (``repo.git.add``/``repo.git.commit``: much
faster than GitPython's index for thousands of files); GitPython answers queries.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from .errors import GitError
from .x509 import holds_private_key

__all__ = ["Repository", "find_repository", "check_ignored"]


class Repository:
    def __init__(self, repo: "object", top: Path) -> None:
        self._repo = repo
        self.top = top

    @property
    def git(self):  # type: ignore[no-untyped-def]
        return self._repo.git  # type: ignore[attr-defined]

    def is_ignored(self, path: Path) -> bool:
        import git

        try:
            rel = path.resolve().relative_to(self.top)
        except ValueError:
            return True  # outside the repository: git never sees it
        try:
            self.git.check_ignore("-q", "--no-index", str(rel) + "/")
            return True
        except git.GitCommandError:
            return False

    def check_can_commit(self, state_root: Path) -> None:
        """Before an apply: git is not busy, and nothing that would be committed holds a key."""
        git_dir = Path(self._repo.git_dir)  # type: ignore[attr-defined]
        if (git_dir / "index.lock").exists():
            raise GitError(f"{git_dir / 'index.lock'} exists: another git process is running, or one crashed; "
                           "when none is running, remove that file")
        rel = state_root.resolve().relative_to(self.top).as_posix()
        changed = self.git.status("--porcelain", "-uall", "--no-renames", "--", rel).splitlines()
        bad = [line[3:] for line in changed if line[3:] and _holds_key(self.top / line[3:])]
        if bad:
            raise GitError(f"refusing to apply: {', '.join(bad[:3])} holds private key material; remove it "
                           "from the state directory (nothing was changed)")

    def commit_state(self, state_root: Path, message: str) -> str | None:
        """Stage and commit ``state_root`` only; None when nothing changed. Refuses key material."""
        import git

        rel = state_root.resolve().relative_to(self.top).as_posix()
        try:
            self.git.add("-A", "--", rel)
            staged = self.git.diff("--cached", "--name-only", "--no-renames", "--", rel).splitlines()
            if not staged:
                return None
            bad = [p for p in staged if _holds_key(self.top / p)]
            if bad:
                self.git.reset("-q", "--", rel)
                raise GitError(f"refusing to commit: {', '.join(bad[:3])} holds private key material; "
                               "remove it from the state directory")
            identity: list[str] = []
            reader = self._repo.config_reader()  # type: ignore[attr-defined]
            if not reader.has_option("user", "email"):
                identity = ["-c", "user.name=pkiascode", "-c", "user.email=pkiascode@localhost"]
            # the message on stdin: thousands of body lines exceed what one argument may hold
            self._repo.git.execute(["git", *identity, "commit", "-q", "--no-verify", "-F", "-", "--", rel],
                                   istream=_message_stream(message))
            return self._repo.head.commit.hexsha  # type: ignore[attr-defined]
        except git.GitCommandError as e:
            raise GitError(f"git commit of {rel} failed: {_git_reason(e)}") from None


def _message_stream(message: str) -> "object":
    import tempfile

    f = tempfile.TemporaryFile()
    f.write(message.encode("utf-8"))
    f.seek(0)
    return f


def _git_reason(error: "object") -> str:
    """The line of git's stderr that says what went wrong (``fatal: ...``), without GitPython's wrapping."""
    text = str(getattr(error, "stderr", "") or "").strip()
    if text.startswith("stderr:"):
        text = text[len("stderr:"):].strip().strip("'")
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    for line in lines:
        if line.startswith(("fatal:", "error:")):
            return line
    return lines[0] if lines else str(error)


def _holds_key(path: Path) -> bool:
    try:
        return holds_private_key(path.read_bytes())
    except (FileNotFoundError, IsADirectoryError):
        return False


def find_repository(path: Path) -> Repository | None:
    import git

    try:
        repo = git.Repo(path, search_parent_directories=True)
    except (git.InvalidGitRepositoryError, git.NoSuchPathError):
        return None
    if repo.bare or repo.working_tree_dir is None:
        return None
    return Repository(repo, Path(repo.working_tree_dir).resolve())


def check_ignored(repo: Repository | None, dirs: Iterable[Path], base: Path) -> None:
    if repo is None:
        return
    for d in dirs:
        if not repo.is_ignored(d):
            try:
                shown = d.resolve().relative_to(base.resolve()).as_posix()
            except ValueError:
                shown = str(d)
            raise GitError(f"the key directory {shown}/ is not git-ignored: add it (or `.pki/`) to .gitignore "
                           "before applying, so private keys can never be committed")


