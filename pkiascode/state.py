"""``state/`` (in git) and ``.pki/`` (local): reading what exists, and writing it crash-safely.

Writing goes through a transaction: apply first writes everything it will change, complete, into
``.pki/journal/txn.json`` (one atomic rename), then copies it into ``state/``. That file is a line of
JSON (the small fields, and for each file's content its length) followed by the contents themselves,
byte for byte: escaping megabytes of PEM and JSON text into one JSON document cost more than the rest
of the transaction. A run killed before the
rename changed nothing; one killed after it is finished by the next run (`StateDir.pending_txn`,
`StateDir.roll_forward`), which is idempotent. Keys made during an apply are listed in
``.pki/journal/keys.jsonl`` as they are made, so the next run can delete the ones no certificate
ended up using. Old keys are deleted only after the new state is committed.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import json
import marshal
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from . import audit
from .errors import StateError
from .model import Observed, Record

__all__ = ["StateDir", "atomic_write", "file_stamp", "INVENTORY_FORMAT"]

INVENTORY_FORMAT = 1
_SORTED_JSON = json.JSONEncoder(sort_keys=True).encode
_JSON = json.JSONEncoder().encode  # json.dumps(...), built once  # json.dumps(..., sort_keys=True), built once


def atomic_write(path: Path, data: bytes, mode: int = 0o644) -> None:
    """Write ``path`` whole or not at all, with exactly ``mode``; never through a file or link someone
    else left under the temporary name."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
    try:
        os.fchmod(fd, mode)
        os.write(fd, data)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def file_stamp(path: str) -> tuple[int, ...] | None:
    """(mtime, ctime, inode, size), or None for a missing file. ctime cannot be set back by
    ``touch -d``/utime, so an edit always shows."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return (st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_size)


def _pem_der_digest(data: bytes) -> str | None:
    """SHA-256 of the DER inside a one-object PEM file, without importing a crypto library."""
    lines = data.strip().splitlines()
    if len(lines) < 3 or not lines[0].startswith(b"-----BEGIN ") or not lines[-1].startswith(b"-----END "):
        return None
    try:
        der = base64.b64decode(b"".join(lines[1:-1]), validate=True)
    except (binascii.Error, ValueError):
        return None
    return hashlib.sha256(der).hexdigest()


_TXN_MAGIC = b"pkiascode-transaction 2\n"
_BIG = ("inventory", "audit")  # besides every file's content: stored raw after the header


def dump_txn(txn: Mapping[str, Any]) -> bytes:
    """The transaction file: a magic line, a JSON header in which each large text is replaced by its
    length in bytes, then those texts, in header order."""
    parts: list[bytes] = []

    def raw(text: str) -> int:
        data = text.encode("utf-8")
        parts.append(data)
        return len(data)

    header = dict(txn)
    for key in _BIG:
        header[key] = raw(txn[key])
    header["files"] = {rel: None if content is None else raw(content) for rel, content in txn["files"].items()}
    return _TXN_MAGIC + json.dumps(header).encode() + b"\n" + b"".join(parts)


def load_txn(data: bytes) -> dict[str, Any]:
    """`dump_txn`'s inverse, and a transaction an earlier pkiascode wrote (one JSON document with
    the audit lines as objects); ValueError (or KeyError/TypeError) for anything else."""
    if data.startswith(b"{"):
        txn: dict[str, Any] = json.loads(data)
        lines = txn["audit"]
        if not isinstance(lines, list) or not isinstance(txn["audit_size"], int):
            raise ValueError("not a pkiascode transaction")
        txn["audit"] = audit.render_lines(lines).decode()
        txn["plan"] = lines[0].get("plan") if lines else None
        return txn
    if not data.startswith(_TXN_MAGIC):
        raise ValueError("not a pkiascode transaction")
    end = data.index(b"\n", len(_TXN_MAGIC))
    txn = json.loads(data[len(_TXN_MAGIC):end])
    pos = end + 1

    def raw(length: int) -> str:
        nonlocal pos
        if not isinstance(length, int) or length < 0 or pos + length > len(data):
            raise ValueError("transaction truncated")
        text = data[pos:pos + length].decode("utf-8")
        pos += length
        return text

    for key in _BIG:
        txn[key] = raw(txn[key])
    txn["files"] = {rel: None if n is None else raw(n) for rel, n in txn["files"].items()}
    if pos != len(data):
        raise ValueError("trailing bytes in the transaction")
    return txn


def txn_file(work_dir: Path) -> Path:
    """Where an apply's transaction waits under ``.pki/`` (known before pki.toml is: see Project)."""
    return work_dir / "journal" / "txn.json"


class StateDir:
    """The state directory of one pki.toml, and its local work directory."""

    def __init__(self, base_dir: Path, state_dir: str, work_dir: Path) -> None:
        self.base = base_dir
        self.root = base_dir / state_dir
        self.rel = state_dir
        self.work = work_dir
        self.certs = self.root / "certs"
        self.crls = self.root / "crl"
        self.inventory_path = self.root / "inventory.json"
        self.audit_path = self.root / "audit.jsonl"
        self.journal = work_dir / "journal"
        self.txn_path = txn_file(work_dir)
        self.keys_path = self.journal / "keys.jsonl"
        self.deletes_path = self.journal / "deletes.json"
        self.deferred_path = self.journal / "uncommitted.json"
        self._stat_cache_path = work_dir / "cache" / "files.marshal"
        self._dir_fds: dict[str, int] = {}  # see prewrite
        self._cache_dirty = False
        self._journal_file: Any = None
        #: stat stamps of the files the last `observe` read, taken as it read them
        self.seen: dict[str, tuple[int, ...] | None] = {}

    def cert_path(self, name: str) -> Path:
        return self.certs / f"{name}.pem"

    def crl_path(self, name: str) -> Path:
        return self.crls / f"{name}.crl"

    # -- inventory ------------------------------------------------------------------------------
    def read_inventory_bytes(self) -> bytes:
        try:
            return self.inventory_path.read_bytes()
        except FileNotFoundError:
            return b""

    def parse_inventory(self, data: bytes) -> dict[str, Any]:
        if not data.strip():
            return {"format_version": INVENTORY_FORMAT, "objects": {}, "revocations": []}
        try:
            inv = json.loads(data)
        except json.JSONDecodeError as e:
            raise StateError(f"{self.rel}/inventory.json is not valid JSON (line {e.lineno}): restore it "
                             f"with `git checkout -- {self.rel}/inventory.json`") from None
        if not isinstance(inv, dict) or inv.get("format_version") != INVENTORY_FORMAT \
                or not isinstance(inv.get("objects"), dict):
            raise StateError(f"{self.rel}/inventory.json is not a pkiascode inventory (format_version "
                             f"{INVENTORY_FORMAT} with objects)")
        inv.setdefault("revocations", [])
        return inv

    @staticmethod
    def inventory_line(name: str, obj: Mapping[str, Any]) -> str:
        """Object ``name``'s line in inventory.json (without the separating comma)."""
        return f"{_SORTED_JSON(name)}: {_SORTED_JSON(obj)}"

    @staticmethod
    def render_inventory(inv: Mapping[str, Any],
                         lines: Mapping[str, tuple[Mapping[str, Any], str]] | None = None) -> bytes:
        """One object per line: small, reviewable diffs in git. ``lines``: (object, its
        `inventory_line`) rendered earlier, used while the object is still that one."""
        objects = inv["objects"]
        lines = lines or {}
        out = ['{"format_version": %d,' % INVENTORY_FORMAT]
        if inv.get("audit_head"):
            # the audit log's last line when this was written: removing lines from its end shows
            out.append(f'"audit_head": {_SORTED_JSON(inv["audit_head"])},')
        out.append('"objects": {')
        names = sorted(objects)
        for i, name in enumerate(names):
            sep = "," if i < len(names) - 1 else ""
            obj = objects[name]
            pre = lines.get(name)
            out.append((pre[1] if pre is not None and pre[0] is obj else StateDir.inventory_line(name, obj)) + sep)
        out.append("},")
        out.append('"revocations": [')
        revs = inv.get("revocations", [])
        for i, r in enumerate(revs):
            out.append(_SORTED_JSON(r) + ("," if i < len(revs) - 1 else ""))
        out.append("]}")
        return ("\n".join(out) + "\n").encode()

    def load(self) -> tuple[dict[str, Any], dict[str, Record]]:
        """The inventory as written, and its records: no drift checks (for readers of state)."""
        inv = self.parse_inventory(self.read_inventory_bytes())
        return inv, self.records(inv)

    def records(self, inv: Mapping[str, Any]) -> dict[str, Record]:
        try:
            return {name: Record.from_json(obj) for name, obj in inv["objects"].items()}
        except (KeyError, TypeError, ValueError) as e:
            raise StateError(f"{self.rel}/inventory.json has a malformed record ({type(e).__name__}: {e}); "
                             f"restore it with `git checkout -- {self.rel}/inventory.json`") from None

    # -- observation ----------------------------------------------------------------------------
    def observe(self) -> tuple[Observed, dict[str, Any]]:
        """Records, revocations and file drift; the pending transaction overlaid if there is one.

        Key stores are asked about missing keys by the caller (`Observed.missing_keys`).
        """
        txn = self.pending_txn()
        self.seen = {}
        if txn is not None:
            data = txn["inventory"].encode()
            overlay = {rel for rel in txn["files"]}
        else:
            self.seen[str(self.inventory_path)] = file_stamp(str(self.inventory_path))
            data = self.read_inventory_bytes()
            overlay = set()
        inv = self.parse_inventory(data)
        records = self.records(inv)
        cache = self._load_stat_cache()
        cert_drift: dict[str, str] = {}
        crl_drift: dict[str, str] = {}
        certs, crls = f"{self.certs}{os.sep}", f"{self.crls}{os.sep}"  # strings: 10k Paths cost 40 ms
        for name, rec in records.items():
            rel = f"certs/{name}.pem"
            if rel not in overlay:
                why = self._file_drift(f"{certs}{name}.pem", rec.sha256, cache)
                if why:
                    cert_drift[name] = f"{self.rel}/{rel} {why}"
            crl = rec.crl
            if crl:
                rel = f"crl/{name}.crl"
                if rel not in overlay:
                    why = self._file_drift(f"{crls}{name}.crl", crl.get("sha256", ""), cache)
                    if why:
                        crl_drift[name] = f"{self.rel}/{rel} {why}"
        self._save_stat_cache(cache)
        # with a pending transaction this is already the digest of the state it will leave
        digest = hashlib.sha256(data + json.dumps([cert_drift, crl_drift], sort_keys=True).encode()).hexdigest()
        observed = Observed(records=records, revocations=tuple(inv["revocations"]), cert_drift=cert_drift,
                            crl_drift=crl_drift, digest=digest)
        return observed, inv

    def _file_drift(self, path: str, expected: str, cache: dict[str, tuple[Any, ...]]) -> str | None:
        stamp = self.seen[path] = file_stamp(path)
        if stamp is None:
            return "is missing"
        hit = cache.get(path)
        if hit is not None and hit[:4] == stamp:
            digest = hit[4]
        else:
            with open(path, "rb") as f:
                digest = _pem_der_digest(f.read())
            cache[path] = stamp + (digest,)
            self._cache_dirty = True
        if digest is None:
            return "is not a PEM file"
        if digest != expected:
            return f"does not match the inventory (sha256 {digest[:12]}…, expected {expected[:12]}…)"
        return None

    def _load_stat_cache(self) -> dict[str, tuple[Any, ...]]:
        # marshal: the fastest format Python reads (a local cache, rebuilt if unreadable)
        try:
            cache = marshal.loads(self._stat_cache_path.read_bytes())
        except (OSError, ValueError, EOFError, TypeError):
            return {}
        return cache if isinstance(cache, dict) else {}

    def _save_stat_cache(self, cache: dict[str, tuple[Any, ...]]) -> None:
        if not self._cache_dirty:
            return
        try:
            atomic_write(self._stat_cache_path, marshal.dumps(cache))
        except (OSError, ValueError):
            pass
        self._cache_dirty = False

    # -- transactions ---------------------------------------------------------------------------
    def pending_txn(self) -> dict[str, Any] | None:
        try:
            return load_txn(self.txn_path.read_bytes())
        except FileNotFoundError:
            return None
        except (ValueError, KeyError, TypeError, UnicodeDecodeError):
            # a torn txn file cannot exist (it is renamed into place), so this is damage
            raise StateError(f"{self.txn_path} is damaged; remove it to discard the interrupted apply") from None

    def transaction(self, *, objects: Mapping[str, Any], revocations: Sequence[Mapping[str, Any]],
                    files: Mapping[str, str | None], events: list[dict[str, Any]], message: str,
                    retire_keys: Iterable[tuple[str, str]] = (), commit: bool,
                    config: Mapping[str, str] | None = None,
                    lines: Mapping[str, tuple[Mapping[str, Any], str]] | None = None) -> dict[str, Any]:
        """Everything a change writes, as one record for `begin`/`roll_forward`: the new inventory
        (with the audit log's new head), the files, the audit lines chained onto the log as it is."""
        prev, seq = audit.tail_hash(self.audit_path)
        audit_lines = audit.chain(events, prev=prev, seq=seq)
        inventory = self.render_inventory({"objects": objects, "revocations": revocations,
                                           "audit_head": audit.head(audit_lines, prev, seq)}, lines)
        txn: dict[str, Any] = {"inventory": inventory.decode(), "files": dict(files), "audit_prev": prev,
                               "audit": audit.render_lines(audit_lines).decode(), "audit_size": self.audit_size(),
                               "plan": audit_lines[0].get("plan") if audit_lines else None, "message": message,
                               "retire_keys": sorted(set(retire_keys)), "commit": commit}
        if config is not None:
            txn["config"] = dict(config)
        return txn

    def begin(self, txn: Mapping[str, Any]) -> None:
        """Make the transaction durable: from here on the change will complete."""
        data = dump_txn(txn)
        self.journal.mkdir(parents=True, exist_ok=True)
        tmp = self.txn_path.with_suffix(".tmp")
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.txn_path)

    def _prewritten(self, rel: str, token: str) -> tuple[int, str, str]:
        """(open directory, temporary name, final name) of state file ``rel`` written ahead."""
        folder, _, name = rel.rpartition("/")
        return self._dir_fd(folder), f".{name}.{token}.tmp", name

    def prewrite(self, rel: str, data: bytes, token: str) -> None:
        """Write state file ``rel``'s future content under a temporary name, while signing (in a
        signing worker too), so that `roll_forward` only renames it into place. A crash leaves just a
        temporary file, which the next apply removes; its transaction holds the content anyway."""
        dir_fd, tmp, _ = self._prewritten(rel, token)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o644, dir_fd=dir_fd)
        try:
            os.fchmod(fd, 0o644)
            os.write(fd, data)
        finally:
            os.close(fd)

    def _dir_fd(self, folder: str) -> int:
        """State directory ``folder`` (``certs``), open for the rest of the run (made if missing):
        names relative to it skip a path walk per file."""
        fd = self._dir_fds.get(folder)
        if fd is None:
            (self.root / folder).mkdir(parents=True, exist_ok=True)
            fd = self._dir_fds[folder] = os.open(self.root / folder, os.O_RDONLY | os.O_DIRECTORY)
        return fd

    def roll_forward(self, txn: Mapping[str, Any], prewritten: tuple[str, set[str]] | None = None) -> None:
        """Write the transaction into state/ (idempotent: safe to repeat after a crash).

        ``txn["config"]``, when present, is a new pki.toml (``pki import`` adds tables to it): it is
        written first, so state never holds objects that pki.toml does not describe.
        ``prewritten`` is (token, paths) of files `prewrite` wrote in this process's apply: they are
        renamed into place (a recovery passes none and writes everything from the transaction).
        """
        token, ready = prewritten if prewritten is not None else ("", set())
        config = txn.get("config")
        if config is not None:
            path = self.base / config["path"]
            if path.read_text(encoding="utf-8") != config["content"]:
                atomic_write(path, config["content"].encode("utf-8"))
        for rel, content in txn["files"].items():
            path = self.root / rel
            if rel in ready:  # written ahead by this process's apply
                dir_fd, tmp, name = self._prewritten(rel, token)
                if content is None:
                    path.unlink(missing_ok=True)
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(tmp, dir_fd=dir_fd)
                else:
                    os.replace(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
            elif content is None:
                path.unlink(missing_ok=True)
            else:
                data = content.encode()
                try:
                    if path.read_bytes() == data:
                        continue
                except FileNotFoundError:
                    pass
                atomic_write(path, data)
        self._append_audit(txn["audit_prev"], txn["audit"].encode(), txn["audit_size"])
        inv = txn["inventory"].encode()
        if self.read_inventory_bytes() != inv:
            atomic_write(self.inventory_path, inv)

    def audit_size(self) -> int:
        try:
            return self.audit_path.stat().st_size
        except FileNotFoundError:
            return 0

    def _append_audit(self, base: str, blob: bytes, size: int) -> None:
        """Append ``blob`` (audit lines) to a log that was ``size`` bytes ending in hash ``base``;
        repeatable, and repairs an append a crash cut short (written in one go from ``size``)."""
        if not blob:
            return
        changed = StateError(f"{self.rel}/audit.jsonl changed while an apply was pending; run `pki audit verify`")
        now = self.audit_size()
        self.audit_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.audit_path, "ab+") as f:
            if now > size:
                f.seek(size)
                written = f.read()
                if written == blob:
                    return  # already appended
                if not blob.startswith(written):
                    raise changed
                f.truncate(size)  # a torn append: write it again, whole
            elif now < size:
                raise changed
            if size and audit.tail_hash(self.audit_path)[0] != base:
                raise changed
            f.write(blob)
            f.flush()

    def finish(self) -> None:
        self.txn_path.unlink(missing_ok=True)
        self.close()

    def close(self) -> None:
        """Let go of the directories `prewrite` kept open."""
        fds, self._dir_fds = self._dir_fds, {}
        for fd in fds.values():
            os.close(fd)

    def remove_temporaries(self) -> None:
        """Temporary files of a write a crash cut short (`atomic_write`'s ``.NAME.PID.tmp``): under the
        apply lock none is in use."""
        for directory in (self.root, self.certs, self.crls):
            try:
                names = os.listdir(directory)
            except FileNotFoundError:
                continue
            for name in names:
                if name.startswith(".") and name.endswith(".tmp"):
                    (directory / name).unlink(missing_ok=True)

    # -- key journal ----------------------------------------------------------------------------
    # Two kinds of line: {"intent": {store, request}} before a store is asked to make or import a key,
    # and {"store", "id", "suffix"} once it has answered.
    def journal_intents(self, intents: Iterable[tuple[str, Mapping[str, Any]]]) -> None:
        encode = _JSON
        self._journal_write("".join(f'{{"intent": {{"store": {encode(store)}, "request": {encode(request)}}}}}\n'
                                    for store, request in intents))

    def journal_key(self, store: str, key_id: str | None, suffix: str | None = None) -> None:
        """The store's answer: the key's id, or None when the call failed (nothing to discard)."""
        self.journal_keys([(store, key_id, suffix)])

    def journal_keys(self, answers: Iterable[tuple[str, str | None, str | None]]) -> None:
        """Several answers (store, id, suffix) in one write."""
        self._journal_write("".join(_JSON({"store": store, "id": key_id, "suffix": suffix}) + "\n"
                                    for store, key_id, suffix in answers))

    def _journal_write(self, lines: str) -> None:
        """Append whole lines to the key journal (kept open for the run; each call one write)."""
        if not lines:
            return
        if self._journal_file is None:
            self.journal.mkdir(parents=True, exist_ok=True)
            self._journal_file = open(self.keys_path, "a", buffering=1)  # noqa: SIM115 - closed by clear_key_journal
        self._journal_file.write(lines)
        self._journal_file.flush()

    def _journal_lines(self) -> list[dict[str, Any]]:
        try:
            lines = self.keys_path.read_text().splitlines()
        except FileNotFoundError:
            return []
        out = []
        for line in lines:
            try:
                out.append(json.loads(line))
            except ValueError:
                continue  # a torn last line from a crash
        return out

    def key_journal_empty(self) -> bool:
        try:
            return self.keys_path.stat().st_size == 0
        except FileNotFoundError:
            return True

    def key_journal(self) -> tuple[list[tuple[str, str]], list[tuple[str, dict[str, Any]]]]:
        """What the key journal holds, read once: the keys a store made (store, id), and the
        requests (store, request) asked for but never answered (the process died during the call)."""
        lines = self._journal_lines()
        made = [(d["store"], d["id"]) for d in lines if d.get("id") and "store" in d]
        answered = {(d.get("store"), d.get("suffix")) for d in lines if "intent" not in d}
        return made, [(d["intent"]["store"], d["intent"]["request"]) for d in lines
                      if "intent" in d and (d["intent"]["store"], d["intent"]["request"].get("suffix")) not in answered]

    def clear_key_journal(self) -> None:
        if self._journal_file is not None:
            self._journal_file.close()
            self._journal_file = None
        self.keys_path.unlink(missing_ok=True)

    def defer_deletes(self, refs: Iterable[tuple[str, str]]) -> None:
        """Keys to delete once a commit holds the state that stopped using them (after --no-commit)."""
        keys = sorted(set(self.deferred_deletes() or []) | set(refs))
        atomic_write(self.deferred_path, json.dumps(keys).encode())

    def deferred_deletes(self) -> list[tuple[str, str]] | None:
        """None when every apply's state was committed; else the keys waiting for that commit."""
        try:
            return [(str(a), str(b)) for a, b in json.loads(self.deferred_path.read_bytes())]
        except FileNotFoundError:
            return None
        except (ValueError, TypeError):
            return []

    def clear_deferred_deletes(self) -> None:
        self.deferred_path.unlink(missing_ok=True)

    def pending_deletes(self) -> list[tuple[str, str]]:
        try:
            return [tuple(x) for x in json.loads(self.deletes_path.read_bytes())]  # type: ignore[misc]
        except FileNotFoundError:
            return []
        except ValueError:
            return []

    def set_pending_deletes(self, refs: Iterable[tuple[str, str]]) -> None:
        refs = sorted(set(refs))
        if refs:
            atomic_write(self.deletes_path, json.dumps(refs).encode())
        else:
            self.deletes_path.unlink(missing_ok=True)
