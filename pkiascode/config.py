"""pki.toml → `Desired`: parse, validate, apply defaults and profiles, order parents first.

Validation errors are found by TOML path and turned into ``pki.toml:LINE`` only when there is an
error (the line is looked up in the text then), so the fast path never tracks positions. Nothing is
cached: the file is parsed on every run (a plan over ten thousand unchanged certificates is answered
from the no-op memo in `pkiascode.memo`, which never decides what is issued).

pki.toml is untrusted input (a pull request writes it): every value apply would refuse is refused
here, with its line. No key or string may hold a control character (`errors.control_character`);
subject attributes keep to their RFC 5280 upper bounds; the state directory is a plain relative path
that is no symlink; a CSR is a regular file below pki.toml's directory, reached through no symlink.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import os
import posixpath
import re
import stat
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlsplit

from . import __version__
from .backend import Option
from .errors import ConfigError, ConfigIssue, control_character, first_of
from .keytypes import KeyType
from .model import (
    REVOCATION_REASONS, SUBJECT_ATTRIBUTES, Desired, Entry, Kind, NameConstraints, Revocation,
    Settings, StoreSpec, digest_json, parse_time,
)
from .names import (
    AUTHORITY_USAGES, NAME_RE, canonical_usages, classify_host, constraint_kind, default_usages,
    did_you_mean, host_permitted, parse_duration, usage_errors,
)

__all__ = ["load_config", "parse_config", "find_line", "open_inside", "read_inside", "IMPLICIT_STORE",
           "OptionsLookup", "MAX_NAME", "MAX_PATH_LENGTH", "MAX_CSR_BYTES"]

IMPLICIT_STORE = "local"
#: the built-in store's directory (a store defined over it takes its place)
IMPLICIT_PATH = ".pki/keys"

OptionsLookup = Callable[[str], "Mapping[str, Option] | None"]

#: longest name of an entry or backend: it becomes file names (``.NAME.pem.tmp...``), key labels and paths
MAX_NAME = 64
#: OpenSSL verifies chains of at most 100 certificates by default; a longer path_length means nothing
MAX_PATH_LENGTH = 100
#: a CSR is a few kilobytes; a bigger file named by ``csr`` is not read
MAX_CSR_BYTES = 256 * 1024
#: RFC 5280 Appendix A upper bounds (ub-*) of the subject attributes pki.toml takes, in characters
#: (the common name in UTF-8 bytes: cryptography refuses more than 64 of them)
_SUBJECT_MAX = {"C": 2, "ST": 128, "L": 128, "O": 64, "OU": 64, "CN": 64}
_COUNTRY_RE = re.compile(r"^[A-Za-z]{2}\Z")
_ID_RE = re.compile(r"^[a-z0-9]{8,32}\Z")
_FINDING_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}\Z")
_PATH_PART = r"[A-Za-z0-9_][A-Za-z0-9._-]*"
_STATE_DIR_RE = re.compile(rf"^{_PATH_PART}(?:/{_PATH_PART})*\Z")
#: X.509 times before 1950 cannot be encoded (UTCTime 1950-2049, then GeneralizedTime)
_EARLIEST_TIME = dt.datetime(1950, 1, 1, tzinfo=dt.timezone.utc)
#: the part of an email address before the @ that an rfc822Name holds: RFC 5322's dot-atom, in ASCII
_MAILBOX_RE = re.compile(r"^[A-Za-z0-9!#$%&'*+/=?^_`{|}~.-]+\Z")
_CRL_URL_RE = re.compile(r"^(https?|ldap)://[!-~]+\Z")

_PKI_KEYS = {"state_dir", "commit", "plugins", "keep_revoked_keys", "id", "lint_ignore"}
_DEFAULT_KEYS = {"backend", "key", "validity", "renew_before", "subject", "crl_validity"}
_PROFILE_KEYS = {"usages", "validity", "renew_before"}
_COMMON_KEYS = {"issuer", "common_name", "subject", "key", "validity", "renew_before", "backend",
                "rotate_key", "revoked", "exportable", "lint_ignore"}
_AUTHORITY_KEYS = _COMMON_KEYS | {"path_length", "name_constraints", "crl_validity", "crl_url"}
_CERTIFICATE_KEYS = _COMMON_KEYS | {"profile", "hosts", "usages", "csr"}
_TOP_KEYS = {"pki", "backend", "defaults", "profile", "authority", "certificate"}

_SECRET_WORDS = {"pin", "password", "passphrase", "secret", "token", "vault_token", "so_pin", "user_pin"}
_TYPE_NAMES = {str: "a string", bool: "true or false", int: "an integer", list: "a list",
               dict: "a table"}


class _Issues(Exception):
    def __init__(self, issues: list[ConfigIssue]) -> None:
        self.issues = issues


class _Checker:
    """Collects every mistake instead of stopping at the first."""

    def __init__(self) -> None:
        self.issues: list[ConfigIssue] = []
        self.suggestions = 0

    def suggest(self, word: str, choices: Iterable[str]) -> str:
        """`did_you_mean` among names the file defines, for its first mistakes only: each compares the
        word with every name, and thousands of mistakes among thousands of names took minutes."""
        self.suggestions += 1
        return did_you_mean(word, choices) if self.suggestions <= 20 else ""

    def add(self, path: tuple[str, ...], message: str, where: tuple[str, ...] | None = None) -> None:
        issue = ConfigIssue(path, message)
        issue.where = _where(where if where is not None else path)  # type: ignore[attr-defined]
        self.issues.append(issue)

    def unknown_keys(self, table: Mapping[str, Any], allowed: Iterable[str], path: tuple[str, ...]) -> None:
        if not isinstance(allowed, (set, frozenset)):
            allowed = set(allowed)
        for key in table:
            if key not in allowed:
                self.add(path + (key,), f"unknown key {key!r}{did_you_mean(key, allowed)}", where=path)

    def typed(self, table: Mapping[str, Any], key: str, types: type | tuple[type, ...],
              path: tuple[str, ...], default: Any = None) -> Any:
        if key not in table:
            return default
        value = table[key]
        types_t = types if isinstance(types, tuple) else (types,)
        if isinstance(value, bool) and bool not in types_t:
            ok = False
        else:
            ok = isinstance(value, types_t)
        if not ok:
            want = " or ".join(_TYPE_NAMES.get(t, t.__name__) for t in types_t)
            self.add(path + (key,), f"{key} must be {want}, not {_describe(value)}")
            return default
        return value

    def string_list(self, table: Mapping[str, Any], key: str, path: tuple[str, ...]) -> list[str] | None:
        value = self.typed(table, key, list, path)
        if value is None:
            return None
        if not all(isinstance(v, str) for v in value):
            self.add(path + (key,), f"{key} must be a list of strings")
            return None
        return value

    def duration(self, table: Mapping[str, Any], key: str, path: tuple[str, ...]) -> int | None:
        value = self.typed(table, key, str, path)
        if value is None:
            return None
        if len(value) > 64:  # 1000y is the longest; spare int() a number of thousands of digits
            self.add(path + (key,), f"bad duration {value[:12]!r}... ({len(value)} characters): use an integer "
                                    'and a unit (s m h d w y), e.g. "90d" or "1y30d"')
            return None
        try:
            return parse_duration(value)
        except ValueError as e:
            self.add(path + (key,), str(e))
            return None

    def key_type(self, table: Mapping[str, Any], key: str, path: tuple[str, ...]) -> KeyType | None:
        value = self.typed(table, key, str, path)
        if value is None:
            return None
        try:
            return KeyType(value)
        except ValueError:
            names = [k.value for k in KeyType]
            self.add(path + (key,), f"unknown key type {value!r}{did_you_mean(value, names)}; "
                                    f"use one of {', '.join(names)}")
            return None

    def subject(self, table: Mapping[str, Any], path: tuple[str, ...]) -> dict[str, str] | None:
        value = self.typed(table, "subject", dict, path)
        if value is None:
            return None
        out: dict[str, str] = {}
        for attr, v in value.items():
            if attr not in SUBJECT_ATTRIBUTES or attr == "CN":
                allowed = [a for a in SUBJECT_ATTRIBUTES if a != "CN"]
                hint = " (set common_name instead)" if attr.upper() == "CN" else did_you_mean(attr, allowed)
                self.add(path + ("subject", attr), f"unknown subject attribute {attr!r}{hint}; "
                                                   f"use {', '.join(allowed)}")
            elif not isinstance(v, str):
                self.add(path + ("subject", attr), f"subject {attr} must be a string")
            elif attr == "C" and v and not _COUNTRY_RE.match(v):
                self.add(path + ("subject", attr), f"country C must be a two-letter code, not {v!r}")
            elif len(v) > _SUBJECT_MAX[attr]:
                self.add(path + ("subject", attr), f"subject {attr} is {len(v)} characters long; X.509 allows "
                                                   f"at most {_SUBJECT_MAX[attr]} (RFC 5280)")
            else:
                out[attr] = v
        return out

    def lint_ignore(self, table: Mapping[str, Any], path: tuple[str, ...]) -> tuple[str, ...]:
        items = self.string_list(table, "lint_ignore", path)
        if items is None:
            return ()
        for item in items:
            if not _FINDING_RE.match(item):
                self.add(path + ("lint_ignore",), f"bad lint finding id {item!r}: write pkilint's id, "
                                                  "like 'pkix.invalid_domain_name_syntax'")
        return tuple(dict.fromkeys(items))

    def control_characters(self, data: Mapping[str, Any]) -> None:
        """Every key and string of the file, at any depth (without recursion: tomli allows
        hundreds of levels). Only tables and lists are queued: this runs over every value."""
        search = control_character
        todo: list[tuple[tuple[str, ...], Any]] = [((), data)]
        while todo:
            path, value = todo.pop()
            if isinstance(value, dict):
                for key, v in value.items():
                    if search(key):
                        self.add(path + (key,), f"name {key!r} holds a control character", where=path)
                    elif type(v) is str:
                        if search(v):
                            self._control_character(path + (key,), v)
                    elif isinstance(v, (dict, list)):
                        todo.append((path + (key,), v))
            else:  # a list: its items are at the list's path
                for v in value:
                    if type(v) is str:
                        if search(v):
                            self._control_character(path, v)
                    elif isinstance(v, (dict, list)):
                        todo.append((path, v))

    def _control_character(self, path: tuple[str, ...], value: str) -> None:
        found = control_character(value)
        self.add(path, f"{value!r} holds a control character ({found!r}); no value in pki.toml may have one")


def _describe(value: Any) -> str:
    if isinstance(value, bool):
        return "true/false"
    if isinstance(value, str):
        return f"the string {value!r}"
    if isinstance(value, (int, float)):
        return f"the number {value}"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a table"
    return type(value).__name__


# --- the validator ----------------------------------------------------------------------------

def parse_config(data: Mapping[str, Any], *, digest: str, options_for: OptionsLookup) -> Desired:
    """Validate parsed TOML and resolve it into a `Desired`. Raises `_Issues`."""
    c = _Checker()
    c.control_characters(data)
    if c.issues:
        raise _Issues(c.issues)
    c.unknown_keys(data, _TOP_KEYS, ())
    for top in _TOP_KEYS:
        if top in data and not isinstance(data[top], dict):
            c.add((top,), f"{top} must be a table ([{top}] or [{top}.NAME])")
    if c.issues:
        raise _Issues(c.issues)

    # [pki]
    pki = data.get("pki", {})
    c.unknown_keys(pki, _PKI_KEYS, ("pki",))
    state_dir = c.typed(pki, "state_dir", str, ("pki",), "state")
    if state_dir is not None:
        state_dir = _state_dir(c, state_dir)
    pki_id = c.typed(pki, "id", str, ("pki",))
    if pki_id is not None and not _ID_RE.match(pki_id):
        c.add(("pki", "id"), f"id must be 8 to 32 lowercase letters and digits (pki init writes one), "
                             f"not {pki_id!r}")
    plugins_allowed = c.string_list(pki, "plugins", ("pki",))
    settings = Settings(
        state_dir=state_dir or "state",
        commit=c.typed(pki, "commit", bool, ("pki",), True),
        plugins=tuple(plugins_allowed) if plugins_allowed is not None else None,
        keep_revoked_keys=c.typed(pki, "keep_revoked_keys", bool, ("pki",), False),
        id=pki_id,
        lint_ignore=c.lint_ignore(pki, ("pki",)),
    )

    # [backend.*]
    stores: dict[str, StoreSpec] = {}
    for name, table in data.get("backend", {}).items():
        path = ("backend", name)
        if not isinstance(table, dict):
            c.add(path, "must be a table with at least plugin = \"...\"")
            continue
        _check_name(c, name, path)
        plugin = c.typed(table, "plugin", str, path)
        if plugin is None:
            if "plugin" not in table:
                c.add(path, 'missing plugin = "local" | "vault" | "pkcs11"')
            continue
        if settings.plugins is not None and plugin not in settings.plugins:
            c.add(path + ("plugin",), f"plugin {plugin!r} is not in [pki] plugins = {list(settings.plugins)}")
            continue
        options = options_for(plugin)
        if options is None:
            c.add(path + ("plugin",), f"no backend plugin {plugin!r} is installed")
            continue
        for key in table:
            if key not in options and key.lower() in _SECRET_WORDS:
                env_options = [o for o in options if o.endswith("_env")]
                hint = (f"; name the environment variable that holds it with {env_options[0]}"
                        if env_options else "; the plugin reads it from the environment")
                c.add(path + (key,), f"{key} does not belong in pki.toml: secrets never go into files in git"
                                     f"{hint}", where=path)
        c.unknown_keys({k: v for k, v in table.items() if k.lower() not in _SECRET_WORDS},
                       set(options) | {"plugin"}, path)
        values: dict[str, Any] = {}
        for key, opt in options.items():
            v = c.typed(table, key, opt.type, path, opt.default)
            if v is not None:
                values[key] = v
        stores[name] = StoreSpec(name, plugin, tuple(sorted(values.items())))
    # one directory, one store: two stores over it would each take the other's keys for orphans (`pki prune`)
    key_dirs: dict[str, str] = {}
    for name, spec in stores.items():
        if spec.plugin == "local":
            where = posixpath.normpath(str(spec.settings_dict().get("path") or IMPLICIT_PATH))
            if where in key_dirs:
                c.add(("backend", name, "path"), f"{where} is backend {key_dirs[where]}'s directory too: each store "
                                                 "has a directory of its own")
            key_dirs.setdefault(where, name)
    if (IMPLICIT_STORE not in stores and IMPLICIT_PATH not in key_dirs
            and (settings.plugins is None or "local" in settings.plugins)):
        stores[IMPLICIT_STORE] = StoreSpec(IMPLICIT_STORE, "local", (("path", IMPLICIT_PATH),), implicit=True)

    # [defaults]
    d = data.get("defaults", {})
    c.unknown_keys(d, _DEFAULT_KEYS, ("defaults",))
    defaults = {
        "backend": c.typed(d, "backend", str, ("defaults",)),
        "key": c.key_type(d, "key", ("defaults",)),
        "validity": c.duration(d, "validity", ("defaults",)),
        "renew_before": c.duration(d, "renew_before", ("defaults",)),
        "subject": c.subject(d, ("defaults",)) or {},
        "crl_validity": c.duration(d, "crl_validity", ("defaults",)),
    }
    if defaults["backend"] and defaults["backend"] not in stores:
        c.add(("defaults", "backend"), _unknown_store(c, defaults["backend"], stores))

    # [profile.*]
    profiles: dict[str, dict[str, Any]] = {}
    for name, table in data.get("profile", {}).items():
        path = ("profile", name)
        if not isinstance(table, dict):
            c.add(path, "must be a table")
            continue
        c.unknown_keys(table, _PROFILE_KEYS, path)
        usages = c.string_list(table, "usages", path)
        prof: dict[str, Any] = {"validity": c.duration(table, "validity", path),
                                "renew_before": c.duration(table, "renew_before", path), "usages": None}
        if usages is not None:
            try:
                prof["usages"] = canonical_usages(usages)
            except ValueError as e:
                c.add(path + ("usages",), str(e))
            else:  # profiles are for certificates
                for why in usage_errors(prof["usages"], is_ca=False):
                    c.add(path + ("usages",), why)
        profiles[name] = prof

    # [authority.*] and [certificate.*]
    raw: dict[str, tuple[Kind, dict[str, Any]]] = {}
    for kind in (Kind.AUTHORITY, Kind.CERTIFICATE):
        for name, table in data.get(kind.value, {}).items():
            path = (kind.value, name)
            if not isinstance(table, dict):
                c.add(path, "must be a table")
                continue
            _check_name(c, name, path)
            if name in raw:
                other = raw[name][0].value
                c.add(path, f"name {name!r} is used twice (also {other}.{name}); names are unique "
                            "across authorities and certificates")
                continue
            raw[name] = (kind, table)

    entries: dict[str, Entry] = {}
    for name, (kind, table) in raw.items():
        entry = _entry(c, kind, name, table, raw, defaults, profiles, stores)
        if entry is not None:
            entries[name] = entry

    ordered = _order(c, entries, raw)
    if not c.issues:
        ordered = _inherit(ordered)
        _check_tree(c, ordered)
    if c.issues:
        raise _Issues(c.issues)
    spec_digests = {name: digest_json(e.spec()) for name, e in ordered.items()}
    return Desired(settings=settings, stores=stores, entries=ordered, digest=digest, spec_digests=spec_digests)


def _check_name(c: _Checker, name: str, path: tuple[str, ...]) -> None:
    if not NAME_RE.match(name):
        c.add(path, f"invalid name {name!r}: use lowercase letters, digits, '.', '_' and '-', "
                    "starting with a letter or digit")
    elif len(name) > MAX_NAME:
        c.add(path, f"name {name[:20]}... is {len(name)} characters long; at most {MAX_NAME}")


def _state_dir(c: _Checker, value: str) -> str | None:
    """``state_dir`` as a plain relative path (``./state/`` → ``state``), or None after an error."""
    parts = PurePosixPath(value).parts
    where = ("pki", "state_dir")
    if not value.strip() or os.path.isabs(value) or ".." in parts:
        c.add(where, "state_dir must be a relative path inside the repository")
    elif not parts or parts[0] in (".pki", ".git"):
        c.add(where, "state_dir must be a directory of its own (not the directory of pki.toml, "
                     "not under .pki/ or .git/)")
    elif not _STATE_DIR_RE.match("/".join(parts)):
        c.add(where, f"state_dir {value!r} must be a plain relative path: names of letters, digits, "
                     "'.', '_' and '-', not starting with '.' or '-', joined by '/'")
    else:
        return "/".join(parts)
    return None


def _unknown_store(c: _Checker, name: str, stores: Mapping[str, StoreSpec]) -> str:
    return (f"unknown backend {name!r}{c.suggest(name, stores)}; define it as [backend.{name}] "
            f"(known: {', '.join(sorted(stores)) or 'none'})")


def _entry(c: _Checker, kind: Kind, name: str, t: dict[str, Any], raw: Mapping[str, tuple[Kind, dict]],
           defaults: dict[str, Any], profiles: dict[str, dict[str, Any]],
           stores: Mapping[str, StoreSpec]) -> Entry | None:
    path = (kind.value, name)
    before = len(c.issues)
    is_auth = kind is Kind.AUTHORITY
    c.unknown_keys(t, _AUTHORITY_KEYS if is_auth else _CERTIFICATE_KEYS, path)

    issuer = c.typed(t, "issuer", str, path)
    if issuer is not None:
        if issuer == name:
            c.add(path + ("issuer",), "an entry cannot issue itself; leave issuer out for a self-signed root")
        elif issuer not in raw:
            auths = (n for n, (k, _) in raw.items() if k is Kind.AUTHORITY)
            c.add(path + ("issuer",), f"unknown issuer {issuer!r}{c.suggest(issuer, auths)}")
        elif raw[issuer][0] is not Kind.AUTHORITY:
            c.add(path + ("issuer",), f"issuer {issuer!r} is a certificate, not an authority")
    elif not is_auth:
        c.add(path, 'missing issuer = "<authority>"')

    profile_name = None
    profile: dict[str, Any] = {}
    if not is_auth:
        profile_name = c.typed(t, "profile", str, path)
        if profile_name is not None:
            if profile_name not in profiles:
                c.add(path + ("profile",), f"unknown profile {profile_name!r}{c.suggest(profile_name, profiles)}")
            else:
                profile = profiles[profile_name]

    common_name = c.typed(t, "common_name", str, path)
    if common_name is None and is_auth and "common_name" not in t:
        c.add(path, 'missing common_name = "..."')
    if common_name is not None and not common_name.strip():
        c.add(path + ("common_name",), "common_name must not be empty")
    elif common_name is not None and len(common_name.encode()) > _SUBJECT_MAX["CN"]:
        c.add(path + ("common_name",), f"common_name is {len(common_name.encode())} bytes long (UTF-8); "
                                       f"X.509 allows at most {_SUBJECT_MAX['CN']} (RFC 5280)")

    subject = dict(defaults["subject"])
    subject.update(c.subject(t, path) or {})
    subject_t = tuple((a, subject[a]) for a in SUBJECT_ATTRIBUTES if a in subject and subject[a])

    hosts: list[tuple[str, str]] = []
    for h in (c.string_list(t, "hosts", path) or []) if not is_auth else []:
        try:
            host = _host(h)
        except ValueError as e:
            c.add(path + ("hosts",), str(e))
            continue
        if host not in hosts:
            hosts.append(host)

    usages: tuple[str, ...] | None = None
    if is_auth:
        usages = canonical_usages(AUTHORITY_USAGES)
    else:
        raw_usages = c.string_list(t, "usages", path)
        if raw_usages is not None:
            try:
                usages = canonical_usages(raw_usages)
            except ValueError as e:
                c.add(path + ("usages",), str(e))
            else:
                for why in usage_errors(usages, is_ca=False):
                    c.add(path + ("usages",), why)
        elif profile.get("usages") is not None:
            usages = profile["usages"]  # checked with the profile

    key = c.key_type(t, "key", path) or defaults["key"] or KeyType.ECDSA_P256
    if usages is None:
        usages = default_usages(key)

    validity = c.duration(t, "validity", path) or profile.get("validity") or defaults["validity"]
    if validity is None:
        validity = (10 * 365 if issuer is None else 5 * 365) * 86400 if is_auth else 365 * 86400
    renew_before = c.duration(t, "renew_before", path) or profile.get("renew_before") or defaults["renew_before"]
    if renew_before is None:
        renew_before = min(30 * 86400, validity // 3)
    elif renew_before >= validity:
        where = path + ("renew_before",) if "renew_before" in t else path
        c.add(where, f"renew_before ({t.get('renew_before') or 'inherited'}) must be shorter than validity, "
                     "or every plan would renew it")

    backend = c.typed(t, "backend", str, path) or defaults["backend"] or IMPLICIT_STORE
    if backend not in stores:
        if "backend" in t:
            c.add(path + ("backend",), _unknown_store(c, backend, stores))
        elif not defaults["backend"]:  # an unknown defaults.backend is reported once, above
            c.add(path, _unknown_store(c, backend, stores))

    rotate_key = c.typed(t, "rotate_key", bool, path, not is_auth)
    exportable = c.typed(t, "exportable", bool, path, not is_auth)

    path_length = None
    nc = None
    crl_validity = defaults["crl_validity"] or 7 * 86400
    crl_url = None
    if is_auth:
        path_length = c.typed(t, "path_length", int, path)
        if path_length is not None and path_length < 0:
            c.add(path + ("path_length",), "path_length must be 0 or more")
        elif path_length is not None and path_length > MAX_PATH_LENGTH:
            c.add(path + ("path_length",), f"path_length {path_length} is more than {MAX_PATH_LENGTH}, "
                                           "longer than any chain a verifier follows")
        nc = _name_constraints(c, t, path)
        crl_validity = c.duration(t, "crl_validity", path) or crl_validity
        crl_url = c.typed(t, "crl_url", str, path)
        if crl_url is not None and (not _CRL_URL_RE.match(crl_url) or _uri_error(crl_url)):
            c.add(path + ("crl_url",), f"crl_url must be an http(s):// or ldap:// URL, not {crl_url!r}")

    csr = None
    if not is_auth:
        csr = c.typed(t, "csr", str, path)
        if csr is not None:
            parts = PurePosixPath(csr).parts
            if os.path.isabs(csr) or ".." in parts or not parts:
                c.add(path + ("csr",), "csr must be a path inside the repository, relative to pki.toml")
            elif parts[0] in (".git", ".pki"):
                c.add(path + ("csr",), f"csr must not be under {parts[0]}/ (git's files, pkiascode's keys)")
            for k in ("key", "backend", "rotate_key", "exportable"):
                if k in t:
                    c.add(path + (k,), f"{k} does not apply to an entry signed from a CSR: the requester keeps the key")

    revoked = _revocation(c, t, path)
    lint_ignore = c.lint_ignore(t, path)

    if len(c.issues) != before:
        return None
    return Entry(
        kind=kind, name=name, issuer=issuer, common_name=common_name or name, subject=subject_t,
        hosts=tuple(hosts), usages=usages, validity=validity, renew_before=renew_before, key=key,
        backend=backend, rotate_key=rotate_key, exportable=exportable, path_length=path_length,
        name_constraints=nc, crl_validity=crl_validity, crl_url=crl_url, csr=csr, profile=profile_name,
        revoked=revoked, lint_ignore=lint_ignore,
    )


def _host(value: str) -> tuple[str, str]:
    """`classify_host`, and what it lets through that no certificate can hold. ValueError says why."""
    if "@" in value and "://" not in value:
        local = value.rpartition("@")[0]
        if local and not _MAILBOX_RE.match(local):
            raise ValueError(f"bad email address {value!r}: before the last @ only ASCII letters, digits and "
                             "!#$%&'*+/=?^_`{|}~.- (a certificate holds no quoted or internationalised mailbox)")
    kind, host = classify_host(value)
    if kind == "ip" and "%" in host:
        raise ValueError(f"bad host {value!r}: an IP address in a certificate has no zone (%...)")
    if kind == "uri":
        why = "it has a space" if " " in host else _uri_error(host)
        if why:
            raise ValueError(f"bad URI {value!r}: {why}")
    return kind, host


def _uri_error(uri: str) -> str | None:
    """Why ``uri`` cannot be read as a URI (the host checks of name constraints read it), or None."""
    try:
        urlsplit(uri).port  # reads the host and port, as name constraint checks do
    except ValueError as e:
        return str(e)
    return None


def _name_constraints(c: _Checker, t: Mapping[str, Any], path: tuple[str, ...]) -> NameConstraints | None:
    value = c.typed(t, "name_constraints", dict, path)
    if value is None:
        return None
    p = path + ("name_constraints",)
    c.unknown_keys(value, {"permitted", "excluded"}, p)
    lists: dict[str, tuple[str, ...]] = {}
    for key in ("permitted", "excluded"):
        items = c.string_list(value, key, p) or []
        for item in items:
            if item != item.strip():
                c.add(p + (key,), f"bad name constraint {item!r}: surrounded by spaces")
                continue
            local = item.rpartition("@")[0] if "@" in item and not item.startswith("uri:") else ""
            if local and not _MAILBOX_RE.match(local):
                c.add(p + (key,), f"bad email constraint {item!r}: before the last @ only ASCII letters, digits "
                                  "and !#$%&'*+/=?^_`{|}~.-")
                continue
            try:
                constraint_kind(item)
            except ValueError as e:
                c.add(p + (key,), str(e))
        lists[key] = tuple(items)
    if not lists["permitted"] and not lists["excluded"]:
        c.add(p, "name_constraints needs permitted or excluded entries")
    return NameConstraints(lists["permitted"], lists["excluded"])


def _revocation(c: _Checker, t: Mapping[str, Any], path: tuple[str, ...]) -> Revocation | None:
    if "revoked" not in t:
        return None
    value = t["revoked"]
    p = path + ("revoked",)
    if value is True:
        return Revocation()
    if value is False:
        return None
    if not isinstance(value, dict):
        c.add(p, 'revoked must be true or a table like { reason = "key_compromise" }')
        return None
    c.unknown_keys(value, {"reason", "date"}, p)
    reason = value.get("reason", "unspecified")
    if not isinstance(reason, str) or reason not in REVOCATION_REASONS:
        c.add(p + ("reason",), f"unknown revocation reason {reason!r}{did_you_mean(str(reason), REVOCATION_REASONS)}; "
                               f"use one of {', '.join(REVOCATION_REASONS)}")
        return None
    date = value.get("date")
    if date is None:
        return Revocation(reason)
    if isinstance(date, (dt.date, dt.datetime)):
        date = date.isoformat()
    elif not isinstance(date, str):
        c.add(p + ("date",), "revocation date must be a date")
        return None
    try:
        when = parse_time(date)
    except ValueError:
        c.add(p + ("date",), f"revocation date {date!r} is not an ISO date (YYYY-MM-DD)")
        return None
    try:
        in_utc = when.astimezone(dt.timezone.utc)  # an offset can take 9999-12-31 past what a date holds
    except OverflowError:
        in_utc = None
    if in_utc is not None and in_utc < _EARLIEST_TIME or when < _EARLIEST_TIME:
        c.add(p + ("date",), f"revocation date {date} is before 1950, which a CRL cannot hold (RFC 5280 UTCTime)")
        return None
    if in_utc is None:
        c.add(p + ("date",), f"revocation date {date} is after 9999-12-31T23:59:59Z in UTC, which a CRL cannot hold "
                             "(RFC 5280 GeneralizedTime)")
        return None
    return Revocation(reason, date)


def _order(c: _Checker, entries: dict[str, Entry], raw: Mapping[str, Any]) -> dict[str, Entry]:
    """Parents before children; reports issuer cycles and chains longer than a verifier follows.
    Without recursion: pki.toml may chain thousands of authorities."""
    ordered: dict[str, Entry] = {}
    depth: dict[str, int] = {}  # authorities above each entry
    for name in entries:
        trail: list[str] = []  # name, its issuer, ... up to one already ordered
        here: str | None = name
        while here is not None and here in entries and here not in ordered:
            if here in trail:
                cycle = trail[trail.index(here):] + [here]
                c.add((raw[here][0].value, here, "issuer"), "issuer cycle: " + " → ".join(cycle))
                break
            trail.append(here)
            here = entries[here].issuer
        for n in reversed(trail):
            e = entries[n]
            depth[n] = depth.get(e.issuer, -1) + 1 if e.issuer else 0
            if e.kind is Kind.AUTHORITY and depth[n] == MAX_PATH_LENGTH + 1:
                c.add((e.kind.value, n, "issuer"), f"authority.{n} is {depth[n]} authorities below its root; "
                                                   f"at most {MAX_PATH_LENGTH}, longer than any chain a verifier follows")
            ordered[n] = e
    return ordered


def _inherit(entries: dict[str, Entry]) -> dict[str, Entry]:
    """Fill in what an entry takes from its issuer: its CRL URL; revocation of everything below."""
    import dataclasses

    out: dict[str, Entry] = {}
    for name, e in entries.items():
        issuer = out.get(e.issuer) if e.issuer else None
        changes: dict[str, Any] = {}
        if issuer is not None:
            if issuer.crl_url:
                changes["issuer_crl_url"] = issuer.crl_url
            if issuer.revoked and not e.revoked:
                reason = "ca_compromise" if issuer.revoked.reason in ("key_compromise", "ca_compromise") \
                    else "cessation_of_operation"
                changes["revoked"] = Revocation(reason, issuer.revoked.date)
        out[name] = dataclasses.replace(e, **changes) if changes else e
    return out


def _check_tree(c: _Checker, entries: Mapping[str, Entry]) -> None:
    """Path lengths and name constraints along each chain."""
    for e in entries.values():
        depth_below = 0  # authorities between e and the ancestor being checked
        parent = entries.get(e.issuer) if e.issuer else None
        while parent is not None:
            if e.kind is Kind.AUTHORITY and parent.path_length is not None and depth_below >= parent.path_length:
                c.add((e.kind.value, e.name, "issuer"),
                      f"authority.{parent.name} has path_length {parent.path_length}, which allows "
                      f"{'no' if parent.path_length == 0 else parent.path_length} authorit"
                      f"{'y' if parent.path_length == 1 else 'ies'} below it; authority.{e.name} would exceed it")
                break
            nc = parent.name_constraints
            if nc is not None:
                for host, key in _constrained_names(e):
                    why = host_permitted(host, nc.permitted, nc.excluded)
                    if why:
                        what = "host" if key == "hosts" else "common_name"
                        c.add((e.kind.value, e.name, key),
                              f"{what} {host[1]!r} is outside the name constraints of authority.{parent.name} ({why})")
            if e.kind is Kind.AUTHORITY:
                depth_below += 1
            parent = entries.get(parent.issuer) if parent.issuer else None


def _constrained_names(e: Entry) -> list[tuple[tuple[str, str], str]]:
    """The names a verifier checks against name constraints: the SANs, and (like OpenSSL) a DNS-like
    common name when the certificate has no DNS SAN."""
    names: list[tuple[tuple[str, str], str]] = [(h, "hosts") for h in e.hosts]
    if e.kind is Kind.CERTIFICATE and not any(k == "dns" for k, _ in e.hosts) and "." in e.common_name:
        try:
            host = classify_host(e.common_name)
        except ValueError:
            return names
        if host[0] == "dns":
            names.append((host, "common_name"))
    return names


# --- locating lines --------------------------------------------------------------------------

_BARE = r"[A-Za-z0-9_-]+"
_QUOTED = r'"(?:[^"\\]|\\.)*"|\'[^\']*\''
_KEY = rf"(?:{_BARE}|{_QUOTED})"
_DOTTED = rf"{_KEY}(?:\s*\.\s*{_KEY})*"
_HEADER_RE = re.compile(rf"^\s*\[\[?\s*({_DOTTED})\s*\]\]?\s*(#.*)?$")
_ASSIGN_RE = re.compile(rf"^\s*({_DOTTED})\s*=")
_PART_RE = re.compile(rf"\s*({_KEY})\s*\.?")


def _split_key(dotted: str) -> tuple[str, ...]:
    parts = []
    for m in _PART_RE.finditer(dotted):
        k = m.group(1)
        if k[0] == '"' and "\\" in k:  # escapes ("web\\n"): as TOML reads them
            import tomli

            try:
                k = tomli.loads(f"k = {k}")["k"]
            except tomli.TOMLDecodeError:
                k = k[1:-1]
        elif k[0] in "\"'":
            k = k[1:-1]
        parts.append(k)
    return tuple(parts)


def find_line(text: str, path: tuple[str, ...]) -> int | None:
    """The line where ``path`` is defined, or of its nearest defined ancestor."""
    return _line_in(_line_index(text), path)


def _line_index(text: str) -> dict[tuple[str, ...], int]:
    """Each key path the text defines (and each of its ancestors) → the first line defining it.
    Built once for all the errors of a file: a file with thousands of mistakes is read once."""
    index: dict[tuple[str, ...], int] = {}
    table: tuple[str, ...] = ()
    for lineno, line in enumerate(text.splitlines(), 1):
        m = _HEADER_RE.match(line)
        if m:
            table = _split_key(m.group(1))
            full = table
        else:
            m = _ASSIGN_RE.match(line)
            if not m:
                continue
            full = table + _split_key(m.group(1))
        for n in range(1, len(full) + 1):
            index.setdefault(full[:n], lineno)
    return index


def _line_in(index: Mapping[tuple[str, ...], int], path: tuple[str, ...]) -> int | None:
    for n in range(len(path), 0, -1):
        line = index.get(path[:n])
        if line is not None:
            return line
    return None


# --- loading ---------------------------------------------------------------------------------

def _nesting_line(text: str, limit: int) -> int | None:
    """The first line where brackets nest ``limit`` deep or a key has ``limit`` parts (tomli's
    RecursionError says neither where)."""
    depth = 0
    for lineno, line in enumerate(text.splitlines(), 1):
        if line.count(".") >= limit:
            return lineno
        for ch in line:
            depth += 1 if ch in "[{" else -1 if ch in "]}" else 0
            if depth >= limit:
                return lineno
    return None


def _file_issues(desired: Desired, base: Path) -> list[ConfigIssue]:
    """What pki.toml names on disk: the state directory (where it exists) and each CSR."""
    issues = []
    state_dir = desired.settings.state_dir
    here = base
    for part in PurePosixPath(state_dir).parts:
        here = here / part
        try:
            mode = os.lstat(here).st_mode
        except FileNotFoundError:
            break  # apply makes it
        if not stat.S_ISDIR(mode):
            what = "a symbolic link: pkiascode does not follow them" if stat.S_ISLNK(mode) else "not a directory"
            issues.append(ConfigIssue(("pki", "state_dir"), f"{here.relative_to(base).as_posix()} is {what}"))
            break
    for e in desired.entries.values():
        if e.csr and not e.revoked:
            try:
                os.close(open_inside(base, e.csr, max_bytes=MAX_CSR_BYTES))
            except ValueError as err:
                issues.append(ConfigIssue((e.kind.value, e.name, "csr"), str(err)))
    return issues


def open_inside(base: Path, rel: str, *, max_bytes: int) -> int:
    """A read-only descriptor of the regular file ``rel`` below ``base``, reached through no symbolic
    link and no bigger than ``max_bytes``. ValueError says why not, in words for a user.

    Each step is looked at (lstat) and then opened relative to the one before with O_NOFOLLOW, so a
    link swapped in between is refused too; the file is opened non-blocking (a FIFO swapped in is
    not waited on) and checked again with fstat."""
    parts = PurePosixPath(rel).parts
    if not parts or PurePosixPath(rel).is_absolute() or ".." in parts:
        raise ValueError(f"{rel} is not a path inside the repository")
    fd = os.open(base, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for i, part in enumerate(parts):
            last = i == len(parts) - 1
            shown = "/".join(parts[: i + 1])
            try:
                mode = os.stat(part, dir_fd=fd, follow_symlinks=False).st_mode
            except FileNotFoundError:
                raise ValueError(f"{rel} not found") from None
            if stat.S_ISLNK(mode):
                raise ValueError(f"{shown} is a symbolic link: pkiascode does not follow them")
            if not last and not stat.S_ISDIR(mode):
                raise ValueError(f"{shown} is not a directory")
            if last and not stat.S_ISREG(mode):
                raise ValueError(f"{rel} is {'a directory' if stat.S_ISDIR(mode) else 'not a regular file'}")
            flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | (os.O_NONBLOCK if last else os.O_DIRECTORY)
            inner = os.open(part, flags, dir_fd=fd)
            os.close(fd)
            fd = inner
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise ValueError(f"{rel} is not a regular file")
        if st.st_size > max_bytes:
            raise ValueError(f"{rel} is {st.st_size} bytes; at most {max_bytes} are read")
        opened, fd = fd, -1
        return opened
    except OSError as e:
        raise ValueError(f"{rel}: {e.strerror}") from None
    finally:
        if fd >= 0:
            os.close(fd)


def read_inside(base: Path, rel: str, *, max_bytes: int) -> bytes:
    """The content of ``rel`` below ``base``, opened as `open_inside` does."""
    fd = open_inside(base, rel, max_bytes=max_bytes)
    with os.fdopen(fd, "rb") as f:
        data = f.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise ValueError(f"{rel} is more than {max_bytes} bytes")
    return data


def _where(path: tuple[str, ...]) -> str:
    """``certificate.node-0.hosts``: the entry, then the key (not deeper)."""
    return ".".join(p if re.match(r"^[A-Za-z0-9_-]+$", p) else f'"{p}"' for p in path[:3])


def _to_error(file: str, lines: Mapping[tuple[str, ...], int], issue: ConfigIssue) -> ConfigError:
    line = _line_in(lines, issue.path)
    return ConfigError(file, line, getattr(issue, "where", _where(issue.path)), issue.message)


def config_digest(data: bytes) -> str:
    """The digest a plan records for pki.toml: its bytes and this version of pkiascode."""
    return hashlib.sha256(data + __version__.encode()).hexdigest()


def load_config(path: Path, *, options_for: OptionsLookup, display_name: str | None = None,
                data: bytes | None = None) -> Desired:
    """Read, validate and resolve pki.toml; raise `ConfigError` (the first mistake) if it is wrong.

    ``data`` stands for the file's content when it is known better than the disk does (an
    interrupted ``pki import`` whose new pki.toml is not written yet). The error's ``all_errors``
    attribute lists every mistake as a `ConfigError` (for ``pki validate``).
    """
    file = display_name or path.name
    try:
        data_bytes = path.read_bytes() if data is None else data
    except FileNotFoundError:
        raise ConfigError(file, None, "", f"not found in {path.parent} (run `pki init` to make one, "
                                          "or pass --config FILE)") from None
    except OSError as e:
        raise ConfigError(file, None, "", f"cannot read: {e.strerror}") from None
    digest = config_digest(data_bytes)

    try:
        text = data_bytes.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError(file, None, "", "is not UTF-8 text") from None
    import tomli

    try:
        data = tomli.loads(text)
    except tomli.TOMLDecodeError as e:
        msg = str(e)
        m = re.search(r"\(at line (\d+), column \d+\)$", msg)
        line = int(m.group(1)) if m else None
        msg = msg[: m.start()].strip() if m else msg
        raise ConfigError(file, line, "syntax", msg[0].lower() + msg[1:]) from None
    except RecursionError as e:  # tomli's limits on nesting and on the parts of a key
        msg = str(e).replace("TOML ", "", 1) or "nested too deeply"
        limit = re.search(r"\d+", msg)
        raise ConfigError(file, _nesting_line(text, int(limit.group()) if limit else 100), "syntax", msg) from None
    try:
        desired = parse_config(data, digest=digest, options_for=options_for)
        issues = _file_issues(desired, path.parent)
        if issues:
            raise _Issues(issues)
    except _Issues as found:
        lines = _line_index(text)
        errors = [_to_error(file, lines, i) for i in found.issues]
        errors.sort(key=lambda e: e.line or 0)
        raise first_of(errors) from None

    return desired
