"""A project: one pki.toml, its state directory, its key stores. Reads; `pkiascode.apply` writes."""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .backend import KeyRef, KeyStore, StoreContext
from .config import config_digest, find_line, load_config
from .errors import BackendError, ConfigError, first_of
from .memo import NoopMemo
from .model import CSR_STORE, Desired, Entry, Observed, Record
from .plan import Plan
from .planner import plan as make_plan
from .plugins import Plugins
from .state import StateDir, load_txn, txn_file

if TYPE_CHECKING:
    from .x509 import CsrInfo

__all__ = ["Project"]


class Project:
    def __init__(self, config_path: Path, *, plugins: Plugins | None = None) -> None:
        self.config_path = config_path.resolve()
        self.base_dir = self.config_path.parent
        self.work_dir = self.base_dir / ".pki"
        self.plugins = plugins or Plugins()
        self._desired: Desired | None = None
        self._stores: dict[str, KeyStore] = {}
        self._csrs: dict[str, CsrInfo] | None = None
        self._repo: Any = False  # not looked up yet
        self._state: StateDir | None = None

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
            config = load_txn(txn_file(self.work_dir).read_bytes()).get("config")
        except (OSError, ValueError, KeyError, TypeError, UnicodeDecodeError):
            return None
        if config and (self.base_dir / config["path"]).resolve() == self.config_path:
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
            self._state = StateDir(self.base_dir, state_dir, self.work_dir)
        return self._state

    # -- key stores -----------------------------------------------------------------------------
    def used_stores(self) -> list[KeyStore]:
        """The key stores pki.toml's entries use (what an apply locks)."""
        desired = self.desired()
        return [self.store(n) for n in sorted({e.store for e in desired.entries.values()} & set(desired.stores))]

    def store(self, name: str, *, plugin: str | None = None, settings: Mapping[str, Any] | None = None) -> KeyStore:
        """The key store ``name``, made once per project: from pki.toml, or from ``plugin``/``settings``
        when given (the remembered no-op plan knows them without parsing pki.toml)."""
        store = self._stores.get(name)
        if store is None:
            if plugin is None:
                spec = self.desired().stores.get(name)
                if spec is None:
                    raise BackendError(f"backend {name!r} is not defined in pki.toml")
                plugin, settings = spec.plugin, spec.settings_dict()
            store = self.plugins.create(name, plugin, settings or {}, StoreContext(self.base_dir, self.work_dir))
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
    def observe(self, *, check_keys: bool = True) -> tuple[Observed, dict[str, Any]]:
        observed, inv = self.state.observe()
        if check_keys:
            missing = self.missing_keys(observed.records)
            if missing:
                observed = dataclasses.replace(
                    observed, missing_keys=missing,
                    digest=hashlib.sha256((observed.digest + repr(sorted(missing))).encode()).hexdigest())
        return observed, inv

    def _live_keys(self, records: Mapping[str, Record]) -> dict[str, dict[KeyRef, Record]]:
        """Per key store, the keys records still need (not CSR entries, not revoked ones)."""
        stores = self.desired().stores
        by_store: dict[str, dict[KeyRef, Record]] = {}
        for rec in records.values():
            if rec.store != CSR_STORE and not rec.revoked and rec.store in stores:
                by_store.setdefault(rec.store, {})[KeyRef(rec.store, rec.key_id, rec.key_origin)] = rec
        return by_store

    def missing_keys(self, records: Mapping[str, Record]) -> dict[str, str]:
        """Records whose key their store no longer has (one query per store)."""
        out: dict[str, str] = {}
        for store_name, refs in self._live_keys(records).items():
            for ref in self.store(store_name).missing(refs):
                out[refs[ref].name] = f"its key {ref.id} is missing from backend {store_name}"
        return out

    # -- plan -----------------------------------------------------------------------------------
    def plan(self, *, at: dt.datetime, replace: Iterable[str] = (), now: dt.datetime | None = None) -> Plan:
        """The plan as of ``at``; certificates would be signed as of ``now`` (default: ``at``)."""
        replace = tuple(replace)
        pending = self.txn_pending()
        quiet = not replace and not pending
        if quiet:
            remembered = self._remembered_noop(at)
            if remembered is not None:
                return remembered
        desired = self.desired()
        csr_keys = {name: info.digest for name, info in self.csrs().items()}
        observed, _ = self.observe()
        caps = {}
        for name, spec in desired.stores.items():
            factory = self.plugins.factory(spec.plugin)
            if factory is not None:
                caps[name] = (factory.holds_exportable, factory.holds_non_exportable)
        result = make_plan(desired, observed, now=at, replace=replace, csr_keys=csr_keys, issue_time=now,
                           store_caps=caps)
        if pending:
            result = dataclasses.replace(result, warnings=result.warnings + (
                "an interrupted apply is pending; this plan assumes it completed, and the next "
                "`pki apply` completes it",))
        elif quiet and result.empty and not result.warnings:
            self._remember_noop(desired, observed)
        return result

    def txn_pending(self) -> bool:
        """An interrupted apply left a transaction for the next apply to finish."""
        return txn_file(self.work_dir).exists()

    # -- the remembered no-op plan (see pkiascode.memo) -----------------------------------------
    def _memo(self) -> NoopMemo:
        return NoopMemo(self.work_dir / "cache" / "noop.json")

    def _remembered_noop(self, at: dt.datetime) -> Plan | None:
        memo = self._memo().load()
        if memo is None:
            return None
        try:
            digest = config_digest(self.config_path.read_bytes())
            csrs = {p: hashlib.sha256((self.base_dir / p).read_bytes()).hexdigest() for p in memo.get("csrs", {})}
        except OSError:
            return None
        if not NoopMemo.still_holds(memo, config_digest=digest, csrs=csrs, at=at):
            return None
        for store_name, refs in memo["refs"].items():
            spec = memo["stores"][store_name]
            store = self.store(store_name, plugin=spec["plugin"], settings=spec["settings"])
            if store.missing([KeyRef(store_name, key_id, origin) for key_id, origin in refs]):
                return None
        return Plan(changes=(), warnings=(), at=at, config_digest=memo["config_digest"],
                    state_digest=memo["state_digest"])

    def _remember_noop(self, desired: Desired, observed: Observed) -> None:
        from .planner import quiet_until

        state = self.state
        files = [str(state.inventory_path)]
        for rec in observed.records.values():  # an empty plan: every record has its files
            files.append(str(state.cert_path(rec.name)))
            if rec.crl:
                files.append(str(state.crl_path(rec.name)))
        refs = {store: [[ref.id, ref.origin] for ref in keys] for store, keys in self._live_keys(observed.records).items()}
        csrs = {e.csr: hashlib.sha256((self.base_dir / e.csr).read_bytes()).hexdigest()
                for e in desired.entries.values() if e.csr and not e.revoked}
        stores = {n: {"plugin": desired.stores[n].plugin, "settings": desired.stores[n].settings_dict()}
                  for n in refs}
        try:
            self._memo().save(config_digest=desired.digest, state_digest=observed.digest, files=files,
                              seen=state.seen, csrs=csrs,
                              stores=stores, refs=refs, quiet_until=quiet_until(desired, observed))
        except (TypeError, ValueError):
            self._memo().forget()  # a setting JSON cannot hold: plan the long way every time
