"""A remembered no-op plan, so that ``pki plan`` over ten thousand unchanged certificates answers
without re-reading them.

When a plan comes out empty (and without warnings), what it was made from is noted in
``.pki/cache/noop.json``: the digest of pki.toml and of its CSRs, the stat stamps (mtime, ctime,
inode, size) of the inventory and of every certificate and CRL file, the key references per key
store, and the moment the plan stops being empty on its own (the earliest renewal window or CRL
refresh). The next plan is empty without further work when all of that still holds, the moment it
plans for is before that horizon, there is no ``--replace`` and no interrupted apply, and every key
store still has every key (asked live, as always: a deleted key is drift).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from . import __version__
from .state import atomic_write, file_stamp

__all__ = ["NoopMemo", "stamp_files"]


def stamp_files(paths: Sequence[str], seen: Mapping[str, tuple[int, ...] | None] | None = None) -> str:
    """One digest over the stat stamps (`file_stamp`) of ``paths``; a missing file stamps as missing. ``seen`` gives the stamps taken when the files were read, so that a change made after
    they were read is a change the memo has not seen."""
    h = hashlib.sha256()
    for path in paths:
        stamp = seen[path] if seen is not None and path in seen else file_stamp(path)
        h.update(b"%d %d %d %d\n" % stamp if stamp else b"-\n")
    return h.hexdigest()


class NoopMemo:
    def __init__(self, path: Path) -> None:
        self.path = path

    def load(self) -> dict[str, Any] | None:
        try:
            data = json.loads(self.path.read_bytes())
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) and data.get("version") == __version__ else None

    def save(self, *, config_digest: str, state_digest: str, files: Sequence[str],
             seen: Mapping[str, tuple[int, ...] | None], csrs: Mapping[str, str],
             stores: Mapping[str, Mapping[str, Any]], refs: Mapping[str, list[list[str]]],
             quiet_until: dt.datetime | None) -> None:
        memo = {"version": __version__, "config_digest": config_digest, "state_digest": state_digest,
                "files": list(files), "stamp": stamp_files(files, seen), "csrs": dict(csrs), "stores": dict(stores),
                "refs": dict(refs), "quiet_until": quiet_until.isoformat() if quiet_until else None}
        try:
            atomic_write(self.path, json.dumps(memo, separators=(",", ":")).encode())
        except OSError:
            pass  # only an optimisation

    def forget(self) -> None:
        self.path.unlink(missing_ok=True)

    @staticmethod
    def still_holds(memo: Mapping[str, Any], *, config_digest: str, csrs: Mapping[str, str],
                    at: dt.datetime) -> bool:
        """Everything but the key stores: those the caller asks."""
        if memo.get("config_digest") != config_digest or memo.get("csrs") != dict(csrs):
            return False
        until = memo.get("quiet_until")
        if until is not None and at >= dt.datetime.fromisoformat(until):
            return False
        return memo.get("stamp") == stamp_files(memo.get("files") or [])
