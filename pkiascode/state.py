"""``state/`` (in git) and ``.pki/`` (local): reading what exists, and writing it crash-safely.

Writing goes through a transaction: apply first writes everything it will change, complete, into
``.pki/journal/txn.json`` (one atomic rename), then copies it into ``state/``. That file is a line of
JSON (the small fields, and for each file's content its length) followed by the contents themselves,
byte for byte. A run killed before the rename changed nothing; one killed after it is finished by
the next run (`StateDir.pending_txn`, `StateDir.roll_forward`), which is idempotent. Keys made
during an apply are listed in ``.pki/journal/keys.jsonl`` as they are made, so the next run can
delete the ones no certificate ended up using. Old keys are deleted only after the new state is
committed.

Everything read back is input someone else may have written: each file is parsed against its schema
(a malformed one is a `StateError` naming it), every name in it must be a pki.toml name before it
becomes a path, and every path must stay inside its directory. Links are never followed: state files
are opened with ``O_NOFOLLOW`` below directories checked to be real ones. What pkiascode makes is
0700 (directories) and 0600 (files) whatever the umask, and a ``.pki/`` that another user owns or
that others may write is refused.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import hashlib
import json
import os
import re
import stat
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path, PurePosixPath
from typing import Any

from . import audit
from .backend import KeyRequest
from .errors import StateError
from .model import REVOCATION_REASONS, Observed, Record, parse_time
from .names import NAME_RE

__all__ = ["StateDir", "atomic_write", "file_stamp", "check_private_dir", "make_private_dir", "read_file", "read_stamped",
           "INVENTORY_FORMAT", "state_digest", "dump_txn", "load_txn", "config_refusal", "id_refusal", "txn_file", "valid_key_ref",
           "safe_relative",
           "certificate_file", "has_text_header", "render_inventory"]

INVENTORY_FORMAT = 1
_JSON = json.JSONEncoder().encode
#: a state file's path below the state directory: what a transaction may write or delete
_STATE_FILE = re.compile(r"(certs/(?P<cert>[^/]+)\.pem|crl/(?P<crl>[^/]+)\.crl)\Z")
#: a key store's reference to a key (files, Vault paths, PKCS#11 labels); the store checks its own form
_KEY_REF = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:@/+=-]{0,511}\Z")
_HEX = re.compile(r"[0-9a-f]+\Z")
_PKI_ID = re.compile(r"[a-z0-9]{8,32}")  # (config's rule for [pki] id)
_ISO_TIME = re.compile(r"\d{4}-\d\d-\d\d[0-9T:.+Z -]*\Z")  # (then read by parse_time)
_SUFFIX = re.compile(r"[0-9a-f]{8}\Z")


def valid_key_ref(store: object, key_id: object) -> bool:
    """(store, key id) read from a file: a store name as pki.toml spells one, and a reference
    without control characters or ``..`` components."""
    return (isinstance(store, str) and bool(NAME_RE.match(store)) and isinstance(key_id, str)
            and bool(_KEY_REF.match(key_id)) and ".." not in key_id.split("/"))


# -- files and directories -----------------------------------------------------------------------

def check_private_dir(path: Path) -> bool:
    """Whether ``path`` exists; raises `StateError` if it is a link, not a directory, owned by
    another user, or writable by group or others (someone else could plant files in it)."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return False
    if stat.S_ISLNK(st.st_mode) or not stat.S_ISDIR(st.st_mode):
        raise StateError(f"{path} is not a directory (a symbolic link?); pkiascode never follows links there")
    if st.st_uid != os.getuid():
        raise StateError(f"{path} is owned by another user (uid {st.st_uid}); remove it or fix its owner")
    if st.st_mode & 0o022:
        raise StateError(f"{path} is writable by group or others (mode {stat.S_IMODE(st.st_mode):o}); "
                         f"run `chmod 700 {path}`")
    return True


def make_private_dir(path: Path) -> None:
    """``path`` as a 0700 directory (made if missing, whatever the umask), checked."""
    if not check_private_dir(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.mkdir(path, 0o700)
        except FileExistsError:
            pass
        os.chmod(path, 0o700, follow_symlinks=False)
        check_private_dir(path)


def _real_dir(path: Path, base: Path) -> None:
    """``path`` and every directory between ``base`` and it are real directories (not links),
    made 0700 where missing."""
    rel = path.relative_to(base)
    current = base
    for part in rel.parts:
        current = current / part
        try:
            st = os.lstat(current)
        except FileNotFoundError:
            try:
                os.mkdir(current, 0o700)
                os.chmod(current, 0o700, follow_symlinks=False)
            except FileExistsError:
                pass
            st = os.lstat(current)
        if not stat.S_ISDIR(st.st_mode):
            raise StateError(f"{current} is a symbolic link or not a directory; pkiascode never follows links "
                             "in its state")


def atomic_write(path: Path, data: bytes, mode: int = 0o600) -> None:
    """Write ``path`` whole or not at all, with exactly ``mode``; never through a file or link someone
    else left under the temporary name (the final name, if a link, is replaced, not followed)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
    try:
        os.fchmod(fd, mode)
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
    finally:
        os.close(fd)
    os.replace(tmp, path)


def read_file(path: Path | str, *, limit: int | None = None) -> bytes | None:
    """A state file's bytes (None when missing), never through a symbolic link (`StateError`)."""
    return read_stamped(path, limit=limit)[0]


def read_stamped(path: Path | str, *, limit: int | None = None) -> tuple[bytes | None, tuple[int, ...] | None]:
    """`read_file`, and the stamp (`file_stamp`) of the file it read, taken from the open file."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except FileNotFoundError:
        return None, None
    except OSError as e:
        if os.path.islink(path):
            raise StateError(f"{path} is a symbolic link; pkiascode never follows links in its state") from None
        raise StateError(f"cannot read {path}: {e.strerror}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise StateError(f"{path} is not a regular file")
        chunks: list[bytes] = []
        left = limit + 1 if limit is not None else -1  # (-1: to the end)
        while left:
            chunk = os.read(fd, max(st.st_size + 1, 65536) if left < 0 else min(left, 1 << 20))
            if not chunk:
                break
            chunks.append(chunk)
            left = left - len(chunk) if left > 0 else left
    finally:
        os.close(fd)
    data = b"".join(chunks)
    if limit is not None and len(data) > limit:
        raise StateError(f"{path} is larger than {limit} bytes; not a file pkiascode wrote")
    return data, (st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_size)


def file_stamp(path: str) -> tuple[int, ...] | None:
    """(mtime, ctime, inode, size), or None for a missing file. ctime cannot be set back by
    ``touch -d``/utime, so an edit always shows."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return None
    return (st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_size)


def _pem_der(data: bytes) -> tuple[bytes, bytes] | None:
    """(label line, DER) of the one PEM block in ``data`` (text before the BEGIN line allowed, as
    RFC 7468 says), without importing a crypto library."""
    start = data.find(b"-----BEGIN ")
    if start < 0 or (start and data[start - 1:start] != b"\n"):
        return None
    lines = data[start:].strip().splitlines()
    if len(lines) < 3 or not lines[-1].startswith(b"-----END ") or data.count(b"-----BEGIN ") != 1:
        return None
    try:
        return lines[0], base64.b64decode(b"".join(lines[1:-1]), validate=True)
    except (binascii.Error, ValueError):
        return None


# -- certificate files ---------------------------------------------------------------------------

_UNPRINTABLE = re.compile(r"[\x00-\x1f\x7f]")


_KEY_USAGE_WORDS = (("digital_signature", "digital signature"), ("content_commitment", "content commitment"),
                    ("key_encipherment", "key encipherment"), ("data_encipherment", "data encipherment"),
                    ("key_agreement", "key agreement"), ("key_cert_sign", "cert sign"), ("crl_sign", "crl sign"))
_SAN_LABELS = {"DNSName": "DNS", "IPAddress": "IP", "RFC822Name": "email", "UniformResourceIdentifier": "URI"}


def certificate_file(cert: Any, der: bytes) -> bytes:
    """``state/certs/NAME.pem`` for ``cert`` (``der`` its DER): a few plain-text lines saying what the
    certificate is, so that a review of the diff can read it (RFC 7468 allows text before the BEGIN
    line; openssl, Go and Python skip it), then the PEM block. Every line starts with its label,
    never with dashes, and control characters are escaped."""
    from cryptography import x509

    from .model import format_time
    from .names import EXTENDED_USAGES
    from .x509 import der_to_pem

    sans: list[str] = []
    usages: list[str] = []
    eku_words = {oid: word for word, oid in EXTENDED_USAGES.items() if word != "s/mime"}
    for ext in cert.extensions:
        value = ext.value
        if isinstance(value, x509.SubjectAlternativeName):
            sans = [f"{_SAN_LABELS.get(type(g).__name__, type(g).__name__)}:{g.value}" for g in value]
        elif isinstance(value, x509.KeyUsage):
            usages[:0] = [word for attr, word in _KEY_USAGE_WORDS if getattr(value, attr)]
        elif isinstance(value, x509.ExtendedKeyUsage):
            usages += [eku_words.get(oid.dotted_string, oid.dotted_string) for oid in value]
    fields = (("Subject", cert.subject.rfc4514_string()), ("Issuer", cert.issuer.rfc4514_string()),
              ("SANs", ", ".join(sans) or "(none)"), ("Usages", ", ".join(usages) or "(none)"),
              ("Not before", format_time(cert.not_valid_before_utc)),
              ("Not after", format_time(cert.not_valid_after_utc)),
              ("Serial", format(cert.serial_number, "x")), ("SHA-256", hashlib.sha256(der).hexdigest()))
    text = "".join(f"{label}: {_UNPRINTABLE.sub(_escape, value)}\n" for label, value in fields)
    return text.encode() + der_to_pem(der)


def _escape(m: re.Match[str]) -> str:
    return f"\\x{ord(m.group()):02x}"


def has_text_header(data: bytes) -> bool:
    """Whether a certificate file starts with `certificate_file`'s lines (files written before
    them start with the BEGIN line)."""
    return data.startswith(b"Subject: ")


# -- the transaction file ------------------------------------------------------------------------

_TXN_MAGIC = b"pkiascode-transaction 2\n"
_BIG = ("inventory", "audit")  # besides every file's content: stored raw after the header
_TXN_KEYS = {"inventory", "files", "audit_prev", "audit", "audit_size", "plan", "message", "retire_keys", "commit"}


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
    """`dump_txn`'s inverse, checked against its schema: ValueError for anything else."""
    if not data.startswith(_TXN_MAGIC):
        raise ValueError("not a pkiascode transaction")
    end = data.index(b"\n", len(_TXN_MAGIC))
    txn = json.loads(data[len(_TXN_MAGIC):end])
    if not isinstance(txn, dict) or not _TXN_KEYS <= set(txn) <= _TXN_KEYS | {"config", "config_commit"}:
        raise ValueError("not a pkiascode transaction")
    pos = end + 1

    def raw(length: object) -> str:
        nonlocal pos
        if not isinstance(length, int) or isinstance(length, bool) or length < 0 or pos + length > len(data):
            raise ValueError("transaction truncated")
        text = data[pos:pos + length].decode("utf-8")
        pos += length
        return text

    for key in _BIG:
        txn[key] = raw(txn[key])
    files = txn["files"]
    if not isinstance(files, dict):
        raise ValueError("files")
    txn["files"] = {rel: None if n is None else raw(n) for rel, n in files.items()}
    if pos != len(data):
        raise ValueError("trailing bytes in the transaction")
    _check_txn(txn)
    return txn


def _check_txn(txn: Mapping[str, Any]) -> None:
    """Every field of a loaded transaction has its type, and every name and path in it is one
    pkiascode writes: ValueError naming the field otherwise."""
    for rel in txn["files"]:
        if not state_file_name(rel):
            raise ValueError(f"files: {rel!r} is not a state file")
    if not (isinstance(txn["audit_prev"], str) and len(txn["audit_prev"]) == 64 and _HEX.match(txn["audit_prev"])):
        raise ValueError("audit_prev")
    size = txn["audit_size"]
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise ValueError("audit_size")
    if txn["plan"] is not None and not (isinstance(txn["plan"], str) and _HEX.match(txn["plan"])):
        raise ValueError("plan")
    if not isinstance(txn["message"], str) or not isinstance(txn["commit"], bool):
        raise ValueError("message/commit")
    retire = txn["retire_keys"]
    if not isinstance(retire, list) or not all(
            isinstance(r, list) and len(r) == 2 and valid_key_ref(r[0], r[1]) for r in retire):
        raise ValueError("retire_keys")
    if txn.get("config_commit", False) is not True and "config_commit" in txn:
        raise ValueError("config_commit")
    config = txn.get("config")
    if config is not None:
        if not (isinstance(config, dict) and set(config) == {"path", "content"} and isinstance(config["content"], str)
                and isinstance(config["path"], str) and safe_relative(config["path"])
                and "/" not in config["path"] and config["path"].endswith(".toml")):
            raise ValueError("config")  # (pki.toml is next to .pki/: a file name, never a path)


def config_refusal(txn: Mapping[str, Any], base: Path, config_path: Path) -> str | None:
    """Why a pending transaction may not be completed silently, or None. Its ``config`` rewrites
    pki.toml (an interrupted `pki import`, or an apply that added the ``[pki] id``): it must name
    this project's pki.toml, and be either what pki.toml holds already or that pki.toml with only
    what such an apply adds (`scaffold.is_id_edit`: the id, ``legacy_keys = true``); anything else
    is completed only by running `pki import` again (the transaction file is in ``.pki/``, which is
    not reviewed like the committed pki.toml is)."""
    config = txn.get("config")
    if config is None:
        return None
    where = ".pki/journal/txn.json"
    if (base / config["path"]).resolve() != config_path.resolve():
        return (f"{where} writes {config['path']}, not {config_path.name}: not a transaction pkiascode made; "
                "remove .pki/journal/ (then `pki prune` deletes keys it may have made)")
    current = read_file(config_path)
    content = config["content"].encode("utf-8")
    if current == content:
        return None
    if current is not None:
        from .scaffold import is_id_edit

        try:
            if is_id_edit(current.decode("utf-8"), config["content"]):
                return None  # an apply that gave pki.toml its [pki] id (and legacy_keys where keys predate it)
        except UnicodeDecodeError:
            pass
    return (f"{where} is an interrupted `pki import` that rewrites {config_path.name}: run the same `pki import "
            f"DIR` again to finish it, or remove .pki/journal/ to drop it (`pki prune` then deletes the keys it made)")


def state_file_name(rel: str) -> bool:
    """``rel`` is ``certs/NAME.pem`` or ``crl/NAME.crl`` with a pki.toml NAME."""
    m = _STATE_FILE.match(rel) if isinstance(rel, str) else None
    return bool(m) and bool(NAME_RE.match(m.group("cert") or m.group("crl")))  # type: ignore[union-attr]


def safe_relative(path: str) -> bool:
    """A relative path without ``..``, empty or control-character parts."""
    pure = PurePosixPath(path)
    return (not pure.is_absolute() and bool(pure.parts) and ".." not in pure.parts
            and not re.search(r"[\x00-\x1f\x7f\\]", path))


def txn_file(work_dir: Path) -> Path:
    """Where an apply's transaction waits under ``.pki/`` (known before pki.toml is: see Project)."""
    return work_dir / "journal" / "txn.json"


# -- the inventory -------------------------------------------------------------------------------

def _check_object(name: object, obj: object) -> str | None:
    """What is wrong with one inventory object (None: nothing). Types and names only: whether its
    content agrees with its certificate is the planner's and `Project`'s business."""
    if not isinstance(name, str) or not NAME_RE.match(name):
        return f"object name {name!r} is not a pki.toml name"
    if not isinstance(obj, dict):
        return f"{name}: not an object"
    if obj.get("name") != name:
        return f"{name}: its name field says {obj.get('name')!r}"
    if obj.get("kind") not in ("authority", "certificate"):
        return f"{name}: kind must be authority or certificate"
    issuer = obj.get("issuer")
    if issuer is not None and (not isinstance(issuer, str) or not NAME_RE.match(issuer)):
        return f"{name}: issuer {issuer!r} is not a pki.toml name"
    for field in ("serial", "sha256", "ski"):
        if not isinstance(obj.get(field), str) or not _HEX.match(obj[field]):
            return f"{name}: {field} must be lowercase hex"
    key = obj.get("key")
    if not isinstance(key, dict) or not valid_key_ref(key.get("backend"), key.get("ref")):
        return f"{name}: key must name a backend and a key reference"
    pub = obj.get("public_key_sha256")
    if pub is not None and not (isinstance(pub, str) and len(pub) == 64 and _HEX.match(pub)):
        return f"{name}: public_key_sha256 must be 64 hex digits"
    return _check_crl(name, obj.get("crl"))


def _is_time(value: object) -> bool:
    """An ISO 8601 date or time (as pkiascode writes them, or a pki.toml revocation date) that can be
    read and stated in UTC."""
    if not isinstance(value, str) or not _ISO_TIME.match(value) or len(value) > 40:
        return False
    try:
        parse_time(value).astimezone(dt.timezone.utc)
    except (ValueError, OverflowError):
        return False
    return True


def _is_count(value: object, limit: int = 2**63) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < limit


def _check_revocation(r: Mapping[str, Any]) -> str | None:
    """What is wrong with one entry of the inventory's ``revocations`` (its issuer is checked)."""
    serial = r.get("serial")
    if not (isinstance(serial, str) and 0 < len(serial) <= 40 and _HEX.fullmatch(serial)):
        return f"serial {serial!r} must be lowercase hex (at most 20 bytes)"
    if not _is_time(r.get("date")):
        return f"serial {serial}: date {r.get('date')!r} must be a UTC time like 2026-01-02T03:04:05Z"
    if r.get("reason", "unspecified") not in REVOCATION_REASONS:
        return f"serial {serial}: reason {r.get('reason')!r} is not a revocation reason"
    if r.get("not_after") is not None and not _is_time(r["not_after"]):
        return f"serial {serial}: not_after {r['not_after']!r} must be a UTC time"
    if r.get("name") is not None and not (isinstance(r["name"], str) and NAME_RE.match(r["name"])):
        return f"serial {serial}: name {r['name']!r} is not a pki.toml name"
    return None


def _check_crl(name: str, crl: object) -> str | None:
    """What is wrong with an object's ``crl`` record (None, or what `x509.sign_crl` returned)."""
    if crl is None:
        return None
    if not isinstance(crl, dict):
        return f"{name}: crl must be an object"
    if not _is_count(crl.get("number") or 0):
        return f"{name}: crl number {crl.get('number')!r} must be a non-negative integer"
    for field in ("this_update", "next_update"):
        if field in crl or field == "next_update":
            if not _is_time(crl.get(field)):
                return f"{name}: crl {field} {crl.get(field)!r} must be a UTC time like 2026-01-02T03:04:05Z"
    if "validity" in crl and not (_is_count(crl["validity"], 100 * 366 * 86400) and crl["validity"] > 0):
        return f"{name}: crl validity {crl['validity']!r} must be a number of seconds"
    if "sha256" in crl and not (isinstance(crl["sha256"], str) and len(crl["sha256"]) == 64
                                and _HEX.fullmatch(crl["sha256"])):
        return f"{name}: crl sha256 must be 64 hex digits"
    if "revoked" in crl and not _is_count(crl["revoked"]):
        return f"{name}: crl revoked must be a count"
    return None


def id_refusal(inv: Mapping[str, Any], configured: str | None, rel: str = "state") -> str | None:
    """Why pki.toml's ``[pki] id`` (``configured``) may not be used with this inventory, or None:
    the id the inventory records scopes this PKI's keys and lock in shared key stores, and changing
    it would make another PKI's keys look like this one's (review F6)."""
    recorded = inv.get("pki_id")
    if recorded is None or recorded == configured:
        return None
    now = f"to {configured}" if configured else "to none (removed)"
    return (f"the [pki] id changed from {recorded} {now}: {rel}/inventory.json records {recorded}, and the id "
            f"names this PKI's keys and lock in shared key stores; never change it: set id = \"{recorded}\" in "
            "pki.toml's [pki] table")


def render_inventory(inv: Mapping[str, Any]) -> bytes:
    """inventory.json: one field per line, keys sorted, so that a changed field is a one-line diff."""
    out = {"format_version": INVENTORY_FORMAT, "objects": inv["objects"], "revocations": list(inv["revocations"])}
    if inv.get("pending_deletes"):
        # keys no object uses any more, deleted once the commit that retired them is on the upstream
        out["pending_deletes"] = [list(r) for r in sorted({tuple(r) for r in inv["pending_deletes"]})]
    if inv.get("audit_head"):
        # the audit log's last line when this was written: removing lines from its end shows
        out["audit_head"] = inv["audit_head"]
    if inv.get("pki_id"):
        # pki.toml's [pki] id when this was written: an id changed by a pull request shows (`id_refusal`)
        out["pki_id"] = inv["pki_id"]
    return (json.dumps(out, indent=2, sort_keys=True, ensure_ascii=False) + "\n").encode()


def state_digest(inventory: bytes, cert_drift: Mapping[str, str] | None = None,
                 crl_drift: Mapping[str, str] | None = None) -> str:
    """The digest a plan records of the state it was made from (`Observed.digest`): the inventory's
    bytes and the files that drifted from it (none: the state of an empty plan)."""
    drift = json.dumps([dict(cert_drift or {}), dict(crl_drift or {})], sort_keys=True).encode()
    return hashlib.sha256(inventory + drift).hexdigest()


class StateDir:
    """The state directory of one pki.toml, and its local work directory."""

    def __init__(self, base_dir: Path, state_dir: str, work_dir: Path) -> None:
        self.base = base_dir
        self.root = base_dir / state_dir
        self.rel = state_dir
        if not safe_relative(state_dir) or not self.root.resolve().is_relative_to(base_dir.resolve()):
            raise StateError(f"state_dir {state_dir!r} must be a directory inside {base_dir}")
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
        self._audit: tuple[tuple[int, ...] | None, tuple[list[dict[str, Any]], list[str]]] | None = None
        self._journal_fd: int | None = None
        #: stat stamps of the files the last `observe` read, taken as it read them
        self.seen: dict[str, tuple[int, ...] | None] = {}
        #: the DER of each certificate and CRL file the last `drift` found to be its record's, by path
        self.der: dict[str, bytes] = {}

    def cert_path(self, name: str) -> Path:
        if not NAME_RE.match(name):
            raise StateError(f"{name!r} is not a pki.toml name")
        return self.certs / f"{name}.pem"

    def crl_path(self, name: str) -> Path:
        if not NAME_RE.match(name):
            raise StateError(f"{name!r} is not a pki.toml name")
        return self.crls / f"{name}.crl"

    # -- where files may be --------------------------------------------------------------------
    def _check_state_dirs(self, *, make: bool = False) -> None:
        """state/ and its certs/, crl/ are real directories inside the project (made when ``make``)."""
        for d in (self.root, self.certs, self.crls):
            if make:
                _real_dir(d, self.base)
            else:
                try:
                    st = os.lstat(d)
                except FileNotFoundError:
                    continue
                if not stat.S_ISDIR(st.st_mode):
                    raise StateError(f"{d} is a symbolic link or not a directory; pkiascode never follows "
                                     "links in its state")
        if self.root.exists() and not self.root.resolve().is_relative_to(self.base.resolve()):
            raise StateError(f"{self.root} leads outside {self.base}")

    def _work_ready(self, *, make: bool = False) -> bool:
        """``.pki/`` and its journal/ are private directories (made when ``make``)."""
        if make:
            make_private_dir(self.work)
            make_private_dir(self.journal)
            return True
        return check_private_dir(self.work) and check_private_dir(self.journal)

    def _read_work(self, path: Path, *, limit: int | None = None) -> bytes | None:
        if not self._work_ready():
            return None
        return read_file(path, limit=limit)

    # -- inventory ------------------------------------------------------------------------------
    def read_inventory_bytes(self) -> bytes:
        self._check_state_dirs()
        return read_file(self.inventory_path) or b""

    def parse_inventory(self, data: bytes) -> dict[str, Any]:
        if not data.strip():
            return {"format_version": INVENTORY_FORMAT, "objects": {}, "revocations": [], "pending_deletes": []}
        where = f"{self.rel}/inventory.json"
        restore = f"restore it with `git checkout -- {where}`"
        try:
            inv = json.loads(data)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise StateError(f"{where} is not valid JSON ({getattr(e, 'lineno', '?')}): {restore}") from None
        if not isinstance(inv, dict) or inv.get("format_version") != INVENTORY_FORMAT \
                or not isinstance(inv.get("objects"), dict):
            raise StateError(f"{where} is not a pkiascode inventory (format_version {INVENTORY_FORMAT} with objects)")
        inv.setdefault("revocations", [])
        if not isinstance(inv["revocations"], list) or not all(isinstance(r, dict) for r in inv["revocations"]):
            raise StateError(f"{where}: revocations must be a list of objects; {restore}")
        for name, obj in inv["objects"].items():
            problem = _check_object(name, obj)
            if problem:
                raise StateError(f"{where}: {problem}; {restore}")
        pki_id = inv.get("pki_id")
        if pki_id is not None and not (isinstance(pki_id, str) and _PKI_ID.fullmatch(pki_id)):
            raise StateError(f"{where}: pki_id must be 8 to 32 lowercase letters and digits; {restore}")
        pending = inv.setdefault("pending_deletes", [])
        if not isinstance(pending, list) or not all(isinstance(p, list) and len(p) == 2 and valid_key_ref(*p)
                                                    for p in pending):
            raise StateError(f"{where}: pending_deletes must be a list of [backend, key] pairs; {restore}")
        for r in inv["revocations"]:
            if not (isinstance(r.get("issuer"), str) and NAME_RE.match(r["issuer"])):
                raise StateError(f"{where}: a revocation's issuer {r.get('issuer')!r} is not a pki.toml name; "
                                 f"{restore}")
            problem = _check_revocation(r)
            if problem:
                raise StateError(f"{where}: a revocation by {r['issuer']}: {problem}; {restore}")
        return inv

    def load(self) -> tuple[dict[str, Any], dict[str, Record]]:
        """The inventory as written, and its records: no drift checks (for readers of state)."""
        inv = self.parse_inventory(self.read_inventory_bytes())
        return inv, self.records(inv)

    def audit_entries(self) -> tuple[list[dict[str, Any]], list[str]]:
        """The audit log's lines, parsed and chained (`audit.entries`: the lines as far as the chain
        holds, and its first problem), read again only when the file changed (its stamp). Read-only:
        plan, the id and retirement checks of apply all ask."""
        stamp = file_stamp(str(self.audit_path))
        if self._audit is None or self._audit[0] != stamp or stamp is None:
            self._audit = (stamp, audit.entries(audit.read_lines(self.audit_path)))
        return self._audit[1]

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
            overlay = set(txn["files"])
        else:
            self.seen[str(self.inventory_path)] = file_stamp(str(self.inventory_path))
            data = self.read_inventory_bytes()
            overlay = set()
        self._check_state_dirs()
        inv = self.parse_inventory(data)
        records = self.records(inv)
        cert_drift, crl_drift = self.drift(records, skip=overlay)
        # with a pending transaction this is already the digest of the state it will leave
        digest = state_digest(data, cert_drift, crl_drift)
        observed = Observed(records=records, revocations=tuple(inv["revocations"]), cert_drift=cert_drift,
                            crl_drift=crl_drift, digest=digest)
        return observed, inv

    def drift(self, records: Mapping[str, Record], *, skip: Iterable[str] = ()) -> tuple[dict[str, str], dict[str, str]]:
        """Which certificate and CRL files are not the ones ``records`` record (missing, not one PEM
        block, another SHA-256 of the DER, text lines that do not describe it): (cert drift, CRL
        drift), each name → why. ``skip``: files (``certs/NAME.pem``) not to look at. Each file is
        read once; the DER of each that is its record's is kept in `der` for `Project.verify_state`."""
        skip = set(skip)
        self.der = {}
        cert_drift: dict[str, str] = {}
        crl_drift: dict[str, str] = {}
        certs, crls = str(self.certs), str(self.crls)  # (plain strings: no Path per file)
        for name, rec in records.items():
            if not NAME_RE.match(name):
                raise StateError(f"{name!r} is not a pki.toml name")
            rel = f"certs/{name}.pem"
            if rel not in skip:
                why = self._file_drift(f"{certs}/{name}.pem", rec.sha256, b"-----BEGIN CERTIFICATE-----")
                if why:
                    cert_drift[name] = f"{self.rel}/{rel} {why}"
            crl = rec.crl
            if crl:
                rel = f"crl/{name}.crl"
                if rel not in skip:
                    why = self._file_drift(f"{crls}/{name}.crl", crl.get("sha256", ""), b"-----BEGIN X509 CRL-----")
                    if why:
                        crl_drift[name] = f"{self.rel}/{rel} {why}"
        return cert_drift, crl_drift

    def _file_drift(self, path: str, expected: str, label: bytes) -> str | None:
        data, self.seen[path] = read_stamped(path)
        if data is None:
            return "is missing"
        pem = _pem_der(data)
        if pem is None:
            return "is not a PEM file"
        digest = hashlib.sha256(pem[1]).hexdigest()
        if digest != expected:
            return f"does not match the inventory (sha256 {digest[:12]}…, expected {expected[:12]}…)"
        # (CRLF: a checkout made with `eol=crlf` in a .gitattributes has the same lines)
        if has_text_header(data) and f"\nSHA-256: {digest}\n".encode() not in (
                data.replace(b"\r\n", b"\n") if b"\r" in data else data):
            return "has text lines that do not describe its certificate"
        if pem[0] == label:  # (another label: verify_state reads the file itself, and refuses it)
            self.der[path] = pem[1]
        return None

    # -- transactions ---------------------------------------------------------------------------
    def pending_txn(self) -> dict[str, Any] | None:
        data = self._read_work(self.txn_path)
        if data is None:
            return None
        try:
            return load_txn(data)
        except (ValueError, KeyError, TypeError, UnicodeDecodeError):
            # a torn txn file cannot exist (it is renamed into place), so this is damage or forgery
            raise StateError(f"{self.txn_path} is damaged; remove it to discard the interrupted apply") from None

    def transaction(self, *, objects: Mapping[str, Any], revocations: Sequence[Mapping[str, Any]],
                    files: Mapping[str, str | None], events: list[dict[str, Any]], message: str,
                    retire_keys: Iterable[tuple[str, str]] = (), commit: bool,
                    config: Mapping[str, str] | None = None, config_commit: bool = False,
                    pending_deletes: Iterable[tuple[str, str]] | None = None,
                    pki_id: str | None = None) -> dict[str, Any]:
        """Everything a change writes, as one record for `begin`/`roll_forward`: the new inventory
        (with the audit log's new head and ``pending_deletes``: None keeps the inventory's), the
        files, the audit lines chained onto the log as it is. ``retire_keys``: the keys to delete
        right after the commit; ``config_commit``: the commit takes the new pki.toml too; ``pki_id``:
        pki.toml's ``[pki] id``, recorded in the inventory (None keeps the one it records)."""
        self._check_state_dirs()
        current = self.load()[0]
        if pending_deletes is None:
            pending_deletes = [tuple(p) for p in current["pending_deletes"]]
        prev, seq = audit.tail_hash(self.audit_path)
        audit_lines = audit.chain(events, prev=prev, seq=seq)
        inventory = render_inventory({"objects": objects, "revocations": revocations,
                                      "audit_head": audit.head(audit_lines, prev, seq),
                                      "pending_deletes": list(pending_deletes),
                                      "pki_id": pki_id or current.get("pki_id")})
        txn: dict[str, Any] = {"inventory": inventory.decode(), "files": dict(files), "audit_prev": prev,
                               "audit": audit.render_lines(audit_lines).decode(), "audit_size": self.audit_size(),
                               "plan": audit_lines[0].get("plan") if audit_lines else None, "message": message,
                               "retire_keys": [list(r) for r in sorted(set(retire_keys))], "commit": commit}
        if config is not None:
            txn["config"] = dict(config)
            if config_commit:
                txn["config_commit"] = True
        _check_txn(txn)  # what the next run will accept back
        return txn

    def begin(self, txn: Mapping[str, Any]) -> None:
        """Make the transaction durable: from here on the change will complete."""
        data = dump_txn(txn)
        self._work_ready(make=True)
        tmp = self.txn_path.with_name(f".txn.{os.getpid()}.tmp")
        tmp.unlink(missing_ok=True)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        try:
            os.fchmod(fd, 0o600)
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, self.txn_path)

    def roll_forward(self, txn: Mapping[str, Any]) -> None:
        """Write the transaction into state/ (idempotent: safe to repeat after a crash).

        ``txn["config"]``, when present, is a new pki.toml (``pki import`` adds tables to it): it is
        written first, so state never holds objects that pki.toml does not describe.
        """
        _check_txn(txn)
        self._check_state_dirs(make=True)
        config = txn.get("config")
        if config is not None:
            path = self.base / config["path"]
            _real_dir(path.parent, self.base)
            if read_file(path) != config["content"].encode("utf-8"):
                atomic_write(path, config["content"].encode("utf-8"))
        for rel, content in txn["files"].items():
            path = self.root / rel
            if content is None:
                path.unlink(missing_ok=True)  # (unlink removes a link itself, never its target)
                continue
            data = content.encode()
            if not os.path.islink(path) and read_file(path) == data:
                continue
            atomic_write(path, data)
        self._append_audit(txn["audit_prev"], txn["audit"].encode(), txn["audit_size"])
        inv = txn["inventory"].encode()
        if os.path.islink(self.inventory_path) or self.read_inventory_bytes() != inv:
            atomic_write(self.inventory_path, inv)

    def audit_size(self) -> int:
        try:
            st = os.lstat(self.audit_path)
        except FileNotFoundError:
            return 0
        if not stat.S_ISREG(st.st_mode):
            raise StateError(f"{self.audit_path} is a symbolic link or not a file; pkiascode never follows links")
        return st.st_size

    def read_audit(self) -> bytes:
        return read_file(self.audit_path) or b""

    def _append_audit(self, base: str, blob: bytes, size: int) -> None:
        """Append ``blob`` (audit lines) to a log that was ``size`` bytes ending in hash ``base``;
        repeatable, and repairs an append a crash cut short (written in one go from ``size``)."""
        if not blob:
            return
        changed = StateError(f"{self.rel}/audit.jsonl changed while an apply was pending; run `pki audit verify`")
        self._check_state_dirs(make=True)
        now = self.audit_size()
        fd = os.open(self.audit_path, os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "rb+") as f:
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
        if self._journal_fd is not None:
            os.close(self._journal_fd)
            self._journal_fd = None

    def remove_temporaries(self) -> None:
        """Temporary files of a write a crash cut short (`atomic_write`'s ``.NAME.PID.tmp``): under the
        apply lock none is in use."""
        self._check_state_dirs()
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
        self._journal_write("".join(_JSON({"intent": {"store": store, "request": dict(request)}}) + "\n"
                                    for store, request in intents))

    def journal_key(self, store: str, key_id: str | None, suffix: str | None = None) -> None:
        """The store's answer: the key's id, or None when the call failed (nothing to discard)."""
        self._journal_write(_JSON({"store": store, "id": key_id, "suffix": suffix}) + "\n")

    def _journal_write(self, lines: str) -> None:
        """Append whole lines to the key journal (kept open for the run; each call one write)."""
        if not lines:
            return
        if self._journal_fd is None:
            self._work_ready(make=True)
            self._journal_fd = os.open(self.keys_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW, 0o600)
            os.fchmod(self._journal_fd, 0o600)
        os.write(self._journal_fd, lines.encode())

    def key_journal(self) -> tuple[list[tuple[str, str]], list[tuple[str, KeyRequest]]]:
        """What the key journal holds, read once: the keys a store made (store, id), and the
        requests (store, request) asked for but never answered (the process died during the call).
        A line that is not one of the two kinds is an error naming the file (a torn last line,
        from a crash during its write, is skipped)."""
        data = self._read_work(self.keys_path)
        if not data:
            return [], []
        lines = data.decode("utf-8", errors="replace").split("\n")
        last = len(lines) - 1
        made: list[tuple[str, str]] = []
        intents: list[tuple[str, KeyRequest]] = []
        answered: set[tuple[str, str | None]] = set()
        for n, line in enumerate(lines):
            if not line:
                continue
            try:
                d = json.loads(line)
                if "intent" in d:
                    intent = d["intent"]
                    store, request = intent["store"], _key_request(intent["request"])
                    if not valid_key_ref(store, "x"):
                        raise ValueError("store")
                    intents.append((store, request))
                else:
                    store, key_id, suffix = d["store"], d["id"], d["suffix"]
                    if not valid_key_ref(store, key_id if key_id is not None else "x") \
                            or not (suffix is None or (isinstance(suffix, str) and _SUFFIX.match(suffix))):
                        raise ValueError("answer")
                    answered.add((store, suffix))
                    if key_id is not None:
                        made.append((store, key_id))
            except (ValueError, KeyError, TypeError):
                if n == last:
                    continue  # torn by a crash while it was written
                raise StateError(f"{self.keys_path}:{n + 1}: not a key journal line; it was not written by "
                                 "pkiascode: look at it, then remove the file") from None
        return made, [(s, r) for s, r in intents if (s, r.suffix) not in answered]

    def clear_key_journal(self) -> None:
        self.close()
        self.keys_path.unlink(missing_ok=True)

    def _read_key_pairs(self, path: Path) -> list[tuple[str, str]] | None:
        """A list of [store, key id] pairs (deletes.json, uncommitted.json); None when missing."""
        data = self._read_work(path)
        if data is None:
            return None
        try:
            pairs = json.loads(data)
            if isinstance(pairs, list) and all(isinstance(p, list) and len(p) == 2 and valid_key_ref(*p)
                                               for p in pairs):
                return [(p[0], p[1]) for p in pairs]
        except ValueError:
            pass
        raise StateError(f"{path} is not a list of [backend, key] pairs; it was not written by pkiascode: "
                         "look at it, then remove the file")

    def _write_key_pairs(self, path: Path, refs: Iterable[tuple[str, str]]) -> None:
        self._work_ready(make=True)
        atomic_write(path, json.dumps(sorted(set(refs))).encode())

    def defer_deletes(self, refs: Iterable[tuple[str, str]]) -> None:
        """Keys to delete once a commit holds the state that stopped using them (after --no-commit)."""
        self._write_key_pairs(self.deferred_path, list(self.deferred_deletes() or []) + list(refs))

    def deferred_deletes(self) -> list[tuple[str, str]] | None:
        """None when every apply's state was committed; else the keys waiting for that commit."""
        return self._read_key_pairs(self.deferred_path)

    def clear_deferred_deletes(self) -> None:
        self.deferred_path.unlink(missing_ok=True)

    def pending_deletes(self) -> list[tuple[str, str]]:
        return self._read_key_pairs(self.deletes_path) or []

    def set_pending_deletes(self, refs: Iterable[tuple[str, str]]) -> None:
        refs = sorted(set(refs))
        if refs:
            self._write_key_pairs(self.deletes_path, refs)
        else:
            self.deletes_path.unlink(missing_ok=True)


def _key_request(d: object) -> KeyRequest:
    """A journaled key request, checked: its name a pki.toml name, its suffix 8 hex digits."""
    if not isinstance(d, dict) or not isinstance(d.get("name"), str) or not NAME_RE.match(d["name"]):
        raise ValueError("request name")
    if not isinstance(d.get("suffix"), str) or not _SUFFIX.match(d["suffix"]):
        raise ValueError("request suffix")
    if not isinstance(d.get("authority"), bool) or not isinstance(d.get("exportable"), bool):
        raise ValueError("request flags")
    return KeyRequest.from_json(d)
