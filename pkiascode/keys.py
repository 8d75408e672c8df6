"""``pki keys`` and ``pki prune``: the keys in this PKI's namespace of each key store, and what each is.

A key is *in use* when an object of ``state/`` names it (or it signs the audit log's heads), *pending deletion* when ``state/`` (or
``.pki/``'s list of deletions to retry) records that an apply retired it, and an *orphan* otherwise:
left by an apply that was killed between its commit and its push, or undone without reaching its
key store. `orphans` is what ``pki prune`` deletes: the keys that none of the work tree's state,
HEAD's and the upstream's names or lists as pending.
"""

from __future__ import annotations

from typing import Any

from . import auditsign
from .apply import inventory_at, keys_in
from .backend import KeyRef
from .errors import BackendError, PkiError
from .gitops import Upstream
from .project import Project

__all__ = ["key_rows", "orphans", "upstream_tip"]


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


def key_rows(project: Project) -> list[dict[str, Any]]:
    """One row per key: backend, key, status (``in use``, ``pending deletion``, ``orphan``) and the
    entry that uses it (None unless in use)."""
    state = project.state
    inv = state.load()[0]
    users = _users(inv["objects"])
    users.update({key: "the audit log" for key in auditsign.key_refs(state)})
    pending = {(str(a), str(b)) for a, b in inv["pending_deletes"]} | set(state.pending_deletes()) \
        | set(state.deferred_deletes() or [])
    rows = []
    for ref in _listed(project):
        key = (ref.store, ref.id)
        status = "in use" if key in users else "pending deletion" if key in pending else "orphan"
        rows.append({"backend": ref.store, "key": ref.id, "status": status, "entry": users.get(key)})
    return rows


def orphans(project: Project, *, head: str | None, tip: str | None) -> list[KeyRef]:
    """The keys no state names or lists as pending: the work tree's, HEAD's and the upstream tip's
    (``tip``), nor ``.pki/``'s lists, nor the key journal of an apply in progress."""
    state = project.state
    known: set[tuple[str, str]] = set()
    inventories = [state.load()[0]]
    inventories += [inventory_at(project, c) for c in (head, tip) if c is not None]
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
    return [ref for ref in _listed(project) if (ref.store, ref.id) not in known]


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
