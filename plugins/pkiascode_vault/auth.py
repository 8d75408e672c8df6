"""How a Vault store logs in: the ``auth`` table of ``[backend.NAME]``. Secrets only from the
environment or from files, never from pki.toml.

```toml
auth = { method = "token" }        # the default: $VAULT_TOKEN, then ~/.vault-token (vault/bao login, Vault Agent)
auth = { method = "approle", role_id_env = "VAULT_ROLE_ID", secret_id_env = "VAULT_SECRET_ID" }
auth = { method = "jwt", role = "pki-apply", jwt_env = "CI_JOB_JWT" }    # GitHub Actions / GitLab CI OIDC
auth = { method = "kubernetes", role = "pki-apply" }  # token_file: the pod's service account token
```

``approle``, ``jwt`` and ``kubernetes`` take ``mount``, the path their auth method is enabled at
(default: the method's name). The login happens once per store, when it first talks to Vault; the
token it returns stays in memory.

This module parses and checks the table without I/O (`parse_auth`, `auth_problems`); `Auth.token`
reads the secrets and logs in.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import re
import stat
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from pkiascode.errors import BackendError, BackendUnavailable

__all__ = ["Auth", "parse_auth", "auth_problems", "TOKEN_ENV", "K8S_TOKEN_FILE"]

TOKEN_ENV = "VAULT_TOKEN"
K8S_TOKEN_FILE = "/var/run/secrets/kubernetes.io/serviceaccount/token"

_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_SEGMENT = re.compile(r"[A-Za-z0-9._-]+")
_ROLE = re.compile(r"[A-Za-z0-9._@-]{1,128}")
_MAX_SECRET_FILE = 64 * 1024

#: per method: its keys, and which are required
_METHODS: dict[str, tuple[frozenset[str], frozenset[str]]] = {
    "token": (frozenset({"method"}), frozenset()),
    "approle": (frozenset({"method", "mount", "role_id_env", "secret_id_env"}),
                frozenset({"role_id_env", "secret_id_env"})),
    "jwt": (frozenset({"method", "mount", "role", "jwt_env"}), frozenset({"role", "jwt_env"})),
    "kubernetes": (frozenset({"method", "mount", "role", "token_file"}), frozenset({"role"})),
}


@dataclasses.dataclass(frozen=True)
class Auth:
    """A checked ``auth`` table. `token` logs in (or reads the token) and returns it."""

    method: str = "token"
    mount: str = ""
    role: str = ""
    role_id_env: str = ""
    secret_id_env: str = ""
    jwt_env: str = ""
    token_file: str = ""

    @property
    def source(self) -> str:
        """Where the token comes from, for messages ("the token in $VAULT_TOKEN")."""
        if self.method == "token":
            return f"the token in ${TOKEN_ENV}" if os.environ.get(TOKEN_ENV) else "the token in ~/.vault-token"
        return f"the token of the {self.method} login at auth/{self.mount}"

    def token(self, store: str, login: Callable[[str, dict[str, str]], str],
              remember_secret: Callable[[str], None]) -> str:
        """The token: read (``token``) or from ``login(path, body)`` with the method's secrets.

        ``remember_secret`` is told every secret read, so that no message can ever show it."""
        if self.method == "token":
            token = os.environ.get(TOKEN_ENV) or _read_token_file(store, Path.home() / ".vault-token", missing_ok=True)
            if not token:
                raise BackendUnavailable(
                    f"backend {store}: no Vault token: set ${TOKEN_ENV}, log in (`vault login` or `bao login` "
                    "write ~/.vault-token), or configure auth = {method = ...} in the backend table "
                    "(a token is never read from pki.toml)")
            remember_secret(token)
            return token
        if self.method == "approle":
            body = {"role_id": _env(store, self.role_id_env, "the AppRole role_id"),
                    "secret_id": _env(store, self.secret_id_env, "the AppRole secret_id")}
        elif self.method == "jwt":
            body = {"role": self.role, "jwt": _env(store, self.jwt_env, "the JWT (your CI's OIDC token)")}
        else:
            body = {"role": self.role, "jwt": _read_token_file(store, Path(self.token_file), missing_ok=False)}
        for key in ("role_id", "secret_id", "jwt"):
            if key in body:
                remember_secret(body[key])
        return login(f"auth/{self.mount}/login", body)


def parse_auth(value: Any) -> Auth:
    """The `Auth` of a checked table (`auth_problems` returned nothing); ``None`` is the default."""
    if not value:
        return Auth()
    method = value.get("method", "token")
    if method == "token":
        return Auth()
    return Auth(method=method, mount=str(value.get("mount") or method).strip("/"), role=value.get("role", ""),
                role_id_env=value.get("role_id_env", ""), secret_id_env=value.get("secret_id_env", ""),
                jwt_env=value.get("jwt_env", ""),
                token_file=value.get("token_file", K8S_TOKEN_FILE if method == "kubernetes" else ""))


def auth_problems(value: Any) -> list[str]:
    """What is wrong with an ``auth`` table, one message each, naming the key. No I/O."""
    if value is None:
        return []
    if not isinstance(value, Mapping):
        return ['must be a table such as { method = "approle", role_id_env = "...", secret_id_env = "..." }']
    method = value.get("method", "token")
    if method not in _METHODS:
        return [f"auth.method must be one of {', '.join(repr(m) for m in _METHODS)}, not {method!r}"]
    allowed, required = _METHODS[method]
    problems = []
    for key in value:
        if key not in allowed:
            close = [f"{key}_env"] if f"{key}_env" in allowed else \
                difflib.get_close_matches(str(key), sorted(allowed), n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
            if str(key).endswith(("_id", "jwt", "token", "secret", "password")):
                hint += " (a secret is never written in pki.toml: name its environment variable or file)"
            problems.append(f"auth.{key}: unknown key for method {method!r}{hint}; it takes "
                            f"{', '.join(sorted(allowed))}")
    for key in sorted(required - set(value)):
        problems.append(f"auth.{key} is required for method {method!r}")
    for key in sorted(set(value) & allowed):
        v = value[key]
        if not isinstance(v, str):
            problems.append(f"auth.{key} must be a string")
        elif key.endswith("_env") and not _ENV_NAME.fullmatch(v):
            problems.append(f"auth.{key} must name an environment variable, like VAULT_ROLE_ID")
        elif key == "mount" and not all(_SEGMENT.fullmatch(p) and p not in (".", "..") for p in v.strip("/").split("/")):
            problems.append('auth.mount must be the path the auth method is enabled at, such as "approle"')
        elif key == "role" and not _ROLE.fullmatch(v):
            problems.append("auth.role must be the name of a role of the auth method")
        elif key == "token_file" and not os.path.isabs(v):
            problems.append(f"auth.token_file must be an absolute path, such as {K8S_TOKEN_FILE}")
    return problems


def _env(store: str, name: str, what: str) -> str:
    value = os.environ.get(name, "").strip()
    if not value:
        raise BackendUnavailable(f"backend {store}: set ${name} to {what} for the Vault login")
    return value


def _read_token_file(store: str, path: Path, *, missing_ok: bool) -> str:
    """A token or JWT from a file: a regular file, small, read whole, surrounding whitespace dropped."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        if missing_ok:
            return ""
        raise BackendUnavailable(f"backend {store}: the token file {path} does not exist") from None
    except OSError as error:
        raise BackendUnavailable(f"backend {store}: cannot read the token file {path} "
                                 f"({error.strerror or 'error'})") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode) or info.st_size > _MAX_SECRET_FILE:
            raise BackendError(f"backend {store}: {path} is not a token file")
        data = os.read(fd, _MAX_SECRET_FILE + 1)
    finally:
        os.close(fd)
    try:
        return data.decode("ascii").strip()
    except UnicodeDecodeError:
        raise BackendError(f"backend {store}: {path} does not hold a token") from None
