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
import unicodedata

__all__ = [
    "printable",
    "control_character",
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


#: C0 and C1 controls and DEL: ESC, CR, LF, TAB, NUL among them
_C0_C1 = re.compile("[\x00-\x1f\x7f-\x9f]")
#: Unicode categories of what a terminal or a reviewer's screen does not show as itself: controls,
#: format characters (bidirectional overrides and isolates, zero-width spaces and joiners, soft
#: hyphens, tags), surrogates, line and paragraph separators
_UNSEEN = frozenset(("Cc", "Cf", "Cs", "Zl", "Zp"))


def control_character(text: str) -> str | None:
    """The first character of ``text`` that is a control or an invisible mark, or None. Names,
    subjects, hosts and paths may hold none: they reach terminals, certificates and file names."""
    m = _C0_C1.search(text)
    if m:
        return m.group()
    if not text.isascii():
        for ch in text:
            if unicodedata.category(ch) in _UNSEEN:
                return ch
    return None


def _escape(ch: str) -> str:
    code = ord(ch)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"


def printable(text: str) -> str:
    """``text`` with every character `control_character` would find written as an escape
    (``\\x1b``, ``\\u202e``): one line, shown as it is, whatever a file put into it."""
    if text.isascii():
        return _C0_C1.sub(lambda m: _escape(m.group()), text)
    return "".join(_escape(ch) if unicodedata.category(ch) in _UNSEEN else ch for ch in text)


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
