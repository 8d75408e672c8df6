"""Credentials go only where the environment says (issue 10.5) and the Vault lock is judged by its
lease alone (issue 10.6), against a real OpenBao (`bao server -dev`) and real listeners.

- `pki plan` on a pull request whose pki.toml names another ``address``: a plain TCP listener on
  127.0.0.1 (not Vault) at that address never receives a byte, so never the token;
- with ``$VAULT_ADDR`` unset, pki.toml's ``address`` is used only when it is a loopback address: for
  any other (an ``https://`` host a pull request wrote) every command and every login method stops
  before a name is resolved or a connection made, and says to set ``VAULT_ADDR``; ``pki plan
  --offline`` still works;
- plain ``http://`` to anything but a loopback address is refused before a connection is made;
- a second apply in another PID namespace (``unshare -p -f --mount-proc``, same host name), where
  the first holder's PID does not exist, cannot take the lock while the first runs.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from helpers import (SMALL_PKI, Pki, assert_one_line, clean_env, commit_all, git_init, pki_command, unavailable,
                     write_project)
from pkiascode.backend import KeyRequest, StoreContext
from pkiascode.errors import BackendUnavailable, LockError
from pkiascode.keytypes import KeyType

# the real OpenBao of tests/vault (a dev server on 127.0.0.1), used here as it is there
from vault.conftest import bao_server, make_store, vault_env  # noqa: F401

pytestmark = pytest.mark.vault


class Listener:
    """A plain TCP listener on 127.0.0.1 that records every byte sent to it and answers nothing."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.address = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.received = bytearray()
        self.connections = 0
        self._stop = False
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        self.sock.settimeout(0.1)
        while not self._stop:
            try:
                conn, _ = self.sock.accept()
            except (TimeoutError, socket.timeout):
                continue
            except OSError:
                return
            self.connections += 1
            conn.settimeout(0.5)
            try:
                while chunk := conn.recv(65536):
                    self.received += chunk
            except (TimeoutError, socket.timeout, OSError):
                pass
            finally:
                conn.close()

    def close(self) -> None:
        self._stop = True
        self._thread.join()
        self.sock.close()


@pytest.fixture
def listener():
    server = Listener()
    yield server
    server.close()


def vault_repo(directory: Path, prefix: str, extra: str = "") -> Path:
    git_init(directory)
    write_project(directory, f'[backend.vault]\nplugin = "vault"\nprefix = "{prefix}"\n{extra}\n'
                  + SMALL_PKI.replace("[defaults]\n", '[defaults]\nbackend = "vault"\n'))
    return directory


@pytest.fixture(scope="module")
def applied(bao_server, tmp_path_factory):
    """A repository applied to the dev server and committed; tests work on copies of it."""
    repo = vault_repo(tmp_path_factory.mktemp("applied") / "repo", f"cred{os.getpid()}")
    Pki(repo, clean_env(VAULT_ADDR=bao_server.address, VAULT_TOKEN=bao_server.token)).apply()
    commit_all(repo, "applied")
    return repo


def test_a_pull_requests_address_never_gets_the_token(vault_env, listener, applied, tmp_path):
    token = vault_env.token
    env = clean_env(VAULT_ADDR=vault_env.address, VAULT_TOKEN=token)
    repo = shutil.copytree(applied, tmp_path / "repo", symlinks=True)
    pki = Pki(repo, env)
    # the pull request: one line more in pki.toml
    toml = (repo / "pki.toml").read_text().replace('plugin = "vault"\n',
                                                   f'plugin = "vault"\naddress = "{listener.address}"\n', 1)
    (repo / "pki.toml").write_text(toml)
    for command in (("plan",), ("plan", "--format", "json"), ("apply", "--auto-approve")):
        r = pki(*command, expect=1)
        line = assert_one_line(r.stderr.strip(), token)
        assert f"pki.toml says address = '{listener.address}' but $VAULT_ADDR is '{vault_env.address}'" in line, line
    listener.close()  # every connection it had has been read to the end
    assert token.encode() not in listener.received
    assert listener.received == b"" and listener.connections == 0


def test_without_vault_addr_a_loopback_address_in_pki_toml_is_used(vault_env, make_store, monkeypatch):
    """$VAULT_ADDR unset: pki.toml's address, a loopback one, is used (local development, tests)."""
    monkeypatch.delenv("VAULT_ADDR")
    make_store(address=vault_env.address).check()
    monkeypatch.setenv("VAULT_ADDR", vault_env.address + "/")  # the same, spelt with a slash
    make_store(address=vault_env.address).check()


# a name that never resolves (RFC 6761): reaching DNS or a connection would fail differently
REMOTE = "https://vault.invalid:8200"
NOT_FROM_TOML = (f"backend vault: address {REMOTE} is not taken from pki.toml for credentials (a pull request can "
                 f"edit it): set VAULT_ADDR={REMOTE} in the job's environment")


@pytest.fixture
def no_network(monkeypatch):
    """Every name lookup and connection this process attempts, refused and recorded."""
    attempts: list[object] = []

    def refuse(*args, **kwargs):
        attempts.append(args[:2])
        raise OSError("the test forbids network access here")

    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    return attempts


@pytest.mark.parametrize("auth", [None, {"method": "approle", "role_id_env": "ROLE_ID", "secret_id_env": "SECRET_ID"},
                                  {"method": "jwt", "role": "pki", "jwt_env": "CI_JWT"},
                                  {"method": "kubernetes", "role": "pki", "token_file": "/nonexistent/token"}])
def test_without_vault_addr_another_address_in_pki_toml_gets_nothing(vault_env, make_store, monkeypatch, no_network,
                                                                     auth):
    monkeypatch.delenv("VAULT_ADDR")
    monkeypatch.setenv("ROLE_ID", "role-id-0123456789abcdef")
    monkeypatch.setenv("SECRET_ID", "secret-id-0123456789abcdef")
    monkeypatch.setenv("CI_JWT", "a.jwt-0123456789abcdef.sig")
    settings = {"address": REMOTE, **({"auth": auth} if auth else {})}
    store = make_store(**settings)
    for action in (store.check, lambda: store.generate(KeyRequest("web", KeyType.ECDSA_P256, False, True)),
                   store.list_keys, lambda: store.lock("state", {"actor": "x"}).__enter__()):
        with pytest.raises(BackendUnavailable) as info:
            action()
        line = assert_one_line(str(info.value), vault_env.token)
        assert line.startswith(NOT_FROM_TOML), line
        for secret in ("role-id-0123456789abcdef", "secret-id-0123456789abcdef", "a.jwt-0123456789abcdef.sig"):
            assert secret not in line
    assert no_network == []
    monkeypatch.setenv("VAULT_ADDR", REMOTE + "/")  # the environment says so: the client is made (nothing sent yet)
    assert make_store(**settings)._client.address == REMOTE


def test_a_pull_requests_https_address_without_vault_addr_stops_every_command(vault_env, applied, tmp_path):
    repo = shutil.copytree(applied, tmp_path / "repo", symlinks=True)
    # the pull request adds an address; its plan job has a token but no VAULT_ADDR
    toml = (repo / "pki.toml").read_text()
    (repo / "pki.toml").write_text(toml.replace('plugin = "vault"\n', f'plugin = "vault"\naddress = "{REMOTE}"\n', 1))
    pki = Pki(repo, clean_env(VAULT_TOKEN=vault_env.token))
    for command in (("plan",), ("plan", "--format", "json"), ("apply", "--auto-approve"), ("keys",)):
        line = assert_one_line(pki(*command, expect=1).stderr.strip(), vault_env.token)
        assert NOT_FROM_TOML in line, (command, line)
    r = pki("plan", "--offline", expect=0)  # contacts no key store: needs no VAULT_ADDR
    assert "not checked" in r.stdout, r.stdout


@pytest.mark.parametrize("address", ["http://vault.example:8200", "http://10.0.0.8:8200", "http://[2001:db8::1]:8200",
                                     "http://127.0.0.1.example:8200"])
def test_plain_http_only_to_a_loopback_address(vault_env, make_store, monkeypatch, listener, address):
    monkeypatch.setenv("VAULT_ADDR", address)
    store = make_store()
    for action in (store.check, lambda: store.generate(KeyRequest("web", KeyType.ECDSA_P256, False, True))):
        with pytest.raises(BackendUnavailable) as info:
            action()
        line = assert_one_line(str(info.value), vault_env.token)
        assert f"refusing to talk to Vault at {address} over plain http" in line
    for loopback in (vault_env.address, vault_env.address.replace("127.0.0.1", "localhost")):
        monkeypatch.setenv("VAULT_ADDR", loopback)
        make_store().check()
    # in pki.toml it is a config error
    assert dict(type(store).validate({"address": address}))["address"].startswith("plain http:// only to a loopback")
    assert type(store).validate({"address": "http://127.0.0.1:8200"}) == []


# -- only a plain address: the host judged is the host connected to (review finding 3) ---------------

def test_an_address_that_is_not_plain_is_refused_before_anything_connects(vault_env, applied, make_store, listener,
                                                                           monkeypatch, tmp_path):
    """Python's urlsplit reads ``http://A\\@127.0.0.1:P`` as host 127.0.0.1, requests/urllib3 connect to A:
    an address with a backslash (or user info, a path, a query, a fragment, a space) is refused by
    `pki validate`, by `pki plan` and by the store itself, from pki.toml or from $VAULT_ADDR."""
    token = vault_env.token
    bao_port = vault_env.address.rsplit(":", 1)[1]
    repro = f"http://192.0.2.10:8200\\@127.0.0.1:{bao_port}"  # the review's: a host off this machine
    repo = shutil.copytree(applied, tmp_path / "repo", symlinks=True)
    toml = (repo / "pki.toml").read_text()
    (repo / "pki.toml").write_text(toml.replace('plugin = "vault"\n', f"plugin = \"vault\"\naddress = '{repro}'\n", 1))
    line_number = (repo / "pki.toml").read_text().splitlines().index(f"address = '{repro}'") + 1
    pki = Pki(repo, clean_env(VAULT_TOKEN=token))
    for command in (("validate",), ("plan",)):
        line = assert_one_line(pki(*command, expect=1).stderr.strip(), token)
        assert line.startswith(f"pki.toml:{line_number}: backend.vault.address: must be a plain"), (command, line)
    # $VAULT_ADDR is checked too, before a connection: here urllib3 would connect to the listener
    (repo / "pki.toml").write_text(toml)
    sneaky = f"{listener.address}\\@127.0.0.1:{bao_port}"
    line = assert_one_line(pki("plan", env={"VAULT_ADDR": sneaky}, expect=1).stderr.strip(), token)
    assert f"$VAULT_ADDR {sneaky!r} must be a plain" in line, line
    listener.close()
    assert listener.received == b"" and listener.connections == 0

    # the store itself, whatever validate said: no name looked up, no connection made
    attempts: list[object] = []

    def refuse(*args, **kwargs):
        attempts.append(args[:2])
        raise OSError("the test forbids network access here")

    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.delenv("VAULT_ADDR")
    for address in (repro, f"http://user:pw@127.0.0.1:{bao_port}", f"{vault_env.address}/v1/x",
                    f"{vault_env.address}?x=1", f"{vault_env.address}#x", f"{vault_env.address} ", "http://127.1:8200"):
        assert dict(validate_address(address))["address"].startswith("must be a plain"), address
        for settings, environment in (({"address": address}, None), ({}, address)):
            if environment is not None:
                monkeypatch.setenv("VAULT_ADDR", environment)
            store = make_store(**settings)
            with pytest.raises(BackendUnavailable) as info:
                store.check()
            line = assert_one_line(str(info.value), token)
            assert f"{address!r} must be a plain" in line, line
            monkeypatch.delenv("VAULT_ADDR", raising=False)
    assert attempts == []
    for plain in ("https://vault.example:8200", "https://vault.example:8200/", "http://[::1]:8200", "https://10.1.2.3"):
        assert validate_address(plain) == [], plain


def validate_address(address: str) -> list[tuple[str, str]]:
    from pkiascode_vault import VaultKeyStore

    return VaultKeyStore.validate({"address": address})


# -- the lock: a lease, never a PID -------------------------------------------------------------------

def test_a_holder_with_a_pid_that_is_gone_here_keeps_the_lock(vault_env, make_store):
    """Same host name, a PID that does not exist (as from another PID namespace): still the holder."""
    from pkiascode.audit import hostname

    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    holder = {"actor": "first", "host": hostname(), "pid": str(gone.pid), "since": "2026-01-01T00:00:00Z"}
    a, b = make_store(), make_store()
    with a.lock("state", holder):
        with pytest.raises(LockError, match=rf"first@{hostname()} \(pid {gone.pid}\)"):
            with b.lock("state", {**holder, "actor": "second", "pid": str(os.getpid())}):
                pytest.fail("the lock was taken from a live holder")


def _unshare() -> list[str]:
    tool = shutil.which("unshare")
    if tool is None:
        unavailable("unshare (util-linux) is not installed")
    command = [tool] + ([] if os.geteuid() == 0 else ["-r"]) + ["-p", "-f", "--mount-proc"]
    probe = subprocess.run(command + ["true"], capture_output=True, text=True)
    if probe.returncode != 0:
        unavailable(f"cannot make a PID namespace here: {probe.stderr.strip()}")
    return command


def test_an_apply_in_another_pid_namespace_cannot_take_the_lock(vault_env, tmp_path):
    from pkiascode.audit import hostname
    from pkiascode.lock import holder_info
    from pkiascode_vault import VaultKeyStore

    unshare = _unshare()
    prefix = f"pidns{os.getpid()}"
    env = clean_env(VAULT_ADDR=vault_env.address, VAULT_TOKEN=vault_env.token)
    repo = vault_repo(tmp_path / "repo", prefix)
    pki_id = "pidns0test0id"
    (repo / "pki.toml").write_text(f'[pki]\nid = "{pki_id}"\n\n' + (repo / "pki.toml").read_text())
    commit_all(repo, "pki.toml")

    # the first apply: this process, holding the lock the CLI takes for state "state" in the PKI's
    # namespace (vault_env points this process at the server)
    first = VaultKeyStore("vault", {"prefix": prefix}, StoreContext(repo, repo / ".pki", pki_id))
    try:
        held = first.lock("state", holder_info("first-apply"))
        with held:
            # the second: same host name, in a PID namespace where our PID does not exist
            second = subprocess.run(unshare + pki_command() + ["-C", str(repo), "apply", "--auto-approve"],
                                    capture_output=True, text=True, env=env, cwd=repo)
            line = assert_one_line(second.stderr.strip(), vault_env.token)
            assert second.returncode == 1, second
            assert f"is being applied by first-apply@{hostname()} (pid {os.getpid()})" in line, line
            held.confirm()  # still ours, proved by a check-and-set write
        assert not (repo / "state/inventory.json").exists()
    finally:
        first.close()
