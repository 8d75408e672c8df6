"""One exception tree for everything pkiascode reports to a user.

Every error carries a message that is complete on one line and safe to print: no key material, no
PIN, no token. The CLI turns any `PkiError` into that line on stderr and exit code 1; anything else
is a bug and shows its traceback only with ``--debug``.

A message quotes what files hold (names, paths, values of pki.toml, a CSR's subject): ``str()`` of
every `PkiError` passes through `printable`, so no control character from a file reaches a
terminal raw.
"""

from __future__ import annotations

import re

__all__ = [
    "printable",
    "PkiError",
    "ConfigError",
    "ConfigIssue",
    "PlanError",
    "BackendError",
    "BackendUnavailable",
    "KeyNotFound",
    "KeyNotExportable",
    "UnsupportedKeyType",
    "StateError",
    "StalePlanError",
    "LockError",
    "GitError",
    "SigningError",
]


#: C0 and C1 controls and DEL (ESC, CR, LF among them), and the Unicode marks that reorder text or
#: break lines on a terminal: bidirectional overrides and isolates, line and paragraph separators
CONTROL_RE = re.compile("[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028-\u202e\u2066-\u2069]")


def _escape(m: re.Match[str]) -> str:
    code = ord(m.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def printable(text: str) -> str:
    """``text`` with every control character written as an escape (``\\x1b``, ``\\u202e``): one line,
    shown as it is, whatever a file put into it."""
    return CONTROL_RE.sub(_escape, text)


class PkiError(Exception):
    """Base of every error pkiascode reports as a one-line message with exit code 1."""

    def __str__(self) -> str:
        return printable(super().__str__())


class ConfigIssue(PkiError):
    """One mistake in pki.toml, before its line is known.

    ``path`` is where it is, as TOML keys (``("certificate", "node-0", "hosts")``); the loader turns
    it into a `ConfigError` with the line number, found only when there is an error.
    """

    def __init__(self, path: tuple[str, ...], message: str) -> None:
        super().__init__(message)
        self.path = path
        self.message = message


class ConfigError(PkiError):
    """pki.toml is wrong: ``pki.toml:LINE: <where>: <what>``."""

    def __init__(self, file: str, line: int | None, where: str, message: str) -> None:
        self.file = file
        self.line = line
        self.where = where
        self.message = message
        loc = f"{file}:{line}" if line else file
        super().__init__(f"{loc}: {where}: {message}" if where else f"{loc}: {message}")


def first_of(errors: list[ConfigError]) -> ConfigError:
    """The error to raise for several mistakes: the first, saying how many more there are; all of
    them in its ``all_errors`` (for ``pki validate``)."""
    first = errors[0]
    if len(errors) > 1:
        first = ConfigError(first.file, first.line, first.where,
                            f"{first.message} (and {len(errors) - 1} more; `pki validate` lists them all)")
    first.all_errors = errors  # type: ignore[attr-defined]
    return first


class PlanError(PkiError):
    """The desired PKI cannot be reached from the current state (e.g. moving a non-exportable key)."""


class BackendError(PkiError):
    """A key store failed or refused. The message names the backend and says what to do."""


class BackendUnavailable(BackendError):
    """The key store cannot be reached or used at all (server down, sealed, wrong PIN, no module)."""


class KeyNotFound(BackendError):
    """The key a reference names does not exist in its store."""


class KeyNotExportable(BackendError):
    """The key never leaves its store (Vault Transit, an HSM)."""


class UnsupportedKeyType(BackendError):
    """The store cannot hold or make this key type (e.g. Ed25519 on a token without it)."""


class SigningError(BackendError):
    """A signature made outside the process did not verify against the key's public key."""


class StateError(PkiError):
    """``state/`` is damaged or disagrees with itself (tampered inventory, broken audit chain)."""


class StalePlanError(PkiError):
    """A saved plan no longer matches pki.toml or state."""


class LockError(PkiError):
    """Another apply holds the lock."""


class GitError(PkiError):
    """Committing state to git failed or was refused."""
