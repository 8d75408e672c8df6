"""Helpers for the end-to-end lifecycle, import and CSR tests (test_e2e_*.py).

Plain functions and one small class, no fixtures and no conftest: every test makes its own git
repository in ``tmp_path`` with `new_repo` and drives the real ``pki`` console script in a
subprocess, then checks the outcome with the real ``openssl`` CLI (and Python's ``ssl`` for TLS
handshakes). ``tests/`` is on ``sys.path`` under pytest's default ``prepend`` import mode, which is
how the test modules import this one.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import socket
import ssl
import subprocess
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

__all__ = [
    "PKI_BIN", "Repo", "Result", "new_repo", "clean_env", "require_tool", "openssl", "openssl_ok",
    "load_cert", "load_crl", "crl_serials", "crl_reason_of", "ski", "aki", "spki_der",
    "tls_handshake", "TlsOutcome", "tree_snapshot", "BASE_PKI", "concat",
]

_VENV_PKI = Path(sys.executable).with_name("pki")
#: the console script under test (the venv's), or ``python -m pkiascode`` when it is not installed
PKI_BIN: list[str] = [str(_VENV_PKI)] if _VENV_PKI.exists() else [sys.executable, "-m", "pkiascode"]

#: root → inter (with CRL URLs) → server + client, all ECDSA P-256: the usual starting point
BASE_PKI = """\
# The desired PKI for the lifecycle tests.
[defaults]
key = "ecdsa-p256"
validity = "365d"
subject = { O = "Lifecycle Test" }

[authority.root]
common_name = "Lifecycle Root CA"
validity = "10y"
crl_url = "http://crl.example.test/root.crl"

[authority.inter]
issuer = "root"
common_name = "Lifecycle Intermediate CA"
validity = "5y"
crl_url = "http://crl.example.test/inter.crl"

[certificate.server]
issuer = "inter"
common_name = "server.example.test"
hosts = ["server.example.test", "localhost", "127.0.0.1"]
usages = ["digital signature", "server auth"]

[certificate.client]
issuer = "inter"
common_name = "client"
usages = ["digital signature", "client auth"]

[certificate.other]
issuer = "inter"
common_name = "other"
usages = ["digital signature", "client auth"]
"""


def clean_env() -> dict[str, str]:
    """The environment for every subprocess: a fixed git identity, no user or system git config."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GIT_", "PKI_"))}
    env.update({
        "GIT_AUTHOR_NAME": "E2E Test", "GIT_AUTHOR_EMAIL": "e2e@example.test",
        "GIT_COMMITTER_NAME": "E2E Test", "GIT_COMMITTER_EMAIL": "e2e@example.test",
        "GIT_CONFIG_NOSYSTEM": "1", "GIT_CONFIG_GLOBAL": os.devnull, "NO_COLOR": "1", "LC_ALL": "C",
    })
    return env


def require_tool(name: str) -> str:
    """The tool's path; skip without it on a laptop, fail in CI (``$CI`` set) so CI cannot go green
    by running nothing."""
    path = shutil.which(name)
    if path is None:
        msg = f"{name} is not installed"
        if os.environ.get("CI"):
            pytest.fail(f"{msg}, and $CI is set: the end-to-end tests must run in CI")
        pytest.skip(msg)
    return path


class Result:
    def __init__(self, args: Sequence[str], proc: subprocess.CompletedProcess[str]) -> None:
        self.args = list(args)
        self.returncode = proc.returncode
        self.stdout = proc.stdout
        self.stderr = proc.stderr

    def __repr__(self) -> str:
        return (f"$ {' '.join(self.args)}\n[exit {self.returncode}]\n--- stdout ---\n{self.stdout}"
                f"--- stderr ---\n{self.stderr}")

    def json(self) -> Any:
        return json.loads(self.stdout)


def _run(args: Sequence[str], *, cwd: Path, env: dict[str, str], input: str | None = None,
         timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(args), cwd=cwd, env=env, input=input, capture_output=True, text=True,
                          timeout=timeout)


def openssl(*args: str | Path, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """Run openssl; the caller checks the exit code (some tests expect failure)."""
    return subprocess.run(["openssl", *map(str, args)], cwd=cwd, env=clean_env(), capture_output=True,
                          text=True, timeout=60)


def openssl_ok(*args: str | Path, cwd: Path | None = None) -> str:
    """Run openssl, assert success, return stdout + stderr."""
    p = openssl(*args, cwd=cwd)
    assert p.returncode == 0, f"openssl {' '.join(map(str, args))} failed:\n{p.stdout}{p.stderr}"
    return p.stdout + p.stderr


class Repo:
    """A git repository holding one pki.toml, and the ``pki`` command run inside it."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.env = clean_env()

    # -- running -----------------------------------------------------------------------------
    def pki(self, *args: str, expect: int | None = 0, input: str | None = None) -> Result:
        argv = [*PKI_BIN, *args]
        r = Result(["pki", *args], _run(argv, cwd=self.path, env=self.env, input=input))
        if expect is not None:
            assert r.returncode == expect, f"expected exit {expect}:\n{r!r}"
        if r.returncode != 0:
            assert "Traceback" not in r.stderr, f"a traceback escaped the CLI:\n{r!r}"
        return r

    def apply(self, *args: str, expect: int | None = 0) -> Result:
        return self.pki("apply", "--auto-approve", *args, expect=expect)

    def plan_json(self, *args: str) -> dict[str, Any]:
        r = self.pki("plan", "--format", "json", *args)
        return r.json()

    def git(self, *args: str) -> str:
        p = _run(["git", *args], cwd=self.path, env=self.env)
        assert p.returncode == 0, f"git {' '.join(args)} failed: {p.stderr}"
        return p.stdout

    # -- pki.toml ----------------------------------------------------------------------------
    @property
    def toml_path(self) -> Path:
        return self.path / "pki.toml"

    def read_toml(self) -> str:
        return self.toml_path.read_text(encoding="utf-8")

    def write_toml(self, text: str) -> None:
        self.toml_path.write_text(text, encoding="utf-8")

    def edit_toml(self, old: str, new: str, count: int = 1) -> None:
        text = self.read_toml()
        assert text.count(old) >= 1, f"{old!r} not in pki.toml:\n{text}"
        self.write_toml(text.replace(old, new, count))

    def remove_table(self, header: str) -> None:
        """Delete ``[header]`` and its keys (up to the next table or the end)."""
        text = self.read_toml()
        start = text.index(f"[{header}]")
        nxt = re.search(r"^\[", text[start + 1:], flags=re.M)
        end = start + 1 + nxt.start() if nxt else len(text)
        self.write_toml(text[:start] + text[end:])

    def line_of(self, needle: str, after: str | None = None) -> int:
        """1-based line number of the first line containing ``needle`` (after the line holding
        ``after``, if given)."""
        lines = self.read_toml().splitlines()
        begin = 0
        if after is not None:
            begin = next(i for i, line in enumerate(lines) if after in line) + 1
        for i in range(begin, len(lines)):
            if needle in lines[i]:
                return i + 1
        raise AssertionError(f"{needle!r} not in pki.toml")

    # -- state -------------------------------------------------------------------------------
    @property
    def state(self) -> Path:
        return self.path / "state"

    def cert_path(self, name: str) -> Path:
        return self.state / "certs" / f"{name}.pem"

    def crl_path(self, name: str) -> Path:
        return self.state / "crl" / f"{name}.crl"

    def cert(self, name: str) -> x509.Certificate:
        return load_cert(self.cert_path(name))

    def crl(self, name: str) -> x509.CertificateRevocationList:
        return load_crl(self.crl_path(name))

    def inventory(self) -> dict[str, Any]:
        return json.loads((self.state / "inventory.json").read_text())

    def record(self, name: str) -> dict[str, Any]:
        return self.inventory()["objects"][name]

    def key_file(self, name: str) -> Path:
        """The local key file of ``name`` per the inventory (the default store at .pki/keys)."""
        return self.path / ".pki" / "keys" / self.record(name)["key"]["ref"]

    def key_files(self) -> set[str]:
        keys = self.path / ".pki" / "keys"
        return {p.name for p in keys.iterdir()} if keys.exists() else set()

    def audit(self) -> list[dict[str, Any]]:
        path = self.state / "audit.jsonl"
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]

    def chain_file(self, *names: str) -> Path:
        """A PEM file with the certificates of ``names`` concatenated (e.g. an issuer chain)."""
        out = self.path.parent / f"chain-{'-'.join(names)}.pem"
        out.write_bytes(b"".join(self.cert_path(n).read_bytes() for n in names))
        return out

    def crl_file(self, *names: str) -> Path:
        out = self.path.parent / f"crls-{'-'.join(names)}.pem"
        out.write_bytes(b"".join(self.crl_path(n).read_bytes() for n in names))
        return out

    def head(self) -> str:
        return self.git("rev-parse", "HEAD").strip()


def new_repo(tmp_path: Path, toml: str | None = BASE_PKI, *, name: str = "repo") -> Repo:
    """A fresh git repository with .pki/ git-ignored and (unless None) the given pki.toml, committed."""
    path = tmp_path / name
    path.mkdir(parents=True)
    repo = Repo(path)
    repo.git("init", "-q", "-b", "main")
    (path / ".gitignore").write_text("# pkiascode: local key store, never commit\n.pki/\n")
    if toml is not None:
        repo.write_toml(toml)
    repo.git("add", "-A")
    repo.git("commit", "-q", "-m", "initial pki.toml")
    return repo


def concat(out: Path, *parts: Path) -> Path:
    out.write_bytes(b"".join(p.read_bytes() for p in parts))
    return out


# -- X.509 readers (assertions only; the checks that matter run through openssl) ------------------

def load_cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(Path(path).read_bytes())


def load_crl(path: Path) -> x509.CertificateRevocationList:
    return x509.load_pem_x509_crl(Path(path).read_bytes())


def crl_serials(crl: x509.CertificateRevocationList) -> set[int]:
    return {r.serial_number for r in crl}


def crl_reason_of(crl: x509.CertificateRevocationList, serial: int) -> x509.ReasonFlags | None:
    entry = crl.get_revoked_certificate_by_serial_number(serial)
    assert entry is not None, f"serial {serial:x} is not on the CRL"
    try:
        return entry.extensions.get_extension_for_class(x509.CRLReason).value.reason
    except x509.ExtensionNotFound:
        return None


def ski(cert: x509.Certificate) -> bytes:
    return cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest


def aki(obj: x509.Certificate | x509.CertificateRevocationList) -> bytes | None:
    return obj.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value.key_identifier


def spki_der(obj: Any) -> bytes:
    """DER SubjectPublicKeyInfo of a certificate, CSR, public or private key."""
    key = obj.public_key() if hasattr(obj, "public_key") else obj
    return key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def tree_snapshot(root: Path) -> dict[str, bytes]:
    """Every file under ``root`` (relative path → bytes); {} when it does not exist."""
    if not root.exists():
        return {}
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


# -- TLS ------------------------------------------------------------------------------------------

class TlsOutcome:
    def __init__(self) -> None:
        self.server_error: BaseException | None = None
        self.client_error: BaseException | None = None
        self.server_got: bytes = b""
        self.client_got: bytes = b""
        self.peer_cert_subject: Any = None

    @property
    def ok(self) -> bool:
        return self.server_error is None and self.client_error is None and self.client_got == b"pong"

    def __repr__(self) -> str:
        return f"TlsOutcome(server_error={self.server_error!r}, client_error={self.client_error!r})"


def tls_handshake(*, server_cert: Path, server_key: Path, client_cafile: Path, server_hostname: str,
                  client_cert: Path | None = None, client_key: Path | None = None,
                  server_cafile: Path | None = None, crl_check_leaf: bool = False) -> TlsOutcome:
    """One TLS connection over a socket pair between a Python ``ssl`` server and client.

    ``server_cafile`` (with any CRLs in it) makes the server require a client certificate;
    ``crl_check_leaf`` sets ``VERIFY_CRL_CHECK_LEAF`` on it. The client always verifies the server
    against ``client_cafile`` and ``server_hostname``.
    """
    out = TlsOutcome()
    sctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    sctx.load_cert_chain(str(server_cert), str(server_key))
    if server_cafile is not None:
        sctx.verify_mode = ssl.CERT_REQUIRED
        sctx.load_verify_locations(cafile=str(server_cafile))
        if crl_check_leaf:
            sctx.verify_flags |= ssl.VERIFY_CRL_CHECK_LEAF
    cctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    cctx.load_verify_locations(cafile=str(client_cafile))
    if client_cert is not None:
        cctx.load_cert_chain(str(client_cert), str(client_key) if client_key else None)

    a, b = socket.socketpair()
    a.settimeout(10)
    b.settimeout(10)

    def serve() -> None:
        try:
            with sctx.wrap_socket(a, server_side=True) as s:
                out.server_got = s.recv(4)
                if server_cafile is not None:
                    out.peer_cert_subject = s.getpeercert().get("subject")
                s.sendall(b"pong")
        except BaseException as e:  # noqa: BLE001 - reported to the test
            out.server_error = e
            with contextlib.suppress(OSError):
                a.close()

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    try:
        with cctx.wrap_socket(b, server_hostname=server_hostname) as c:
            c.sendall(b"ping")
            out.client_got = c.recv(4)
            if out.client_got != b"pong":
                raise ConnectionError(f"server closed the connection (got {out.client_got!r})")
    except BaseException as e:  # noqa: BLE001 - reported to the test
        out.client_error = e
    finally:
        t.join(15)
        with contextlib.suppress(OSError):
            b.close()
    return out
