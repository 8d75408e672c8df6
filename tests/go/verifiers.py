"""The two verifiers the X.509 tests prove agreement with: Go's crypto/x509 (tests/go/verify.go, built
once per test session with ``GO111MODULE=off``) and ``openssl verify -x509_strict``.

Each returns (accepted, output). Without go or openssl the test is skipped, or fails when $CI is set.
"""

from __future__ import annotations

import functools
import os
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path

from helpers import require_tool

VERIFY_GO = Path(__file__).resolve().parent / "verify.go"


@functools.cache
def _go_binary() -> str:
    go = require_tool("go")
    out = Path(tempfile.mkdtemp(prefix="pkiascode-go-")) / "verify"
    env = {**os.environ, "GO111MODULE": "off", "GOFLAGS": "", "CGO_ENABLED": "0",
           "GOCACHE": os.environ.get("GOCACHE") or str(out.parent / "cache")}
    subprocess.run([go, "build", "-o", str(out), str(VERIFY_GO)], check=True, env=env, capture_output=True)
    return str(out)


def go_verify(leaf: Path, *, roots: Sequence[Path], intermediates: Sequence[Path] = (), eku: str = "any",
              host: str = "", at: str = "") -> tuple[bool, str]:
    """Go crypto/x509 ``Certificate.Verify`` of ``leaf`` (host: a DNS name or IP address)."""
    require_tool("go")
    args = [_go_binary(), "-eku", eku]
    for r in roots:
        args += ["-roots", str(r)]
    for i in intermediates:
        args += ["-intermediates", str(i)]
    if host:
        args += ["-host", host]
    if at:
        args += ["-at", at]
    proc = subprocess.run(args + [str(leaf)], capture_output=True, text=True)
    assert proc.returncode in (0, 1), proc.stderr
    return proc.returncode == 0, proc.stdout + proc.stderr


def openssl_verify(leaf: Path, *, roots: Sequence[Path], intermediates: Sequence[Path] = (),
                   purpose: str = "", host: str = "", ip: str = "", crls: Sequence[Path] = ()) -> tuple[bool, str]:
    """``openssl verify -x509_strict`` of ``leaf``; with ``crls``, ``-crl_check_all``."""
    openssl = require_tool("openssl")
    args = [openssl, "verify", "-x509_strict"]
    with tempfile.TemporaryDirectory() as tmp:
        bundle = Path(tmp) / "roots.pem"
        bundle.write_bytes(b"".join(Path(r).read_bytes() for r in roots))
        args += ["-CAfile", str(bundle)]
        if intermediates:
            chain = Path(tmp) / "chain.pem"
            chain.write_bytes(b"".join(Path(i).read_bytes() for i in intermediates))
            args += ["-untrusted", str(chain)]
        if crls:
            crl_file = Path(tmp) / "crls.pem"
            crl_file.write_bytes(b"".join(Path(c).read_bytes() for c in crls))
            args += ["-crl_check_all", "-CRLfile", str(crl_file)]
        if purpose:
            args += ["-purpose", purpose]
        if host:
            args += ["-verify_hostname", host]
        if ip:
            args += ["-verify_ip", ip]
        proc = subprocess.run(args + [str(leaf)], capture_output=True, text=True)
    return proc.returncode == 0, proc.stdout + proc.stderr
