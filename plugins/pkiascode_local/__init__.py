"""The ``local`` backend: PKCS#8 PEM files, mode 0600, in a 0700 directory under the repository.

```toml
[backend.files]
plugin = "local"
path = ".pki/keys"                      # must be git-ignored; apply refuses otherwise
passphrase_env = "PKI_KEY_PASSPHRASE"   # optional: encrypt keys at rest with this passphrase
```

Each key is its own file named after its entry plus a random part (``node-0-3f9a1c2e.pem``), written
atomically (a temporary file, then a hard link to the final name, which never replaces a file), so a
new key never overwrites one that a committed certificate still needs. The random part is written to
the key journal before the key is made: a key a crash left unused is found and removed by the next
apply.
"""

from __future__ import annotations

import os
import secrets
import threading
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from pkiascode.backend import KeyRef, KeyRequest, KeyStore, Option
from pkiascode.errors import BackendError, BackendUnavailable, KeyNotFound
from pkiascode.hookspecs import hookimpl
from pkiascode.keytypes import generate_private_key

__all__ = ["LocalKeyStore"]


class LocalKeyStore(KeyStore):
    plugin = "local"
    fork_safe = True  # files, and keys in memory
    options = {
        "path": Option(str, ".pki/keys", "directory for key files, relative to pki.toml"),
        "passphrase_env": Option(str, None, "environment variable holding a passphrase to encrypt keys"),
    }

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.path = (self.context.base_dir / (self.settings.get("path") or ".pki/keys")).resolve()
        self._dir_fd: int | None = None  # the key directory once ready, open: relative names skip a path walk
        self._mkdir_lock = threading.Lock()
        self._keys: dict[str, Any] = {}  # id -> key, for keys this process wrote or read

    @classmethod
    def validate(cls, settings: Any) -> list[tuple[str, str]]:
        path = settings.get("path")
        if isinstance(path, str) and not path.strip():
            return [("path", "must not be empty")]
        return []

    def local_key_dirs(self) -> list[Path]:
        return [self.path]

    # -- helpers ------------------------------------------------------------------------------
    def _passphrase(self) -> bytes | None:
        env = self.settings.get("passphrase_env")
        if not env:
            return None
        value = os.environ.get(env)
        if not value:
            raise BackendUnavailable(f"backend {self.name}: keys are encrypted; set ${env} to their passphrase")
        return value.encode()

    def _ensure_dir(self) -> None:
        if self._dir_fd is not None:
            return
        with self._mkdir_lock:
            if self._dir_fd is not None:  # another thread got here first (and may be writing a .tmp already)
                return
            self.path.mkdir(mode=0o700, parents=True, exist_ok=True)
            mode = self.path.stat().st_mode & 0o777
            if mode & 0o077:
                os.chmod(self.path, 0o700)
            # left by a process killed mid-write; a fresh one may be another process's write in flight
            cutoff = time.time() - 300
            for stale in self.path.glob(".*.tmp"):
                try:
                    if stale.stat().st_mtime < cutoff:
                        stale.unlink()
                except FileNotFoundError:
                    pass
            self._dir_fd = os.open(self.path, os.O_RDONLY | os.O_DIRECTORY)

    def _file(self, ref: KeyRef) -> Path:
        if "/" in ref.id or ref.id.startswith("."):
            raise BackendError(f"backend {self.name}: invalid key reference {ref.id!r}")
        return self.path / ref.id

    def _write(self, request: KeyRequest, key: Any) -> KeyRef:
        from cryptography.hazmat.primitives import serialization

        self._ensure_dir()
        passphrase = self._passphrase()
        encryption = (serialization.BestAvailableEncryption(passphrase) if passphrase
                      else serialization.NoEncryption())
        data = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption)
        suffix = request.suffix or secrets.token_hex(4)
        folder = self._dir_fd
        tmp = f".{request.name}-{suffix}.pem.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600, dir_fd=folder)
        try:
            os.write(fd, data)
        finally:
            os.close(fd)
        try:
            while True:  # published whole, under a name no other key has: link() never replaces
                file_name = f"{request.name}-{suffix}.pem"
                try:
                    os.link(tmp, file_name, src_dir_fd=folder, dst_dir_fd=folder)
                    break
                except FileExistsError:
                    suffix = secrets.token_hex(4)
        finally:
            os.unlink(tmp, dir_fd=folder)
        self._keys[file_name] = key
        return KeyRef(self.name, file_name)

    def _read(self, ref: KeyRef) -> Any:
        from cryptography.hazmat.primitives import serialization

        cached = self._keys.get(ref.id)
        if cached is not None and self._file(ref).exists():
            return cached
        try:
            data = self._file(ref).read_bytes()
        except FileNotFoundError:
            raise KeyNotFound(f"backend {self.name}: key file {self._file(ref)} is missing") from None
        except PermissionError:
            raise BackendUnavailable(f"backend {self.name}: cannot read {self._file(ref)}: permission denied") from None
        try:
            # our own 0600 files: the RSA consistency check (tens of ms per key) buys nothing here
            key = serialization.load_pem_private_key(data, password=self._passphrase() if b"ENCRYPTED" in data
                                                     else None, unsafe_skip_rsa_key_validation=True)
        except (ValueError, TypeError):
            raise BackendError(f"backend {self.name}: cannot decrypt or parse key file {self._file(ref)} "
                               "(wrong passphrase?)") from None
        self._keys[ref.id] = key
        return key

    # -- KeyStore -------------------------------------------------------------------------------
    def generate(self, request: KeyRequest) -> KeyRef:
        return self._write(request, generate_private_key(request.key_type))

    def import_key(self, request: KeyRequest, key: Any) -> KeyRef:
        ref = self._write(request, key)
        return KeyRef(ref.store, ref.id, "imported")

    def signer(self, ref: KeyRef) -> Any:
        return self._read(ref)

    def public_key(self, ref: KeyRef) -> Any:
        cached = self._keys.get(ref.id)  # a public key stays valid if its file went meanwhile
        return (cached if cached is not None else self._read(ref)).public_key()

    def export(self, ref: KeyRef) -> Any:
        return self._read(ref)

    def is_exportable(self, ref: KeyRef) -> bool:
        return True

    def missing(self, refs: Iterable[KeyRef]) -> set[KeyRef]:
        try:
            present = set(os.listdir(self.path))
        except FileNotFoundError:
            present = set()
        return {ref for ref in refs if ref.id not in present}

    def discard(self, request: KeyRequest) -> None:
        if request.suffix:
            for path in (self.path / f"{request.name}-{request.suffix}.pem",
                         self.path / f".{request.name}-{request.suffix}.pem.tmp"):
                path.unlink(missing_ok=True)
            self._keys.pop(f"{request.name}-{request.suffix}.pem", None)

    def close(self) -> None:
        if self._dir_fd is not None:
            os.close(self._dir_fd)
            self._dir_fd = None

    def delete(self, ref: KeyRef) -> None:
        self._keys.pop(ref.id, None)
        try:
            self._file(ref).unlink()
        except FileNotFoundError:
            pass


@hookimpl
def pki_register_backends(register: Any) -> None:
    register("local", LocalKeyStore)
