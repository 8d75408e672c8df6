"""Builders for planner tests: pki.toml text → `Desired`, and an in-memory world that applies plans.

`World.apply` mirrors what `pkiascode.apply` does to the inventory (new keys and SKIs, not_after
capped at the issuer's, CRL numbers and next_update, revocations), without crypto or I/O, so that
tests can run plan → apply → plan at any injected time and check that the planner converges.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import itertools
from collections.abc import Iterable, Mapping
from typing import Any

import tomli

from pkiascode.backend import Option
from pkiascode.config import _Issues, parse_config
from pkiascode.model import Desired, Entry, Kind, Observed, Record, format_time
from pkiascode.plan import Action, Change, Plan
from pkiascode.planner import plan as make_plan

__all__ = ["UTC", "T0", "options_for", "load", "issues", "World", "record_for", "only", "by_name", "days"]

UTC = dt.timezone.utc
#: the injected clock for planner tests
T0 = dt.datetime(2030, 1, 1, 12, 0, 0, tzinfo=UTC)
BACKDATE = dt.timedelta(minutes=5)

_OPTIONS: dict[str, dict[str, Option]] = {
    "local": {"path": Option(str, ".pki/keys"), "passphrase_env": Option(str, None)},
    "pkcs11": {"module": Option(str, None), "token": Option(str, None), "pin_env": Option(str, "PKI_PKCS11_PIN")},
    "vault": {"address": Option(str, None), "kv_mount": Option(str, "secret"),
              "transit_mount": Option(str, "transit"), "prefix": Option(str, "pki")},
}
#: plugins whose keys never leave the store
NON_EXPORTABLE_PLUGINS = {"pkcs11"}


def options_for(plugin: str) -> Mapping[str, Option] | None:
    return _OPTIONS.get(plugin)


def days(n: float) -> dt.timedelta:
    return dt.timedelta(days=n)


def load(text: str) -> Desired:
    """A valid pki.toml text → `Desired` (raises AssertionError listing the issues if invalid)."""
    try:
        return parse_config(tomli.loads(text), digest=hashlib.sha256(text.encode()).hexdigest(),
                            options_for=options_for)
    except _Issues as e:
        raise AssertionError("config unexpectedly invalid: "
                             + "; ".join(f"{'.'.join(i.path)}: {i.message}" for i in e.issues)) from None


def issues(text: str) -> list[tuple[tuple[str, ...], str]]:
    """The (path, message) of every mistake in an invalid pki.toml text."""
    try:
        parse_config(tomli.loads(text), digest="x", options_for=options_for)
    except _Issues as e:
        return [(i.path, i.message) for i in e.issues]
    raise AssertionError("config unexpectedly valid")


def only(plan: Plan, name: str) -> Change:
    """The single change for ``name`` (fails if there are none or several)."""
    found = [c for c in plan.changes if c.name == name]
    assert len(found) == 1, f"expected one change for {name}, got {[(c.action.value, c.name) for c in found]}"
    return found[0]


def by_name(plan: Plan) -> dict[str, list[Action]]:
    out: dict[str, list[Action]] = {}
    for c in plan.changes:
        out.setdefault(c.name, []).append(c.action)
    return out


_ski_counter = itertools.count(1)


def _new_ski() -> str:
    return f"{next(_ski_counter):040x}"


def record_for(entry: Entry, desired: Desired, *, not_after: dt.datetime, not_before: dt.datetime | None = None,
               ski: str | None = None, issuer_ski: str | None = None, key_type: str | None = None,
               store: str | None = None, plugin: str = "local", exportable: bool = True,
               spec: Mapping[str, Any] | None = None, spec_digest: str | None = None,
               revoked: Mapping[str, Any] | None = None, crl: Mapping[str, Any] | None = None) -> Record:
    """A hand-built inventory record for ``entry`` as if it had just been issued from its spec."""
    ski = ski or _new_ski()
    return Record(
        name=entry.name, kind=entry.kind, issuer=entry.issuer, serial=ski[-16:], sha256="ab" * 32,
        not_before=not_before or (not_after - dt.timedelta(seconds=entry.validity)), not_after=not_after,
        subject=entry.subject_text(), key_type=key_type or entry.key.value, store=store or entry.store,
        plugin=plugin, key_id=f"{entry.name}-{ski[-8:]}.pem", key_origin="generated", key_exportable=exportable,
        ski=ski, issuer_ski=issuer_ski, spec=dict(spec if spec is not None else entry.spec()),
        spec_digest=spec_digest or desired.spec_digests[entry.name], revoked=revoked, crl=crl,
    )


@dataclasses.dataclass
class World:
    """State in memory: records, revocations and injected drift."""

    records: dict[str, Record] = dataclasses.field(default_factory=dict)
    revocations: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    cert_drift: dict[str, str] = dataclasses.field(default_factory=dict)
    crl_drift: dict[str, str] = dataclasses.field(default_factory=dict)
    missing_keys: dict[str, str] = dataclasses.field(default_factory=dict)

    def observed(self) -> Observed:
        digest = hashlib.sha256(repr((sorted((n, r.serial) for n, r in self.records.items()),
                                      self.cert_drift, self.crl_drift, self.missing_keys)).encode()).hexdigest()
        return Observed(records=dict(self.records), revocations=tuple(self.revocations),
                        cert_drift=dict(self.cert_drift), crl_drift=dict(self.crl_drift),
                        missing_keys=dict(self.missing_keys), digest=digest)

    def plan(self, desired: Desired, now: dt.datetime, replace: Iterable[str] = (), **kw: Any) -> Plan:
        return make_plan(desired, self.observed(), now=now, replace=replace, **kw)

    def converge(self, desired: Desired, now: dt.datetime, replace: Iterable[str] = ()) -> Plan:
        """Plan and apply at ``now``; returns the plan that was applied."""
        p = self.plan(desired, now, replace)
        self.apply(desired, p, now)
        return p

    # -- a model of pkiascode.apply ------------------------------------------------------------
    def apply(self, desired: Desired, plan: Plan, now: dt.datetime) -> None:
        crl_due: set[str] = set()

        def revoke_listing(rec: Record, reason: str) -> None:
            if rec.issuer is None:
                return
            self.revocations.append({"issuer": rec.issuer, "serial": rec.serial, "name": rec.name,
                                     "date": format_time(now), "reason": reason})
            crl_due.add(rec.issuer)

        for change in plan.changes:
            name = change.name
            old = self.records.get(name)
            if change.action is Action.REKEY_AUDIT_KEY:
                continue  # the audit key is not in the inventory (apply pins it in audit-signatures.json)
            if change.action is Action.MOVE_KEY:
                entry = desired.entries[name]
                plugin = desired.stores[entry.backend].plugin
                assert old is not None
                self.records[name] = dataclasses.replace(
                    old, store=entry.backend, plugin=plugin, key_id=f"{name}-moved",
                    key_exportable=plugin not in NON_EXPORTABLE_PLUGINS)
            elif change.action is Action.UPDATE_CRL:
                crl_due.add(name)
            elif change.action is Action.REVOKE:
                assert old is not None
                if change.revoke_reason and not old.revoked:
                    revoke_listing(old, change.revoke_reason)
                if change.retire:
                    del self.records[name]
                    self.cert_drift.pop(name, None)
                    self.missing_keys.pop(name, None)
                else:
                    self.records[name] = dataclasses.replace(
                        old, revoked={"reason": change.revoke_reason, "date": format_time(now)})
            else:
                assert change.makes_certificate
                entry = desired.entries[name]
                new_key = change.makes_key
                if not new_key:
                    assert old is not None, f"{change.action.value} {name} without a record"
                issuer = self.records.get(entry.issuer) if entry.issuer else None
                not_after = now + dt.timedelta(seconds=entry.validity)
                if issuer is not None:
                    not_after = min(not_after, issuer.not_after)
                store = entry.store
                plugin = desired.stores[store].plugin if store in desired.stores else "local"
                ski = _new_ski() if new_key else old.ski  # type: ignore[union-attr]
                rec = Record(
                    name=name, kind=entry.kind, issuer=entry.issuer, serial=_new_ski()[-16:], sha256="cd" * 32,
                    not_before=now - BACKDATE, not_after=not_after, subject=entry.subject_text(),
                    key_type=entry.key.value if new_key else old.key_type,  # type: ignore[union-attr]
                    store=store if new_key else old.store,  # type: ignore[union-attr]
                    plugin=plugin, key_id=f"{name}-{ski[-8:]}" if new_key else old.key_id,  # type: ignore[union-attr]
                    key_origin="generated",
                    key_exportable=(plugin not in NON_EXPORTABLE_PLUGINS) if new_key
                    else old.key_exportable,  # type: ignore[union-attr]
                    ski=ski, issuer_ski=issuer.ski if issuer else None, spec=entry.spec(),
                    spec_digest=desired.spec_digests[name],
                    crl=old.crl if old is not None and entry.kind is Kind.AUTHORITY else None,
                )
                if old is not None and change.revoke_reason and not old.revoked:
                    revoke_listing(old, change.revoke_reason)
                self.records[name] = rec
                self.cert_drift.pop(name, None)
                if new_key:
                    self.missing_keys.pop(name, None)
                if entry.kind is Kind.AUTHORITY:
                    crl_due.add(name)

        for name in desired.entries:
            if name in crl_due and name in self.records:
                entry = desired.entries[name]
                rec = self.records[name]
                number = int((rec.crl or {}).get("number") or 0) + 1
                crl = {"number": number, "this_update": format_time(now),
                       "next_update": format_time(now + dt.timedelta(seconds=entry.crl_validity)),
                       "sha256": f"{number:064x}", "validity": entry.crl_validity,
                       "revoked": sum(1 for r in self.revocations if r["issuer"] == name)}
                self.records[name] = dataclasses.replace(rec, crl=crl)
                self.crl_drift.pop(name, None)
