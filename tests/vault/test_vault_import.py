"""`pki import --backend vault`: an existing PKI's keys go straight into Vault, nothing is reissued."""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest

from helpers import Pki, clean_env, inventory, new_repo, openssl, pem_blocks, pem_der

pytestmark = pytest.mark.vault


def _existing_pki(directory: Path) -> None:
    """A CA and a server certificate made with the openssl CLI, as scripts do."""
    directory.mkdir()
    openssl("ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", "ca.key", cwd=directory)
    openssl("req", "-x509", "-new", "-key", "ca.key", "-days", "3650", "-subj", "/CN=Old CA",
            "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign",
            "-out", "ca.crt", cwd=directory)
    openssl("ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", "web.key", cwd=directory)
    openssl("req", "-new", "-key", "web.key", "-subj", "/CN=web.internal", "-out", "web.csr", cwd=directory)
    ext = directory / "web.ext"
    ext.write_text("basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\n"
                   "extendedKeyUsage=serverAuth\nsubjectAltName=DNS:web.internal\n")
    openssl("x509", "-req", "-in", "web.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
            "-days", "365", "-extfile", "web.ext", "-out", "web.crt", cwd=directory)


def test_import_into_vault_then_nothing_to_do(tmp_path, vault_env):
    prefix = f"imp{time.monotonic_ns() % 10**9}"
    repo = new_repo(tmp_path / "repo", f'# our PKI\n[backend.vault]\nplugin = "vault"\nprefix = "{prefix}"\n')
    pki = Pki(repo, clean_env(VAULT_ADDR=vault_env.address, VAULT_TOKEN=vault_env.token))

    _existing_pki(tmp_path / "old")
    out = pki.ok("import", str(tmp_path / "old"), "--backend", "vault").stdout
    assert "imported authority.ca" in out and "non-exportable" in out

    objects = inventory(repo)
    # pki import gave pki.toml an id, and the keys are in its namespace
    (pki_id,) = re.findall(r'^id = "([a-z0-9]+)"', (repo / "pki.toml").read_text(), flags=re.M)
    assert objects["ca"]["key"]["ref"].startswith(f"transit:{prefix}.{pki_id}.ca-")
    assert objects["ca"]["key"]["origin"] == "imported" and not objects["ca"]["key"]["exportable"]
    assert objects["web"]["key"]["ref"].startswith(f"kv:{prefix}/{pki_id}/keys/web-")
    # the same certificate (state/certs/ files start with a plain-text summary before the PEM block)
    assert [pem_der(b) for b in pem_blocks((repo / "state/certs/ca.pem").read_bytes())] == \
        [pem_der(b) for b in pem_blocks((tmp_path / "old/ca.crt").read_bytes())]
    assert "# our PKI" in (repo / "pki.toml").read_text()
    assert pki.ok("plan", "--detailed-exitcode").returncode == 0

    # a new leaf is signed inside Vault by the imported CA key, and chains to the original CA file
    with open(repo / "pki.toml", "a") as f:
        f.write('\n[certificate.api]\nissuer = "ca"\nhosts = ["api.internal"]\nbackend = "vault"\n')
    pki.apply()
    openssl("verify", "-CAfile", str(tmp_path / "old/ca.crt"), str(repo / "state/certs/api.pem"))
    refused = pki("export", "ca", "--dir", str(tmp_path / "out"), expect=1)
    assert "--no-key" in refused.stderr
