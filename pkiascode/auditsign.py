"""``state/audit-signatures.json``: signed heads of the audit log, and the pinned keys that signed them.

The hash chain of ``audit.jsonl`` shows a changed line only to someone who knows a hash from before
the change: re-hashing every line gives a chain that is intact again. So each apply signs the log's
new head (``seq`` and ``hash`` of its last line) with a key held in the PKI's key store, and
``pki audit verify`` checks every signature against the key pinned in this file.

The file (schema-checked on every read: it is committed, so it is input)::

    {"format_version": 1,
     "keys":  [{"fingerprint", "public_key", "algorithm", "backend", "ref", "since_seq", "time",
                "endorsement"}],
     "heads": [{"seq", "hash", "time", "key", "signature"}]}

- ``keys`` is the chain of pins. The first is pinned on first use (the first apply that signs). A
  later one comes only from a reviewed rekey: ``pki plan --replace @audit`` plans it, apply records
  it as an audit line (`plan_events`) and `seal` pins the new key from that line on, with the
  previous key's signature over the new pin as its ``endorsement``, so the chain of pins verifies
  from the first. ``public_key`` is the
  base64 DER SubjectPublicKeyInfo, ``fingerprint`` its SHA-256; ``backend``/``ref`` say where the
  private key is (never key material).
- ``heads`` is append-only: one per apply, signed by the key pinned last when it was made.

Where the key is: the store of the first root authority in pki.toml (the PKI's best-kept key
store), made non-exportable (Vault Transit, a PKCS#11 token; the local store marks it
``.noexport``), ed25519 where the store makes such keys, else ecdsa-p256.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
from collections.abc import Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from . import audit
from .backend import ENTRY_NAME, KeyRef, KeyRequest, KeyStore
from .errors import BackendError, StateError, UnsupportedKeyType
from .keytypes import KeyType

if TYPE_CHECKING:
    from .plan import Plan
    from .project import Project
    from .state import StateDir

__all__ = ["FILE", "KEY_NAME", "REKEY_ACTION", "load", "render", "seal", "plan_events", "verify", "verify_files", "key_refs",
           "head_message", "pin_message", "check_history", "check_ready", "pinned_key_missing", "check_pinned"]

FILE = "audit-signatures.json"
FORMAT = 1
#: the name the audit key is requested under (stores add a unique part); `pki plan --replace` word
KEY_NAME = "audit-log"
#: the audit log's action for a rekey of the audit key (``pki plan --replace @audit``)
REKEY_ACTION = "rekey_audit_key"
_HEX64 = re.compile(r"[0-9a-f]{64}")
_B64 = re.compile(r"[A-Za-z0-9+/]+={0,2}")
_TIME = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ")
_KEY_FIELDS = {"fingerprint", "public_key", "algorithm", "backend", "ref", "since_seq", "time", "endorsement"}
_HEAD_FIELDS = {"seq", "hash", "time", "key", "signature"}
_ALGORITHMS = ("ed25519", "ecdsa-p256")
_MAX_BYTES = 64 * 1024 * 1024


# -- the signed messages -------------------------------------------------------------------------

def head_message(head: Mapping[str, Any]) -> bytes:
    """What a head's signature covers: a domain tag, then seq, hash, time and key in canonical JSON."""
    return b"pkiascode audit head 1\n" + audit.canonical({k: head[k] for k in ("seq", "hash", "time", "key")})


def pin_message(pin: Mapping[str, Any], previous: str) -> bytes:
    """What an endorsement covers: the new pin (its key, from which seq, when) and the previous key."""
    fields = {k: pin[k] for k in ("fingerprint", "public_key", "algorithm", "since_seq", "time")}
    return b"pkiascode audit key 1\n" + audit.canonical(dict(fields, previous=previous))


def _sign(signer: Any, data: bytes) -> str:
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519

    if isinstance(signer, ed25519.Ed25519PrivateKey):
        sig = signer.sign(data)
    elif isinstance(signer, ec.EllipticCurvePrivateKey):
        sig = signer.sign(data, ec.ECDSA(hashes.SHA256()))
    else:
        raise StateError(f"the audit key is a {type(signer).__name__}, not ed25519 or ecdsa-p256")
    return base64.b64encode(sig).decode()


def _check_signature(public_der: bytes, algorithm: str, signature: str, data: bytes) -> bool:
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519

    try:
        key = serialization.load_der_public_key(public_der)
        sig = base64.b64decode(signature, validate=True)
        if algorithm == "ed25519" and isinstance(key, ed25519.Ed25519PublicKey):
            key.verify(sig, data)
        elif (algorithm == "ecdsa-p256" and isinstance(key, ec.EllipticCurvePublicKey)
              and isinstance(key.curve, ec.SECP256R1)):
            key.verify(sig, data, ec.ECDSA(hashes.SHA256()))
        else:
            return False
    except (InvalidSignature, ValueError, TypeError):
        return False
    return True


def _spki(public_key: Any) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return public_key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


# -- the file ------------------------------------------------------------------------------------

def _empty() -> dict[str, Any]:
    return {"format_version": FORMAT, "keys": [], "heads": []}


def _problem_with_key(k: object) -> str | None:
    if not isinstance(k, dict) or set(k) != _KEY_FIELDS:
        return f"fields must be {', '.join(sorted(_KEY_FIELDS))}"
    if not (isinstance(k["fingerprint"], str) and _HEX64.fullmatch(k["fingerprint"])):
        return "fingerprint must be 64 hex digits"
    if not (isinstance(k["public_key"], str) and _B64.fullmatch(k["public_key"])):
        return "public_key must be base64"
    if hashlib.sha256(base64.b64decode(k["public_key"])).hexdigest() != k["fingerprint"]:
        return "fingerprint is not the SHA-256 of public_key"
    if k["algorithm"] not in _ALGORITHMS:
        return f"algorithm must be one of {', '.join(_ALGORITHMS)}"
    if not (isinstance(k["backend"], str) and ENTRY_NAME.fullmatch(k["backend"])):
        return "backend must be a pki.toml backend name"
    if not (isinstance(k["ref"], str) and 0 < len(k["ref"]) <= 512 and k["ref"].isprintable()):
        return "ref must be a printable key reference"
    if not (isinstance(k["since_seq"], int) and not isinstance(k["since_seq"], bool) and k["since_seq"] >= 1):
        return "since_seq must be a positive integer"
    if not (isinstance(k["time"], str) and _TIME.fullmatch(k["time"])):
        return "time must be YYYY-MM-DDTHH:MM:SSZ"
    if k["endorsement"] is not None and not (isinstance(k["endorsement"], str) and _B64.fullmatch(k["endorsement"])):
        return "endorsement must be base64 or null"
    return None


def _problem_with_head(h: object) -> str | None:
    if not isinstance(h, dict) or set(h) != _HEAD_FIELDS:
        return f"fields must be {', '.join(sorted(_HEAD_FIELDS))}"
    if not (isinstance(h["seq"], int) and not isinstance(h["seq"], bool) and h["seq"] >= 1):
        return "seq must be a positive integer"
    if not (isinstance(h["hash"], str) and _HEX64.fullmatch(h["hash"])):
        return "hash must be 64 hex digits"
    if not (isinstance(h["key"], str) and _HEX64.fullmatch(h["key"])):
        return "key must be a key fingerprint (64 hex digits)"
    if not (isinstance(h["time"], str) and _TIME.fullmatch(h["time"])):
        return "time must be YYYY-MM-DDTHH:MM:SSZ"
    if not (isinstance(h["signature"], str) and _B64.fullmatch(h["signature"])):
        return "signature must be base64"
    return None


def parse(data: bytes, where: str) -> dict[str, Any]:
    """The file's content checked against its schema; `StateError` naming ``where`` otherwise."""
    try:
        obj = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise StateError(f"{where}: not JSON") from None
    if not isinstance(obj, dict) or set(obj) != {"format_version", "keys", "heads"}:
        raise StateError(f"{where}: must have exactly format_version, keys and heads")
    if obj["format_version"] != FORMAT:
        raise StateError(f"{where}: format_version {obj['format_version']!r} is not {FORMAT} "
                         "(written by another pkiascode version?)")
    if not isinstance(obj["keys"], list) or not isinstance(obj["heads"], list):
        raise StateError(f"{where}: keys and heads must be lists")
    for n, k in enumerate(obj["keys"]):
        why = _problem_with_key(k)
        if why:
            raise StateError(f"{where}: keys[{n}]: {why}")
    for n, h in enumerate(obj["heads"]):
        why = _problem_with_head(h)
        if why:
            raise StateError(f"{where}: heads[{n}]: {why}")
    if obj["heads"] and not obj["keys"]:
        raise StateError(f"{where}: heads without a pinned key")
    return obj


def load(state: StateDir) -> dict[str, Any] | None:
    """The parsed file, or None when there is none (a log from before signed heads, or no apply yet)."""
    from .state import read_file

    data = read_file(state.root / FILE, limit=_MAX_BYTES)
    if data is None:
        return None
    return parse(data, f"{state.rel}/{FILE}")


def render(sigs: Mapping[str, Any]) -> bytes:
    """One field per line, keys sorted: a new head is a few added lines in a diff."""
    return (json.dumps(sigs, indent=2, sort_keys=True) + "\n").encode()


def key_refs(state: StateDir) -> set[tuple[str, str]]:
    """(backend, ref) of every pinned audit key: keys `pki keys`/`pki prune` must count as used."""
    sigs = load(state)
    return {(k["backend"], k["ref"]) for k in sigs["keys"]} if sigs else set()


# -- signing (apply) -----------------------------------------------------------------------------

def audit_backend(project: Project) -> str:
    """The store the audit key is made in: the first root authority's (pki.toml order; for `pki
    import`, whose pki.toml is written by the transaction, the inventory's), else the first entry's."""
    desired = project.desired()
    entries = list(desired.entries.values())
    objects = list(project.state.load()[0]["objects"].values())
    candidates = ([e.backend for e in entries if e.issuer is None and not e.csr]
                  + [o["key"]["backend"] for o in objects if o["kind"] == "authority" and o.get("issuer") is None]
                  + [e.backend for e in entries] + [o["key"]["backend"] for o in objects])
    for backend in candidates:
        if backend in desired.stores:
            return backend
    raise StateError("no key store for the audit key: pki.toml defines no entry in a backend it defines")


def _new_key(store: KeyStore, time: str, since_seq: int, state: StateDir) -> dict[str, Any]:
    """A new non-exportable audit key in ``store`` and its pin (without endorsement). Journaled like
    every key apply makes (`StateDir.journal_intents`), so a run killed while the store makes it
    leaves nothing behind: the next run discards the half-made key."""
    key_type = KeyType.ED25519
    try:
        store.require(key_type, generate=True)
    except UnsupportedKeyType:
        key_type = KeyType.ECDSA_P256
        store.require(key_type, generate=True)
    request = KeyRequest(KEY_NAME, key_type, True, False).with_suffix()
    state.journal_intents([(store.name, request.to_json())])
    ref = store.generate(request)
    state.journal_key(ref.store, ref.id, request.suffix)
    der = _spki(store.public_key(ref))
    pin = {"fingerprint": hashlib.sha256(der).hexdigest(), "public_key": base64.b64encode(der).decode(),
           "algorithm": key_type.value, "backend": ref.store, "ref": ref.id, "since_seq": since_seq,
           "time": time, "endorsement": None}
    return pin


def check_pinned(project: Project, pin: Mapping[str, Any], state_rel: str) -> KeyRef:
    """The pinned key's reference, after proving the store's key there is the pinned one
    (`StateError` otherwise: the file names a key with another public key)."""
    if pin["backend"] not in project.desired().stores:
        raise StateError(f"the audit key is in backend {pin['backend']}, which pki.toml no longer defines; "
                         f"define it again (the pinned key is in {state_rel}/{FILE})")
    ref = KeyRef(pin["backend"], pin["ref"])
    if hashlib.sha256(_spki(project.store(pin["backend"]).public_key(ref))).hexdigest() != pin["fingerprint"]:
        raise StateError(f"backend {pin['backend']}: key {pin['ref']} is not the audit key pinned in "
                         f"{state_rel}/{FILE} (fingerprint {pin['fingerprint'][:16]}…)")
    return ref


def _signer(project: Project, pin: Mapping[str, Any], state_rel: str) -> Any:
    """The pinned key's signer, after proving the store's key is the pinned one."""
    return project.store(pin["backend"]).signer(check_pinned(project, pin, state_rel))


def pinned_key_missing(project: Project, pin: Mapping[str, Any]) -> bool:
    """Whether ``pin``'s key is missing from its store (or its store from pki.toml)."""
    if pin["backend"] not in project.desired().stores:
        return True
    return bool(project.store(pin["backend"]).missing([KeyRef(pin["backend"], pin["ref"])]))


def plan_events(project: Project, plan: Plan, *, time: str, actor: str, digest: str) -> list[dict[str, Any]]:
    """The audit events apply adds for ``plan`` (`audit.event` lines): one for a rekey of the audit
    key, which `seal` then carries out: asked for (``--replace @audit``), or the pinned key is
    missing from its store and the plan replaces missing keys (``--rekey-missing``). Names the key
    it replaces, and whether that key can endorse the new one (``endorsed``: false when it is lost)."""
    from .plan import Action

    sigs = load(project.state)
    pin = sigs["keys"][-1] if sigs and sigs["keys"] else None
    asked = any(c.action is Action.REKEY_AUDIT_KEY for c in plan.changes)
    lost = pin is not None and (asked or plan.rekey_missing) and pinned_key_missing(project, pin)
    if not (asked or lost):
        return []
    return [audit.event(REKEY_ACTION, "audit", KEY_NAME, time=time, actor=actor, serial=None, sha256=None,
                        not_after=None, backend=audit_backend(project), plan=digest,
                        replaces=pin["fingerprint"] if pin else None, endorsed=pin is not None and not lost)]


def _rekey(appended: str) -> tuple[int, bool] | None:
    """(seq, endorsed) of the last rekey event among the lines apply just appended (its own text,
    from the transaction: parsed with care all the same)."""
    found = None
    for text in appended.splitlines():
        try:
            obj = json.loads(text)
        except ValueError:
            raise StateError("the audit lines of the transaction are not JSON") from None
        if isinstance(obj, dict) and obj.get("action") == REKEY_ACTION:
            seq = obj.get("seq")
            if not isinstance(seq, int) or isinstance(seq, bool) or seq < 1:
                raise StateError("a rekey line of the transaction has no seq")
            found = (seq, obj.get("endorsed") is not False)
    return found


def seal(project: Project, appended: str = "", *, now: str | None = None) -> dict[str, bytes]:
    """Sign the audit log's head, as it is in state/ now, unless it is signed already. ``appended``:
    the lines this apply appended (the transaction's ``audit``). The first signature pins a new key;
    a rekey line among ``appended`` pins a new key endorsed by the current one, from that line on.

    Idempotent: apply calls it after writing state/, and again when it completes an interrupted
    apply (a key made by a run killed before it wrote the file is left unused in its store).
    Returns ``{FILE: content}`` for the commit ({} while the log is empty)."""
    from .model import format_time, utc_now
    from .state import atomic_write

    state = project.state
    last, seq = audit.tail_hash(state.audit_path)
    if seq == 0:
        return {}
    sigs = load(state) or _empty()
    heads, keys = sigs["heads"], sigs["keys"]
    if heads and (heads[-1]["seq"], heads[-1]["hash"]) == (seq, last):
        return {FILE: render(sigs)}
    if heads and heads[-1]["seq"] >= seq:
        raise StateError(f"{state.rel}/{FILE} has a head at line {heads[-1]['seq']} but {state.rel}/audit.jsonl "
                         f"ends at line {seq}; run `pki audit verify`")
    appended_lines = len([t for t in appended.splitlines() if t.strip()])
    if heads and heads[-1]["seq"] != seq - appended_lines:  # a new head covers every line before it
        raise StateError(f"{state.rel}/audit.jsonl has lines after its last signed head (line {heads[-1]['seq']}) "
                         f"that this run did not write: nothing is signed over them; run `pki audit verify`")
    time = now or format_time(utc_now())
    rekey = _rekey(appended)
    if not keys:  # first use: pin a new key
        keys.append(_new_key(project.store(audit_backend(project)), time, seq, state))
    elif rekey is not None and keys[-1]["since_seq"] < rekey[0] <= seq:
        old = keys[-1]
        pin = _new_key(project.store(audit_backend(project)), time, rekey[0], state)
        if rekey[1]:  # else the old key is lost: an unendorsed pin, which verify refuses unless trusted
            pin["endorsement"] = _sign(_signer(project, old, state.rel), pin_message(pin, old["fingerprint"]))
        keys.append(pin)
    pin = keys[-1]
    head = {"seq": seq, "hash": last, "time": time, "key": pin["fingerprint"]}
    head["signature"] = _sign(_signer(project, pin, state.rel), head_message(head))
    heads.append(head)
    data = render(sigs)
    atomic_write(state.root / FILE, data)
    return {FILE: data}


# -- verifying -----------------------------------------------------------------------------------

def verify(lines: Sequence[str] | Sequence[Mapping[str, Any]], sigs: Mapping[str, Any] | None,
           trusted: Sequence[str] = ()) -> tuple[list[str], list[str]]:
    """(problems, warnings) of the signed heads against the log's lines (whose chain `audit.verify`
    checked; as text, or as `audit.entries` parsed them): every pin endorsed by the one before, every
    head signed by the key pinned for it and naming a line of the log with that hash, and the log's
    last line a signed head."""
    problems: list[str] = []
    if sigs is not None and sigs["keys"] and not sigs["heads"] and lines:
        return [f"{FILE}: a key is pinned but no head is signed: the signed heads were removed"], []
    if sigs is None or not sigs["heads"]:
        if lines:
            return [], [f"{FILE}: no signed heads (a log written before pkiascode signed them, or the file was "
                        "removed): only the hash chain was checked, and a rewritten chain would pass; the next "
                        "apply pins a key and signs"]
        return [], []
    keys = sigs["keys"]
    warnings: list[str] = []
    for n, k in enumerate(keys[1:], 1):
        prev = keys[n - 1]
        if k["since_seq"] <= prev["since_seq"]:
            problems.append(f"{FILE}: keys[{n}] since_seq {k['since_seq']} does not follow keys[{n - 1}]")
        elif k["endorsement"] is None and k["fingerprint"] in trusted:
            warnings.append(f"{FILE}: keys[{n}] (fingerprint {k['fingerprint'][:16]}…) is not endorsed by "
                            f"keys[{n - 1}] (its key was lost); trusted as --trust-pin says")
        elif k["endorsement"] is None:
            problems.append(f"{FILE}: keys[{n}] (fingerprint {k['fingerprint'][:16]}…) is not endorsed by "
                            f"keys[{n - 1}]: pinned without the previous key (lost, or the pinned key was "
                            "replaced); if a reviewed rekey made it, verify with --trust-pin "
                            f"{k['fingerprint']}")
        elif not _check_signature(
                base64.b64decode(prev["public_key"]), prev["algorithm"], k["endorsement"],
                pin_message(k, prev["fingerprint"])):
            problems.append(f"{FILE}: keys[{n}] (fingerprint {k['fingerprint'][:16]}…) is not endorsed by "
                            f"keys[{n - 1}] (fingerprint {prev['fingerprint'][:16]}…): the pinned key was replaced")
    if problems:
        return problems, warnings
    if keys[0]["endorsement"] is not None:
        problems.append(f"{FILE}: keys[0] has an endorsement but nothing before it to make one")
    hashes: dict[int, str] = {}
    rekeys: dict[int, Any] = {}  # seq of each rekey line -> the fingerprint it replaces
    for line in lines:
        obj = json.loads(line) if isinstance(line, str) else line  # (audit.verify checked every line)
        hashes[obj["seq"]] = obj["hash"]
        if obj["action"] == REKEY_ACTION:
            rekeys[obj["seq"]] = obj.get("replaces")
    signers = {h["key"] for h in sigs["heads"]}
    for n, k in enumerate(keys):
        if k["fingerprint"] not in signers:
            problems.append(f"{FILE}: keys[{n}] (fingerprint {k['fingerprint'][:16]}…) signed no head: an apply "
                            "pins a key and signs with it at once")
        elif n and (k["since_seq"] not in rekeys or rekeys[k["since_seq"]] != keys[n - 1]["fingerprint"]):
            problems.append(f"{FILE}: keys[{n}] is pinned from line {k['since_seq']}, which is not the "
                            f"{REKEY_ACTION} line that replaced keys[{n - 1}]")
    if problems:
        return problems, warnings
    previous = 0
    for n, head in enumerate(sigs["heads"]):
        where = f"{FILE}: heads[{n}] (line {head['seq']})"
        if head["seq"] <= previous:
            problems.append(f"{where}: does not follow the head before it")
            continue
        previous = head["seq"]
        # the key pinned last at or before this seq
        pin = next((k for k in reversed(keys) if k["since_seq"] <= head["seq"]), None)
        if pin is None or pin["fingerprint"] != head["key"]:
            problems.append(f"{where}: signed by key {head['key'][:16]}…, not the key pinned for it")
            continue
        if not _check_signature(base64.b64decode(pin["public_key"]), pin["algorithm"], head["signature"],
                                head_message(head)):
            problems.append(f"{where}: the signature does not verify with the pinned key {pin['fingerprint'][:16]}…")
            continue
        if hashes.get(head["seq"]) != head["hash"]:
            problems.append(f"{where}: audit.jsonl's line {head['seq']} is not the line that was signed "
                            "(the log was rewritten)" if head["seq"] in hashes else
                            f"{where}: audit.jsonl has no line {head['seq']} (lines were removed)")
    if not problems and sigs["heads"][-1]["key"] != keys[-1]["fingerprint"]:
        problems.append(f"{FILE}: keys[{len(keys) - 1}] is pinned after the last signed head, which keys"
                        f"[{len(keys) - 1}] did not sign (an apply pins a key and signs with it at once)")
    if not problems and lines:
        last = sigs["heads"][-1]["seq"]
        if last != len(lines):
            problems.append(f"{FILE}: the last signed head is line {last} but audit.jsonl has {len(lines)} lines: "
                            "lines after the last signature were not written by an apply")
    return problems, warnings


def check_history(project: Project, sigs: Mapping[str, Any] | None) -> list[str]:
    """The pins in the file start with the key that every commit adding a file of its name pinned:
    git's history, not the file, says which key was pinned on first use. Every such commit in all of
    history, on every side of every merge, at any path (a move counts as an add: a pull request that
    moves the state directory, pki.toml, or the whole project does not start a new history), fails
    closed: only a file pkiascode did not write (it does not parse) pins nothing. So a repository
    holds one PKI; a conflict the operator has reviewed (another PKI's file in the same history) is
    settled with ``--trust-pin`` for keys[0]. Git runs with literal paths and no replace objects
    (`git_env`). Empty when not in git or the file was never committed. A shallow clone's history
    may not reach those commits: a `PlanError` saying to fetch the full history, once there is a log
    to check."""
    import os
    import posixpath
    import subprocess

    from .errors import PlanError
    from .gitops import git_env

    state = project.state
    repo = project.repository()
    if repo is None:
        return []
    where = f"{state.rel}/{FILE}"

    def git(*args: str, stdin: bytes | None = None, env: Mapping[str, str] | None = None) -> bytes:
        return subprocess.run(["git", "-C", str(repo.top), *args], input=stdin, capture_output=True, check=True,
                              env=git_env(env)).stdout

    try:
        shallow = git("rev-parse", "--is-shallow-repository").strip() == b"true"
    except subprocess.CalledProcessError:
        shallow = False
    if shallow and (sigs is not None or os.path.lexists(state.audit_path)):
        raise PlanError(f"this clone of git's history is shallow, and which audit key {where} pinned first is "
                        "in that history: fetch it whole (`git fetch --unshallow`; actions/checkout with "
                        "fetch-depth: 0, GitLab CI with GIT_DEPTH: 0)")
    if sigs and sigs["keys"] and sigs["keys"][0]["fingerprint"] in project.trusted_pins:
        return []  # (--trust-pin for keys[0]: the operator has settled it; nothing to read)
    try:  # every commit that adds a file of that name, anywhere (all of history and merges, moves as adds;
        # the one pathspec is ours, with glob magic: git lists only those files)
        log = git("log", "--full-history", "-m", "--no-renames", "--diff-filter=A", "--format=%x01%H", "--raw",
                  "--no-abbrev", "-z", "--", f":(glob)**/{FILE}", env={"GIT_LITERAL_PATHSPECS": "0"})
    except subprocess.CalledProcessError:
        return []  # no commit yet
    added: dict[str, tuple[str, str]] = {}  # blob id -> (a commit that adds it, its path)
    tokens, commit, n = log.split(b"\0"), "", 0
    while n < len(tokens):  # "\x01<commit>", then per file ":<modes> <ids> A" and its path
        token = tokens[n].lstrip(b"\n")
        if token.startswith(b"\x01"):
            commit = token[1:].decode("ascii", "replace")
        elif token.startswith(b":") and n + 1 < len(tokens):
            n += 1
            path = tokens[n].decode("utf-8", "surrogateescape")
            if posixpath.basename(path) == FILE and len(token.split()) > 3:
                added.setdefault(token.split()[3].decode("ascii", "replace"), (commit, path))
        n += 1
    firsts = []  # (the oldest first, as git lists them: the first pin is among them)
    for blob, data in _blobs(git, list(reversed(added))[:_MAX_HISTORIC_FILES]):
        commit, path = added[blob]
        try:
            firsts.append((commit, path, parse(data, path)))
        except StateError:
            continue  # not a file pkiascode wrote: it pins nothing
    for commit, path, first in firsts:
        if not first["keys"]:
            continue
        pinned = first["keys"][0]["fingerprint"]
        if not sigs or not sigs["keys"]:
            return [f"{where}: missing or without keys, but commit {commit[:12]} pinned audit key {pinned[:16]}… "
                    f"({path})"]
        if sigs["keys"][0]["fingerprint"] != pinned:
            return [f"{where}: keys[0] is {sigs['keys'][0]['fingerprint'][:16]}…, but commit {commit[:12]} "
                    f"pinned {pinned[:16]}… ({path}): the pinned key was swapped, or that file is another PKI's "
                    f"(one PKI per repository; if you reviewed that history and keys[0] is this PKI's: "
                    f"--trust-pin {sigs['keys'][0]['fingerprint']})"]
    if len(added) > _MAX_HISTORIC_FILES:  # (the oldest agree; the rest are not read)
        oldest = added[next(iter(reversed(added)))]
        return [f"{where}: git's history adds {len(added)} different files of that name (the oldest in commit "
                f"{oldest[0][:12]}, {oldest[1]}), more than pkiascode reads ({_MAX_HISTORIC_FILES}): a pull "
                "request may have added them to hide one; review that history, and only if keys[0] is the key "
                "that oldest commit pinned, --trust-pin keys[0]"]
    return []


#: a first pin is about a kilobyte: a larger file of that name in history pins nothing we read
_MAX_HISTORIC = 64 * 1024
#: how many files of that name history may hold before the check stops (say --trust-pin after review)
_MAX_HISTORIC_FILES = 1000
#: what one ``git cat-file --batch`` may hand over at once
_BATCH_BYTES = 16 * 1024 * 1024


def _blobs(git: Any, ids: list[str]) -> Iterator[tuple[str, bytes]]:
    """(id, content) of each blob of ``ids`` no larger than `_MAX_HISTORIC` (a pull request can put
    many large files of that name into history: read in batches of at most `_BATCH_BYTES`)."""
    if not ids:
        return
    sizes = {}
    for line in git("cat-file", "--batch-check", stdin="\n".join(ids).encode()).decode().splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[1] == "blob" and parts[2].isdigit() and int(parts[2]) <= _MAX_HISTORIC:
            sizes[parts[0]] = int(parts[2])
    batch: list[str] = []
    total = 0
    for oid in [*sizes, None]:
        if batch and (oid is None or total + sizes[oid] > _BATCH_BYTES):
            out, pos = git("cat-file", "--batch", stdin="\n".join(batch).encode()), 0
            for each in batch:
                start = out.index(b"\n", pos) + 1
                yield each, out[start:start + sizes[each]]
                pos = start + sizes[each] + 1
            batch, total = [], 0
        if oid is not None:
            batch.append(oid)
            total += sizes[oid]


def verify_files(state: StateDir, inventory: Mapping[str, Any]) -> list[str]:
    """Every certificate and CRL file is the one the inventory records, checked as a plan checks
    state (`StateDir.drift`, then `Project.verify_state`), but strictly: a file a plan would repair
    is a problem here; and no such file is there that the inventory does not list."""
    import os

    from .errors import PlanError
    from .model import Observed
    from .project import Project

    records = state.records(inventory)
    cert_drift, crl_drift = state.drift(records)
    problems = [f"{cert_drift[n]} ({records[n].qualified})" for n in sorted(cert_drift)]
    problems += [f"{crl_drift[n]} ({records[n].qualified}'s CRL)" for n in sorted(crl_drift)]
    observed = Observed(records=records, revocations=tuple(inventory["revocations"]), cert_drift=cert_drift,
                        crl_drift=crl_drift, digest="")
    try:
        Project.verify_state(state, observed, inventory)
    except PlanError as e:
        problems.append(str(e))
    crls = {n for n, rec in records.items() if rec.crl}
    for directory, suffix, known in ((state.certs, ".pem", set(records)), (state.crls, ".crl", crls)):
        try:
            names = sorted(os.listdir(directory))
        except FileNotFoundError:
            continue
        for file in names:
            if file.startswith(".") or (file.endswith(suffix) and file[:-len(suffix)] in known):
                continue
            problems.append(f"{state.rel}/{directory.name}/{file}: not in the inventory")
    return problems


def check_ready(project: Project, plan: Plan) -> None:
    """Before an apply changes anything: the pinned audit key can sign (or, on first use, the store
    that will make one can make it). A pinned key missing from its store is an error unless the
    plan replaces it (``--replace @audit``, or ``--rekey-missing``). Raises one-line errors."""
    from .plan import Action

    state = project.state
    sigs = load(state)
    if sigs and sigs["keys"]:
        pin = sigs["keys"][-1]
        if pinned_key_missing(project, pin):
            if plan.rekey_missing or any(c.action is Action.REKEY_AUDIT_KEY for c in plan.changes):
                return  # replaced, unendorsed (`plan_events`)
            raise StateError(f"the audit key {pin['ref']} is missing from backend {pin['backend']} (a fresh "
                             "clone?): apply where it is, or pin a new one with --replace @audit (`pki audit "
                             "verify` then needs --trust-pin for it: the lost key cannot endorse it)")
        _signer(project, pin, state.rel)
        return
    try:
        project.store(audit_backend(project)).require(KeyType.ECDSA_P256, generate=True)
    except UnsupportedKeyType as e:
        raise BackendError(f"the audit key cannot be made: {e}") from None
