"""The ``pkcs11`` backend: keys made and used on a PKCS#11 token (an HSM, SoftHSM2), never leaving it.

```toml
[backend.hsm]
plugin = "pkcs11"
module = "/usr/lib/softhsm/libsofthsm2.so"  # default: the first SoftHSM2 found in the usual places
token = "pki-ca"                           # the token's label; slots move, labels do not
pin_env = "PKI_PKCS11_PIN"                 # the user PIN only ever from this environment variable
```

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

import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pkiascode.backend import KeyRef, KeyRequest, KeyStore, Option
from pkiascode.errors import BackendUnavailable, KeyNotExportable
from pkiascode.hookspecs import hookimpl
from pkiascode.keytypes import KeyType

if TYPE_CHECKING:
    from . import _token

__all__ = ["Pkcs11KeyStore", "DEFAULT_PIN_ENV"]

DEFAULT_PIN_ENV = "PKI_PKCS11_PIN"

_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")


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
        "module": Option(str, None, "path of the PKCS#11 module (default: SoftHSM2 where installed)"),
        "token": Option(str, None, "label of the token holding the keys (required)"),
        "pin_env": Option(str, DEFAULT_PIN_ENV, "environment variable holding the token's user PIN"),
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
        if module is not None and (not isinstance(module, str) or not module.strip()):
            problems.append(("module", "must be the path of a PKCS#11 module, or left out"))
        pin_env = settings.get("pin_env")
        if pin_env is not None and (not isinstance(pin_env, str) or not _ENV_NAME.match(pin_env)):
            problems.append(("pin_env", "must be the name of an environment variable, like PKI_PKCS11_PIN"))
        return problems

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r} token={self.token!r}>"

    # -- helpers ------------------------------------------------------------------------------
    @property
    def module(self) -> str:
        """The module path in use: as configured (relative to pki.toml), or the first SoftHSM2 found."""
        if self._module is None:
            configured = self.settings.get("module")
            if configured:
                path = Path(configured).expanduser()
                # a bare file name is left to the dynamic loader's search path
                if not path.is_absolute() and "/" in configured:
                    path = self.context.base_dir / path
                self._module = str(path)
            else:
                self._module = _impl(self.name).default_module(self.name)
        return self._module

    def _conn(self) -> "_token.Connection":
        return _impl(self.name).connect(self.name, self.module, self.token, self.pin_env)

    # -- KeyStore -------------------------------------------------------------------------------
    def check(self) -> None:
        self._conn().check(self.name)

    def require(self, key_type: KeyType, *, generate: bool) -> None:
        self._conn().require(self.name, key_type, generate=generate)

    def generate(self, request: KeyRequest) -> KeyRef:
        handle = self._conn().generate(self.name, request.name, request.key_type, request.suffix)
        return KeyRef(self.name, handle.ref_id)

    def import_key(self, request: KeyRequest, key: Any) -> KeyRef:
        handle = self._conn().import_key(self.name, request.name, key, request.suffix)
        return KeyRef(self.name, handle.ref_id, "imported")

    def discard(self, request: KeyRequest) -> None:
        if request.suffix:
            self._conn().discard(self.name, _impl(self.name).label_for(request.name, request.suffix))

    def public_key(self, ref: KeyRef) -> Any:
        return self._conn().public_key(self.name, _impl(self.name).KeyHandle.parse(self.name, ref.id))

    def signer(self, ref: KeyRef) -> Any:
        from pkiascode.signers import external_key

        handle = _impl(self.name).KeyHandle.parse(self.name, ref.id)
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
        present = self._conn().present(self.name, [h for h in parsed.values() if h is not None])
        return {ref for ref, h in parsed.items() if h is None or h not in present}

    def is_exportable(self, ref: KeyRef) -> bool:
        return False

    def export(self, ref: KeyRef) -> Any:
        raise KeyNotExportable(
            f"backend {self.name}: key {ref.id} is kept non-extractable on PKCS#11 token {self.token!r} "
            "and can never be exported (pki export --no-key writes the certificate alone)")

    def delete(self, ref: KeyRef) -> None:
        handle = _impl(self.name).KeyHandle.parse_or_none(ref.id)
        if handle is not None:
            self._conn().delete(self.name, handle)

    def close(self) -> None:
        # The login and session are per process and shared with other stores on the same token
        # (see _token.connect); they end with the process.
        pass


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

