"""End to end through `pki`: keys move from local files to Vault by changing `backend`, and the
Vault lock, export refusal and faults reach the user as one line and exit code 1."""

from __future__ import annotations

import time

import pytest

import re

from helpers import Pki, clean_env, inventory, key_files

pytestmark = pytest.mark.vault


@pytest.fixture
def project(tmp_path, vault_env):
    prefix = f"e2e{time.monotonic_ns() % 10**9}"
    pki = Pki(tmp_path, clean_env(VAULT_ADDR=vault_env.address, VAULT_TOKEN=vault_env.token))
    pki.ok("init")
    return tmp_path, pki, prefix


def test_move_local_keys_to_vault_then_lock_and_faults(project, vault_env):
    root_dir, pki, prefix = project
    pki.apply()
    assert len(key_files(root_dir)) == 2  # (and the audit log's key)

    toml = (root_dir / "pki.toml").read_text()
    toml = toml.replace("[defaults]\n", '[defaults]\nbackend = "vault"\n', 1)
    toml += (f'\n[backend.vault]\nplugin = "vault"\nprefix = "{prefix}"\n'
             '\n[certificate.secret-svc]\nissuer = "root"\ncommon_name = "secret-svc"\nexportable = false\n')
    (root_dir / "pki.toml").write_text(toml)

    plan = pki.plan_json()
    actions = {(c["name"], c["action"]) for c in plan["changes"]}
    assert actions == {("root", "move_key"), ("example", "move_key"), ("secret-svc", "create")}

    pki.apply()
    objects = inventory(root_dir)
    refs = {name: obj["key"]["ref"] for name, obj in objects.items()}
    # `pki init` wrote a [pki] id: the keys and the lock are in this PKI's namespace
    pki_id = re.search(r'^id = "([a-z0-9]+)"', toml, re.M).group(1)
    assert refs["root"].startswith(f"transit:{prefix}.{pki_id}.root-") and refs["root"].endswith("@1")
    assert refs["example"].startswith(f"kv:{prefix}/{pki_id}/keys/example-")
    assert refs["secret-svc"].startswith(f"transit:{prefix}.{pki_id}.secret-svc-")
    assert objects["root"]["key"]["origin"] == "imported" and not objects["root"]["key"]["exportable"]
    assert not key_files(root_dir)  # the local copies are gone (the audit log keeps its key where it was pinned)
    assert pki("plan", "--detailed-exitcode").returncode == 0
    for text in (root_dir / "state").rglob("*"):
        if text.is_file():
            assert vault_env.token not in text.read_text(errors="replace")

    refused = pki("export", "root", "--dir", str(root_dir / "out"))
    assert refused.returncode == 1 and "--no-key" in refused.stderr and "Traceback" not in refused.stderr
    pki.ok("export", "example", "--dir", str(root_dir / "out"))
    assert (root_dir / "out" / "example-key.pem").read_text().startswith("-----BEGIN PRIVATE KEY-----")

    # another machine holds the Vault lock: apply says who, and stops
    _, listing = vault_env.api("LIST", f"secret/metadata/{prefix}/{pki_id}/locks")
    (lock_name,) = listing["data"]["keys"]
    path = f"secret/data/{prefix}/{pki_id}/locks/{lock_name}"
    version = vault_env.api("GET", path)[1]["data"]["metadata"]["version"]
    vault_env.api("POST", path, {"options": {"cas": version}, "data": {
        "state": "held", "user": "deploy", "host": "runner-12", "pid": "777", "since": "2026-01-01T00:00:00Z",
        "ttl": 300}})
    (root_dir / "pki.toml").write_text(toml.replace('common_name = "secret-svc"', 'common_name = "secret-svc-2"'))
    blocked = pki("apply", "--auto-approve")
    assert blocked.returncode == 1 and "deploy@runner-12 (pid 777)" in blocked.stderr
    assert len(blocked.stderr.strip().splitlines()) == 1 and "Traceback" not in blocked.stderr
    vault_env.api("POST", path, {"options": {"cas": version + 1}, "data": {"state": "free"}})

    # a wrong token: one line, exit 1, and the token nowhere
    wrong = pki("apply", "--auto-approve", env={"VAULT_TOKEN": "s.wrong-token-0815"})
    assert wrong.returncode == 1 and "rejected the token" in wrong.stderr
    assert "0815" not in wrong.stderr + wrong.stdout and "Traceback" not in wrong.stderr

    pki.apply()
    assert pki("plan", "--detailed-exitcode").returncode == 0
