"""The desired PKI (from pki.toml) and the observed one (from state/), as plain immutable data.

`Entry` is one authority or certificate with every default and profile already applied. Its
`Entry.spec` is what the certificate's content is made from; the inventory keeps the spec each
certificate was made from, so a plan can say which field changes from what to what.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import enum
import functools
import hashlib
import json
from collections.abc import Mapping
from typing import Any

from .keytypes import KeyType
from .names import Host, format_duration

__all__ = [
    "Kind", "NameConstraints", "Revocation", "StoreSpec", "Settings", "Entry", "Desired",
    "Record", "Observed", "REVOCATION_REASONS", "SUBJECT_ATTRIBUTES", "CSR_STORE",
    "digest_json", "parse_time", "format_time", "utc_now",
]

#: RFC 5280 CRLReason names in snake case
REVOCATION_REASONS = (
    "unspecified", "key_compromise", "ca_compromise", "affiliation_changed", "superseded",
    "cessation_of_operation", "certificate_hold", "privilege_withdrawn", "aa_compromise",
)
#: subject attributes pki.toml accepts, in the order they appear in a certificate
SUBJECT_ATTRIBUTES = ("C", "ST", "L", "O", "OU", "CN")
#: the pseudo key store of entries signed from a committed CSR: the requester keeps the key
CSR_STORE = "csr"


class Kind(str, enum.Enum):
    AUTHORITY = "authority"
    CERTIFICATE = "certificate"


_KINDS = {k.value: k for k in Kind}


_COMPACT_SORTED = json.JSONEncoder(sort_keys=True, separators=(",", ":")).encode


def digest_json(value: Any) -> str:
    return hashlib.sha256(_COMPACT_SORTED(value).encode()).hexdigest()


def parse_time(text: str) -> dt.datetime:
    t = dt.datetime.fromisoformat(text)  # Python 3.11 reads the trailing Z
    return t if t.tzinfo else t.replace(tzinfo=dt.timezone.utc)


def utc_now() -> dt.datetime:
    """Now, in UTC, to the second: what certificates, plans and the audit log are stamped with."""
    return dt.datetime.now(dt.timezone.utc).replace(microsecond=0)


@functools.lru_cache(maxsize=256)
def format_time(t: dt.datetime) -> str:
    """ISO 8601 UTC to the second (``2026-11-27T14:28:34Z``); remembered, as an apply stamps
    thousands of records with the same few moments."""
    return t.astimezone(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclasses.dataclass(frozen=True)
class NameConstraints:
    """An authority's permitted and excluded name subtrees (as written in pki.toml)."""

    permitted: tuple[str, ...] = ()
    excluded: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True)
class Revocation:
    """An entry's ``revoked = {...}``: why, and since when."""

    reason: str = "unspecified"
    date: str | None = None  # ISO date; default: when apply revokes


@dataclasses.dataclass(frozen=True)
class StoreSpec:
    """One ``[backend.NAME]`` table."""

    name: str
    plugin: str
    settings: tuple[tuple[str, Any], ...]
    implicit: bool = False

    def settings_dict(self) -> dict[str, Any]:
        return dict(self.settings)


@dataclasses.dataclass(frozen=True)
class Settings:
    """The ``[pki]`` table."""

    state_dir: str = "state"  # a plain relative path (no ``..``, no leading dot, no symlink)
    commit: bool = True
    plugins: tuple[str, ...] | None = None
    keep_revoked_keys: bool = False
    id: str | None = None  # this PKI's short random id: scopes key paths and locks in shared stores
    lint_ignore: tuple[str, ...] = ()  # pkilint finding ids that do not stop apply, for every entry


@dataclasses.dataclass(frozen=True)
class Entry:
    """One ``[authority.NAME]`` or ``[certificate.NAME]``, resolved: defaults, profile and issuer applied."""

    kind: Kind
    name: str
    issuer: str | None
    common_name: str
    subject: tuple[tuple[str, str], ...]  # without CN, in SUBJECT_ATTRIBUTES order
    hosts: tuple[Host, ...]
    usages: tuple[str, ...]
    validity: int  # seconds
    renew_before: int
    key: KeyType
    backend: str
    rotate_key: bool
    exportable: bool
    path_length: int | None = None
    name_constraints: NameConstraints | None = None
    crl_validity: int = 7 * 86400
    crl_url: str | None = None
    issuer_crl_url: str | None = None  # the issuer's crl_url: a CRL distribution point in this cert
    csr: str | None = None  # path relative to pki.toml
    profile: str | None = None
    revoked: Revocation | None = None
    lint_ignore: tuple[str, ...] = ()  # pkilint finding ids that do not stop apply, for this entry

    @property
    def qualified(self) -> str:
        return f"{self.kind.value}.{self.name}"

    @property
    def is_root(self) -> bool:
        return self.issuer is None

    def subject_text(self) -> str:
        parts = [f"{k}={v}" for k, v in self.subject]
        parts.append(f"CN={self.common_name}")
        return ", ".join(parts)

    def spec(self) -> dict[str, Any]:
        """The fields a certificate is made from: a change to any of them reissues it. Computed once
        per entry (config, planner and apply each ask): treat it as read-only."""
        cached = self.__dict__.get("_spec")
        if cached is not None:
            return cached  # type: ignore[no-any-return]
        spec: dict[str, Any] = {
            "issuer": self.issuer,
            "subject": self.subject_text(),
            "validity": format_duration(self.validity),
            "usages": list(self.usages),
        }
        if self.kind is Kind.CERTIFICATE:
            spec["hosts"] = [h for _, h in self.hosts]
            spec["profile"] = self.profile
        else:
            spec["path_length"] = self.path_length
            nc = self.name_constraints
            spec["name_constraints"] = ({"permitted": list(nc.permitted), "excluded": list(nc.excluded)}
                                        if nc else None)
        spec["crl_distribution_point"] = self.issuer_crl_url
        self.__dict__["_spec"] = spec  # a frozen dataclass: a cache outside its fields
        return spec

    @property
    def store(self) -> str:
        return CSR_STORE if self.csr else self.backend


@dataclasses.dataclass(frozen=True)
class Desired:
    """pki.toml, validated and resolved: what should exist."""

    settings: Settings
    stores: Mapping[str, StoreSpec]
    entries: Mapping[str, Entry]  # parents before children
    digest: str  # of pki.toml's bytes
    spec_digests: Mapping[str, str]


@dataclasses.dataclass(frozen=True)
class Record:
    """One object of state/inventory.json: what exists. Never key material."""

    name: str
    kind: Kind
    issuer: str | None
    serial: str  # hex
    sha256: str
    not_before: dt.datetime
    not_after: dt.datetime
    subject: str
    key_type: str
    store: str
    plugin: str
    key_id: str
    key_origin: str
    key_exportable: bool
    ski: str
    issuer_ski: str | None
    spec: Mapping[str, Any]
    spec_digest: str
    revoked: Mapping[str, Any] | None = None
    crl: Mapping[str, Any] | None = None

    @property
    def qualified(self) -> str:
        return f"{self.kind.value}.{self.name}"

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name, "kind": self.kind.value, "issuer": self.issuer, "serial": self.serial,
            "sha256": self.sha256, "not_before": format_time(self.not_before),
            "not_after": format_time(self.not_after), "subject": self.subject,
            "key": {"algorithm": self.key_type, "backend": self.store, "plugin": self.plugin,
                    "ref": self.key_id, "origin": self.key_origin, "exportable": self.key_exportable},
            "ski": self.ski, "issuer_ski": self.issuer_ski, "spec": dict(self.spec),
            "spec_digest": self.spec_digest, "revoked": dict(self.revoked) if self.revoked else None,
            "crl": dict(self.crl) if self.crl else None,
        }

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> Record:
        """ValueError/KeyError/TypeError for a malformed record (the caller reports a damaged inventory)."""
        k = d["key"]
        revoked, crl = d.get("revoked"), d.get("crl")
        if revoked is not None and not isinstance(revoked, dict):
            raise ValueError(f"{d['name']}: revoked must be an object or null")
        if crl is not None:
            parse_time(crl["next_update"])
            int(crl.get("number") or 0)
        return cls(
            d["name"], _KINDS[d["kind"]], d["issuer"], d["serial"], d["sha256"],
            parse_time(d["not_before"]), parse_time(d["not_after"]), d["subject"],
            k["algorithm"], k["backend"], k["plugin"], k["ref"], k.get("origin", "generated"),
            bool(k.get("exportable", True)), d["ski"], d.get("issuer_ski"), d.get("spec") or {},
            d["spec_digest"], d.get("revoked"), d.get("crl"),
        )


@dataclasses.dataclass(frozen=True)
class Observed:
    """What state/ and the key stores say exists, plus any drift found while reading them."""

    records: Mapping[str, Record]
    revocations: tuple[Mapping[str, Any], ...]  # {issuer, serial, name, date, reason}
    cert_drift: Mapping[str, str] = dataclasses.field(default_factory=dict)  # name -> why
    crl_drift: Mapping[str, str] = dataclasses.field(default_factory=dict)
    missing_keys: Mapping[str, str] = dataclasses.field(default_factory=dict)
    digest: str = ""
    # Keys a committed apply retired, deleted once its commit is on the upstream: (store, ref).
    pending_deletes: tuple[tuple[str, str], ...] = ()

    @classmethod
    def empty(cls) -> Observed:
        return cls(records={}, revocations=())
