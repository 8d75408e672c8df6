"""The one helper module for every test that drives pkiascode from outside, as a user does: the real
``pki`` console script in a subprocess with a clean environment and a fixed git identity, git,
openssl, readers for pki.toml, state/ (inventory, audit log, certificates, CRLs) and X.509 objects,
a TLS handshake through Python's ``ssl``, and a process on a pseudo-terminal.

Plain functions and small classes; no fixtures (those are in the conftest.py files) and no pkiascode
imports, but for `run_main` and `apply_in_process`, for unit tests. ``tests/`` is on ``sys.path`` (pytest's
default ``prepend`` import mode; tests/conftest.py puts it there too), so every test module, the
vault/ and pkcs11/ ones included, does ``from helpers import ...``.
"""

from __future__ import annotations

import base64
import json
import os
import re
import select
import shutil
import socket
import ssl
import stat
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple, NoReturn

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

ROOT = Path(__file__).resolve().parent.parent
PRIVATE_KEY_MARKER = re.compile(rb"-----BEGIN [A-Z0-9 ]*PRIVATE KEY-----")


# -- running a command ---------------------------------------------------------------------------

def clean_env(**extra: str) -> dict[str, str]:
    """The environment every subprocess runs in: a fixed git identity, no user or system git
    config, no colour, a fixed actor, no Vault settings and no fault injection unless asked for."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("GIT_", "PKI_", "VAULT_", "BAO_")) and k != "NO_COLOR"}
    env.update({
        "GIT_AUTHOR_NAME": "PKI Test", "GIT_AUTHOR_EMAIL": "pki-test@example.invalid",
        "GIT_COMMITTER_NAME": "PKI Test", "GIT_COMMITTER_EMAIL": "pki-test@example.invalid",
        "GIT_CONFIG_GLOBAL": os.devnull, "GIT_CONFIG_NOSYSTEM": "1",
        "PKI_ACTOR": "pki-test@ci", "NO_COLOR": "1", "LC_ALL": "C.UTF-8",
    })
    env.update(extra)
    return env


class Result(NamedTuple):
    returncode: int
    stdout: str
    stderr: str
    args: tuple[str, ...] = ()  # the command line, for messages

    @property
    def output(self) -> str:
        return self.stdout + self.stderr

    def json(self) -> Any:
        return json.loads(self.stdout)

    def __str__(self) -> str:
        return (f"$ {' '.join(self.args)}\n[exit {self.returncode}]\n--- stdout\n{self.stdout}\n"
                f"--- stderr\n{self.stderr}")

    __repr__ = __str__


def run(cmd: Sequence[str | Path], *, cwd: Path | None = None, input: str | None = None,
        env: Mapping[str, str] | None = None, expect: int | Sequence[int] | None = 0,
        timeout: float = 120) -> Result:
    """Run ``cmd`` (in the `clean_env` unless ``env`` is given) and capture its output as text;
    ``expect`` asserts the exit code (``None``: any)."""
    args = tuple(map(str, cmd))
    proc = subprocess.run(args, cwd=cwd, input=input, stdin=None if input is not None else subprocess.DEVNULL,
                          capture_output=True, text=True, env=dict(env) if env is not None else clean_env(),
                          timeout=timeout)
    result = Result(proc.returncode, proc.stdout, proc.stderr, args)
    if expect is not None:
        wanted = (expect,) if isinstance(expect, int) else tuple(expect)
        assert result.returncode in wanted, f"exit {result.returncode}, wanted {wanted}:\n{result}"
    return result


def unavailable(reason: str) -> NoReturn:
    """Skip without a tool on a workstation; fail when ``$CI`` is set, so that CI cannot go green by
    running nothing."""
    if os.environ.get("CI"):
        pytest.fail(f"{reason}, and $CI is set: these tests must run in CI", pytrace=False)
    pytest.skip(reason)


def require_tool(name: str) -> str:
    """The tool's path, or `unavailable`."""
    path = shutil.which(name)
    if path is None:
        unavailable(f"{name} is not installed")
    return path


def free_port() -> int:
    """A loopback port nothing listens on (just now)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -- the pki command -----------------------------------------------------------------------------

def pki_command() -> list[str]:
    """The installed console script next to this interpreter, else on PATH, else ``-m pkiascode``."""
    beside = Path(sys.executable).with_name("pki")
    if beside.exists():
        return [str(beside)]
    found = shutil.which("pki")
    if found:
        return [found]
    return [sys.executable, "-m", "pkiascode"]


def run_pki(directory: Path | None, *args: str, input: str | None = None, env: Mapping[str, str] | None = None,
            expect: int | Sequence[int] | None = None, timeout: float = 120) -> Result:
    """``pki [-C DIR] ARGS``; a traceback on stderr fails the test unless ``--debug`` asked for one."""
    cmd = pki_command() + (["-C", str(directory)] if directory is not None else []) + list(args)
    result = run(cmd, input=input, env=env, expect=expect, timeout=timeout)
    if "Traceback" in result.stderr and "--debug" not in args:
        raise AssertionError(f"pki {' '.join(args)} printed a traceback:\n{result.stderr}")
    return result


def run_main(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """``pki ARGS`` in this process, through the real entry point (its error handling included):
    (exit code, stdout, stderr). For unit tests; the only place here that imports pkiascode."""
    from pkiascode.cli import main

    try:
        main(list(args))
        code = 0
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    out, err = capsys.readouterr()
    return code, out, err


def apply_in_process(directory: Path, toml: str, *, at: Any) -> Path:
    """``toml`` written to ``directory``/pki.toml, planned at ``at`` (a datetime) and applied in this
    process without a commit (no git): for the unit tests of what apply leaves in .pki/ (the memo)."""
    from pkiascode.apply import execute
    from pkiascode.project import Project

    (directory / "pki.toml").write_text(toml, encoding="utf-8")
    project = Project(directory / "pki.toml")
    try:
        execute(project, project.plan(at=at), commit=False)
    finally:
        project.close()
    return directory


class Pki:
    """``pki -C DIR ...`` for one project directory."""

    def __init__(self, directory: Path, env: Mapping[str, str] | None = None) -> None:
        self.dir = directory
        self.env = dict(env) if env is not None else clean_env()

    def __call__(self, *args: str, input: str | None = None, env: Mapping[str, str] | None = None,
                 expect: int | Sequence[int] | None = None, timeout: float = 120) -> Result:
        merged = dict(self.env, **(env or {}))
        return run_pki(self.dir, *args, input=input, env=merged, expect=expect, timeout=timeout)

    def ok(self, *args: str, **kw: Any) -> Result:
        return self(*args, expect=0, **kw)

    def apply(self, *args: str, **kw: Any) -> Result:
        return self("apply", "--auto-approve", *args, expect=kw.pop("expect", 0), **kw)

    def plan_json(self, *args: str) -> dict[str, Any]:
        return self("plan", "--format", "json", *args, expect=0).json()

    def plan_exit(self, *args: str) -> int:
        return self("plan", "--detailed-exitcode", *args, expect=(0, 2)).returncode

    def popen(self, *args: str, env: Mapping[str, str] | None = None, **kw: Any) -> subprocess.Popen[str]:
        cmd = pki_command() + ["-C", str(self.dir)] + list(args)
        kw.setdefault("stdin", subprocess.DEVNULL)
        kw.setdefault("stdout", subprocess.PIPE)
        kw.setdefault("stderr", subprocess.PIPE)
        return subprocess.Popen(cmd, env=dict(self.env, **(env or {})), text=True, **kw)


# -- project files -------------------------------------------------------------------------------

#: a root and one certificate, not committed: for tests of plan and drift that need real state
ROOT_AND_WEB = """\
[pki]
commit = false

[authority.root]
common_name = "Root"
validity = "2y"

[certificate.web]
issuer = "root"
hosts = ["web.example.com"]
validity = "90d"
"""

#: root → intermediate → a server and a client certificate, all ECDSA P-256
SMALL_PKI = """\
[defaults]
key = "ecdsa-p256"
validity = "90d"
renew_before = "10d"
subject = { O = "pkiascode tests" }

[authority.root]
common_name = "Test Root CA"
validity = "10y"
renew_before = "1y"

[authority.inter]
issuer = "root"
common_name = "Test Intermediate CA"
validity = "5y"
renew_before = "180d"
path_length = 0

[certificate.server]
issuer = "inter"
common_name = "localhost"
hosts = ["localhost", "127.0.0.1"]

[certificate.client]
issuer = "inter"
common_name = "client-1"
subject = { OU = "clients" }
"""

#: a root and one leaf, ECDSA P-256, no git: the no-op memo tests' project (`apply_in_process`)
MEMO_PKI = """\
[defaults]
key = "ecdsa-p256"
validity = "91d"  # (90d would enter the 90-day expiry outlook when applied, within the second of NOW)
renew_before = "10d"

[authority.root]
common_name = "Memo Root"
validity = "1y"
renew_before = "30d"

[certificate.web]
issuer = "root"
hosts = ["web.internal"]
"""

#: root → inter (with CRL URLs) → server, client and other, all ECDSA P-256: the lifecycle tests' start
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


def write_project(directory: Path, toml: str, *, gitignore: bool = True) -> Path:
    """pki.toml (dedented) and a .gitignore keeping .pki/ out of git, as `pki init` would."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "pki.toml").write_text(textwrap.dedent(toml), encoding="utf-8")
    if gitignore:
        (directory / ".gitignore").write_text("# pkiascode\n.pki/\n", encoding="utf-8")
    return directory / "pki.toml"


def edit_toml(directory: Path, old: str, new: str) -> None:
    path = directory / "pki.toml"
    text = path.read_text(encoding="utf-8")
    assert text.count(old) == 1, f"{old!r} occurs {text.count(old)} times in pki.toml:\n{text}"
    path.write_text(text.replace(old, new), encoding="utf-8")


# -- git -----------------------------------------------------------------------------------------

def git(directory: Path, *args: str, check: bool = True, env: Mapping[str, str] | None = None) -> str:
    return run(["git", *args], cwd=directory, env=env, expect=0 if check else None).stdout


def git_init(directory: Path) -> Path:
    """An empty git repository (branch main)."""
    directory.mkdir(parents=True, exist_ok=True)
    git(directory, "init", "-q", "-b", "main")
    return directory


def new_repo(directory: Path, toml: str, *, commit: bool = False) -> Path:
    """A git repository with pki.toml and a .gitignore for .pki/ (`write_project`); with
    ``commit=True`` both are committed."""
    write_project(git_init(directory), toml)
    if commit:
        commit_all(directory, "initial pki.toml")
    return directory


def applied_repo(directory: Path, toml: str = SMALL_PKI) -> Path:
    """`new_repo` with ``toml`` committed, then ``pki apply`` (its state committed): what the
    security tests start from. The ``applied`` fixture (conftest.py) copies one per session instead."""
    new_repo(directory, toml, commit=True)
    Pki(directory).apply()
    return directory


def copy_repo(source: Path, directory: Path) -> Path:
    """A copy of the project directory ``source`` (work tree, .git, .pki with its modes), links kept
    as links: the same repository without applying again."""
    shutil.copytree(source, directory, symlinks=True)
    return directory


def vault_toml(prefix: str, pki_id: str, toml: str = SMALL_PKI) -> str:
    """``toml`` (default `SMALL_PKI`) with ``[pki] id`` and every key in a Vault store ``vault`` at
    ``prefix`` (Vault's address and token come from the environment)."""
    return (f'[pki]\nid = "{pki_id}"\n\n[backend.vault]\nplugin = "vault"\nprefix = "{prefix}"\n\n'
            + toml.replace("[defaults]\n", '[defaults]\nbackend = "vault"\n', 1))


def vault_project(directory: Path, prefix: str, pki_id: str, toml: str = SMALL_PKI) -> Path:
    """A git repository with `vault_toml` committed, nothing applied: one of several PKIs (told apart
    by their id) sharing one Vault and one prefix."""
    return new_repo(directory, vault_toml(prefix, pki_id, toml), commit=True)


def assert_one_line(text: str, *secrets: str) -> str:
    """``text`` (an error message) is one line, no traceback, and holds none of ``secrets``."""
    assert "\n" not in text and "Traceback" not in text, text
    for secret in secrets:
        assert secret not in text
    return text


def commit_all(directory: Path, message: str = "pki.toml") -> None:
    """Commit everything in the work tree (what a user has before running pki)."""
    git(directory, "add", "-A")
    git(directory, "commit", "-q", "-m", message)


def fake_git(bin_dir: Path, when: str, then: str) -> dict[str, str]:
    """A `git` in ``bin_dir`` that runs shell ``then`` when shell condition ``when`` holds (on "$1",
    the git command), then the real git; returns the environment that puts it first on PATH."""
    bin_dir.mkdir(parents=True, exist_ok=True)
    wrapper = bin_dir / "git"
    wrapper.write_text(f'#!/bin/sh\nif {when}; then {then}; fi\nexec "{shutil.which("git")}" "$@"\n')
    wrapper.chmod(0o755)
    return {"PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"}


def wait_for(path: Path, proc: subprocess.Popen[str], what: str, timeout: float = 30) -> None:
    """Wait until ``path`` exists, while ``proc`` runs."""
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, f"{what} was never reached"
        time.sleep(0.02)


def head(directory: Path) -> str | None:
    return git(directory, "rev-parse", "-q", "--verify", "HEAD", check=False).strip() or None


def commit_count(directory: Path) -> int:
    return int(git(directory, "rev-list", "--count", "HEAD").strip()) if head(directory) else 0


def git_objects(directory: Path) -> Iterator[tuple[str, str, bytes]]:
    """(sha, type, content) of every object in the repository, reachable or not."""
    proc = subprocess.run(["git", "cat-file", "--batch-all-objects", "--batch"], cwd=directory,
                          capture_output=True, env=clean_env(), check=True)
    data, pos = proc.stdout, 0
    while pos < len(data):
        nl = data.index(b"\n", pos)
        sha, kind, size = data[pos:nl].decode().split()
        start = nl + 1
        yield sha, kind, data[start:start + int(size)]
        pos = start + int(size) + 1


# -- state/ and the local key store --------------------------------------------------------------

def inventory(directory: Path, state: str = "state") -> dict[str, Any]:
    """The ``objects`` of state/inventory.json."""
    return json.loads((directory / state / "inventory.json").read_text())["objects"]


def audit_lines(directory: Path, state: str = "state") -> list[dict[str, Any]]:
    path = directory / state / "audit.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def audit_key_refs(directory: Path, state: str = "state") -> set[str]:
    """The key references pinned in state/audit-signatures.json (the audit log's keys)."""
    path = directory / state / "audit-signatures.json"
    return {k["ref"] for k in json.loads(path.read_text())["keys"]} if path.exists() else set()


def key_files(directory: Path) -> set[str]:
    """The key files of the local store, but for the audit log's pinned keys (no inventory object's)."""
    keys = directory / ".pki" / "keys"
    return ({p.name for p in keys.iterdir()} if keys.exists() else set()) - audit_key_refs(directory)


def key_ref(directory: Path, name: str) -> str:
    return inventory(directory)[name]["key"]["ref"]


def cert_path(directory: Path, name: str) -> Path:
    return directory / "state" / "certs" / f"{name}.pem"


def crl_path(directory: Path, name: str) -> Path:
    return directory / "state" / "crl" / f"{name}.crl"


def state_cert(directory: Path, name: str) -> x509.Certificate:
    return load_cert(cert_path(directory, name))


def assert_state_sound(repo: Path, pki: Pki, *, exact_keys: bool = False, audit_args: tuple[str, ...] = ()) -> None:
    """Every inventory object has its certificate (the inventory's: fingerprint and serial), its key
    (0600, fitting the certificate) and, for an authority, its CRL; `pki audit verify` passes; a plan
    has nothing to do; state/ is committed. With ``exact_keys``, the key directory holds exactly the
    inventory's keys (no orphan)."""
    from cryptography.hazmat.primitives import hashes

    inv = inventory(repo)
    refs = set()
    for name, rec in inv.items():
        cert = state_cert(repo, name)
        assert cert.fingerprint(hashes.SHA256()).hex() == rec["sha256"], f"{name}: file is not the inventory's"
        assert format(cert.serial_number, "x") == rec["serial"], name
        key = repo / ".pki" / "keys" / rec["key"]["ref"]
        assert key.exists(), f"{name}: key {rec['key']['ref']} missing"
        assert stat.S_IMODE(key.stat().st_mode) == 0o600
        assert spki_der(load_key(key)) == spki_der(cert), f"{name}: the key does not fit the certificate"
        if rec["kind"] == "authority":
            assert crl_path(repo, name).exists(), f"{name}: CRL missing"
        refs.add(rec["key"]["ref"])
    if exact_keys:
        files = key_files(repo)
        assert files == refs, f"orphan or missing keys: files {sorted(files)}, inventory {sorted(refs)}"
    pki("audit", "verify", *audit_args, expect=0)
    assert pki.plan_exit() == 0, pki("plan").stdout
    assert git(repo, "status", "--porcelain", "--", "state") == "", "state/ is not committed"


def state_crl(directory: Path, name: str) -> x509.CertificateRevocationList:
    return load_crl(crl_path(directory, name))


def tree_snapshot(root: Path) -> dict[str, bytes]:
    """Every file under ``root`` (relative path → bytes); {} when it does not exist."""
    if not root.exists():
        return {}
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def concat(out: Path, *parts: Path) -> Path:
    """``out``, written with the bytes of ``parts`` one after the other (a chain, a CA file with CRLs)."""
    out.write_bytes(b"".join(Path(p).read_bytes() for p in parts))
    return out


# -- PEM and X.509 (for assertions; the checks that matter run through openssl) ------------------

def pem_blocks(data: bytes) -> list[bytes]:
    return re.findall(rb"-----BEGIN [A-Z0-9 ]+-----\r?\n.*?-----END [A-Z0-9 ]+-----\r?\n?", data, re.S)


def pem_der(block: bytes) -> bytes:
    lines = [ln for ln in block.strip().splitlines() if not ln.startswith(b"-----")]
    return base64.b64decode(b"".join(lines))


def fullchain(directory: Path, name: str) -> Path:
    """NAME-fullchain.pem: NAME.pem and the intermediates of NAME-ca.pem (not the root) as `pki export`
    wrote them into ``directory``: what a TLS peer sends."""
    chain = pem_blocks((directory / f"{name}-ca.pem").read_bytes())[:-1]
    path = directory / f"{name}-fullchain.pem"
    path.write_bytes((directory / f"{name}.pem").read_bytes() + b"".join(chain))
    return path


def load_cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(Path(path).read_bytes())


def load_crl(path: Path) -> x509.CertificateRevocationList:
    return x509.load_pem_x509_crl(Path(path).read_bytes())


def load_key(path: Path) -> Any:
    """An unencrypted PEM private key."""
    return serialization.load_pem_private_key(Path(path).read_bytes(), password=None)


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


# -- openssl -------------------------------------------------------------------------------------

def openssl(*args: str | Path, cwd: Path | None = None, input: str | None = None,
            expect: int | Sequence[int] | None = 0, timeout: float = 60) -> Result:
    """The openssl CLI; ``expect=None`` when the caller looks at the exit code itself."""
    return run(["openssl", *args], cwd=cwd, input=input, expect=expect, timeout=timeout)


def openssl_ca(directory: Path, name: str = "ca", common_name: str | None = None) -> Path:
    """A self-signed ECDSA P-256 CA made by the openssl CLI as a script would leave it, NAME.crt and
    NAME.key in ``directory`` (created): a directory for ``pki import``. Returns ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-days", "365",
            "-subj", f"/CN={common_name or f'{name} CA'}", "-addext", "basicConstraints=critical,CA:TRUE",
            "-addext", "keyUsage=critical,keyCertSign,cRLSign,digitalSignature",
            "-keyout", directory / f"{name}.key", "-out", directory / f"{name}.crt")
    return directory


# -- logging in to Vault (a real OpenBao: the server fixtures are in vault/conftest.py) ------------

def sign_jwt(key: Any, claims: Mapping[str, Any]) -> str:
    """A JWT (RS256) over ``claims`` signed with the RSA private ``key``: what a CI's OIDC issuer hands
    a job."""
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import padding

    def b64url(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    head = b64url(json.dumps({"alg": "RS256", "typ": "JWT"}).encode())
    body = b64url(json.dumps(dict(claims)).encode())
    signature = key.sign(f"{head}.{body}".encode(), padding.PKCS1v15(), hashes.SHA256())
    return f"{head}.{body}.{b64url(signature)}"


def jwt_login_mount(server: Any, key: Any, *, issuer: str, audience: str, user_claim: str,
                    bound: Mapping[str, str], policy: str = "pki-apply") -> str:
    """An auth/jwt mount (a new random path, returned) on the OpenBao ``server`` that trusts JWTs
    signed by ``key`` from ``issuer``, with a role ``pki-apply`` granting ``policy`` to a token whose
    audience is ``audience`` and whose claims match ``bound``."""
    import secrets

    mount = f"jwt-{secrets.token_hex(3)}"
    pem = key.public_key().public_bytes(serialization.Encoding.PEM,
                                        serialization.PublicFormat.SubjectPublicKeyInfo).decode()
    server.api("POST", f"sys/auth/{mount}", {"type": "jwt"})
    server.api("POST", f"auth/{mount}/config", {"jwt_validation_pubkeys": [pem], "bound_issuer": issuer})
    server.api("POST", f"auth/{mount}/role/pki-apply", {
        "role_type": "jwt", "user_claim": user_claim, "bound_audiences": [audience], "bound_claims": dict(bound),
        "token_policies": [policy], "token_ttl": "10m"})
    return mount


def approle_login_mount(server: Any, policy: str = "pki-apply") -> tuple[str, str, str]:
    """An auth/approle mount (a new random path) on the OpenBao ``server`` with a role ``pki``
    granting ``policy``: (mount, role_id, secret_id)."""
    import secrets

    mount = f"approle-{secrets.token_hex(3)}"
    server.api("POST", f"sys/auth/{mount}", {"type": "approle"})
    server.api("POST", f"auth/{mount}/role/pki", {"token_policies": [policy], "token_ttl": "10m"})
    role_id = server.api("GET", f"auth/{mount}/role/pki/role-id")[1]["data"]["role_id"]
    secret_id = server.api("POST", f"auth/{mount}/role/pki/secret-id")[1]["data"]["secret_id"]
    return mount, role_id, secret_id


# -- TLS -----------------------------------------------------------------------------------------

class TlsOutcome:
    """One TLS connection as both sides saw it; an error of either side is kept here, not raised."""

    def __init__(self) -> None:
        self.server_error: BaseException | None = None
        self.client_error: BaseException | None = None
        self.reply = ""  # what the client read: "hello <the client certificate's CN>\n" ("hello anonymous\n")
        self.client_cert: dict[str, Any] | None = None  # the client's certificate as the server saw it
        self.server_cert: dict[str, Any] | None = None  # the server's certificate as the client saw it
        self.version: str | None = None  # the protocol the client negotiated, e.g. "TLSv1.3"

    @property
    def ok(self) -> bool:
        return self.server_error is None and self.client_error is None and self.reply.startswith("hello ")

    def __repr__(self) -> str:
        return (f"TlsOutcome(server_error={self.server_error!r}, client_error={self.client_error!r}, "
                f"reply={self.reply!r})")


def subject_of(peer: Mapping[str, Any], field: str = "subject") -> dict[str, str]:
    """``{"commonName": ..., ...}`` of the subject (or issuer) of a certificate from ``getpeercert()``."""
    return dict(x[0] for x in peer[field])


def tls_handshake(*, server_cert: Path, server_key: Path, client_cafile: Path, server_hostname: str,
                  client_cert: Path | None = None, client_key: Path | None = None,
                  server_cafile: Path | None = None, crl_check_leaf: bool = False) -> TlsOutcome:
    """One TLS connection on 127.0.0.1 between a Python ``ssl`` server and client (OpenSSL underneath).

    ``server_cert`` and ``client_cert`` may hold a chain (`fullchain`, `concat`). The client verifies
    the server against ``client_cafile`` and ``server_hostname``. ``server_cafile`` (with any CRLs in
    it) makes the server require a client certificate; ``crl_check_leaf`` checks that certificate
    against those CRLs. The server answers ``hello <client CN>\\n``; the client reads it and says bye.
    """
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

    out = TlsOutcome()
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(20)
    port = listener.getsockname()[1]

    def serve() -> None:
        try:
            conn, _ = listener.accept()
            with conn:
                conn.settimeout(20)
                with sctx.wrap_socket(conn, server_side=True) as tls:
                    out.client_cert = tls.getpeercert() or None
                    name = subject_of(out.client_cert)["commonName"] if out.client_cert else "anonymous"
                    tls.sendall(f"hello {name}\n".encode())
                    tls.recv(16)
        except BaseException as e:  # noqa: BLE001 - reported to the test
            out.server_error = e
        finally:
            listener.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=20) as raw:
            with cctx.wrap_socket(raw, server_hostname=server_hostname) as tls:
                out.server_cert, out.version = tls.getpeercert(), tls.version()
                data = b""
                while not data.endswith(b"\n"):
                    chunk = tls.recv(64)
                    if not chunk:
                        break
                    data += chunk
                out.reply = data.decode()
                tls.sendall(b"bye")
    except BaseException as e:  # noqa: BLE001 - reported to the test
        out.client_error = e
    finally:
        thread.join(20)
    return out


# -- a project directory, its pki.toml and its state, and `pki` run in it --------------------------

class Repo(Pki):
    """A project directory with readers for its pki.toml and state/; ``repo.pki(...)`` runs ``pki``
    in it and expects exit 0 unless told otherwise."""

    @classmethod
    def create(cls, directory: Path, toml: str) -> Repo:
        """A new git repository with ``toml`` and a .gitignore for .pki/, committed (`new_repo`)."""
        return cls(new_repo(directory, toml, commit=True))

    @property
    def path(self) -> Path:
        return self.dir

    def pki(self, *args: str, expect: int | None = 0, input: str | None = None) -> Result:
        return self(*args, expect=expect, input=input)

    def git(self, *args: str) -> str:
        return git(self.dir, *args)

    def head(self) -> str | None:
        return head(self.dir)

    # -- pki.toml ----------------------------------------------------------------------------
    @property
    def toml_path(self) -> Path:
        return self.dir / "pki.toml"

    def read_toml(self) -> str:
        return self.toml_path.read_text(encoding="utf-8")

    def write_toml(self, text: str) -> None:
        self.toml_path.write_text(text, encoding="utf-8")

    def edit_toml(self, old: str, new: str) -> None:
        edit_toml(self.dir, old, new)

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
        return self.dir / "state"

    def cert_path(self, name: str) -> Path:
        return cert_path(self.dir, name)

    def crl_path(self, name: str) -> Path:
        return crl_path(self.dir, name)

    def cert(self, name: str) -> x509.Certificate:
        return state_cert(self.dir, name)

    def crl(self, name: str) -> x509.CertificateRevocationList:
        return state_crl(self.dir, name)

    def inventory(self) -> dict[str, Any]:
        return inventory(self.dir)

    def record(self, name: str) -> dict[str, Any]:
        return self.inventory()[name]

    def audit(self) -> list[dict[str, Any]]:
        return audit_lines(self.dir)

    def key_files(self) -> set[str]:
        return key_files(self.dir)

    def key_file(self, name: str) -> Path:
        """The local key file of ``name`` per the inventory (the default store at .pki/keys)."""
        return self.dir / ".pki" / "keys" / key_ref(self.dir, name)

    def chain_file(self, *names: str) -> Path:
        """A PEM file with the certificates of ``names`` concatenated (e.g. an issuer chain)."""
        return concat(self.dir.parent / f"chain-{'-'.join(names)}.pem", *map(self.cert_path, names))

    def crl_file(self, *names: str) -> Path:
        return concat(self.dir.parent / f"crls-{'-'.join(names)}.pem", *map(self.crl_path, names))


# -- a process on a pseudo-terminal --------------------------------------------------------------

class PtyProcess:
    """A command whose stdin, stdout and stderr are a terminal: for apply's confirmation prompt."""

    def __init__(self, cmd: Sequence[str], env: Mapping[str, str]) -> None:
        self.master, slave = os.openpty()
        self.proc = subprocess.Popen(list(cmd), stdin=slave, stdout=slave, stderr=slave, env=dict(env),
                                     start_new_session=True, close_fds=True)
        os.close(slave)
        self.buffer = b""

    @property
    def pid(self) -> int:
        return self.proc.pid

    def _read(self, timeout: float) -> bool:
        ready, _, _ = select.select([self.master], [], [], timeout)
        if not ready:
            return True
        try:
            chunk = os.read(self.master, 65536)
        except OSError:  # EIO: the other side closed
            return False
        if not chunk:
            return False
        self.buffer += chunk
        return True

    def expect(self, text: str, timeout: float = 30) -> str:
        deadline = time.monotonic() + timeout
        while text.encode() not in self.buffer:
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {text!r}; got:\n{self.text}")
            if not self._read(min(0.2, max(0.0, deadline - time.monotonic()))) and self.proc.poll() is not None:
                raise AssertionError(f"process exited ({self.proc.returncode}) before {text!r}; got:\n{self.text}")
        return self.text

    def send(self, text: str) -> None:
        os.write(self.master, text.encode())

    def wait(self, timeout: float = 60) -> int:
        deadline = time.monotonic() + timeout
        while self._read(0.1):
            if time.monotonic() > deadline:
                break
        rc = self.proc.wait(timeout=max(1.0, deadline - time.monotonic()))
        os.close(self.master)
        return rc

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    @property
    def text(self) -> str:
        return self.buffer.decode(errors="replace").replace("\r\n", "\n")
