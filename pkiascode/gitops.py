"""Committing ``state/`` to git: only ``state/``, never anything holding private key material.

Each blob is hashed and compressed where its certificate is signed (in both signing processes of a
bulk apply) and goes into the object store in a pack file pkiascode writes itself: ``git add`` of
thousands of files would hash them all again after the fact. An apply's own changes are then
committed by one ``git fast-import`` on the branch (`Repository.begin_commit`): it builds the commit
while state/ is written and moves the branch only when told, after state/ is complete. Everything
else (a detached HEAD, the first commit, completing an interrupted apply) goes through git's plumbing
on a temporary index (`Repository.commit_state`). Either way a commit holds exactly the state files,
never what else the user staged, and the user's index is brought up to date for those paths. Queries
are one ``git`` call each: importing GitPython would cost an apply more than all of them.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import struct
import subprocess
import threading
import zlib
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from .errors import GitError
from .x509 import holds_private_key

__all__ = ["Repository", "BlobWriter", "PendingCommit", "find_repository", "check_ignored"]



class BlobWriter:
    """Blobs for the next commit, written into the object store as one pack file by `close`.

    `add` hashes and compresses a blob where it is made (in a signing worker too: `entries` are
    plain tuples it can send back, and `add_entries` takes them), so git has nothing left to hash when the
    commit is made. The pack is an ordinary version-2 pack of whole (undeltified) blobs with its
    version-2 index, as `git index-pack` would write it; `git gc` repacks it like any other.
    """

    def __init__(self, repo: Repository | None = None, *, object_format: str = "sha1") -> None:
        self._repo = repo
        self.object_format = repo.object_format if repo is not None else object_format
        self._hash = hashlib.sha256 if self.object_format == "sha256" else hashlib.sha1
        self._entries: dict[bytes, tuple[int, bytes]] = {}  # raw object id -> (crc32, packed bytes)
        self._later: dict[bytes, bytes] = {}  # raw object id -> data, compressed by `compress_later`
        self._lock = threading.Lock()  # `compress_later` may run on another thread

    @staticmethod
    def _packed(data: bytes) -> tuple[int, bytes]:
        """(CRC-32 of the packed object, packed object) of blob ``data``."""
        size = len(data)
        head = bytearray([(3 << 4) | (size & 0x0F)])  # type 3: blob; the low 4 bits of the size
        size >>= 4
        while size:
            head[-1] |= 0x80
            head.append(size & 0x7F)
            size >>= 7
        # A certificate is stored, not compressed (zlib level 0): base64 gains ~20% from deflate, and
        # deflating costs more than signing the certificate's other steps together. The inventory and
        # the audit log are compressed (fast level); `git gc --aggressive` recompresses everything.
        # (the smallest window and hash table: zlib allocates and clears them for every object)
        z = zlib.compressobj(0, zlib.DEFLATED, 9, 1) if len(data) < 16384 else zlib.compressobj(1)
        packed = bytes(head) + z.compress(data) + z.flush()
        return zlib.crc32(packed), packed

    def add(self, data: bytes, *, later: bool = False) -> str:
        """Blob ``data``'s object id; it is compressed now, or with ``later`` by `compress_later`
        (which another thread may run: zlib lets go of the GIL)."""
        oid = self._hash(b"blob %d\0" % len(data) + data).digest()
        with self._lock:
            if oid in self._entries or oid in self._later:
                return oid.hex()
            if later:
                self._later[oid] = data
                return oid.hex()
        entry = self._packed(data)
        with self._lock:
            self._entries[oid] = entry
        return oid.hex()

    def compress_in_background(self) -> threading.Thread:
        """`compress_later` on a thread (zlib lets go of the GIL), started; join it before `close`."""
        thread = threading.Thread(target=self.compress_later, name="pki-git-compress")
        thread.start()
        return thread

    def compress_later(self) -> None:
        with self._lock:
            waiting = list(self._later.items())
        for oid, data in waiting:
            entry = self._packed(data)
            with self._lock:
                self._entries[oid] = entry
                self._later.pop(oid, None)

    def add_entries(self, entries: Iterable[tuple[bytes, int, bytes]]) -> None:
        with self._lock:
            for oid, crc, packed in entries:
                self._entries.setdefault(oid, (crc, packed))

    def entries(self) -> list[tuple[bytes, int, bytes]]:
        with self._lock:
            return [(oid, crc, packed) for oid, (crc, packed) in self._entries.items()]

    def discard(self) -> None:
        with self._lock:
            self._entries.clear()
            self._later.clear()

    def close(self, *, later: bool = False) -> None:
        """Write the blobs added so far into the object store (one pack and its index, both synced);
        with ``later``, leave those still waiting for `compress_later` to the next pack."""
        if not later:
            self.compress_later()
        with self._lock:
            entries, self._entries = self._entries, {}
        if not entries:
            return
        assert self._repo is not None
        try:
            _write_pack(self._repo.objects_dir / "pack", entries, self._hash)
        except OSError as e:
            raise GitError(f"cannot write to the git object store: {e.strerror or e}") from None


def _write_pack(pack_dir: Path, entries: Mapping[bytes, tuple[int, bytes]], hash_fn: Any) -> str:
    """A version-2 pack of ``entries`` and its version-2 index in ``pack_dir``; returns its name.
    The index is renamed into place last: git looks for packs through their index."""
    n = len(entries)
    pack = bytearray(b"PACK" + struct.pack(">II", 2, n))
    offsets: dict[bytes, int] = {}
    for oid, (_, packed) in entries.items():
        offsets[oid] = len(pack)
        pack += packed
    pack_sum = hash_fn(pack).digest()
    pack += pack_sum
    if len(pack) >= 0x80000000:  # the index's 4-byte offsets; millions of certificates
        raise GitError("the state to commit is over 2 GiB: commit it in parts (several applies)")
    oids = sorted(entries)
    fanout = [0] * 256
    for oid in oids:
        fanout[oid[0]] += 1
    total = 0
    for i in range(256):
        total += fanout[i]
        fanout[i] = total
    idx = bytearray(b"\xfftOc" + struct.pack(">I", 2))
    idx += struct.pack(">256I", *fanout)
    idx += b"".join(oids)
    idx += struct.pack(f">{n}I", *(entries[oid][0] for oid in oids))
    idx += struct.pack(f">{n}I", *(offsets[oid] for oid in oids))
    idx += pack_sum
    idx += hash_fn(idx).digest()
    name = f"pack-{pack_sum.hex()}"
    pack_dir.mkdir(parents=True, exist_ok=True)
    for suffix, data in ((".pack", pack), (".idx", idx)):
        final = pack_dir / (name + suffix)
        tmp = pack_dir / f"tmp_pkiascode_{os.getpid()}_{secrets.token_hex(4)}{suffix}"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o444)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, final)
    return name


class Repository:
    def __init__(self, top: Path, git_dir: Path, object_format: str, objects_dir: Path | None = None) -> None:
        self.top = top
        self.git_dir = git_dir
        self.object_format = object_format
        self.objects_dir = objects_dir or git_dir / "objects"
        self._blobs: BlobWriter | None = None
        self._prefetch: subprocess.Popen[bytes] | None = None  # see prefetch_commit_info
        self._listing: tuple[str, subprocess.Popen[bytes]] | None = None  # see start_listing

    @property
    def zero_id(self) -> str:
        """The all-zero object id ("no object") of this repository's hash."""
        return "0" * (64 if self.object_format == "sha256" else 40)

    @property
    def blobs(self) -> BlobWriter:
        if self._blobs is None:
            self._blobs = BlobWriter(self)
        return self._blobs

    def close(self) -> None:
        self._drop_prefetch()
        self._drop_listing()
        if self._blobs is not None:
            self._blobs.discard()  # only ever unfinished work of a failed apply
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

    def start_listing(self, state_root: Path) -> None:
        """Start `check_can_commit`'s listing of ``state_root`` now, to run while other checks do."""
        if self._listing is None:
            root = self.rel(state_root)
            self._listing = (root, subprocess.Popen(
                ["git", "ls-files", "-z", "--others", "--deleted", "--exclude-standard", "--", root], cwd=self.top,
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL))

    def check_can_commit(self, state_root: Path) -> None:
        """Before an apply: git is not busy, and nothing that would be committed holds a key."""
        lock = self.git_dir / "index.lock"
        if lock.exists():
            raise GitError(f"{lock} exists: another git process is running, or one crashed; "
                           "when none is running, remove that file")
        loose = self._loose_state_files(state_root)
        bad = [p for p, _ in loose if _holds_key(self.top / p)]
        if bad:
            raise GitError(f"refusing to apply: {', '.join(bad[:3])} holds private key material; remove it "
                           "from the state directory (nothing was changed)")

    def prepare_commit(self, state_root: Path) -> None:
        """Under the apply lock, before anything is made: ask git in the background what the commit
        at the end needs (the loose state files, the branch, HEAD, who commits). Until then nothing
        but this apply, which names every file it writes, changes state/ or (barring someone's own
        git commands: `begin_commit` checks) the branch."""
        self._drop_prefetch()
        self._drop_listing()
        self.prefetch_commit_info()
        self.start_listing(state_root)

    def _loose_state_files(self, state_root: Path, *, since: str | None = None,
                           known: Iterable[str] = ()) -> list[tuple[str, bool]]:
        """(path, exists) of pkiascode's files under ``state_root`` that are new to git or deleted (and,
        with ``since`` a commit, changed since it), except ``known`` ones; temporary and foreign files
        are left alone."""
        root = self.rel(state_root)
        running, self._listing = self._listing, None
        if running is not None:
            out_b, err_b = running[1].communicate()
            if running[0] != root or since:
                running = None  # a listing of something else: not this one
            elif running[1].returncode != 0:
                raise GitError(f"git ls-files failed: {_first_reason(err_b.decode(errors='replace'))}")
        if running is not None:
            paths = {p for p in out_b.decode().split("\0") if p}
        else:
            # not --modified by default: that would hash every file whose index entry has no stat data yet
            out = self._git("ls-files", "-z", "--others", "--deleted", "--exclude-standard", "--", root)
            paths = {p for p in out.split("\0") if p}
        if since:
            paths |= {p for p in self._git("diff-index", "-z", "--name-only", since, "--", root).split("\0") if p}
        paths.difference_update(known)
        return [(p, (self.top / p).is_file()) for p in sorted(paths) if _is_state_file(root, p)]

    def commit_state(self, state_root: Path, files: Mapping[str, bytes | None], message: str, *,
                     everything: bool = False, known: Mapping[str, str] | None = None) -> str | None:
        """Commit ``files`` (paths relative to ``state_root``; None deletes) and the state files git does
        not know yet (with ``everything``, every state file that differs from HEAD), and nothing else,
        through a temporary index. None when there was nothing to commit. Refuses key material.
        ``known``: the object ids of contents already given to `blobs` (by path relative to
        ``state_root``), not hashed again. (An apply's own changes take `begin_commit` instead.)"""
        head, head_tree = self._head_and_tree()
        root, lines = self._index_lines(state_root, files, known=known, since=head if everything else None)
        index_info = ("\n".join(lines) + "\n").encode()
        tmp_index = self.git_dir / f"pkiascode-index-{os.getpid()}"
        env = {"GIT_INDEX_FILE": str(tmp_index)}
        compressing = self.blobs.compress_in_background()
        try:
            try:
                if head:
                    self._git("read-tree", head, env=env)
                self._git("update-index", "--index-info", stdin=index_info, env=env)  # (ids only)
            finally:
                compressing.join()
            self.blobs.close()  # the objects, before git looks for them
            tree = self._git("write-tree", env=env)
        finally:
            tmp_index.unlink(missing_ok=True)
        if head and tree == head_tree:
            self._sync_index(index_info, root, head)  # a run killed after the commit left this undone
            return None
        # the message on stdin: thousands of body lines exceed what one argument may hold
        commit_tree = ["commit-tree", tree, *(["-p", head] if head else []), "-F", "-"]
        try:
            commit = self._git(*commit_tree, stdin=message.encode("utf-8"))
        except GitError:
            if not any(subprocess.run(["git", "var", ident], cwd=self.top, capture_output=True).returncode
                       for ident in ("GIT_AUTHOR_IDENT", "GIT_COMMITTER_IDENT")):
                raise
            # no identity configured for git on this machine (a fresh CI runner): say who we are
            commit = self._git("-c", "user.name=pkiascode", "-c", "user.email=pkiascode@localhost", *commit_tree,
                               stdin=message.encode("utf-8"))
        self._git("update-ref", "-m", "pki apply", "HEAD", commit, head or self.zero_id)
        self._drop_prefetch()  # HEAD moved: ask again for the next commit
        self._sync_index(index_info, root, commit)
        return commit

    def _index_lines(self, state_root: Path, files: Mapping[str, bytes | None], *,
                     known: Mapping[str, str] | None = None, since: str | None = None,
                     defer_large: bool = True) -> tuple[str, list[str]]:
        """(state root relative to the work tree, ``MODE ID\tPATH`` index lines, mode 0 deleting) of
        ``files`` and the loose state files (with ``since``, also those changed since that commit).
        Refuses key material. The blobs go to `blobs`; with ``defer_large``, the large ones
        (inventory, audit log) to be compressed later."""
        root = self.rel(state_root)
        known_ids = {f"{root}/{rel}": oid for rel, oid in (known or {}).items()}
        changes: dict[str, bytes | None] = {f"{root}/{rel}": data for rel, data in files.items()}
        for path, exists in self._loose_state_files(state_root, since=since, known=changes):
            changes[path] = (self.top / path).read_bytes() if exists else None
        bad = [p for p, data in changes.items() if data is not None and holds_private_key(data)]
        if bad:
            raise GitError(f"refusing to commit: {', '.join(bad[:3])} holds private key material; "
                           "remove it from the state directory")
        lines = []
        for path, data in sorted(changes.items()):
            if data is None:
                lines.append(f"0 {self.zero_id}\t{path}")
            else:
                oid = known_ids.get(path) or self.blobs.add(data, later=defer_large and len(data) > 65536)
                lines.append(f"100644 {oid}\t{path}")
        return root, lines

    # -- the one-process commit of an apply's own changes -------------------------------------------
    def prefetch_commit_info(self) -> None:
        """Ask git, in the background, what the commit at the end of this apply needs: the branch,
        HEAD and who commits (the answers are read by `commit_state`)."""
        if self._prefetch is None:
            # one line each, empty when git says no (detached or unborn HEAD, no identity): one
            # process started from here rather than four
            script = "; ".join(f"{{ {cmd} || echo; }}" for cmd in (
                "git symbolic-ref -q HEAD", "git rev-parse -q --verify 'HEAD^{commit}'",
                "git var GIT_AUTHOR_IDENT", "git var GIT_COMMITTER_IDENT"))
            self._prefetch = subprocess.Popen(["/bin/sh", "-c", script], cwd=self.top, stdout=subprocess.PIPE,
                                              stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)

    def _commit_info(self) -> tuple[str, str, str, str] | None:
        """(branch ref, HEAD, author, committer) for `begin_commit`, or None for the other way: HEAD
        detached or unborn, or no identity configured (commit-tree then says who we are)."""
        self.prefetch_commit_info()
        proc, self._prefetch = self._prefetch, None
        assert proc is not None
        out = proc.communicate()[0].decode().split("\n")
        if len(out) < 4:
            return None
        ref, head, author, committer = (line.strip() for line in out[:4])
        if not (ref.startswith("refs/heads/") and head and author and committer):
            return None
        return ref, head, author, committer

    def begin_commit(self, state_root: Path, files: Mapping[str, bytes | None], message: str, *,
                     known: Mapping[str, str] | None = None, late: Iterable[str] = ()) -> PendingCommit | None:
        """Start the commit of an apply's own changes before they are written into state/: one
        ``git fast-import`` builds it on the branch while the caller writes the files, and moves the
        branch only when `PendingCommit.finish` says ``done`` (killed before that, git leaves the
        branch alone). The files in ``late`` (the inventory and the audit log: large) are compressed
        on a thread meanwhile and given to git at the end. None when HEAD is detached or unborn or
        git has no identity: then `commit_state` once the files are written."""
        info = self._commit_info()
        if info is None or self._head_ref() != info[0]:
            return None  # (and if someone switched branches meanwhile: commit on HEAD as it is now)
        # git starts while we prepare: it needs the objects only from the first M command on
        proc = subprocess.Popen(["git", "fast-import", "--quiet", "--done"], cwd=self.top, stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        pending = PendingCommit(self, proc)
        try:
            known = dict(known or {})
            for rel in late:  # hashed now, compressed on a thread from now on
                data = files.get(rel)
                if data is not None:
                    known[rel] = self.blobs.add(data, later=True)
            pending.compress_late()
            root, lines = self._index_lines(state_root, files, known=known, defer_large=False)
            late_paths = {f"{root}/{rel}" for rel in late}
            early = [ln for ln in lines if ln.split("\t", 1)[1] not in late_paths]
            pending.prepare(root, lines, [ln for ln in lines if ln.split("\t", 1)[1] in late_paths])
            self.blobs.close(later=True)  # all but the late blobs, before git looks for them
        except BaseException:
            pending.abort()
            raise
        ref, head, author, committer = info
        msg = message.encode("utf-8")
        # `git var` gave "Name <email> TIME ZONE", as fast-import wants it (and as commit-tree would
        # write it: GIT_AUTHOR_DATE/GIT_COMMITTER_DATE included), when this apply started
        pending.send(f"commit {ref}\nmark :1\nauthor {author}\ncommitter {committer}\n"
                     f"data {len(msg)}\n".encode() + msg + f"\nfrom {head}\n".encode() + _file_commands(early))
        return pending

    def _head_ref(self) -> str | None:
        """The branch HEAD names now (its file; None when it is not a plain ``ref:`` line)."""
        try:
            text = (self.git_dir / "HEAD").read_text(encoding="utf-8").strip()
        except OSError:
            return None
        return text[5:].strip() if text.startswith("ref: ") else None

    def _drop_listing(self) -> None:
        listing, self._listing = self._listing, None
        if listing is not None:
            listing[1].communicate()

    def _drop_prefetch(self) -> None:
        """Forget prefetched answers (after a commit moved HEAD, or when closing)."""
        proc, self._prefetch = self._prefetch, None
        if proc is not None:
            proc.communicate()

    def _sync_index(self, index_info: bytes, root: str, commit: str) -> None:
        """The user's index, for these paths only, follows the commit (what else is staged stays)."""
        try:
            self._git("update-index", "--index-info", stdin=index_info)
        except GitError as e:
            raise GitError(f"committed {commit[:12]}, but updating the index failed ({e}); run "
                           f"`git reset -q -- {root}` to bring it in line") from None

    def _head_and_tree(self) -> tuple[str | None, str | None]:
        """HEAD's commit and tree, in one git call; (None, None) on an unborn branch."""
        # (a failure other than an unborn branch shows later: update-ref refuses to create a ref that exists)
        proc = subprocess.run(["git", "log", "--no-show-signature", "-1", "--format=%H %T", "HEAD", "--"],
                              cwd=self.top, capture_output=True)
        ids = proc.stdout.decode().split() if proc.returncode == 0 else []
        return (ids[0], ids[1]) if len(ids) == 2 else (None, None)



class PendingCommit:
    """A commit `Repository.begin_commit` started: `finish` makes it (or `abort` drops it)."""

    def __init__(self, repo: Repository, proc: subprocess.Popen[bytes]) -> None:
        self._repo, self._proc = repo, proc
        self._root = ""
        self._lines: list[str] = []
        self._late_lines: list[str] = []
        self._compressing: threading.Thread | None = None
        self._broken = False

    def prepare(self, root: str, lines: list[str], late_lines: list[str]) -> None:
        """All the commit's index lines, and those that `finish` gives git."""
        self._root, self._lines, self._late_lines = root, lines, late_lines

    def compress_late(self) -> None:
        self._compressing = self._repo.blobs.compress_in_background()

    def send(self, data: bytes) -> None:
        assert self._proc.stdin is not None
        try:
            self._proc.stdin.write(data)
            self._proc.stdin.flush()
        except BrokenPipeError:
            self._broken = True  # git stopped: `finish` reports its words

    def finish(self) -> str:
        """Give git the late blobs and end the commit (git moves the branch); then the user's index
        follows it."""
        if self._compressing is not None:
            self._compressing.join()
        try:
            self._repo.blobs.close()
        except BaseException:
            self.abort()
            raise
        if not self._broken:
            self.send(_file_commands(self._late_lines) + b"\nget-mark :1\ndone\n")
        stdout, stderr = self._proc.communicate()
        commit = stdout.decode().strip()
        if self._proc.returncode != 0 or len(commit) not in (40, 64):
            raise GitError(f"git fast-import failed: {_first_reason(stderr.decode(errors='replace'))}")
        self._repo._sync_index(("\n".join(self._lines) + "\n").encode(), self._root, commit)
        return commit

    def abort(self) -> None:
        """Stop git before it moves the branch (without ``done`` it stops at the end of its input)."""
        if self._compressing is not None:
            self._compressing.join()
        self._repo.blobs.discard()
        self._proc.kill()
        self._proc.communicate()


def _file_commands(index_lines: Iterable[str]) -> bytes:
    """fast-import's ``M``/``D`` commands for ``MODE ID\tPATH`` index lines (mode 0 deletes)."""
    out = []
    for line in index_lines:
        meta, path = line.split("\t", 1)
        mode, oid = meta.split(" ")
        out.append(f"D {path}\n" if mode == "0" else f"M {mode} {oid} {path}\n")
    return "".join(out).encode()


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
                               "--absolute-git-dir", "--show-object-format", "--git-path", "objects"],
                              cwd=path, capture_output=True)
    except (FileNotFoundError, NotADirectoryError):
        return None
    lines = proc.stdout.decode().splitlines()
    if proc.returncode != 0 or len(lines) < 5 or lines[0] != "true":
        return None
    # (the object directory: shared by linked worktrees, and $GIT_OBJECT_DIRECTORY if set)
    return Repository(Path(lines[1]).resolve(), Path(lines[2]).resolve(), lines[3].strip() or "sha1",
                      (path / lines[4]).resolve())


def check_ignored(repo: Repository, dirs: Iterable[Path], base: Path) -> None:
    for d in dirs:
        if not repo.is_ignored(d):
            try:
                shown = d.resolve().relative_to(base.resolve()).as_posix()
            except ValueError:
                shown = str(d)
            raise GitError(f"the key directory {shown}/ is not git-ignored: add it (or `.pki/`) to .gitignore "
                           "before applying, so private keys can never be committed")
