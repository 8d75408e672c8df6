"""Committing ``state/`` to git: only ``state/``, never anything holding private key material.

Commits are made with git's plumbing on a temporary index, so they hold exactly the state files
and never what else the user staged: the blobs go into the object store through one
``git fast-import`` process while certificates are still being signed (git works on the other
core), then ``update-index``/``write-tree``/``commit-tree``/``update-ref`` make the commit, and the
user's index is brought up to date for those paths. ``git add`` of thousands of files would hash them
all again after the fact. Queries are one ``git rev-parse`` each: importing GitPython would cost an
apply more than all of them.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
from collections.abc import Iterable, Mapping
from pathlib import Path

from .errors import GitError
from .x509 import holds_private_key

__all__ = ["Repository", "BlobWriter", "find_repository", "check_ignored"]

_ZERO = "0" * 40


class BlobWriter:
    """Streams blobs into the repository's object store through one ``git fast-import``."""

    def __init__(self, repo: Repository) -> None:
        self._repo = repo
        self._proc: subprocess.Popen[bytes] | None = None
        self._written: set[str] = set()
        self._sha256 = repo.object_format == "sha256"

    def object_id(self, data: bytes) -> str:
        header = b"blob %d\0" % len(data)
        return (hashlib.sha256 if self._sha256 else hashlib.sha1)(header + data).hexdigest()

    def add(self, data: bytes) -> str:
        oid = self.object_id(data)
        if oid in self._written:
            return oid
        if self._proc is None:
            self._proc = subprocess.Popen(["git", "fast-import", "--quiet", "--done"], cwd=self._repo.top,
                                          stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                          stderr=subprocess.PIPE)
        assert self._proc.stdin is not None
        try:
            self._proc.stdin.write(b"blob\ndata %d\n%s\n" % (len(data), data))
        except BrokenPipeError:
            self.close()  # reports git's own words
        self._written.add(oid)
        return oid

    def close(self) -> None:
        """Wait until every blob is in the object store."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        assert proc.stdin is not None and proc.stderr is not None
        try:
            proc.stdin.write(b"done\n")
            proc.stdin.close()
        except BrokenPipeError:
            pass
        err = proc.stderr.read().decode(errors="replace")
        if proc.wait() != 0:
            self._written.clear()
            raise GitError(f"git fast-import failed: {_first_reason(err)}")


class Repository:
    def __init__(self, top: Path, git_dir: Path, object_format: str) -> None:
        self.top = top
        self.git_dir = git_dir
        self.object_format = object_format
        self._blobs: BlobWriter | None = None

    @property
    def blobs(self) -> BlobWriter:
        if self._blobs is None:
            self._blobs = BlobWriter(self)
        return self._blobs

    def close(self) -> None:
        if self._blobs is not None:
            try:
                self._blobs.close()
            except GitError:
                pass  # only ever unfinished work of a failed apply: unreferenced objects
            self._blobs = None

    def _git(self, *args: str, stdin: bytes | None = None, env: Mapping[str, str] | None = None) -> str:
        run_env = dict(os.environ, **env) if env else None
        proc = subprocess.run(["git", *args], cwd=self.top, input=stdin, capture_output=True, env=run_env)
        if proc.returncode != 0:
            raise GitError(f"git {args[0]} failed: {_first_reason(proc.stderr.decode(errors='replace'))}")
        return proc.stdout.decode().strip()

    def rel(self, path: Path) -> str:
        return path.resolve().relative_to(self.top).as_posix()

    def is_ignored(self, path: Path) -> bool:
        try:
            rel = path.resolve().relative_to(self.top)
        except ValueError:
            return True  # outside the repository: git never sees it
        proc = subprocess.run(["git", "check-ignore", "-q", "--no-index", str(rel) + "/"], cwd=self.top,
                              capture_output=True)
        return proc.returncode == 0

    def check_can_commit(self, state_root: Path) -> None:
        """Before an apply: git is not busy, and nothing that would be committed holds a key."""
        lock = self.git_dir / "index.lock"
        if lock.exists():
            raise GitError(f"{lock} exists: another git process is running, or one crashed; "
                           "when none is running, remove that file")
        bad = [p for p, _ in self._loose_state_files(state_root) if _holds_key(self.top / p)]
        if bad:
            raise GitError(f"refusing to apply: {', '.join(bad[:3])} holds private key material; remove it "
                           "from the state directory (nothing was changed)")

    def _loose_state_files(self, state_root: Path, *, modified: bool = False) -> list[tuple[str, bool]]:
        """(path, exists) of pkiascode's files under ``state_root`` that are new to git or deleted (and,
        with ``modified``, changed since HEAD); temporary and foreign files are left alone."""
        root = self.rel(state_root)
        # not --modified by default: that would hash every file whose index entry has no stat data yet
        out = self._git("ls-files", "-z", "--others", "--deleted", "--exclude-standard", "--", root)
        paths = {p for p in out.split("\0") if p}
        if modified and self._head():
            paths |= {p for p in self._git("diff-index", "-z", "--name-only", "HEAD", "--", root).split("\0") if p}
        return [(p, (self.top / p).is_file()) for p in sorted(paths) if _is_state_file(root, p)]

    def commit_state(self, state_root: Path, files: Mapping[str, bytes | None], message: str, *,
                     everything: bool = False) -> str | None:
        """Commit ``files`` (paths relative to ``state_root``; None deletes) and the state files git does
        not know yet (with ``everything``, every state file that differs from HEAD), and nothing else.
        None when there was nothing to commit. Refuses key material."""
        root = self.rel(state_root)
        changes: dict[str, bytes | None] = {f"{root}/{rel}": data for rel, data in files.items()}
        for path, exists in self._loose_state_files(state_root, modified=everything):
            if path not in changes:
                changes[path] = (self.top / path).read_bytes() if exists else None
        bad = [p for p, data in changes.items() if data is not None and holds_private_key(data)]
        if bad:
            raise GitError(f"refusing to commit: {', '.join(bad[:3])} holds private key material; "
                           "remove it from the state directory")
        lines = []
        for path, data in sorted(changes.items()):
            if data is None:
                lines.append(f"0 {_ZERO}\t{path}")
            else:
                lines.append(f"100644 {self.blobs.add(data)}\t{path}")
        self.blobs.close()
        index_info = ("\n".join(lines) + "\n").encode()

        head = self._head()
        tmp_index = self.git_dir / f"pkiascode-index-{os.getpid()}"
        env = {"GIT_INDEX_FILE": str(tmp_index)}
        try:
            if head:
                self._git("read-tree", head, env=env)
            self._git("update-index", "--index-info", stdin=index_info, env=env)
            tree = self._git("write-tree", env=env)
        finally:
            tmp_index.unlink(missing_ok=True)
        if head and tree == self._git("rev-parse", f"{head}^{{tree}}"):
            self._sync_index(index_info, root, head)  # a run killed after the commit left this undone
            return None
        identity: list[str] = []
        if subprocess.run(["git", "var", "GIT_COMMITTER_IDENT"], cwd=self.top, capture_output=True).returncode:
            identity = ["-c", "user.name=pkiascode", "-c", "user.email=pkiascode@localhost"]  # none configured
        # the message on stdin: thousands of body lines exceed what one argument may hold
        commit = self._git(*identity, "commit-tree", tree, *(["-p", head] if head else []), "-F", "-",
                           stdin=message.encode("utf-8"))
        self._git("update-ref", "-m", "pki apply", "HEAD", commit, head or _ZERO)
        self._sync_index(index_info, root, commit)
        return commit

    def _sync_index(self, index_info: bytes, root: str, commit: str) -> None:
        """The user's index, for these paths only, follows the commit (what else is staged stays)."""
        try:
            self._git("update-index", "--index-info", stdin=index_info)
        except GitError as e:
            raise GitError(f"committed {commit[:12]}, but updating the index failed ({e}); run "
                           f"`git reset -q -- {root}` to bring it in line") from None

    def _head(self) -> str | None:
        proc = subprocess.run(["git", "rev-parse", "-q", "--verify", "HEAD^{commit}"], cwd=self.top,
                              capture_output=True)
        return proc.stdout.decode().strip() or None if proc.returncode == 0 else None


def _is_state_file(root: str, path: str) -> bool:
    """What pkiascode writes under the state directory: certs/, crl/, the inventory, the audit log,
    its README; never a dot-file (temporary files of a killed write) or anything else put there."""
    rel = path[len(root) + 1:] if root not in ("", ".") else path
    name = rel.rsplit("/", 1)[-1]
    if name.startswith("."):
        return False
    return rel in ("inventory.json", "audit.jsonl", "README.md") or rel.startswith(("certs/", "crl/"))


def _first_reason(text: str) -> str:
    """The line of git's stderr that says what went wrong (``fatal: ...``)."""
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    for line in lines:
        if line.startswith(("fatal:", "error:")):
            return line
    return lines[0] if lines else "no reason given"


def _holds_key(path: Path) -> bool:
    try:
        return holds_private_key(path.read_bytes())
    except (FileNotFoundError, IsADirectoryError):
        return False


def find_repository(path: Path) -> Repository | None:
    """The non-bare repository whose work tree holds ``path``, or None. One ``git rev-parse``."""
    try:
        proc = subprocess.run(["git", "rev-parse", "--is-inside-work-tree", "--show-toplevel",
                               "--absolute-git-dir", "--show-object-format"], cwd=path, capture_output=True)
    except (FileNotFoundError, NotADirectoryError):
        return None
    lines = proc.stdout.decode().splitlines()
    if proc.returncode != 0 or len(lines) < 4 or lines[0] != "true":
        return None
    return Repository(Path(lines[1]).resolve(), Path(lines[2]).resolve(), lines[3].strip() or "sha1")


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
