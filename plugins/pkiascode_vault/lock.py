"""A lease lock in KV v2, so two pipelines on different machines never apply the same state at once.

The lock is one KV v2 secret, ``<kv_mount>/data/<prefix>/locks/<lock_id>``. Every change to it is a
check-and-set write against the version last seen, so of two writers exactly one wins:

- acquire: the secret is missing (``cas=0``), marked free, or held with its lease run out (stale);
- renew: a daemon thread rewrites it every ``ttl/3`` with ``cas=<our version>``;
- confirm: the same CAS write, made at once (`LeaseLock.confirm`): apply calls it before every commit
  and key deletion. It succeeds only if nobody wrote the lock since our last write, so it proves
  the lock is still ours at that moment, and it renews the lease;
- release: a CAS write marking it free. It is never deleted, so a release cannot race an acquire.

The lease runs from the *server's* ``created_time`` of the version that holds it, so only the skew
between Vault and the machine looking at the lock matters, never the holder's clock. A holder is
judged gone only when its lease has run out: the user, host and PID in the record are shown to
people and decide nothing (a PID means nothing in another PID namespace, and host names repeat
across containers). A lock whose renewals stop (the process was killed, the machine vanished) can be
taken over ``ttl`` later.
"""

from __future__ import annotations

import datetime
import logging
import secrets
import threading
import time
from collections.abc import Mapping
from types import TracebackType
from typing import Any

from pkiascode.errors import BackendError, LockError
from pkiascode.log import get_logger
from pkiascode.model import format_time

from .client import VaultClient

__all__ = ["LeaseLock"]

log = get_logger("pkiascode.vault")

_CAS_MISMATCH = "check-and-set"


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


def parse_vault_time(text: str) -> datetime.datetime | None:
    """Vault's RFC 3339 times carry nanoseconds, which `datetime.fromisoformat` refuses before 3.12."""
    if not text:
        return None
    head, _, frac = text.rstrip("Z").partition(".")
    try:
        base = datetime.datetime.fromisoformat(head)
    except ValueError:
        return None
    if base.tzinfo is None:
        base = base.replace(tzinfo=datetime.timezone.utc)
    digits = "".join(c for c in frac if c.isdigit())[:6].ljust(6, "0")
    return base + datetime.timedelta(microseconds=int(digits))


def _who(user: str, host: str) -> str:
    user, host = user or "?", host or "?"
    return user if user.endswith(f"@{host}") else f"{user}@{host}"  # the core's actor may be user@host already


def describe_holder(record: Mapping[str, Any]) -> str:
    text = _who(str(record.get("user") or ""), str(record.get("host") or ""))
    if record.get("pid"):
        text += f" (pid {record['pid']})"
    if record.get("since"):
        text += f" since {record['since']}"
    return text


class LeaseLock:
    """The context manager `VaultKeyStore.lock` returns. Acquires on enter, releases on exit."""

    def __init__(self, client: VaultClient, *, store: str, mount: str, path: str, lock_id: str,
                 holder: Mapping[str, Any], ttl: float, timeout: float, poll: float = 1.0) -> None:
        self._client = client
        self._store = store
        self._data_path = f"{mount}/data/{path}"
        self._lock_id = lock_id
        # the core says "actor"; "user" is accepted too. Nothing else is copied into Vault.
        self._holder = {k: str(v) for k, v in holder.items() if k in ("user", "actor", "host", "pid", "time", "since")}
        self._user = self._holder.get("user") or self._holder.get("actor") or ""
        self._ttl = ttl
        self._timeout = timeout
        self._poll = poll
        self._nonce = secrets.token_hex(8)
        self._version = 0
        self._held = False
        self._lost: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._state_lock = threading.Lock()

    def __repr__(self) -> str:
        return f"<LeaseLock {self._store}:{self._data_path} held={self._held}>"

    # -- records ----------------------------------------------------------------------------------
    def _held_record(self) -> dict[str, Any]:
        since = self._holder.get("since") or self._holder.get("time") or format_time(_now())
        return {"state": "held", "lock_id": self._lock_id, "user": self._user,
                "host": self._holder.get("host", ""), "pid": self._holder.get("pid", ""), "since": since,
                "ttl": self._ttl, "nonce": self._nonce, "renewed": format_time(_now())}

    def _write(self, data: Mapping[str, Any], cas: int) -> int | None:
        """CAS write; the new version, or None when someone else wrote first."""
        reply = self._client.call("POST", self._data_path, {"options": {"cas": cas}, "data": dict(data)},
                                  allow=(400,))
        if reply.status == 400:
            if _CAS_MISMATCH in reply.errors:
                return None
            raise BackendError(f"backend {self._store}: Vault refused the lock write to {self._data_path} "
                               f"({reply.errors})")
        return int(reply.data.get("version", 0))

    # -- acquire ------------------------------------------------------------------------------------
    def _try_acquire(self) -> dict[str, Any] | None:
        """Take the lock if it is free or stale: None on success, else the current holder's record."""
        reply = self._client.call("GET", self._data_path, allow=(404,))
        cas = 0
        if reply.status != 404:
            data = reply.data.get("data") or {}
            meta = reply.data.get("metadata") or {}
            cas = int(meta.get("version") or 0)
            live = not meta.get("deletion_time") and not meta.get("destroyed")
            if live and data.get("state") == "held":
                written = parse_vault_time(str(meta.get("created_time") or ""))
                ttl = float(data.get("ttl") or self._ttl)
                expires = (written or _now()) + datetime.timedelta(seconds=ttl)
                left = (expires - _now()).total_seconds()
                if left > 0:  # alive until its lease runs out, whatever its PID looks like from here
                    return {**data, "expires_in": left}
                log.warning("backend %s: taking over the stale lock %s held by %s (lease ran out %.0fs ago)",
                            self._store, self._lock_id, describe_holder(data), -left)
        version = self._write(self._held_record(), cas)
        if version is None:  # someone else got there between our read and our write
            return {"state": "held", "race": True}
        self._version = version
        return None

    def __enter__(self) -> None:
        deadline = time.monotonic() + self._timeout
        races = 0
        while True:
            current = self._try_acquire()
            if current is None:
                break
            if current.get("race") and races < 10:
                races += 1
                continue  # re-read at once: it may be the winner's fresh record or already free
            current.setdefault("expires_in", self._ttl)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                waited = f" (waited {self._timeout:g}s)" if self._timeout else ""
                raise LockError(
                    f"backend {self._store}: state {self._lock_id!r} is being applied by "
                    f"{describe_holder(current)}; its lease ends in {current['expires_in']:.0f}s unless renewed"
                    f"{waited}. Retry when it finishes, or set lock_timeout in [backend.{self._store}] to wait")
            time.sleep(min(self._poll, remaining))
        self._held = True
        self._stop.clear()
        self._thread = threading.Thread(target=self._renew_loop, name=f"pki-vault-lock-{self._lock_id}",
                                        daemon=True)
        self._thread.start()

    # -- renew ----------------------------------------------------------------------------------------
    def _renew_loop(self) -> None:
        interval = max(self._ttl / 3.0, 0.2)
        last_ok = time.monotonic()
        while not self._stop.wait(interval):
            with self._state_lock:
                if not self._held:
                    return
                try:
                    version = self._write(self._held_record(), self._version)
                except Exception as exc:  # Vault down for a moment: try again at the next tick
                    if time.monotonic() - last_ok > self._ttl:
                        log.warning("backend %s: could not renew the lock %s for longer than its lease: %s",
                                    self._store, self._lock_id, exc)
                    continue
                if version is None:
                    self._lost = "another apply took it over"
                    log.error("backend %s: lost the lock %s: %s", self._store, self._lock_id, self._lost)
                    self._held = False
                    return
                self._version = version
                last_ok = time.monotonic()

    def confirm(self) -> None:
        """Prove, with a check-and-set write against our last version, that the lock is still ours,
        and renew its lease. `LockError` if it is not (taken over, released) or cannot be proved
        (Vault unreachable). Apply calls it before writing state, before every commit and before
        every key deletion."""
        with self._state_lock:
            if not self._lost and self._held:
                try:
                    version = self._write(self._held_record(), self._version)
                except BackendError as error:
                    raise LockError(f"backend {self._store}: cannot confirm that this apply still holds the lock "
                                    f"on state {self._lock_id!r} ({error}); stopped before changing more: run "
                                    "`pki apply` again") from None
                if version is not None:
                    self._version = version
                    return
                self._lost = "another apply took it over"
                self._held = False
                log.error("backend %s: lost the lock %s: %s", self._store, self._lock_id, self._lost)
            raise LockError(f"backend {self._store}: the lock on state {self._lock_id!r} was lost while "
                            f"applying ({self._lost or 'not held'}); stopped before changing more: check "
                            "`pki plan` and apply again")

    #: the earlier name of `confirm`, which the core's apply lock calls before writing anything
    check = confirm

    # -- release ----------------------------------------------------------------------------------------
    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
        with self._state_lock:
            held, self._held = self._held, False
            if held:
                free = {"state": "free", "lock_id": self._lock_id, "released": format_time(_now()),
                        "released_by": _who(self._user, self._holder.get("host", ""))}
                try:
                    if self._write(free, self._version) is None:
                        self._lost = "another apply took it over"
                except BackendError as error:
                    # after a failed apply the user already sees that error: this would be a second line
                    log.log(logging.DEBUG if exc_type else logging.WARNING,
                            "%s; the lock %s will expire by itself within %gs", error, self._lock_id, self._ttl)
        if self._lost and exc_type is None:
            raise LockError(f"backend {self._store}: the lock on state {self._lock_id!r} was lost while applying "
                            f"({self._lost}, after its lease of {self._ttl:g}s ran out without renewal): "
                            "check `pki plan` before applying again")

