"""End to end through the real ``pki`` console script, in temporary git repositories, against real
OpenBao servers (see conftest.py): authorities in Transit, leaves in KV, exports checked with
``openssl verify`` and a real mutual-TLS handshake, key moves from local files into Vault, two
concurrent applies from two clones, the server stopped mid-apply, ``pki`` killed mid-apply, and the
faults a user meets (unreachable, sealed, wrong token, too weak a token, a missing mount).

Where an overlap has to be deterministic, ``pki`` talks to Vault through `GateProxy`, a small HTTP
relay in this file that can hold chosen requests until the test lets them go.
"""

from __future__ import annotations

import base64
import http.client
import re
import secrets
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from helpers import (
    PRIVATE_KEY_MARKER, SMALL_PKI, Pki, Result, audit_lines, clean_env, commit_count, edit_toml, free_port, fullchain,
    audit_key_refs, git, git_init, git_objects, head, inventory, key_files, openssl, pem_blocks, pem_der, subject_of,
    tls_handshake, tree_snapshot, write_project,
)

pytestmark = pytest.mark.vault

#: the tests' small PKI (tests/helpers.py), with every key in Vault unless an entry says otherwise
PKI_TOML = SMALL_PKI.replace("[defaults]\n", '[defaults]\nbackend = "vault"\n', 1)

SEALED_LEAF = """
[certificate.sealed-svc]
issuer = "inter"
common_name = "sealed-svc"
hosts = ["sealed-svc.example"]
exportable = false
"""


def leaf(name: str, issuer: str = "inter", extra: str = "") -> str:
    return f'\n[certificate.{name}]\nissuer = "{issuer}"\ncommon_name = "{name}"\n{extra}'


# -- a project bound to one Vault --------------------------------------------------------------------------------

class VaultProject:
    """One git repository whose pki.toml has a ``[backend.vault]`` table with its own prefix."""

    def __init__(self, directory: Path, server: Any, prefix: str, *, address: str | None = None,
                 token: str | None = None, **options: str) -> None:
        self.dir = directory
        self.server = server
        self.prefix = prefix
        self.options = options
        self.env = clean_env(VAULT_ADDR=address or server.address, VAULT_TOKEN=token or server.token)

    @property
    def pki(self) -> Pki:
        return Pki(self.dir, self.env)

    def backend_table(self) -> str:
        lines = ["[backend.vault]", 'plugin = "vault"', f'prefix = "{self.prefix}"']
        lines += [f'{k} = "{v}"' for k, v in self.options.items()]
        return "\n".join(lines) + "\n\n"

    def write(self, body: str) -> None:
        write_project(self.dir, self.backend_table() + body)

    def append(self, text: str) -> None:
        path = self.dir / "pki.toml"
        path.write_text(path.read_text() + text)

    def apply(self, *args: str, **kw: Any):
        return self.pki.apply(*args, **kw)

    # what Vault holds under our prefix
    def kv_refs(self) -> set[str]:
        status, body = self.server.api("LIST", f"secret/metadata/{self.prefix}/keys", ok=False)
        if status == 404:
            return set()
        assert status == 200, body
        return {f"kv:{self.prefix}/keys/{k}" for k in body["data"]["keys"]}

    def transit_names(self) -> set[str]:
        status, body = self.server.api("LIST", "transit/keys", ok=False)
        if status == 404:
            return set()
        assert status == 200, body
        return {k for k in body["data"]["keys"] if k.startswith(f"{self.prefix}-")}

    def refs(self) -> dict[str, str]:
        return {name: obj["key"]["ref"] for name, obj in inventory(self.dir).items()}

    def assert_vault_matches_inventory(self) -> None:
        """Every key the inventory (and the audit log's pin) names exists in Vault, and Vault holds no
        other key under our prefix."""
        refs = set(self.refs().values()) | audit_key_refs(self.dir)
        kv = {r for r in refs if r.startswith("kv:")}
        transit = {re.fullmatch(r"transit:(.+)@\d+", r).group(1) for r in refs if r.startswith("transit:")}
        vault_kv, vault_transit = self.kv_refs(), self.transit_names()
        assert kv <= vault_kv, f"inventory keys missing from KV: {kv - vault_kv}"
        assert transit <= vault_transit, f"inventory keys missing from Transit: {transit - vault_transit}"
        assert vault_kv == kv, f"orphan keys in KV: {vault_kv - kv}"
        assert vault_transit == transit, f"orphan keys in Transit: {vault_transit - transit}"

    def snapshot(self) -> tuple[str | None, int, dict[str, bytes]]:
        """HEAD, number of commits, and every file under state/."""
        return head(self.dir), commit_count(self.dir), tree_snapshot(self.dir / "state")


@pytest.fixture
def new_project(tmp_path: Path, vault_env: Any) -> Callable[..., VaultProject]:
    """``new_project("name", server=..., **backend_options)``: a git repository with its own prefix."""

    def make(name: str = "repo", server: Any = None, *, prefix: str | None = None, init: bool = True,
             **kw: Any) -> VaultProject:
        directory = tmp_path / name
        if init:
            git_init(directory)
        return VaultProject(directory, server or vault_env, prefix or f"e2e-{secrets.token_hex(4)}", **kw)

    return make


@pytest.fixture
def file_server(bao_file_server: Any) -> Iterator[Any]:
    """The on-disk OpenBao, running and unsealed before and after the test."""

    def ready() -> None:
        if not bao_file_server.running:
            bao_file_server.start()
        if bao_file_server.api("GET", "sys/seal-status", ok=False)[1].get("sealed"):
            bao_file_server.unseal()

    ready()
    yield bao_file_server
    ready()


def one_error_line(result: Any, *secret: str) -> str:
    """The run failed with exit 1 and exactly one line on stderr, starting with ``Error:``, and
    none of ``secret`` (tokens) appears in its output."""
    assert result.returncode == 1, f"exit {result.returncode}\n{result.stdout}\n{result.stderr}"
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), f"stderr is not one Error: line:\n{result.stderr}"
    assert "Traceback" not in result.output
    for text in secret:
        assert text not in result.output
    return lines[0]


# -- a relay in front of Vault that can hold requests ------------------------------------------------------------

class GateProxy:
    """An HTTP relay to ``upstream`` that can hold chosen requests.

    ``hold(match, after=n)`` lets the first ``n`` matching requests through and holds every later one
    until `release` (with ``response=True`` the request reaches Vault and its *answer* is held); `held`
    is set while one is waiting. A request whose upstream cannot be reached, or any request after
    `die`, gets its connection dropped, as from a server that went away."""

    def __init__(self, upstream: str) -> None:
        parts = urlsplit(upstream)
        self.upstream = (parts.hostname or "127.0.0.1", parts.port or 80)
        self.requests: list[tuple[str, str]] = []
        self.held = threading.Event()
        self._gate = threading.Event()
        self._gate.set()
        self._match: Callable[[str, str], bool] | None = None
        self._after = 0
        self._seen = 0
        self._on_response = False
        self._dead = False
        self._lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.0"

            def drop(self) -> None:
                self.close_connection = True
                try:
                    self.connection.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

            def relay(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                hold, on_response = proxy._decide(self.command, self.path)
                if hold and not on_response:
                    proxy._wait()
                if proxy._dead:
                    return self.drop()
                headers = {k: v for k, v in self.headers.items()
                           if k.lower() not in ("host", "connection", "keep-alive", "content-length")}
                try:
                    conn = http.client.HTTPConnection(*proxy.upstream, timeout=30)
                    conn.request(self.command, self.path, body=body, headers=headers)
                    response = conn.getresponse()
                    data = response.read()
                    conn.close()
                except OSError:
                    return self.drop()
                if hold and on_response:
                    proxy._wait()
                if proxy._dead:
                    return self.drop()
                self.send_response(response.status)
                for k, v in response.getheaders():
                    if k.lower() not in ("connection", "transfer-encoding", "content-length", "date", "server"):
                        self.send_header(k, v)
                self.send_header("Content-Length", str(len(data)))
                self.send_header("Connection", "close")
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_PUT = do_DELETE = do_LIST = do_PATCH = do_HEAD = relay

            def log_message(self, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._server.handle_error = lambda request, address: None  # a client killed mid-answer is expected
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        self.address = f"http://127.0.0.1:{self._server.server_address[1]}"

    def _decide(self, method: str, path: str) -> tuple[bool, bool]:
        with self._lock:
            self.requests.append((method, path))
            hold = False
            if self._match is not None and self._match(method, path):
                self._seen += 1
                hold = self._seen > self._after
            return hold, self._on_response

    def _wait(self) -> None:
        self.held.set()
        self._gate.wait(60)

    def hold(self, match: Callable[[str, str], bool], *, after: int = 0, response: bool = False) -> None:
        with self._lock:
            self._match, self._after, self._seen, self._on_response = match, after, 0, response
            self.held.clear()
            self._gate.clear()

    def release(self) -> None:
        with self._lock:
            self._match = None
        self._gate.set()

    def die(self) -> None:
        """From now on every request, the held ones included, loses its connection."""
        self._dead = True
        self.release()

    def close(self) -> None:
        self.release()
        self._server.shutdown()
        self._server.server_close()


@pytest.fixture
def gate_proxy() -> Iterator[Callable[[str], GateProxy]]:
    proxies: list[GateProxy] = []

    def make(upstream: str) -> GateProxy:
        proxies.append(GateProxy(upstream))
        return proxies[-1]

    yield make
    for proxy in proxies:
        proxy.close()


def is_key_write(prefix: str) -> Callable[[str, str], bool]:
    """A request that stores a new key: a KV write under <prefix>/keys/ or a Transit key creation."""
    kv = re.compile(rf"/v1/secret/data/{re.escape(prefix)}/keys/[^/]+$")
    transit = re.compile(rf"/v1/transit/keys/{re.escape(prefix)}-[^/]+$")
    return lambda method, path: method in ("POST", "PUT") and bool(kv.match(path) or transit.match(path))


# -- openssl -------------------------------------------------------------------------------------------------------

def verify_chain(out: Path, name: str, root: Path | None = None) -> None:
    """``openssl verify`` of NAME.pem against the root, with NAME-ca.pem as the untrusted chain."""
    root = root or out / "root.pem"
    args = ["verify", "-x509_strict", "-CAfile", str(root)]
    if len(pem_blocks((out / f"{name}-ca.pem").read_bytes())) > 1:
        args += ["-untrusted", str(out / f"{name}-ca.pem")]
    result = openssl(*args, str(out / f"{name}.pem"))
    assert result.stdout.strip().endswith(": OK"), result.stdout + result.stderr


# == 1. authorities in Transit, leaves in KV: apply, export, verify, TLS, nothing secret in git ===================

def test_transit_authorities_kv_leaves_export_verify_and_tls(new_project):
    p = new_project()
    p.write(PKI_TOML + SEALED_LEAF)
    p.apply()

    refs = p.refs()
    assert set(refs) == {"root", "inter", "server", "client", "sealed-svc"}
    for name in ("root", "inter", "sealed-svc"):
        assert re.fullmatch(rf"transit:{p.prefix}-{name}-[0-9a-f]{{8}}@1", refs[name]), refs[name]
    for name in ("server", "client"):
        assert re.fullmatch(rf"kv:{p.prefix}/keys/{name}-[0-9a-f]{{8}}", refs[name]), refs[name]
    objects = inventory(p.dir)
    assert {n for n, o in objects.items() if o["key"]["exportable"]} == {"server", "client"}
    assert all(o["key"]["backend"] == "vault" and o["key"]["plugin"] == "vault" for o in objects.values())
    p.assert_vault_matches_inventory()
    # the Transit keys really are non-exportable in Vault
    for name in ("root", "inter", "sealed-svc"):
        key = p.server.api("GET", f"transit/keys/{refs[name][len('transit:'):].split('@')[0]}")[1]["data"]
        assert key["exportable"] is False and key["allow_plaintext_backup"] is False
    # pki list shows the backend
    listed = {row["name"]: row for row in p.pki("list", "--format", "json", expect=0).json()}
    assert {row["backend"] for row in listed.values()} == {"vault"} and len(listed) == 5

    out = p.dir / "out"
    # an authority's key never leaves Vault: export without --no-key fails, one line
    before = set(out.iterdir()) if out.exists() else set()
    for name in ("root", "inter", "sealed-svc"):
        refused = p.pki("export", name, "--dir", str(out))
        line = one_error_line(refused)
        assert "--no-key" in line and name in line
        assert not (out / f"{name}-key.pem").exists()
    assert (set(out.iterdir()) if out.exists() else set()) == before  # nothing written on refusal
    for name in ("root", "inter", "sealed-svc"):
        p.pki.ok("export", name, "--dir", str(out), "--no-key")
        assert not (out / f"{name}-key.pem").exists()
    for name in ("server", "client"):
        p.pki.ok("export", name, "--dir", str(out))
        key = out / f"{name}-key.pem"
        assert key.stat().st_mode & 0o777 == 0o600
        assert key.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")
        # the exported key is the one in KV, and it belongs to the certificate
        secret = p.server.api("GET", f"secret/data/{refs[name][len('kv:'):]}")[1]["data"]["data"]
        assert secret["private_key"].encode() == key.read_bytes()
        pub_from_key = openssl("pkey", "-in", str(key), "-pubout").stdout
        pub_from_cert = openssl("x509", "-in", str(out / f"{name}.pem"), "-noout", "-pubkey").stdout
        assert pub_from_key == pub_from_cert

    # each exported chain verifies with openssl, and the chains have the right length
    assert len(pem_blocks((out / "root-ca.pem").read_bytes())) == 1
    assert len(pem_blocks((out / "inter-ca.pem").read_bytes())) == 1
    for name in ("server", "client", "sealed-svc"):
        assert len(pem_blocks((out / f"{name}-ca.pem").read_bytes())) == 2
    for name in ("root", "inter", "server", "client", "sealed-svc"):
        verify_chain(out, name)
    assert (out / "root.pem").read_bytes() == (p.dir / "state" / "certs" / "root.pem").read_bytes()

    # the CRLs Transit signed verify against their authorities
    for name in ("root", "inter"):
        crl = p.dir / "state" / "crl" / f"{name}.crl"
        result = openssl("crl", "-in", str(crl), "-CAfile", str(out / f"{name}.pem"), "-noout")
        assert "verify OK" in result.stdout + result.stderr

    # a real mutual-TLS handshake with the pairs exported from KV
    tls = tls_handshake(server_cert=fullchain(out, "server"), server_key=out / "server-key.pem",
                        server_cafile=out / "root.pem", client_cafile=out / "root.pem", server_hostname="localhost",
                        client_cert=fullchain(out, "client"), client_key=out / "client-key.pem")
    assert tls.ok, tls
    assert tls.reply == "hello client-1\n" and subject_of(tls.client_cert)["commonName"] == "client-1"

    # no private key (nor the token) anywhere in state/ or in any git object, reachable or not
    exported = {name: pem_der(pem_blocks((out / f"{name}-key.pem").read_bytes())[0]) for name in ("server", "client")}
    b64 = {name: base64.b64encode(der).decode() for name, der in exported.items()}
    for path in (p.dir / "state").rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            assert not PRIVATE_KEY_MARKER.search(data), path
            assert p.server.token.encode() not in data, path
            for name, der in exported.items():
                assert der not in data and b64[name][:64].encode() not in data, (path, name)
    objects_seen = 0
    for sha, _, content in git_objects(p.dir):
        objects_seen += 1
        assert not PRIVATE_KEY_MARKER.search(content), sha
        assert p.server.token.encode() not in content, sha
        for name, der in exported.items():
            assert der not in content and b64[name][:64].encode() not in content, (sha, name)
    assert objects_seen >= 3
    assert git(p.dir, "status", "--porcelain", "state").strip() == ""

    p.pki.ok("audit", "verify")
    assert p.pki.plan_exit() == 0


# == 2. moving keys from local files into Vault ====================================================================

def test_move_root_and_leaf_from_local_to_vault(new_project):
    p = new_project()
    p.write(SMALL_PKI)  # every key local
    p.apply()
    before_refs = p.refs()
    assert all(not r.startswith(("kv:", "transit:")) for r in before_refs.values())
    before_files = key_files(p.dir)
    assert len(before_files) == 4
    certs_before = {c.name: c.read_bytes() for c in (p.dir / "state" / "certs").iterdir()}
    saved_root = p.dir / "root-before-move.pem"
    saved_root.write_bytes(certs_before["root.pem"])

    # move the root and one leaf: only their `backend` lines change
    edit_toml(p.dir, 'common_name = "Test Root CA"\n', 'common_name = "Test Root CA"\nbackend = "vault"\n')
    edit_toml(p.dir, 'common_name = "localhost"\n', 'common_name = "localhost"\nbackend = "vault"\n')
    plan = p.pki.plan_json()
    assert {(c["action"], c["name"]) for c in plan["changes"]} == {("move_key", "root"), ("move_key", "server")}
    for change in plan["changes"]:
        assert any("local" in r and "vault" in r for r in change["reasons"]), change
    commits = commit_count(p.dir)
    p.apply()
    assert commit_count(p.dir) == commits + 1

    refs = p.refs()
    assert refs["root"].startswith(f"transit:{p.prefix}-root-") and refs["root"].endswith("@1")
    assert refs["server"].startswith(f"kv:{p.prefix}/keys/server-")
    assert (refs["inter"], refs["client"]) == (before_refs["inter"], before_refs["client"])
    objects = inventory(p.dir)
    assert objects["root"]["key"]["origin"] == "imported" and objects["root"]["key"]["exportable"] is False
    assert objects["server"]["key"]["origin"] == "imported" and objects["server"]["key"]["exportable"] is True
    # no certificate changed, byte for byte
    assert {c.name: c.read_bytes() for c in (p.dir / "state" / "certs").iterdir()} == certs_before
    # the old local copies of the two moved keys are gone; the others stay
    after_files = key_files(p.dir)
    assert len(after_files) == 2 and after_files < before_files
    for gone in before_files - after_files:
        assert not (p.dir / ".pki" / "keys" / gone).exists()
    p.assert_vault_matches_inventory()
    moved = [e for e in audit_lines(p.dir) if e["action"] == "move_key"]
    assert sorted(e["name"] for e in moved) == ["root", "server"] and all(e["backend"] == "vault" for e in moved)

    # a new leaf signed by the moved root (inside Transit) and one under the local intermediate
    p.append(leaf("direct", issuer="root", extra='backend = "vault"\n') + leaf("late", extra='backend = "vault"\n'))
    plan = p.pki.plan_json()
    assert {(c["action"], c["name"]) for c in plan["changes"]} == {("create", "direct"), ("create", "late")}
    p.apply()
    assert (p.dir / "state" / "certs" / "root.pem").read_bytes() == certs_before["root.pem"]
    out = p.dir / "out"
    for name in ("direct", "late", "server"):
        p.pki.ok("export", name, "--dir", str(out))
        verify_chain(out, name, root=saved_root)  # chains to the UNCHANGED root certificate
    assert len(pem_blocks((out / "direct-ca.pem").read_bytes())) == 1
    assert key_files(p.dir) == after_files
    assert p.pki.plan_exit() == 0
    p.pki.ok("audit", "verify")
    p.assert_vault_matches_inventory()

    # a Transit key can never move back out: refused at plan time, with the reason
    edit_toml(p.dir, 'common_name = "Test Root CA"\nbackend = "vault"\n',
              'common_name = "Test Root CA"\nbackend = "local"\n')
    state = p.snapshot()
    line = one_error_line(p.pki("plan"))
    assert "authority.root" in line and "non-exportable" in line
    line = one_error_line(p.pki("apply", "--auto-approve"))
    assert "non-exportable" in line
    assert p.snapshot() == state
    assert p.refs()["root"] == refs["root"]


def test_exportable_false_on_an_existing_kv_leaf_is_not_silently_ignored(new_project):
    p = new_project()
    p.write(PKI_TOML)
    p.apply()
    edit_toml(p.dir, 'common_name = "client-1"\n', 'common_name = "client-1"\nexportable = false\n')
    result = p.pki("plan", "--detailed-exitcode")
    # a change for certificate.client (a move into Transit, a rekey) or at least a warning naming it
    assert result.returncode in (0, 1, 2) and "certificate.client" in result.output, result.output


# == 3. two applies at once from two clones against one Vault ======================================================

def _clone(origin: VaultProject, name: str, **kw: Any) -> VaultProject:
    target = origin.dir.parent / name
    git(origin.dir.parent, "clone", "-q", str(origin.dir), str(target))
    return VaultProject(target, origin.server, origin.prefix, **kw)


def test_concurrent_applies_from_two_clones(new_project, gate_proxy, vault_env):
    a = new_project("a")
    a.write(PKI_TOML)
    a.apply()
    git(a.dir, "add", "pki.toml", ".gitignore")
    git(a.dir, "commit", "-q", "-m", "pki.toml")
    proxy = gate_proxy(vault_env.address)
    b = _clone(a, "b")
    a = VaultProject(a.dir, a.server, a.prefix, address=proxy.address)  # a talks through the gate
    a.env["PKI_ACTOR"] = "alice"
    b.env["PKI_ACTOR"] = "bob"
    a.append(leaf("from-a"))
    b.append(leaf("from-b"))
    b_before = b.snapshot()

    # a takes the Vault lock, then is held at its first key write
    proxy.hold(is_key_write(a.prefix))
    first = a.pki.popen("apply", "--auto-approve")
    try:
        assert proxy.held.wait(30), f"a never reached its key write: {first.poll()}"
        # b fails at once, naming a as the holder; b's repository is untouched
        line = one_error_line(b.pki("apply", "--auto-approve"))
        assert f"(pid {first.pid})" in line and "alice" in line and "lock_timeout" in line
        assert b.snapshot() == b_before
        # b again, now willing to wait (through a relay that only watches): it polls the lock while a holds it
        watch = gate_proxy(vault_env.address)
        b.env["VAULT_ADDR"] = watch.address
        second = b.pki.popen("apply", "--auto-approve", "--lock-timeout", "60s")
        lock_reads = lambda: sum(1 for m, path in watch.requests  # noqa: E731
                                 if m == "GET" and path.endswith(f"/{a.prefix}/locks/state"))
        deadline = time.monotonic() + 20
        while lock_reads() < 2 and second.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert second.poll() is None and lock_reads() >= 2, second.communicate()
        assert not any(is_key_write(a.prefix)(m, path) for m, path in watch.requests)  # b has made nothing
        assert first.poll() is None
    finally:
        proxy.release()
    out_a, err_a = first.communicate(timeout=60)
    out_b, err_b = second.communicate(timeout=60)
    assert first.returncode == 0, out_a + err_a
    assert second.returncode == 0, out_b + err_b
    assert "Apply complete: 1 created" in out_a and "Apply complete: 1 created" in out_b

    for p, mine, other in ((a, "from-a", "from-b"), (b, "from-b", "from-a")):
        p.pki.ok("audit", "verify")
        assert p.pki.plan_exit() == 0
        names = set(inventory(p.dir))
        assert mine in names and other not in names
        refs = set(p.refs().values())
        assert {r for r in refs if r.startswith("kv:")} <= p.kv_refs()
        assert {r[len("transit:"):].split("@")[0] for r in refs if r.startswith("transit:")} <= p.transit_names()
        assert git(p.dir, "status", "--porcelain", "state").strip() == ""
    # both clones share the untouched authorities; together they reference exactly what Vault holds
    assert a.refs()["root"] == b.refs()["root"] and a.refs()["inter"] == b.refs()["inter"]
    both = set(a.refs().values()) | set(b.refs().values()) | audit_key_refs(a.dir) | audit_key_refs(b.dir)
    assert a.kv_refs() == {r for r in both if r.startswith("kv:")}
    assert a.transit_names() == {r[len("transit:"):].split("@")[0] for r in both if r.startswith("transit:")}
    # the lock is free again
    lock = vault_env.api("GET", f"secret/data/{a.prefix}/locks/state")[1]["data"]["data"]
    assert lock["state"] == "free"


# == 4. the server stopped mid-apply; pki killed mid-apply =========================================================

def _stop_server_mid_apply(p: VaultProject, proxy: GateProxy, server: Any) -> tuple[Any, set[str]]:
    """Apply four new KV leaves; once the first is in KV, stop the server and let the rest go on.
    Returns the failed run's Result and the KV keys it left."""

    kv_before = p.kv_refs()
    proxy.hold(is_key_write(p.prefix), after=1)
    run = p.pki.popen("apply", "--auto-approve")
    try:
        assert proxy.held.wait(30), "the apply never reached its second key write"
        deadline = time.monotonic() + 10
        while not p.kv_refs() - kv_before and time.monotonic() < deadline:
            time.sleep(0.05)
        left = p.kv_refs() - kv_before
        assert len(left) == 1
        server.stop()
    finally:
        proxy.release()
    out, err = run.communicate(timeout=60)
    return Result(run.returncode, out, err), left


def test_server_stopped_mid_apply_then_restarted_converges(new_project, file_server, gate_proxy):
    proxy = gate_proxy(file_server.address)
    p = new_project(server=file_server, address=proxy.address, lock_ttl="2s")
    p.write(PKI_TOML)
    p.apply()
    p.assert_vault_matches_inventory()
    for i in range(4):
        p.append(leaf(f"node-{i}"))
    before = p.snapshot()

    failed, orphans = _stop_server_mid_apply(p, proxy, file_server)
    assert failed.returncode == 1 and "Traceback" not in failed.output
    last = failed.stderr.strip().splitlines()[-1]
    assert last.startswith("Error: backend vault: cannot reach Vault at "), failed.stderr
    assert file_server.token not in failed.output
    assert p.snapshot() == before  # nothing committed, state unchanged

    file_server.start()  # the on-disk server comes back with its data, the failed run's key included
    assert orphans <= p.kv_refs()
    plan = p.pki.plan_json()
    assert {(c["action"], c["name"]) for c in plan["changes"]} == {("create", f"node-{i}") for i in range(4)}
    p.apply("--lock-timeout", "20s")  # the failed run could not free its Vault lock: its lease runs out
    assert p.pki.plan_exit() == 0
    p.pki.ok("audit", "verify")
    assert commit_count(p.dir) == before[1] + 1
    assert not orphans & set(p.refs().values())
    p.assert_vault_matches_inventory()  # the key the failed run left in KV is gone


def test_vault_gone_mid_apply_is_one_error_line(new_project, gate_proxy, vault_env):
    proxy = gate_proxy(vault_env.address)
    p = new_project(address=proxy.address, lock_ttl="1s")
    p.write(PKI_TOML)
    before = p.snapshot()
    proxy.hold(is_key_write(p.prefix))
    run = p.pki.popen("apply", "--auto-approve")
    try:
        assert proxy.held.wait(30)
    finally:
        proxy.die()  # Vault unreachable from here on, for the held request too
    out, err = run.communicate(timeout=60)

    line = one_error_line(Result(run.returncode, out, err))
    assert "cannot reach Vault" in line
    assert p.snapshot() == before


@pytest.mark.parametrize("point", ["after-keys", "after-commit"])
def test_pki_killed_mid_apply_next_run_cleans_vault_and_converges(new_project, point):
    """New keys in KV and Transit, and the client's key moving from KV to the local store, when
    ``pki`` dies: after-keys, the next run deletes what the dead one made; after-commit, it deletes
    the KV copy of the moved key. Either way it converges with nothing extra left in Vault."""
    p = new_project(lock_ttl="1s")
    p.write(PKI_TOML)
    p.apply()
    client_kv = p.refs()["client"]
    edit_toml(p.dir, 'common_name = "client-1"\n', 'common_name = "client-1"\nbackend = "local"\n')
    p.append(leaf("node-a") + leaf("node-b") + SEALED_LEAF)
    before = p.snapshot()
    kv_before, transit_before = p.kv_refs(), p.transit_names()

    crashed = p.pki("apply", "--auto-approve", env={"PKI_TEST_CRASH_AT": point})
    assert crashed.returncode == 137, crashed.output
    new_kv, new_transit = p.kv_refs() - kv_before, p.transit_names() - transit_before
    assert len(new_kv) == 2 and len(new_transit) == 1  # the keys were made before the crash
    assert client_kv in p.kv_refs()  # the moved key's old copy is deleted only after the commit
    if point == "after-keys":
        assert p.snapshot() == before
    else:
        assert commit_count(p.dir) == before[1] + 1

    # the dead run's Vault lock runs out; the next run cleans up or completes, and converges
    p.apply("--lock-timeout", "20s")
    assert p.pki.plan_exit() == 0
    p.pki.ok("audit", "verify")
    assert commit_count(p.dir) == before[1] + 1
    refs = p.refs()
    assert not refs["client"].startswith("kv:") and client_kv not in p.kv_refs()
    p.assert_vault_matches_inventory()
    if point == "after-keys":
        assert not new_kv & set(refs.values())  # the dead run's keys were deleted, new ones made
    else:
        assert new_kv <= set(refs.values())
    serials = [o["serial"] for o in inventory(p.dir).values()]
    assert len(serials) == len(set(serials))


def test_pki_killed_while_vault_acknowledges_a_key_leaves_no_orphan(new_project, gate_proxy, vault_env):
    proxy = gate_proxy(vault_env.address)
    p = new_project(address=proxy.address, lock_ttl="1s")
    p.write(PKI_TOML)
    proxy.hold(is_key_write(p.prefix), response=True)  # the writes reach Vault, their answers wait
    run = p.pki.popen("apply", "--auto-approve")
    try:
        assert proxy.held.wait(30)
        assert p.kv_refs() | p.transit_names()  # Vault has a key the run has not heard about yet
        # the run journaled its intent before asking Vault, so the next run can find the key
        assert '"intent"' in (p.dir / ".pki" / "journal" / "keys.jsonl").read_text()
        run.send_signal(signal.SIGKILL)
        run.communicate(timeout=30)
    finally:
        proxy.release()
    p.apply("--lock-timeout", "20s")
    assert p.pki.plan_exit() == 0
    p.assert_vault_matches_inventory()


# == 5. faults through the CLI: one line, exit 1, nothing committed ===============================================

def _fault_project(new_project, server=None, **kw: Any) -> VaultProject:
    p = new_project(server=server, **kw)
    p.write(PKI_TOML)
    return p


def _assert_nothing_changed(p: VaultProject, before: Any) -> None:
    assert p.snapshot() == before
    assert not (p.dir / ".pki" / "journal" / "txn.json").exists()


def test_fault_unreachable_vault(new_project):
    port = free_port()
    p = _fault_project(new_project, address=f"http://127.0.0.1:{port}")
    before = p.snapshot()
    line = one_error_line(p.pki("apply", "--auto-approve"), p.server.token)
    assert "cannot reach Vault" in line and f"127.0.0.1:{port}" in line
    _assert_nothing_changed(p, before)


def test_fault_sealed_server(new_project, file_server):
    p = _fault_project(new_project, server=file_server)
    p.apply()
    p.append(leaf("later"))
    before = p.snapshot()
    file_server.seal()
    try:
        line = one_error_line(p.pki("apply", "--auto-approve"), file_server.token)
        assert "sealed" in line and "unseal" in line
        line = one_error_line(p.pki("plan"))  # plan needs the keys too: it cannot tell while sealed
        assert "sealed" in line
    finally:
        file_server.unseal()
    _assert_nothing_changed(p, before)
    p.apply()
    assert p.pki.plan_exit() == 0


def test_fault_wrong_token_message_is_not_mangled(new_project):
    p = _fault_project(new_project, token="wrong")
    before = p.snapshot()
    line = one_error_line(p.pki("apply", "--auto-approve"))
    assert "rejected the token" in line and "(expired, revoked or wrong)" in line
    _assert_nothing_changed(p, before)


def test_fault_wrong_token(new_project):
    p = _fault_project(new_project)
    p.apply()
    p.append(leaf("later"))
    before, kv = p.snapshot(), p.kv_refs()
    token = "s.wrong-" + secrets.token_hex(8)
    p.env["VAULT_TOKEN"] = token
    line = one_error_line(p.pki("apply", "--auto-approve"), token)
    assert "rejected the token" in line and "$VAULT_TOKEN" in line
    _assert_nothing_changed(p, before)
    assert p.kv_refs() == kv


def test_fault_token_with_only_a_read_policy(new_project, vault_env):
    reader = vault_env.make_token(
        'path "secret/data/*" { capabilities = ["read"] }\n'
        'path "secret/metadata/*" { capabilities = ["read", "list"] }\n'
        'path "transit/keys/*" { capabilities = ["read"] }\n'
        'path "transit/keys" { capabilities = ["list"] }\n'
        'path "auth/token/lookup-self" { capabilities = ["read"] }\n'
        'path "sys/internal/ui/mounts/*" { capabilities = ["read"] }\n', name="pki-e2e-read-only")
    p = _fault_project(new_project, token=reader)
    before = p.snapshot()
    line = one_error_line(p.pki("apply", "--auto-approve"), reader)
    assert "permission denied" in line and "pki-apply.hcl" in line
    _assert_nothing_changed(p, before)
    assert p.kv_refs() == set() and p.transit_names() == set()


def test_fault_missing_transit_mount(new_project):
    p = _fault_project(new_project, transit_mount="no-such-transit")
    before = p.snapshot()
    line = one_error_line(p.pki("apply", "--auto-approve"))
    assert "vault secrets enable -path=no-such-transit transit" in line
    _assert_nothing_changed(p, before)
    assert p.kv_refs() == set()


def test_plan_with_a_missing_transit_mount_names_the_mount(new_project):
    p = _fault_project(new_project)
    p.apply()
    edit_toml(p.dir, f'prefix = "{p.prefix}"\n', f'prefix = "{p.prefix}"\ntransit_mount = "no-such-transit"\n')
    before = p.snapshot()
    result = p.pki("plan", "--detailed-exitcode")
    assert "rekey" not in result.stdout and "new key" not in result.stdout
    line = one_error_line(result)
    assert "vault secrets enable -path=no-such-transit transit" in line
    _assert_nothing_changed(p, before)
