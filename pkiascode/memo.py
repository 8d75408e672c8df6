"""A remembered no-op plan, so that ``pki plan`` over ten thousand unchanged certificates answers
without re-reading them.

A cache that only spares recomputation, never one that decides: the memo is read by ``pki plan``
alone (`Project.plan` with ``remembered=True``). ``pki apply``, a saved plan's re-check and every
other command plan the long way from pki.toml and ``state/``, so what is issued, renewed, revoked
or deleted never depends on it.

When a plan comes out empty (and without warnings), what it was made from is noted in
``.pki/cache/noop.json``: the pkiascode version, the digest of pki.toml and of its CSRs, what
implements each key store plugin pki.toml uses, the stat stamps (mtime, ctime, inode, size) of the
inventory, the audit log and its signed heads, and of every file in the state directory's certs/
and crl/, the key references per key store, and the moment the plan stops being empty on its own
(the earliest renewal window or CRL refresh). The next ``pki plan`` answers "no changes" without
further work when all of that still holds, the moment it plans for is before that horizon, there
is no ``--replace``, ``--offline``, ``--base`` or ``--rekey-missing`` and no interrupted apply, and
every key store still has every key (asked live, as always: a deleted key is drift).

The memo is untrusted input (review F2): it never chooses which files are stamped (they are listed
from the state directory), nor which CSRs are hashed (pki.toml names them), nor how a key store is
reached (stores are made from pki.toml's settings, validated); what else it says is compared with
those, and any mismatch only means planning the long way. Its stamp binds it to this checkout's
files (inode and ctime included), which whoever prepared a cache elsewhere (a CI cache from
another branch) cannot predict.

What remains trusted: stat stamps are not contents. Someone who can write ``.pki/cache`` and who
can predict this checkout's inodes and ctimes (another process of the same user on the same
machine) can make ``pki plan`` say "no changes" when there are some; never more than that, since
apply does not read the memo. So ``.pki/`` must be private to the user: pkiascode makes it 0700,
and refuses one that another user owns or that group or others may write.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from . import __version__
from .errors import StateError
from .state import atomic_write, check_private_dir, file_stamp, make_private_dir, read_file, safe_relative

__all__ = ["NoopMemo", "stamp_files", "state_files"]


def state_files(state_root: Path) -> list[str]:
    """The files a remembered plan is stamped with, taken from the state directory itself (never from
    the memo): its inventory, audit log and signed heads, and every entry of its ``certs/`` and
    ``crl/`` (links and all, not followed), so that a file added, removed or changed there is a change the memo has not seen."""
    root = str(state_root)
    files = [os.path.join(root, name) for name in ("inventory.json", "audit.jsonl", "audit-signatures.json")]
    for sub in ("certs", "crl"):
        where = os.path.join(root, sub)
        try:
            with os.scandir(where) as it:
                files += sorted(e.path for e in it)  # plain strings: no Path per file
        except (FileNotFoundError, NotADirectoryError):
            files.append(where)  # stamped as missing (or as the thing that is there)
    return files


def stamp_files(paths: Sequence[str], seen: Mapping[str, tuple[int, ...] | None] | None = None) -> str:
    """One digest over the names and stat stamps (`file_stamp`) of ``paths``; a missing file stamps as
    missing. ``seen`` gives the stamps taken when the files were read, so that a change made after
    they were read is a change the memo has not seen."""
    h = hashlib.sha256()
    for path in paths:
        stamp = seen[path] if seen is not None and path in seen else file_stamp(path)
        h.update(os.fsencode(path) + b"\0")
        h.update(b"%d %d %d %d\n" % stamp if stamp else b"-\n")
    return h.hexdigest()


#: the memo file's layout; a memo of another layout (or another pkiascode) is ignored and rebuilt.
#: It names no files and no key store settings: those come from state/ and pki.toml every time.
SCHEMA = 3
_FIELDS = {"schema": int, "version": str, "config_digest": str, "state_digest": str, "stamp": str,
           "csrs": dict, "refs": dict, "plugins": dict, "quiet_until": (str, type(None))}


def _valid(memo: object) -> bool:
    """The memo's schema: each field of its type, the key references lists of [id, origin] strings."""
    if not isinstance(memo, dict) or set(memo) != set(_FIELDS):
        return False
    if not all(isinstance(memo[k], t) for k, t in _FIELDS.items()):
        return False
    if memo["schema"] != SCHEMA or memo["version"] != __version__:
        return False
    if not all(isinstance(k, str) and safe_relative(k) and isinstance(v, (str, type(None)))
               for k, v in memo["csrs"].items()):
        return False
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in memo["plugins"].items()):
        return False
    for store, refs in memo["refs"].items():
        if not isinstance(store, str) or not isinstance(refs, list):
            return False
        if not all(isinstance(r, list) and len(r) == 2 and all(isinstance(x, str) for x in r) for r in refs):
            return False
    if memo["quiet_until"] is not None:
        try:
            dt.datetime.fromisoformat(memo["quiet_until"])
        except ValueError:
            return False
    return True


class NoopMemo:
    """``.pki/cache/noop.json``: plain JSON, checked against `SCHEMA` when read (anything else is
    ignored and rebuilt), written 0600 in a 0700 directory. It only ever says "nothing to do" for
    inputs that are byte for byte (stat for stat) the ones it was made from."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def load(self) -> dict[str, Any] | None:
        # a .pki/ that someone else could write is refused, not trusted (StateError)
        if not check_private_dir(self.path.parent.parent) or not check_private_dir(self.path.parent):
            return None
        try:
            data = read_file(self.path, limit=64 * 1024 * 1024)
            memo = json.loads(data) if data else None
        except (StateError, ValueError):
            return None
        return memo if _valid(memo) else None

    def save(self, *, config_digest: str, state_digest: str, files: Sequence[str],
             seen: Mapping[str, tuple[int, ...] | None], csrs: Mapping[str, str | None],
             refs: Mapping[str, list[list[str]]], plugins: Mapping[str, str],
             quiet_until: dt.datetime | None) -> None:
        memo = {"schema": SCHEMA, "version": __version__, "config_digest": config_digest, "state_digest": state_digest,
                "stamp": stamp_files(files, seen), "csrs": dict(csrs), "refs": dict(refs), "plugins": dict(plugins),
                "quiet_until": quiet_until.isoformat() if quiet_until else None}
        try:
            make_private_dir(self.path.parent.parent)
            make_private_dir(self.path.parent)
            atomic_write(self.path, json.dumps(memo, separators=(",", ":")).encode(), 0o600)
        except (OSError, StateError):
            pass  # only an optimisation

    def forget(self) -> None:
        if self.path.parent.is_dir() and not self.path.parent.is_symlink():
            self.path.unlink(missing_ok=True)

    @staticmethod
    def still_holds(memo: Mapping[str, Any], *, config_digest: str, csrs: Mapping[str, str | None],
                    plugins: Mapping[str, str], at: dt.datetime, files: Sequence[str]) -> bool:
        """Everything but the key stores (those the caller asks): ``csrs`` are the digests of the CSRs
        pki.toml names, ``plugins`` what implements each key store plugin it uses and ``files`` the
        state files (`state_files`), all found by the caller."""
        if memo.get("config_digest") != config_digest or memo.get("csrs") != dict(csrs) \
                or memo.get("plugins") != dict(plugins):
            return False
        until = memo.get("quiet_until")
        if until is not None and at >= dt.datetime.fromisoformat(until):
            return False
        return memo.get("stamp") == stamp_files(files)
