"""The ``local`` backend: PKCS#8 PEM files, mode 0600, in a 0700 directory inside the repository.

```toml
[backend.files]
plugin = "local"
path = ".pki/keys"                      # relative to pki.toml, inside the repository, git-ignored
passphrase_env = "PKI_KEY_PASSPHRASE"   # optional: encrypt keys at rest with this passphrase
```

Each key is its own file named after its entry plus a random part (``node-0-3f9a1c2e.pem``), written
atomically (a temporary file, then a hard link to the final name, which never replaces a file), so a
new key never overwrites one that a committed certificate still needs. The random part is written to
the key journal before the key is made: a key a crash left unused is found and removed by the next
apply.

A key made for an entry with ``exportable = false`` (every authority's, unless its entry says
otherwise) is named ``<entry>-<random>.noexport.pem``: `pki export` refuses it. The file is still a
file on this disk, so the key can move to a store that really keeps it inside (``move_key`` to
Vault Transit or an HSM, through `LocalKeyStore.release`).

Every name that becomes a path (a key reference from the inventory, a request from the key journal)
must have exactly that shape, and every file is opened relative to the key directory without
following symbolic links. The key directory must lie inside the directory of pki.toml: a `path`
outside it is refused before anything there is created, changed or removed, and so is one that passes
through the directory of another pki.toml (a PKI nested in this one keeps its own keys). A key
reference is a bare file name in that directory, so no reference reaches another directory.
"""

from __future__ import annotations

import os
import re
import secrets
import stat
import threading
import time
from collections.abc import Iterable, Mapping
from pathlib import Path, PurePosixPath
from typing import Any

from pkiascode.backend import ENTRY_NAME, KeyRef, KeyRequest, KeyStore, Option
from pkiascode.errors import BackendError, BackendUnavailable, KeyNotExportable, KeyNotFound
from pkiascode.hookspecs import hookimpl
from pkiascode.keytypes import generate_private_key

__all__ = ["LocalKeyStore", "key_file_name"]

_SUFFIX = re.compile(r"[0-9a-f]{8}")
_NOEXPORT = ".noexport"
# <entry>-<8 hex>[.noexport].pem: the only names this store reads, writes or deletes
_FILE = re.compile(rf"(?P<name>{ENTRY_NAME.pattern})-(?P<suffix>{_SUFFIX.pattern})(?P<sealed>{re.escape(_NOEXPORT)})?\.pem")
_MAX_KEY_FILE = 64 * 1024  # an RSA-4096 PKCS#8 PEM is about 3.3 KiB


def key_file_name(name: str, suffix: str, *, exportable: bool) -> str:
    """The file a key for entry ``name`` with the random part ``suffix`` is kept in."""
    return f"{name}-{suffix}{'' if exportable else _NOEXPORT}.pem"


class LocalKeyStore(KeyStore):
    plugin = "local"
    fork_safe = True  # files, and keys in memory
    holds_non_exportable = True  # kept from `pki export`; see releases_non_exportable
    releases_non_exportable = True  # a file on disk can always move into Transit or an HSM
    options = {
        "path": Option(str, ".pki/keys", "directory for key files, relative to pki.toml and inside it"),
        "passphrase_env": Option(str, None, "environment variable holding a passphrase to encrypt keys"),
    }

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._rel = PurePosixPath(str(self.settings.get("path") or ".pki/keys"))
        self._base = self.context.base_dir.resolve()
        self.path = self._base / self._rel  # checked to stay inside, without following links, on first use
        self._dir_fd: int | None = None  # the key directory once ready, open: every file is relative to it
        self._mkdir_lock = threading.Lock()
        self._keys: dict[str, Any] = {}  # id -> key, for keys this process wrote or read

    @classmethod
    def validate(cls, settings: Mapping[str, Any]) -> list[tuple[str, str]]:
        path = settings.get("path")
        if not isinstance(path, str):
            return []
        if not path.strip():
            return [("path", "must not be empty")]
        if _outside(path):
            return [("path", f"{path!r} is outside the repository: key files live in a directory below "
                             "pki.toml (default \".pki/keys\"), which must be git-ignored")]
        if not _below(path):
            return [("path", f"{path!r} is the directory of pki.toml: key files live in a directory below it "
                             "(default \".pki/keys\"), which must be git-ignored")]
        return []

    def local_key_dirs(self) -> list[Path]:
        return [self.path]

    # -- helpers ------------------------------------------------------------------------------
    def _err(self, cls: type[BackendError], text: str) -> BackendError:
        return cls(f"backend {self.name}: {text}")

    def _passphrase(self) -> bytes | None:
        env = self.settings.get("passphrase_env")
        if not env:
            return None
        value = os.environ.get(env)
        if not value:
            raise BackendUnavailable(f"backend {self.name}: keys are encrypted; set ${env} to their passphrase")
        return value.encode()

    def _dir(self) -> int:
        """The key directory, open; made (0700) if missing, walked from pki.toml's directory one
        component at a time without following a symbolic link."""
        if self._dir_fd is not None:
            return self._dir_fd
        with self._mkdir_lock:
            if self._dir_fd is not None:  # another thread got here first (and may be writing a .tmp already)
                return self._dir_fd
            if _outside(str(self._rel)) or not _below(str(self._rel)):
                raise self._err(BackendError, f"path {str(self._rel)!r} is not below pki.toml's directory; key "
                                              "files must live in a directory below it")
            fd = os.open(self._base, os.O_RDONLY | os.O_DIRECTORY)
            try:
                for part in self._rel.parts:
                    if part == ".":
                        continue
                    try:
                        os.mkdir(part, 0o700, dir_fd=fd)
                        made = True
                    except FileExistsError:
                        made = False
                    try:
                        child = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)
                    except OSError:
                        raise self._err(BackendUnavailable, f"key directory {self.path}: {part!r} is not a "
                                                            "directory (a symbolic link is never followed)") from None
                    os.close(fd)
                    fd = child
                    if made:
                        os.fchmod(fd, 0o700)  # whatever the umask
                    elif _has_pki_toml(fd):  # a nested PKI's directory: its keys are not ours to touch
                        raise self._err(BackendUnavailable, f"key directory {self.path}: {part!r} holds another "
                                                            "PKI's pki.toml; key files live in a directory of this "
                                                            "PKI's own (default \".pki/keys\")")
                info = os.fstat(fd)
                if info.st_uid != os.geteuid():
                    raise self._err(BackendUnavailable, f"key directory {self.path} belongs to another user")
                if stat.S_IMODE(info.st_mode) != 0o700:
                    os.fchmod(fd, 0o700)
                # left by a process killed mid-write; a fresh one may be another process's write in flight
                cutoff = time.time() - 300
                for entry in os.listdir(fd):
                    if entry.startswith(".") and entry.endswith(".pem.tmp") and _FILE.fullmatch(entry[1:-4]):
                        try:
                            if os.stat(entry, dir_fd=fd, follow_symlinks=False).st_mtime < cutoff:
                                os.unlink(entry, dir_fd=fd)
                        except FileNotFoundError:
                            pass
            except BaseException:
                os.close(fd)
                raise
            self._dir_fd = fd
            return fd

    def _file_name(self, ref: KeyRef) -> str:
        """``ref.id`` if it is a name this store makes; anything else (``../x``, ``/etc``) is refused."""
        if not _FILE.fullmatch(ref.id):
            raise self._err(BackendError, f"invalid key reference {ref.id!r} (expected NAME-XXXXXXXX.pem)")
        return ref.id

    def _request_names(self, request: KeyRequest) -> tuple[str, str]:
        """(name, suffix) of a request, checked: they come from pki.toml or from the key journal."""
        suffix = request.suffix or secrets.token_hex(4)
        if not ENTRY_NAME.fullmatch(request.name) or not _SUFFIX.fullmatch(suffix):
            raise self._err(BackendError, f"invalid key request {request.name!r}/{suffix!r}")
        return request.name, suffix

    def _write(self, request: KeyRequest, key: Any) -> KeyRef:
        from cryptography.hazmat.primitives import serialization

        name, suffix = self._request_names(request)
        folder = self._dir()
        passphrase = self._passphrase()
        encryption = (serialization.BestAvailableEncryption(passphrase) if passphrase
                      else serialization.NoEncryption())
        data = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption)
        tmp = f".{key_file_name(name, suffix, exportable=request.exportable)}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600, dir_fd=folder)
        try:
            os.fchmod(fd, 0o600)  # whatever the umask
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            while True:  # published whole, under a name no other key has: link() never replaces
                file_name = key_file_name(name, suffix, exportable=request.exportable)
                try:
                    os.link(tmp, file_name, src_dir_fd=folder, dst_dir_fd=folder, follow_symlinks=False)
                    break
                except FileExistsError:
                    suffix = secrets.token_hex(4)
        finally:
            os.unlink(tmp, dir_fd=folder)
        self._keys[file_name] = key
        return KeyRef(self.name, file_name)

    def _read(self, ref: KeyRef) -> Any:
        from cryptography.hazmat.primitives import serialization

        file_name = self._file_name(ref)
        shown = self.path / file_name
        cached = self._keys.get(file_name)
        if cached is not None and self._exists(file_name):
            return cached
        try:
            fd = os.open(file_name, os.O_RDONLY | os.O_NOFOLLOW, dir_fd=self._dir())
        except FileNotFoundError:
            raise self._err(KeyNotFound, f"key file {shown} is missing") from None
        except PermissionError:
            raise self._err(BackendUnavailable, f"cannot read {shown}: permission denied") from None
        except OSError:  # ELOOP: a symbolic link where a key file should be
            raise self._err(BackendError, f"{shown} is not a regular file (a symbolic link is never followed)") \
                from None
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode) or info.st_size > _MAX_KEY_FILE:
                raise self._err(BackendError, f"{shown} is not a key file of this store")
            data = os.read(fd, _MAX_KEY_FILE + 1)
        finally:
            os.close(fd)
        try:
            # our own 0600 files: the RSA consistency check (tens of ms per key) buys nothing here
            key = serialization.load_pem_private_key(data, password=self._passphrase() if b"ENCRYPTED" in data
                                                     else None, unsafe_skip_rsa_key_validation=True)
        except (ValueError, TypeError):
            raise self._err(BackendError, f"cannot decrypt or parse key file {shown} (wrong passphrase?)") from None
        self._keys[file_name] = key
        return key

    def _made(self) -> bool:
        """Whether the key directory exists (asking is no reason to make it)."""
        return self._dir_fd is not None or os.path.lexists(self.path)

    def _present(self) -> set[str]:
        return set(os.listdir(self._dir())) if self._made() else set()

    def _exists(self, file_name: str) -> bool:
        try:
            return stat.S_ISREG(os.stat(file_name, dir_fd=self._dir(), follow_symlinks=False).st_mode)
        except FileNotFoundError:
            return False

    # -- KeyStore -------------------------------------------------------------------------------
    def generate(self, request: KeyRequest) -> KeyRef:
        self._request_names(request)
        return self._write(request, generate_private_key(request.key_type))

    def import_key(self, request: KeyRequest, key: Any) -> KeyRef:
        ref = self._write(request, key)
        return KeyRef(ref.store, ref.id, "imported")

    def signer(self, ref: KeyRef) -> Any:
        return self._read(ref)

    def public_key(self, ref: KeyRef) -> Any:
        cached = self._keys.get(ref.id)  # a public key stays valid if its file went meanwhile
        return (cached if cached is not None else self._read(ref)).public_key()

    def is_exportable(self, ref: KeyRef) -> bool:
        m = _FILE.fullmatch(ref.id)
        return bool(m) and not m.group("sealed")  # type: ignore[union-attr]

    def export(self, ref: KeyRef) -> Any:
        self._file_name(ref)
        if not self.is_exportable(ref):
            raise self._err(KeyNotExportable, f"key {ref.id} was made for an entry with exportable = false and "
                                              "is not exported (pki export --no-key writes the certificate alone)")
        return self._read(ref)

    def release(self, ref: KeyRef) -> Any:
        return self._read(ref)

    def missing(self, refs: Iterable[KeyRef]) -> set[KeyRef]:
        present = self._present()
        return {ref for ref in refs if not _FILE.fullmatch(ref.id) or ref.id not in present}

    def list_keys(self) -> list[KeyRef]:
        return [KeyRef(self.name, f) for f in sorted(self._present()) if _FILE.fullmatch(f)]

    def discard(self, request: KeyRequest) -> None:
        if not request.suffix:
            return
        name, suffix = self._request_names(request)
        if not self._made():
            return
        for exportable in (True, False):
            file_name = key_file_name(name, suffix, exportable=exportable)
            for entry in (file_name, f".{file_name}.tmp"):
                try:
                    os.unlink(entry, dir_fd=self._dir())
                except FileNotFoundError:
                    pass
            self._keys.pop(file_name, None)

    def close(self) -> None:
        if self._dir_fd is not None:
            os.close(self._dir_fd)
            self._dir_fd = None

    def delete(self, ref: KeyRef) -> None:
        file_name = self._file_name(ref)
        self._keys.pop(file_name, None)
        if not self._made():
            return
        try:
            os.unlink(file_name, dir_fd=self._dir())  # unlink never follows a link: it removes the name
        except FileNotFoundError:
            pass


def _has_pki_toml(dir_fd: int) -> bool:
    try:
        os.stat("pki.toml", dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return False
    except OSError:
        return True  # unreadable: assume the worst
    return True


def _outside(path: str) -> bool:
    """Whether ``path`` (from pki.toml) could lead outside the directory of pki.toml."""
    pure = PurePosixPath(path)
    return pure.is_absolute() or path.startswith("~") or ".." in pure.parts


def _below(path: str) -> bool:
    """Whether ``path`` names a directory below pki.toml's (not that directory itself)."""
    return any(part != "." for part in PurePosixPath(path).parts)


@hookimpl
def pki_register_backends(register: Any) -> None:
    register("local", LocalKeyStore)
