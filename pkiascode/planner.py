"""The planner: a pure function of (desired, observed, now) → `Plan`. No I/O, no clock, no backends.

Everything it needs about the world arrives in `Observed` (inventory records and the drift found
while reading state and asking key stores which keys are missing) and in ``csr_keys`` (the public-key
digest of each committed CSR).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import re
from collections.abc import Iterable, Mapping

from .errors import PlanError
from .model import CSR_STORE, Desired, Entry, Kind, Observed, Record, format_time, parse_time
from .keytypes import KeyType
from .names import certificate_usages, constraint_note, format_duration
from .plan import AUDIT_KEY, AUDIT_LOG, OUTLOOK_DAYS, Action, Change, FieldChange, Plan

__all__ = ["plan", "quiet_until"]

_SPEC_FIELD_ORDER = ("issuer", "subject", "hosts", "usages", "validity", "profile", "path_length",
                     "name_constraints", "crl_distribution_point")


#: the capabilities of a store `plan` is told nothing about: (holds exportable keys, holds
#: non-exportable ones, hands non-exportable ones over to move them)
_FILES = (True, False, False)


@dataclasses.dataclass
class _Projection:
    """What an entry will look like after apply, as far as what it issues is concerned."""

    new_key: bool
    subject_changed: bool
    not_after: dt.datetime | None
    key_above: str | None = None  # the nearest authority above that gets a new key


def _day(t: dt.datetime) -> str:
    return t.strftime("%Y-%m-%d")


def _left(now: dt.datetime, t: dt.datetime) -> str:
    secs = int((t - now).total_seconds())
    if secs < 0:
        return f"expired {format_duration(-secs) if secs < -60 else 'just now'} ago"
    if secs < 86400:
        return f"in {format_duration(max(secs, 1))}"
    return f"in {secs // 86400} day{'s' if secs // 86400 != 1 else ''}"


def plan(
    desired: Desired,
    observed: Observed,
    *,
    now: dt.datetime,
    replace: Iterable[str] = (),
    csr_keys: Mapping[str, str] | None = None,
    issue_time: dt.datetime | None = None,
    store_caps: Mapping[str, tuple[bool, bool, bool]] | None = None,
    csr_key_types: Mapping[str, KeyType] | None = None,
    rekey_missing: bool = False,
) -> Plan:
    """What apply must do to make ``observed`` match ``desired`` at time ``now``.

    ``issue_time`` is when apply will sign (default ``now``): ``pki plan --at +30d`` decides what is
    due as of then, but certificates are always signed as of the moment apply runs, and the diffs
    show the ``not_after`` they will really get. ``store_caps`` says, per key store, whether it can
    hold exportable and non-exportable keys, and whether it hands a non-exportable key over to move
    it into another store (default: exportable only, like files). ``csr_key_types``
    is the key type of each committed CSR: it decides, like an entry's ``key``, which usages its
    certificate can have.

    Each certificate the plan signs gets a warning for what it will not hold as written: a usage its
    key cannot have, a name constraint written with a leading dot. Only for what is signed: a plan
    with nothing to do stays empty.

    A key missing from its store (``observed.missing_keys``) is not a reason to replace it: it is a
    `PlanError` naming the object and where its key was expected, unless ``replace`` names the entry
    or ``rekey_missing`` is set (then: ``rekey``). A key that is to move to another store is the
    exception: the move is planned with ``key_elsewhere`` (only the machine that holds the key can
    make it).

    Raises `PlanError` for a desired state that cannot be reached (moving a key that cannot leave its
    store, replacing an unknown entry, a missing key, ...).
    """
    replace = tuple(dict.fromkeys(replace))
    csr_keys = csr_keys or {}
    issued = issue_time or now
    for name in replace:
        if name == AUDIT_KEY:
            continue  # the audit key: see the end
        if name not in desired.entries:
            raise PlanError(f"--replace {name}: no authority or certificate is named {name!r} in pki.toml")
        if desired.entries[name].csr:
            raise PlanError(f"--replace {name}: it is signed from a CSR; its requester makes a new key "
                            "and commits a new CSR")
        if desired.entries[name].revoked:
            raise PlanError(f"--replace {name}: it is revoked in pki.toml")

    records = observed.records
    changes: list[Change] = []
    warnings: list[str] = []
    proj: dict[str, _Projection] = {}
    revoked_under: dict[str, list[str]] = {}
    missing_errors: list[str] = []

    def note_revocation(issuer: str | None, what: str) -> None:
        if issuer:
            revoked_under.setdefault(issuer, []).append(what)

    for name, entry in desired.entries.items():
        rec = records.get(name)
        issuer_proj = proj.get(entry.issuer) if entry.issuer else None
        issuer_rec = records.get(entry.issuer) if entry.issuer else None
        issuer_not_after = (issuer_proj.not_after if issuer_proj and issuer_proj.not_after
                            else issuer_rec.not_after if issuer_rec else None)
        key_above = None if issuer_proj is None else entry.issuer if issuer_proj.new_key else issuer_proj.key_above

        # -- revoked in pki.toml (or below a revoked authority) ---------------------------------
        if entry.revoked is not None:
            proj[name] = _Projection(False, False, rec.not_after if rec else None, key_above)
            if rec is None or rec.revoked:
                continue
            why = (f"revoked = {{ reason = \"{entry.revoked.reason}\" }} in pki.toml"
                   if entry.issuer is None or not desired.entries[entry.issuer].revoked
                   else f"issuer authority.{entry.issuer} is revoked")
            changes.append(Change(Action.REVOKE, entry.kind, name, (why,),
                                  (("status", FieldChange("valid", "revoked")),),
                                  revoke_reason=entry.revoked.reason))
            note_revocation(rec.issuer, f"{entry.qualified} ({entry.revoked.reason})")
            continue

        # what a certificate signed now would get: its validity, capped at its issuer's expiry
        full_term = issued + dt.timedelta(seconds=entry.validity)
        new_not_after = min(full_term, issuer_not_after) if issuer_not_after else full_term
        cap_warning = (f"{entry.qualified}: validity {format_duration(entry.validity)} is capped at the expiry of "
                       f"authority.{entry.issuer} ({format_time(issuer_not_after)}): a certificate may not outlive "
                       "its issuer" if issuer_not_after and full_term > issuer_not_after else None)

        # -- new ---------------------------------------------------------------------------------
        if rec is None:
            changes.append(Change(Action.CREATE, entry.kind, name, ("not in state",),
                                  _creation_diff(entry, new_not_after, _chain(entry, desired)),
                                  new_key=not entry.csr))
            proj[name] = _Projection(True, False, new_not_after, key_above)
            warnings.extend([cap_warning] if cap_warning else [])
            continue

        # -- key identity: rekey -----------------------------------------------------------------
        key_reasons: list[str] = []
        replaced = name in replace
        if rec.revoked:
            key_reasons.append("it was revoked and a revocation cannot be undone: a new key and certificate")
        if rec.kind is not entry.kind and not entry.csr:
            key_reasons.append(f"kind changes {rec.kind.value} → {entry.kind.value}: a new key")
        if replaced:
            key_reasons.append("--replace: new key, the old certificate is revoked as key_compromise"
                               if entry.issuer else
                               "--replace: new key (a self-signed root is on no CRL: remove the old one from "
                               "trust stores)")
        if entry.csr:
            digest = csr_keys.get(name)
            if digest is not None and digest != rec.key_id:
                key_reasons.append(f"{entry.csr} requests a new key")
        elif rec.store == CSR_STORE:
            key_reasons.append(f"no longer signed from a CSR: a new key in backend {entry.backend}")
        elif rec.key_type != entry.key.value:
            key_reasons.append(f"key algorithm changes {rec.key_type} → {entry.key.value}")
        store_changes = rec.store != entry.store
        # a missing key: replaced only when asked; a key that moves is moved by the machine holding it
        key_elsewhere = None
        missing = observed.missing_keys.get(name) if rec.store != CSR_STORE and not entry.csr else None
        if missing:
            if replaced or rekey_missing or key_reasons:
                key_reasons.append(missing)
            elif store_changes and rec.store in desired.stores:
                key_elsewhere = rec.store
            else:
                missing_errors.append(f"{entry.qualified}: {missing}")
        if store_changes and rec.store != CSR_STORE and rec.store not in desired.stores and not key_reasons:
            raise PlanError(f"{entry.qualified}: its key is in backend {rec.store!r}, which pki.toml no longer "
                            f"defines; define [backend.{rec.store}] again so the key can move, or "
                            f"--replace {name} for a new key")

        if key_reasons:
            rekey_diff = [("key", FieldChange(f"{rec.key_type} ({rec.store})", _key_label(entry)))]
            rekey_diff += _spec_diff(rec, entry)
            changes.append(Change(Action.REKEY, entry.kind, name, tuple(key_reasons), tuple(rekey_diff),
                                  new_key=not entry.csr,
                                  revoke_reason="key_compromise" if replaced else None))
            if replaced:
                note_revocation(rec.issuer, f"{entry.qualified} (key_compromise, replaced)")
            proj[name] = _Projection(True, rec.subject != entry.subject_text(), new_not_after, key_above)
            warnings.extend([cap_warning] if cap_warning else [])
            continue

        # -- key store: move_key -----------------------------------------------------------------
        moving = False
        if store_changes:
            if rec.store == CSR_STORE or entry.csr:
                pass  # switching to/from a CSR changes the key: caught above via the digest
            elif not rec.key_exportable and not (store_caps or {}).get(rec.store, _FILES)[2]:
                raise PlanError(f"{entry.qualified}: cannot move its key from backend {rec.store!r} to "
                                f"{entry.backend!r}: the key was made non-exportable and never leaves "
                                f"{rec.store!r}; keep backend = \"{rec.store}\" or --replace {name}")
            else:
                moving = True
        move_reason = f"backend changes {rec.store} → {entry.backend}"
        if not store_changes and not entry.csr and rec.store != CSR_STORE:
            holds_exportable, holds_sealed, _ = (store_caps or {}).get(entry.backend, _FILES)
            if rec.key_exportable and not entry.exportable and holds_sealed:
                moving = True  # within the store, to where keys cannot leave (Vault: KV → Transit)
                move_reason = (f"exportable changes true → false: the key moves where it cannot leave "
                               f"backend {entry.backend}")
            elif not rec.key_exportable and entry.exportable and holds_exportable:
                warnings.append(f"{entry.qualified}: exportable = true, but its key was made non-exportable "
                                f"and can never leave backend {rec.store}; --replace {name} makes a new, "
                                "exportable key")

        # -- certificate content: reissue --------------------------------------------------------
        reasons: list[str] = []
        diff: list[tuple[str, FieldChange]] = []
        if rec.spec_digest != desired.spec_digests[name]:
            diff = _spec_diff(rec, entry)
            reasons.extend(f"{field} changed" for field, _ in diff)
            if not diff:
                reasons.append("the certificate's spec changed")
        if name in observed.cert_drift:
            reasons.append(observed.cert_drift[name])
        if entry.issuer:
            if issuer_proj and issuer_proj.new_key:
                reasons.append(f"issuer key changed (authority.{entry.issuer} gets a new key)")
            elif key_above:
                reasons.append(f"authority.{key_above} above it gets a new key: everything below it is reissued")
            elif issuer_rec is not None and rec.issuer_ski != issuer_rec.ski and rec.issuer == entry.issuer:
                reasons.append(f"issuer key changed (authority.{entry.issuer}'s key is not the one that signed it)")
            if issuer_proj and issuer_proj.subject_changed and rec.issuer == entry.issuer:
                reasons.append(f"issuer subject changed (authority.{entry.issuer})")

        # -- expiry: renew -----------------------------------------------------------------------
        renew_due = now >= rec.not_after - dt.timedelta(seconds=entry.renew_before)
        renew_reason = None
        if renew_due:
            capped = issuer_not_after is not None and new_not_after >= issuer_not_after
            # renewing would not extend it (it cannot outlive its issuer): warn instead of renewing on
            # every run; with --at ahead of the signing time the user asked for it, so renew anyway
            if capped and new_not_after <= rec.not_after + dt.timedelta(minutes=1) and not reasons \
                    and issued >= now:
                warnings.append(f"{entry.qualified}: due for renewal (expires {format_time(rec.not_after)}) "
                                f"but cannot outlive authority.{entry.issuer} (expires "
                                f"{format_time(issuer_not_after)}); renew the issuer")
                renew_due = False
            elif now >= rec.not_after:
                renew_reason = f"expired on {_day(rec.not_after)}"
            else:
                renew_reason = (f"expires {_day(rec.not_after)} ({_left(now, rec.not_after)}), within "
                                f"renew_before {format_duration(entry.renew_before)}")

        # a renewal that makes a new key makes it in the new store: nothing to move then
        new_key_anyway = bool(renew_reason) and entry.rotate_key and not entry.csr
        if moving and not new_key_anyway:
            move_reasons = (move_reason,) if key_elsewhere is None else (
                move_reason, f"needs the machine that holds backend {key_elsewhere}: {missing} here")
            changes.append(Change(Action.MOVE_KEY, entry.kind, name, move_reasons,
                                  (("backend", FieldChange(rec.store, entry.backend)),) if store_changes else
                                  (("exportable", FieldChange(True, False)),), key_elsewhere=key_elsewhere))
        if reasons or renew_reason:
            # a renewal is due (alone, or with other reasons): with rotate_key it makes a new key
            renewal = bool(renew_reason) and (new_key_anyway or not reasons)
            if renew_reason:
                reasons.append(renew_reason)
            if new_key_anyway:
                reasons.append("rotate_key: a new key")
                diff.insert(0, ("key", FieldChange(f"{rec.key_type} ({rec.store})", _key_label(entry) + ", new")))
            diff.append(("not_after", FieldChange(format_time(rec.not_after), format_time(new_not_after))))
            changes.append(Change(Action.RENEW if renewal else Action.REISSUE, entry.kind, name, tuple(reasons), tuple(diff), new_key=new_key_anyway))
            proj[name] = _Projection(new_key_anyway, rec.subject != entry.subject_text(), new_not_after, key_above)
            warnings.extend([cap_warning] if cap_warning else [])
        else:
            proj[name] = _Projection(False, False, rec.not_after, key_above)

    # -- entries gone from pki.toml: revoke and retire, children first --------------------------
    gone = [r for n, r in records.items() if n not in desired.entries]
    depth = {r.name: _depth(r, records) for r in gone}
    for rec in sorted(gone, key=lambda r: (-depth[r.name], r.name)):
        if rec.revoked:
            why = "removed from pki.toml (already revoked): leaves state"
        else:
            why = "removed from pki.toml: revoked, and its certificate leaves state"
            note_revocation(rec.issuer, f"{rec.qualified} (cessation_of_operation)")
        changes.append(Change(Action.REVOKE, rec.kind, rec.name, (why,),
                              (("status", FieldChange("revoked" if rec.revoked else "valid", "removed")),),
                              revoke_reason=None if rec.revoked else "cessation_of_operation", retire=True))

    # -- CRLs -----------------------------------------------------------------------------------
    own_change = {c.name for c in changes if c.makes_certificate}
    for name, entry in desired.entries.items():
        if entry.kind is not Kind.AUTHORITY or name in own_change:
            continue
        rec = records.get(name)
        if rec is None:
            continue
        if rec.revoked and name not in revoked_under:
            continue
        reasons = []
        if name in revoked_under:
            listed = revoked_under[name]
            more = f" and {len(listed) - 10} more" if len(listed) > 10 else ""
            reasons.append("new revocations: " + ", ".join(listed[:10]) + more)
        crl = rec.crl or {}
        if name in observed.crl_drift:
            reasons.append(observed.crl_drift[name])
        elif not crl:
            reasons.append("no CRL yet")
        else:
            next_update = parse_time(crl["next_update"])
            validity = int(crl.get("validity", entry.crl_validity))
            if validity != entry.crl_validity:
                reasons.append(f"crl_validity changes {format_duration(validity)} → "
                               f"{format_duration(entry.crl_validity)}")
            elif now >= next_update - dt.timedelta(seconds=entry.crl_validity / 3):
                reasons.append(f"next_update {format_time(next_update)} is within a third of crl_validity "
                               f"{format_duration(entry.crl_validity)}")
        if reasons:
            changes.append(Change(Action.UPDATE_CRL, Kind.AUTHORITY, name, tuple(reasons),
                                  (("crl_number", FieldChange(crl.get("number"),
                                                              (crl.get("number") or 0) + 1)),)))

    if AUDIT_KEY in replace:
        changes.append(Change(Action.REKEY_AUDIT_KEY, Kind.AUTHORITY, AUDIT_LOG, (
            f"--replace {AUDIT_KEY}: a new key signs the audit log's heads from this apply on; the current key "
            "endorses it (if none is pinned yet, this apply pins the first)",),
            (("key", FieldChange("the pinned audit key", "a new key in the store of the first root authority")),)))

    if missing_errors:
        more = f" (and {len(missing_errors) - 1} more missing keys)" if len(missing_errors) > 1 else ""
        raise PlanError(f"{missing_errors[0]}{more}: plan where the key is, or restore it; to replace it with a "
                        "new key and certificate instead, --replace NAME (or --rekey-missing for every "
                        "missing key)")
    warnings.extend(_signing_notes(desired, changes, csr_key_types or {}))
    if issued < now:
        warnings.extend(_always_due(desired, now, issued))
    return Plan(changes=tuple(changes), warnings=tuple(warnings), at=now, config_digest=desired.digest,
                state_digest=observed.digest, replace=replace, issued_at=issued if issued != now else None,
                rekey_missing=rekey_missing, expiring=_expiring(records, changes, now),
                pending_deletes=_pending_deletes(observed.pending_deletes, [*desired.entries, *records]))


_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)
#: what every key store puts after the entry's name in a key reference: a random suffix, and the
#: local store's ``.noexport``/``.pem``, Vault Transit's ``@VERSION``
_REF_TAIL = r"-[0-9a-f]{8}(?:\.noexport)?(?:\.pem)?(?:@\d+)?\Z"
#: a name after the last '/' (a key path) or the whole reference (a file name); not after a ':' or a
#: '.' (Vault Transit and PKCS#11 labels put a prefix and the id first, and names may hold dots)
_REF_ENTRY = re.compile(rf"(?:\A|/)([a-z0-9][a-z0-9._-]*){_REF_TAIL}")


def _pending_deletes(pending: Iterable[tuple[str, str]],
                     names: Iterable[str]) -> tuple[tuple[str, str, str | None], ...]:
    """(store, ref, entry) of each key waiting for deletion, once each: ``entry`` is the longest
    name of pki.toml or state the reference ends with (before its random suffix), else the name the
    reference's last part spells (`_REF_ENTRY`), else None. A hint for the reader; the reference is what counts."""
    known = sorted(set(names), key=len, reverse=True)
    out: list[tuple[str, str, str | None]] = []
    for store, ref in dict.fromkeys((str(s), str(r)) for s, r in pending):
        entry = next((n for n in known if re.search(rf"(?:\A|[/:.-]){re.escape(n)}{_REF_TAIL}", ref)), None)
        if entry is None:
            m = _REF_ENTRY.search(ref)
            entry = m.group(1) if m else None
        out.append((store, ref, entry))
    return tuple(out)


def _always_due(desired: Desired, at: dt.datetime, issued: dt.datetime) -> list[str]:
    """``--at`` so far ahead that a certificate signed now is already due for renewal then: every
    run with it renews these entries."""
    names = [e.qualified for e in desired.entries.values()
             if not e.revoked and at >= issued + dt.timedelta(seconds=e.validity - e.renew_before)]
    if not names:
        return []
    shown = ", ".join(names[:10]) + (f" and {len(names) - 10} more" if len(names) > 10 else "")
    return [f"--at {format_duration(int((at - issued).total_seconds()))} ahead reaches past the renewal window of "
            f"a certificate signed now (validity minus renew_before): every run with it renews {shown}; look "
            "ahead less far to see what is really due"]


def _expiring(records: Mapping[str, Record], changes: Iterable[Change], at: dt.datetime) -> tuple[tuple[str, str], ...]:
    """(qualified name, not_after) of each live object the plan leaves alone that expires within
    `OUTLOOK_DAYS` of ``at``, soonest first."""
    changed = {c.name for c in changes if c.makes_certificate or c.action is Action.REVOKE}
    horizon = at + dt.timedelta(days=OUTLOOK_DAYS)
    due = sorted((r.not_after, r.qualified) for r in records.values()
                 if not r.revoked and r.name not in changed and r.not_after <= horizon)
    return tuple((name, format_time(t)) for t, name in due)


def _chain(entry: Entry, desired: Desired) -> list[str]:
    """The names of ``entry``'s issuers, up to the root."""
    out: list[str] = []
    issuer = entry.issuer
    while issuer and issuer not in out and issuer in desired.entries:
        out.append(issuer)
        issuer = desired.entries[issuer].issuer
    return out


def _signing_notes(desired: Desired, changes: Iterable[Change], csr_key_types: Mapping[str, KeyType]) -> list[str]:
    """What the certificates this plan signs will hold differently from pki.toml's words, and why."""
    notes = []
    for change in changes:
        if not change.makes_certificate:
            continue
        entry = desired.entries[change.name]
        key = csr_key_types.get(entry.name, entry.key) if entry.csr else entry.key
        note = certificate_usages(entry.usages, listed_key=entry.key, key=key, csr=entry.csr is not None)[2]
        if note:
            notes.append(f"{entry.qualified}: {note}")
        if entry.name_constraints is not None:
            for value in entry.name_constraints.permitted + entry.name_constraints.excluded:
                note = constraint_note(value)
                if note:
                    notes.append(f"{entry.qualified}: {note}")
    return notes


def _depth(rec: Record, records: Mapping[str, Record]) -> int:
    d, seen = 0, set()
    while rec.issuer and rec.issuer in records and rec.issuer not in seen:
        seen.add(rec.issuer)
        rec = records[rec.issuer]
        d += 1
    return d


def _key_label(entry: Entry) -> str:
    return f"{entry.key.value} ({entry.store})" if not entry.csr else f"from {entry.csr}"


def _creation_diff(entry: Entry, not_after: dt.datetime, chain: list[str]) -> tuple[tuple[str, FieldChange], ...]:
    """What a new certificate will hold: its spec, the not_after it gets (capped at its issuer's),
    whether its key is exportable (not for a CSR: the requester holds it) and its issuer chain."""
    spec = entry.spec()
    out = [("key", FieldChange(None, _key_label(entry)))]
    if not entry.csr:
        out.append(("exportable", FieldChange(None, entry.exportable)))
    for field in _SPEC_FIELD_ORDER:
        value = spec.get(field)
        if value not in (None, [], ""):
            out.append((field, FieldChange(None, value)))
    if chain:
        out.append(("chain", FieldChange(None, chain)))
    out.append(("not_after", FieldChange(None, format_time(not_after))))
    return tuple(out)


def _spec_diff(rec: Record, entry: Entry) -> list[tuple[str, FieldChange]]:
    after = entry.spec()
    before = rec.spec
    fields = [f for f in _SPEC_FIELD_ORDER if f in after or f in before]
    fields += sorted((set(after) | set(before)) - set(fields))
    return [(f, FieldChange(before.get(f), after.get(f))) for f in fields
            if before.get(f) != after.get(f) and f in after]


def quiet_until(desired: Desired, observed: Observed) -> dt.datetime | None:
    """The first moment at which, with nothing else changing, a plan would stop being empty or
    without an expiry outlook: the earliest renewal window, CRL refresh, or `OUTLOOK_DAYS` before an
    expiry. None when nothing ever falls due (nothing in state).

    Keys waiting for deletion (``observed.pending_deletes``) are listed by every plan, which a
    remembered empty plan would not: such a state is never quiet (the epoch, before any ``at``)."""
    if observed.pending_deletes:
        return _EPOCH
    times: list[dt.datetime] = []
    records = observed.records
    for name, entry in desired.entries.items():
        rec = records.get(name)
        if rec is None or rec.revoked or entry.revoked:
            continue
        times.append(rec.not_after - dt.timedelta(seconds=entry.renew_before))
        times.append(rec.not_after - dt.timedelta(days=OUTLOOK_DAYS))  # it enters the plan's expiry outlook
        crl = rec.crl
        if entry.kind is Kind.AUTHORITY and crl and crl.get("next_update"):
            next_update = parse_time(crl["next_update"])
            times.append(next_update - dt.timedelta(seconds=entry.crl_validity / 3))
    return min(times) if times else None
