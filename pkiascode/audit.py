"""``state/audit.jsonl``: an append-only, hash-chained log of every change ever applied.

Each line is one JSON object with at least ``seq, time, actor, action, kind, name, serial, sha256,
not_after, backend, plan, prev, hash``. ``hash`` is the SHA-256 of the line's canonical JSON (sorted
keys, no spaces) without ``hash``; ``prev`` is the previous line's ``hash`` (64 zeros for the
first). Changing, removing or reordering any line breaks the chain from there on.
"""

from __future__ import annotations

import getpass
import hashlib
import json
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = ["GENESIS", "canonical", "line_hash", "chain", "event", "head", "read_lines", "tail_hash", "entries",
           "verify", "actor"]

GENESIS = "0" * 64
#: actions after which the log knows an object's current certificate
ISSUING = ("create", "reissue", "renew", "rekey", "import")
REQUIRED = ("seq", "time", "actor", "action", "kind", "name", "serial", "sha256", "not_after", "backend",
            "plan", "prev", "hash")
#: the fields that are text in every line, and those that are text or null
_TEXT = ("time", "actor", "action", "kind", "name", "prev", "hash")
_TEXT_OR_NULL = ("serial", "sha256", "not_after", "backend", "plan")


_CANONICAL = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode
_LINE = json.JSONEncoder(sort_keys=True, ensure_ascii=False).encode


def canonical(obj: Mapping[str, Any]) -> bytes:
    return _CANONICAL(obj).encode()


def line_hash(obj: Mapping[str, Any]) -> str:
    return hashlib.sha256(canonical({k: v for k, v in obj.items() if k != "hash"})).hexdigest()


def chain(events: Iterable[Mapping[str, Any]], *, prev: str, seq: int) -> list[dict[str, Any]]:
    """Number and link ``events`` after a log whose last line has ``hash == prev`` and ``seq == seq``."""
    out = []
    for event in events:
        seq += 1
        line = dict(event, seq=seq, prev=prev)
        line["hash"] = prev = hashlib.sha256(_CANONICAL(line).encode()).hexdigest()  # = line_hash(line)
        out.append(line)
    return out


def event(action: str, kind: str, name: str, *, time: str, actor: str, serial: str | None, sha256: str | None,
          not_after: str | None, backend: str | None, plan: str | None, **extra: Any) -> dict[str, Any]:
    """One audit event with the fields every line has (`chain` adds seq, prev and hash)."""
    e: dict[str, Any] = {"time": time, "actor": actor, "action": action, "kind": kind, "name": name,
                         "serial": serial, "sha256": sha256, "not_after": not_after, "backend": backend,
                         "plan": plan}
    e.update(extra)
    return e


def render_lines(lines: Iterable[Mapping[str, Any]]) -> bytes:
    """Lines as they are written to audit.jsonl (keys sorted, one object per line)."""
    return "".join(_LINE(line) + "\n" for line in lines).encode()


def head(lines: Sequence[Mapping[str, Any]], prev: str, seq: int) -> dict[str, Any]:
    """The log's last line after appending ``lines`` to a log ending at (``prev``, ``seq``)."""
    return {"seq": lines[-1]["seq"], "hash": lines[-1]["hash"]} if lines else {"seq": seq, "hash": prev}


def read_lines(path: Path) -> list[str]:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)  # never through a link
    except FileNotFoundError:
        return []
    except OSError as e:
        from .errors import StateError

        raise StateError(f"cannot read {path.name}: {e.strerror} (a symbolic link?)") from None
    with os.fdopen(fd, "rb") as f:
        return f.read().decode("utf-8", errors="replace").splitlines()


def tail_hash(path: Path) -> tuple[str, int]:
    """(hash, seq) of the last line, reading only the end of the file (more of it for a long line)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)  # never through a link
    except FileNotFoundError:
        return GENESIS, 0
    except OSError as e:
        from .errors import StateError

        raise StateError(f"cannot read {path.name}: {e.strerror} (a symbolic link?)") from None
    with os.fdopen(fd, "rb") as f:
        size = f.seek(0, os.SEEK_END)
        window = 65536
        while True:
            start = max(0, size - window)
            f.seek(start)
            data = f.read().rstrip(b"\n")
            if not data:
                return GENESIS, 0
            cut = data.rfind(b"\n")
            if cut >= 0 or start == 0:
                break
            window *= 4  # the last line is longer than the window
    last_line = data[cut + 1:]
    try:
        last = json.loads(last_line)
        return str(last["hash"]), int(last["seq"])
    except (ValueError, KeyError, TypeError):
        from .errors import StateError

        raise StateError(f"the last line of {path.name} is damaged; run `pki audit verify`, and restore it "
                         f"with `git checkout -- {path.name}` if it was changed by hand") from None


def entries(lines: Sequence[str]) -> tuple[list[dict[str, Any]], list[str]]:
    """The log's lines, parsed, as far as the chain holds, and its first problem (empty when the
    whole chain is intact): each line a JSON object with the `REQUIRED` fields, its ``hash`` its
    content's, its ``prev`` the line before's, its ``seq`` the next number."""
    out: list[dict[str, Any]] = []
    prev, seq = GENESIS, 0
    for n, text in enumerate(lines, 1):
        if not text.strip():
            return out, [f"audit.jsonl:{n}: empty line"]
        try:
            obj = json.loads(text)
        except json.JSONDecodeError:
            return out, [f"audit.jsonl:{n}: not JSON"]
        if not isinstance(obj, dict):
            return out, [f"audit.jsonl:{n}: not a JSON object"]
        missing = [k for k in REQUIRED if k not in obj]
        if missing:
            return out, [f"audit.jsonl:{n}: missing {', '.join(missing)}"]
        if obj["hash"] != line_hash(obj):
            return out, [f"audit.jsonl:{n}: hash does not match the line's content (line changed)"]
        if obj["prev"] != prev:
            return out, [f"audit.jsonl:{n}: prev does not match line {n - 1}'s hash "
                         "(a line was removed, inserted or reordered)" if n > 1 else
                         "audit.jsonl:1: prev is not the genesis hash (lines before it were removed)"]
        wrong = [k for k in _TEXT if not isinstance(obj[k], str)] + [
            k for k in _TEXT_OR_NULL if obj[k] is not None and not isinstance(obj[k], str)]
        if wrong:
            return out, [f"audit.jsonl:{n}: {', '.join(wrong)} not a string"]
        if type(obj["seq"]) is not int or obj["seq"] != seq + 1:
            return out, [f"audit.jsonl:{n}: seq {obj['seq']} follows {seq}"]
        prev, seq = obj["hash"], obj["seq"]
        out.append(obj)
    return out, []


def verify(lines: Sequence[str] | None, inventory: Mapping[str, Any] | None, *,
           parsed: Sequence[Mapping[str, Any]] | None = None) -> list[str]:
    """Problems with the chain and with its agreement with the inventory; empty when all is well.
    ``parsed``: the lines as `entries` returned them for an intact chain (then ``lines`` is unused)."""
    if parsed is None:
        parsed, problems = entries(lines or ())
        if problems:
            return problems
    prev, seq = (parsed[-1]["hash"], parsed[-1]["seq"]) if parsed else (GENESIS, 0)
    known: dict[str, dict[str, Any]] = {}  # name -> what the log says exists
    for obj in parsed:
        action, name = obj["action"], obj["name"]
        if action in ISSUING:
            known[name] = {"kind": obj["kind"], "serial": obj["serial"], "sha256": obj["sha256"],
                           "seq": obj["seq"], "revoked": False, "retired": False}
        elif action == "revoke" and name in known:
            known[name]["revoked"] = True
            known[name]["retired"] = bool(obj.get("retired"))
    if inventory is None:
        return []
    problems: list[str] = []
    head = inventory.get("audit_head")
    if head is not None and (head.get("seq") != seq or head.get("hash") != prev):
        problems.append(f"audit.jsonl ends at line {seq} (hash {prev[:12]}…) but the inventory was written after "
                        f"line {head.get('seq')} (hash {str(head.get('hash'))[:12]}…): lines were removed or added")

    objects = inventory.get("objects", {})
    for name, rec in objects.items():
        k = known.get(name)
        where = f"inventory: {rec.get('kind')}.{name}"
        if k is None or k["retired"]:
            problems.append(f"{where} has no audit record" if k is None else f"{where} is listed but the audit "
                            f"log retired it (line {k['seq']})")
        elif k["serial"] != rec.get("serial") or k["sha256"] != rec.get("sha256"):
            problems.append(f"{where} serial {rec.get('serial')} does not match the audit log "
                            f"(serial {k['serial']}, line {k['seq']})")
        elif k["revoked"] != bool(rec.get("revoked")):
            problems.append(f"{where} revocation status disagrees with the audit log")
    for name, k in known.items():
        if name not in objects and not k["retired"]:
            problems.append(f"audit log: {k['kind']}.{name} (line {k['seq']}) is missing from the inventory")
    return problems


def actor() -> str:
    """Who applies: $PKI_ACTOR, else user@host."""
    explicit = os.environ.get("PKI_ACTOR")
    if explicit:
        return explicit
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = str(os.getuid())
    return f"{user}@{hostname()}"


def hostname() -> str:
    """This machine's name, as ``socket.gethostname()`` gives it (without importing ``socket``)."""
    if hasattr(os, "uname"):
        return os.uname().nodename
    import socket

    return socket.gethostname()
