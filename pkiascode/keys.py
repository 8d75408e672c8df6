"""``pki keys`` and ``pki prune``: the keys in this PKI's namespace of each key store, and what each is.

A key is *in use* when an object of ``state/`` names it (or it signs the audit log's heads), *pending deletion* when ``state/`` (or
``.pki/``'s list of deletions to retry) records that an apply retired it, and an *orphan* otherwise:
left by an apply that was killed between its commit and its push, or undone without reaching its
key store. `orphans` is what ``pki prune`` deletes: the keys that none of the work tree's state,
HEAD's and the upstream's names or lists as pending. A PKI without a ``[pki] id`` that uses a shared
store (Vault, PKCS#11) prunes nothing: its keys share one namespace with every other PKI without an
id, whose keys it cannot tell from orphans.

Another PKI's keys are never taken for orphans (review F6): a pull request that sets ``[pki] id`` to
another PKI's id would make that PKI's namespace look like this one's. So `orphans` (and `key_rows`)
refuse unless pki.toml's id is the one the inventories record (``pki_id`` of the work tree's, HEAD's
and the upstream's) and the one HEAD's and the upstream's committed pki.toml say; unless every key
the inventories name is accepted by its store as this PKI's (the stores refuse references outside
their namespace); and every candidate is checked the same way before it is offered for deletion.

An id is this PKI's only once an apply recorded it (review F-F): a pull request can give a PKI without
an id another PKI's id, and write it into the inventory too. So both refuse, for a pki.toml with an
id and a shared store, while an inventory does not record the id, and while HEAD's or its first
parent's inventory has objects but no id unless the id's namespace holds only keys state names
(`apply.id_taken`, the check the apply that records an id makes).
"""

from __future__ import annotations

import tomllib
from collections.abc import Iterable
from typing import Any

from . import auditsign
from .apply import id_first_recorded, id_taken, inventory_at, keys_in, needs_id
from .backend import KeyRef
from .errors import BackendError, PkiError
from .gitops import Upstream
from .project import Project
from .state import id_refusal

__all__ = ["never_committed", "key_rows", "orphans", "upstream_tip", "check_namespace"]


def _users(objects: dict[str, Any]) -> dict[tuple[str, str], str]:
    return {(o["key"]["backend"], o["key"]["ref"]): f"{o['kind']}.{name}" for name, o in objects.items()}


def _listed(project: Project) -> list[KeyRef]:
    """Every key of every store pki.toml defines (`KeyStore.list_keys`), by store."""
    refs: list[KeyRef] = []
    for name in sorted(project.desired().stores):
        try:
            refs += project.store(name).list_keys()
        except BackendError as e:
            raise PkiError(f"cannot list the keys of backend {name}: {e}") from None
    return refs


def _committed_id(project: Project, commit: str) -> tuple[bool, str | None]:
    """(whether ``commit`` has pki.toml, its ``[pki] id``); `PkiError` if it cannot be read."""
    repo = project.repository()
    data = repo.show(commit, repo.rel(project.config_path))
    if data is None:
        return False, None
    try:
        pki = tomllib.loads(data.decode("utf-8")).get("pki", {})
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
        raise PkiError(f"{commit[:12]}:{project.config_path.name} cannot be read ({e}); prune compares the [pki] id "
                       "with it") from None
    value = pki.get("id") if isinstance(pki, dict) else None
    return True, value if isinstance(value, str) else None


def check_namespace(project: Project, inventories: Iterable[tuple[str, dict[str, Any]]],
                    commits: Iterable[str | None] = ()) -> None:
    """Refuse (`PkiError`, one line) unless this PKI's key namespace is the one its state was made
    in: pki.toml's ``[pki] id`` is the id each inventory records (``(where, inventory)``) and the id
    of pki.toml in each of ``commits`` (HEAD, the upstream's tip), and every key the inventories'
    objects name is one its store accepts as this PKI's. With an id and a shared store, also: each
    inventory records the id, and where it is new (`apply.id_first_recorded`) its namespace holds
    only keys state names (`apply.id_taken`)."""
    configured = project.desired().settings.id
    shared = configured is not None and not all(s.plugin == "local" for s in project.desired().stores.values())
    inventories = list(inventories)
    stores = project.desired().stores
    named_stores = {store for _, inv in inventories for store, _ in keys_in(inv["objects"])}
    named_stores |= {store for store, _ in auditsign.key_refs(project.state)}
    undefined = sorted(named_stores - set(stores))
    if undefined:  # (its keys would be listed, under another store over the same place, as orphans)
        raise PkiError(f"state names keys in backend {undefined[0]}, which pki.toml does not define: define it "
                       "again (or move the keys with `pki apply`) before listing keys; no key is listed as an "
                       "orphan or deleted")
    for where, inv in inventories:
        refused = id_refusal(inv, configured, where)
        if refused:
            raise PkiError(f"{refused}; no key is listed as an orphan or deleted")
    for commit in commits:
        if commit is None:
            continue
        found, committed = _committed_id(project, commit)
        if found and committed != configured:
            raise PkiError(f"the [pki] id is {configured or 'unset'} in {project.config_path.name} but "
                           f"{committed or 'unset'} in commit {commit[:12]}: the id names this PKI's keys in shared "
                           "key stores, and another id's keys are not this PKI's orphans; no key is listed as an "
                           "orphan or deleted")
    by_store: dict[str, set[KeyRef]] = {}
    for _, inv in inventories:
        for store, ref in keys_in(inv["objects"]):
            if store in stores:
                by_store.setdefault(store, set()).add(KeyRef(store, ref))
    for store, refs in sorted(by_store.items()):
        try:
            project.store(store).missing(sorted(refs, key=lambda r: r.id))
        except BackendError as e:  # a reference outside the store's namespace for this id
            raise PkiError(f"state names a key backend {store} does not take for this PKI's ({e}); no key is "
                           "listed as an orphan or deleted") from None
    if not shared:
        return
    for where, inv in inventories:
        if inv.get("pki_id") is None:
            raise PkiError(f"{where}/inventory.json does not record the [pki] id {configured} yet: an id's namespace "
                           "becomes this PKI's when an apply records it, having checked that no other PKI's keys are "
                           "there; the next `pki apply` with changes records it; no key is listed as an orphan or "
                           "deleted")
    # the audit log says which id an apply recorded (`apply.logged_id`) only once its signed heads
    # are checked against the key store, as every plan does: a pull request can append lines
    try:
        project.observe()
    except PkiError as e:
        raise PkiError(f"{e}; no key is listed as an orphan or deleted") from None
    refused = id_taken(project, configured) if id_first_recorded(project, inventories[0][1]) else None
    if refused:
        raise PkiError(f"{refused}; no key is listed as an orphan or deleted")


def _own(project: Project, refs: list[KeyRef]) -> list[KeyRef]:
    """``refs``, each checked to be a key of this PKI's namespace by its store (`BackendError` from
    the store otherwise, as a `PkiError`)."""
    for ref in refs:
        try:
            project.store(ref.store).missing([ref])
        except BackendError as e:
            raise PkiError(f"backend {ref.store} listed {ref.id}, which it does not take for this PKI's ({e}); "
                           "nothing deleted") from None
    return refs


def _unlisted(project: Project, keys: set[tuple[str, str]], listed: set[tuple[str, str]]) -> list[KeyRef]:
    """The keys of ``keys`` (state uses them or lists them for deletion) that the stores' listings
    leave out and the stores hold: made before the ``[pki] id`` and reached with ``legacy_keys``.
    Shown by `key_rows`, never orphans (the unscoped names are every id-less PKI's)."""
    stores = project.desired().stores
    by_store: dict[str, list[KeyRef]] = {}
    for store, ref in sorted(keys - listed):
        if store in stores:
            by_store.setdefault(store, []).append(KeyRef(store, ref))
    found: list[KeyRef] = []
    for store, refs in by_store.items():
        try:
            gone = project.store(store).missing(refs)
        except BackendError:
            continue  # (a reference outside the store's namespace: not this PKI's to show)
        found += [r for r in refs if r not in gone]
    return found


def key_rows(project: Project) -> list[dict[str, Any]]:
    """One row per key: backend, key, status (``in use``, ``pending deletion``, ``orphan``) and the
    entry that uses it (None unless in use)."""
    state = project.state
    inv = state.load()[0]
    check_namespace(project, [(state.rel, inv)])
    users = _users(inv["objects"])
    users.update({key: "the audit log" for key in auditsign.key_refs(state)})
    pending = {(str(a), str(b)) for a, b in inv["pending_deletes"]} | set(state.pending_deletes()) \
        | set(state.deferred_deletes() or [])
    listed = _listed(project)
    rows = []
    for ref in listed + _unlisted(project, set(users) | pending, {(r.store, r.id) for r in listed}):
        key = (ref.store, ref.id)
        status = "in use" if key in users else "pending deletion" if key in pending else "orphan"
        rows.append({"backend": ref.store, "key": ref.id, "status": status, "entry": users.get(key)})
    return rows


def orphans(project: Project, *, head: str | None, tip: str | None) -> list[KeyRef]:
    """The keys no state names or lists as pending: the work tree's, HEAD's and the upstream tip's
    (``tip``), nor ``.pki/``'s lists, nor the key journal of an apply in progress."""
    if needs_id(project.desired()):
        shared = ", ".join(name for name, spec in sorted(project.desired().stores.items()) if spec.plugin != "local")
        raise PkiError(f"pki.toml has no [pki] id: the keys of backend {shared} are in the namespace every PKI "
                       "without an id shares, where another PKI's keys would look like orphans here; the next "
                       "`pki apply` adds an id (see the README, 'Several PKIs on one Vault'); nothing deleted")
    state = project.state
    known: set[tuple[str, str]] = set()
    named = [(state.rel, state.load()[0])]
    named += [(f"{c[:12]}:{state.rel}", inventory_at(project, c)) for c in (head, tip) if c is not None]
    check_namespace(project, named, (head, tip))
    inventories = [inv for _, inv in named]
    for inv in inventories:
        known |= keys_in(inv["objects"]) | {(str(a), str(b)) for a, b in inv["pending_deletes"]}
    known |= auditsign.key_refs(state)  # the audit log's signing keys (work tree, HEAD, upstream)
    repo = project.repository()
    for commit in (head, tip):
        data = repo.show(commit, repo.rel(state.root / auditsign.FILE)) if commit is not None else None
        if data is not None:
            known |= {(k["backend"], k["ref"]) for k in auditsign.parse(data, f"{commit[:12]}:{auditsign.FILE}")["keys"]}
    known |= set(state.pending_deletes()) | set(state.deferred_deletes() or [])
    journaled, unanswered = state.key_journal()
    if unanswered or state.pending_txn() is not None:
        raise PkiError("an interrupted apply is pending: run `pki apply` first")
    known |= set(journaled)
    return _own(project, [ref for ref in _listed(project) if (ref.store, ref.id) not in known])


def never_committed(project: Project, refs: list[KeyRef]) -> tuple[list[KeyRef], list[str]]:
    """(the keys of ``refs``, orphans, that no committed state ever named or whose retirement the
    signed audit log records; a note for each other one, kept). A key a committed state named and no
    apply retired is an orphan only because state was rolled back (a pull request can restore an
    older state): deleting it could delete a live authority's key."""
    repo = project.repository()
    if repo is None or not refs:
        return refs, []
    try:  # the log's retirements count only once its signed heads are checked, as a plan does
        project.observe()
    except PkiError as e:
        raise PkiError(f"{e}; nothing deleted") from None
    from .apply import retired_keys

    retired = retired_keys(project.state)
    deletable, notes = [], []
    for ref in refs:
        if (ref.store, ref.id) in retired or not repo.mentions(ref.id):
            deletable.append(ref)
        else:
            notes.append(f"{ref.store}:{ref.id} is no state's key now, but a committed state named it and the audit "
                         "log records no apply retiring it (state rolled back?): kept; delete it from its store "
                         "yourself once you are sure")
    return deletable, notes


def upstream_tip(project: Project, upstream: Upstream | None) -> tuple[str | None, str | None]:
    """For ``pki prune``, under the lock: (HEAD, the upstream's fetched tip); refuses unless HEAD
    is that tip. With no upstream (a repository without remotes) HEAD alone."""
    repo = project.repository()
    if repo is None:
        return None, None
    head = repo.head()
    if upstream is None:
        return head, None
    tip = repo.fetch(upstream)
    if tip is None:
        raise PkiError(f"{upstream} does not exist on the remote: nothing to compare with")
    if head != tip:
        raise PkiError(f"HEAD is not the tip of {upstream}: prune only on the tip (`git pull` or check out "
                       f"{upstream}), so no key the remote's state names is taken for an orphan")
    return head, tip
