"""Everything that talks to the PKCS#11 module, through python-pkcs11.

Imported only when a ``pkcs11`` store is used. One `Connection` per (module, token) per process:
the module is loaded once (python-pkcs11 caches it per process anyway), the token is found by its
label (SoftHSM2 moves a token to a new slot when it is initialised), the user logs in once and the
read-write session is reused. python-pkcs11 initialises the module without OS locking, so every call
into a module goes through that module's lock.

Errors leave this module as `pkiascode.errors.BackendError` subclasses with one-line messages that
name the store and the token and say what to do; PKCS#11 return codes appear as their CKR_ names. The
PIN is read from the environment when logging in, passed to the module, and not kept.
"""

from __future__ import annotations

import atexit
import contextlib
import dataclasses
import os
import re
import secrets
import sys
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Any, TypeVar

import pkcs11
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from pkcs11 import Attribute, Mechanism, MechanismFlag, ObjectClass
from pkcs11 import KeyType as P11KeyType
from pkcs11 import exceptions as p11e

from pkiascode.errors import (
    BackendError,
    BackendUnavailable,
    KeyNotExportable,
    KeyNotFound,
    UnsupportedKeyType,
)
from pkiascode.keytypes import KeyType, key_type_of
from pkiascode.signers import ecdsa_raw_to_der, rsa_digest_info

__all__ = ["DEFAULT_MODULES", "default_module", "connect", "Connection", "KeyHandle", "translate"]

T = TypeVar("T")

#: where SoftHSM2 lives on Debian/Ubuntu, Fedora/RHEL and macOS (Homebrew), in that order
DEFAULT_MODULES = (
    "/usr/lib/softhsm/libsofthsm2.so",
    "/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so",
    "/usr/lib/aarch64-linux-gnu/softhsm/libsofthsm2.so",
    "/usr/lib64/pkcs11/libsofthsm2.so",
    "/usr/lib64/softhsm/libsofthsm2.so",
    "/opt/homebrew/lib/softhsm/libsofthsm2.so",
    "/usr/local/lib/softhsm/libsofthsm2.so",
)

# DER ECParameters: namedCurve OIDs; RFC 8410 id-Ed25519 (PKCS#11 3.1's preferred form).
_P256 = bytes.fromhex("06082a8648ce3d030107")
_P384 = bytes.fromhex("06052b81040022")
_ED25519 = bytes.fromhex("06032b6570")
_ED25519_BY_NAME = bytes.fromhex("130c") + b"edwards25519"  # PrintableString form, PKCS#11 3.0
_EC_PARAMS = {KeyType.ECDSA_P256: _P256, KeyType.ECDSA_P384: _P384, KeyType.ED25519: _ED25519}
_CURVES: dict[bytes, ec.EllipticCurve] = {_P256: ec.SECP256R1(), _P384: ec.SECP384R1()}

_GENERATE = {"rsa": Mechanism.RSA_PKCS_KEY_PAIR_GEN, "ecdsa": Mechanism.EC_KEY_PAIR_GEN,
             "ed25519": Mechanism.EC_EDWARDS_KEY_PAIR_GEN}
_RSA_HASHED = {"sha256": Mechanism.SHA256_RSA_PKCS, "sha384": Mechanism.SHA384_RSA_PKCS,
               "sha512": Mechanism.SHA512_RSA_PKCS}
_ECDSA_HASHED = {"sha256": Mechanism.ECDSA_SHA256, "sha384": Mechanism.ECDSA_SHA384,
                 "sha512": Mechanism.ECDSA_SHA512}
# the hash certificates are signed with (pkiascode.keytypes.signature_hash)
_CERT_HASH = {KeyType.ECDSA_P256: "sha256", KeyType.ECDSA_P384: "sha384"}

# usable for signing only: no decrypt, unwrap or derive with a CA key
_SIGN_ONLY = MechanismFlag.SIGN | MechanismFlag.VERIFY
_PRIVATE = {Attribute.TOKEN: True, Attribute.PRIVATE: True, Attribute.SENSITIVE: True,
            Attribute.EXTRACTABLE: False, Attribute.SIGN: True, Attribute.DECRYPT: False,
            Attribute.UNWRAP: False, Attribute.DERIVE: False}
_PUBLIC = {Attribute.TOKEN: True, Attribute.PRIVATE: False, Attribute.VERIFY: True,
           Attribute.ENCRYPT: False, Attribute.WRAP: False}

_SESSION_LOST = (p11e.SessionHandleInvalid, p11e.SessionClosed, p11e.UserNotLoggedIn,
                 p11e.DeviceRemoved, p11e.TokenNotPresent)


def ckm(mechanism: Any) -> str:
    return f"CKM_{mechanism.name}" if isinstance(mechanism, Mechanism) else f"mechanism {mechanism:#x}"


def ckr(exc: BaseException) -> str:
    """The CKR_ name of a python-pkcs11 exception (``DeviceMemory`` -> ``CKR_DEVICE_MEMORY``)."""
    if type(exc) is p11e.PKCS11Error:  # python-pkcs11 raises the base class for unmapped codes
        return str(exc) or "PKCS#11 error"
    return "CKR_" + re.sub(r"(?<!^)(?=[A-Z])", "_", type(exc).__name__).upper()


def translate(exc: BaseException, *, store: str, token: str, doing: str) -> BackendError:
    """The one-line error a user sees for a PKCS#11 failure while ``doing`` something."""
    where = f"backend {store}: {doing} on PKCS#11 token {token!r} failed"
    code = ckr(exc)
    if isinstance(exc, p11e.DeviceMemory):
        return BackendError(f"{where}: the token is full ({code}); delete objects it no longer needs "
                            "or use a token with more room")
    if isinstance(exc, p11e.HostMemory):
        return BackendError(f"{where}: the module ran out of memory ({code})")
    if isinstance(exc, (p11e.MechanismInvalid, p11e.MechanismParamInvalid, p11e.FunctionNotSupported,
                        p11e.KeySizeRange, p11e.DomainParamsInvalid)):
        return UnsupportedKeyType(f"{where}: the token does not support it ({code}); "
                                  "choose another key type or another backend")
    if isinstance(exc, (p11e.PinIncorrect, p11e.PinExpired, p11e.PinLocked, p11e.UserNotLoggedIn,
                        p11e.UserPinNotInitialized)):
        return BackendUnavailable(f"{where}: not logged in ({code}); check the PIN and run again")
    if isinstance(exc, (p11e.TokenNotPresent, p11e.TokenNotRecognised, p11e.DeviceRemoved,
                        p11e.DeviceError, p11e.SessionHandleInvalid, p11e.SessionClosed,
                        p11e.SlotIDInvalid)):
        return BackendUnavailable(f"{where}: the token is not reachable ({code}); check that it is "
                                  "connected and run again")
    if isinstance(exc, (p11e.TokenWriteProtected, p11e.SessionReadOnly)):
        return BackendUnavailable(f"{where}: the token is write-protected ({code})")
    if isinstance(exc, (p11e.AttributeSensitive, p11e.KeyUnextractable)):
        return KeyNotExportable(f"{where}: the key is sensitive and stays on the token ({code})")
    return BackendError(f"{where} ({code})")


def default_module(store: str) -> str:
    for path in DEFAULT_MODULES:
        if os.path.exists(path):
            return path
    raise BackendUnavailable(
        f"backend {store}: no PKCS#11 module configured and SoftHSM2 is not installed in any usual "
        f"place; set module = \"/path/to/pkcs11-module.so\" in [backend.{store}]")


# -- key references -------------------------------------------------------------------------------

_REF = re.compile(r"(?P<label>[^/\s]{1,200})/(?P<id>(?:[0-9a-f]{2}){1,64})\Z")


def _random_suffix() -> str:
    return secrets.token_hex(4)


def label_for(name: str, suffix: str, scope: str | None = None) -> str:
    """``pki-<name>-<suffix>``, or ``pki.<scope>.<name>-<suffix>`` in the namespace of a ``[pki] id``
    (a '.' after ``pki``, never a '-', so an unscoped listing never takes in a scoped PKI's keys)."""
    # bounded, so every label fits _REF and tokens that limit CKA_LABEL's length
    return f"pki.{scope}.{name[:64]}-{suffix}" if scope else f"pki-{name[:64]}-{suffix}"


def label_pattern(scope: str | None) -> re.Pattern[str]:
    """The labels `label_for` makes in ``scope``: what `Connection.list_keys` lists."""
    head = rf"pki\.{re.escape(scope)}\." if scope else "pki-"
    return re.compile(rf"{head}[a-z0-9][a-z0-9._-]{{0,63}}-[0-9a-f]{{8}}")


@dataclasses.dataclass(frozen=True)
class KeyHandle:
    """A key pair on the token: its CKA_LABEL and CKA_ID. The inventory holds ``LABEL/HEXID``."""

    label: str
    cka_id: bytes

    @property
    def ref_id(self) -> str:
        return f"{self.label}/{self.cka_id.hex()}"

    @classmethod
    def new(cls, name: str, suffix: str | None = None, scope: str | None = None) -> "KeyHandle":
        return cls(label_for(name, suffix or _random_suffix(), scope), secrets.token_bytes(16))

    @classmethod
    def parse_or_none(cls, ref_id: str) -> "KeyHandle | None":
        m = _REF.match(ref_id)
        return cls(m["label"], bytes.fromhex(m["id"])) if m else None

    @classmethod
    def parse(cls, store: str, ref_id: str) -> "KeyHandle":
        handle = cls.parse_or_none(ref_id)
        if handle is None:
            raise KeyNotFound(f"backend {store}: {ref_id!r} is not a key of this store "
                              "(expected LABEL/HEX-CKA_ID)")
        return handle


# -- connections ----------------------------------------------------------------------------------

_connections: dict[tuple[str, str], "Connection"] = {}
_connect_lock = threading.Lock()
_module_locks: dict[str, threading.RLock] = {}


def connect(store: str, module: str, token_label: str, pin_env: str) -> "Connection":
    """The process-wide logged-in connection to ``token_label`` in ``module``, made on first use."""
    path = _resolve_module(store, module)
    conn = _connections.get((path, token_label))
    if conn is not None:
        return conn
    with _connect_lock:
        conn = _connections.get((path, token_label))
        if conn is None:
            lock = _module_locks.setdefault(path, threading.RLock())
            with lock:
                lib = _load(store, module, path)
                token = _find_token(store, lib, module, token_label)
                session = _login(store, token, token_label, pin_env)
                mechanisms = _mechanisms(store, token, token_label)
            conn = Connection(module, token_label, pin_env, lock, lib, token, session, mechanisms)
            _connections[(path, token_label)] = conn
    return conn


def _resolve_module(store: str, module: str) -> str:
    if "/" not in module:  # a bare name: the dynamic loader's search path decides
        return module
    if not os.path.exists(module):
        raise BackendUnavailable(
            f"backend {store}: PKCS#11 module {module} not found; install it (SoftHSM2: apt install "
            f"softhsm2) or set module = \"/path/to/pkcs11-module.so\" in [backend.{store}]")
    # one spelling per file: loading one module under two paths would initialise it twice
    return os.path.realpath(module)


def _load(store: str, module: str, path: str) -> Any:
    try:
        return pkcs11.lib(path)
    except p11e.PKCS11Error as exc:
        if type(exc) is p11e.PKCS11Error:  # dlopen or C_GetFunctionList failed
            raise BackendUnavailable(f"backend {store}: cannot load PKCS#11 module {module}: "
                                     f"{' '.join(str(exc).split())}") from None
        raise BackendUnavailable(
            f"backend {store}: PKCS#11 module {module} failed to initialise ({ckr(exc)}); "
            "for SoftHSM2 check $SOFTHSM2_CONF and its token directory") from None


def _find_token(store: str, lib: Any, module: str, token_label: str) -> Any:
    try:
        tokens = list(lib.get_tokens())
    except p11e.PKCS11Error as exc:
        raise translate(exc, store=store, token=token_label, doing="listing tokens") from None
    matches = [t for t in tokens if t.label == token_label]
    if not matches:
        found = ", ".join(sorted(repr(t.label) for t in tokens if t.label)) or "none"
        raise BackendUnavailable(
            f"backend {store}: no token labelled {token_label!r} in {module} (found: {found}); "
            f"create it (SoftHSM2: softhsm2-util --init-token --free --label {token_label}) or fix "
            f"token = in [backend.{store}]")
    if len(matches) > 1:
        raise BackendUnavailable(f"backend {store}: {len(matches)} tokens in {module} are labelled "
                                 f"{token_label!r}; give each token a unique label")
    return matches[0]


def _login(store: str, token: Any, token_label: str, pin_env: str) -> Any:
    pin = os.environ.get(pin_env)
    if not pin:
        raise BackendUnavailable(f"backend {store}: set ${pin_env} to the user PIN of PKCS#11 token "
                                 f"{token_label!r}")
    prefix = f"backend {store}: login to PKCS#11 token {token_label!r} failed"
    try:
        return token.open(rw=True, user_pin=pin)
    except p11e.UserAlreadyLoggedIn:  # someone else in this process logged in: sessions share it
        return token.open(rw=True)
    except p11e.PinIncorrect:
        raise BackendUnavailable(f"{prefix}: the PIN in ${pin_env} is wrong") from None
    except p11e.PinLocked:
        raise BackendUnavailable(f"{prefix}: the user PIN is locked; have the token's security "
                                 "officer reset it") from None
    except p11e.PinExpired:
        raise BackendUnavailable(f"{prefix}: the user PIN has expired; change it with the token's "
                                 "tools") from None
    except (p11e.PinInvalid, p11e.PinLenRange):
        raise BackendUnavailable(f"{prefix}: ${pin_env} does not hold a valid PIN for this token "
                                 "(length or characters)") from None
    except p11e.UserPinNotInitialized:
        raise BackendUnavailable(f"{prefix}: the token has no user PIN yet; set one (SoftHSM2: "
                                 "softhsm2-util --init-token ... --pin)") from None
    except p11e.PKCS11Error as exc:
        raise translate(exc, store=store, token=token_label, doing="logging in") from None


def _mechanisms(store: str, token: Any, token_label: str) -> frozenset[Any]:
    try:
        return frozenset(token.slot.get_mechanisms())
    except p11e.PKCS11Error as exc:
        raise translate(exc, store=store, token=token_label, doing="listing mechanisms") from None


@atexit.register
def _close_all() -> None:
    for conn in list(_connections.values()):
        conn.close()
    _connections.clear()


class Connection:
    """A logged-in session on one token, shared by every store on it in this process."""

    def __init__(self, module: str, token_label: str, pin_env: str,
                 lock: threading.RLock, lib: Any, token: Any, session: Any, mechanisms: frozenset[Any]) -> None:
        self.module = module
        self.token_label = token_label
        self.pin_env = pin_env
        self.lock = lock
        self.lib = lib
        self.token = token
        self.session = session
        self.mechanisms = mechanisms
        # what a handle's objects are, found once: an authority on the token signs many certificates
        self._privates: dict[KeyHandle, Any] = {}  # private key objects: valid in this session only
        self._publics: dict[KeyHandle, Any] = {}  # decoded public keys: a handle's never change

    def __repr__(self) -> str:
        return f"<pkcs11 connection {self.module} token={self.token_label!r}>"

    def close(self) -> None:
        with self.lock:
            try:
                self.session.close()
            except Exception:  # at exit, or the session is gone already: nothing left to release
                pass

    def run(self, store: str, doing: str, fn: Callable[[Any], T], *, retry: bool = True) -> T:
        """``fn(session)`` under the module lock, PKCS#11 errors translated.

        A lost session (token re-inserted, module re-initialised) is opened again; the call is
        repeated only if ``retry`` (it is idempotent).
        """
        with self.lock, _quiet_finalisers():
            for attempt in (1, 2):
                try:
                    return fn(self.session)
                except p11e.PKCS11Error as exc:
                    lost = isinstance(exc, _SESSION_LOST)
                    error = translate(exc, store=store, token=self.token_label, doing=doing)
                if lost:
                    self._reopen(store)
                if not (lost and retry and attempt == 1):
                    raise error
        raise AssertionError("unreachable")

    def _reopen(self, store: str) -> None:
        self.close()
        self._privates.clear()
        self.token = _find_token(store, self.lib, self.module, self.token_label)
        self.session = _login(store, self.token, self.token_label, self.pin_env)
        self.mechanisms = _mechanisms(store, self.token, self.token_label)

    # -- checks -------------------------------------------------------------------------------
    def check(self, store: str) -> None:
        if self.token.flags & pkcs11.TokenFlag.WRITE_PROTECTED:
            raise BackendUnavailable(f"backend {store}: PKCS#11 token {self.token_label!r} is "
                                     "write-protected; keys cannot be made on it")
        self.run(store, "searching", lambda s: list(s.get_objects({Attribute.LABEL: "pki-check"})))

    def require(self, store: str, key_type: KeyType, *, generate: bool) -> None:
        """UnsupportedKeyType unless the token can make (``generate``) and sign with ``key_type``."""
        mechs = self.mechanisms
        family = key_type.family
        gen = _GENERATE[family]
        if generate and gen not in mechs:
            raise UnsupportedKeyType(
                f"backend {store}: PKCS#11 token {self.token_label!r} cannot make {key_type.value} keys: "
                f"it lacks {ckm(gen)}; choose another key type or another backend")
        if family == "rsa":
            needed = [_RSA_HASHED["sha256"], Mechanism.RSA_PKCS]
        elif family == "ecdsa":
            needed = [Mechanism.ECDSA, _ECDSA_HASHED[_CERT_HASH[key_type]]]
        else:
            needed = [Mechanism.EDDSA]
        if not any(m in mechs for m in needed):
            raise UnsupportedKeyType(
                f"backend {store}: PKCS#11 token {self.token_label!r} cannot sign with {key_type.value} "
                f"keys: it lacks {' and '.join(ckm(m) for m in needed)}; choose another key type or "
                "another backend")
        if generate and family == "rsa":
            info = self.run(store, "reading mechanism info", lambda s: self.token.slot.get_mechanism_info(gen))
            if not info.min_key_length <= key_type.bits <= info.max_key_length:
                raise UnsupportedKeyType(
                    f"backend {store}: PKCS#11 token {self.token_label!r} makes RSA keys of "
                    f"{info.min_key_length}-{info.max_key_length} bits only, not {key_type.bits}")

    # -- objects --------------------------------------------------------------------------------
    def _refuse_collision(self, store: str, session: Any, label: str) -> None:
        if list(session.get_objects({Attribute.LABEL: label})):
            raise BackendError(
                f"backend {store}: label {label!r} is already taken on PKCS#11 token "
                f"{self.token_label!r} by an object pkiascode did not make; pkiascode never reuses "
                "a label: remove or relabel that object and run again")

    def _create(self, store: str, doing: str, handle: KeyHandle, create: Callable[[Any], None]) -> None:
        with self.lock:
            # the search also revives a lost session; creating is not repeated on failure
            self.run(store, doing, lambda session: self._refuse_collision(store, session, handle.label))
            self.run(store, doing, create, retry=False)

    def _pair(self, store: str, session: Any, handle: KeyHandle) -> tuple[Any, Any]:
        """(public, private) objects of ``handle``; anything else carrying its label is an error."""
        found: dict[Any, list[Any]] = {}
        foreign = 0
        for obj in list(session.get_objects({Attribute.LABEL: handle.label})):
            try:
                ours = obj[Attribute.ID] == handle.cka_id
            except p11e.AttributeTypeInvalid:  # a data object, say: no CKA_ID at all
                ours = False
            if ours:
                found.setdefault(obj[Attribute.CLASS], []).append(obj)
            else:
                foreign += 1
        publics = found.pop(ObjectClass.PUBLIC_KEY, [])
        privates = found.pop(ObjectClass.PRIVATE_KEY, [])
        if foreign or len(publics) > 1 or len(privates) > 1:
            raise BackendError(
                f"backend {store}: label {handle.label!r} on PKCS#11 token {self.token_label!r} is "
                "also carried by objects pkiascode did not make; remove or relabel them so the "
                "key is unambiguous")
        if not privates:
            raise KeyNotFound(f"backend {store}: key {handle.ref_id} is not on PKCS#11 token "
                              f"{self.token_label!r}")
        if not publics:
            raise KeyNotFound(f"backend {store}: the public key of {handle.ref_id} is missing from "
                              f"PKCS#11 token {self.token_label!r}")
        return publics[0], privates[0]

    def present(self, store: str, handles: Iterable[KeyHandle]) -> set[KeyHandle]:
        handles = list(handles)

        def op(session: Any) -> set[KeyHandle]:
            out = set()
            for handle in handles:
                classes = {obj[Attribute.CLASS] for obj in
                           session.get_objects({Attribute.LABEL: handle.label, Attribute.ID: handle.cka_id})}
                if {ObjectClass.PRIVATE_KEY, ObjectClass.PUBLIC_KEY} <= classes:
                    out.add(handle)
            return out

        return self.run(store, "looking up keys", op)

    def list_keys(self, store: str, labels: re.Pattern[str]) -> list[KeyHandle]:
        """The key pairs (private and public object, a 16-byte CKA_ID) whose label ``labels`` matches."""

        def op(session: Any) -> list[KeyHandle]:
            pairs: dict[tuple[str, bytes], set[Any]] = {}
            for cls in (ObjectClass.PRIVATE_KEY, ObjectClass.PUBLIC_KEY):
                for obj in session.get_objects({Attribute.CLASS: cls}):
                    label, cka_id = obj[Attribute.LABEL], obj[Attribute.ID]
                    if isinstance(label, str) and labels.fullmatch(label) and len(cka_id or b"") == 16:
                        pairs.setdefault((label, bytes(cka_id)), set()).add(cls)
            return [KeyHandle(label, cka_id) for (label, cka_id), classes in pairs.items() if len(classes) == 2]

        return self.run(store, "listing keys", op)

    def generate(self, store: str, name: str, key_type: KeyType, suffix: str | None = None,
                 scope: str | None = None) -> KeyHandle:
        self.require(store, key_type, generate=True)
        handle = KeyHandle.new(name, suffix, scope)
        common = {"store": True, "label": handle.label, "id": handle.cka_id, "capabilities": _SIGN_ONLY,
                  "private_template": dict(_PRIVATE)}

        def op(session: Any) -> None:
            if key_type.is_rsa:
                session.generate_keypair(P11KeyType.RSA, key_type.bits, public_template=dict(_PUBLIC), **common)
            else:
                p11_type = P11KeyType.EC_EDWARDS if key_type is KeyType.ED25519 else P11KeyType.EC
                session.generate_keypair(p11_type, public_template={**_PUBLIC, Attribute.EC_PARAMS:
                                                                    _EC_PARAMS[key_type]}, **common)

        self._create(store, f"generating a {key_type.value} key", handle, op)
        return handle

    def import_key(self, store: str, name: str, key: Any, suffix: str | None = None,
                   scope: str | None = None) -> KeyHandle:
        try:
            key_type = key_type_of(key)
        except ValueError as exc:
            raise UnsupportedKeyType(f"backend {store}: cannot import the key: {exc}") from None
        self.require(store, key_type, generate=False)
        public, private = _import_templates(key_type, key)
        handle = KeyHandle.new(name, suffix, scope)
        ids = {Attribute.LABEL: handle.label, Attribute.ID: handle.cka_id}

        def op(session: Any) -> None:
            pub = session.create_object({**_PUBLIC, **public, **ids})
            try:
                session.create_object({**_PRIVATE, **private, **ids})
            except BaseException:
                try:
                    pub.destroy()
                except p11e.PKCS11Error:
                    pass
                raise

        self._create(store, f"importing a {key_type.value} key", handle, op)
        return handle

    def public_key(self, store: str, handle: KeyHandle) -> Any:
        known = self._publics.get(handle)
        if known is not None:
            return known

        def op(session: Any) -> Any:
            pub, _ = self._pair(store, session, handle)
            kind = pub[Attribute.KEY_TYPE]
            if kind == P11KeyType.RSA:
                return rsa.RSAPublicNumbers(int.from_bytes(pub[Attribute.PUBLIC_EXPONENT], "big"),
                                            int.from_bytes(pub[Attribute.MODULUS], "big")).public_key()
            params = pub[Attribute.EC_PARAMS]
            try:
                if kind == P11KeyType.EC and params in _CURVES:
                    curve = _CURVES[params]
                    size = (curve.key_size + 7) // 8
                    return ec.EllipticCurvePublicKey.from_encoded_point(
                        curve, _octets(pub[Attribute.EC_POINT], 1 + 2 * size))
                if kind == P11KeyType.EC_EDWARDS and params in (_ED25519, _ED25519_BY_NAME):
                    return ed25519.Ed25519PublicKey.from_public_bytes(_octets(pub[Attribute.EC_POINT], 32))
            except ValueError:
                raise BackendError(f"backend {store}: the public key of {handle.ref_id} on PKCS#11 token "
                                   f"{self.token_label!r} cannot be decoded") from None
            raise UnsupportedKeyType(f"backend {store}: key {handle.ref_id} on PKCS#11 token "
                                     f"{self.token_label!r} is of a type pkiascode does not use")

        public = self._publics[handle] = self.run(store, f"reading the public key of {handle.label}", op)
        return public

    def sign(self, store: str, handle: KeyHandle, public: Any, data: bytes, algorithm: Any) -> bytes:
        mechs = self.mechanisms

        def op(session: Any) -> bytes:
            private = self._privates.get(handle)
            if private is None:
                _, private = self._pair(store, session, handle)
                self._privates[handle] = private
            if isinstance(public, rsa.RSAPublicKey):
                mech = _RSA_HASHED.get(algorithm.name)
                if mech in mechs:
                    return private.sign(data, mechanism=mech)
                if Mechanism.RSA_PKCS in mechs:  # hash here, sign the DigestInfo on the token
                    return private.sign(rsa_digest_info(_digest(algorithm, data), algorithm),
                                        mechanism=Mechanism.RSA_PKCS)
                return self._lacks(store, "RSA", [mech, Mechanism.RSA_PKCS])
            if isinstance(public, ec.EllipticCurvePublicKey):
                if Mechanism.ECDSA in mechs:  # hash here, sign the digest on the token
                    return ecdsa_raw_to_der(private.sign(_digest(algorithm, data), mechanism=Mechanism.ECDSA))
                mech = _ECDSA_HASHED.get(algorithm.name)
                if mech in mechs:
                    return ecdsa_raw_to_der(private.sign(data, mechanism=mech))
                return self._lacks(store, "ECDSA", [Mechanism.ECDSA, mech])
            if Mechanism.EDDSA in mechs:
                return private.sign(data, mechanism=Mechanism.EDDSA)
            return self._lacks(store, "Ed25519", [Mechanism.EDDSA])

        return self.run(store, f"signing with {handle.label}", op)

    def _forget(self, which: Callable[[KeyHandle], bool]) -> None:
        for cache in (self._privates, self._publics):
            for h in [h for h in cache if which(h)]:
                del cache[h]

    def _lacks(self, store: str, what: str, mechanisms: list[Any]) -> bytes:
        names = " and ".join(ckm(m) for m in mechanisms if m is not None)
        raise UnsupportedKeyType(f"backend {store}: PKCS#11 token {self.token_label!r} cannot make "
                                 f"{what} signatures: it lacks {names}")

    def discard(self, store: str, label: str) -> None:
        """Remove the key objects a run that died mid-call made under ``label`` (16-byte CKA_ID: ours)."""
        self._forget(lambda h: h.label == label)

        def op(session: Any) -> None:
            for obj in list(session.get_objects({Attribute.LABEL: label})):
                if obj[Attribute.CLASS] in (ObjectClass.PRIVATE_KEY, ObjectClass.PUBLIC_KEY) \
                        and len(obj[Attribute.ID] or b"") == 16:
                    obj.destroy()

        self.run(store, f"discarding {label}", op)

    def delete(self, store: str, handle: KeyHandle) -> None:
        self._forget(lambda h: h == handle)

        def op(session: Any) -> None:
            ours = [obj for obj in session.get_objects({Attribute.LABEL: handle.label, Attribute.ID: handle.cka_id})
                    if obj[Attribute.CLASS] in (ObjectClass.PRIVATE_KEY, ObjectClass.PUBLIC_KEY)]
            for obj in ours:
                obj.destroy()

        self.run(store, f"deleting {handle.label}", op)


_hook_lock = threading.Lock()
_hook_depth = 0
_saved_hook: Any = None


def _quiet(unraisable: Any) -> None:
    if not isinstance(unraisable.exc_value, p11e.PKCS11Error):
        _saved_hook(unraisable)


@contextlib.contextmanager
def _quiet_finalisers() -> Iterator[None]:
    """No "Exception ignored in OperationContext.__del__" on stderr while we call the module.

    When C_FindObjectsInit fails (a dead session), python-pkcs11 leaves the search marked active and
    its finaliser calls C_FindObjectsFinal, fails again and has Python print that error to stderr as
    the exception unwinds. The call's own error is reported properly; that echo is dropped.
    """
    global _hook_depth, _saved_hook
    with _hook_lock:
        if _hook_depth == 0:
            _saved_hook, sys.unraisablehook = sys.unraisablehook, _quiet
        _hook_depth += 1
    try:
        yield
    finally:
        with _hook_lock:
            _hook_depth -= 1
            if _hook_depth == 0:
                sys.unraisablehook, _saved_hook = _saved_hook, None


def _digest(algorithm: hashes.HashAlgorithm, data: bytes) -> bytes:
    h = hashes.Hash(algorithm)
    h.update(data)
    return h.finalize()


def _octets(value: bytes, raw_length: int) -> bytes:
    """CKA_EC_POINT is a DER OCTET STRING; some tokens hand out the raw point instead."""
    if len(value) == raw_length:
        return value
    if value[:1] == b"\x04":
        length, start = value[1], 2
        if length & 0x80:
            n = length & 0x7F
            length, start = int.from_bytes(value[2:2 + n], "big"), 2 + n
        if len(value) == start + length:
            return value[start:]
    raise ValueError("cannot decode CKA_EC_POINT")


def _der_octet_string(value: bytes) -> bytes:
    n = len(value)
    length = bytes([n]) if n < 0x80 else bytes([0x81, n]) if n < 0x100 else bytes([0x82]) + n.to_bytes(2, "big")
    return b"\x04" + length + value


def _be(value: int, length: int | None = None) -> bytes:
    return value.to_bytes(length or max(1, (value.bit_length() + 7) // 8), "big")


def _import_templates(key_type: KeyType, key: Any) -> tuple[dict[Any, Any], dict[Any, Any]]:
    """(public, private) object attributes for ``key``. Reads the private numbers: the one moment
    key material passes through this process."""
    from cryptography.hazmat.primitives import serialization

    if key_type.is_rsa:
        priv = key.private_numbers()
        pub = priv.public_numbers
        numbers = {Attribute.MODULUS: _be(pub.n), Attribute.PUBLIC_EXPONENT: _be(pub.e)}
        return ({Attribute.CLASS: ObjectClass.PUBLIC_KEY, Attribute.KEY_TYPE: P11KeyType.RSA, **numbers},
                {Attribute.CLASS: ObjectClass.PRIVATE_KEY, Attribute.KEY_TYPE: P11KeyType.RSA, **numbers,
                 Attribute.PRIVATE_EXPONENT: _be(priv.d), Attribute.PRIME_1: _be(priv.p),
                 Attribute.PRIME_2: _be(priv.q), Attribute.EXPONENT_1: _be(priv.dmp1),
                 Attribute.EXPONENT_2: _be(priv.dmq1), Attribute.COEFFICIENT: _be(priv.iqmp)})
    if key_type is KeyType.ED25519:
        point = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        params = {Attribute.KEY_TYPE: P11KeyType.EC_EDWARDS, Attribute.EC_PARAMS: _ED25519}
        return ({Attribute.CLASS: ObjectClass.PUBLIC_KEY, **params, Attribute.EC_POINT: _der_octet_string(point)},
                {Attribute.CLASS: ObjectClass.PRIVATE_KEY, **params, Attribute.VALUE: key.private_bytes_raw()})
    size = (key.curve.key_size + 7) // 8
    point = key.public_key().public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)
    params = {Attribute.KEY_TYPE: P11KeyType.EC, Attribute.EC_PARAMS: _EC_PARAMS[key_type]}
    return ({Attribute.CLASS: ObjectClass.PUBLIC_KEY, **params, Attribute.EC_POINT: _der_octet_string(point)},
            {Attribute.CLASS: ObjectClass.PRIVATE_KEY, **params,
             Attribute.VALUE: _be(key.private_numbers().private_value, size)})
