"""The executor: makes exactly the changes of a `Plan`, crash-safely.

Order of work:

1. finish whatever an interrupted apply left (`recover`);
2. check every key store the plan touches (so a fault stops us before any change);
3. move keys (export, import, prove the new copy signs for the existing certificate);
4. make new keys, in parallel (RSA generation releases the GIL), journaling each request before
   the store is asked and each answer after;
5. sign certificates in plan order (parents before children), then the CRLs that changed;
6. write the whole outcome to a transaction file, roll it into ``state/``, commit ``state/``;
7. only then delete the keys nobody needs any more: right away when the branch has no upstream;
   else they are recorded in the commit (``pending_deletes`` in ``inventory.json``) and deleted once
   that commit is on the upstream (`finish_deletes`, which any later run from any clone does).
   ``pki apply --push`` (`apply_under_lock`: fetch, compare HEAD with the upstream's tip, apply, push)
   pushes first, deletes after, and on a rejected push `undo` puts everything back as it was.

A pki.toml without ``[pki] id`` that defines a shared key store gets one from its next apply, in the
same commit (`id_to_add`, shown in the plan by `with_id_note`), with ``legacy_keys = true`` in each
shared store that already holds keys state names: made before the id, they keep their names.

Killed anywhere before 6, nothing in ``state/`` changed and the journaled keys are deleted by the next
run; killed after, the next run completes the transaction. A committed certificate never loses its key.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import hashlib
import json
import os
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Protocol

from cryptography.hazmat.primitives import serialization

from . import audit, auditsign, ci
from .backend import KeyRef, KeyRequest, KeyStore, StoreContext
from .errors import BackendError, GitError, PkiError, StalePlanError, StateError
from .gitops import Upstream, check_ignored
from .keytypes import KeyType, key_type_of
from .model import CSR_STORE, Entry, Kind, Record, format_time, utc_now
from .plan import Action, Change, Plan
from .project import Project
from .state import StateDir, certificate_file, config_refusal, has_text_header, id_refusal, read_file
from .x509 import build_certificate, load_certificate, prove_key, public_key_der, sign_crl, ski_hex

__all__ = ["Progress", "NullProgress", "ApplyResult", "execute", "recover", "preflight", "complete", "abandon",
           "finish_deletes", "delete_old_keys", "undo", "inventory_at", "keys_in", "needs_id", "IdEdit",
           "legacy_stores", "planned_id_edit", "id_note", "with_id_note", "saved_without_id_note", "id_to_add",
           "Base", "apply_under_lock", "check_new_id", "lock_stores", "with_pending_notes", "state_keys", "retired_keys",
           "id_first_recorded", "id_taken"]


class Progress(Protocol):
    def phase(self, label: str, total: int) -> None: ...
    def advance(self, n: int = 1) -> None: ...
    def note(self, message: str) -> None: ...
    def done(self) -> None: ...


class NullProgress:
    def phase(self, label: str, total: int) -> None:
        pass

    def advance(self, n: int = 1) -> None:
        pass

    def note(self, message: str) -> None:
        pass

    def done(self) -> None:
        pass


@dataclasses.dataclass
class ApplyResult:
    """What an apply did: counts by action, the commit made (if any), warnings, the commit message."""

    summary: dict[str, int]
    commit: str | None
    warnings: list[str]
    message: str
    #: with ``--push``: the commit pushed (None: nothing to push)
    pushed: str | None = None


_DER = serialization.Encoding.DER


def _crash_point(name: str) -> None:
    """Fault injection for the restartability tests: ``PKI_TEST_CRASH_AT=after-keys`` (or after-sign,
    after-txn, after-state, after-commit) kills the process at that point exactly as SIGKILL would."""
    if os.environ.get("PKI_TEST_CRASH_AT") == name:
        os._exit(137)


def _ref(rec: Record) -> KeyRef:
    return KeyRef(rec.store, rec.key_id, rec.key_origin)


def _request(entry: Entry) -> KeyRequest:
    """What to ask ``entry``'s store for, with the fresh unique part the journal records first."""
    return KeyRequest(entry.name, entry.key, entry.kind is Kind.AUTHORITY, entry.exportable).with_suffix()


def needs_id(desired: Any) -> bool:
    """Whether an apply gives pki.toml a ``[pki] id``: it has none, and it defines a key store that
    other repositories may share (any but ``local``), which the id scopes keys and the lock in."""
    return desired.settings.id is None and any(spec.plugin != "local" for spec in desired.stores.values())


@dataclasses.dataclass(frozen=True)
class IdEdit:
    """What an apply writes into a pki.toml that `needs_id`, in its commit: ``pki_id`` (None in a plan:
    apply picks it), and ``legacy_keys = true`` in the table of each store in ``legacy``, a shared
    store holding keys that state names, made before the id (outside its namespace)."""

    pki_id: str | None
    legacy: tuple[str, ...]


def legacy_stores(project: Project) -> tuple[str, ...]:
    """The shared stores (any but ``local``) without ``legacy_keys = true`` that hold keys state names:
    its objects', the audit log's, its pending deletions', ``.pki/``'s lists of keys to delete and the
    key journal's. From state alone (an offline plan knows them too)."""
    used = state_keys(project)
    stores = project.desired().stores
    return tuple(sorted({name for name, _ in used if name in stores and stores[name].plugin != "local"
                         and stores[name].settings_dict().get("legacy_keys") is not True}))


def planned_id_edit(project: Project) -> IdEdit | None:
    """What a committing apply writes into pki.toml (`IdEdit`, its id not yet chosen), or None: only
    for a pki.toml that `needs_id`, when the commit can take it along (HEAD's, unedited) and no
    interrupted apply is pending."""
    if not needs_id(project.desired()) or project.txn_pending():
        return None
    repo = project.repository()
    head = repo.head() if repo is not None else None
    path = project.config_path
    try:
        if head is None or repo.show(head, repo.rel(path)) != path.read_bytes():
            return None
    except OSError:
        return None
    return IdEdit(None, legacy_stores(project))


def id_note(project: Project, edit: IdEdit | None) -> str | None:
    """The plan's line on pki.toml's ``[pki] id``: what apply writes into pki.toml (``edit``), or how to
    give it one; None when it needs none."""
    if edit is not None:
        legacy = "".join(f"; and legacy_keys = true in [backend.{name}], whose keys state names were made before "
                         "the id (they keep their names; new keys go into the namespace)" for name in edit.legacy)
        return (f"apply edits {project.config_path.name}, in its commit: a random [pki] id, which scopes this PKI's "
                f"keys and lock in shared key stores{legacy}")
    if not needs_id(project.desired()):
        return None
    return (f"{project.config_path.name} has no [pki] id, which scopes this PKI's keys and lock in shared key stores: "
            f"apply adds one (and legacy_keys = true where keys were made before it) when it commits and "
            f"{project.config_path.name} is HEAD's, unedited")


def with_id_note(project: Project, plan: Plan, edit: IdEdit | None) -> Plan:
    """``plan`` with `id_note` among its warnings (a plan without changes: as it is, apply edits nothing)."""
    note = None if plan.empty else id_note(project, edit)
    if note is None or note in plan.warnings:
        return plan
    return dataclasses.replace(plan, warnings=plan.warnings + (note,))


def with_pending_notes(project: Project, plan: Plan) -> Plan:
    """``plan`` with a warning for each pending deletion whose retirement the audit log does not record
    (`finish_deletes` keeps those): a reviewer sees a pull request's addition."""
    repo = project.repository()
    if not plan.pending_deletes or repo is None or repo.head() is None:
        return plan
    _, notes = _retired_by_log(project, [(store, ref) for store, ref, _ in plan.pending_deletes])
    new = tuple(n for n in notes if n not in plan.warnings)
    return dataclasses.replace(plan, warnings=plan.warnings + new) if new else plan


def _is_pending_note(project: Project, warning: Any) -> bool:
    """Whether ``warning`` is one `with_pending_notes` adds (a plan shows them; apply plans without)."""
    return isinstance(warning, str) and warning.startswith(f"{project.state.rel}/inventory.json lists key ") \
        and " for deletion, but " in warning


def saved_without_id_note(project: Project, saved: Mapping[str, Any], source: str,
                          edit: IdEdit | None) -> dict[str, Any]:
    """A saved plan's JSON without the `id_note` lines a plan of this project may show (the fresh plan
    gets its own: `with_id_note`) and without `with_pending_notes`' warnings (the plan shows them).
    `StalePlanError` when this apply edits pki.toml (``edit``) and the saved plan does not say so: a
    reviewer saw every edit apply makes."""
    warnings = saved.get("warnings")
    if not isinstance(warnings, list):
        return dict(saved)
    shown = id_note(project, edit)
    if edit is not None and shown not in warnings:
        raise StalePlanError(f"{source} does not show the edit this apply makes to {project.config_path.name} "
                             f"({shown}); nothing changed; run `pki plan --out` again")
    notes = {id_note(project, IdEdit(None, legacy_stores(project))), id_note(project, None)}
    return dict(saved, warnings=[w for w in warnings if w not in notes and not _is_pending_note(project, w)])


def id_to_add(project: Project, commit: bool) -> IdEdit | None:
    """What this apply writes into pki.toml (`planned_id_edit`, with a new random id), or None.
    Decided before any key store is made: the stores are made here with the new id (and
    ``legacy_keys`` where the edit sets it), so this apply's new keys and its lock are already in
    the namespace, and the keys made before it are still reachable."""
    edit = planned_id_edit(project) if commit else None
    if edit is None:
        return None
    from .scaffold import new_pki_id

    edit = IdEdit(new_pki_id(), edit.legacy)
    for spec in project.desired().stores.values():
        settings = {**spec.settings_dict(), **({"legacy_keys": True} if spec.name in edit.legacy else {})}
        project.store(spec.name, plugin=spec.plugin, settings=settings, pki_id=edit.pki_id)
    return edit


def state_keys(project: Project) -> set[tuple[str, str]]:
    """Every key ``state/`` names: its objects', the audit log's, its pending deletions', ``.pki/``'s
    lists of keys to delete and the key journal's."""
    from . import auditsign

    state = project.state
    inv = state.load()[0]
    return keys_in(inv["objects"]) | auditsign.key_refs(state) | set(state.pending_deletes()) \
        | set(state.deferred_deletes() or []) | {(str(a), str(b)) for a, b in inv["pending_deletes"]} \
        | set(state.key_journal()[0])


def logged_id(state: StateDir) -> str | None:
    """The ``[pki] id`` the audit log's newest line carrying one names (every line an apply writes
    carries the id it records), or None. Only an apply adds lines under a signed head (checked by
    every plan), so a pull request can neither add such a line nor change one."""
    entries, problems = state.audit_entries()
    if problems:
        return None
    return next((e["pki_id"] for e in reversed(entries) if isinstance(e.get("pki_id"), str)), None)


def id_first_recorded(project: Project, inv: Mapping[str, Any]) -> bool:
    """Whether this PKI's ``[pki] id`` is being recorded for the first time: the inventory ``inv`` (the
    work tree's) records none, or the audit log does not record it yet (`logged_id`): the inventory's
    ``pki_id`` alone proves nothing, a pull request can write it, in one commit or in several."""
    return inv.get("pki_id") is None or logged_id(project.state) != inv["pki_id"]


def id_taken(project: Project, pki_id: str, *, strict: bool = True) -> str | None:
    """Why ``pki_id`` may not become this PKI's id, or None: its namespace in a shared key store (the
    stores made with that id) already holds a key that ``state/`` does not name. Such a key is
    another PKI's (a pull request gave this one that PKI's id, review F-F), and once the id is this
    PKI's, `pki prune` would take it for an orphan. A store that cannot list its keys: a refusal
    too, unless not ``strict`` (a plan: the apply checks again)."""
    named = state_keys(project)
    for name, spec in sorted(project.desired().stores.items()):
        if spec.plugin == "local":
            continue
        try:
            foreign = sorted(r.id for r in project.store(name).list_keys() if (r.store, r.id) not in named)
        except BackendError as e:
            if not strict:
                continue
            return f"cannot list the keys of backend {name} to check the new [pki] id {pki_id} ({e})"
        if foreign:
            return (f"the [pki] id {pki_id} is new to {project.state.rel}/inventory.json, but its namespace in backend "
                    f"{name} already holds {len(foreign)} key(s) that state/ does not name ({foreign[0]}): another "
                    "PKI's id; set an id of this PKI's own in pki.toml's [pki] table (or none: apply adds one). "
                    "(If they are this PKI's own orphans, left before its audit log recorded the id, delete them "
                    "from the store: the next apply with changes records the id)")
    return None


@contextlib.contextmanager
def lock_stores(project: Project, id_edit: IdEdit | None) -> Iterator[list[KeyStore]]:
    """The key stores whose locks an apply takes (`lock.apply_lock`): those pki.toml's entries use,
    and for the apply that gives pki.toml its ``[pki] id`` (``id_edit``) also each shared one as it
    was without the id, whose lock the repository took until now: two such applies of one base
    exclude each other, although each locks in the namespace of the id it drew (review F-K)."""
    desired = project.desired()
    extra = []
    if id_edit is not None:
        for name in sorted({e.store for e in desired.entries.values()} & set(desired.stores)):
            spec = desired.stores[name]
            if spec.plugin != "local":
                extra.append(project.plugins.create(name, spec.plugin, spec.settings_dict(),
                                                    StoreContext(project.base_dir, project.work_dir)))
    try:
        yield project.used_stores() + extra
    finally:
        for store in extra:
            store.close()


def check_new_id(project: Project) -> None:
    """For ``pki plan``: `StateError` when pki.toml's ``[pki] id`` is not yet recorded in the inventory
    and is taken (`id_taken`), as the apply that would record it refuses (`execute`)."""
    desired = project.desired()
    pki_id = desired.settings.id
    if pki_id is None or all(spec.plugin == "local" for spec in desired.stores.values()):
        return
    if project.state.load()[0].get("pki_id") is None:
        why = id_taken(project, pki_id, strict=False)
        if why:
            raise StateError(why)


def preflight(project: Project, commit: bool) -> None:
    """Refuse to start if a local key directory is not git-ignored, or committing is impossible."""
    repo = project.repository()
    dirs = [d for name in project.desired().stores for d in project.store(name).local_key_dirs()]
    if repo is not None:
        committing = commit and project.state.root.exists()
        check_ignored(repo, dirs, project.base_dir)
        if committing:
            repo.check_can_commit(project.state.root)
    elif commit:
        raise PkiError(f"{project.base_dir} is not in a git repository: run `git init` (or `pki init`), "
                       "or apply with --no-commit")


# -- recovery ------------------------------------------------------------------------------------

def recover(project: Project, *, commit: bool, progress: Progress, upstream: Upstream | None = None,
            confirm: Callable[[], None] | None = None, importing: bool = False) -> list[str]:
    """Finish an interrupted apply and clean up after one (the keys it retired deleted, not those
    that committed state lists: `execute` does, after the plan). Returns notes for the user. A pending
    transaction that rewrites pki.toml beyond adding its ``[pki] id`` is finished only by `pki
    import` (``importing``): else a one-line error says how (`state.config_refusal`)."""
    state = project.state
    notes: list[str] = []
    state.remove_temporaries()
    txn = state.pending_txn()
    if txn is not None and not importing:
        why = config_refusal(txn, project.base_dir, project.config_path)
        if why:
            raise StateError(why)
    if txn is not None:
        progress.note("completing an interrupted apply")
        _finish(project, state, txn, commit=commit and txn["commit"], confirm=confirm)
        notes.append("completed an interrupted apply: " + txn["message"].splitlines()[0])
        project.reload()  # it may have written pki.toml (an import); plan from what is there now
        state = project.state
    else:
        orphans = _cleanup_orphans(project, state)
        if orphans:
            notes.append(f"deleted {orphans} key(s) left by an interrupted apply")
    deferred = state.deferred_deletes()
    repo = project.repository()
    if deferred is not None and commit and repo is not None:
        if confirm is not None:
            confirm()
        sha = repo.commit_state(state.root, {}, "pki apply: commit state written by `pki apply --no-commit`\n",
                                everything=True)
        if sha:
            notes.append(f"committed the state an earlier `pki apply --no-commit` wrote ({sha[:12]})")
        state.set_pending_deletes(state.pending_deletes() + deferred)
        state.clear_deferred_deletes()
    # The keys .pki/journal/deletes.json lists (this clone's own retired keys, which no committed state
    # chooses) go now, never one that state uses or a certificate in state names. The pending deletions
    # committed state lists (a pull request can write them) only after the plan was made and state
    # verified: `execute` (`finish_deletes`).
    notes.extend(_process_deletes(project, state, confirm=confirm))
    return notes


def delete_old_keys(project: Project, *, upstream: Upstream | None,
                   confirm: Callable[[], None] | None = None, used: set[tuple[str, str]] | None = None) -> list[str]:
    """Delete the keys retired earlier: `.pki/journal/deletes.json`'s and the committed pending
    deletions whose commit is on ``upstream`` (`finish_deletes`). Only after `Project.plan` verified
    state (``execute`` calls it, also for an empty plan); never a key that a certificate in state
    names (`_certified_keys`). Returns notes."""
    notes = _process_deletes(project, project.state, used, confirm=confirm)
    return notes + finish_deletes(project, upstream=upstream, confirm=confirm)


def _certified_digests(state: StateDir) -> dict[str, set[tuple[str, str]]]:
    """The SHA-256 (of the SubjectPublicKeyInfo DER) of the public key of every certificate in state
    (the inventory's records and the certificate files themselves), each with the key its object's
    record names."""
    inv = state.load()[0]
    digests: dict[str, set[tuple[str, str]]] = {}
    for name, obj in inv["objects"].items():
        ref = (str(obj["key"]["backend"]), str(obj["key"]["ref"]))
        if obj.get("public_key_sha256"):
            digests.setdefault(str(obj["public_key_sha256"]), set()).add(ref)
        try:
            data = read_file(state.cert_path(name))
            cert = load_certificate(data) if data is not None else None
        except (ValueError, PkiError):
            continue
        if cert is not None:
            digests.setdefault(hashlib.sha256(public_key_der(cert.public_key())).hexdigest(), set()).add(ref)
    return digests


def _key_digest(project: Project, store_name: str, key_id: str) -> str | None:
    """The SHA-256 of a key's public half where its store can tell (``public_key_digest``, else its
    public key); None when it cannot (a key already gone, a store that cannot show it)."""
    if store_name not in project.desired().stores:
        return None
    store = project.store(store_name)
    ref = KeyRef(store_name, key_id)
    try:
        tell = getattr(store, "public_key_digest", None)
        return tell(ref) if tell is not None else hashlib.sha256(public_key_der(store.public_key(ref))).hexdigest()
    except (BackendError, PkiError, ValueError):
        return None


def _certified(project: Project, store_name: str, key_id: str,
               digests: Mapping[str, set[tuple[str, str]]]) -> bool:
    """Whether the key ``key_id`` in ``store_name`` is the key of a certificate in state and no other
    copy of it is where that certificate's record says (a moved key's old copy may go): such a key is
    never deleted, however state lists it."""
    digest = _key_digest(project, store_name, key_id)
    if digest is None or digest not in digests:
        return False
    copies = [ref for ref in digests[digest] if ref != (store_name, key_id)]
    return not any(_key_digest(project, *ref) == digest for ref in copies)


# -- the transaction: the one way a change reaches state/ (apply and import) ----------------------

def complete(project: Project, txn: Mapping[str, Any], *, commit: bool,
             confirm: Callable[[], None] | None = None) -> str | None:
    """Make ``txn`` (`StateDir.transaction`) durable, write it into state/, commit it, then delete
    the keys nobody uses any more. From the first step on, a killed run is completed by the next
    one (`recover`). Returns the commit made, if any. ``confirm``: the apply lock's check, called
    before the commit and before deleting keys."""
    state = project.state
    state.begin(txn)
    _crash_point("after-txn")
    return _finish(project, state, txn, commit=commit, confirm=confirm)


def abandon(project: Project) -> None:
    """After a failure before `complete`: nothing reached state/; delete the keys made so far (a
    key store that fails now is asked again by the next run) and any temporary state files."""
    try:
        project.state.remove_temporaries()
        _cleanup_orphans(project, project.state)
    except Exception:  # noqa: BLE001 - the original error matters more
        pass


def keys_in(objects: Mapping[str, Mapping[str, Any]]) -> set[tuple[str, str]]:
    """(store, key id) of every key the inventory's objects use."""
    return {(o["key"]["backend"], o["key"]["ref"]) for o in objects.values()}


_keys_in = keys_in


def inventory_at(project: Project, commit: str) -> dict[str, Any]:
    """The inventory as git commit ``commit`` has it (checked like the work tree's)."""
    repo = project.repository()
    state = project.state
    return state.parse_inventory(repo.show(commit, repo.rel(state.inventory_path)) or b"")


def finish_deletes(project: Project, *, upstream: Upstream | None,
                   confirm: Callable[[], None] | None = None) -> list[str]:
    """Delete the keys ``state/`` records as pending deletion whose retiring commit is on ``upstream``
    (as last fetched): those the upstream's state lists as pending too, or all of them when HEAD is
    on the upstream (``upstream`` None: the branch's own upstream, if it has one). With no upstream
    (or no git), right away. Never a key that the work tree's
    state, HEAD's or the upstream's names. Returns notes for the user."""
    state = project.state
    inv = state.load()[0]
    pending = [(str(a), str(b)) for a, b in inv["pending_deletes"]]
    if not pending:
        return []
    from . import auditsign

    keep = keys_in(inv["objects"]) | auditsign.key_refs(state)
    repo = project.repository()
    head = repo.head() if repo is not None else None
    if upstream is None and head is not None:
        upstream = repo.upstream()  # (the branch's own; None on a detached HEAD or a branch tracking nothing)
    ready = pending
    if head is not None:
        keep |= keys_in(inventory_at(project, head)["objects"])
        if upstream is not None:
            tip = repo.tip(upstream)
            if tip is None:
                return [f"{len(pending)} retired key(s) wait until {upstream} exists and holds the commit that "
                        "retired them"]
            theirs = inventory_at(project, tip)
            keep |= keys_in(theirs["objects"])
            on_upstream = repo.is_ancestor(head, tip)
            retired_there = {(str(a), str(b)) for a, b in theirs["pending_deletes"]}
            ready = [k for k in pending if on_upstream or k in retired_there]
    ready = [k for k in ready if k not in keep]
    notes = []
    if ready:
        ready, refused = _retired_by_log(project, ready)
        notes += refused
    waiting = len(pending) - len(ready)
    if waiting and upstream is not None:
        notes.append(f"{waiting} retired key(s) are kept until the commit that retired them is on {upstream}; "
                     "the first `pki apply` after that deletes them")
    stores = project.desired().stores
    if ready and confirm is not None:
        confirm()
    digests = _certified_digests(state) if ready else set()
    for store_name, key_id in ready:
        if store_name not in stores:
            continue  # (dropped from the list by the next apply, with a note)
        if _certified(project, store_name, key_id, digests):
            notes.append(f"{state.rel}/inventory.json lists key {key_id} (backend {store_name}) for deletion, but "
                         "it is the key of a certificate in state: kept")
            continue
        try:
            project.store(store_name).delete(KeyRef(store_name, key_id))
        except BackendError as e:
            notes.append(f"old key {key_id} could not be deleted yet ({e}); the next apply retries")
    return notes


def retired_keys(state: StateDir) -> set[tuple[str, str]]:
    """The keys (store, reference) the audit log records an apply retiring (``retired_key``); only
    as good as the check of its signed heads that the caller made first (`Project.observe`)."""
    entries, problems = state.audit_entries()
    return set() if problems else {
        (e["retired_key"][0], e["retired_key"][1]) for e in entries
        if isinstance(e.get("retired_key"), list) and len(e["retired_key"]) == 2
        and all(isinstance(part, str) for part in e["retired_key"])}


def _retired_by_log(project: Project, keys: list[tuple[str, str]]) -> tuple[list[tuple[str, str]], list[str]]:
    """(the keys of ``keys``, pending deletions, whose retirement the audit log records; a note for each
    other one, kept). Every apply that retires a key says so in its line (``retired_key``), and only
    an apply can add lines under a signed head, which the plan before any deletion has checked: a
    pull request that lists another PKI's key for deletion, in one commit or in several, cannot
    show its retirement (review F-G). Keys retired before pkiascode recorded retirements are kept."""
    state, rel = project.state, project.state.rel
    retired = retired_keys(state)
    notes = [f"{rel}/inventory.json lists key {key_id} (backend {store}) for deletion, but {rel}/audit.jsonl does not "
             "record that an apply retired it: not a key an apply retired, kept; remove it from pending_deletes "
             "(a key retired before pkiascode recorded retirements: delete it from its store yourself)"
             for store, key_id in keys if (store, key_id) not in retired]
    return [k for k in keys if k in retired], notes


def _keys_at(project: Project, commit: str) -> set[tuple[str, str]]:
    """The keys the state of ``commit`` uses: its objects' and the audit log's signing keys."""
    from . import auditsign

    repo = project.repository()
    keys = keys_in(inventory_at(project, commit)["objects"])
    data = repo.show(commit, repo.rel(project.state.root / auditsign.FILE))
    if data is not None:
        keys |= {(k["backend"], k["ref"]) for k in auditsign.parse(data, f"{commit[:12]}:{auditsign.FILE}")["keys"]}
    return keys


def undo(project: Project, *, before: str, after: str) -> list[str]:
    """After a rejected push: HEAD (and its branch) back at ``before``, ``state/`` and pki.toml as
    ``before`` has them, then the keys ``after``'s state uses and ``before``'s does not deleted (the
    keys this run made, an audit key it pinned too; a key it retired is ``before``'s and stays).
    Returns notes."""
    repo = project.repository()
    made = _keys_at(project, after) - _keys_at(project, before)
    repo.move_head(before, after)
    repo.restore_paths(before, after, [repo.rel(project.state.root), repo.rel(project.config_path)])
    project.reload()
    notes = []
    left = 0
    for store_name, key_id in sorted(made):
        try:
            project.store(store_name).delete(KeyRef(store_name, key_id))
        except BackendError as e:
            left += 1
            notes.append(f"key {key_id} in backend {store_name} could not be deleted ({e})")
    if left:
        notes.append(f"{left} key(s) this run made are left as orphans: `pki prune` deletes them")
    return notes


def _referenced(state: StateDir) -> set[tuple[str, str]]:
    """The keys ``state/`` uses: its objects' and the audit log's signing keys."""
    return _keys_in(state.load()[0]["objects"]) | auditsign.key_refs(state)


def _cleanup_orphans(project: Project, state: StateDir, used: set[tuple[str, str]] | None = None) -> int:
    """Delete the keys journaled by a run whose outcome does not use them; clear the journal.
    ``used``: the keys the state references, when the caller knows them already."""
    journaled, unanswered = state.key_journal()
    if not journaled and not unanswered:
        state.clear_key_journal()
        return 0
    if used is None:
        used = _referenced(state)
    stale = [(s, i) for s, i in journaled if (s, i) not in used]
    count = 0
    stores = project.desired().stores
    for store_name, key_id in stale:
        if store_name not in stores:
            continue
        try:
            project.store(store_name).delete(KeyRef(store_name, key_id))
            count += 1
        except BackendError:
            state.set_pending_deletes(state.pending_deletes() + [(store_name, key_id)])
    for store_name, request in unanswered:
        # the process died inside the store call: the key, if made, is known only by its name. Never
        # touch a name that a recorded key carries (a store that found the name taken picked another).
        suffix = request.suffix
        if not suffix or any(s == store_name and suffix in key_id for s, key_id in used):
            continue
        if store_name in stores:
            try:
                project.store(store_name).discard(request)
            except BackendError:
                return count  # keep the journal: the next run tries again
    state.clear_key_journal()
    return count


def _process_deletes(project: Project, state: StateDir, used: set[tuple[str, str]] | None = None, *,
                     confirm: Callable[[], None] | None = None) -> list[str]:
    """The keys `.pki/journal/deletes.json` lists (retired with no upstream to wait for, or a
    deletion that failed): deleted now, unless the state uses them."""
    pending = state.pending_deletes()
    if not pending:
        return []
    if used is None:
        used = _referenced(state)
    if confirm is not None:
        confirm()
    left: list[tuple[str, str]] = []
    notes = []
    digests = _certified_digests(state)
    for store_name, key_id in pending:
        if (store_name, key_id) in used:
            continue  # never delete a key the state still needs
        if store_name not in project.desired().stores:
            notes.append(f"old key {key_id} in backend {store_name} was not deleted: the backend is no "
                         "longer defined")
            continue
        if _certified(project, store_name, key_id, digests):
            notes.append(f"old key {key_id} (backend {store_name}) is the key of a certificate in state: kept")
            continue
        try:
            project.store(store_name).delete(KeyRef(store_name, key_id))
        except BackendError as e:
            left.append((store_name, key_id))
            notes.append(f"old key {key_id} could not be deleted yet ({e}); the next apply retries")
    state.set_pending_deletes(left)
    return notes


def _state_files(txn: Mapping[str, Any], audit_log: bytes) -> dict[str, bytes | None]:
    """What a transaction leaves in state/ (None: deleted), by path in state/, for the commit."""
    files = {rel: None if content is None else content.encode() for rel, content in txn["files"].items()}
    files["inventory.json"] = txn["inventory"].encode()
    files["audit.jsonl"] = audit_log
    return files


def _finish(project: Project, state: StateDir, txn: Mapping[str, Any], *, commit: bool,
            confirm: Callable[[], None] | None = None) -> str | None:
    """Write the transaction into state/ and commit it; then retire old keys and forget the journal."""
    config = txn.get("config")
    if config is not None and (project.base_dir / config["path"]).resolve() != project.config_path.resolve():
        raise StateError(f".pki/journal/txn.json writes {config['path']}, not {project.config_path.name}: not a "
                         "transaction pkiascode made; remove .pki/journal/")
    state.roll_forward(txn)
    sealed = auditsign.seal(project, txn["audit"])  # sign the log's new head (recovery: if not yet signed)
    _crash_point("after-state")
    sha = None
    if commit:
        repo = project.repository()
        if repo is None:
            raise PkiError(f"{project.base_dir} is not in a git repository; state was written but not committed")
        also = {}
        if txn.get("config_commit"):
            config = txn["config"]
            also[repo.rel(project.base_dir / config["path"])] = config["content"].encode("utf-8")
        if confirm is not None:
            confirm()
        try:
            sha = repo.commit_state(state.root, {**_state_files(txn, state.read_audit()), **sealed}, txn["message"],
                                    also=also)
        except PkiError as e:
            raise type(e)(f"{e}; state/ is written and the next `pki apply` commits it") from None
    _crash_point("after-commit")
    retired = [(str(a), str(b)) for a, b in txn["retire_keys"]]
    if not commit and project.desired().settings.commit and project.repository() is not None:
        # `--no-commit` once: HEAD's certificates still need the old keys until a commit replaces them
        state.defer_deletes(retired)
    else:
        state.set_pending_deletes(state.pending_deletes() + retired)
    state.finish()
    _cleanup_orphans(project, state, _keys_in(json.loads(txn["inventory"])["objects"]) | auditsign.key_refs(state))
    return sha


# -- execution -----------------------------------------------------------------------------------

class _Run:
    def __init__(self, project: Project, plan: Plan, now: dt.datetime, progress: Progress, commit: bool,
                 upstream: Upstream | None = None, id_edit: IdEdit | None = None) -> None:
        self.project = project
        self.commit = commit
        self.id_edit = id_edit
        #: retired keys wait in the commit for the upstream (else: deleted right after the commit)
        self.retire_in_commit = commit and upstream is not None
        self.plan = plan
        self.now = now
        self.progress = progress
        self.desired = project.desired()
        self.state = project.state
        inv, records = self.state.load()  # recover() ran: no transaction is pending
        self.records: dict[str, Record] = records
        self.objects: dict[str, Any] = dict(inv["objects"])
        self.revocations: list[dict[str, Any]] = list(inv["revocations"])
        self.pending: list[tuple[str, str]] = [(str(a), str(b)) for a, b in inv["pending_deletes"]]
        self.files: dict[str, str | None] = {}
        self.events: list[dict[str, Any]] = []
        self.retire: list[tuple[str, str]] = []
        self.certs: dict[str, Any] = {}
        self.new_keys: dict[str, KeyRef] = {}
        self.crl_due: set[str] = set()
        self.signers: dict[tuple[str, str], Any] = {}
        #: the authorities whose certificate this run signed (their key needs no proof)
        self.made: set[str] = set()
        self.skis: dict[str, tuple[Any, str]] = {}
        self.requests: dict[str, KeyRequest] = {}
        self.plan_digest = plan.digest()
        self.plan_notes: list[str] = []
        self.actor = ci.actor()
        self.now_text = format_time(now)

    # helpers
    def put(self, rec: Record, *, public_key_sha256: str | None = None) -> None:
        """``rec`` into the inventory, with the SHA-256 of its public key (SubjectPublicKeyInfo DER):
        given for a new certificate, else kept from the object it replaces."""
        obj = rec.to_json()
        digest = public_key_sha256 or self.objects.get(rec.name, {}).get("public_key_sha256")
        if digest:
            obj["public_key_sha256"] = digest
        self.objects[rec.name] = obj

    def convert(self) -> None:
        """State written before the review formats: each object without its public key's digest gets
        it, and its certificate file gets the text lines (a one-time change, in this apply's commit)."""
        from cryptography.hazmat.primitives.serialization import Encoding

        for name, obj in self.objects.items():
            if "public_key_sha256" in obj or f"certs/{name}.pem" in self.files:
                continue
            data = read_file(self.state.cert_path(name))
            try:
                cert = load_certificate(data or b"")
            except ValueError:
                continue  # drift: the plan reissues it
            obj["public_key_sha256"] = hashlib.sha256(public_key_der(cert.public_key())).hexdigest()
            if not has_text_header(data or b""):
                self.files[f"certs/{name}.pem"] = certificate_file(cert, cert.public_bytes(Encoding.DER)).decode()

    def entry(self, name: str) -> Entry:
        return self.desired.entries[name]

    def cert(self, name: str) -> Any:
        if name not in self.certs:
            data = read_file(self.state.cert_path(name))
            try:
                if data is None:
                    raise ValueError("missing")
                self.certs[name] = load_certificate(data)
            except ValueError:
                raise PkiError(f"{self.state.rel}/certs/{name}.pem is missing or damaged; run `pki plan` "
                               "to see the repair") from None
        return self.certs[name]

    def check_kept_key(self, name: str, public_key: Any) -> None:
        """A certificate made again for the key its record names: that key must be the one of the
        certificate it replaces (the inventory's ``public_key_sha256``, checked against the file)."""
        want = self.objects.get(name, {}).get("public_key_sha256")
        if want is not None and hashlib.sha256(public_key_der(public_key)).hexdigest() != want:
            rec = self.records[name]
            raise PkiError(f"refusing to sign: {self.state.rel}/inventory.json names key {rec.key_id} (backend "
                           f"{rec.store}) for {name}, which is not the key of {self.state.rel}/certs/{name}.pem")

    def ski_of(self, name: str) -> str:
        """The key identifier of authority ``name``'s current certificate (cached per certificate)."""
        cert = self.cert(name)
        cached = self.skis.get(name)
        if cached is None or cached[0] is not cert:
            cached = (cert, ski_hex(cert.public_key()))
            self.skis[name] = cached
        return cached[1]

    def signer(self, name: str) -> Any:
        """Authority ``name``'s signer; a key this run did not just certify is first proven to be the
        one its certificate names (`prove_key`): a key reference edited in state never signs."""
        rec = self.records[name]
        key = (rec.store, rec.key_id)
        if key not in self.signers:
            signer = self.project.store(rec.store).signer(_ref(rec))
            if name not in self.made:
                prove_key(signer, self.cert(name).public_key(),
                          what=f"refusing to sign: {self.state.rel}/inventory.json names key {rec.key_id} "
                               f"(backend {rec.store}) for {name}, against {self.state.rel}/certs/{name}.pem")
            self.signers[key] = signer
        return self.signers[key]

    def event(self, change: Change | None, action: str, kind: Kind, name: str, *, serial: str | None,
              sha256: str | None, not_after: str | None, backend: str | None, **extra: Any) -> None:
        if change is not None:
            extra["reasons"] = list(change.reasons)
        pki_id = self.id_edit.pki_id if self.id_edit is not None else self.desired.settings.id
        if pki_id is not None:
            extra["pki_id"] = pki_id  # the id this apply records (`logged_id`)
        self.events.append(audit.event(action, kind.value, name, time=self.now_text, actor=self.actor,
                                       serial=serial, sha256=sha256, not_after=not_after, backend=backend,
                                       plan=self.plan_digest, **extra))

    def stores_touched(self) -> list[str]:
        names: set[str] = set()
        for change in self.plan.changes:
            for n in (change.name, self.records[change.name].issuer if change.name in self.records else None,
                      self.desired.entries[change.name].issuer if change.name in self.desired.entries else None):
                if n is None:
                    continue
                if n in self.desired.entries and not self.desired.entries[n].csr:
                    names.add(self.desired.entries[n].backend)
                if n in self.records and self.records[n].store != CSR_STORE:
                    names.add(self.records[n].store)
        return sorted(n for n in names if n in self.desired.stores)

    # phases
    def check_stores(self) -> None:
        for name in self.stores_touched():
            self.project.store(name).check()
        signers: set[str] = set()
        required: set[tuple[str, KeyType, bool]] = set()  # each (store, key type, new?) asked once
        for change in self.plan.changes:
            if change.makes_key or change.action is Action.MOVE_KEY:
                entry = self.entry(change.name)
                if not entry.csr and (entry.backend, entry.key, change.makes_key) not in required:
                    required.add((entry.backend, entry.key, change.makes_key))
                    self.project.store(entry.backend).require(entry.key, generate=change.makes_key)
            if change.makes_certificate and change.name in self.desired.entries:
                signers.add(self.entry(change.name).issuer or "")
            if change.action is Action.UPDATE_CRL:
                signers.add(change.name)
        # the existing keys that will sign: can their stores still sign with them?
        for name in signers:
            rec = self.records.get(name)
            if rec is not None and rec.store in self.desired.stores and not self.plan_moves(name):
                self.project.store(rec.store).require(KeyType(rec.key_type), generate=False)

    def prove_issuers(self) -> None:
        """Before any key is made: each existing authority key that will sign in this run (an issuer
        of a new certificate, an authority whose CRL is signed again) proves it is its certificate's."""
        names: set[str] = set()
        for change in self.plan.changes:
            entry = self.desired.entries.get(change.name)
            rec = self.records.get(change.name)
            if change.makes_certificate and entry is not None and entry.issuer is not None:
                names.add(entry.issuer)
            if change.action is Action.UPDATE_CRL:
                names.add(change.name)
            if change.action is Action.REVOKE and rec is not None and rec.issuer is not None:
                names.add(rec.issuer)
        for name in sorted(names):
            rec = self.records.get(name)
            if rec is None or rec.store not in self.desired.stores or self.plan_moves(name) \
                    or any(c.name == name and c.makes_certificate for c in self.plan.changes):
                continue  # made or moved in this run (`move_keys` proves a moved key itself)
            self.signer(name)

    def plan_moves(self, name: str) -> bool:
        return any(c.name == name and (c.makes_key or c.action is Action.MOVE_KEY) for c in self.plan.changes)

    def move_keys(self) -> None:
        moves = [c for c in self.plan.changes if c.action is Action.MOVE_KEY]
        if not moves:
            return
        self.progress.phase("moving keys", len(moves))
        for change in moves:
            entry, rec = self.entry(change.name), self.records[change.name]
            old_store, new_store = self.project.store(rec.store), self.project.store(entry.backend)
            key = old_store.release(_ref(rec))  # (to move it: a key kept from `pki export` may still move)
            request = _request(entry)
            self.state.journal_intents([(entry.backend, request.to_json())])
            try:
                new_ref = new_store.import_key(request, key)
            except BaseException:
                self.state.journal_key(entry.backend, None, request.suffix)
                raise
            self.state.journal_key(new_ref.store, new_ref.id, request.suffix)
            prove_key(new_store.signer(new_ref), self.cert(change.name).public_key(),
                      what=f"{entry.qualified} in backend {entry.backend}")
            new = dataclasses.replace(rec, store=entry.backend, plugin=new_store.plugin, key_id=new_ref.id,
                                      key_origin="imported", key_exportable=new_store.is_exportable(new_ref))
            self.records[change.name] = new
            self.put(new)  # (the same public key: its digest stays)
            self.retire.append((rec.store, rec.key_id))
            self.event(change, "move_key", entry.kind, entry.name, serial=rec.serial, sha256=rec.sha256,
                       not_after=format_time(rec.not_after), backend=entry.backend,
                       moved_from=rec.store, retired_key=[rec.store, rec.key_id])
            self.progress.advance()

    def generate_keys(self) -> None:
        wanted = [c for c in self.plan.changes if c.makes_key and not self.entry(c.name).csr]
        if not wanted:
            return
        self.requests = {c.name: _request(self.entry(c.name)) for c in wanted}
        self.state.journal_intents((self.entry(n).backend, r.to_json()) for n, r in self.requests.items())
        self.progress.phase("generating keys", len(wanted))
        requests = self.requests

        def make(change: Change) -> KeyRef:
            return self.project.store(self.entry(change.name).backend).generate(requests[change.name])

        parallel = len(wanted) > 1 and any(self.entry(c.name).key.slow_to_generate
                                           or self.project.store(self.entry(c.name).backend).plugin != "local"
                                           for c in wanted)
        if not parallel:
            for change in wanted:
                self._make_key(change)
                self.progress.advance()
            return
        import concurrent.futures  # (and `logging` with it): only for this

        workers = min(len(wanted), max(2, (os.cpu_count() or 2)))
        with concurrent.futures.ThreadPoolExecutor(workers, thread_name_prefix="pki-keygen") as pool:
            # the slowest (largest RSA) keys first, so that the longest one never starts last
            slowest_first = sorted(wanted, key=lambda c: (self.entry(c.name).key.slow_to_generate,
                                                          self.entry(c.name).key.bits), reverse=True)
            futures = {pool.submit(make, c): c for c in slowest_first}
            error: BaseException | None = None
            for future in concurrent.futures.as_completed(futures):
                name = futures[future].name
                try:
                    ref = future.result()
                except BaseException as e:  # noqa: BLE001 - re-raised after the others finish
                    # failed or cancelled: the store made nothing for it
                    self.state.journal_key(self.entry(name).backend, None, requests[name].suffix)
                    if error is None:
                        error = e
                        for f in futures:
                            f.cancel()
                    continue
                self.state.journal_key(ref.store, ref.id, requests[name].suffix)
                self.new_keys[name] = ref
                self.progress.advance()
            if error is not None:
                raise error

    def sign(self) -> None:
        makers = [c for c in self.plan.changes if c.makes_certificate]
        if makers:
            self.progress.phase("signing certificates", len(makers))
        for change in self.plan.changes:
            if change.action is Action.REVOKE:
                self.revoke(change)
            elif change.action is Action.UPDATE_CRL:
                self.crl_due.add(change.name)
            elif change.makes_certificate:
                self.make_certificate(change)
                self.progress.advance()

    def make_certificate(self, change: Change) -> None:
        """Sign ``change``'s certificate and record it (its key is in `new_keys` or the record)."""
        entry = self.entry(change.name)
        old = self.records.get(change.name)
        if entry.csr:
            info = self.project.csrs()[entry.name]
            public_key, key_id, origin, exportable, plugin = info.public_key, info.digest, "csr", False, CSR_STORE
            store_name = CSR_STORE
        else:
            ref = self.new_keys.get(change.name) if change.makes_key else _ref(old)  # type: ignore[arg-type]
            assert ref is not None
            store = self.project.store(ref.store)
            public_key = store.public_key(ref)
            if not change.makes_key:
                self.check_kept_key(change.name, public_key)
            key_id, origin, exportable, plugin = ref.id, ref.origin, store.is_exportable(ref), store.plugin
            store_name = ref.store
        if entry.issuer is None:
            if entry.csr:
                raise PkiError(f"{entry.qualified}: a self-signed authority cannot be made from a CSR")
            signer = self.project.store(store_name).signer(KeyRef(store_name, key_id, origin))
            issuer_cert = None
            not_after = self.now + dt.timedelta(seconds=entry.validity)
        else:
            issuer_cert = self.cert(entry.issuer)
            signer = self.signer(entry.issuer)
            not_after = min(self.now + dt.timedelta(seconds=entry.validity), issuer_cert.not_valid_after_utc)
        ski = ski_hex(public_key)
        cert = build_certificate(entry, public_key=public_key, signer=signer, issuer_cert=issuer_cert,
                                 now=self.now, not_after=not_after, ski=bytes.fromhex(ski),
                                 subject=self.project.csrs()[entry.name].subject if entry.csr else None)
        der = cert.public_bytes(_DER)
        rec = Record(
            name=entry.name, kind=entry.kind, issuer=entry.issuer, serial=format(cert.serial_number, "x"),
            sha256=hashlib.sha256(der).hexdigest(), not_before=cert.not_valid_before_utc,
            not_after=cert.not_valid_after_utc, subject=entry.subject_text(),
            # a key made here from the entry has the entry's type; any other is read from the key
            key_type=entry.key.value if change.makes_key and not entry.csr else key_type_of(public_key).value,
            store=store_name, plugin=plugin, key_id=key_id, key_origin=origin, key_exportable=exportable,
            ski=ski, issuer_ski=self.ski_of(entry.issuer) if entry.issuer else None,
            spec=entry.spec(), spec_digest=self.desired.spec_digests[entry.name], revoked=None,
            crl=old.crl if old is not None and entry.kind is Kind.AUTHORITY else None,
        )
        revocation, retired = None, {}
        if old is not None:
            if change.revoke_reason and not old.revoked:
                revocation = self.add_revocation(old, change.revoke_reason)
            if (old.store, old.key_id) != (rec.store, rec.key_id) and old.store != CSR_STORE:
                self.retire.append((old.store, old.key_id))
                retired = {"retired_key": [old.store, old.key_id]}
        self.records[entry.name] = rec
        self.put(rec, public_key_sha256=hashlib.sha256(public_key_der(public_key)).hexdigest())
        self.certs[entry.name] = cert
        self.made.add(entry.name)
        self.signers.pop((rec.store, rec.key_id), None)
        self.files[f"certs/{entry.name}.pem"] = certificate_file(cert, der).decode()
        if entry.kind is Kind.AUTHORITY:
            self.crl_due.add(entry.name)
        self.event(change, change.action.value, entry.kind, entry.name, serial=rec.serial, sha256=rec.sha256,
                   not_after=format_time(rec.not_after), backend=rec.store,
                   **({"revoked_serial": old.serial} if old is not None and change.revoke_reason else {}),
                   **({"revocation": revocation} if revocation is not None else {}), **retired)

    def _make_key(self, change: Change) -> None:
        request = self.requests[change.name]
        store_name = self.entry(change.name).backend
        try:
            ref = self.project.store(store_name).generate(request)
        except BaseException:
            self.state.journal_key(store_name, None, request.suffix)
            raise
        self.state.journal_key(ref.store, ref.id, request.suffix)
        self.new_keys[change.name] = ref

    def add_revocation(self, rec: Record, reason: str, date: str | None = None) -> dict[str, Any] | None:
        """The inventory's revocation of ``rec`` (None for a root), which its audit line also records
        whole (``revocation``): plan checks the inventory's against the signed log."""
        if rec.issuer is None:
            return None  # a self-signed root is on no CRL: distrust it by removing it from trust stores
        revocation = {"issuer": rec.issuer, "serial": rec.serial, "name": rec.name,
                      "date": date or format_time(self.now), "reason": reason,
                      "not_after": format_time(rec.not_after)}
        self.revocations.append(revocation)
        self.crl_due.add(rec.issuer)
        return revocation

    def revoke(self, change: Change) -> None:
        rec = self.records[change.name]
        entry = self.desired.entries.get(change.name)
        date = entry.revoked.date if entry is not None and entry.revoked and entry.revoked.date else None
        revocation = None
        if change.revoke_reason and not rec.revoked:
            revocation = self.add_revocation(rec, change.revoke_reason, date)
        # A revoked entry that stays listed keeps its key (its record still names it); the key goes
        # when the entry leaves pki.toml, unless keep_revoked_keys.
        retired = {}
        if change.retire and rec.store != CSR_STORE and not self.desired.settings.keep_revoked_keys:
            self.retire.append((rec.store, rec.key_id))
            retired = {"retired_key": [rec.store, rec.key_id]}
        if change.retire:
            self.records.pop(change.name)
            self.objects.pop(change.name, None)
            self.files[f"certs/{change.name}.pem"] = None
            if rec.kind is Kind.AUTHORITY:
                self.files[f"crl/{change.name}.crl"] = None
                # its CRL is gone with it: an authority made again under this name starts a clean one
                self.revocations = [r for r in self.revocations if r["issuer"] != change.name]
                self.crl_due.discard(change.name)
        else:
            new = dataclasses.replace(rec, revoked={"reason": change.revoke_reason or "unspecified",
                                                    "date": date or format_time(self.now)})
            self.records[change.name] = new
            self.put(new)
        self.event(change, "revoke", rec.kind, rec.name, serial=rec.serial, sha256=rec.sha256,
                   not_after=format_time(rec.not_after), backend=rec.store,
                   reason=change.revoke_reason, retired=change.retire,
                   **({"revocation": revocation} if revocation is not None else {}), **retired)

    def sign_crls(self) -> None:
        due = [n for n in self.desired.entries if n in self.crl_due and n in self.records]
        if not due:
            return
        self.progress.phase("signing CRLs", len(due))
        for name in due:
            entry, rec = self.entry(name), self.records[name]
            previous = rec.crl or {}
            number = int(previous.get("number") or 0) + 1
            revs = [r for r in self.revocations if r["issuer"] == name]
            data, info = sign_crl(self.cert(name), self.signer(name), revs, number=number, now=self.now,
                                  validity=entry.crl_validity)
            digest = info["sha256"]
            new = dataclasses.replace(rec, crl=info)
            self.records[name] = new
            self.put(new)
            self.files[f"crl/{name}.crl"] = data.decode()
            change = next((c for c in self.plan.changes if c.name == name and c.action is Action.UPDATE_CRL), None)
            self.event(change, "update_crl", Kind.AUTHORITY, name, serial=None, sha256=digest,
                       not_after=info["next_update"], backend=rec.store, crl_number=number)
            self.progress.advance()

    def message(self, config: bytes | None) -> str:
        """The commit message: a summary line, a line per change, and the trailers (``Pki-Plan:``,
        ``Pki-Config:`` the blob id of pki.toml as applied, who applied and from which CI run)."""
        counts = self.plan.summary()
        head = "pki apply: " + ", ".join(f"{n} {Action(a).past}" for a, n in counts.items())
        body = [f"{c.action.value} {c.qualified}: {'; '.join(c.reasons)}" for c in self.plan.changes]
        repo = self.project.repository()
        blob = repo.blob_id(config) if repo is not None and config is not None else None
        return head + "\n\n" + "\n".join(body) + "\n\n" + ci.trailers(plan_digest=self.plan_digest, config_blob=blob)

    def still_pending(self) -> list[tuple[str, str]]:
        """The committed pending deletions that are still to do: those whose key its store still has
        (one query per store). A store no longer in pki.toml: dropped, with a warning."""
        by_store: dict[str, list[KeyRef]] = {}
        for store_name, key_id in self.pending:
            if store_name not in self.desired.stores:
                self.plan_notes.append(f"old key {key_id} in backend {store_name} was not deleted: the backend is "
                                       "no longer defined")
                continue
            by_store.setdefault(store_name, []).append(KeyRef(store_name, key_id))
        left = []
        for store_name, refs in by_store.items():
            try:
                gone = self.project.store(store_name).missing(refs)
            except BackendError:
                gone = set()
            left += [(r.store, r.id) for r in refs if r not in gone]
        return left

    def new_config(self) -> tuple[dict[str, str] | None, bool, bytes | None]:
        """(the txn's ``config``, whether the commit takes it, pki.toml's bytes as applied): a
        pki.toml that `needs_id` gets the run's `IdEdit` (`scaffold.with_pki_id`), committed with
        state/; with none (pki.toml edited, or not committing) a note says how."""
        path = self.project.config_path
        try:
            text = path.read_bytes()
        except OSError:
            return None, False, None
        edit = self.id_edit
        if edit is None:
            note = id_note(self.project, None)
            if note is not None:
                self.plan_notes.append(note)
            return None, False, text
        from .scaffold import with_pki_id

        new_text = with_pki_id(text.decode("utf-8"), edit.pki_id, edit.legacy)
        config = {"path": path.relative_to(self.project.base_dir).as_posix(), "content": new_text}
        legacy = f" and legacy_keys = true in [backend.{'], ['.join(edit.legacy)}]" if edit.legacy else ""
        self.plan_notes.append(f"{path.name} had no [pki] id: this apply added id = \"{edit.pki_id}\"{legacy}, "
                               "committed with state/")
        return config, True, new_text.encode("utf-8")

    def transaction(self, commit: bool) -> dict[str, Any]:
        self.convert()
        config, config_commit, config_bytes = self.new_config()
        pending = self.still_pending() + (self.retire if self.retire_in_commit else [])
        return self.state.transaction(objects=self.objects, revocations=self.revocations, files=self.files,
                                      events=self.events, message=self.message(config_bytes),
                                      retire_keys=[] if self.retire_in_commit else self.retire,
                                      commit=commit, config=config, config_commit=config_commit,
                                      pending_deletes=pending,
                                      pki_id=self.id_edit.pki_id if self.id_edit else self.desired.settings.id)


def execute(project: Project, plan: Plan, *, commit: bool, progress: Progress | None = None,
            now: dt.datetime | None = None, still_locked: Callable[[], None] | None = None,
            upstream: Upstream | None = None, delete_retired: bool = True,
            id_edit: IdEdit | None = None) -> ApplyResult:
    """Apply ``plan``. The caller holds the apply lock and has run `recover`.

    ``upstream``: the remote branch the commit is for (retired keys wait for it, recorded in the
    commit); ``delete_retired`` False: the caller deletes them itself (`finish_deletes`, after its
    push). ``still_locked``: the lock's ``confirm``, called before writing, committing and deleting.
    ``id_edit``: what to write into pki.toml with this commit (`id_to_add`)."""
    inv = project.state.load()[0]
    pki_id = id_edit.pki_id if id_edit else project.desired().settings.id
    why = id_refusal(inv, pki_id, project.state.rel)
    shared = any(spec.plugin != "local" for spec in project.desired().stores.values())
    if why is None and pki_id is not None and id_edit is None and shared and id_first_recorded(project, inv):
        why = id_taken(project, pki_id)  # (an id this apply drew itself is new: `scaffold.new_pki_id`)
    if why:
        raise StateError(why)
    repo = project.repository()
    if upstream is None and commit and repo is not None:
        upstream = repo.upstream()
    if plan.empty:  # (the caller made the plan: state is verified, retired keys may go now)
        notes = delete_old_keys(project, upstream=upstream, confirm=still_locked) if delete_retired else []
        return ApplyResult({}, None, notes, "")
    progress = progress or NullProgress()
    run = _Run(project, plan, now or utc_now(), progress, commit, upstream, id_edit)
    run.check_stores()
    auditsign.check_ready(project, plan)  # the audit key can sign (before any change)
    run.prove_issuers()  # an issuer key that is not its certificate's stops us before any change
    try:
        run.move_keys()
        run.generate_keys()
        _crash_point("after-keys")
        run.sign()
        run.sign_crls()
        _crash_point("after-sign")
        if still_locked is not None:
            still_locked()  # nothing written yet: a lost lock stops us here
    except BaseException:
        abandon(project)  # nothing reached state/: the keys made so far are orphans
        raise
    try:
        run.events += auditsign.plan_events(project, plan, time=run.now_text, actor=run.actor,
                                            digest=run.plan_digest)
        txn = run.transaction(commit)
    except BaseException:
        abandon(project)
        raise
    progress.phase("writing and committing state" if commit else "writing state", 1)
    sha = complete(project, txn, commit=commit, confirm=still_locked)
    progress.advance()
    notes = run.plan_notes + _process_deletes(project, run.state, _keys_in(run.objects), confirm=still_locked)
    if delete_retired:
        notes += finish_deletes(project, upstream=upstream, confirm=still_locked)
    progress.done()
    return ApplyResult(plan.summary(), sha, list(plan.warnings) + notes, txn["message"])


# -- one apply under the lock, with or without --push ---------------------------------------------

@dataclasses.dataclass(frozen=True)
class Base:
    """What an apply starts from, under the lock: with ``--push`` ``head`` and ``tip`` (the fetched
    upstream's) are equal, or ``head`` holds unpushed applies on ``tip``; without, both None.
    ``interrupted``: the digest of the plan an interrupted apply was making (completed by `recover`)."""

    head: str | None
    tip: str | None
    interrupted: str | None


def apply_under_lock(project: Project, *, commit: bool, push: bool, upstream: Upstream | None,
                     still_locked: Callable[[], None], progress: Progress, notify: Callable[[str], None],
                     choose: Callable[[Base], Plan | None],
                     id_edit: IdEdit | None = None) -> tuple[Plan | None, ApplyResult | None]:
    """One apply; the caller holds the apply lock (``still_locked``: its ``confirm``).

    Fetch the upstream (with ``push``, or to finish deletions waiting for it), finish an interrupted
    apply (`recover`), with ``push`` refuse unless HEAD is the upstream's tip (or holds only unpushed
    applies on it) and ``state/`` and pki.toml are HEAD's; ``choose`` (the caller plans, shows, asks)
    returns the plan to execute, or None to stop. `execute` it; with ``push``, push the commit, and on a
    rejected push `undo` everything and raise; then delete the retired keys. ``notify``: notes for the
    user as they come. Returns (the plan, what was done), or (None, None) when ``choose`` stopped."""
    from .errors import GitError, LockError
    from .gitops import PushRejected

    repo = project.repository()
    interrupted = (project.state.pending_txn() or {}).get("plan")
    if push:
        repo.fetch(upstream)
    elif upstream is not None and project.state.load()[0]["pending_deletes"]:
        try:  # (only to finish deletions: a stale view of the upstream only makes them wait)
            repo.fetch(upstream)
        except GitError as e:
            notify(f"warning: {e}; retired keys wait for the next run")
    for note in recover(project, commit=commit, progress=progress, upstream=upstream, confirm=still_locked):
        notify(note)
    head = tip = None
    if push:
        head, tip = _push_base(project, upstream, notify)
    plan = choose(Base(head, tip, interrupted))
    if plan is None:
        return None, None
    result = execute(project, plan, commit=commit, progress=progress, still_locked=still_locked, upstream=upstream,
                     delete_retired=not push, id_edit=id_edit)
    landing = result.commit or head
    if push and landing != tip:
        try:
            still_locked()
            repo.push(upstream, landing)
        except (PushRejected, LockError) as e:
            for note in undo(project, before=tip, after=landing):
                notify(note)
            raise PkiError(f"{e}; another apply landed first (or the push was refused): undone, nothing is left "
                           f"behind (HEAD and state/ are back at {tip[:12]}); re-plan on the new tip of "
                           f"{upstream}") from None
        result.pushed = landing
        result.warnings.extend(finish_deletes(project, upstream=upstream, confirm=still_locked))
    return plan, result


def _push_base(project: Project, upstream: Upstream, notify: Callable[[str], None]) -> tuple[str, str]:
    """For ``--push``, after the fetch: (HEAD, the upstream's tip). Refuses unless HEAD is the tip or
    only unpushed applies on it (an earlier apply here committed and was killed before its push: this
    run pushes it too), and unless ``state/`` and pki.toml are exactly HEAD's (an undo puts back HEAD's)."""
    repo = project.repository()
    head, tip = repo.head(), repo.tip(upstream)
    if tip is None:
        raise PkiError(f"{upstream} does not exist on the remote: push the branch first")
    paths = [repo.rel(project.state.root), repo.rel(project.config_path)]
    if head != tip:
        if head is None or repo.is_ancestor(head, tip):
            raise PkiError(f"state is behind {upstream}: re-plan on the new tip")
        unpushed = repo.apply_commits(tip, head, paths) if repo.is_ancestor(tip, head) else None
        if unpushed is None:
            raise PkiError(f"HEAD is not {upstream}'s tip and not an apply on it: check out {upstream} "
                           "and apply there")
        notify(f"{unpushed} apply commit(s) on {upstream}'s tip were not pushed: this apply pushes them")
    dirty = repo.changed_paths(paths)
    if dirty:
        raise PkiError(f"--push applies a clean checkout: {', '.join(dirty[:3])} differ from HEAD; commit or "
                       "restore them")
    return head, tip
