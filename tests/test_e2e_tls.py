"""Real TLS handshakes with certificates made and exported by ``pki``: mutual TLS through Python's
``ssl`` (OpenSSL underneath) and through ``openssl s_server``/``s_client``."""

from __future__ import annotations

import re
import ssl
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from helpers import SMALL_PKI, Pki, TlsOutcome, clean_env, free_port, fullchain, new_repo, openssl, subject_of, \
    tls_handshake


@dataclass
class Exported:
    dir: Path

    def cert(self, name: str) -> str:
        return str(self.dir / f"{name}.pem")

    def key(self, name: str) -> str:
        return str(self.dir / f"{name}-key.pem")

    def fullchain(self, name: str) -> str:
        return str(fullchain(self.dir, name))

    @property
    def root(self) -> str:
        return str(self.dir / "root.pem")


def _make_pki(base: Path, name: str, toml: str = SMALL_PKI) -> Exported:
    directory = new_repo(base / name, toml)
    pki = Pki(directory, clean_env())
    pki.apply()
    out = directory / "export"
    pki.ok("export", "root", "--no-key", "--dir", str(out))  # an authority's key stays in its store
    for entry in ("server", "client"):
        pki.ok("export", entry, "--dir", str(out))
    return Exported(out)


@pytest.fixture(scope="module")
def ours(tmp_path_factory: pytest.TempPathFactory) -> Exported:
    return _make_pki(tmp_path_factory.mktemp("tls"), "ours")


@pytest.fixture(scope="module")
def theirs(tmp_path_factory: pytest.TempPathFactory) -> Exported:
    """Another PKI with the same names and subjects, but its own keys."""
    return _make_pki(tmp_path_factory.mktemp("tls"), "theirs")


def handshake(server: Exported, trust: Exported, client: Exported | None, hostname: str) -> TlsOutcome:
    """A TLS server with ``server``'s pair, requiring a client certificate from ``server``'s root;
    a client trusting ``trust``'s root connects to ``hostname``, with ``client``'s pair if any."""
    return tls_handshake(server_cert=server.fullchain("server"), server_key=server.key("server"),
                         server_cafile=server.root, client_cafile=trust.root, server_hostname=hostname,
                         client_cert=client.fullchain("client") if client else None,
                         client_key=client.key("client") if client else None)


@pytest.mark.parametrize("hostname", ["localhost", "127.0.0.1"])
def test_mutual_tls_with_exported_server_and_client(ours, hostname):
    outcome = handshake(ours, ours, ours, hostname)
    assert outcome.client_error is None, outcome.client_error
    assert outcome.server_error is None, outcome.server_error
    assert outcome.reply == "hello client-1\n"
    client_subject = subject_of(outcome.client_cert)
    assert client_subject["commonName"] == "client-1"
    assert client_subject["organizationalUnitName"] == "clients"
    assert client_subject["organizationName"] == "pkiascode tests"
    issuer = subject_of(outcome.client_cert, "issuer")
    assert issuer["commonName"] == "Test Intermediate CA"
    server_cert = outcome.server_cert
    assert subject_of(server_cert)["commonName"] == "localhost"
    assert ("IP Address", "127.0.0.1") in server_cert["subjectAltName"]


def _refused(outcome: TlsOutcome) -> None:
    assert outcome.client_error is None or isinstance(outcome.client_error, OSError), outcome.client_error
    assert outcome.reply == "", f"the server answered: {outcome.reply!r}"
    assert isinstance(outcome.server_error, ssl.SSLError), outcome.server_error
    assert outcome.client_cert is None


def test_client_certificate_from_another_pki_is_refused(ours, theirs):
    outcome = handshake(ours, ours, theirs, "localhost")
    _refused(outcome)
    assert "certificate" in str(outcome.server_error).lower() or "unknown ca" in str(outcome.server_error).lower()


def test_client_without_certificate_is_refused(ours):
    _refused(handshake(ours, ours, None, "localhost"))


def test_client_refuses_a_server_from_another_pki(ours, theirs):
    outcome = handshake(theirs, ours, ours, "localhost")
    assert isinstance(outcome.client_error, ssl.SSLCertVerificationError), outcome


def test_client_refuses_a_wrong_hostname(ours):
    outcome = handshake(ours, ours, ours, "not-localhost.example")
    assert isinstance(outcome.client_error, ssl.SSLCertVerificationError), outcome
    assert re.search("match|mismatch", str(outcome.client_error)), outcome.client_error


@pytest.mark.parametrize("client_pki", ["ours", "theirs"])
def test_openssl_s_server_and_s_client(ours, theirs, client_pki):
    client = ours if client_pki == "ours" else theirs
    port = free_port()
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
        result = openssl(
            "s_client", "-connect", f"127.0.0.1:{port}", "-servername", "localhost",
            "-verify_hostname", "localhost", "-CAfile", ours.root, "-verify_return_error", "-x509_strict",
            "-cert", client.cert("client"), "-key", client.key("client"), "-cert_chain", client.fullchain("client"),
            "-brief", input="hello from s_client\n", timeout=20, expect=None)
        out, _ = server.communicate(timeout=20)
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
    client_out = result.output
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
