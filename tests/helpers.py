"""Helpers for the end-to-end tests: run the real ``pki`` console script, git, openssl, and a
process on a pseudo-terminal. No pkiascode imports: the tests see the project as a user does."""

from __future__ import annotations

import base64
import json
import os
import re
import select
import shutil
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

ROOT = Path(__file__).resolve().parent.parent
PRIVATE_KEY_MARKER = re.compile(rb"-----BEGIN [A-Z0-9 ]*PRIVATE KEY-----")


# -- the command ---------------------------------------------------------------------------------

def pki_command() -> list[str]:
    """The installed console script next to this interpreter, else on PATH, else ``-m pkiascode``."""
    beside = Path(sys.executable).with_name("pki")
    if beside.exists():
        return [str(beside)]
    found = shutil.which("pki")
    if found:
        return [found]
    return [sys.executable, "-m", "pkiascode"]


def clean_env(**extra: str) -> dict[str, str]:
    """The environment every subprocess runs in: a fixed git identity, no user or system git
    config, no colour, a fixed actor, and no fault injection unless asked for."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("GIT_", "PKI_")) and k not in ("NO_COLOR", "VAULT_TOKEN", "VAULT_ADDR")}
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

    @property
    def output(self) -> str:
        return self.stdout + self.stderr

    def json(self) -> Any:
        return json.loads(self.stdout)


def run_pki(directory: Path | None, *args: str, input: str | None = None, env: Mapping[str, str] | None = None,
            expect: int | Sequence[int] | None = None, timeout: float = 120) -> Result:
    cmd = pki_command() + (["-C", str(directory)] if directory is not None else []) + list(args)
    proc = subprocess.run(cmd, input=input, stdin=None if input is not None else subprocess.DEVNULL,
                          capture_output=True, text=True, env=dict(env) if env is not None else clean_env(),
                          timeout=timeout)
    result = Result(proc.returncode, proc.stdout, proc.stderr)
    if expect is not None:
        wanted = (expect,) if isinstance(expect, int) else tuple(expect)
        assert result.returncode in wanted, (
            f"pki {' '.join(args)}: exit {result.returncode}, wanted {wanted}\n"
            f"--- stdout\n{result.stdout}\n--- stderr\n{result.stderr}")
    if "Traceback (most recent call last)" in result.stderr and "--debug" not in args:
        raise AssertionError(f"pki {' '.join(args)} printed a traceback:\n{result.stderr}")
    return result


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
    assert text.count(old) == 1, f"{old!r} occurs {text.count(old)} times in pki.toml"
    path.write_text(text.replace(old, new), encoding="utf-8")


# -- git -----------------------------------------------------------------------------------------

def git(directory: Path, *args: str, check: bool = True, env: Mapping[str, str] | None = None) -> str:
    proc = subprocess.run(["git", *args], cwd=directory, capture_output=True, text=True,
                          env=dict(env) if env is not None else clean_env())
    if check and proc.returncode != 0:
        raise AssertionError(f"git {' '.join(args)} failed ({proc.returncode}): {proc.stderr}")
    return proc.stdout


def git_init(directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    git(directory, "init", "-q", "-b", "main")
    return directory


def head(directory: Path) -> str | None:
    proc = subprocess.run(["git", "rev-parse", "-q", "--verify", "HEAD"], cwd=directory, capture_output=True,
                          text=True, env=clean_env())
    return proc.stdout.strip() or None


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


# -- state ---------------------------------------------------------------------------------------

def inventory(directory: Path, state: str = "state") -> dict[str, Any]:
    return json.loads((directory / state / "inventory.json").read_text())["objects"]


def audit_lines(directory: Path, state: str = "state") -> list[dict[str, Any]]:
    path = directory / state / "audit.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def key_files(directory: Path) -> set[str]:
    keys = directory / ".pki" / "keys"
    return {p.name for p in keys.iterdir()} if keys.exists() else set()


def key_ref(directory: Path, name: str) -> str:
    return inventory(directory)[name]["key"]["ref"]


def pem_blocks(data: bytes) -> list[bytes]:
    return re.findall(rb"-----BEGIN [A-Z0-9 ]+-----\r?\n.*?-----END [A-Z0-9 ]+-----\r?\n?", data, re.S)


def pem_der(block: bytes) -> bytes:
    lines = [ln for ln in block.strip().splitlines() if not ln.startswith(b"-----")]
    return base64.b64decode(b"".join(lines))


# -- openssl -------------------------------------------------------------------------------------

def openssl(*args: str, input: bytes | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(["openssl", *args], input=input.decode() if input else None, capture_output=True,
                          text=True, env=clean_env())
    if check and proc.returncode != 0:
        raise AssertionError(f"openssl {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}{proc.stderr}")
    return proc


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
