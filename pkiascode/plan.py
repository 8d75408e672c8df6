"""The plan model: what apply will do, and why.

A `Plan` is a list of `Change`s, each one `Action` on one authority or certificate. The action alone
decides what apply does (with the few explicit flags below); the ``reasons`` and ``diff`` are for the
people reviewing it and never steer apply.

Actions and what apply does for each:

``create``      new key in the entry's backend, new certificate.
``reissue``     new certificate with the same key (the spec changed, the issuer's key changed, or
                the certificate file drifted). ``diff`` holds each changed field's before/after.
``renew``       new certificate because expiry is within ``renew_before``; a new key too when
                ``new_key`` (the entry's ``rotate_key``).
``rekey``       new key and certificate (key type changed, key missing, CSR changed, ``--replace``).
                With ``revoke_reason`` set the old certificate goes on the issuer's CRL.
``move_key``    the key moves to the entry's new backend (export, import, prove, then delete the
                old copy after commit). The certificate stays. With ``key_elsewhere`` set the key
                is not on this machine (e.g. a fresh clone without ``.pki/keys``): apply refuses it,
                and only the machine that holds that store can make the move.
``revoke``      the serial goes on the issuer's CRL with ``revoke_reason``. With ``retire`` (the entry
                left pki.toml) the certificate leaves ``state/certs/`` and the inventory.
``update_crl``  the authority's CRL is re-signed (new revocations below it, or ``next_update`` is
                near). Apply also re-signs the CRL of any authority that gets a new certificate or
                has a revocation below it in the same plan.
``rekey_audit_key``  (``--replace @audit``) a new audit key (`pkiascode.auditsign`): apply records the
                rekey in the audit log, and the current key endorses the new one, which signs
                from that line on. Its ``name`` is ``audit-log`` and its ``kind`` authority (the key
                vouches for the log); it touches no certificate.

A saved plan (``pki plan --out``) is checked, not trusted: apply plans again, under the lock, from
pki.toml, ``state/`` and the inputs the saved plan records (``at``, ``issued_at``, ``replace``,
``rekey_missing``), executes only that fresh plan, and only when it serializes exactly as the saved
one did. Editing a saved plan's changes (its digests left alone) makes apply refuse it.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import enum
import json
from collections.abc import Mapping
from typing import Any

from .model import Desired, Kind, digest_json, format_time, parse_time

__all__ = ["Action", "FieldChange", "Change", "Finding", "Plan", "PLAN_FORMAT_VERSION", "BLOCKING_SEVERITIES",
           "OUTLOOK_DAYS", "AUDIT_KEY", "AUDIT_LOG"]

PLAN_FORMAT_VERSION = 1
#: how far ahead of ``at`` a plan's expiry outlook (`Plan.expiring`) looks
OUTLOOK_DAYS = 90


class Action(str, enum.Enum):
    CREATE = "create"
    REISSUE = "reissue"
    RENEW = "renew"
    REKEY = "rekey"
    MOVE_KEY = "move_key"
    REVOKE = "revoke"
    UPDATE_CRL = "update_crl"
    REKEY_AUDIT_KEY = "rekey_audit_key"

    @property
    def glyph(self) -> str:
        return _GLYPHS[self]

    @property
    def past(self) -> str:
        return _PAST[self]


_GLYPHS = {Action.CREATE: "+", Action.REISSUE: "~", Action.RENEW: "~", Action.REKEY: "-/+",
           Action.MOVE_KEY: ">", Action.REVOKE: "-", Action.UPDATE_CRL: "~", Action.REKEY_AUDIT_KEY: "-/+"}
_PAST = {Action.CREATE: "created", Action.REISSUE: "reissued", Action.RENEW: "renewed",
         Action.REKEY: "rekeyed", Action.MOVE_KEY: "moved", Action.REVOKE: "revoked",
         Action.UPDATE_CRL: "CRL updated", Action.REKEY_AUDIT_KEY: "audit key rekeyed"}
ACTION_ORDER = list(Action)
#: the ``--replace`` word for the audit key (not a pki.toml name: never an entry's)
AUDIT_KEY = "@audit"
#: the `Change.name` of the audit key's rekey
AUDIT_LOG = "audit-log"


@dataclasses.dataclass(frozen=True)
class FieldChange:
    """One field of a certificate, before and after a change (None: absent)."""

    before: Any
    after: Any


@dataclasses.dataclass(frozen=True)
class Change:
    """One line of a plan: what happens to one authority or certificate, and why."""

    action: Action
    kind: Kind
    name: str
    reasons: tuple[str, ...]
    diff: tuple[tuple[str, FieldChange], ...] = ()
    new_key: bool = False
    revoke_reason: str | None = None
    retire: bool = False
    key_elsewhere: str | None = None

    @property
    def qualified(self) -> str:
        if self.action is Action.REKEY_AUDIT_KEY:
            return "the audit log's key"
        return f"{self.kind.value}.{self.name}"

    @property
    def makes_certificate(self) -> bool:
        return self.action in (Action.CREATE, Action.REISSUE, Action.RENEW, Action.REKEY)

    @property
    def makes_key(self) -> bool:
        return self.action in (Action.CREATE, Action.REKEY) or (self.action is Action.RENEW and self.new_key)

    def to_json(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "action": self.action.value, "kind": self.kind.value, "name": self.name,
            "reasons": list(self.reasons),
            "diff": {f: {"before": c.before, "after": c.after} for f, c in self.diff},
        }
        if self.new_key:
            d["new_key"] = True
        if self.revoke_reason:
            d["revoke_reason"] = self.revoke_reason
        if self.retire:
            d["retire"] = True
        if self.key_elsewhere:
            d["key_elsewhere"] = self.key_elsewhere
        return d

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> Change:
        return cls(
            action=Action(d["action"]), kind=Kind(d["kind"]), name=d["name"], reasons=tuple(d["reasons"]),
            diff=tuple((f, FieldChange(c["before"], c["after"])) for f, c in d.get("diff", {}).items()),
            new_key=bool(d.get("new_key")), revoke_reason=d.get("revoke_reason"), retire=bool(d.get("retire")),
            key_elsewhere=d.get("key_elsewhere"),
        )


#: lint severities that stop apply (unless the finding's id is in ``lint_ignore``)
BLOCKING_SEVERITIES = ("FATAL", "ERROR")


@dataclasses.dataclass(frozen=True)
class Finding:
    """One pkilint finding on a certificate or CRL the plan would sign (see `pkiascode.lint`).

    ``id`` is pkilint's code (``pkix.…``), what ``lint_ignore`` lists; ``severity`` is pkilint's
    (FATAL, ERROR, WARNING, NOTICE, INFO); ``entry`` the authority or certificate name; ``what``
    ``certificate`` or ``crl``."""

    id: str
    severity: str
    entry: str
    what: str
    message: str

    def to_json(self) -> dict[str, str]:
        return {"id": self.id, "severity": self.severity, "entry": self.entry, "what": self.what,
                "message": self.message}

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> Finding:
        return cls(str(d["id"]), str(d["severity"]), str(d["entry"]), str(d["what"]), str(d["message"]))


@dataclasses.dataclass(frozen=True)
class Plan:
    """What an apply would do, as of ``at``, for one pki.toml and one state (by their digests).

    ``issued_at``: when the plan's certificates were taken to be signed, when that is not ``at``
    (``pki plan --at +30d`` decides what is due then, the diffs show the not_after of a certificate
    signed now). ``replace`` and ``rekey_missing``: the options it was made with. ``offline``: made
    without asking the key stores. ``expiring``: (qualified name, not_after) of each live object the
    plan does not change that expires within `OUTLOOK_DAYS` of ``at``, soonest first.
    ``pending_deletes``: (store, ref, entry) of each key an earlier apply retired, which the next apply
    deletes once the commit that retired it is on the upstream (``entry``: the authority or certificate
    whose key it was, as far as the reference tells, else None). They are not changes of this plan
    (an empty plan stays empty, ``--detailed-exitcode`` 0): every format lists them, so that a
    reviewer sees which keys a merge will let apply delete."""

    changes: tuple[Change, ...]
    warnings: tuple[str, ...]
    at: dt.datetime
    config_digest: str = ""
    state_digest: str = ""
    replace: tuple[str, ...] = ()
    findings: tuple[Finding, ...] = ()
    issued_at: dt.datetime | None = None
    rekey_missing: bool = False
    offline: bool = False
    expiring: tuple[tuple[str, str], ...] = ()
    pending_deletes: tuple[tuple[str, str, str | None], ...] = ()

    @property
    def empty(self) -> bool:
        return not self.changes

    def blocking(self, desired: Desired) -> tuple[Finding, ...]:
        """The findings that stop apply: FATAL and ERROR ones whose id neither ``[pki] lint_ignore``
        nor the entry's ``lint_ignore`` lists."""
        ignored = set(getattr(desired.settings, "lint_ignore", ()))
        out = []
        for f in self.findings:
            entry = desired.entries.get(f.entry)
            if f.severity in BLOCKING_SEVERITIES and f.id not in ignored \
                    and f.id not in getattr(entry, "lint_ignore", ()):
                out.append(f)
        return tuple(out)

    def summary(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for change in self.changes:
            counts[change.action.value] = counts.get(change.action.value, 0) + 1
        return {a.value: counts[a.value] for a in ACTION_ORDER if a.value in counts}

    def to_json(self) -> dict[str, Any]:
        """The public JSON form (``pki plan --format json``), plus what a saved plan needs."""
        d: dict[str, Any] = {
            "format_version": PLAN_FORMAT_VERSION,
            "changes": [c.to_json() for c in self.changes],
            "summary": self.summary(),
            "warnings": list(self.warnings),
            "at": format_time(self.at),
            "replace": list(self.replace),
            "config_digest": self.config_digest,
            "state_digest": self.state_digest,
            "findings": [f.to_json() for f in self.findings],
            "expiring": [{"name": n, "not_after": t} for n, t in self.expiring],
            "pending_deletes": [{"store": s, "ref": r, "entry": e} for s, r, e in self.pending_deletes],
        }
        if self.issued_at is not None:
            d["issued_at"] = format_time(self.issued_at)
        if self.rekey_missing:
            d["rekey_missing"] = True
        if self.offline:
            d["offline"] = True
        return d

    def dumps(self) -> str:
        return json.dumps(self.to_json(), indent=2) + "\n"

    def digest(self) -> str:
        """What the audit log records as the plan a change was made by.

        A plan is a pure function of pki.toml, state, the time and ``--replace``, so the digest of those
        (and of what the planner made of them) names it, without serialising thousands of changes."""
        from . import __version__

        ident = [__version__, self.config_digest, self.state_digest, format_time(self.at), list(self.replace),
                 [[c.action.value, c.name] for c in self.changes]]
        return digest_json(ident)

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> Plan:
        """A plan from its JSON form. What a saved plan's inputs are is checked here; its changes are
        only ever compared with a fresh plan's (see the module docstring), never executed."""
        if not isinstance(d, Mapping) or d.get("format_version") != PLAN_FORMAT_VERSION:
            raise ValueError(f"unsupported plan format_version {d.get('format_version')!r}"
                             if isinstance(d, Mapping) else "not a JSON object")
        replace = d.get("replace", [])
        if not isinstance(replace, list) or not all(isinstance(n, str) for n in replace):
            raise ValueError("replace is not a list of names")
        if not isinstance(d.get("rekey_missing", False), bool) or not isinstance(d.get("offline", False), bool):
            raise ValueError("rekey_missing and offline are true or false")
        if not isinstance(d["at"], str) or not isinstance(d.get("issued_at", ""), str):
            raise ValueError("at and issued_at are times")
        pending = d.get("pending_deletes", [])
        if not isinstance(pending, list) or not all(
                isinstance(p, Mapping) and isinstance(p.get("store"), str) and isinstance(p.get("ref"), str)
                and isinstance(p.get("entry"), (str, type(None))) for p in pending):
            raise ValueError("pending_deletes is not a list of {store, ref, entry}")
        return cls(
            changes=tuple(Change.from_json(c) for c in d["changes"]), warnings=tuple(d.get("warnings", ())),
            at=parse_time(d["at"]), config_digest=d.get("config_digest", ""),
            state_digest=d.get("state_digest", ""), replace=tuple(replace),
            findings=tuple(Finding.from_json(f) for f in d.get("findings", ())),
            issued_at=parse_time(d["issued_at"]) if "issued_at" in d else None,
            rekey_missing=d.get("rekey_missing", False), offline=d.get("offline", False),
            expiring=tuple((str(e["name"]), str(e["not_after"])) for e in d.get("expiring", ())),
            pending_deletes=tuple((p["store"], p["ref"], p["entry"]) for p in pending),
        )
