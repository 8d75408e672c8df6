"""Real TLS handshakes with certificates made and exported by ``pki``: mutual TLS through Python's
``ssl`` (OpenSSL underneath) and through ``openssl s_server``/``s_client``."""

from __future__ import annotations

import socket
import ssl
import subprocess
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from helpers import SMALL_PKI, Pki, clean_env, git_init, pem_blocks, write_project


@dataclass
class Exported:
    dir: Path

    def cert(self, name: str) -> str:
        return str(self.dir / f"{name}.pem")

    def key(self, name: str) -> str:
        return str(self.dir / f"{name}-key.pem")

    def fullchain(self, name: str) -> str:
        """The certificate followed by its intermediates (not the root), as a TLS peer sends it."""
        path = self.dir / f"{name}-fullchain.pem"
        if not path.exists():
            chain = pem_blocks((self.dir / f"{name}-ca.pem").read_bytes())[:-1]
            path.write_bytes((self.dir / f"{name}.pem").read_bytes() + b"".join(chain))
        return str(path)

    @property
    def root(self) -> str:
        return str(self.dir / "root.pem")


def _make_pki(base: Path, name: str, toml: str = SMALL_PKI) -> Exported:
    directory = git_init(base / name)
    write_project(directory, toml)
    pki = Pki(directory, clean_env())
    pki.apply()
    out = directory / "export"
    for entry in ("root", "server", "client"):
        pki.ok("export", entry, "--dir", str(out))
    return Exported(out)


@pytest.fixture(scope="module")
def ours(tmp_path_factory: pytest.TempPathFactory) -> Exported:
    return _make_pki(tmp_path_factory.mktemp("tls"), "ours")


@pytest.fixture(scope="module")
def theirs(tmp_path_factory: pytest.TempPathFactory) -> Exported:
    """Another PKI with the same names and subjects, but its own keys."""
    return _make_pki(tmp_path_factory.mktemp("tls"), "theirs")


@dataclass
class ServerOutcome:
    peer: dict[str, Any] | None = None
    error: BaseException | None = None
    done: threading.Event = field(default_factory=threading.Event)


def serve_once(pki: Exported) -> tuple[int, ServerOutcome, threading.Thread]:
    """A TLS server on 127.0.0.1 requiring a client certificate from ``pki``'s root; it answers one
    client with ``hello <client CN>``."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(pki.fullchain("server"), pki.key("server"))
    ctx.load_verify_locations(cafile=pki.root)
    ctx.verify_mode = ssl.CERT_REQUIRED
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(20)
    port = listener.getsockname()[1]
    outcome = ServerOutcome()

    def run() -> None:
        try:
            conn, _ = listener.accept()
            conn.settimeout(20)
            with ctx.wrap_socket(conn, server_side=True) as tls:
                outcome.peer = tls.getpeercert()
                subject = dict(x[0] for x in outcome.peer["subject"])
                tls.sendall(f"hello {subject['commonName']}\n".encode())
                tls.recv(16)
        except BaseException as e:  # noqa: BLE001 - reported to the test
            outcome.error = e
        finally:
            listener.close()
            outcome.done.set()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return port, outcome, thread


def connect(port: int, trust: Exported, client: Exported | None, hostname: str) -> tuple[str, dict[str, Any]]:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(cafile=trust.root)
    if client is not None:
        ctx.load_cert_chain(client.fullchain("client"), client.key("client"))
    with socket.create_connection(("127.0.0.1", port), timeout=20) as raw:
        with ctx.wrap_socket(raw, server_hostname=hostname) as tls:
            server_cert = tls.getpeercert()
            data = b""
            while not data.endswith(b"\n"):
                chunk = tls.recv(64)
                if not chunk:
                    break
                data += chunk
            tls.sendall(b"bye")
            return data.decode(), server_cert


@pytest.mark.parametrize("hostname", ["localhost", "127.0.0.1"])
def test_mutual_tls_with_exported_server_and_client(ours, hostname):
    port, outcome, thread = serve_once(ours)
    reply, server_cert = connect(port, ours, ours, hostname)
    thread.join(20)
    assert outcome.error is None, outcome.error
    assert reply == "hello client-1\n"
    client_subject = dict(x[0] for x in outcome.peer["subject"])
    assert client_subject["commonName"] == "client-1"
    assert client_subject["organizationalUnitName"] == "clients"
    assert client_subject["organizationName"] == "pkiascode tests"
    issuer = dict(x[0] for x in outcome.peer["issuer"])
    assert issuer["commonName"] == "Test Intermediate CA"
    assert dict(x[0] for x in server_cert["subject"])["commonName"] == "localhost"
    assert ("IP Address", "127.0.0.1") in server_cert["subjectAltName"]


def _refused(port: int, outcome: ServerOutcome, attempt: Callable[[], Any]) -> None:
    try:
        reply, _ = attempt()
    except (ssl.SSLError, ConnectionError, OSError):
        reply = None
    outcome.done.wait(20)
    assert reply in (None, ""), f"the server answered: {reply!r}"
    assert isinstance(outcome.error, ssl.SSLError), outcome.error
    assert outcome.peer is None


def test_client_certificate_from_another_pki_is_refused(ours, theirs):
    port, outcome, _ = serve_once(ours)
    _refused(port, outcome, lambda: connect(port, ours, theirs, "localhost"))
    assert "certificate" in str(outcome.error).lower() or "unknown ca" in str(outcome.error).lower()


def test_client_without_certificate_is_refused(ours):
    port, outcome, _ = serve_once(ours)
    _refused(port, outcome, lambda: connect(port, ours, None, "localhost"))


def test_client_refuses_a_server_from_another_pki(ours, theirs):
    port, outcome, _ = serve_once(theirs)
    with pytest.raises(ssl.SSLCertVerificationError):
        connect(port, ours, ours, "localhost")
    outcome.done.wait(20)


def test_client_refuses_a_wrong_hostname(ours):
    port, outcome, _ = serve_once(ours)
    with pytest.raises(ssl.SSLCertVerificationError, match="match|mismatch"):
        connect(port, ours, ours, "not-localhost.example")
    outcome.done.wait(20)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("client_pki", ["ours", "theirs"])
def test_openssl_s_server_and_s_client(ours, theirs, client_pki):
    client = ours if client_pki == "ours" else theirs
    port = _free_port()
    server = subprocess.Popen(
        ["openssl", "s_server", "-accept", f"127.0.0.1:{port}", "-naccept", "1",
         "-cert", ours.cert("server"), "-key", ours.key("server"), "-cert_chain", ours.fullchain("server"),
         "-CAfile", ours.root, "-Verify", "3", "-verify_return_error", "-x509_strict"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=clean_env())
    try:
        banner = ""
        while "ACCEPT" not in banner:  # s_server says ACCEPT once it listens
            line = server.stdout.readline()
            assert line, f"s_server exited: {banner}"
            banner += line
        result = subprocess.run(
            ["openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-servername", "localhost",
             "-verify_hostname", "localhost", "-CAfile", ours.root, "-verify_return_error", "-x509_strict",
             "-cert", client.cert("client"), "-key", client.key("client"), "-cert_chain", client.fullchain("client"),
             "-brief"],
            input="hello from s_client\n", capture_output=True, text=True, timeout=20, env=clean_env())
        out, _ = server.communicate(timeout=20)
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
    client_out = result.stdout + result.stderr
    if client_pki == "ours":
        assert result.returncode == 0, client_out + out
        assert "Verification: OK" in client_out
        assert "CN = localhost" in client_out or "CN=localhost" in client_out
        assert "hello from s_client" in out
        # s_server verified and printed the client certificate's chain
        assert "depth=0 O = pkiascode tests, OU = clients, CN = client-1" in out
        assert "verify error" not in out
    else:
        assert "hello from s_client" not in out
        # the server refuses the client's chain; under TLS 1.3 the client may finish its side of the
        # handshake before the server's alert reaches it, so only the server's verdict is certain
        assert "certificate verify failed" in out or "verify error" in out, out + client_out
