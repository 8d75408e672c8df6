"""HTTP to Vault (or OpenBao) through hvac, and every failure turned into one safe line.

hvac is imported here, and this module is imported only when a store first talks to Vault, so a
``pki plan`` that never touches Vault does not pay for hvac and requests.

Each thread gets its own hvac adapter (its own ``requests.Session``): sessions are not thread-safe
and the core generates keys from several threads. The token comes from the store's `Auth` (read from
``$VAULT_TOKEN`` or ``~/.vault-token``, or the answer of a login) once, when the first request needs
it, and is never part of a message, a repr or a chained exception.

Credentials go only to a Vault that can be trusted with them: a plain address (scheme, host, port),
whose host urllib3, which connects, reads as the loopback rule did; plain ``http://`` only to a
loopback address (anything else is refused before a connection is made); no redirect followed (a
3xx is an error: requests would resend the token); and the store sends them only to
``$VAULT_ADDR``, or to pki.toml's ``address`` alone when that is a loopback address (see `VaultKeyStore`).
"""

from __future__ import annotations

import re
import threading
from collections.abc import Mapping
from typing import Any

from hvac.adapters import RawAdapter
from requests import exceptions as rx
from urllib3.exceptions import LocationParseError
from urllib3.util import parse_url

from pkiascode.errors import BackendError, BackendUnavailable

from .auth import Auth
from .store import PLAIN_ADDRESS, address_parts, address_problem, is_loopback

__all__ = ["VaultClient", "Reply", "server_errors"]


class Reply:
    """A response the caller said it expects: status and parsed JSON body (``{}`` when empty)."""

    __slots__ = ("status", "body")

    def __init__(self, status: int, body: dict[str, Any]) -> None:
        self.status = status
        self.body = body

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300

    @property
    def data(self) -> dict[str, Any]:
        return self.body.get("data") or {}

    @property
    def errors(self) -> str:
        return server_errors(self.body)


def server_errors(body: Mapping[str, Any]) -> str:
    """Vault's ``errors`` list as one line ("1 error occurred: * x" becomes "x")."""
    errors = body.get("errors") or []
    text = "; ".join(str(e) for e in errors) if isinstance(errors, list) else str(errors)
    text = re.sub(r"\d+ errors? occurred:", "", text)
    text = re.sub(r"\s*\*\s+", " ", text)
    return " ".join(text.split()).strip(" ;")


class VaultClient:
    """``call(method, path, body)`` against ``/v1/<path>``; errors become `BackendError` subclasses.

    ``mount_hints`` maps a mount path to the command that enables it, used when Vault says it has
    no handler for a route (the mount is missing).
    """

    def __init__(self, store: str, address: str | None, *, namespace: str | None, verify: bool | str,
                 cert: tuple[str, str] | None, timeout: float, mount_hints: Mapping[str, str],
                 auth: Auth | None = None) -> None:
        self.store = store
        self.auth = auth or Auth()
        self._token: str | None = None
        self._token_lock = threading.Lock()
        self._secrets: list[str] = []  # every credential read: never in a message
        self.address = (address or "").rstrip("/")
        self.namespace = namespace or None
        self.verify = verify
        self.cert = cert
        self.timeout = timeout
        self.mount_hints = dict(mount_hints)
        if verify is False:  # turned off on purpose (the store logs it once): no warning per request
            import urllib3

            urllib3.disable_warnings(urllib3.exceptions.InsecureRequestWarning)
        self._local = threading.local()
        self._adapters: list[RawAdapter] = []
        self._adapters_lock = threading.Lock()

    def __repr__(self) -> str:
        return f"<VaultClient {self.store!r} {self.address!r}>"

    # -- plumbing ---------------------------------------------------------------------------------
    def _fail(self, cls: type[BackendError], what: str) -> BackendError:
        for secret in self._secrets:
            if len(secret) >= 16:  # a real credential; a short dev token ("root") is a common word
                what = what.replace(secret, "<secret>")  # a server never echoes one, but be sure
        return cls(f"backend {self.store}: {what}")

    def _remember_secret(self, secret: str) -> None:
        self._secrets.append(secret)

    def token(self) -> str:
        """The token, read or logged in for on first use (once, whichever thread asks first)."""
        with self._token_lock:
            if self._token is None:
                self._check_address()
                self._token = self.auth.token(self.store, self._login, self._remember_secret)
            return self._token

    def _login(self, path: str, body: dict[str, str]) -> str:
        reply = self.call("POST", path, body, allow=(400, 401, 403, 404), authenticated=False)
        token = (reply.body.get("auth") or {}).get("client_token") if reply.ok else None
        if not isinstance(token, str) or not token:
            detail = reply.errors or f"status {reply.status}"
            raise self._fail(BackendUnavailable, f"Vault at {self.address} refused the {self.auth.method} login at "
                                                 f"{path} ({detail}): check the role, the auth method's "
                                                 "configuration and the credentials in the environment")
        self._remember_secret(token)
        return token

    def _adapter(self) -> RawAdapter:
        if getattr(self._local, "adapter", None) is None:
            return self._new_adapter("adapter", self.token())
        return self._local.adapter  # type: ignore[no-any-return]

    def _new_adapter(self, slot: str, token: str | None) -> RawAdapter:
        """A connection for this thread (``slot``: with the token or without), closed by `close`."""
        # no redirects: requests would resend X-Vault-Token to wherever one points (it strips only
        # Authorization); a 3xx is an error in `call`
        adapter = RawAdapter(base_uri=self.address, token=token, verify=self.verify, cert=self.cert,
                             timeout=self.timeout, namespace=self.namespace, allow_redirects=False)
        setattr(self._local, slot, adapter)
        with self._adapters_lock:
            self._adapters.append(adapter)
        return adapter

    def close(self) -> None:
        with self._adapters_lock:
            adapters, self._adapters = self._adapters, []
        for adapter in adapters:
            try:
                adapter.close()
            except Exception:  # pragma: no cover - closing is best effort
                pass
        self._local = threading.local()

    def call(self, method: str, path: str, body: Mapping[str, Any] | None = None, *,
             allow: tuple[int, ...] = (), authenticated: bool = True) -> Reply:
        """One request. Returns a `Reply` for 2xx and for statuses in ``allow``; raises otherwise."""
        try:
            # sys/seal-status and friends need no token: none is sent
            adapter = self._adapter() if authenticated else self._adapter_without_token()
            response = adapter.request(method, f"/v1/{path}", json=body, raise_exception=False)
        except rx.SSLError:
            raise self._fail(BackendUnavailable, f"TLS verification failed for {self.address}: set $VAULT_CACERT "
                                                 "(or `ca_cert`, a file outside the repository) to the CA that "
                                                 "signed Vault's certificate") from None
        except rx.Timeout:
            raise self._fail(BackendUnavailable, f"Vault at {self.address} did not answer within "
                                                 f"{self.timeout:g}s") from None
        except rx.ConnectionError:
            raise self._fail(BackendUnavailable, f"cannot reach Vault at {self.address}: is it running, and is "
                                                 "`address` (or $VAULT_ADDR) right?") from None
        except (rx.RequestException, ValueError, OSError) as exc:
            reason = " ".join(str(exc).split())[:200] or type(exc).__name__
            raise self._fail(BackendUnavailable, f"cannot talk to Vault at {self.address!r} ({reason}): check "
                                                 "`address`, `ca_cert`, `client_cert` and `client_key`") from None
        if 300 <= response.status_code < 400:
            raise self._redirected(method, path, response)
        try:
            parsed = response.json() if response.content else {}
        except ValueError:
            parsed = {}
        if not isinstance(parsed, dict):
            parsed = {}
        status = response.status_code
        if status == 404 and "no handler for route" in server_errors(parsed):
            raise self._error(method, path, status, parsed)  # a missing mount is never an allowed "not found"
        if 200 <= status < 300 or status in allow:
            return Reply(status, parsed)
        raise self._error(method, path, status, parsed)

    def _check_address(self) -> None:
        """Before the first connection: the address is plain, and urllib3 (which requests connects with)
        reads the host and port the loopback rule judged (`address_parts`)."""
        if not self.address:
            raise self._fail(BackendUnavailable, "no Vault address: set $VAULT_ADDR (or `address` in the backend table)")
        problem = address_problem(self.address)
        if problem:
            raise self._fail(BackendUnavailable, f"Vault address {self.address!r} {problem}")
        try:
            url = parse_url(self.address)
            connects_to = (url.scheme, url.host, url.port, url.auth, url.path or "/", url.query, url.fragment)
        except LocationParseError:
            connects_to = None
        if connects_to != (*(address_parts(self.address) or ()), None, "/", None, None):
            raise self._fail(BackendUnavailable, f"Vault address {self.address!r} {PLAIN_ADDRESS}")
        if self.address.startswith("http://") and not is_loopback(self.address):
            raise self._fail(BackendUnavailable, f"refusing to talk to Vault at {self.address} over plain http: "
                                                 "credentials would cross the network unencrypted; use https:// "
                                                 "(plain http only to a loopback address)")

    def _redirected(self, method: str, path: str, response: Any) -> BackendError:
        """The error for a redirect, naming the host[:port] it points to (never followed)."""
        location = response.headers.get("Location") or ""
        try:
            target = parse_url(location).netloc or "this same address"  # a relative Location: no host
        except LocationParseError:
            target = "an address that does not parse"
        return self._fail(BackendUnavailable, f"Vault at {self.address} answered {response.status_code} to "
                                              f"{method.upper()} {path}, a redirect to {target[:100]!r}: not "
                                              "followed (the token would go along); set $VAULT_ADDR to the "
                                              "address that answers itself")

    def _adapter_without_token(self) -> RawAdapter:
        if getattr(self._local, "anonymous", None) is None:
            self._check_address()
            return self._new_adapter("anonymous", None)
        return self._local.anonymous  # type: ignore[no-any-return]

    def error_for(self, method: str, path: str, reply: Reply) -> BackendError:
        """The error for a reply the caller allowed but cannot use after all."""
        return self._error(method, path, reply.status, reply.body)

    # -- error mapping ----------------------------------------------------------------------------
    def _error(self, method: str, path: str, status: int, body: Mapping[str, Any]) -> BackendError:
        detail = server_errors(body)
        where = f"{method.upper()} {path}"
        if status == 503 and "sealed" in detail.lower():
            return self.sealed()
        if status == 501:
            return self.not_initialized()
        if status in (502, 503, 504):
            return self._fail(BackendUnavailable, f"Vault at {self.address} is unavailable ({status}"
                                                  f"{': ' + detail if detail else ''})")
        if status == 403:
            return self._forbidden(where, path)
        if status == 404 and "no handler for route" in detail:
            mount = next((m for m in sorted(self.mount_hints, key=len, reverse=True) if path.startswith(m + "/")),
                         path.split("/", 1)[0])
            return self._fail(BackendError, self.mount_message(mount))
        if status == 429:
            return self._fail(BackendUnavailable, f"Vault at {self.address} is rate-limiting requests ({where})")
        return self._fail(BackendError, f"Vault refused {where} ({status}{': ' + detail if detail else ''})")

    def mount_message(self, mount: str) -> str:
        hint = self.mount_hints.get(mount)
        text = f"the secrets engine mount {mount}/ does not exist in Vault at {self.address}"
        if self.namespace:
            text += f" (namespace {self.namespace})"
        return text + (f": enable it with `{hint}`" if hint else "")

    # the errors `VaultKeyStore.check` raises too, from what the server says without an error status
    def sealed(self) -> BackendError:
        return self._fail(BackendUnavailable, f"Vault at {self.address} is sealed: unseal it "
                                              "(`vault operator unseal` or `bao operator unseal`)")

    def not_initialized(self) -> BackendError:
        return self._fail(BackendUnavailable, f"Vault at {self.address} is not initialized (`vault operator init`)")

    def token_rejected(self) -> BackendError:
        return self._fail(BackendUnavailable, f"Vault at {self.address} rejected {self.auth.source} "
                                              "(expired, revoked or wrong): log in again and retry")

    def token_is_valid(self) -> bool:
        """Whether Vault accepts the token at all (a 403 is then a policy matter, not a bad token)."""
        reply = self.call("GET", "auth/token/lookup-self", allow=(400, 401, 403))
        return reply.ok

    def _forbidden(self, where: str, path: str) -> BackendError:
        try:
            valid = self.token_is_valid()
        except BackendError:
            valid = True  # cannot tell; say what we know
        if not valid:
            return self.token_rejected()
        return self._fail(BackendError, f"permission denied: {where}: the token's policies do not allow it "
                                        "(grant the policy in pki-apply.hcl shipped with pkiascode_vault)")

