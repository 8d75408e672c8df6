"""One apply at a time: a lock file under ``.pki/`` (flock, released by the kernel if the process
dies), plus the cross-machine locks of key stores that offer one (Vault)."""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import json
import os
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path

from .audit import hostname
from .backend import KeyStore
from .errors import LockError
from .model import format_time
from .state import make_private_dir

__all__ = ["holder_info", "local_lock", "apply_lock"]


def holder_info(actor: str) -> dict[str, str]:
    return {"actor": actor, "host": hostname(), "pid": str(os.getpid()),
            "since": format_time(dt.datetime.now(dt.timezone.utc))}


def describe_holder(info: Mapping[str, str]) -> str:
    return (f"{info.get('actor', '?')} (pid {info.get('pid', '?')} on {info.get('host', '?')}, "
            f"since {info.get('since', '?')})")


@contextlib.contextmanager
def local_lock(path: Path, holder: Mapping[str, str], *, timeout: float = 0.0) -> Iterator[None]:
    make_private_dir(path.parent)  # .pki/: 0700, ours, nobody else's to write
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    try:
                        info = json.loads(os.pread(fd, 4096, 0) or b"{}")
                    except ValueError:
                        info = {}
                    raise LockError(f"another apply holds the lock {path}: {describe_holder(info)}; wait for it "
                                    "to finish or use --lock-timeout") from None
                time.sleep(0.2)
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(dict(holder)).encode(), 0)
        try:
            yield
        finally:
            os.ftruncate(fd, 0)
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


@contextlib.contextmanager
def apply_lock(path: Path, stores: Sequence[KeyStore], holder: Mapping[str, str], lock_id: str, *,
               timeout: float = 0.0) -> Iterator[Callable[[], None]]:
    """The local lock, then every store's shared lock, released in reverse order.

    Yields ``confirm``: a function that raises `LockError` unless every store's lock is still this
    holder's (each lease lock's ``confirm()``, a check-and-set write that renews it). Apply calls it
    before it writes state, before every commit and push, and before deleting keys."""
    with contextlib.ExitStack() as stack:
        stack.enter_context(local_lock(path, holder, timeout=timeout))
        checks = []
        for store in stores:
            cm = store.lock(lock_id, holder, timeout=timeout)
            if cm is not None:
                stack.enter_context(cm)
                check = getattr(cm, "confirm", None) or getattr(cm, "check", None)
                if callable(check):
                    checks.append(check)

        def confirm() -> None:
            for check in checks:
                check()

        yield confirm
