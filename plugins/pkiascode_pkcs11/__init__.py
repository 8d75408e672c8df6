"""The ``pkcs11`` backend: keys made and used on a PKCS#11 token (an HSM, SoftHSM2), never leaving it.

```toml
[backend.hsm]
plugin = "pkcs11"
module = "/usr/lib/softhsm/libsofthsm2.so"  # default: the first SoftHSM2 found in the usual places
# module_env = "PKI_PKCS11_MODULE"         # or: the module's path from this environment variable
token = "pki-ca"                           # the token's label; slots move, labels do not
pin_env = "PKI_PKCS11_PIN"                 # the user PIN only ever from this environment variable
```

The module is native code that runs with the PIN in its process, so it must be an absolute path
outside the repository (resolved, symbolic links and all): a module committed to the repository, as
a pull request could, is refused before it is loaded.

With a ``[pki] id`` the labels carry it (``pki.<id>.root-3f9a1c2e``), so PKIs sharing a token never
see each other's keys; without one they are ``pki-root-3f9a1c2e`` as in earlier versions. Every
method that takes a key reference (signer, public key, missing, delete) refuses one whose label is
not of this PKI's namespace (``pki.<id>.<entry>-<8 hex>``, or without an id ``pki-<entry>-<8 hex>``)
with a `BackendError` "... is not a key of this PKI (namespace ...)" before the token is asked, so a
forged inventory, pending deletion or journal cannot reach another PKI's key, or any other object on
the token. A PKI given an id after it made keys keeps using them only with ``legacy_keys = true``.

Keys are generated on the token with the private half ``CKA_TOKEN``, ``CKA_PRIVATE``,
``CKA_SENSITIVE`` and not ``CKA_EXTRACTABLE``, usable for signing only. Each key pair carries a label
made from its entry (``pki-root-3f9a1c2e``) and a random 16-byte ``CKA_ID``; the key reference recorded
in the inventory names both (``pki-root-3f9a1c2e/5be0…``), so the store only ever touches the exact
pair it made. Another object carrying the same label is a collision and an error, never reused.

Certificates, CRLs and CSRs are signed on the token through `pkiascode.signers.external_key`:
RSA PKCS#1 v1.5 with ``CKM_SHA256_RSA_PKCS`` & co. where the token has them (otherwise the hash is
computed here and the DigestInfo signed with ``CKM_RSA_PKCS``), ECDSA by hashing here and signing with
raw ``CKM_ECDSA``, Ed25519 with ``CKM_EDDSA`` on tokens that offer it.

`import_key` brings an existing key onto the token as sensitive and non-extractable, so an existing
CA certificate stays valid when its key moves into the HSM. Nothing ever comes out again: every key
of this store is non-exportable.

The module is loaded, the token found and the user logged in once per process; the session is shared
by every store on the same (module, token) and all calls into the module are serialised, because
the module is initialised without OS locking.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pkiascode.backend import ENTRY_NAME, KeyRef, KeyRequest, KeyStore, Option
from pkiascode.errors import BackendError, BackendUnavailable, KeyNotExportable
from pkiascode.hookspecs import hookimpl
from pkiascode.keytypes import KeyType

if TYPE_CHECKING:
    from . import _token

__all__ = ["Pkcs11KeyStore", "DEFAULT_PIN_ENV"]

DEFAULT_PIN_ENV = "PKI_PKCS11_PIN"

_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_SUFFIX = re.compile(r"[0-9a-f]{8}")


class Pkcs11KeyStore(KeyStore):
    """Keys on one PKCS#11 token. Every method raises `pkiascode.errors.BackendError` subclasses only:

    - `BackendUnavailable`: module missing or not loadable, token not found, PIN unset or wrong;
    - `UnsupportedKeyType`: the token lacks the mechanism (or key size) a key type needs;
    - `KeyNotFound`: the referenced key pair is not on the token;
    - `KeyNotExportable`: from `export`, always;
    - `BackendError`: a label collision, a full token, any other PKCS#11 failure (named by its CKR_ code).
    """

    plugin = "pkcs11"
    holds_non_exportable = True
    holds_exportable = False
    options = {
        "module": Option(str, None, "absolute path of the PKCS#11 module, outside the repository "
                                    "(default: SoftHSM2 where installed)"),
        "module_env": Option(str, None, "environment variable holding the module's absolute path"),
        "token": Option(str, None, "label of the token holding the keys (required)"),
        "pin_env": Option(str, DEFAULT_PIN_ENV, "environment variable holding the token's user PIN"),
        "legacy_keys": Option(bool, False, "with a [pki] id: also use keys made before the id (labels pki-..., "
                                           "shared by every PKI without an id on the token)"),
    }

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.token = str(self.settings.get("token") or "")
        self.pin_env = str(self.settings.get("pin_env") or DEFAULT_PIN_ENV)
        self._module: str | None = None

    @classmethod
    def validate(cls, settings: Mapping[str, Any]) -> list[tuple[str, str]]:
        problems = []
        token = settings.get("token")
        if not isinstance(token, str) or not token.strip():
            problems.append(("token", "required: the label of the PKCS#11 token to keep keys on"))
        elif len(token.encode()) > 32 or token != token.strip():
            problems.append(("token", "a PKCS#11 token label is at most 32 bytes, without outer spaces"))
        module = settings.get("module")
        if module is not None and (not isinstance(module, str) or not os.path.isabs(module)):
            problems.append(("module", "must be the absolute path of a PKCS#11 module outside the repository "
                                       "(or use module_env), or left out"))
        for option, example in (("pin_env", "PKI_PKCS11_PIN"), ("module_env", "PKI_PKCS11_MODULE")):
            value = settings.get(option)
            if value is not None and (not isinstance(value, str) or not _ENV_NAME.match(value)):
                problems.append((option, f"must be the name of an environment variable, like {example}"))
        if module is not None and settings.get("module_env") is not None:
            problems.append(("module_env", "set module or module_env, not both"))
        return problems

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r} token={self.token!r}>"

    # -- helpers ------------------------------------------------------------------------------
    @property
    def module(self) -> str:
        """The module path in use: ``module``, ``$module_env``, or the first SoftHSM2 found. Raises
        `BackendUnavailable` for a path that is not absolute or lies inside the repository."""
        if self._module is None:
            configured = self.settings.get("module")
            env = self.settings.get("module_env")
            if env:
                configured = os.environ.get(env)
                if not configured:
                    raise BackendUnavailable(f"backend {self.name}: set ${env} to the path of the PKCS#11 module")
            self._module = self._checked(configured) if configured else _impl(self.name).default_module(self.name)
        return self._module

    def _checked(self, module: str) -> str:
        """``module`` if it is absolute and outside the repository, before and after resolving links."""
        if not os.path.isabs(module):
            raise BackendUnavailable(f"backend {self.name}: PKCS#11 module {module!r} must be an absolute path "
                                     "outside the repository")
        repo = _repository(self.context.base_dir)
        for path, root in ((os.path.normpath(module), os.path.normpath(os.path.abspath(repo))),
                           (os.path.realpath(module), os.path.realpath(repo))):
            if os.path.commonpath([path, root]) == root:
                raise BackendUnavailable(
                    f"backend {self.name}: refusing PKCS#11 module {module}: it is inside the repository "
                    f"{repo}, where a commit could replace it; install the module outside it (or name it "
                    "in an environment variable with module_env)")
        return module

    def _scopes(self) -> list[str | None]:
        scope = self.context.pki_id
        return [scope, None] if scope and self.settings.get("legacy_keys") is True else [scope]

    def _own(self, ref_id: str, label: str) -> None:
        """Raise unless ``label`` is one this store makes in this PKI's namespace."""
        if any(_label_pattern(scope).fullmatch(label) for scope in self._scopes()):
            return
        spaces = " or ".join(f"pki.{scope}.*" if scope else "pki-*" for scope in self._scopes())
        hint = ""
        if self.context.pki_id and _label_pattern(None).fullmatch(label) and len(self._scopes()) == 1:
            hint = ("; it is labelled as keys made before this PKI had a [pki] id: if this PKI made it, set "
                    f"legacy_keys = true in [backend.{self.name}]")
        raise BackendError(f"backend {self.name}: {ref_id!r} is not a key of this PKI (namespace {spaces}){hint}")

    def _handle(self, ref: KeyRef) -> Any:
        handle = _impl(self.name).KeyHandle.parse(self.name, ref.id)
        self._own(ref.id, handle.label)
        return handle

    def _conn(self) -> "_token.Connection":
        return _impl(self.name).connect(self.name, self.module, self.token, self.pin_env)

    # -- KeyStore -------------------------------------------------------------------------------
    def check(self) -> None:
        self._conn().check(self.name)

    def require(self, key_type: KeyType, *, generate: bool) -> None:
        self._conn().require(self.name, key_type, generate=generate)

    def _check_request(self, request: KeyRequest) -> None:
        # names and suffixes come from pki.toml or the key journal: checked before they become labels
        if not ENTRY_NAME.fullmatch(request.name) or (request.suffix and not _SUFFIX.fullmatch(request.suffix)):
            raise BackendError(f"backend {self.name}: invalid key request {request.name!r}/{request.suffix!r}")

    def generate(self, request: KeyRequest) -> KeyRef:
        self._check_request(request)
        handle = self._conn().generate(self.name, request.name, request.key_type, request.suffix,
                                       self.context.pki_id)
        return KeyRef(self.name, handle.ref_id)

    def import_key(self, request: KeyRequest, key: Any) -> KeyRef:
        self._check_request(request)
        handle = self._conn().import_key(self.name, request.name, key, request.suffix, self.context.pki_id)
        return KeyRef(self.name, handle.ref_id, "imported")

    def discard(self, request: KeyRequest) -> None:
        if request.suffix:
            self._check_request(request)
            self._conn().discard(self.name, _impl(self.name).label_for(request.name, request.suffix,
                                                                       self.context.pki_id))

    def list_keys(self) -> list[KeyRef]:
        impl = _impl(self.name)
        handles = self._conn().list_keys(self.name, impl.label_pattern(self.context.pki_id))
        return sorted((KeyRef(self.name, h.ref_id) for h in handles), key=lambda r: r.id)

    def public_key(self, ref: KeyRef) -> Any:
        return self._conn().public_key(self.name, self._handle(ref))

    def signer(self, ref: KeyRef) -> Any:
        from pkiascode.signers import external_key

        handle = self._handle(ref)
        conn = self._conn()
        public = conn.public_key(self.name, handle)  # KeyNotFound now rather than at signing time

        def sign(data: bytes, algorithm: Any) -> bytes:
            return conn.sign(self.name, handle, public, data, algorithm)

        return external_key(public, sign, label=f"pkcs11:{self.name}/{handle.label}")

    def missing(self, refs: Iterable[KeyRef]) -> set[KeyRef]:
        refs = list(refs)
        if not refs:
            return set()
        parsed = {ref: _impl(self.name).KeyHandle.parse_or_none(ref.id) for ref in refs}
        for ref, h in parsed.items():
            if h is not None:
                self._own(ref.id, h.label)  # before the token is asked
        present = self._conn().present(self.name, [h for h in parsed.values() if h is not None])
        return {ref for ref, h in parsed.items() if h is None or h not in present}

    def is_exportable(self, ref: KeyRef) -> bool:
        return False

    def export(self, ref: KeyRef) -> Any:
        handle = _impl(self.name).KeyHandle.parse_or_none(ref.id)
        if handle is not None:
            self._own(ref.id, handle.label)
        raise KeyNotExportable(
            f"backend {self.name}: key {ref.id} is kept non-extractable on PKCS#11 token {self.token!r} "
            "and can never be exported (pki export --no-key writes the certificate alone)")

    def delete(self, ref: KeyRef) -> None:
        handle = _impl(self.name).KeyHandle.parse_or_none(ref.id)
        if handle is not None:
            self._own(ref.id, handle.label)
            self._conn().delete(self.name, handle)

    def close(self) -> None:
        # The login and session are per process and shared with other stores on the same token
        # (see _token.connect); they end with the process.
        pass


def _label_pattern(scope: str | None) -> re.Pattern[str]:
    """The labels this store makes in ``scope`` (as `_token.label_pattern`, without loading python-pkcs11)."""
    head = rf"pki\.{re.escape(scope)}\." if scope else "pki-"
    return re.compile(rf"{head}[a-z0-9][a-z0-9._-]{{0,63}}-[0-9a-f]{{8}}")


def _repository(base_dir: Path) -> Path:
    """The git work tree holding pki.toml (the nearest directory up with a ``.git``), else its directory."""
    base = base_dir.resolve()
    for directory in (base, *base.parents):
        if os.path.lexists(directory / ".git"):
            return directory
    return base


def _impl(store: str) -> Any:
    """The machinery module, imported on first use: it loads python-pkcs11."""
    try:
        from . import _token
    except ImportError as exc:
        if (exc.name or "").split(".")[0] not in ("pkcs11", "asn1crypto"):
            raise
        raise BackendUnavailable(f"backend {store}: the pkcs11 backend needs python-pkcs11; "
                                 "install it with pip install 'pkiascode[pkcs11]'") from None
    return _token


@hookimpl
def pki_register_backends(register: Any) -> None:
    register("pkcs11", Pkcs11KeyStore)

