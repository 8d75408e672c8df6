"""A project: one pki.toml, its state directory, its key stores. Reads; `pkiascode.apply` writes.

State is checked, not trusted: every plan compares each certificate file with what the inventory
says about it (`Project.verify_state`) and fails naming the object when they disagree.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
import os
import re
import subprocess
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .backend import KeyRef, KeyStore, StoreContext
from .config import config_digest, find_line, load_config
from .errors import BackendError, ConfigError, PkiError, PlanError, StalePlanError, StateError, first_of
from .memo import NoopMemo, state_files
from .model import CSR_STORE, Desired, Entry, Observed, Record
from .plan import AUDIT_KEY, Action, Plan
from .planner import plan as make_plan
from .plugins import Plugins
from .render import OFFLINE_WARNING
from .state import StateDir, config_refusal, file_stamp, id_refusal, load_txn, state_digest, txn_file

if TYPE_CHECKING:
    from .x509 import CsrInfo

__all__ = ["Project"]

#: what may be below a base revision's state directory (`Project._base_state`)
_BASE_STATE_FILE = re.compile(r"inventory\.json|audit\.jsonl|audit-signatures\.json|README\.md|certs/[A-Za-z0-9][A-Za-z0-9_.-]*\.pem"
                              r"|crl/[A-Za-z0-9][A-Za-z0-9_.-]*\.crl")


#: the note of a plan made while an interrupted apply is pending (which `pki apply` completes first)
_PENDING_NOTE = ("an interrupted apply is pending; this plan assumes it completed, and the next `pki apply` "
                 "completes it")


class Project:
    def __init__(self, config_path: Path, *, plugins: Plugins | None = None, trusted_pins: Iterable[str] = ()) -> None:
        _refuse_links(config_path)
        self.config_path = config_path.resolve()
        #: fingerprints of audit keys pinned without endorsement that the operator trusts (``--trust-pin``,
        #: ``$PKI_TRUST_PIN``): given outside the repository, never read from a file a pull request edits
        self.trusted_pins = tuple(trusted_pins) + tuple(os.environ.get("PKI_TRUST_PIN", "").replace(",", " ").split())
        self.base_dir = self.config_path.parent
        self.work_dir = self.base_dir / ".pki"
        self.plugins = plugins or Plugins()
        self._desired: Desired | None = None
        self._stores: dict[str, KeyStore] = {}
        self._csrs: dict[str, CsrInfo] | None = None
        self._repo: Any = False  # not looked up yet
        self._state: StateDir | None = None
        #: whether the last `plan` was answered from the remembered no-op plan (pki.toml not parsed)
        self.answered_from_memo = False
        #: the pin of the audit key that signed the last head, when the last `observe` found it
        #: missing from its store (lost: only ``--replace @audit`` or ``--rekey-missing`` goes on)
        self.audit_key_lost: Mapping[str, Any] | None = None
        #: what the last `observe` found worth saying of the signed heads (no signed heads; a pin trusted)
        self.audit_warnings: list[str] = []

    # -- desired --------------------------------------------------------------------------------
    def desired(self) -> Desired:
        if self._desired is None:
            self._desired = load_config(self.config_path, options_for=self.plugins.options,
                                        display_name=self._display_name(), data=self._pending_config())
            self._validate_store_settings(self._desired)
        return self._desired

    def _pending_config(self) -> bytes | None:
        """pki.toml as an interrupted `pki import` left it to be written, if one is pending."""
        if not self.txn_pending():
            return None
        try:
            txn = load_txn(txn_file(self.work_dir).read_bytes())
            config = txn.get("config")
        except (OSError, ValueError, KeyError, TypeError, UnicodeDecodeError):
            return None
        if config and (self.base_dir / config["path"]).resolve() == self.config_path:
            if config_refusal(txn, self.base_dir, self.config_path) is not None:
                return None  # never plan from a pki.toml the journal says; apply refuses the transaction
            return str(config["content"]).encode("utf-8")
        return None

    def reload(self) -> None:
        """Forget what was read from pki.toml and state (after an interrupted apply was finished)."""
        self._desired = None
        self._csrs = None
        self._state = None

    def _display_name(self) -> str:
        try:
            return self.config_path.relative_to(Path.cwd()).as_posix()
        except ValueError:
            return str(self.config_path)

    def config_error(self, path: tuple[str, ...], message: str) -> ConfigError:
        """A ConfigError at the line of ``path`` (for checks made after parsing, e.g. CSRs)."""
        try:
            line = find_line(self.config_path.read_text(encoding="utf-8"), path)
        except OSError:
            line = None
        return ConfigError(self._display_name(), line, ".".join(path[:3]), message)

    def _validate_store_settings(self, desired: Desired) -> None:
        errors: list[ConfigError] = []
        for spec in desired.stores.values():
            factory = self.plugins.factory(spec.plugin)
            if factory is None:
                errors.append(self.config_error(("backend", spec.name, "plugin"),
                                                f"no backend plugin {spec.plugin!r} is installed"))
                continue
            errors += [self.config_error(("backend", spec.name, option), message)
                       for option, message in factory.validate(spec.settings_dict())]
        if errors:
            raise first_of(errors)

    def _check_untracked(self) -> None:
        """``.pki/`` and the local key directories hold this machine's own files: git may track none
        of them, or a pull request could put a transaction, a memo or a key there that every fresh
        clone then holds as its own (a `StateError` naming the file)."""
        repo = self.repository()
        if repo is None:
            return
        context = StoreContext(self.base_dir, self.work_dir, pki_id=self.desired().settings.id)
        dirs = [self.work_dir] + [  # (stores made for the question, not kept: apply may make them with a new id)
            d for spec in self.desired().stores.values()
            for d in self.plugins.create(spec.name, spec.plugin, spec.settings_dict(), context).local_key_dirs()]
        for d in dirs:
            tracked = repo.tracked_under(d)
            if tracked is not None:
                raise StateError(f"git tracks {tracked}: {_relative(d, self.base_dir)}/ holds this machine's own "
                                 f"files (journal, keys, caches), never files from the repository; remove it from "
                                 f"git (`git rm -r --cached {_relative(d, self.base_dir)}`) and commit that")

    def repository(self) -> Any:
        """The git repository holding pki.toml (a `pkiascode.gitops.Repository`), or None."""
        if self._repo is False:
            from .gitops import find_repository

            self._repo = find_repository(self.base_dir)
        return self._repo

    @property
    def state(self) -> StateDir:
        state_dir = self.desired().settings.state_dir
        if self._state is None or self._state.rel != state_dir:
            self._check_untracked()
            self._state = StateDir(self.base_dir, state_dir, self.work_dir)
        return self._state

    # -- key stores -----------------------------------------------------------------------------
    def used_stores(self) -> list[KeyStore]:
        """The key stores pki.toml's entries use (what an apply locks)."""
        desired = self.desired()
        return [self.store(n) for n in sorted({e.store for e in desired.entries.values()} & set(desired.stores))]

    def store(self, name: str, *, plugin: str | None = None, settings: Mapping[str, Any] | None = None,
              pki_id: str | None = None) -> KeyStore:
        """The key store ``name``, made once per project: from pki.toml, or from ``plugin``/``settings``/
        ``pki_id`` when given (the remembered no-op plan knows them without parsing pki.toml)."""
        store = self._stores.get(name)
        if store is None:
            if plugin is None:
                spec = self.desired().stores.get(name)
                if spec is None:
                    raise BackendError(f"backend {name!r} is not defined in pki.toml")
                plugin, settings = spec.plugin, spec.settings_dict()
                pki_id = self.desired().settings.id
            store = self.plugins.create(name, plugin, settings or {},
                                       StoreContext(self.base_dir, self.work_dir, pki_id=pki_id))
            self._stores[name] = store
        return store

    def close(self) -> None:
        if self._repo:
            self._repo.close()
        if self._state is not None:
            self._state.close()
        for store in self._stores.values():
            try:
                store.close()
            except Exception:  # noqa: BLE001 - closing must not mask the real outcome
                pass
        self._stores.clear()

    # -- CSRs -----------------------------------------------------------------------------------
    def csrs(self) -> dict[str, CsrInfo]:
        """Every committed CSR, parsed, checked and compared with its entry."""
        if self._csrs is None:
            self._csrs = {}
            for entry in self.desired().entries.values():
                if entry.csr and not entry.revoked:
                    self._csrs[entry.name] = self._load_csr(entry)
        return self._csrs

    def _load_csr(self, entry: Entry) -> CsrInfo:
        from .x509 import load_csr

        path = ("certificate", entry.name, "csr")
        try:
            data = (self.base_dir / entry.csr).read_bytes()  # type: ignore[operator]
        except FileNotFoundError:
            raise self.config_error(path, f"{entry.csr} not found") from None
        try:
            info = load_csr(data)
        except ValueError as e:
            raise self.config_error(path, f"{entry.csr}: {e}") from None
        want_attrs = list(entry.subject) + [("CN", entry.common_name)]
        if sorted(info.attributes) != sorted(want_attrs):
            got = ", ".join(f"{k}={v}" for k, v in info.attributes) or "(empty)"
            raise self.config_error(("certificate", entry.name, "subject"),
                                    f"subject of {entry.csr} is {got}, but pki.toml says {entry.subject_text()}")
        if sorted(info.hosts) != sorted(entry.hosts):
            got = ", ".join(h for _, h in info.hosts) or "(none)"
            want = ", ".join(h for _, h in entry.hosts) or "(none)"
            raise self.config_error(("certificate", entry.name, "hosts"),
                                    f"SANs of {entry.csr} are {got}, but pki.toml hosts are {want}")
        return info

    # -- observed -------------------------------------------------------------------------------
    def observe(self, *, check_keys: bool = True, state: StateDir | None = None) -> tuple[Observed, dict[str, Any]]:
        """What exists: ``state/`` (or another copy of it, ``state``), checked against its inventory,
        and (unless not ``check_keys``) which keys the stores no longer have."""
        state = state or self.state
        observed, inv = state.observe()
        refused = id_refusal(inv, self.desired().settings.id, state.rel)
        if refused:
            raise PlanError(refused)
        pending_deletes = tuple((str(store), str(ref)) for store, ref in inv.get("pending_deletes") or ())
        if pending_deletes:
            observed = dataclasses.replace(observed, pending_deletes=pending_deletes)
        if state.pending_txn() is None:  # a pending apply's files are in its transaction, not yet here
            self.verify_state(state, observed, inv)
            self.verify_revocations(state, observed, inv, check_keys=check_keys)
        if check_keys:
            missing = self.missing_keys(observed.records, state)
            if missing:
                observed = dataclasses.replace(
                    observed, missing_keys=missing,
                    digest=hashlib.sha256((observed.digest + repr(sorted(missing))).encode()).hexdigest())
        return observed, inv

    @staticmethod
    def verify_state(state: StateDir, observed: Observed, inv: Mapping[str, Any]) -> None:
        """Each certificate file against the inventory: serial, SHA-256, subject, validity dates, issuer
        chain, signature (under its issuer's certificate; a root's under its own) and public key; each
        authority's CRL file against the inventory: signed under the authority's certificate, its
        dates, and its revoked serials exactly the inventory's revocations of that issuer; no two live
        objects sharing one key reference. Raises `PlanError` naming the object.

        A missing or unreadable file is drift (the plan reissues it); a well-formed certificate that is
        not the inventory's, or an inventory that misdescribes its file, is not repaired silently.

        Each file is read and parsed once: its DER is hashed and compared with the inventory's SHA-256
        first, then only the fields the inventory records are taken from it (`x509.recorded_facts`)."""
        records = observed.records
        loaded: dict[str, tuple[Any, Any, str] | None] = {}  # name → (certificate, its facts, DER SHA-256)
        restore = f"state/ is not what pkiascode wrote: restore it from git (`git checkout -- {state.rel}`) before planning"

        def cert_of(name: str) -> tuple[Any, Any, str] | None:
            if name not in loaded:
                path = state.cert_path(name)
                loaded[name] = _read_certificate_facts(path, state.der.get(str(path)))
            return loaded[name]

        revocations = _revocations_by_issuer(inv.get("revocations") or (), state.rel, restore)
        owners: dict[tuple[str, str], str] = {}
        for name, rec in records.items():
            where = f"{rec.qualified} ({state.rel}/certs/{name}.pem)"
            got = cert_of(name)
            issuer = cert_of(rec.issuer) if rec.issuer in records else None
            if rec.issuer is not None and rec.issuer in observed.cert_drift:
                issuer = None  # the issuer is reissued: its children are checked against the new one
            if got is None and name not in observed.cert_drift:  # its SHA-256 is the inventory's
                raise PlanError(f"{where}: the file has the SHA-256 the inventory records but cannot be read as a "
                                f"certificate; restore it from git (`git checkout -- {state.rel}`) before planning")
            if got is not None:
                obj = inv["objects"].get(name, {})
                problem = _check_recorded(got, rec, issuer, obj.get("public_key_sha256"))
                if problem is None and name not in observed.cert_drift and not _signed_by_earlier_key(rec, issuer):
                    problem = _check_signature(got, rec, issuer)
                if problem:
                    raise PlanError(f"{where}: {problem}; {restore}")
                if rec.crl and name not in observed.crl_drift and name not in observed.cert_drift:
                    path = state.crl_path(name)
                    problem = _check_crl(path, state.der.get(str(path)), got[0], rec, revocations.pop(name, {}))
                    if problem:
                        raise PlanError(f"{rec.qualified} ({state.rel}/crl/{name}.crl): {problem}; {restore}")
            if rec.store != CSR_STORE and not rec.revoked:
                other = owners.setdefault((rec.store, rec.key_id), name)
                if other != name:
                    raise PlanError(f"{rec.qualified}: its key reference {rec.store}:{rec.key_id} in "
                                    f"{state.rel}/inventory.json is also {records[other].qualified}'s; a key "
                                    "belongs to one object: restore the inventory from git")
        for store, ref in inv.get("pending_deletes") or ():
            other = owners.get((store, ref))
            if other is not None:
                raise PlanError(f"{records[other].qualified}: {state.rel}/inventory.json lists its key {store}:{ref} "
                                f"for deletion; a key is deleted once no object uses it: restore the inventory "
                                "from git")
        for issuer_name, revoked in revocations.items():
            rec = records.get(issuer_name)
            if revoked and (rec is None or (not rec.crl and rec.kind.value == "authority")):
                raise PlanError(f"authority.{issuer_name}: {state.rel}/inventory.json lists revocations by it "
                                f"(serial {format(min(revoked), 'x')}) but it has no CRL that lists them; {restore}")

    def verify_revocations(self, state: StateDir, observed: Observed, inv: Mapping[str, Any], *,
                           check_keys: bool = True) -> None:
        """No revocation is lost by a state edit. A CRL file proves the revocations only while it is
        there and current: a pull request that deletes it and removes a revocation from the inventory
        would have the next CRL signed without it. The audit log proves them instead: its hash chain
        is intact, ends where the inventory says, agrees with the inventory's objects, and its heads
        verify with the pinned audit keys, the first of them the one git's history pinned
        (`auditsign`; a shallow clone is refused); then every revocation it records must be among
        the inventory's as recorded (`_recorded_revocations`, `_revocation_problem`): not moved to
        another authority, nor given another reason or date. A record marked revoked must be among
        its issuer's revocations too, with its reason and date. Raises `PlanError` naming the
        authority, the serial and the CRL file."""
        from . import audit, auditsign

        restore = f"restore {state.rel}/ from git (`git checkout -- {state.rel}`) before planning"

        def refuse(problems: list[str]) -> None:
            if problems:
                raise PlanError(f"{state.rel}/{problems[0]}; {restore}" if problems[0].startswith("audit")
                                else f"{problems[0]}; {restore}")

        for path in (state.audit_path, state.root / auditsign.FILE):  # (stamped as read: `memo.stamp_files`)
            state.seen[str(path)] = file_stamp(str(path))
        entries, problems = state.audit_entries()
        refuse(problems)
        sigs = auditsign.load(state)
        owners = {(r.store, r.key_id): r for r in observed.records.values()}
        for n, k in enumerate(sigs["keys"] if sigs else ()):
            if (k["backend"], k["ref"]) in owners:
                refuse([f"{auditsign.FILE}: keys[{n}] names {owners[k['backend'], k['ref']].qualified}'s key "
                        f"({k['backend']}:{k['ref']}), but the audit key is no object's key"])
        # a pin without endorsement (a lost key's successor) is trusted only as the operator says, outside
        # the repository: a pull request can pin its own key, and name it in a key store it defines
        problems, self.audit_warnings = auditsign.verify(entries, sigs, self.trusted_pins)
        refuse(problems or auditsign.check_history(self, sigs))
        self.audit_key_lost = None
        if check_keys and sigs and sigs["keys"]:  # the key that signs next: missing, or the pinned one
            if auditsign.pinned_key_missing(self, sigs["keys"][-1]):
                self.audit_key_lost = sigs["keys"][-1]
            else:
                try:
                    auditsign.check_pinned(self, sigs["keys"][-1], state.rel)
                except BackendError:
                    pass  # (its public key needs what a plan does not: a passphrase; apply checks it)
        revocations = {(r["issuer"], r["serial"]): r for r in inv["revocations"]}
        for line, recorded in _recorded_revocations(entries, observed.records):
            problem = _revocation_problem(recorded, line, revocations, observed.records)
            if problem:
                issuer = recorded.get("issuer") or getattr(observed.records.get(line["name"]), "issuer", None)
                which = (f"authority.{issuer} ({state.rel}/crl/{issuer}.crl)" if isinstance(issuer, str)
                         else f"its authority ({state.rel}/crl/)")
                raise PlanError(f"{which}: serial {recorded.get('serial')} ({recorded.get('name') or line['name']}) "
                                f"is revoked, as {state.rel}/audit.jsonl line {line['seq']} records, but "
                                f"{state.rel}/inventory.json's revocations {problem}: a state edit cannot un-revoke "
                                f"a certificate or change its revocation; {restore}")
        for rec in observed.records.values():
            if not rec.revoked or rec.issuer is None:
                continue
            r = revocations.get((rec.issuer, rec.serial))
            marked = (rec.revoked.get("reason", "unspecified"), rec.revoked.get("date"))
            if r is None or (r.get("reason", "unspecified"), r.get("date")) != marked:
                raise PlanError(f"authority.{rec.issuer} ({state.rel}/crl/{rec.issuer}.crl): serial {rec.serial} "
                                f"({rec.qualified}) is revoked in {state.rel}/inventory.json but its revocations "
                                f"do not list it{'' if r is None else ' so (reason, date)'}: a state edit cannot "
                                f"un-revoke a certificate; {restore}")
        refuse(audit.verify(None, inv, parsed=entries))

    def _live_keys(self, records: Mapping[str, Record]) -> dict[str, dict[KeyRef, Record]]:
        """Per key store, the keys records still need (not CSR entries, not revoked ones)."""
        stores = self.desired().stores
        by_store: dict[str, dict[KeyRef, Record]] = {}
        for rec in records.values():
            if rec.store != CSR_STORE and not rec.revoked and rec.store in stores:
                by_store.setdefault(rec.store, {})[KeyRef(rec.store, rec.key_id, rec.key_origin)] = rec
        return by_store

    def missing_keys(self, records: Mapping[str, Record], state: StateDir | None = None) -> dict[str, str]:
        """Records whose key their store no longer has (one query per store). Where a store can tell a
        key's public half without a secret, a reference naming another key is a `PlanError`."""
        out: dict[str, str] = {}
        for store_name, refs in self._live_keys(records).items():
            store = self.store(store_name)
            where = "".join(f" ({_relative(d, self.base_dir)})" for d in store.local_key_dirs()[:1])
            for ref in store.missing(refs):
                out[refs[ref].name] = f"its key {ref.id} is missing from backend {store_name}{where}"
            # where the store can tell without a secret: does the reference name the certificate's key?
            tell = getattr(store, "public_key_digest", None)
            if tell is None:
                continue
            for ref, rec in refs.items():
                if rec.name in out:
                    continue
                digest = tell(ref)
                want = _public_key_sha256(state or self.state, rec)
                if digest is not None and want is not None and digest != want:
                    raise PlanError(f"{rec.qualified}: its key reference {ref} in {self.state.rel}/inventory.json "
                                    "names a key that is not its certificate's: restore the inventory from git")
        return out

    # -- plan -----------------------------------------------------------------------------------
    def plan(self, *, at: dt.datetime, replace: Iterable[str] = (), now: dt.datetime | None = None,
             offline: bool = False, base: str | None = None, rekey_missing: bool = False,
             remembered: bool = False) -> Plan:
        """The plan as of ``at``; certificates would be signed as of ``now`` (default: ``at``), with
        pkilint's findings on what it would sign (`pkiascode.lint`).

        ``offline``: no key store is contacted; the keys state names are assumed to exist.
        ``base``: plan against the ``state/`` of git revision ``base`` (what the change does after
        it is merged there), warning when this checkout's ``state/`` differs from it.
        ``rekey_missing``: a key missing from its store is replaced (without it: a `PlanError`).
        ``remembered``: an empty plan may be answered from the remembered no-op plan
        (`pkiascode.memo`); only `pki plan` asks for it, never what apply executes."""
        replace = tuple(replace)
        pending = self.txn_pending()
        quiet = not replace and not pending and not offline and base is None and not rekey_missing
        self.answered_from_memo = False
        if quiet and remembered:
            noop = self._remembered_noop(at, now)
            if noop is not None:
                self.answered_from_memo = True
                return noop
        desired = self.desired()
        csrs = self.csrs()
        csr_keys = {name: info.digest for name, info in csrs.items()}
        notes: list[str] = []
        if base is not None:
            with tempfile.TemporaryDirectory(prefix="pki-base-") as tmp:
                state, differs = self._base_state(base, Path(tmp))
                if differs:
                    notes.append(f"{self.state.rel}/ differs from {base}'s: this plan is made against {base}'s "
                                 f"{self.state.rel}/ (what the change does once merged); update the branch "
                                 f"from {base}")
                observed, inv = self.observe(check_keys=not offline, state=state)
        else:
            observed, inv = self.observe(check_keys=not offline)
        caps = {}
        for name, spec in desired.stores.items():
            factory = self.plugins.factory(spec.plugin)
            if factory is not None:
                caps[name] = (factory.holds_exportable, factory.holds_non_exportable,
                              factory.releases_non_exportable)
        result = make_plan(desired, observed, now=at, replace=replace, csr_keys=csr_keys, issue_time=now,
                           store_caps=caps, csr_key_types={n: i.key_type for n, i in csrs.items()},
                           rekey_missing=rekey_missing)
        self._refuse_revocations_to_come(desired, result, now or at)
        result = self._with_audit_notes(result, replace, rekey_missing)
        if not result.empty:  # (a no-op plan signs nothing: nothing to lint, nothing to import)
            from .lint import with_findings

            result = with_findings(desired, result, csrs)
        if offline:
            notes.append(OFFLINE_WARNING)
        if pending:
            notes.append(_PENDING_NOTE)
        if notes:
            result = dataclasses.replace(result, warnings=result.warnings + tuple(notes))
        if offline:
            result = dataclasses.replace(result, offline=True)
        # (not while the inventory has yet to record pki.toml's [pki] id: `pki plan` checks that id)
        if quiet and result.empty and not result.warnings and inv.get("pki_id") == desired.settings.id:
            self._remember_noop(desired, observed)
        return result

    def _with_audit_notes(self, result: Plan, replace: tuple[str, ...], rekey_missing: bool) -> Plan:
        """``result`` with what the last `observe` found of the audit log: the warnings of its signed
        heads (a log without them; a pin trusted by --trust-pin), and, when the audit key that signed
        the last head is missing from its store (`audit_key_lost`), a warning that names it and, with
        ``rekey_missing``, its replacement (unless ``--replace @audit`` planned it already). Apply
        refuses to go on without one (`auditsign.check_ready`): the pinned key signs each head."""
        from .auditsign import FILE as SIGNATURES
        from .model import Kind
        from .plan import AUDIT_LOG, Change, FieldChange

        rel = self.state.rel
        said = tuple(f"{rel}/{w}" for w in self.audit_warnings)
        if said:
            result = dataclasses.replace(result, warnings=result.warnings + said)
        lost = self.audit_key_lost
        if lost is None:
            return result
        warning = (f"the audit key {lost['ref']} that signed the last head of {rel}/audit.jsonl is missing from "
                   f"backend {lost['backend']}; apply needs that key: apply where it is, or, if it is lost, pin a "
                   f"new one with --replace {AUDIT_KEY} or --rekey-missing (later plans then need --trust-pin "
                   f"for it; if it is not lost, {rel}/{SIGNATURES} was changed: `git log -p -- "
                   f"{rel}/{SIGNATURES}`)")
        changes = result.changes
        if rekey_missing and AUDIT_KEY not in replace:
            changes += (Change(Action.REKEY_AUDIT_KEY, Kind.AUTHORITY, AUDIT_LOG, (
                f"--rekey-missing: the audit key {lost['ref']} is missing from backend {lost['backend']}; a new "
                "key signs the audit log's heads from this apply on, pinned without the lost key's endorsement "
                "(later plans, applies and `pki audit verify` need --trust-pin or $PKI_TRUST_PIN for it)",),
                (("key", FieldChange("the pinned audit key (missing)", "a new key in the store of the first root "
                                     "authority")),)),)
        return dataclasses.replace(result, changes=changes, warnings=result.warnings + (warning,))

    def _refuse_revocations_to_come(self, desired: Desired, result: Plan, now: dt.datetime) -> None:
        """A revocation the plan makes is dated at the latest when it is applied: its audit line
        records it, and plan refuses a revocation dated after its line (`_revocation_problem`)."""
        from .model import parse_time

        for change in result.changes:
            entry = desired.entries.get(change.name)
            revoked = entry.revoked if entry is not None else None
            if change.revoke_reason and revoked is not None and revoked.date:
                when = parse_time(revoked.date)
                if when.astimezone(dt.timezone.utc) > now:
                    raise self.config_error((entry.kind.value, entry.name, "revoked"),  # type: ignore[union-attr]
                                            f"revocation date {revoked.date} is still to come: a certificate is "
                                            "revoked as of a date that has passed (leave date out for now)")

    def replan(self, saved: Mapping[str, Any], *, source: str) -> Plan:
        """The plan to execute for a saved plan (``saved``: its JSON, read from ``source``): planned
        again from pki.toml, ``state/`` and the inputs ``saved`` records, and only if it serializes
        exactly as ``saved`` does. The caller holds the apply lock. Raises `StalePlanError`.

        What the file says it will do is never executed: an edited change, even with the digests
        left alone, makes the fresh plan differ."""
        try:
            inputs = Plan.from_json(saved)
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise StalePlanError(f"{source} is not a pkiascode plan ({type(e).__name__}: {e})") from None
        fresh = self.plan(at=inputs.at, now=inputs.issued_at or inputs.at, replace=inputs.replace,
                          rekey_missing=inputs.rekey_missing)
        again = json.loads(fresh.dumps())
        # made while an interrupted apply was pending, which apply has completed since: the same plan
        if isinstance(saved.get("warnings"), list) and _PENDING_NOTE in saved["warnings"]:
            saved = dict(saved, warnings=[w for w in saved["warnings"] if w != _PENDING_NOTE])
        if again == saved:
            return fresh
        rerun = "run `pki plan --out` again"
        if saved.get("config_digest") != again["config_digest"]:
            raise StalePlanError(f"{source} is stale: pki.toml changed since it was made; {rerun}")
        if saved.get("state_digest") != again["state_digest"]:
            raise StalePlanError(f"{source} is stale: state changed since it was made; {rerun}")
        raise StalePlanError(f"{source} is not the plan pki.toml and state give ({_first_difference(saved, again)}): "
                             f"it was edited or made by another version of pkiascode; nothing changed; {rerun}")

    def refusal(self, plan: Plan) -> str | None:
        """Why apply must not execute ``plan`` (one line), or None: a blocking lint finding, or a key
        to move that is not on this machine."""
        from .lint import refusal

        lint = refusal(self.desired(), plan)
        if lint is not None:
            return lint
        away = [c for c in plan.changes if c.action is Action.MOVE_KEY and c.key_elsewhere]
        if away:
            more = f" (and {len(away) - 1} more)" if len(away) > 1 else ""
            return (f"{away[0].qualified}: its key moves from backend {away[0].key_elsewhere}, which does not hold "
                    f"it on this machine{more}: apply on the machine that holds backend {away[0].key_elsewhere}")
        return None

    def _base_state(self, ref: str, tmp: Path) -> tuple[StateDir, bool]:
        """A copy, in ``tmp``, of the state directory as git revision ``ref`` has it, and whether this
        checkout's differs. Only regular files with the names pkiascode writes are taken."""
        from .gitops import git_env

        repo = self.repository()
        if repo is None:
            raise PlanError(f"--base {ref}: {self.base_dir} is not in a git repository")
        if not ref or ref.startswith("-"):
            raise PlanError(f"--base {ref}: not a git revision")
        try:
            rel = (self.base_dir.resolve() / self.desired().settings.state_dir).relative_to(repo.top).as_posix()
        except ValueError:
            raise PlanError(f"--base {ref}: the state directory is outside the git repository") from None

        def git(*args: str, stdin: bytes | None = None) -> bytes:
            proc = subprocess.run(["git", *args], cwd=repo.top, input=stdin, capture_output=True, env=git_env())
            if proc.returncode != 0:
                reason = (proc.stderr.decode(errors="replace").strip().splitlines() or ["failed"])[-1]
                raise PlanError(f"--base {ref}: {reason}")
            return proc.stdout

        commit = git("rev-parse", "--verify", "--end-of-options", f"{ref}^{{commit}}").decode().strip()
        entries = git("ls-tree", "-r", "-z", "--full-tree", commit, "--", f"{rel}/").split(b"\0")
        wanted: list[tuple[str, str]] = []  # (blob id, path below the state directory)
        for entry in filter(None, entries):
            meta, _, raw_path = entry.partition(b"\t")
            mode, kind, oid = meta.decode().split()
            path = raw_path.decode("utf-8", errors="replace")
            sub = path[len(rel) + 1:] if path.startswith(f"{rel}/") else ""
            if not _BASE_STATE_FILE.fullmatch(sub):
                raise PlanError(f"--base {ref}: {path} is not a file pkiascode writes in {rel}/")
            if kind != "blob" or mode not in ("100644", "100755"):
                raise PlanError(f"--base {ref}: {path} is not a regular file (mode {mode})")
            wanted.append((oid, sub))
        state = StateDir(tmp, "state", tmp / "work")
        out = git("cat-file", "--batch", stdin="".join(f"{oid}\n" for oid, _ in wanted).encode())
        pos = 0
        for oid, sub in wanted:
            header_end = out.find(b"\n", pos)
            header = out[pos:header_end].decode(errors="replace").split()
            if len(header) != 3 or header[0] != oid or header[1] != "blob" or not header[2].isdigit():
                raise PlanError(f"--base {ref}: git cat-file did not return blob {oid} ({' '.join(header)})")
            size = header[2]
            data = out[header_end + 1:header_end + 1 + int(size)]
            pos = header_end + 1 + int(size) + 1
            (state.root / sub).parent.mkdir(parents=True, exist_ok=True)
            (state.root / sub).write_bytes(data)
        here = subprocess.run(["git", "rev-parse", "--verify", "-q", f"HEAD:{rel}"], cwd=repo.top,
                              capture_output=True, env=git_env()).stdout.strip()
        there = subprocess.run(["git", "rev-parse", "--verify", "-q", f"{commit}:{rel}"], cwd=repo.top,
                               capture_output=True, env=git_env()).stdout.strip()
        dirty = git("status", "--porcelain", "--untracked-files=all", "--", f"{rel}/").strip()
        return state, here != there or bool(dirty)

    def txn_pending(self) -> bool:
        """An interrupted apply left a transaction for the next apply to finish."""
        return txn_file(self.work_dir).exists()

    # -- the remembered no-op plan (see pkiascode.memo) -----------------------------------------
    def _memo(self) -> NoopMemo:
        return NoopMemo(self.work_dir / "cache" / "noop.json")

    def _remembered_noop(self, at: dt.datetime, now: dt.datetime | None) -> Plan | None:
        """The remembered empty plan, when everything it was made from still holds (see
        `pkiascode.memo`). The memo is untrusted: the files stamped are listed from the state
        directory, the CSRs hashed and the key stores asked are pki.toml's (its ``[pki]`` and
        ``[backend.*]`` tables, read without parsing the rest: `_store_tables`); any doubt plans the
        long way."""
        memo = self._memo().load()
        if memo is None:
            return None
        repo = self.repository()
        if repo is not None and repo.tracked_under(self.work_dir) is not None:
            return None  # a memo from the repository (the full plan refuses it: `_check_untracked`)
        try:
            data = self.config_path.read_bytes()
            text = data.decode("utf-8")
        except (OSError, UnicodeDecodeError):
            return None
        if memo["config_digest"] != config_digest(data):
            return None
        light = _store_tables(text, self.plugins)
        csr_paths = _csr_paths(text)
        if light is None or csr_paths is None:
            return None
        settings, stores = light
        if not set(memo["refs"]) <= set(stores):
            return None
        csrs = _csr_digests(self.base_dir, csr_paths)
        if csrs is None:
            return None
        try:
            state = StateDir(self.base_dir, settings.state_dir, self.work_dir)
        except PkiError:
            return None
        if not os.path.isfile(state.inventory_path):  # (missing files stamp alike: no state, no memo)
            return None
        if not NoopMemo.still_holds(memo, config_digest=memo["config_digest"], csrs=csrs, at=at,
                                    plugins=self._plugin_ids(stores.values()), files=state_files(state.root)):
            return None
        try:  # the digest the plan reports is the one of the inventory as it is (an empty plan: no drift)
            inventory = state.read_inventory_bytes()
        except PkiError:
            return None
        if state_digest(inventory) != memo["state_digest"]:
            return None
        for store_name, refs in memo["refs"].items():
            spec = stores[store_name]
            try:
                store = self.store(store_name, plugin=spec.plugin, settings=spec.settings_dict(), pki_id=settings.id)
            except ValueError:  # an id StoreContext refuses: plan the long way
                return None
            if store.missing([KeyRef(store_name, key_id, origin) for key_id, origin in refs]):
                return None
        return Plan(changes=(), warnings=(), at=at, config_digest=memo["config_digest"],
                    state_digest=memo["state_digest"], issued_at=now if now is not None and now != at else None)

    def _plugin_ids(self, specs: Iterable[Any]) -> dict[str, str]:
        """What implements each key store plugin of ``specs``: its class and its package's version."""
        import sys

        out: dict[str, str] = {}
        for spec in specs:
            factory = self.plugins.factory(spec.plugin)
            if factory is not None:
                package = sys.modules.get(factory.__module__.partition(".")[0])
                out[spec.plugin] = (f"{factory.__module__}.{factory.__qualname__} "
                                    f"{getattr(package, '__version__', '')}")
        return out

    def _remember_noop(self, desired: Desired, observed: Observed) -> None:
        from .planner import quiet_until

        state = self.state
        if observed.pending_deletes or state.pending_txn() is not None:
            return  # keys wait for deletion: the plan says so every time
        files = state_files(state.root)
        listed = set(files)
        for rec in observed.records.values():  # an empty plan: every record has its files, all listed
            wanted = [state.cert_path(rec.name)] + ([state.crl_path(rec.name)] if rec.crl else [])
            if not all(str(f) in listed for f in wanted):
                return
        if observed.digest != state_digest(state.read_inventory_bytes()):
            return  # not the digest the remembered plan can check
        refs = {store: [[ref.id, ref.origin] for ref in keys] for store, keys in self._live_keys(observed.records).items()}
        from .auditsign import load as load_signatures

        sigs = load_signatures(state)
        if sigs and sigs["keys"]:  # the audit key, asked too: a lost one is a warning of every plan
            refs.setdefault(sigs["keys"][-1]["backend"], []).append([sigs["keys"][-1]["ref"], "generated"])
        paths = _csr_paths(self.config_path.read_text(encoding="utf-8"))
        if paths is None or paths != {e.csr for e in desired.entries.values() if e.csr}:
            return  # pki.toml names its CSRs in a way the remembered plan cannot find: plan the long way
        csrs = _csr_digests(self.base_dir, paths)
        if csrs is None:
            return
        try:
            self._memo().save(config_digest=desired.digest, state_digest=observed.digest, files=files,
                              seen=state.seen, csrs=csrs, refs=refs, plugins=self._plugin_ids(desired.stores.values()),
                              quiet_until=quiet_until(desired, observed))
        except (TypeError, ValueError):
            self._memo().forget()


#: a line that starts like a TOML table header
_HEADER_LIKE = re.compile(r"^[ \t]*\[.*$", re.M)
#: a header-like line that is not a plain header of bare keys
_ODD_HEADER = re.compile(r"^(?![ \t]*\[\[?[ \t]*[A-Za-z0-9_-]+(?:[ \t]*\.[ \t]*[A-Za-z0-9_-]+)*[ \t]*\]\]?[ \t]*(?:#.*)?$)"
                         r"[ \t]*\[", re.M)
#: the headers of the tables a remembered plan reads: [pki], [backend], [backend.NAME], ...
_OUR_HEADER = re.compile(r"^[ \t]*\[\[?[ \t]*(?:pki|backend)[ \t]*[.\]]", re.M)
_CSR_LINE = re.compile(r"^[ \t]*csr[ \t]*=[ \t]*(?:\"([^\"\\\n]*)\"|'([^'\n]*)')[ \t]*(?:#[^\n]*)?$", re.M)


def _store_tables(text: str, plugins: Plugins) -> tuple[Any, Mapping[str, Any]] | None:
    """pki.toml's settings and key stores (as `load_config` makes them, validated as a plan does)
    without parsing the whole file: only its ``[pki]`` and ``[backend...]`` tables are parsed. None
    when that cannot be done surely: anything but comments before the first table, a multi-line
    string, a header-like line that is not a plain header of bare keys, or a table that does not
    parse on its own."""
    import tomli

    from .config import parse_config

    if '"""' in text or "\'\'\'" in text:
        return None
    first = _HEADER_LIKE.search(text)
    start = first.start() if first else len(text)
    if any(line.strip() and not line.strip().startswith("#") for line in text[:start].splitlines()):
        return None
    if _ODD_HEADER.search(text):  # one pass in C over every header-like line: each a plain header
        return None
    heads = [m.start() for m in _HEADER_LIKE.finditer(text)] if _OUR_HEADER.search(text) else []
    keep: list[str] = []
    for m in _OUR_HEADER.finditer(text):
        after = [h for h in heads if h > m.start()][:1]
        keep.append(text[m.start():after[0] if after else len(text)])
    try:
        doc = tomli.loads("\n".join(keep))
        desired = parse_config(doc, digest="", options_for=plugins.options)
    except Exception:  # noqa: BLE001 - any doubt: the long way reports it properly
        return None
    for spec in desired.stores.values():
        factory = plugins.factory(spec.plugin)
        if factory is None or factory.validate(spec.settings_dict()):
            return None
    return desired.settings, desired.stores


def _csr_paths(text: str) -> set[str] | None:
    """The CSR paths pki.toml names (revoked entries' too), found without parsing it: every ``csr``
    must be a plain ``csr = "PATH"`` line, else None."""
    if "csr" not in text:
        return set()
    lines = list(_CSR_LINE.finditer(text))
    if text.count("csr") != sum(m.group().count("csr") for m in lines) or "\\u" in text or "\\U" in text:
        return None
    return {m.group(1) if m.group(1) is not None else m.group(2) for m in lines}


def _csr_digests(base: Path, paths: Iterable[str]) -> dict[str, str | None] | None:
    """SHA-256 of each CSR file (read inside ``base``, no link followed); None for a missing one, and
    None overall when one cannot be read safely."""
    import os

    from .config import MAX_CSR_BYTES, open_inside

    out: dict[str, str | None] = {}
    for rel in sorted(paths):
        if not (base / rel).exists() and not (base / rel).is_symlink():
            out[rel] = None
            continue
        try:
            fd = open_inside(base, rel, max_bytes=MAX_CSR_BYTES)
        except (ValueError, OSError):
            return None
        with os.fdopen(fd, "rb") as f:
            out[rel] = hashlib.sha256(f.read(MAX_CSR_BYTES + 1)).hexdigest()
    return out


def _refuse_links(config_path: Path) -> None:
    """pki.toml, and each directory from it up to (not including) its repository's top, is no symbolic
    link: a pull request could otherwise move the project (pki.toml, state/) somewhere git's history
    of its path does not know, leaving a link where it was."""
    path = Path(os.path.abspath(config_path))
    top = next((p for p in path.parents if (p / ".git").exists()), None)
    if top is None:
        return  # not in a repository: no history to keep apart from
    for p in [path, *path.parents]:
        if p == top:
            return
        if p.is_symlink():
            raise PkiError(f"{p} is a symbolic link: pkiascode reads pki.toml and its directory only as they are "
                           "in the repository, never through a link")


def _relative(path: Path, base: Path) -> str:
    try:
        return path.resolve().relative_to(base.resolve()).as_posix()
    except ValueError:
        return path.name


def _first_difference(saved: Mapping[str, Any], again: Mapping[str, Any]) -> str:
    """Where a saved plan and the plan made again part, in a few words."""
    def describe(c: Any) -> str:
        return f"{c.get('action')} {c.get('kind')}.{c.get('name')}" if isinstance(c, dict) else "?"

    theirs, ours = saved.get("changes"), again["changes"]
    if isinstance(theirs, list) and theirs != ours:
        for i, (a, b) in enumerate(zip(theirs, ours)):
            if a != b:
                return f"change {i + 1}: the file says {describe(a)}, planning again gives {describe(b)}"
        return f"the file has {len(theirs)} changes, planning again gives {len(ours)}"
    keys = sorted(k for k in set(saved) | set(again) if saved.get(k) != again.get(k))
    return f"{', '.join(keys[:3])} differ"


def _read_certificate(path: Path) -> Any:
    """The certificate in ``path``, or None when it is missing or not one (drift: the plan reissues)."""
    from .x509 import load_certificate

    try:
        return load_certificate(path.read_bytes())
    except (OSError, ValueError):
        return None


def _read_certificate_facts(path: Path, der: bytes | None = None) -> tuple[Any, Any, str] | None:
    """The certificate in ``path`` (``der``: its DER, when `StateDir.drift` has read it already; else
    read here, never through a link), its `x509.RecordedFacts` and the SHA-256 of its DER; None when
    it is missing or not a certificate (drift: the plan reissues)."""
    from cryptography import x509 as cx509

    from .state import read_file
    from .x509 import load_certificate, pem_to_der, recorded_facts

    if der is not None:
        try:
            cert = cx509.load_der_x509_certificate(der)
            return cert, recorded_facts(cert), hashlib.sha256(der).hexdigest()
        except ValueError:
            return None
    try:
        data = read_file(path)
    except PkiError:
        return None
    if data is None:
        return None
    try:
        der = pem_to_der(data)
        if der is not None:
            cert = cx509.load_der_x509_certificate(der)
            return cert, recorded_facts(cert), hashlib.sha256(der).hexdigest()
        # not the one PEM block pkiascode writes (drift): is it still a certificate, put in place of one?
        cert = load_certificate(data)
        from .x509 import fingerprint

        return cert, recorded_facts(cert), fingerprint(cert)
    except ValueError:
        return None


def _public_key_sha256(state: StateDir, rec: Record) -> str | None:
    """SHA-256 of the public key in ``rec``'s certificate file (None if it cannot be read)."""
    from .x509 import public_key_der

    cert = _read_certificate(state.cert_path(rec.name))
    return None if cert is None else hashlib.sha256(public_key_der(cert.public_key())).hexdigest()


def _check_recorded(got: tuple[Any, Any, str], rec: Record, issuer: tuple[Any, Any, str] | None,
                    public_key_sha256: str | None) -> str | None:
    """What in ``rec`` (an inventory object) disagrees with its certificate file, or None. ``got`` and
    ``issuer``: (certificate, facts, DER SHA-256) of the file and of the issuer's file, when readable."""
    cert, facts, digest = got
    if digest != rec.sha256:
        issuer_cert = issuer[0] if issuer is not None else cert
        try:  # a well-formed certificate, signed by its issuer, put in place of the recorded one
            cert.verify_directly_issued_by(issuer_cert)
        except Exception:  # noqa: BLE001 - bad signature, wrong issuer, unreadable key: damage, not a swap
            return None  # damaged: drift, which the plan repairs by reissuing
        return (f"the file holds another certificate (serial {format(facts.serial, 'x')}, sha256 "
                f"{digest[:12]}…) than the inventory records (serial {rec.serial}, sha256 {rec.sha256[:12]}…)")
    if _hex_int(rec.serial) != facts.serial:
        return f"the inventory records serial {rec.serial}, the certificate has {format(facts.serial, 'x')}"
    if tuple(sorted(rec.subject.split(", "))) != tuple(sorted(", ".join(facts.subject_parts).split(", "))):
        return f"the inventory records subject {rec.subject!r}, the certificate has {facts.subject.rfc4514_string()!r}"
    if facts.ski.hex() != rec.ski:
        return "the inventory records another subject key identifier than the certificate's"
    for field, recorded, actual in (("not_before", rec.not_before, facts.not_before),
                                    ("not_after", rec.not_after, facts.not_after)):
        if not _same_time(recorded, actual):
            return (f"the inventory records {field} {recorded:%Y-%m-%dT%H:%M:%SZ}, the certificate has "
                    f"{actual:%Y-%m-%dT%H:%M:%SZ}")
    if public_key_sha256 is not None and facts.public_key_sha256 != public_key_sha256:
        return "the inventory records another public key than the certificate's"
    if rec.issuer is None:
        if cert.issuer != facts.subject:
            return "the inventory records a self-signed root, the certificate is issued by " \
                   f"{cert.issuer.rfc4514_string()!r}"
    elif issuer is not None:
        issuer_facts = issuer[1]
        if cert.issuer != issuer_facts.subject:
            return (f"the certificate is issued by {cert.issuer.rfc4514_string()!r}, not by authority.{rec.issuer} "
                    f"({issuer_facts.subject.rfc4514_string()!r}) as the inventory records")
        if rec.issuer_ski and facts.aki is not None and facts.aki.hex() != rec.issuer_ski:
            return "the inventory records another issuer key identifier than the certificate's"
    return None


def _hex_int(text: str) -> int | None:
    try:
        return int(text, 16)
    except (TypeError, ValueError):
        return None


def _revocations_by_issuer(revocations: Iterable[Any], rel: str, restore: str) -> dict[str, dict[int, Mapping[str, Any]]]:
    """The inventory's revocations per issuer, by serial; a malformed one is a `PlanError`."""
    out: dict[str, dict[int, Mapping[str, Any]]] = {}
    for r in revocations:
        serial = _hex_int(r.get("serial")) if isinstance(r, Mapping) else None
        if serial is None or not isinstance(r.get("issuer"), str):
            raise PlanError(f"{rel}/inventory.json: a revocation without an issuer and a hexadecimal serial "
                            f"({str(r)[:80]!r}); {restore}")
        out.setdefault(r["issuer"], {})[serial] = r
    return out


def _signed_by_earlier_key(rec: Record, issuer: tuple[Any, Any, str] | None) -> bool:
    """Whether ``rec`` is a revoked certificate its issuer signed with a key it has since replaced
    (``pki apply --replace`` of the authority reissues its live certificates, not its revoked ones):
    its signature cannot verify under the issuer's certificate now. Its authority key identifier is
    still the recorded one (`_check_recorded`), and its SHA-256 the one the signed audit log records
    (`Project.verify_revocations`)."""
    return bool(rec.revoked and issuer is not None and rec.issuer_ski and rec.issuer_ski != issuer[1].ski.hex())


def _check_signature(got: tuple[Any, Any, str], rec: Record, issuer: tuple[Any, Any, str] | None) -> str | None:
    """Whether ``got``'s certificate is signed by its issuer's certificate (a root: by its own key).
    The issuer's name was compared by `_check_recorded`; the signature is checked with the issuer's
    public key taken once per issuer (`_issuer_key`): one verification per certificate."""
    from cryptography.hazmat.primitives.asymmetric import ec

    cert = got[0]
    if rec.issuer is None:
        signer, by = got, "its own public key (a root is self-signed)"
    elif issuer is not None:
        signer, by = issuer, f"authority.{rec.issuer}'s certificate"
    else:
        return None  # the issuer's file is missing or damaged: drift, reissued with its children
    try:
        key = _issuer_key(signer[0])
        params = cert.signature_algorithm_parameters
        if params is None:  # Ed25519, Ed448
            key.verify(cert.signature, cert.tbs_certificate_bytes)
        elif isinstance(params, ec.ECDSA):
            key.verify(cert.signature, cert.tbs_certificate_bytes, params)
        else:  # RSA: PKCS#1 v1.5 or PSS, with the certificate's hash
            key.verify(cert.signature, cert.tbs_certificate_bytes, params, cert.signature_hash_algorithm)
    except Exception:  # noqa: BLE001 - InvalidSignature, a key of another type, an unknown algorithm: not signed by it
        return f"its signature does not verify under {by}"
    return None


_ISSUER_KEYS: dict[int, tuple[Any, Any]] = {}


def _issuer_key(cert: Any) -> Any:
    """``cert``'s public key, taken once per certificate object (an authority signs thousands)."""
    hit = _ISSUER_KEYS.get(id(cert))
    if hit is None or hit[0] is not cert:
        if len(_ISSUER_KEYS) > 256:
            _ISSUER_KEYS.clear()
        hit = (cert, cert.public_key())
        _ISSUER_KEYS[id(cert)] = hit
    return hit[1]


def _recorded_revocations(entries: Iterable[Mapping[str, Any]],
                          records: Mapping[str, Record]) -> Iterable[tuple[Mapping[str, Any], Mapping[str, Any]]]:
    """(line, revocation) of each revocation the audit log records that must still be among the
    inventory's revocations: a line's ``revocation`` (revoke lines, and reissues that revoke) and an
    import's ``revocations``, whole as the inventory had them; from logs written before lines held
    them, what a line says (serial, name, a revoke line's reason; no issuer). Left out: a root's
    (on no CRL), and those of an authority retired since (its CRL went with it): for a whole
    record, only that authority's retirement counts; for an older line, which does not name the
    authority, any authority retired since, and only when the revoked object is gone from the
    inventory too (an authority's objects go before it)."""
    retired: dict[str, int] = {}  # authority → the last line that retired it
    found: list[tuple[Mapping[str, Any], Any]] = []
    for e in entries:
        action, name = e["action"], e["name"]
        if action == "revoke" and e.get("retired") and e["kind"] == "authority":
            retired[name] = e["seq"]
        if "revocation" in e:
            found.append((e, e["revocation"]))
        elif action == "import" and "revocations" in e:
            found += [(e, r) for r in e["revocations"]] if isinstance(e["revocations"], list) else [(e, None)]
        elif action == "import" and isinstance(e.get("revoked_serials"), list):
            found += [(e, {"issuer": name, "serial": s}) for s in e["revoked_serials"]]
        elif action == "revoke" and e.get("reason"):  # (before lines held the revocation, or a root's)
            rec = records.get(name)
            if not (e["kind"] == "authority" and (retired.get(name) == e["seq"] or (rec and rec.issuer is None))):
                found.append((e, {"serial": e["serial"], "name": name, "reason": e["reason"]}))
        elif "revoked_serial" in e:  # (a reissue before lines held the revocation, or a root's)
            rec = records.get(name)
            if not (rec is not None and rec.issuer is None):  # (only --replace revoked what it reissued)
                found.append((e, {"serial": e["revoked_serial"], "name": name, "date": e["time"],
                                  "reason": "key_compromise"}))
    for line, r in found:
        if not isinstance(r, Mapping):
            yield line, {"serial": repr(r)[:40]}  # (malformed: `_revocation_problem` refuses it)
            continue
        issuer = r.get("issuer")
        if isinstance(issuer, str) and retired.get(issuer, 0) > line["seq"]:
            continue
        if issuer is None and line["name"] not in records and any(at >= line["seq"] for at in retired.values()):
            continue
        yield line, r


def _revocation_problem(recorded: Mapping[str, Any], line: Mapping[str, Any],
                        revocations: Mapping[tuple[str, str], Mapping[str, Any]],
                        records: Mapping[str, Record]) -> str | None:
    """How the inventory's ``revocations`` (by issuer and serial) fail the revocation the audit
    ``line`` records, in a few words, or None. A whole record must be there as recorded: issuer,
    serial, reason, date, name and not_after where recorded; an older line's (no issuer) must be a
    revocation of that serial and name, with the line's reason, under the issuer the object's
    record names while it is that certificate. No revocation dates from after its line."""
    from .model import parse_time

    serial = recorded.get("serial")
    if not isinstance(serial, str) or any(not isinstance(v, (str, type(None))) for v in recorded.values()):
        return "cannot be checked against it (the line's revocation is malformed)"
    try:
        if "date" in recorded and parse_time(recorded["date"]) > parse_time(line["time"]):
            return f"cannot take its date {recorded['date']}, after the line's time {line['time']}"
    except (TypeError, ValueError):
        return "cannot be checked against it (the line's revocation has no valid date)"
    if "issuer" in recorded:
        r = revocations.get((recorded["issuer"], serial))
        if r is None:
            return "do not list it"
        differ = sorted(k for k, v in recorded.items() if r.get(k, "unspecified" if k == "reason" else None) != v)
        return f"list it with another {', '.join(differ)}" if differ else None
    rec = records.get(recorded.get("name", ""))
    issuer = rec.issuer if rec is not None and rec.serial == serial else None
    candidates = [r for (i, s), r in revocations.items() if s == serial and (issuer is None or i == issuer)
                  and r.get("name", recorded.get("name")) == recorded.get("name")]
    if not candidates:
        return "do not list it"
    for r in candidates:
        if r.get("reason", "unspecified") != recorded.get("reason", r.get("reason", "unspecified")):
            continue
        try:
            when = parse_time(r["date"])
            if when > parse_time(line["time"]) or ("date" in recorded and when != parse_time(recorded["date"])):
                continue
        except (KeyError, TypeError, ValueError):
            continue
        return None
    return "list it with another reason or date"


def _same_time(recorded: Any, actual: Any) -> bool:
    """An inventory time (text) and a file's time, to the second."""
    if actual is None:
        return recorded is None
    if isinstance(recorded, dt.datetime) and recorded == actual:  # the usual case, at no cost
        return True
    try:
        from .model import parse_time

        t = recorded if isinstance(recorded, dt.datetime) else parse_time(recorded)
        return t.replace(microsecond=0) == actual.replace(microsecond=0)
    except (TypeError, ValueError, AttributeError):
        return False


def _check_crl(path: Path, der: bytes | None, authority_cert: Any, rec: Record,
               revoked: Mapping[int, Mapping[str, Any]]) -> str | None:
    """What in ``rec``'s CRL record, or in the inventory's revocations by it, disagrees with its CRL
    file (signed under ``authority_cert``; ``der``: its DER when `StateDir.drift` read it already), or
    None. A missing or damaged file is drift (handled by the caller: the plan refreshes it)."""
    from .state import read_file
    from .x509 import crl_facts, pem_to_der

    if der is None:
        try:
            data = read_file(path)
        except PkiError:
            return None
        der = pem_to_der(data, b"X509 CRL") if data is not None else None
    if der is None:
        return None
    try:
        facts = crl_facts(der, authority_cert)
    except ValueError as e:
        return f"the CRL file is not this authority's CRL ({e})"
    crl = rec.crl or {}
    if not _same_time(crl.get("this_update"), facts.this_update):
        return (f"the inventory records this_update {crl.get('this_update')}, the CRL file has "
                f"{facts.this_update:%Y-%m-%dT%H:%M:%SZ}")
    if not _same_time(crl.get("next_update"), facts.next_update):
        when = f"{facts.next_update:%Y-%m-%dT%H:%M:%SZ}" if facts.next_update else "none"
        return f"the inventory records next_update {crl.get('next_update')}, the CRL file has {when}"
    if set(revoked) != set(facts.revoked):
        extra = sorted(set(revoked) - set(facts.revoked))
        gone = sorted(set(facts.revoked) - set(revoked))
        parts = []
        if extra:
            parts.append(f"the inventory revokes serial {format(extra[0], 'x')}, which the CRL file does not list")
        if gone:
            parts.append(f"the CRL file revokes serial {format(gone[0], 'x')}, which the inventory's revocations "
                         f"do not list")
        return "its revocations differ from the CRL file: " + "; ".join(parts)
    for serial, r in revoked.items():
        reason, date = facts.revoked[serial]
        if r.get("reason", "unspecified") != reason or not _same_time(r.get("date"), date):
            return (f"the inventory's revocation of serial {format(serial, 'x')} ({r.get('reason')}, {r.get('date')}) "
                    f"differs from the CRL file's ({reason}, {date:%Y-%m-%dT%H:%M:%SZ})")
    return None
