"""The key-store interface every backend plugin implements.

A *key store* is one ``[backend.NAME]`` table of pki.toml, made by its plugin's factory. The core
never sees key material unless the store hands it over: it holds a `KeyRef` (the store's name and an
opaque id the store chose) and asks the store for a *signer*, an object that `cryptography`'s
builders accept as a private key. For a file that is the key itself; for Vault Transit or an HSM it is
`pkiascode.signers.external_key`, whose ``sign()`` runs in the store.

What the core relies on, method by method, is documented on `KeyStore`. Every store passes the
shared conformance suite in `pkiascode.testing`.

Threads: the core may call ``generate`` from several threads at once (RSA generation runs in
parallel). A store that cannot do that serialises internally.

Construction must not do I/O or import heavy client libraries: the core makes stores to ask cheap
questions (`KeyStore.local_key_dirs`) and connects only when a method needs the store.
"""

from __future__ import annotations

import abc
import contextlib
import dataclasses
import re
import secrets
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from .errors import BackendError, KeyNotExportable
from .keytypes import KeyType

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.types import (
        CertificateIssuerPrivateKeyTypes,
        CertificateIssuerPublicKeyTypes,
    )

__all__ = ["KeyRef", "KeyRequest", "KeyStore", "StoreContext", "Option", "KeyStoreFactory", "ENTRY_NAME",
           "PKI_ID"]

#: what an entry name is (pki.toml's rule); a store checks names read back from any file against it
ENTRY_NAME = re.compile(r"[a-z0-9][a-z0-9._-]{0,127}")
#: what a ``[pki] id`` may be: it becomes part of Vault paths, Transit names and PKCS#11 labels
PKI_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,31}")


@dataclasses.dataclass(frozen=True)
class KeyRef:
    """Where a key is: the store's name in pki.toml and the store's own id for it.

    ``id`` is opaque to the core and recorded in the inventory; it must never contain secrets.
    ``origin`` is ``"generated"`` (made in the store) or ``"imported"`` (brought in from outside).
    """

    store: str
    id: str
    origin: str = "generated"

    def __str__(self) -> str:
        return f"{self.store}:{self.id}"


@dataclasses.dataclass(frozen=True)
class KeyRequest:
    """What the core asks a store to make or import.

    ``name`` is the pki.toml entry (``root``, ``node-0``); stores derive labels from it and add a
    unique part, so a new key never overwrites an old one that a committed certificate still needs.
    ``exportable`` is the entry's wish: a store that can only keep keys inside (an HSM) ignores
    ``True``; a store that can only hand them out (files) ignores ``False``. ``authority`` tells
    stores that keep authority keys elsewhere (Vault: Transit rather than KV) which is which.
    ``suffix``, when set, is the unique part to name the key with (``<name>-<suffix>``): the core
    journals the request before the call, so if the process dies during it, `KeyStore.discard` can
    find what the store made. A store may pick another name if that one is taken.
    """

    name: str
    key_type: KeyType
    authority: bool
    exportable: bool
    suffix: str | None = None

    def with_suffix(self) -> KeyRequest:
        """This request with a fresh unique part, which the core journals before calling the store."""
        return KeyRequest(self.name, self.key_type, self.authority, self.exportable, secrets.token_hex(4))

    def to_json(self) -> dict[str, object]:
        return {"name": self.name, "key_type": self.key_type.value, "authority": self.authority,
                "exportable": self.exportable, "suffix": self.suffix}

    @classmethod
    def from_json(cls, d: Mapping[str, object]) -> KeyRequest:
        return cls(str(d["name"]), KeyType(str(d["key_type"])), bool(d["authority"]), bool(d["exportable"]),
                   str(d["suffix"]) if d.get("suffix") else None)


@dataclasses.dataclass(frozen=True)
class StoreContext:
    """What a store may know about the project: the directory of pki.toml, the local work dir, and
    the PKI's ``[pki] id``.

    ``pki_id`` scopes everything a store shared by several repositories keeps (Vault paths and the
    lock, PKCS#11 labels), so two PKIs on one Vault never share a lock or a key path. ``None`` (a
    repository from before ids) keeps the unscoped names of earlier versions.
    """

    base_dir: Path
    work_dir: Path  # <base>/.pki, git-ignored
    pki_id: str | None = None

    def __post_init__(self) -> None:
        if self.pki_id is not None and not PKI_ID.fullmatch(self.pki_id):
            raise ValueError(f"[pki] id {self.pki_id!r}: use 1-32 letters, digits, '-' or '_'")


@dataclasses.dataclass(frozen=True)
class Option:
    """One option a store accepts in its ``[backend.NAME]`` table (besides ``plugin``)."""

    type: type | tuple[type, ...]
    default: Any = None
    help: str = ""


class KeyStore(abc.ABC):
    """A named key store. Methods raise `pkiascode.errors.BackendError` subclasses only.

    - `KeyNotFound` when a reference names a key the store does not have;
    - `KeyNotExportable` from `export` for keys that never leave the store;
    - `UnsupportedKeyType` for a key type the store cannot make or hold;
    - `BackendUnavailable` when the store cannot be used at all (server down, wrong PIN, ...).
    Messages are one line, name the store, say what to do, and never contain secrets.
    """

    #: the plugin name, as in ``plugin = "..."``
    plugin: ClassVar[str]
    #: options accepted in the ``[backend.NAME]`` table; unknown ones are config errors
    options: ClassVar[Mapping[str, Option]] = {}

    def __init__(self, name: str, settings: Mapping[str, Any], context: StoreContext) -> None:
        self.name = name
        self.settings = dict(settings)
        self.context = context

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r}>"

    # -- checks ------------------------------------------------------------------------------
    @classmethod
    def validate(cls, settings: Mapping[str, Any]) -> list[tuple[str, str]]:
        """Problems with ``settings`` beyond type checks, as (option, message). No I/O."""
        return []

    def local_key_dirs(self) -> list[Path]:
        """Directories under the repository where this store writes key files (must be git-ignored)."""
        return []

    def check(self) -> None:
        """Prove the store is usable now (reachable, unsealed, logged in, mounts present).

        Called once before an apply touches anything, so a fault stops it before any change.
        """

    def require(self, key_type: KeyType, *, generate: bool) -> None:
        """Raise `UnsupportedKeyType` unless the store can make (``generate``) or import, and sign
        with, ``key_type``. Called before an apply changes anything; the default accepts all."""

    # -- keys --------------------------------------------------------------------------------
    @abc.abstractmethod
    def generate(self, request: KeyRequest) -> KeyRef:
        """Make a new key and return its reference. Never replaces an existing key."""

    @abc.abstractmethod
    def signer(self, ref: KeyRef) -> "CertificateIssuerPrivateKeyTypes":
        """An object `cryptography` builders can sign with; signs in the store if the key stays there."""

    @abc.abstractmethod
    def public_key(self, ref: KeyRef) -> "CertificateIssuerPublicKeyTypes":
        """The public half of ``ref``."""

    @abc.abstractmethod
    def missing(self, refs: Iterable[KeyRef]) -> set[KeyRef]:
        """The subset of ``refs`` that the store no longer has. One round-trip where possible."""

    def exists(self, ref: KeyRef) -> bool:
        return not self.missing([ref])

    @abc.abstractmethod
    def is_exportable(self, ref: KeyRef) -> bool:
        """Whether `export` can return this key. No I/O needed: decided by how it was made."""

    def export(self, ref: KeyRef) -> "CertificateIssuerPrivateKeyTypes":
        """The private key itself, for ``pki export``. Raises `KeyNotExportable` unless
        `is_exportable`."""
        raise KeyNotExportable(f"backend {self.name}: key {ref.id} cannot leave the store")

    def release(self, ref: KeyRef) -> "CertificateIssuerPrivateKeyTypes":
        """The private key, to import it into another store (``move_key``), which keeps it as the
        entry asks. The default is `export`. A store whose non-exportable keys are only kept from
        ``pki export`` (files on disk) hands them over here too (`releases_non_exportable`)."""
        return self.export(ref)

    @abc.abstractmethod
    def import_key(self, request: KeyRequest, key: "CertificateIssuerPrivateKeyTypes") -> KeyRef:
        """Bring an existing private key in (non-exportable where the store can enforce it)."""

    @abc.abstractmethod
    def delete(self, ref: KeyRef) -> None:
        """Remove the key. Deleting a key that is already gone is not an error."""

    def list_keys(self) -> list[KeyRef]:
        """Every key this store holds in this PKI's namespace (``pki keys``, ``pki prune``), sorted by id.

        Only keys named the way this store names them for this PKI: with a ``[pki] id``, keys of
        other PKIs sharing the store are never listed. Raises `BackendError` if the store cannot list.
        """
        raise BackendError(f"backend {self.name}: the {self.plugin} plugin cannot list its keys")

    def discard(self, request: KeyRequest) -> None:
        """Remove whatever `generate` or `import_key` may have made for ``request`` (which has a
        ``suffix``) in a run that died before it learnt the reference. Nothing there is not an error.
        The default does nothing: a store that names keys its own way cannot find them."""

    #: whether a forked worker process may call `generate` and sign with this store's keys (files:
    #: yes; a network client or an HSM session: no). The core makes hundreds of leaves that way.
    fork_safe: ClassVar[bool] = False
    #: whether the store can keep keys that never leave it (Vault Transit, an HSM)
    holds_non_exportable: ClassVar[bool] = False
    #: whether the store can hand keys out (`export`)
    holds_exportable: ClassVar[bool] = True
    #: whether `release` hands out non-exportable keys too, so they can move to another store (files:
    #: yes, "non-exportable" there means only that ``pki export`` refuses them; Transit, HSMs: no)
    releases_non_exportable: ClassVar[bool] = False

    # -- coordination --------------------------------------------------------------------------
    def lock(self, lock_id: str, holder: Mapping[str, str], *,
             timeout: float = 0.0) -> contextlib.AbstractContextManager[None] | None:
        """A lock shared by every machine using this store, or None if the store offers none.

        ``lock_id`` names the state being applied; ``holder`` says who asks (user, host, pid, time)
        and is what a waiting apply shows, never what decides: a holder is judged gone only when its
        lease runs out. Wait up to ``timeout`` seconds (``pki apply --lock-timeout``), then raise
        `pkiascode.errors.LockError` naming the holder.

        A lock that can be lost while held (a lease) gives its context manager a ``confirm()``
        method: it proves with the store (a check-and-set write) that the lock is still this
        holder's, renewing the lease, and raises `LockError` otherwise. Apply calls it before it
        writes anything, before every commit and before every key deletion. ``check()`` is the
        same method under its earlier name.
        """
        return None

    def close(self) -> None:
        """Release connections and sessions."""


KeyStoreFactory = type[KeyStore]
