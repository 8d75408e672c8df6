"""`pki import --backend vault`: an existing PKI's keys go straight into Vault, nothing is reissued."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.vault


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def _existing_pki(directory: Path) -> None:
    """A CA and a server certificate made with the openssl CLI, as scripts do."""
    directory.mkdir()
    _openssl("ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", "ca.key", cwd=directory)
    _openssl("req", "-x509", "-new", "-key", "ca.key", "-days", "3650", "-subj", "/CN=Old CA",
             "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign",
             "-out", "ca.crt", cwd=directory)
    _openssl("ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", "web.key", cwd=directory)
    _openssl("req", "-new", "-key", "web.key", "-subj", "/CN=web.internal", "-out", "web.csr", cwd=directory)
    ext = directory / "web.ext"
    ext.write_text("basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\n"
                   "extendedKeyUsage=serverAuth\nsubjectAltName=DNS:web.internal\n")
    _openssl("x509", "-req", "-in", "web.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
             "-days", "365", "-extfile", "web.ext", "-out", "web.crt", cwd=directory)


def test_import_into_vault_then_nothing_to_do(tmp_path, vault_env):
    prefix = f"imp{time.monotonic_ns() % 10**9}"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VAULT_", "GIT_"))}
    env.update(VAULT_ADDR=vault_env.address, VAULT_TOKEN=vault_env.token, NO_COLOR="1",
               GIT_CONFIG_GLOBAL="/dev/null", GIT_AUTHOR_NAME="ci", GIT_AUTHOR_EMAIL="ci@example.invalid",
               GIT_COMMITTER_NAME="ci", GIT_COMMITTER_EMAIL="ci@example.invalid")

    def pki(*args: str, code: int = 0) -> subprocess.CompletedProcess[str]:
        done = subprocess.run([sys.executable, "-m", "pkiascode", "-C", str(tmp_path / "repo"), *args], env=env,
                              capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=120)
        assert done.returncode == code, (args, done.stdout, done.stderr)
        return done

    _existing_pki(tmp_path / "old")
    subprocess.run(["git", "init", "-q", str(tmp_path / "repo")], check=True)
    (tmp_path / "repo" / ".gitignore").write_text(".pki/\n")
    (tmp_path / "repo" / "pki.toml").write_text(
        f'# our PKI\n[backend.vault]\nplugin = "vault"\nprefix = "{prefix}"\n')
    out = pki("import", str(tmp_path / "old"), "--backend", "vault").stdout
    assert "imported authority.ca" in out and "non-exportable" in out

    inventory = json.loads((tmp_path / "repo/state/inventory.json").read_text())["objects"]
    assert inventory["ca"]["key"]["ref"].startswith(f"transit:{prefix}-ca-")
    assert inventory["ca"]["key"]["origin"] == "imported" and not inventory["ca"]["key"]["exportable"]
    assert inventory["web"]["key"]["ref"].startswith(f"kv:{prefix}/keys/web-")
    assert (tmp_path / "repo/state/certs/ca.pem").read_bytes().strip() == \
        (tmp_path / "old/ca.crt").read_bytes().strip()
    assert "# our PKI" in (tmp_path / "repo/pki.toml").read_text()
    assert pki("plan", "--detailed-exitcode").returncode == 0

    # a new leaf is signed inside Vault by the imported CA key, and chains to the original CA file
    with open(tmp_path / "repo/pki.toml", "a") as f:
        f.write('\n[certificate.api]\nissuer = "ca"\nhosts = ["api.internal"]\nbackend = "vault"\n')
    pki("apply", "--auto-approve")
    subprocess.run(["openssl", "verify", "-CAfile", str(tmp_path / "old/ca.crt"),
                    str(tmp_path / "repo/state/certs/api.pem")], check=True, capture_output=True)
    refused = pki("export", "ca", "--dir", str(tmp_path / "out"), code=1)
    assert "--no-key" in refused.stderr
