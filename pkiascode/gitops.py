"""Committing ``state/`` to git: only ``state/``, never anything holding private key material.

One way, plain git plumbing, for every case (a branch, a detached HEAD, the first commit, a linked
worktree, sha1 and sha256 repositories): git writes the blobs of the files in state/
(``hash-object -w --stdin-paths``), a temporary index made from HEAD takes them (``read-tree``,
``update-index --index-info``), ``write-tree`` and ``commit-tree`` make the commit (signed with
``-S`` when the user's ``commit.gpgsign`` asks for it), and ``update-ref`` moves HEAD only if it is
still the commit the new one is based on. The user's index then takes the same entries for those
paths, so what else they staged stays staged.

Every file is checked before it is committed: a regular file (never a symbolic link), text, no PEM
block but certificates and CRLs, no private key of any encoding (PEM, DER PKCS#8, PKCS#12), and git
must hash exactly the bytes that were checked.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import hashlib
import os
import re
import stat
import subprocess
from collections.abc import Iterable, Mapping
from pathlib import Path

from cryptography import x509

from .errors import GitError
from .x509 import holds_private_key

__all__ = ["git_env", "Repository", "Upstream", "find_repository", "check_ignored", "refuse_reason", "PushRejected"]

_PEM_BLOCK = re.compile(rb"-----BEGIN ([A-Z0-9 ]+)-----\r?\n(.*?)-----END \1-----", re.S)
_STATE_LABELS = (b"CERTIFICATE", b"X509 CRL")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def refuse_reason(data: bytes) -> str | None:
    """Why ``data`` may not be committed into state/, or None. pkiascode writes only text there:
    PEM certificates and CRLs (after a few lines of text), JSON and markdown. Anything binary (a DER
    key, a PKCS#12 file) is refused, and so is any PEM block that is not a certificate or a CRL or
    whose content is a private key."""
    if holds_private_key(data):
        return "holds private key material"
    if b"\0" in data:
        return "is a binary file (a DER key or PKCS#12 file?), not state pkiascode writes"
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return "is a binary file (a DER key or PKCS#12 file?), not state pkiascode writes"
    for label, body in _PEM_BLOCK.findall(data):
        if label not in _STATE_LABELS:
            return f"holds a PEM block {label.decode()!r}, not a certificate or CRL"
        try:
            der = base64.b64decode(b"".join(body.split()), validate=True)
            if label == b"CERTIFICATE":
                x509.load_der_x509_certificate(der)
            else:
                x509.load_der_x509_crl(der)
        except (binascii.Error, ValueError):
            # (a certificate or CRL block that holds something else: a PKCS#12 file, a key)
            return f"holds a PEM block {label.decode()!r} that is not one"
    return None


class PushRejected(GitError):
    """`Repository.push` failed and the remote branch does not hold the commit."""


@dataclasses.dataclass(frozen=True)
class Upstream:
    """The remote branch the state's truth is on: ``remote``'s ``branch``, tracked locally at `ref`."""

    remote: str
    branch: str

    @property
    def ref(self) -> str:
        return f"refs/remotes/{self.remote}/{self.branch}"

    def __str__(self) -> str:
        return f"{self.remote}/{self.branch}"


_REF_PART = re.compile(r"[A-Za-z0-9][A-Za-z0-9._/-]*\Z")


class Repository:
    def __init__(self, top: Path, git_dir: Path, object_format: str) -> None:
        self.top = top
        self.git_dir = git_dir
        self.object_format = object_format

    @property
    def zero_id(self) -> str:
        """The all-zero object id ("no object") of this repository's hash."""
        return "0" * (64 if self.object_format == "sha256" else 40)

    def close(self) -> None:
        """Nothing to let go of: every git call is a process of its own."""

    def _git(self, *args: str, stdin: bytes | None = None, env: Mapping[str, str] | None = None) -> str:
        proc = subprocess.run(["git", *args], cwd=self.top, input=stdin, capture_output=True, env=git_env(env))
        if proc.returncode != 0:
            command = next(a for a in args if not a.startswith("-") and "=" not in a)  # (after any -c k=v)
            raise GitError(f"git {command} failed: {_first_reason(proc.stderr.decode(errors='replace'))}")
        return proc.stdout.decode().strip()

    def blob_id(self, data: bytes) -> str:
        """The id git gives a blob of ``data`` (to check that git hashed what was checked)."""
        h = hashlib.sha256() if self.object_format == "sha256" else hashlib.sha1()
        h.update(b"blob %d\0" % len(data))
        h.update(data)
        return h.hexdigest()

    def rel(self, path: Path) -> str:
        return path.resolve().relative_to(self.top).as_posix()

    def is_ignored(self, path: Path) -> bool:
        try:
            rel = path.resolve().relative_to(self.top)
        except ValueError:
            return True  # outside the repository: git never sees it
        # ("./": check-ignore takes no literal pathspecs, and a path starting with ":" would be magic)
        proc = subprocess.run(["git", "check-ignore", "-q", "--no-index", f"./{rel.as_posix()}/"], cwd=self.top,
                              capture_output=True)
        return proc.returncode == 0

    def tracked_under(self, path: Path) -> str | None:
        """A file git tracks under ``path`` (relative to the top), or None (also outside the repository)."""
        try:
            rel = path.resolve().relative_to(self.top)
        except ValueError:
            return None
        proc = subprocess.run(["git", "ls-files", "-z", "--", f"{rel.as_posix()}/"], cwd=self.top, capture_output=True,
                              env=git_env())
        first = proc.stdout.split(b"\0", 1)[0]
        return first.decode("utf-8", "replace") if proc.returncode == 0 and first else None

    def check_can_commit(self, state_root: Path) -> None:
        """Before an apply: git is not busy, and nothing that would be committed is refused."""
        lock = self.git_dir / "index.lock"
        if lock.exists():
            raise GitError(f"{lock} exists: another git process is running, or one crashed; "
                           "when none is running, remove that file")
        for path, exists in self._loose_state_files(state_root):
            if exists:
                why = _refuse_file(self.top / path)
                if why:
                    raise GitError(f"refusing to apply: {path} {why}; remove it from the state directory "
                                   "(nothing was changed)")

    def _loose_state_files(self, state_root: Path, *, since: str | None = None) -> list[tuple[str, bool]]:
        """(path, exists) of pkiascode's files under ``state_root`` that are new to git or deleted (and,
        with ``since`` a commit, changed since it); temporary and foreign files are left alone."""
        root = self.rel(state_root)
        # not --modified by default: that would hash every file whose index entry has no stat data yet
        out = self._git("ls-files", "-z", "--others", "--deleted", "--exclude-standard", "--", root)
        paths = {p for p in out.split("\0") if p}
        if since:
            paths |= {p for p in self._git("diff-index", "-z", "--name-only", since, "--", root).split("\0") if p}
        return [(p, os.path.lexists(self.top / p)) for p in sorted(paths) if _is_state_file(root, p)]

    def commit_state(self, state_root: Path, files: Mapping[str, bytes | None], message: str, *,
                     everything: bool = False, also: Mapping[str, bytes] | None = None) -> str | None:
        """Commit ``files`` (paths relative to ``state_root``, already written there; None: deleted)
        and the state files git does not know yet (with ``everything``, every state file that
        differs from HEAD), and nothing else but ``also`` (paths relative to the top: pki.toml when an
        apply gave it its ``[pki] id``). None when there was nothing to commit."""
        head, head_tree = self._head_and_tree()
        root = self.rel(state_root)
        changes: dict[str, bytes | None] = {f"{root}/{rel}": data for rel, data in files.items()}
        changes.update(also or {})
        for path, exists in self._loose_state_files(state_root, since=head if everything else None):
            if path not in changes:
                changes[path] = _read_state_file(self.top / path) if exists else None
        _check_dirs(self.top, {p.rpartition("/")[0] for p in changes})
        for path, data in changes.items():
            if _CONTROL.search(path):
                raise GitError(f"refusing to commit {path!r}: a control character in a path")
            why = _refuse_file(self.top / path) if data is not None else None
            why = why or (refuse_reason(data) if data is not None else None)
            if why:
                raise GitError(f"refusing to commit: {path} {why}; remove it from the state directory")
        written = sorted(p for p, data in changes.items() if data is not None)
        ids = self._git("hash-object", "-w", "--no-filters", "--stdin-paths",
                        stdin="".join(p + "\n" for p in written).encode()).split() if written else []
        for path, oid in zip(written, ids, strict=True):
            if oid != self.blob_id(changes[path]):  # type: ignore[arg-type]
                raise GitError(f"refusing to commit: {path} changed while it was being committed")
        blob = dict(zip(written, ids, strict=True))
        index_info = b"".join((f"0 {self.zero_id}\t{p}" if data is None else f"100644 {blob[p]}\t{p}").encode()
                              + b"\0" for p, data in sorted(changes.items()))
        tmp_index = self.git_dir / f"pkiascode-index-{os.getpid()}"
        env = {"GIT_INDEX_FILE": str(tmp_index)}
        try:
            if head:
                self._git("read-tree", head, env=env)
            else:
                tmp_index.unlink(missing_ok=True)
            if index_info:
                self._git("update-index", "-z", "--index-info", stdin=index_info, env=env)
            tree = self._git("write-tree", env=env)
        finally:
            tmp_index.unlink(missing_ok=True)
        if head and tree == head_tree:
            self._sync_index(index_info, root, head)  # a run killed after the commit left this undone
            return None
        commit = self._commit_tree(tree, head, message)
        self._git("update-ref", "-m", "pki apply", "HEAD", commit, head or self.zero_id)
        self._sync_index(index_info, root, commit)
        return commit

    def _commit_tree(self, tree: str, head: str | None, message: str) -> str:
        """The commit object: signed when the user's git config says so (``commit-tree`` is plumbing
        and does not read ``commit.gpgsign`` itself); a failed signature stops here, before HEAD moves."""
        sign = self._config_bool("commit.gpgsign")
        # the message on stdin: thousands of body lines exceed what one argument may hold
        args = ["commit-tree", tree, *(["-p", head] if head else []), *(["-S"] if sign else []), "-F", "-"]
        try:
            return self._git(*args, stdin=message.encode("utf-8"))
        except GitError as e:
            if sign and not self._missing_identity():
                raise GitError(f"signing the commit failed (commit.gpgsign is set): {e}; nothing was committed")
            if not self._missing_identity():
                raise
        # no identity configured for git on this machine (a fresh CI runner): say who we are
        return self._git("-c", "user.name=pkiascode", "-c", "user.email=pkiascode@localhost", *args,
                         stdin=message.encode("utf-8"))

    def _config_bool(self, key: str) -> bool:
        proc = subprocess.run(["git", "config", "--type=bool", "--get", key], cwd=self.top,
                              capture_output=True, env=git_env())
        return proc.returncode == 0 and proc.stdout.strip() == b"true"

    def _missing_identity(self) -> bool:
        return any(subprocess.run(["git", "var", ident], cwd=self.top, capture_output=True, env=git_env()).returncode
                   for ident in ("GIT_AUTHOR_IDENT", "GIT_COMMITTER_IDENT"))

    def _sync_index(self, index_info: bytes, root: str, commit: str) -> None:
        """The user's index, for these paths only, follows the commit (what else is staged stays)."""
        if not index_info:
            return
        try:
            self._git("update-index", "-z", "--index-info", stdin=index_info)
        except GitError as e:
            raise GitError(f"committed {commit[:12]}, but updating the index failed ({e}); run "
                           f"`git reset -q -- {root}` to bring it in line") from None

    def _head_and_tree(self) -> tuple[str | None, str | None]:
        """HEAD's commit and tree, in one git call; (None, None) on an unborn branch."""
        # (a failure other than an unborn branch shows later: update-ref refuses to create a ref that exists)
        proc = subprocess.run(["git", "log", "--no-show-signature", "-1", "--format=%H %T", "HEAD", "--"],
                              cwd=self.top, capture_output=True, env=git_env())
        ids = proc.stdout.decode().split() if proc.returncode == 0 else []
        return (ids[0], ids[1]) if len(ids) == 2 else (None, None)

    # -- the remote branch (`pki apply --push`, deletions that wait for the upstream) ---------------
    def head(self) -> str | None:
        """HEAD's commit, or None on an unborn branch."""
        return self._head_and_tree()[0]

    def remotes(self) -> list[str]:
        return self._git("remote").split()

    def upstream(self, push_to: str | None = None) -> Upstream | None:
        """``push_to`` (``REMOTE/BRANCH``, REMOTE a configured remote) or else the current branch's
        upstream; None when there is none (a detached HEAD, a branch that tracks nothing)."""
        if push_to is not None:
            remotes = self.remotes()
            remote, _, branch = push_to.partition("/")
            if remote not in remotes or not _REF_PART.match(branch) or ".." in branch or branch.endswith(("/", ".lock")):
                known = ", ".join(remotes) or "none"
                raise GitError(f"--push-to {push_to}: use REMOTE/BRANCH with a configured remote (remotes: {known})")
            return Upstream(remote, branch)
        proc = subprocess.run(["git", "symbolic-ref", "-q", "HEAD"], cwd=self.top, capture_output=True, env=git_env())
        branch_ref = proc.stdout.decode().strip()
        if proc.returncode != 0 or not branch_ref:
            return None  # detached
        out = self._git("for-each-ref", "--format=%(upstream:remotename)%00%(upstream:remoteref)", branch_ref)
        remote, _, merge = out.partition("\0")
        if not remote or remote == "." or not merge.startswith("refs/heads/"):
            return None  # no upstream, or a local branch as upstream
        return Upstream(remote, merge[len("refs/heads/"):])

    def fetch(self, upstream: Upstream) -> str | None:
        """Fetch ``upstream`` into its remote-tracking ref; its tip (None: the branch does not exist there)."""
        try:
            self._git("fetch", "--quiet", "--no-tags", "--no-recurse-submodules", "--", upstream.remote,
                      f"+refs/heads/{upstream.branch}:{upstream.ref}")
        except GitError as e:
            if "couldn't find remote ref" in str(e):
                return None
            raise GitError(f"cannot fetch {upstream}: {e}") from None
        return self.tip(upstream)

    def tip(self, upstream: Upstream) -> str | None:
        """The tip of ``upstream`` as last fetched (None if never)."""
        proc = subprocess.run(["git", "rev-parse", "--verify", "-q", f"{upstream.ref}^{{commit}}"], cwd=self.top,
                              capture_output=True, env=git_env())
        return (proc.stdout.decode().strip() or None) if proc.returncode == 0 else None

    def is_ancestor(self, commit: str, of: str) -> bool:
        proc = subprocess.run(["git", "merge-base", "--is-ancestor", commit, of], cwd=self.top,
                              capture_output=True, env=git_env())
        return proc.returncode == 0

    def push(self, upstream: Upstream, commit: str) -> None:
        """Push ``commit`` to ``upstream``'s branch, never forced. On failure, fetch: if the remote
        branch holds ``commit`` after all, that is success; else `PushRejected` (nothing landed), or
        `GitError` when the remote cannot be asked (unknown whether it landed)."""
        proc = subprocess.run(["git", "push", "--quiet", "--", upstream.remote,
                               f"{commit}:refs/heads/{upstream.branch}"], cwd=self.top,
                               capture_output=True, env=git_env())
        if proc.returncode == 0:
            self._git("update-ref", "-m", "pki apply --push", upstream.ref, commit)
            return
        reason = _push_reason(proc.stderr.decode(errors="replace"))
        try:
            tip = self.fetch(upstream)
        except GitError as e:
            raise GitError(f"git push to {upstream} failed ({reason}) and the remote cannot be checked ({e}): "
                           "it is not known whether the commit landed") from None
        if tip is not None and self.is_ancestor(commit, tip):
            return  # it landed (the answer was lost on the way back)
        raise PushRejected(f"git push to {upstream} was rejected: {reason}")

    def apply_commits(self, since: str, until: str, paths: Iterable[str]) -> int | None:
        """How many commits ``since..until`` has, when each is an apply's (a ``Pki-Plan:`` trailer)
        and together they change nothing but ``paths``; else None."""
        out = self._git("log", "--no-show-signature", "--format=%H %(trailers:key=Pki-Plan,valueonly,separator=,)",
                        f"{since}..{until}")
        lines = out.splitlines()
        if not lines or any(len(line.split()) != 2 for line in lines):
            return None
        changed = self._git("diff", "--no-renames", "--name-only", "-z", since, until).split("\0")
        tops = tuple(f"{p}/" for p in paths)
        if any(c and c not in paths and not c.startswith(tops) for c in changed):
            return None
        return len(lines)

    def mentions(self, text: str) -> bool:
        """Whether a commit of HEAD's history (merges included) adds or removes ``text`` in a file."""
        return bool(self._git("log", "--full-history", "-m", "--format=%H", "-1", f"-S{text}", "HEAD"))

    def changed_paths(self, paths: Iterable[str]) -> list[str]:
        """The files under ``paths`` that differ from HEAD (staged, unstaged or untracked)."""
        proc = subprocess.run(["git", "status", "--porcelain", "-z", "--untracked-files=all", "--", *paths],
                              cwd=self.top, capture_output=True, env=git_env())
        if proc.returncode != 0:
            raise GitError(f"git status failed: {_first_reason(proc.stderr.decode(errors='replace'))}")
        # entries "XY path" (a rename adds its source as one more entry, which is skipped)
        entries = proc.stdout.decode(errors="replace").split("\0")
        return [e[3:] for e in entries if len(e) > 3 and e[2] == " "]

    def show(self, commit: str, path: str) -> bytes | None:
        """The bytes of ``path`` (relative to the repository's top) at ``commit``; None if not a file there."""
        proc = subprocess.run(["git", "cat-file", "blob", f"{commit}:{path}"], cwd=self.top,
                              capture_output=True, env=git_env())
        return proc.stdout if proc.returncode == 0 else None

    def move_head(self, to: str, expected: str) -> None:
        """Point HEAD (its branch, or a detached HEAD) back at ``to``, only if it still is ``expected``."""
        self._git("update-ref", "-m", "pki apply --push: undo", "HEAD", to, expected)

    def restore_paths(self, commit: str, since: str, paths: Iterable[str]) -> None:
        """The files under ``paths`` (relative to the top) that differ between ``commit`` and ``since``
        are put back as ``commit`` has them, in the work tree and the index (added ones removed)."""
        out = self._git("diff", "--no-renames", "--name-only", "-z", commit, since, "--", *paths)
        changed = [p for p in out.split("\0") if p]
        if not changed:
            return
        listing = self._git("ls-tree", "-z", "--full-tree", commit, "--", *changed)
        blobs: dict[str, tuple[str, str]] = {}
        for item in filter(None, listing.split("\0")):
            meta, _, path = item.partition("\t")
            mode, kind, oid = meta.split()
            if kind == "blob":
                blobs[path] = (mode, oid)
        _check_dirs(self.top, {p.rpartition("/")[0] for p in changed})
        index_info = b""
        for path in sorted(changed):
            target = self.top / path
            if path in blobs:
                mode, oid = blobs[path]
                data = subprocess.run(["git", "cat-file", "blob", oid], cwd=self.top, capture_output=True,
                                      check=True, env=git_env()).stdout
                target.parent.mkdir(parents=True, exist_ok=True)
                tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
                tmp.unlink(missing_ok=True)
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
                with os.fdopen(fd, "wb") as f:
                    f.write(data)
                os.replace(tmp, target)
                index_info += f"{mode} {oid}\t{path}".encode() + b"\0"
            else:
                target.unlink(missing_ok=True)
                index_info += f"0 {self.zero_id}\t{path}".encode() + b"\0"
        self._git("update-index", "-z", "--index-info", stdin=index_info)


def _check_dirs(top: Path, folders: Iterable[str]) -> None:
    """Each folder (relative to ``top``) and the folders above it are real directories, not links."""
    seen: set[str] = set()
    for folder in folders:
        parts = folder.split("/") if folder else []
        for i in range(1, len(parts) + 1):
            sub = "/".join(parts[:i])
            if sub in seen:
                continue
            seen.add(sub)
            try:
                mode = os.lstat(top / sub).st_mode
            except FileNotFoundError:
                continue  # (deleted files only below it)
            if not stat.S_ISDIR(mode):
                raise GitError(f"refusing to commit: {sub} is a symbolic link or not a directory")


def _read_state_file(path: Path) -> bytes:
    """A state file's bytes, never through a symbolic link."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    with os.fdopen(fd, "rb") as f:
        return f.read()


def _refuse_file(path: Path) -> str | None:
    """Why the file at ``path`` may not be committed (a link, not a file, its content), or None."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return None
    if stat.S_ISLNK(st.st_mode):
        return "is a symbolic link"
    if not stat.S_ISREG(st.st_mode):
        return "is not a regular file"
    return refuse_reason(_read_state_file(path))


def _is_state_file(root: str, path: str) -> bool:
    """What pkiascode writes under the state directory: certs/, crl/, the inventory, the audit log
    and its signed heads, its README; never a dot-file (temporary files of a killed write) or anything else put there."""
    rel = path[len(root) + 1:] if root not in ("", ".") else path
    name = rel.rsplit("/", 1)[-1]
    if name.startswith("."):
        return False
    return rel in ("inventory.json", "audit.jsonl", "audit-signatures.json", "README.md") \
        or rel.startswith(("certs/", "crl/"))


def _push_reason(text: str) -> str:
    """Why ``git push`` failed, in one line: the ref's ``[rejected]`` reason and what the remote said."""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    said = [ln[len("remote:"):].strip() for ln in lines if ln.startswith("remote:") and ln[len("remote:"):].strip()]
    refs = [ln.lstrip("! ").strip() for ln in lines if "[rejected]" in ln or "[remote rejected]" in ln]
    reason = "; ".join(refs[:1] + said[:3]) or _first_reason(text)
    return _CONTROL.sub("?", reason)[:400]


def _first_reason(text: str) -> str:
    """The line of git's stderr that says what went wrong (``fatal: ...``)."""
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    for line in lines:
        if line.startswith(("fatal:", "error:")):
            return line
    return lines[0] if lines else "no reason given"


def find_repository(path: Path) -> Repository | None:
    """The repository whose work tree holds ``path``, or None when no directory from ``path`` up has a
    ``.git``. Fails closed (`GitError`) when there is one but git does not see its work tree from
    ``path`` (a directory between them that looks like a bare repository: a commit can make one) or
    sees a submodule's: its history, which the audit checks read, would not be this repository's."""
    here = path.resolve()
    marker = next((p for p in [here, *here.parents] if os.path.lexists(p / ".git")), None)
    try:
        proc = subprocess.run(["git", "rev-parse", "--is-inside-work-tree", "--show-toplevel", "--absolute-git-dir",
                               "--show-object-format", "--show-superproject-working-tree"], cwd=path,
                              capture_output=True, env=git_env())
    except (FileNotFoundError, NotADirectoryError):
        return None
    lines = proc.stdout.decode(errors="replace").splitlines()
    if proc.returncode != 0 or len(lines) < 4 or lines[0] != "true" or Path(lines[1]).resolve() != marker:
        if marker is None:
            return None
        raise GitError(f"{path} is in the git repository {marker}, but git does not see that work tree from there "
                       f"({_first_reason(proc.stderr.decode(errors='replace')) if proc.returncode else 'another one'}):"
                       " a directory between them looks like a repository of its own (HEAD, objects/, refs/); "
                       "remove it from the repository")
    if len(lines) > 4 and lines[4].strip():
        raise GitError(f"{path} is in a git submodule of {lines[4].strip()}: pkiascode runs in the repository that "
                       "holds the PKI's history, not in a submodule")
    return Repository(Path(lines[1]).resolve(), Path(lines[2]).resolve(), lines[3].strip() or "sha1")


def git_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment of every git process pkiascode runs: paths are literal (a directory named
    ``:`` or ``*`` is that directory, not pathspec magic such as ``:/``, "the top"), and no
    ``git replace`` object stands in for a commit."""
    return {**os.environ, "GIT_LITERAL_PATHSPECS": "1", "GIT_NO_REPLACE_OBJECTS": "1", **(extra or {})}


def check_ignored(repo: Repository, dirs: Iterable[Path], base: Path) -> None:
    for d in dirs:
        if not repo.is_ignored(d):
            try:
                shown = d.resolve().relative_to(base.resolve()).as_posix()
            except ValueError:
                shown = str(d)
            raise GitError(f"the key directory {shown}/ is not git-ignored: add it (or `.pki/`) to .gitignore "
                           "before applying, so private keys can never be committed")
