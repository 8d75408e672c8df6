"""`VaultKeyStore`: authority keys in Transit, leaf keys in KV v2, a lease lock in KV v2.

Key references (`KeyRef.id`, recorded in the inventory, never secret):

- ``transit:<name>@<version>``, e.g. ``transit:pki-root-3f9a1c2e@1``: a Transit key, non-exportable,
  signing inside Vault always with that pinned version, so rotating the key in Vault cannot change
  the signer of an existing authority behind the inventory's back;
- ``kv:<path>``, e.g. ``kv:pki/keys/node-0-3f9a1c2e``: a PKCS#8 PEM key in KV v2 (field
  ``private_key``), generated here and written once with ``cas=0``.

A key asked for as non-exportable goes to Transit: every authority's (authorities default to
``exportable = false``) and a leaf's with ``exportable = false``; other keys go to KV. Imports follow
the same rule; into Transit they go through Transit's BYOK import (the key wrapped for Vault's
wrapping key), created non-exportable.

Namespaces: with a ``[pki] id`` (`StoreContext.pki_id`) everything this store writes is scoped by it:
KV paths ``<prefix>/<id>/keys/...`` and the lock ``<prefix>/<id>/locks/...``, Transit names
``<prefix>.<id>.<entry>-<random>`` (a '.' after the prefix where unscoped names have a '-', so the
unscoped listing of an older repository never takes in another PKI's keys). Without an id the
paths of earlier versions stay: ``<prefix>/keys/...``, ``<prefix>/locks/...``, ``<prefix>-<entry>-...``.
Names are matched by whole parts, never as string prefixes (`prefix_problem`: a prefix holds no '.'),
so PKIs with ids whose prefixes extend one another (``pki``, ``pki-team``, ``pki/team``) never see
each other's keys, and the unscoped ``pki-`` namespace never takes in a scoped ``pki-team.<id>.``
name. Two PKIs *without* ids whose prefixes extend one another do share Transit names
(``pki-team-root-...`` fits both): that only an id fixes.

Every method that takes a key reference (signer, public key, export, release, missing, delete) first
checks that it lies in this PKI's namespace: with an id, a Transit name starting ``<prefix>.<id>.``
or a KV path in ``<prefix>/<id>/keys/``; without one, ``<prefix>-`` and ``<prefix>/keys/`` only, so
no reference carrying an id segment. Anything else (another PKI's root, put in a forged inventory,
pending deletion or journal) is a `BackendError` "... is not a key of this PKI (namespace ...)",
raised before Vault is asked. A PKI that was given an id after it made keys keeps using those
(unscoped) keys only with ``legacy_keys = true``: they share the unscoped namespace with every PKI
without an id on that Vault, which is why it is not the default.

Credentials: the token (or the login's secrets) go only to ``$VAULT_ADDR``; an ``address`` in
pki.toml that differs is an error naming both, and one without ``$VAULT_ADDR`` is used only when it
is a loopback address (local development, tests), both raised before anything is sent to anyone.
Either address must be plain (`address_parts`: scheme, host, port, nothing else).
TLS trust comes from the environment as well (`VaultKeyStore._tls`): ``$VAULT_CACERT``,
``$VAULT_CAPATH`` and ``$VAULT_SKIP_VERIFY`` decide when set, and a ``ca_cert`` or ``tls_verify`` in
pki.toml that says otherwise is an error naming both; without them, pki.toml may turn verification
off only for a loopback address, and may name a ``ca_cert`` for any other address only if the file
lies outside the repository (a committed CA file would let a pull request vouch for an impostor).
"""

from __future__ import annotations

import base64
import dataclasses
import ipaddress
import os
import re
import secrets
import threading
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from pkiascode.backend import ENTRY_NAME, KeyRef, KeyRequest, KeyStore, Option
from pkiascode.errors import BackendError, BackendUnavailable, KeyNotExportable, KeyNotFound, UnsupportedKeyType
from pkiascode.keytypes import KeyType, generate_private_key, key_type_of
from pkiascode.log import get_logger
from pkiascode.names import parse_duration

from .auth import Auth, auth_problems, parse_auth


def seconds(value: object) -> float:
    """A lock option in seconds: a non-negative number, or a pki.toml duration such as ``"5m"``."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ValueError('expected a duration such as "300s" or "5m"')
    if isinstance(value, (int, float)):
        if value < 0:
            raise ValueError("must not be negative")
        return float(value)
    return float(value.strip()) if value.strip().isdigit() else float(parse_duration(value, allow_zero=True))

if TYPE_CHECKING:
    import contextlib

    from .client import VaultClient

__all__ = ["VaultKeyStore", "PLAIN_ADDRESS", "address_parts", "address_problem", "is_loopback", "prefix_problem"]

log = get_logger("pkiascode.vault")

# Transit's names for our key types; all six exist in Vault >= 1.9 and OpenBao.
_TRANSIT_TYPES = {
    KeyType.RSA_2048: "rsa-2048",
    KeyType.RSA_3072: "rsa-3072",
    KeyType.RSA_4096: "rsa-4096",
    KeyType.ECDSA_P256: "ecdsa-p256",
    KeyType.ECDSA_P384: "ecdsa-p384",
    KeyType.ED25519: "ed25519",
}
_KEY_TYPE_OF_TRANSIT = {v: k for k, v in _TRANSIT_TYPES.items()}
_TRANSIT_HASHES = {"sha224": "sha2-224", "sha256": "sha2-256", "sha384": "sha2-384", "sha512": "sha2-512",
                   "sha3-224": "sha3-224", "sha3-256": "sha3-256", "sha3-384": "sha3-384",
                   "sha3-512": "sha3-512"}
_TRANSIT_ID = re.compile(r"transit:([A-Za-z0-9._-]+)@([1-9][0-9]{0,8})")
_KV_ID = re.compile(r"kv:((?:[A-Za-z0-9._-]+/)*keys/[A-Za-z0-9._-]+)")
_SEGMENT = re.compile(r"[A-Za-z0-9._-]+")
_PREFIX_PART = re.compile(r"[A-Za-z0-9_-]+")
_SUFFIX = re.compile(r"[0-9a-f]{8}")
#: what follows the namespace in every name this store makes: ``<entry>-<8 hex>``
_TAIL = re.compile(rf"{ENTRY_NAME.pattern}-[0-9a-f]{{8}}")
#: a Transit name in the scoped layout of some PKI with an id (config's rule for ``[pki] id``):
#: ``<prefix>.<id>.<entry>-<suffix>``; never a key of the unscoped namespace (`VaultKeyStore._owns`)
_SCOPED_TRANSIT = re.compile(rf"[A-Za-z0-9_-]+\.[a-z0-9]{{8,32}}\.{_TAIL.pattern}")
_NAME_TRIES = 5
_GONE = re.compile(r"not found|no existing key|could not be found")


#: a plain Vault address: scheme, host and port, nothing else. User info, a path, a query, a fragment,
#: a backslash or a space are where URL parsers disagree (Python's urlsplit reads
#: ``http://A\@127.0.0.1`` as host 127.0.0.1, urllib3, which connects, as host A), so none is allowed.
_ADDRESS = re.compile(r"(https?)://([A-Za-z0-9.-]+|\[[0-9A-Fa-f:.]+\])(?::([0-9]{1,5}))?/?")
_IPV4 = re.compile(r"[0-9]+(?:\.[0-9]+){3}")
_DNS_LABEL = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?")
#: what `address_parts` allows, for messages
PLAIN_ADDRESS = ("must be a plain http:// or https:// URL: scheme, host and port only, e.g. "
                 "\"https://vault.example:8200\" (no user info, path, query, fragment, backslash or space)")


def address_parts(address: str) -> tuple[str, str, int | None] | None:
    """``(scheme, host, port)`` of a plain Vault address, None for anything else (`PLAIN_ADDRESS`).

    The host is a dotted-quad IPv4 address, an IPv6 address in brackets, or a DNS name whose last label
    begins with a letter (``127.1`` or ``0x7f.1`` would be read as an address by the resolver); a name
    is returned in lower case, as urllib3 gives it. `pkiascode_vault.client` checks, before connecting,
    that urllib3 (the parser requests connects with) reads the same three parts."""
    match = _ADDRESS.fullmatch(address)
    if match is None:
        return None
    scheme, host, port_text = match.groups()
    port = int(port_text) if port_text is not None else None
    if port is not None and not 0 < port < 65536:
        return None
    try:
        if host.startswith("["):
            ipaddress.IPv6Address(host[1:-1])
            return scheme, host.lower(), port
        if _IPV4.fullmatch(host):
            ipaddress.IPv4Address(host)  # no leading zeros, each part below 256
            return scheme, host, port
    except ValueError:
        return None
    labels = host.split(".")
    if all(_DNS_LABEL.fullmatch(label) for label in labels) and labels[-1][0].isalpha():
        return scheme, host.lower(), port
    return None


def address_problem(address: str) -> str | None:
    """What is wrong with a Vault address (None: it is plain, `address_parts`), as a message tail."""
    if not address.startswith(("http://", "https://")):
        return "must start with http:// or https://, e.g. \"https://vault.example:8200\""
    return PLAIN_ADDRESS if address_parts(address) is None else None


def is_loopback(address: str) -> bool:
    """Whether ``address``, a plain address (`address_parts`), names this machine: 127.0.0.0/8, ::1 or
    ``localhost``. False for any address that is not plain."""
    parts = address_parts(address)
    if parts is None:
        return False
    host = parts[1]
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def prefix_problem(prefix: str) -> str | None:
    """What is wrong with a ``prefix`` setting (None: nothing). Its parts are names matched whole: a
    '.' would let one PKI's prefix and ``[pki] id`` spell another's Transit names (``pki`` with id
    ``a`` and ``pki.a``), and an empty prefix would make every key of the mounts this PKI's."""
    if not prefix.strip("/"):
        return "must not be empty: it keeps pkiascode's keys apart from everything else in the mounts"
    if not all(_PREFIX_PART.fullmatch(p) for p in prefix.strip("/").split("/")):
        return ("may hold only letters, digits, '_' and '-', and '/' between parts (no '.': it separates the "
                "prefix from the [pki] id in Transit key names)")
    return None


_BOOL_TEXT = {"1": True, "t": True, "true": True, "yes": True, "on": True,
              "0": False, "f": False, "false": False, "no": False, "off": False}


def _repository(base_dir: Any) -> str:
    """The git work tree holding pki.toml (the nearest directory up with a ``.git``), else its directory."""
    base = os.path.realpath(str(base_dir))
    directory = base
    while True:
        if os.path.lexists(os.path.join(directory, ".git")):
            return directory
        parent = os.path.dirname(directory)
        if parent == directory:
            return base
        directory = parent


def _inside(path: str, root: str) -> bool:
    """Whether ``path`` lies in ``root``, as written or with every link resolved."""
    for p, r in ((os.path.normpath(os.path.abspath(path)), os.path.normpath(os.path.abspath(root))),
                 (os.path.realpath(path), os.path.realpath(root))):
        if os.path.commonpath([p, r]) == r:
            return True
    return False


def _same_file(a: str, b: str) -> bool:
    return os.path.realpath(a) == os.path.realpath(b)


def _mount(value: Any, default: str) -> str:
    return str(value if value is not None else default).strip("/")


class _TransitKey:
    """What one pinned Transit key version is: cached per reference, so signing costs one call."""

    __slots__ = ("name", "version", "key_type", "public")

    def __init__(self, name: str, version: int, key_type: KeyType, public: Any) -> None:
        self.name = name
        self.version = version
        self.key_type = key_type
        self.public = public


class VaultKeyStore(KeyStore):
    """Keys in HashiCorp Vault or OpenBao; logged in as the ``auth`` table says (default: the token
    in ``$VAULT_TOKEN``, then ``~/.vault-token``)."""

    plugin = "vault"
    holds_non_exportable = True  # Transit
    holds_exportable = True  # KV
    options = {
        "address": Option(str, None, "Vault address, e.g. https://vault.example:8200 (default $VAULT_ADDR; "
                                     "credentials go to it only if $VAULT_ADDR agrees or it is a loopback address)"),
        "namespace": Option(str, None, "Vault Enterprise / OpenBao namespace (default $VAULT_NAMESPACE)"),
        "kv_mount": Option(str, "secret", "mount path of the KV v2 engine holding exportable keys and the lock"),
        "transit_mount": Option(str, "transit", "mount path of the Transit engine holding non-exportable keys"),
        "prefix": Option(str, "pki", "path prefix in KV and name prefix in Transit for everything pkiascode writes"),
        "ca_cert": Option(str, None, "PEM file of the CA that signed Vault's TLS certificate (default "
                                     "$VAULT_CACERT; outside the repository unless Vault is on loopback)"),
        "tls_verify": Option(bool, True, "verify Vault's TLS certificate (false only for a loopback address; "
                                         "$VAULT_SKIP_VERIFY decides when set)"),
        "client_cert": Option(str, None, "PEM client certificate for TLS client authentication"),
        "client_key": Option(str, None, "PEM key of client_cert"),
        "timeout": Option((int, float), 10, "seconds to wait for one answer from Vault"),
        "lock_ttl": Option((int, str), "300s",
                           "lease of the apply lock; a holder that stops renewing loses it after this"),
        "lock_timeout": Option((int, str), "0s", "how long apply waits for another apply's lock (0: fail at once)"),
        "legacy_keys": Option(bool, False, "with a [pki] id: also use keys made before the id (the unscoped "
                                           "pki-*/pki/keys/ layout every PKI without an id shares)"),
        "auth": Option(dict, None, 'how to log in: { method = "token" | "approle" | "jwt" | "kubernetes", ... } '
                                   "(default: $VAULT_TOKEN, then ~/.vault-token)"),
    }

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        s = self.settings
        self.configured_address = str(s.get("address") or "").rstrip("/")  # pki.toml's: trusted only if $VAULT_ADDR agrees
        self.address = (os.environ.get("VAULT_ADDR") or self.configured_address).rstrip("/")
        self.auth: Auth = parse_auth(s.get("auth")) if not auth_problems(s.get("auth")) else Auth()
        self.pki_id = self.context.pki_id
        self.namespace = s.get("namespace") or os.environ.get("VAULT_NAMESPACE") or None
        self.kv_mount = _mount(s.get("kv_mount"), "secret")
        self.transit_mount = _mount(s.get("transit_mount"), "transit")
        self.prefix = str(s.get("prefix") if s.get("prefix") is not None else "pki").strip("/")
        try:
            self.lock_ttl = seconds(s.get("lock_ttl", "300s"))
            self.lock_timeout = seconds(s.get("lock_timeout", "0s"))
        except ValueError as error:
            raise BackendError(f"backend {self.name}: lock_ttl/lock_timeout: {error}") from None
        self._client_obj: VaultClient | None = None
        self._client_lock = threading.Lock()
        self._transit_cache: dict[str, _TransitKey] = {}
        self._public_cache: dict[str, Any] = {}
        self._wrapping_key: Any = None

    # -- configuration ----------------------------------------------------------------------------------
    @classmethod
    def validate(cls, settings: Mapping[str, Any]) -> list[tuple[str, str]]:
        problems: list[tuple[str, str]] = []
        address = settings.get("address")
        if address is not None and address_problem(str(address)):
            problems.append(("address", address_problem(str(address)) or ""))
        elif address is not None and str(address).startswith("http://") and not is_loopback(str(address)):
            problems.append(("address", "plain http:// only to a loopback address (credentials would cross the "
                                        "network unencrypted): use https://"))
        for option in ("kv_mount", "transit_mount"):
            value = settings.get(option)
            if value is not None and not all(_SEGMENT.fullmatch(p) and p not in (".", "..")
                                             for p in str(value).strip("/").split("/")):
                problems.append((option, "must be a mount path such as \"secret\" or \"team/transit\""))
        problem = prefix_problem(str(settings["prefix"])) if settings.get("prefix") is not None else None
        if problem:
            problems.append(("prefix", problem))
        for option in ("lock_ttl", "lock_timeout"):
            if option in settings:
                try:
                    value = seconds(settings[option])
                except ValueError as error:
                    problems.append((option, str(error)))
                    continue
                if option == "lock_ttl" and value < 1:
                    problems.append((option, "must be at least 1s"))
        timeout = settings.get("timeout")
        if timeout is not None and (isinstance(timeout, bool) or not isinstance(timeout, (int, float))
                                    or timeout <= 0):
            problems.append(("timeout", "must be a positive number of seconds"))
        if settings.get("tls_verify") is False and address is not None and not is_loopback(str(address)):
            problems.append(("tls_verify", "false only for a loopback address: a token sent over an unverified "
                                           "connection goes to whoever answers (set $VAULT_SKIP_VERIFY in the "
                                           "job's environment if you really mean it)"))
        if bool(settings.get("client_cert")) != bool(settings.get("client_key")):
            problems.append(("client_cert", "client_cert and client_key go together"))
        problems.extend(("auth", problem) for problem in auth_problems(settings.get("auth")))
        return problems

    def _path(self, value: str | None) -> str | None:
        if not value:
            return None
        path = self.context.base_dir / os.path.expanduser(value)
        return str(path)

    @property
    def _client(self) -> "VaultClient":
        if self._client_obj is None:
            with self._client_lock:
                if self._client_obj is None:
                    from .client import VaultClient  # hvac and requests load here, not at plugin import

                    s = self.settings
                    if auth_problems(s.get("auth")):  # validate() said so already; never log in some other way
                        raise self._err(BackendError, "the auth table is not valid: run `pki validate`")
                    env_address = os.environ.get("VAULT_ADDR", "").rstrip("/")
                    for source, value in (("$VAULT_ADDR", env_address), ("address", self.configured_address)):
                        if value and address_problem(value):  # validate() said so for pki.toml's
                            raise self._err(BackendUnavailable, f"{source} {value!r} {address_problem(value)}")
                    if env_address and self.configured_address and env_address != self.configured_address:
                        raise self._err(BackendUnavailable, f"pki.toml says address = {self.configured_address!r} "
                                                            f"but $VAULT_ADDR is {env_address!r}: credentials go "
                                                            "only to $VAULT_ADDR; remove address from pki.toml or "
                                                            "make the two agree")
                    if not env_address and self.configured_address and not is_loopback(self.configured_address):
                        raise self._err(BackendUnavailable, f"address {self.configured_address} is not taken from "
                                                            "pki.toml for credentials (a pull request can edit it): "
                                                            f"set VAULT_ADDR={self.configured_address} in the job's "
                                                            "environment (pki.toml's address alone is used only for "
                                                            "a loopback address)")
                    verify = self._tls()
                    cert = None
                    if s.get("client_cert") and s.get("client_key"):
                        cert = (self._path(s["client_cert"]) or "", self._path(s["client_key"]) or "")
                    hints = {self.kv_mount: f"vault secrets enable -path={self.kv_mount} kv-v2",
                             self.transit_mount: f"vault secrets enable -path={self.transit_mount} transit"}
                    self._client_obj = VaultClient(self.name, self.address, namespace=self.namespace,
                                                   verify=verify, cert=cert, timeout=float(s.get("timeout") or 10),
                                                   mount_hints=hints, auth=self.auth)
        return self._client_obj

    def _tls(self) -> bool | str:
        """How Vault's TLS certificate is verified: True (the default trust store), a CA file or
        directory, or False. Raises `BackendUnavailable` before anything is sent when pki.toml (which a
        pull request controls) would decide trust for the connection that carries the token:

        - ``$VAULT_CACERT``, ``$VAULT_CAPATH`` or ``$VAULT_SKIP_VERIFY`` set: the environment decides,
          and a ``ca_cert`` or ``tls_verify`` in pki.toml that says something else is an error naming both;
        - otherwise ``tls_verify = false`` only for a loopback address, and a ``ca_cert`` for any other
          address only outside the repository (checked before and after resolving links)."""
        s = self.settings
        env_cacert = os.environ.get("VAULT_CACERT") or None
        env_capath = os.environ.get("VAULT_CAPATH") or None
        env_skip_text = os.environ.get("VAULT_SKIP_VERIFY") or None
        env_skip = False
        if env_skip_text is not None:
            flag = env_skip_text.strip().lower()
            if flag not in _BOOL_TEXT:
                raise self._err(BackendUnavailable, f"$VAULT_SKIP_VERIFY is {env_skip_text!r}: use true or false")
            env_skip = _BOOL_TEXT[flag]
        toml_verify = s.get("tls_verify")  # None: not in pki.toml
        toml_ca = self._path(s.get("ca_cert"))
        if env_cacert or env_capath or env_skip_text is not None:
            env_ca = env_cacert or env_capath
            ca_said = f"${'VAULT_CACERT' if env_cacert else 'VAULT_CAPATH'} is {env_ca!r}"
            skip_said = f"$VAULT_SKIP_VERIFY is {env_skip_text!r}"
            if toml_verify is not None and bool(toml_verify) == env_skip:
                said = skip_said if env_skip_text is not None else ca_said
                raise self._err(BackendUnavailable, f"pki.toml says tls_verify = {str(bool(toml_verify)).lower()} but "
                                                    f"{said}: the environment decides TLS trust; remove tls_verify "
                                                    "from pki.toml or make the two agree")
            if toml_ca and (env_skip or not env_ca or not _same_file(toml_ca, env_ca)):
                said = skip_said if env_skip or not env_ca else ca_said
                raise self._err(BackendUnavailable, f"pki.toml says ca_cert = {s.get('ca_cert')!r} but {said}: the "
                                                    "environment decides TLS trust; remove ca_cert from pki.toml or "
                                                    "make the two agree")
            if env_skip:
                log.warning("backend %s: TLS verification of %s is turned off ($VAULT_SKIP_VERIFY)",
                            self.name, self.address)
                return False
            if env_ca and not os.path.exists(env_ca):
                raise self._err(BackendUnavailable, f"${'VAULT_CACERT' if env_cacert else 'VAULT_CAPATH'} "
                                                    f"{env_ca} does not exist")
            return env_ca or True
        loopback = is_loopback(self.address)
        if toml_verify is False:
            if not loopback:
                raise self._err(BackendUnavailable, f"tls_verify = false is refused for {self.address}: it is allowed "
                                                    "only for a loopback address (a token sent over an unverified "
                                                    "connection goes to whoever answers); set $VAULT_CACERT, or "
                                                    "$VAULT_SKIP_VERIFY in the job's environment if you really mean it")
            log.warning("backend %s: TLS verification of %s is turned off", self.name, self.address)
            return False
        if toml_ca:
            if not loopback:
                repo = _repository(self.context.base_dir)
                if _inside(toml_ca, repo):
                    raise self._err(BackendUnavailable, f"refusing ca_cert {s.get('ca_cert')!r} for {self.address}: it "
                                                        f"is inside the repository {repo}, where a commit could replace "
                                                        "it and vouch for an impostor; set $VAULT_CACERT in the job's "
                                                        "environment, or name a file outside the repository")
            if not os.path.isfile(toml_ca):
                raise self._err(BackendUnavailable, f"ca_cert {toml_ca} is not a file")
            return toml_ca
        return True

    def close(self) -> None:
        if self._client_obj is not None:
            self._client_obj.close()

    # -- names and references ---------------------------------------------------------------------------
    def _err(self, cls: type[BackendError], text: str) -> BackendError:
        return cls(f"backend {self.name}: {text}")

    def _transit_head(self) -> str:
        """What every Transit name of this PKI starts with."""
        head = self.prefix.replace("/", "-")
        if self.pki_id:
            return f"{head}.{self.pki_id}." if head else f"{self.pki_id}."
        return f"{head}-" if head else ""

    def _folder(self, kind: str) -> str:
        """The KV folder of ``kind`` (``keys``, ``locks``) in this PKI's namespace."""
        return "/".join(p for p in (self.prefix, self.pki_id or "", kind) if p)

    def _transit_name(self, entry: str, suffix: str | None = None) -> str:
        return f"{self._transit_head()}{entry}-{suffix or secrets.token_hex(4)}"

    def _kv_path(self, entry: str, suffix: str | None = None) -> str:
        return f"{self._folder('keys')}/{entry}-{suffix or secrets.token_hex(4)}"

    def _namespaces(self) -> list[tuple[str, str]]:
        """(Transit name head, KV keys folder) of every namespace whose keys this store may touch: this
        PKI's own, and with ``legacy_keys`` and an id, the unscoped one of keys made before the id."""
        spaces = [(self._transit_head(), self._folder("keys"))]
        if self.pki_id and self.settings.get("legacy_keys") is True:
            head = self.prefix.replace("/", "-")
            spaces.append((f"{head}-" if head else "", "/".join(p for p in (self.prefix, "keys") if p)))
        return spaces

    @staticmethod
    def _transit_in(head: str, name: str) -> bool:
        """Whether the Transit key ``name`` is in the namespace whose names start with ``head``. A
        scoped head (``pki.<id>.``) is matched whole, as prefixes hold no '.'; under an unscoped head
        (``pki-``) a name of the scoped layout (``pki-team.<id>.root-...``: a key of the PKI with
        that id and the prefix ``pki-team`` or ``pki/team``) is never this namespace's."""
        return (name.startswith(head) and len(name) > len(head)
                and (head.endswith(".") or not _SCOPED_TRANSIT.fullmatch(name)))

    def _owns(self, kind: str, name: str) -> bool:
        for head, folder in self._namespaces():
            if kind == "transit" and self._transit_in(head, name):
                return True
            if kind == "kv" and name.rpartition("/")[0] == folder:  # the folder matched whole
                return True
        return False

    def _foreign(self, ref_id: str) -> BackendError:
        spaces = " or ".join(f"transit {head}*, kv {folder}/*" for head, folder in self._namespaces())
        hint = ""
        if self.pki_id and self.settings.get("legacy_keys") is not True:
            head = self.prefix.replace("/", "-")
            legacy = "/".join(p for p in (self.prefix, "keys") if p)
            if (ref_id.startswith(f"transit:{head}-") if head else ref_id.startswith("transit:")) or (
                    ref_id.startswith(f"kv:{legacy}/") and ref_id.count("/") == legacy.count("/") + 1):
                hint = ("; it is named as keys made before this PKI had a [pki] id: if this PKI made it, set "
                        f"legacy_keys = true in [backend.{self.name}]")
        return self._err(BackendError, f"{ref_id!r} is not a key of this PKI (namespace {spaces}){hint}")

    @staticmethod
    def _parse(ref_id: str) -> tuple[str, str, int]:
        m = _TRANSIT_ID.fullmatch(ref_id)
        if m:
            return "transit", m.group(1), int(m.group(2))
        m = _KV_ID.fullmatch(ref_id)
        if m and ".." not in m.group(1).split("/"):
            return "kv", m.group(1), 0
        raise ValueError(ref_id)

    def _parse_ref(self, ref: KeyRef) -> tuple[str, str, int]:
        """``ref`` parsed, if it is a key of this PKI's namespace; a `BackendError` otherwise."""
        try:
            kind, name, version = self._parse(ref.id)
        except ValueError:
            raise self._err(BackendError, f"{ref.id!r} is not a Vault key reference "
                                          "(expected transit:NAME@VERSION or kv:PATH)") from None
        if not self._owns(kind, name):
            raise self._foreign(ref.id)
        return kind, name, version

    @staticmethod
    def _check_request(request: KeyRequest) -> None:
        if request.key_type not in _TRANSIT_TYPES:  # pragma: no cover - every KeyType is supported
            raise UnsupportedKeyType(f"key type {request.key_type.value} is not supported by Vault")
        # names and suffixes come from pki.toml or the key journal: checked before they become paths
        if not ENTRY_NAME.fullmatch(request.name) or (request.suffix and not _SUFFIX.fullmatch(request.suffix)):
            raise BackendError(f"invalid key request {request.name!r}/{request.suffix!r} for a Vault key")

    @staticmethod
    def _wants_transit(request: KeyRequest) -> bool:
        # authorities ask for non-exportable keys unless their entry says `exportable = true`
        return not request.exportable

    # -- Transit ------------------------------------------------------------------------------------------
    def _transit_key(self, ref: KeyRef) -> _TransitKey:
        cached = self._transit_cache.get(ref.id)
        if cached is not None:
            return cached
        _, name, version = self._parse_ref(ref)
        reply = self._client.call("GET", f"{self.transit_mount}/keys/{name}", allow=(404,))
        if reply.status == 404:
            raise self._err(KeyNotFound, f"Transit key {name} does not exist in {self.transit_mount}/ "
                                         f"at {self.address}")
        return self._remember_transit(ref.id, name, version, reply.data)

    def _remember_transit(self, ref_id: str, name: str, version: int, data: Mapping[str, Any]) -> _TransitKey:
        key_type = _KEY_TYPE_OF_TRANSIT.get(str(data.get("type")))
        if key_type is None:
            raise self._err(UnsupportedKeyType, f"Transit key {name} is of type {data.get('type')}, "
                                                "which cannot sign certificates")
        entry = (data.get("keys") or {}).get(str(version))
        if not isinstance(entry, Mapping) or not entry.get("public_key"):
            raise self._err(KeyNotFound, f"Transit key {name} has no version {version} any more "
                                         f"(latest {data.get('latest_version')}, oldest "
                                         f"{data.get('min_available_version') or 1}): was it trimmed?")
        public = self._load_transit_public(key_type, str(entry["public_key"]))
        key = _TransitKey(name, version, key_type, public)
        self._transit_cache[ref_id] = key
        return key

    @staticmethod
    def _load_transit_public(key_type: KeyType, text: str) -> Any:
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import ed25519

        if key_type is KeyType.ED25519:  # Transit gives Ed25519 public keys as base64 of the raw 32 bytes
            return ed25519.Ed25519PublicKey.from_public_bytes(base64.b64decode(text))
        return serialization.load_pem_public_key(text.encode())

    def _new_transit_name(self, entry: str, suffix: str | None = None) -> str:
        # Creating a Transit key under a taken name silently returns the old key, so look first.
        for attempt in range(_NAME_TRIES):
            name = self._transit_name(entry, suffix if attempt == 0 else None)
            if self._client.call("GET", f"{self.transit_mount}/keys/{name}", allow=(404,)).status == 404:
                return name
        raise self._err(BackendError, f"could not find a free Transit key name for {entry}")  # pragma: no cover

    def _generate_transit(self, request: KeyRequest) -> KeyRef:
        name = self._new_transit_name(request.name, request.suffix)
        reply = self._client.call("POST", f"{self.transit_mount}/keys/{name}",
                                  {"type": _TRANSIT_TYPES[request.key_type], "exportable": False,
                                   "allow_plaintext_backup": False})
        data = reply.data if reply.data.get("keys") else \
            self._client.call("GET", f"{self.transit_mount}/keys/{name}").data  # Vault < 1.10 answers 204
        if data.get("exportable") or data.get("type") != _TRANSIT_TYPES[request.key_type]:
            raise self._err(BackendError, f"Transit key {name} is not the non-exportable "
                                          f"{request.key_type.value} key just created")
        version = int(data.get("latest_version") or 1)
        ref_id = f"transit:{name}@{version}"
        self._remember_transit(ref_id, name, version, data)
        return KeyRef(self.name, ref_id)

    def _wrapping_public_key(self) -> Any:
        if self._wrapping_key is None:
            from cryptography.hazmat.primitives import serialization

            reply = self._client.call("GET", f"{self.transit_mount}/wrapping_key")
            self._wrapping_key = serialization.load_pem_public_key(str(reply.data["public_key"]).encode())
        return self._wrapping_key

    def _import_transit(self, request: KeyRequest, key: Any) -> KeyRef:
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import padding
        from cryptography.hazmat.primitives.keywrap import aes_key_wrap_with_padding

        name = self._new_transit_name(request.name, request.suffix)
        # BYOK: an ephemeral AES-256 key wrapped with RSA-OAEP-SHA256 for Vault's wrapping key, then the
        # PKCS#8 key wrapped with AES-KWP (RFC 5649) under it; Vault unwraps both inside.
        ephemeral = os.urandom(32)
        wrapped_aes = self._wrapping_public_key().encrypt(
            ephemeral, padding.OAEP(mgf=padding.MGF1(hashes.SHA256()), algorithm=hashes.SHA256(), label=None))
        pkcs8 = key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption())
        wrapped_key = aes_key_wrap_with_padding(ephemeral, pkcs8)
        self._client.call("POST", f"{self.transit_mount}/keys/{name}/import", {
            "ciphertext": base64.b64encode(wrapped_aes + wrapped_key).decode(),
            "hash_function": "SHA256",
            "type": _TRANSIT_TYPES[request.key_type],
            "exportable": False,
            "allow_plaintext_backup": False,
            "allow_rotation": False,
        })
        data = self._client.call("GET", f"{self.transit_mount}/keys/{name}").data
        version = int(data.get("latest_version") or 1)
        ref_id = f"transit:{name}@{version}"
        imported = self._remember_transit(ref_id, name, version, data)
        raw = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        if imported.public.public_bytes(*raw) != key.public_key().public_bytes(*raw):
            raise self._err(BackendError, f"Transit key {name} does not hold the key just imported")
        return KeyRef(self.name, ref_id, "imported")

    def _transit_signer(self, ref: KeyRef) -> Any:
        from pkiascode.signers import external_key

        key = self._transit_key(ref)
        client, path = self._client, f"{self.transit_mount}/sign/{key.name}"
        prefix = f"vault:v{key.version}:"
        label = f"backend {self.name}: Transit key {key.name} version {key.version}"

        def sign(data: bytes, algorithm: Any) -> bytes:
            body: dict[str, Any] = {"key_version": key.version}
            if key.key_type is KeyType.ED25519:
                body["input"] = base64.b64encode(data).decode()  # Transit ignores `prehashed` for Ed25519
            else:
                from cryptography.hazmat.primitives import hashes

                transit_hash = _TRANSIT_HASHES.get(algorithm.name)
                if transit_hash is None:
                    raise BackendError(f"{label}: Transit cannot sign with hash {algorithm.name}")
                digest = hashes.Hash(algorithm)
                digest.update(data)
                body.update(input=base64.b64encode(digest.finalize()).decode(), prehashed=True,
                            hash_algorithm=transit_hash)
                if key.key_type.is_rsa:
                    body["signature_algorithm"] = "pkcs1v15"  # Transit's default for RSA is PSS
                else:
                    body["marshaling_algorithm"] = "asn1"
            reply = client.call("POST", path, body, allow=(400, 404))
            if reply.status == 404 or (reply.status == 400 and _GONE.search(reply.errors)):
                raise KeyNotFound(f"{label}: the key is gone from {self.transit_mount}/")
            if reply.status == 400:
                raise client.error_for("POST", path, reply)
            signature = str(reply.data.get("signature") or "")
            if not signature.startswith(prefix):
                raise BackendError(f"{label}: Vault signed with {signature.split(':')[1:2] or '?'} "
                                   f"instead of the pinned version")
            return base64.b64decode(signature[len(prefix):])

        return external_key(key.public, sign, label=label)

    def _delete_transit(self, name: str) -> None:
        # Transit refuses to delete a key until its config allows it; both steps tolerate a missing key.
        reply = self._client.call("POST", f"{self.transit_mount}/keys/{name}/config", {"deletion_allowed": True},
                                  allow=(400, 404))
        if reply.status == 404 or (reply.status == 400 and _GONE.search(reply.errors)):
            return
        if reply.status == 400:
            raise self._err(BackendError, f"Vault refused to allow deleting Transit key {name} ({reply.errors})")
        reply = self._client.call("DELETE", f"{self.transit_mount}/keys/{name}", allow=(400, 404))
        if reply.status == 400 and not _GONE.search(reply.errors):
            raise self._err(BackendError, f"Vault refused to delete Transit key {name} ({reply.errors})")

    # -- KV v2 --------------------------------------------------------------------------------------------
    def _write_kv(self, request: KeyRequest, key: Any, origin: str) -> KeyRef:
        from cryptography.hazmat.primitives import serialization

        pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption()).decode()
        record = {"private_key": pem, "key_type": request.key_type.value, "entry": request.name, "origin": origin}
        for attempt in range(_NAME_TRIES):
            path = self._kv_path(request.name, request.suffix if attempt == 0 else None)
            # cas=0: written only if nothing is there, so an existing key is never overwritten
            reply = self._client.call("POST", f"{self.kv_mount}/data/{path}",
                                      {"options": {"cas": 0}, "data": record}, allow=(400,))
            if reply.status == 400 and "check-and-set" in reply.errors:
                continue
            if reply.status == 400:
                raise self._err(BackendError, f"Vault refused to store key {path} in {self.kv_mount}/ "
                                              f"({reply.errors})")
            ref_id = f"kv:{path}"
            self._public_cache[ref_id] = key.public_key()
            return KeyRef(self.name, ref_id, origin)
        raise self._err(BackendError, f"could not find a free KV path for {request.name}")  # pragma: no cover

    def _read_kv(self, ref: KeyRef) -> Any:
        from cryptography.hazmat.primitives import serialization

        _, path, _ = self._parse_ref(ref)
        reply = self._client.call("GET", f"{self.kv_mount}/data/{path}", allow=(404,))
        data = (reply.data.get("data") or {}) if reply.status != 404 else {}
        if not data.get("private_key"):
            raise self._err(KeyNotFound, f"key {path} does not exist in {self.kv_mount}/ at {self.address}")
        try:
            key = serialization.load_pem_private_key(str(data["private_key"]).encode(), password=None)
        except (ValueError, TypeError):
            raise self._err(BackendError, f"{self.kv_mount}/{path} does not hold an unencrypted PEM private key "
                                          "in its private_key field") from None
        self._public_cache[ref.id] = key.public_key()
        return key

    # -- KeyStore -----------------------------------------------------------------------------------------
    def generate(self, request: KeyRequest) -> KeyRef:
        self._check_request(request)
        if self._wants_transit(request):
            return self._generate_transit(request)
        return self._write_kv(request, generate_private_key(request.key_type), "generated")

    def import_key(self, request: KeyRequest, key: Any) -> KeyRef:
        self._check_request(request)
        try:
            key_type = key_type_of(key)
        except ValueError as error:
            raise self._err(UnsupportedKeyType, str(error)) from None
        if key_type is not request.key_type:
            request = dataclasses.replace(request, key_type=key_type)  # keeps the journaled suffix
        if self._wants_transit(request):
            return self._import_transit(request, key)
        return self._write_kv(request, key, "imported")

    def signer(self, ref: KeyRef) -> Any:
        kind, _, _ = self._parse_ref(ref)
        if kind == "transit":
            return self._transit_signer(ref)
        return self._read_kv(ref)

    def public_key(self, ref: KeyRef) -> Any:
        kind, _, _ = self._parse_ref(ref)
        if kind == "transit":
            return self._transit_key(ref).public
        cached = self._public_cache.get(ref.id)
        return cached if cached is not None else self._read_kv(ref).public_key()

    def is_exportable(self, ref: KeyRef) -> bool:
        return ref.id.startswith("kv:")

    def export(self, ref: KeyRef) -> Any:
        kind, name, version = self._parse_ref(ref)
        if kind == "transit":
            raise self._err(KeyNotExportable, f"key {ref.id} is a non-exportable Vault Transit key: it signs inside "
                                              "Vault and never leaves it (use `pki export --no-key` for the "
                                              "certificate alone)")
        return self._read_kv(ref)

    def missing(self, refs: Iterable[KeyRef]) -> set[KeyRef]:
        refs = list(refs)
        gone: set[KeyRef] = set()
        transit: list[tuple[KeyRef, str]] = []
        kv: dict[str, list[tuple[KeyRef, str]]] = {}
        for ref in refs:
            try:
                kind, name, _ = self._parse(ref.id)
            except ValueError:
                gone.add(ref)  # not a reference this store makes: it has no such key
                continue
            if not self._owns(kind, name):
                raise self._foreign(ref.id)  # before anything is asked of Vault
            if kind == "transit":
                transit.append((ref, name))
            else:
                folder, _, leaf = name.rpartition("/")
                kv.setdefault(folder, []).append((ref, leaf))
        # one LIST per place instead of one GET per key
        if transit:
            names = self._list(f"{self.transit_mount}/keys")
            gone.update(ref for ref, name in transit if name not in names)
            # a Transit key is an authority's: few, and worth one GET each to see that the pinned
            # version is still there (not trimmed away); cached for signing afterwards
            for ref, name in transit:
                if name in names:
                    try:
                        self._transit_key(ref)
                    except KeyNotFound:
                        gone.add(ref)
        for folder, items in kv.items():
            names = self._list(f"{self.kv_mount}/metadata/{folder}")
            gone.update(ref for ref, leaf in items if leaf not in names)
        for ref in gone:
            self._transit_cache.pop(ref.id, None)
            self._public_cache.pop(ref.id, None)
        return gone

    def _list(self, path: str) -> set[str]:
        reply = self._client.call("LIST", path, allow=(404,))
        return set() if reply.status == 404 else set(reply.data.get("keys") or [])

    def list_keys(self) -> list[KeyRef]:
        head = self._transit_head()
        refs = []
        for name in self._list(f"{self.transit_mount}/keys"):
            if self._transit_in(head, name) and _TAIL.fullmatch(name[len(head):]):
                # once per key, with its oldest version: the one pkiascode made (it never rotates
                # them) and the one an inventory pins; deleting it deletes every version
                data = self._client.call("GET", f"{self.transit_mount}/keys/{name}", allow=(404,)).data
                versions = sorted(int(v) for v in (data.get("keys") or {}) if str(v).isdigit())
                if versions:
                    refs.append(KeyRef(self.name, f"transit:{name}@{versions[0]}"))
        folder = self._folder("keys")
        for leaf in self._list(f"{self.kv_mount}/metadata/{folder}"):
            if _TAIL.fullmatch(leaf):  # a trailing "/" is a folder (another PKI's namespace, say): not a key
                refs.append(KeyRef(self.name, f"kv:{folder}/{leaf}"))
        return sorted(refs, key=lambda r: r.id)

    def discard(self, request: KeyRequest) -> None:
        if not request.suffix:
            return
        self._check_request(request)
        # only in the engine `generate` and `import_key` send the request to; a missing key is no error
        if self._wants_transit(request):
            self._delete_transit(self._transit_name(request.name, request.suffix))
        else:
            self._client.call("DELETE", f"{self.kv_mount}/metadata/{self._kv_path(request.name, request.suffix)}",
                              allow=(404,))

    def delete(self, ref: KeyRef) -> None:
        kind, name, _ = self._parse_ref(ref)
        self._transit_cache.pop(ref.id, None)
        self._public_cache.pop(ref.id, None)
        if kind == "transit":
            self._delete_transit(name)
        else:
            # the metadata delete removes every version; KV answers 204 for a path that is already gone
            self._client.call("DELETE", f"{self.kv_mount}/metadata/{name}")

    # -- checks -------------------------------------------------------------------------------------------
    def check(self) -> None:
        client = self._client
        status = client.call("GET", "sys/seal-status", authenticated=False).body
        if not status.get("initialized", True):
            raise client.not_initialized()
        if status.get("sealed"):
            raise client.sealed()
        if not client.token_is_valid():
            raise client.token_rejected()
        self._check_mount(self.kv_mount, "kv", "kv-v2")
        self._check_mount(self.transit_mount, "transit", "transit")

    def _check_mount(self, mount: str, engine: str, enable: str) -> None:
        command = f"vault secrets enable -path={mount} {enable}"
        reply = self._client.call("GET", f"sys/internal/ui/mounts/{mount}", allow=(400, 403, 404))
        if not reply.ok:
            raise self._err(BackendUnavailable, f"the {engine} mount {mount}/ is missing in Vault at {self.address} "
                                                f"or the token may not use it: enable it with `{command}`, or "
                                                "grant the token pki-apply.hcl")
        data = reply.data
        if data.get("type") != engine:
            raise self._err(BackendUnavailable, f"{mount}/ is a {data.get('type')} mount, not {engine}: use another "
                                                f"mount path, or enable one with `{command}`")
        if engine == "kv" and str((data.get("options") or {}).get("version")) != "2":
            raise self._err(BackendUnavailable, f"{mount}/ is KV version 1; pkiascode needs KV v2: "
                                                f"`vault kv enable-versioning {mount}/` or `{command}` elsewhere")

    # -- coordination -------------------------------------------------------------------------------------
    def lock(self, lock_id: str, holder: Mapping[str, str], *,
             timeout: float = 0.0) -> "contextlib.AbstractContextManager[None]":
        from .lock import LeaseLock

        return LeaseLock(self._client, store=self.name, mount=self.kv_mount,
                         path=f"{self._folder('locks')}/{self.lock_name(lock_id)}",
                         lock_id=lock_id, holder=holder, ttl=self.lock_ttl,
                         timeout=max(self.lock_timeout, timeout))

    @staticmethod
    def lock_name(lock_id: str) -> str:
        """A KV path segment for ``lock_id``; distinct ids stay distinct (a hash is added when cleaned)."""
        import hashlib

        safe = re.sub(r"[^A-Za-z0-9._-]+", "-", lock_id).strip("-.")[:80]
        if safe != lock_id or not safe:
            safe = f"{safe or 'state'}-{hashlib.sha256(lock_id.encode()).hexdigest()[:8]}"
        return safe
