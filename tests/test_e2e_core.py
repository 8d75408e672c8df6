"""End to end through the real ``pki`` command, in real git repositories, checked with real openssl.

Every test starts from nothing, runs the CLI as a user would and checks what a user relies on:
exit codes, plan JSON, the commit, the files, and that openssl agrees with what was made.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import fcntl
import json
import os
import re
import shutil
import stat
import threading
import time
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from helpers import (
    PRIVATE_KEY_MARKER, SMALL_PKI, Pki, PtyProcess, assert_state_sound, audit_lines, clean_env, commit_all,
    commit_count, crl_path, edit_toml, git, git_init, git_objects, head, inventory, key_files, key_ref, load_cert,
    load_key, openssl, pem_blocks, pem_der,
    pki_command, run_pki, spki_der, state_cert, state_crl, write_project,
)

ISO_UTC = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")


def commit_files(repo: Path, rev: str = "HEAD") -> list[str]:
    return [p for p in git(repo, "show", "--name-only", "--format=", rev).splitlines() if p]


def commit_message(repo: Path, rev: str = "HEAD") -> list[str]:
    return git(repo, "log", "-1", "--format=%B", rev).rstrip("\n").splitlines()


def assert_consistent(repo: Path, pki: Pki) -> None:
    """Every inventory object has its certificate file, its key, and the key fits the certificate;
    the audit log verifies; plan has nothing to do; state/ is committed."""
    assert_state_sound(repo, pki)
    assert_audit_chain(repo)


AUDIT_FIELDS = {"seq", "time", "actor", "action", "kind", "name", "serial", "sha256", "not_after", "backend",
                "plan", "prev", "hash"}


def assert_audit_chain(repo: Path) -> None:
    """Check the audit log independently of `pki audit verify`: fields, hashes, links, serials."""
    import hashlib

    prev = "0" * 64
    for n, line in enumerate(audit_lines(repo), 1):
        assert AUDIT_FIELDS <= set(line), (n, AUDIT_FIELDS - set(line))
        body = {k: v for k, v in line.items() if k != "hash"}
        canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
        assert line["hash"] == hashlib.sha256(canonical).hexdigest(), n
        assert line["prev"] == prev and line["seq"] == n, n
        assert line["actor"] == "pki-test@ci"
        assert ISO_UTC.match(line["time"])
        prev = line["hash"]
    inv = inventory(repo)
    for name, rec in inv.items():
        issued = [ln for ln in audit_lines(repo) if ln["name"] == name
                  and ln["action"] in ("create", "reissue", "renew", "rekey", "import")]
        assert issued and issued[-1]["serial"] == rec["serial"] and issued[-1]["sha256"] == rec["sha256"], name


# -- the whole loop, on the kubernetes-the-hard-way example ------------------------------------

K8S_NAMES = {"ca", "admin", "node-0", "node-1", "kube-proxy", "kube-scheduler", "kube-controller-manager",
             "kube-api-server", "service-accounts"}


def test_kubernetes_example_init_plan_apply_change_one_host(tmp_path, env):
    repo = tmp_path / "k8s"
    pki = Pki(repo, env)
    out = run_pki(None, "init", str(repo), "--example", "kubernetes-the-hard-way", env=env, expect=0)
    assert "initialised a git repository" in out.stdout
    assert (repo / ".git").is_dir() and ".pki/" in (repo / ".gitignore").read_text()
    pki.ok("validate")

    assert pki.plan_exit() == 2
    plan = pki.plan_json()
    assert plan["format_version"] == 1
    assert {c["name"] for c in plan["changes"]} == K8S_NAMES
    assert plan["summary"] == {"create": 9}
    assert [c["name"] for c in plan["changes"]][0] == "ca"  # parents before children

    # something unrelated is staged: apply must neither commit nor unstage it
    (repo / "notes.txt").write_text("not for the PKI commit\n")
    git(repo, "add", "notes.txt")

    pki.apply()
    assert commit_count(repo) == 1
    files = commit_files(repo)
    assert files and all(f.startswith("state/") for f in files), files
    assert {f"state/certs/{n}.pem" for n in K8S_NAMES} <= set(files)
    assert "state/inventory.json" in files and "state/audit.jsonl" in files
    assert git(repo, "diff", "--cached", "--name-only").split() == ["notes.txt"]
    msg = commit_message(repo)
    assert msg[0] == "pki apply: 9 created"
    assert msg[1] == ""
    body = [line for line in msg[2:] if line.strip() and not line.startswith("Pki-")]
    assert len(body) == 9
    trailers = git(repo, "log", "-1", "--format=%(trailers:only,unfold)").split("\n")
    assert [t.split(":")[0] for t in trailers if t] == ["Pki-Plan", "Pki-Config", "Pki-Actor"]
    assert f"Pki-Config: {git(repo, 'hash-object', 'pki.toml').strip()}" in trailers
    assert all(line.startswith("create ") for line in body)
    assert any(line.startswith("create authority.ca") for line in body)
    assert any(line.startswith("create certificate.node-0") for line in body)

    assert pki.plan_exit() == 0
    verified = openssl("verify", "-CAfile", str(repo / "state/certs/ca.pem"),
                       *[str(repo / f"state/certs/{n}.pem") for n in sorted(K8S_NAMES - {"ca"})])
    assert verified.stdout.count(": OK") == 8
    assert inventory(repo)["ca"]["key"]["algorithm"] == "rsa-4096"
    assert inventory(repo)["node-0"]["key"]["algorithm"] == "rsa-2048"

    # one host more for node-0: exactly one reissue, same key
    before_ref, before_serial = key_ref(repo, "node-0"), inventory(repo)["node-0"]["serial"]
    edit_toml(repo, 'hosts = ["node-0", "127.0.0.1"]', 'hosts = ["node-0", "node-0.cluster.local", "127.0.0.1"]')
    assert pki.plan_exit() == 2
    plan = pki.plan_json()
    assert len(plan["changes"]) == 1, plan["changes"]
    change = plan["changes"][0]
    assert (change["action"], change["kind"], change["name"]) == ("reissue", "certificate", "node-0")
    assert change["diff"]["hosts"] == {"before": ["node-0", "127.0.0.1"],
                                       "after": ["node-0", "node-0.cluster.local", "127.0.0.1"]}
    assert any("hosts" in r for r in change["reasons"])
    assert plan["summary"] == {"reissue": 1}
    text = pki.ok("plan").stdout
    assert "certificate.node-0" in text and "node-0.cluster.local" in text

    pki.apply()
    assert commit_count(repo) == 2
    assert commit_message(repo)[0] == "pki apply: 1 reissued"
    body = [line for line in commit_message(repo)[2:] if line and not line.startswith("Pki-")]
    assert len(body) == 1 and body[0].startswith("reissue certificate.node-0: ") and "hosts" in body[0]
    assert sorted(commit_files(repo)) == ["state/audit-signatures.json", "state/audit.jsonl", "state/certs/node-0.pem",
                                          "state/inventory.json"]
    assert key_ref(repo, "node-0") == before_ref
    assert inventory(repo)["node-0"]["serial"] != before_serial
    cert = state_cert(repo, "node-0")
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "node-0.cluster.local" in sans.get_values_for_type(x509.DNSName)
    assert git(repo, "diff", "--cached", "--name-only").split() == ["notes.txt"]
    assert_consistent(repo, pki)


def test_pki_toml_in_a_subdirectory_commits_only_its_state(repo, pki, env):
    (repo / "README").write_text("monorepo\n")
    git(repo, "add", "README")
    git(repo, "commit", "-q", "-m", "init")
    sub = repo / "infra" / "pki"
    write_project(sub, SMALL_PKI)
    (repo / "other.txt").write_text("staged, not ours\n")
    git(repo, "add", "other.txt")
    sub_pki = Pki(sub, env)
    sub_pki.apply()
    files = commit_files(repo)
    assert files and all(f.startswith("infra/pki/state/") for f in files), files
    assert git(repo, "diff", "--cached", "--name-only").split() == ["other.txt"]
    assert_consistent(sub, sub_pki)


def test_a_machine_without_a_git_identity_still_commits(project, pki, env):
    """A fresh CI runner has no user.name/email: the commit is made as pkiascode; with one
    configured, as that identity."""
    bare = {k: v for k, v in env.items() if not k.startswith(("GIT_AUTHOR_", "GIT_COMMITTER_"))}
    bare.update({"GIT_CONFIG_COUNT": "1", "GIT_CONFIG_KEY_0": "user.useConfigOnly", "GIT_CONFIG_VALUE_0": "true",
                 "EMAIL": ""})
    r = Pki(project, bare)("apply", "--auto-approve")
    assert r.returncode == 0, r.stderr
    assert git(project, "log", "-1", "--format=%an <%ae>|%cn <%ce>") == \
        "pkiascode <pkiascode@localhost>|pkiascode <pkiascode@localhost>\n"
    edit_toml(project, 'hosts = ["localhost", "127.0.0.1"]', 'hosts = ["localhost"]')
    pki.apply()
    assert git(project, "log", "-1", "--format=%an <%ae>") == "PKI Test <pki-test@example.invalid>\n"


# -- exported chains verify with openssl -------------------------------------------------------

def split_chain(path: Path, into: Path) -> list[Path]:
    out = []
    for i, block in enumerate(pem_blocks(path.read_bytes())):
        p = into / f"{path.stem}.{i}.pem"
        p.write_bytes(block)
        out.append(p)
    return out


def test_export_root_intermediate_leaf_chains_verify_with_openssl(applied_project, pki, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "server-key.pem").write_text("stale\n")
    os.chmod(out / "server-key.pem", 0o644)
    for name in ("root", "inter", "server", "client"):
        authority = name in ("root", "inter")  # (an authority's key is not exportable by default)
        pki.ok("export", name, "--dir", str(out), *(["--no-key"] if authority else []))
        for suffix in ("", "-ca") if authority else ("", "-key", "-ca"):
            assert (out / f"{name}{suffix}.pem").exists(), f"{name}{suffix}.pem"
        assert load_cert(out / f"{name}.pem") == state_cert(applied_project, name)
        if authority:
            assert not (out / f"{name}-key.pem").exists()
            continue
        key = out / f"{name}-key.pem"
        assert stat.S_IMODE(key.stat().st_mode) == 0o600, name
        assert key.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")
        assert spki_der(load_key(key)) == spki_der(load_cert(out / f"{name}.pem")), name

    root = applied_project / "state/certs/root.pem"
    inter = applied_project / "state/certs/inter.pem"
    # NAME-ca.pem is the issuer chain up to the root, nearest issuer first
    chain = split_chain(out / "server-ca.pem", tmp_path)
    assert [load_cert(c) for c in chain] == [load_cert(inter), load_cert(root)]
    assert load_cert(out / "inter-ca.pem") == load_cert(root) and len(pem_blocks((out / "inter-ca.pem").read_bytes())) == 1
    assert load_cert(out / "root-ca.pem") == load_cert(root) and len(pem_blocks((out / "root-ca.pem").read_bytes())) == 1

    for leaf, purpose in (("server", "sslserver"), ("client", "sslclient")):
        r = openssl("verify", "-x509_strict", "-purpose", purpose, "-CAfile", str(root),
                    "-untrusted", str(chain[0]), str(out / f"{leaf}.pem"))
        assert r.stdout.strip().endswith(": OK")
        r = openssl("verify", "-x509_strict", "-CAfile", str(out / f"{leaf}-ca.pem"), str(out / f"{leaf}.pem"))
        assert r.stdout.strip().endswith(": OK")
        # and with the CRLs of both authorities: nothing revoked yet
        openssl("verify", "-x509_strict", "-crl_check_all", "-CAfile", str(out / f"{leaf}-ca.pem"),
                "-CRLfile", str(crl_path(applied_project, "inter")), "-CRLfile", str(crl_path(applied_project, "root")),
                str(out / f"{leaf}.pem"))
    openssl("verify", "-x509_strict", "-CAfile", str(out / "inter-ca.pem"), str(out / "inter.pem"))
    # the chain really has three levels: the root alone does not verify the leaf
    assert openssl("verify", "-CAfile", str(root), str(out / "server.pem"), expect=None).returncode != 0
    # the intermediate is a CA limited to path length 0, the leaf is not a CA
    text = openssl("x509", "-in", str(inter), "-noout", "-text").stdout
    assert re.search(r"CA:TRUE, pathlen:0", text)
    assert "CA:TRUE" not in openssl("x509", "-in", str(out / "server.pem"), "-noout", "-text").stdout


def test_export_no_key_writes_no_key_and_missing_key_is_a_clear_error(applied_project, pki, tmp_path):
    out = tmp_path / "nokey"
    r = pki.ok("export", "server", "--dir", str(out), "--no-key")
    assert sorted(p.name for p in out.iterdir()) == ["server-ca.pem", "server.pem"]
    assert "PRIVATE KEY" not in r.output
    (applied_project / ".pki/keys" / key_ref(applied_project, "server")).unlink()
    out2 = tmp_path / "withkey"
    r = pki("export", "server", "--dir", str(out2), expect=1)
    assert r.stderr.startswith("Error: ") and len(r.stderr.strip().splitlines()) == 1
    assert "missing" in r.stderr
    assert not (out2 / "server-key.pem").exists()
    r = pki("export", "nosuch", "--dir", str(out2), expect=1)
    assert "nosuch" in r.stderr


# -- keys never reach git ----------------------------------------------------------------------

def test_no_private_key_bytes_in_any_git_object(project, pki, tmp_path):
    seen_keys: dict[str, bytes] = {}
    secrets: dict[str, bytes] = {}
    outputs: list[str] = []

    def collect() -> None:
        for p in (project / ".pki" / "keys").iterdir():
            data = p.read_bytes()
            seen_keys[p.name] = pem_der(pem_blocks(data)[0])
            key = serialization.load_pem_private_key(data, password=None)
            if isinstance(key, ed25519.Ed25519PrivateKey):  # (the audit log's key)
                secrets[p.name] = key.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                                                    serialization.NoEncryption())
                continue
            numbers = key.private_numbers()
            secret = numbers.private_value if hasattr(numbers, "private_value") else numbers.d
            secrets[p.name] = secret.to_bytes((secret.bit_length() + 7) // 8, "big")

    outputs.append(pki.apply().output)
    collect()
    edit_toml(project, 'hosts = ["localhost", "127.0.0.1"]', 'hosts = ["localhost", "127.0.0.1", "::1"]')
    outputs.append(pki.ok("plan", "--out", str(tmp_path / "p.json")).output)
    outputs.append(pki.ok("apply", str(tmp_path / "p.json")).output)
    outputs.append(pki.apply("--replace", "client").output)  # a new key, the old one revoked
    collect()
    outputs.append(pki.apply("--replace", "inter").output)  # a new authority key: everything below reissued
    collect()
    assert len(seen_keys) == 7  # six of the PKI's, and the audit log's
    assert commit_count(project) == 4

    objects = list(git_objects(project))
    assert len(objects) > 20
    for sha, kind, content in objects:
        assert not PRIVATE_KEY_MARKER.search(content), f"{kind} {sha} holds a PEM private key"
        for name, der in seen_keys.items():
            assert der not in content, f"{kind} {sha} holds the DER of key {name}"
            assert secrets[name] not in content, f"{kind} {sha} holds the private value of key {name}"
    plan_file = (tmp_path / "p.json").read_bytes()
    assert not PRIVATE_KEY_MARKER.search(plan_file)
    for text in outputs:
        assert "PRIVATE KEY" not in text
    for der in seen_keys.values():
        b64 = base64.b64encode(der)[40:80]  # a stretch of the PEM body
        assert all(b64 not in content for _, _, content in objects)
        assert b64 not in plan_file
    assert_consistent(project, pki)


def test_apply_refuses_when_key_directory_is_not_git_ignored(project, pki):
    (project / ".gitignore").write_text("# nothing ignored\n")
    r = pki("apply", "--auto-approve", expect=1)
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "not git-ignored" in r.stderr and ".pki" in r.stderr
    assert not (project / ".pki" / "keys").exists()
    assert not (project / "state" / "inventory.json").exists()
    assert head(project) is None
    # a custom key directory outside .pki/ must be ignored as well
    (project / ".gitignore").write_text(".pki/\n")
    edit_toml(project, "[defaults]", '[backend.files]\nplugin = "local"\npath = "keys"\n\n[defaults]\nbackend = "files"')
    r = pki("apply", "--auto-approve", expect=1)
    assert "keys/" in r.stderr and "not git-ignored" in r.stderr
    assert not (project / "keys").exists() and head(project) is None
    (project / ".gitignore").write_text(".pki/\n/keys/\n")
    pki.apply()
    assert all(f.startswith("state/") for f in commit_files(project))


def test_apply_refuses_to_commit_a_private_key_planted_in_state(applied_project, pki):
    first = head(applied_project)
    planted = applied_project / "state" / "certs" / "x.pem"
    planted.write_bytes((applied_project / ".pki/keys" / key_ref(applied_project, "server")).read_bytes())
    edit_toml(applied_project, 'common_name = "client-1"', 'common_name = "client-2"')
    before = inventory(applied_project)
    r = pki("apply", "--auto-approve", expect=1)
    # refused before anything is signed or written
    assert "refusing to apply" in r.stderr and "state/certs/x.pem" in r.stderr
    assert "private key" in r.stderr and "nothing was changed" in r.stderr
    assert "BEGIN" not in r.output
    assert head(applied_project) == first
    assert inventory(applied_project) == before
    assert not (applied_project / ".pki/journal/txn.json").exists()
    assert "state/certs/x.pem" not in git(applied_project, "diff", "--cached", "--name-only")
    assert all("x.pem" not in f for f in git(applied_project, "log", "--all", "--name-only", "--format=").split())
    # once the key is gone, apply makes the change
    planted.unlink()
    pki.apply()
    assert head(applied_project) != first
    assert commit_message(applied_project)[0] == "pki apply: 1 reissued"
    assert_consistent(applied_project, pki)


def test_apply_refuses_to_commit_a_der_private_key_planted_in_state(applied_project, pki):
    key = serialization.load_pem_private_key(
        (applied_project / ".pki/keys" / key_ref(applied_project, "server")).read_bytes(), password=None)
    (applied_project / "state/certs/x.der").write_bytes(
        key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
                          serialization.NoEncryption()))
    edit_toml(applied_project, 'common_name = "client-1"', 'common_name = "client-2"')
    pki("apply", "--auto-approve")
    assert "state/certs/x.der" not in git(applied_project, "log", "--all", "--name-only", "--format=")


# -- the audit log -----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def audited(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A project after two applies (create, then reissue): 7 audit lines. Tests tamper with a copy."""
    directory = git_init(tmp_path_factory.mktemp("audited") / "repo")
    write_project(directory, SMALL_PKI)
    pki = Pki(directory, clean_env())
    pki.apply()
    edit_toml(directory, 'hosts = ["localhost", "127.0.0.1"]', 'hosts = ["localhost", "127.0.0.1", "::1"]')
    pki.apply()
    return directory


def _applied_twice(project: Path, pki: Pki, template: Path) -> list[str]:
    shutil.rmtree(project)
    shutil.copytree(template, project, symlinks=True)
    r = pki.ok("audit", "verify")
    lines = (project / "state/audit.jsonl").read_text().splitlines()
    assert f"{len(lines)} entries" in r.stdout
    assert len(lines) == 7  # 4 created, 2 CRLs, 1 reissued
    return lines


def _write_lines(project: Path, lines: list[str]) -> None:
    (project / "state/audit.jsonl").write_text("\n".join(lines) + "\n")


def _tamper_changed(project: Path, lines: list[str]) -> None:
    obj = json.loads(lines[1])
    obj["actor"] = "mallory@evil"
    lines[1] = json.dumps(obj, sort_keys=True)
    _write_lines(project, lines)


def _tamper_changed_and_rehashed(project: Path, lines: list[str]) -> None:
    import hashlib

    obj = json.loads(lines[1])
    obj["actor"] = "mallory@evil"
    body = {k: v for k, v in obj.items() if k != "hash"}
    obj["hash"] = hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":"),
                                            ensure_ascii=False).encode()).hexdigest()
    lines[1] = json.dumps(obj, sort_keys=True)
    _write_lines(project, lines)


def _tamper_removed_first(project: Path, lines: list[str]) -> None:
    _write_lines(project, lines[1:])


def _tamper_removed_middle(project: Path, lines: list[str]) -> None:
    _write_lines(project, lines[:1] + lines[2:])


def _tamper_reordered(project: Path, lines: list[str]) -> None:
    lines[1], lines[2] = lines[2], lines[1]
    _write_lines(project, lines)


def _inventory_edit(project: Path, fn) -> None:
    path = project / "state/inventory.json"
    inv = json.loads(path.read_text())
    fn(inv["objects"])
    path.write_text(json.dumps(inv, indent=1))


def _tamper_inventory_serial(project: Path, lines: list[str]) -> None:
    _inventory_edit(project, lambda o: o["client"].update(serial="1234abcd"))


def _tamper_inventory_removed(project: Path, lines: list[str]) -> None:
    _inventory_edit(project, lambda o: o.pop("client"))


def _tamper_inventory_added(project: Path, lines: list[str]) -> None:
    _inventory_edit(project, lambda o: o.update(ghost=dict(o["client"], name="ghost")))


@pytest.mark.parametrize("tamper, wanted", [
    (_tamper_changed, ["state/audit.jsonl:2:", "changed"]),
    (_tamper_changed_and_rehashed, ["state/audit.jsonl:3:", "prev"]),
    (_tamper_removed_first, ["state/audit.jsonl:1:"]),
    (_tamper_removed_middle, ["state/audit.jsonl:2:", "removed"]),
    (_tamper_reordered, ["state/audit.jsonl:2:", "reordered"]),
    (_tamper_inventory_serial, ["certificate.client", "1234abcd", "line "]),
    (_tamper_inventory_removed, ["certificate.client", "missing from the inventory", "line "]),
    (_tamper_inventory_added, ["certificate.ghost", "no audit record"]),
], ids=["changed", "changed-rehashed", "removed-first", "removed-middle", "reordered", "inventory-serial",
        "inventory-removed", "inventory-added"])
def test_audit_verify_detects_tampering(project, pki, audited, tamper, wanted):
    lines = _applied_twice(project, pki, audited)
    tamper(project, list(lines))
    r = pki("audit", "verify", expect=1)
    for text in wanted:
        assert text in r.stderr, r.stderr
    assert r.stdout == ""


def test_audit_verify_detects_a_removed_last_line(applied_project, pki):
    lines = (applied_project / "state/audit.jsonl").read_text().splitlines()
    assert json.loads(lines[-1])["action"] == "update_crl"
    _write_lines(applied_project, lines[:-1])
    pki("audit", "verify", expect=1)


# -- saved plans, approval ---------------------------------------------------------------------

def test_saved_plan_applies_and_is_refused_when_stale(project, pki, tmp_path):
    p1 = tmp_path / "p1.json"
    r = pki("plan", "--out", str(p1), "--detailed-exitcode", expect=2)
    assert "pki apply" in r.stdout
    saved = json.loads(p1.read_text())
    assert saved["format_version"] == 1 and len(saved["changes"]) == 4
    # a saved plan needs no terminal and no --auto-approve
    pki.ok("apply", str(p1))
    assert commit_message(project)[0] == "pki apply: 4 created"
    assert pki.plan_exit() == 0
    # applying the same plan again: state changed since it was made
    r = pki("apply", str(p1), expect=1)
    assert "stale" in r.stderr and "state changed" in r.stderr
    assert commit_count(project) == 1

    # pki.toml changed after the plan was made
    edit_toml(project, 'common_name = "client-1"', 'common_name = "client-2"')
    p2 = tmp_path / "p2.json"
    pki("plan", "--out", str(p2), expect=0)
    edit_toml(project, 'common_name = "client-2"', 'common_name = "client-3"')
    before = (project / "state/inventory.json").read_bytes()
    r = pki("apply", str(p2), expect=1)
    assert "stale" in r.stderr and "pki.toml changed" in r.stderr
    assert (project / "state/inventory.json").read_bytes() == before and commit_count(project) == 1

    # state changed after the plan was made (another apply)
    p3 = tmp_path / "p3.json"
    pki("plan", "--out", str(p3), expect=0)
    edit_toml(project, 'hosts = ["localhost", "127.0.0.1"]', 'hosts = ["localhost", "127.0.0.1", "::1"]')
    pki.apply()
    edit_toml(project, 'hosts = ["localhost", "127.0.0.1", "::1"]', 'hosts = ["localhost", "127.0.0.1"]')
    r = pki("apply", str(p3), expect=1)
    assert "stale" in r.stderr and "state changed" in r.stderr

    # drift made after the plan (a deleted certificate file) also makes it stale
    p4 = tmp_path / "p4.json"
    pki("plan", "--out", str(p4), expect=0)
    (project / "state/certs/root.pem").unlink()
    r = pki("apply", str(p4), expect=1)
    assert "stale" in r.stderr
    git(project, "checkout", "--", "state/certs/root.pem")

    r = pki("apply", str(p4), "--replace", "server", expect=1)
    assert "does not replace it" in r.stderr
    r = pki("apply", str(tmp_path / "nope.json"), expect=1)
    assert "not found" in r.stderr
    (tmp_path / "bad.json").write_text("{}")
    r = pki("apply", str(tmp_path / "bad.json"), expect=1)
    assert "not a pkiascode plan" in r.stderr


def test_apply_without_terminal_needs_auto_approve_or_plan(project, pki):
    r = pki("apply", expect=1)
    assert r.stderr.startswith("Error: ") and len(r.stderr.strip().splitlines()) == 1
    assert "terminal" in r.stderr and "--auto-approve" in r.stderr
    assert not (project / ".pki" / "keys").exists() or not list((project / ".pki" / "keys").iterdir())
    assert not (project / "state" / "inventory.json").exists() and head(project) is None


def test_apply_on_a_terminal_asks_and_only_yes_applies(project, pki):
    cmd = pki_command() + ["-C", str(project), "apply"]
    term = PtyProcess(cmd, pki.env)
    term.expect("Only 'yes' will be accepted")
    assert "4 to create" in term.text
    term.send("y\n")
    assert term.wait() == 1
    assert "cancelled" in term.text and "nothing changed" in term.text
    assert head(project) is None and not key_files(project)
    assert not (project / "state" / "inventory.json").exists()

    term = PtyProcess(cmd, pki.env)
    term.expect("Only 'yes' will be accepted")
    term.send("yes\n")
    assert term.wait() == 0, term.text
    assert "Apply complete: 4 created" in term.text
    assert "\x1b[" not in term.text  # NO_COLOR is honoured on a terminal
    assert_consistent(project, pki)


# -- list, show --------------------------------------------------------------------------------

LIST_PKI = SMALL_PKI + """
[certificate.long]
issuer = "inter"
common_name = "long.internal"
hosts = ["long.internal"]
validity = "420d"
renew_before = "30d"
"""


def test_list_json_fields_and_status_at_a_later_time(repo, pki):
    write_project(repo, LIST_PKI)
    assert pki.ok("list").stdout.startswith("Nothing in state")
    pki.apply()
    rows = pki.ok("list", "--format", "json").json()
    assert [r["kind"] for r in rows] == ["authority"] * 2 + ["certificate"] * 3  # authorities first
    by_name = {r["name"]: r for r in rows}
    assert set(by_name) == {"root", "inter", "server", "client", "long"}
    for name, row in by_name.items():
        for field in ("name", "kind", "issuer", "serial", "sha256", "not_before", "not_after", "status",
                      "backend", "key"):
            assert field in row, (name, field)
        cert = state_cert(repo, name)
        assert re.fullmatch(r"[0-9a-f]+", row["serial"]) and int(row["serial"], 16) == cert.serial_number
        assert re.fullmatch(r"[0-9a-f]{64}", row["sha256"])
        assert row["sha256"] == cert.fingerprint(hashes.SHA256()).hex()
        assert ISO_UTC.match(row["not_before"]) and ISO_UTC.match(row["not_after"])
        assert row["not_after"] == cert.not_valid_after_utc.strftime("%Y-%m-%dT%H:%M:%SZ")
        assert row["not_before"] == cert.not_valid_before_utc.strftime("%Y-%m-%dT%H:%M:%SZ")
        assert row["status"] == "ok"
        assert row["key"] == "ecdsa-p256"
        assert row["backend"] == inventory(repo)[name]["key"]["backend"]
    assert by_name["root"]["kind"] == "authority" and by_name["root"]["issuer"] is None
    assert by_name["server"]["kind"] == "certificate" and by_name["server"]["issuer"] == "inter"
    serials = [int(r["serial"], 16) for r in rows]
    assert len(set(serials)) == 5 and all(s > 0 for s in serials)
    assert max(s.bit_length() for s in serials) >= 64  # random serials of at least 64 bits

    later = {r["name"]: r for r in pki.ok("list", "--format", "json", "--at", "+400d").json()}
    assert later["server"]["status"] == "expired" and later["client"]["status"] == "expired"
    assert later["server"]["days_left"] < 0
    assert later["long"]["status"] == "renew_due"
    assert later["root"]["status"] == "ok" and later["inter"]["status"] == "ok"
    soon = {r["name"]: r for r in pki.ok("list", "--format", "json", "--at", "+85d").json()}
    assert soon["server"]["status"] == "renew_due" and soon["long"]["status"] == "ok"
    at_date = (dt.datetime.now(dt.timezone.utc) + dt.timedelta(days=400)).strftime("%Y-%m-%d")
    assert {r["name"]: r["status"] for r in pki.ok("list", "--format", "json", "--at", at_date).json()} == \
        {n: r["status"] for n, r in later.items()}
    text = pki.ok("list", "--at", "+400d").stdout
    assert text.splitlines()[0].split()[:3] == ["NAME", "KIND", "ISSUER"]
    assert re.search(r"^server\s.*\sexpired\s", text, re.M)
    assert re.search(r"^long\s.*\srenew_due\s", text, re.M)
    r = pki("list", "--at", "tomorrow", expect=1)
    assert "--at" in r.stderr

    # plan agrees: at +85d the 90-day certificates are due for renewal, at +400d they expired
    plan = pki.plan_json("--at", "+85d")
    assert {c["name"]: c["action"] for c in plan["changes"] if c["action"] != "update_crl"} == \
        {"server": "renew", "client": "renew"}
    plan = pki.plan_json("--at", "+400d")
    actions = {c["name"]: c["action"] for c in plan["changes"]}
    assert actions["server"] == actions["client"] == actions["long"] == "renew"
    assert any("expired" in r for c in plan["changes"] if c["name"] == "server" for r in c["reasons"])


def test_show_one_object_in_full(applied_project, pki):
    inv = inventory(applied_project)
    out = pki.ok("show", "server").stdout
    fields = dict(line.split(":", 1) for line in out.splitlines() if ":" in line and not line.startswith(" "))
    fields = {k.strip(): v.strip() for k, v in fields.items()}
    assert fields["Name"] == "certificate.server"
    assert "CN=localhost" in fields["Subject"] and "O=pkiascode tests" in fields["Subject"]
    assert "CN=Test Intermediate CA" in fields["Issuer"]
    assert fields["Chain"] == "server → inter → root"
    assert fields["Serial"] == inv["server"]["serial"]
    assert fields["SHA-256"] == inv["server"]["sha256"]
    assert "DNS:localhost" in fields["SANs"] and "IP:127.0.0.1" in fields["SANs"]
    assert "server auth" in fields["Usages"] and "client auth" in fields["Usages"]
    assert fields["CA"] == "no"
    assert "ecdsa-p256" in fields["Key"] and inv["server"]["key"]["ref"] in fields["Key"]
    assert "PRIVATE" not in out
    inter = pki.ok("show", "inter").stdout
    assert re.search(r"^CA:\s+yes, path_length 0$", inter, re.M)
    assert re.search(r"^CRL:\s+number 1", inter, re.M)
    r = pki("show", "servr", expect=1)
    assert "servr" in r.stderr and "server" in r.stderr  # did you mean


# -- drift -------------------------------------------------------------------------------------

def _garble(path: Path) -> None:
    """Change one base64 character in the middle of the PEM body: still PEM, another DER."""
    data = bytearray(path.read_bytes())
    begin = data.index(b"-----BEGIN")  # (the text lines before it are not the certificate)
    i = begin + (len(data) - begin) // 2
    while data[i] in b"\r\n=-":
        i += 1
    data[i] = ord("A") if data[i] != ord("A") else ord("B")
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("damage, why", [
    (lambda p: p.unlink(), "is missing"),
    (_garble, "does not match the inventory"),
    (lambda p: p.write_text("hello\n"), "is not a PEM file"),
], ids=["deleted", "edited", "garbage"])
def test_drifted_certificate_file_is_reissued(applied_project, pki, damage, why):
    ref, serial = key_ref(applied_project, "server"), inventory(applied_project)["server"]["serial"]
    damage(applied_project / "state/certs/server.pem")
    assert pki.plan_exit() == 2
    plan = pki.plan_json()
    assert [(c["action"], c["name"]) for c in plan["changes"]] == [("reissue", "server")]
    reasons = " ".join(plan["changes"][0]["reasons"])
    assert "state/certs/server.pem" in reasons and why in reasons
    pki.apply()
    assert key_ref(applied_project, "server") == ref and inventory(applied_project)["server"]["serial"] != serial
    openssl("verify", "-CAfile", str(applied_project / "state/certs/root.pem"), "-untrusted",
            str(applied_project / "state/certs/inter.pem"), str(applied_project / "state/certs/server.pem"))
    assert_consistent(applied_project, pki)


def test_edited_certificate_with_restored_mtime_is_still_drift(applied_project, pki):
    assert pki.plan_exit() == 0  # remembered as nothing to do
    path = applied_project / "state/certs/server.pem"
    before = path.stat()
    _garble(path)
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert path.stat().st_size == before.st_size
    assert pki.plan_exit() == 2


def test_missing_leaf_key_is_rekeyed(applied_project, pki):
    old = key_ref(applied_project, "client")
    (applied_project / ".pki/keys" / old).unlink()
    assert "client" in pki("plan", expect=1).stderr  # replaced only when asked for
    plan = pki.plan_json("--rekey-missing")
    assert [(c["action"], c["name"]) for c in plan["changes"]] == [("rekey", "client")]
    reasons = " ".join(plan["changes"][0]["reasons"])
    assert "key" in reasons and "missing" in reasons and old in reasons
    pki.apply("--rekey-missing")
    assert key_ref(applied_project, "client") != old
    assert_consistent(applied_project, pki)


def test_missing_authority_key_cascades_to_everything_it_signed(applied_project, pki):
    old_server = (applied_project / "state/certs/server.pem").read_bytes()
    (applied_project / ".pki/keys" / key_ref(applied_project, "inter")).unlink()
    plan = pki.plan_json("--rekey-missing")
    actions = {c["name"]: c for c in plan["changes"]}
    assert actions["inter"]["action"] == "rekey"
    assert "missing" in " ".join(actions["inter"]["reasons"])
    for child in ("server", "client"):
        assert actions[child]["action"] == "reissue"
        assert any("issuer key changed" in r for r in actions[child]["reasons"])
    assert "root" not in actions or actions["root"]["action"] == "update_crl"
    names = [c["name"] for c in plan["changes"]]
    assert names.index("inter") < names.index("server") and names.index("inter") < names.index("client")
    pki.apply("--rekey-missing")
    root, inter = applied_project / "state/certs/root.pem", applied_project / "state/certs/inter.pem"
    for child in ("server", "client"):
        openssl("verify", "-x509_strict", "-CAfile", str(root), "-untrusted", str(inter),
                str(applied_project / f"state/certs/{child}.pem"))
    (applied_project / "old.pem").write_bytes(old_server)
    assert openssl("verify", "-CAfile", str(root), "-untrusted", str(inter), str(applied_project / "old.pem"),
                   expect=None).returncode != 0
    assert_consistent(applied_project, pki)


def test_validity_is_capped_at_the_issuers(repo, pki):
    write_project(repo, SMALL_PKI.replace('validity = "5y"\nrenew_before = "180d"', 'validity = "30d"\nrenew_before = "5d"'))
    plan = pki("plan")
    assert "capped" in plan.stdout and "certificate.server" in plan.stdout
    pki.apply()
    inv = inventory(repo)
    assert inv["server"]["not_after"] == inv["inter"]["not_after"]
    assert state_cert(repo, "server").not_valid_after_utc == state_cert(repo, "inter").not_valid_after_utc


# -- renewal -----------------------------------------------------------------------------------

RENEW_PKI = """\
[defaults]
key = "ecdsa-p256"
subject = { O = "renewal" }

[authority.root]
common_name = "Renewal Root"
validity = "10y"
renew_before = "1y"

[authority.inter]
issuer = "root"
common_name = "Renewal Intermediate"
validity = "2d"
renew_before = "1d"

[certificate.rotating]
issuer = "inter"
common_name = "rotating"
validity = "2d"
renew_before = "1d"

[certificate.keeping]
issuer = "inter"
common_name = "keeping"
validity = "2d"
renew_before = "1d"
rotate_key = false
"""


def test_renewal_at_a_later_time(repo, pki):
    write_project(repo, RENEW_PKI)
    pki.apply()
    before = inventory(repo)
    assert pki.plan_exit("--at", "+12h") == 0
    assert pki.plan_exit("--at", "+1d12h") == 2
    plan = pki.plan_json("--at", "+1d12h")
    changes = {c["name"]: c for c in plan["changes"]}
    assert {n: c["action"] for n, c in changes.items() if c["action"] != "update_crl"} == \
        {"inter": "renew", "rotating": "renew", "keeping": "renew"}
    assert any("renew_before 1d" in r for r in changes["rotating"]["reasons"])
    assert changes["rotating"].get("new_key") is True
    assert not changes["keeping"].get("new_key") and not changes["inter"].get("new_key")
    statuses = {r["name"]: r["status"] for r in pki.ok("list", "--format", "json", "--at", "+1d12h").json()}
    assert statuses == {"root": "ok", "inter": "renew_due", "rotating": "renew_due", "keeping": "renew_due"}

    pki.apply("--at", "+1d12h")
    after = inventory(repo)
    assert commit_message(repo)[0].startswith("pki apply: 3 renewed")
    assert after["rotating"]["key"]["ref"] != before["rotating"]["key"]["ref"]
    assert after["keeping"]["key"]["ref"] == before["keeping"]["key"]["ref"]
    assert after["inter"]["key"]["ref"] == before["inter"]["key"]["ref"]  # an authority keeps its key
    assert after["root"]["serial"] == before["root"]["serial"]
    for name in ("inter", "rotating", "keeping"):
        assert after[name]["serial"] != before[name]["serial"]
    assert before["rotating"]["key"]["ref"] not in key_files(repo)  # the rotated-out key is deleted
    root, inter = repo / "state/certs/root.pem", repo / "state/certs/inter.pem"
    for name in ("rotating", "keeping"):
        openssl("verify", "-CAfile", str(root), "-untrusted", str(inter), str(repo / f"state/certs/{name}.pem"))
    actions = [line["action"] for line in audit_lines(repo)]
    assert actions.count("renew") == 3
    assert_consistent(repo, pki)


def test_apply_at_makes_the_not_after_the_plan_showed(repo, pki):
    write_project(repo, RENEW_PKI)
    pki.apply()
    plan = pki.plan_json("--at", "+1d12h")
    shown = {c["name"]: c["diff"]["not_after"]["after"] for c in plan["changes"] if c["action"] == "renew"}
    assert set(shown) == {"inter", "rotating", "keeping"}
    pki.apply("--at", "+1d12h")
    for name, after in shown.items():
        made = dt.datetime.fromisoformat(inventory(repo)[name]["not_after"].replace("Z", "+00:00"))
        wanted = dt.datetime.fromisoformat(after.replace("Z", "+00:00"))
        assert abs((made - wanted).total_seconds()) < 120, (name, made, wanted)


# -- revocation ends on the CRL ----------------------------------------------------------------

def test_replace_and_removal_put_serials_on_the_crl(applied_project, pki):
    server_serial = inventory(applied_project)["server"]["serial"]
    client_serial = inventory(applied_project)["client"]["serial"]
    (applied_project / "old-server.pem").write_bytes((applied_project / "state/certs/server.pem").read_bytes())
    plan = pki.plan_json("--replace", "server")
    by = {c["name"]: c for c in plan["changes"]}
    assert by["server"]["action"] == "rekey" and by["server"].get("revoke_reason") == "key_compromise"
    pki.apply("--replace", "server")
    client_pem = applied_project / "state/certs/client.pem"
    # the client leaves pki.toml: revoked and removed from state
    toml = (applied_project / "pki.toml").read_text()
    (applied_project / "pki.toml").write_text(toml[:toml.index("[certificate.client]")])
    plan = pki.plan_json()
    by = {c["name"]: c for c in plan["changes"]}
    assert by["client"]["action"] == "revoke" and by["client"].get("retire") is True
    pki.apply()
    assert not client_pem.exists() and "client" not in inventory(applied_project)
    crl = state_crl(applied_project, "inter")
    revoked = {format(r.serial_number, "x"): r for r in crl}
    assert set(revoked) == {server_serial, client_serial}
    reason = revoked[server_serial].extensions.get_extension_for_class(x509.CRLReason).value.reason
    assert reason is x509.ReasonFlags.key_compromise
    root, inter = applied_project / "state/certs/root.pem", applied_project / "state/certs/inter.pem"
    crls = ["-CRLfile", str(crl_path(applied_project, "inter")), "-CRLfile", str(crl_path(applied_project, "root"))]
    r = openssl("verify", "-crl_check_all", "-CAfile", str(root), "-untrusted", str(inter), *crls,
                str(applied_project / "old-server.pem"), expect=None)
    assert r.returncode != 0 and "revoked" in (r.stdout + r.stderr)
    openssl("verify", "-crl_check_all", "-CAfile", str(root), "-untrusted", str(inter), *crls,
            str(applied_project / "state/certs/server.pem"))
    assert_consistent(applied_project, pki)


# -- one apply at a time -----------------------------------------------------------------------

def test_second_apply_fails_while_the_first_waits_for_approval(project, pki):
    first = PtyProcess(pki_command() + ["-C", str(project), "apply"], dict(pki.env, PKI_ACTOR="alice@laptop"))
    try:
        first.expect("Only 'yes' will be accepted")
        r = pki("apply", "--auto-approve", env={"PKI_ACTOR": "bob@ci"}, expect=1)
        assert len(r.stderr.strip().splitlines()) == 1, r.stderr
        assert "another apply holds the lock" in r.stderr
        assert "alice@laptop" in r.stderr and f"pid {first.pid}" in r.stderr
        assert head(project) is None and not (project / "state/inventory.json").exists()
        first.send("no\n")
        assert first.wait() == 1
    finally:
        first.kill()
    pki.apply(env={"PKI_ACTOR": "bob@ci"})
    assert {line["actor"] for line in audit_lines(project)} == {"bob@ci"}


def test_apply_waits_for_the_lock_with_a_timeout(project, pki):
    lock = project / ".pki" / "lock"
    lock.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps({"actor": "carol@build", "host": "buildhost", "pid": "4242",
                                  "since": "2030-01-01T00:00:00Z"}).encode(), 0)
        r = pki("apply", "--auto-approve", expect=1)
        assert "carol@build" in r.stderr and "4242" in r.stderr and "buildhost" in r.stderr
        assert not key_files(project)
        timer = threading.Timer(1.0, lambda: fcntl.flock(fd, fcntl.LOCK_UN))
        timer.start()
        start = time.monotonic()
        pki.apply("--lock-timeout", "20s")
        assert time.monotonic() - start >= 0.9
        timer.join()
    finally:
        os.close(fd)
    assert_consistent(project, pki)


@pytest.mark.parametrize("meanwhile", ["a commit", "another branch"])
def test_what_git_looks_like_is_read_once_the_lock_is_held(project, pki, meanwhile):
    """An apply waiting for the lock while someone commits or switches branches commits on HEAD
    as it is once it runs: after their commit, on the branch checked out."""
    commit_all(project)
    git(project, "branch", "other")
    lock = project / ".pki" / "lock"
    lock.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        proc = pki.popen("apply", "--auto-approve", "--lock-timeout", "30s")
        time.sleep(1.0)  # it has read pki.toml and state, and waits for the lock
        assert proc.poll() is None
        if meanwhile == "a commit":
            (project / "NOTES").write_text("theirs\n")
            git(project, "add", "NOTES")
            git(project, "commit", "-q", "-m", "theirs")
        else:
            git(project, "checkout", "-q", "other")
        fcntl.flock(fd, fcntl.LOCK_UN)
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
    finally:
        os.close(fd)
    wanted = ["pki apply: 4 created", "theirs", "pki.toml"] if meanwhile == "a commit" else \
        ["pki apply: 4 created", "pki.toml"]
    assert git(project, "log", "--format=%s").splitlines() == wanted
    assert git(project, "rev-parse", "--abbrev-ref", "HEAD").strip() == ("main" if meanwhile == "a commit" else "other")
    if meanwhile == "another branch":
        assert git(project, "log", "-1", "--format=%s", "main") == "pki.toml\n"  # main untouched
    assert git(project, "status", "--porcelain", "--", "state") == ""
    assert_consistent(project, pki)


# -- keys encrypted at rest --------------------------------------------------------------------

ENCRYPTED_PKI = """\
[backend.vaulted]
plugin = "local"
path = ".pki/encrypted"
passphrase_env = "TEST_KEY_PASSPHRASE"

[defaults]
key = "ecdsa-p256"
backend = "vaulted"

[authority.root]
common_name = "Encrypted Root"

[certificate.leaf]
issuer = "root"
common_name = "leaf.internal"
hosts = ["leaf.internal"]
"""

PASSPHRASE = "correct horse battery staple"


def test_keys_encrypted_at_rest_need_the_passphrase(repo, pki, tmp_path):
    write_project(repo, ENCRYPTED_PKI)
    r = pki("apply", "--auto-approve", expect=1)
    assert "TEST_KEY_PASSPHRASE" in r.stderr and head(repo) is None
    with_pass = {"TEST_KEY_PASSPHRASE": PASSPHRASE}
    r = pki.apply(env=with_pass)
    keys = sorted((repo / ".pki/encrypted").iterdir())
    assert len(keys) == 3  # the PKI's two, and the audit log's: all encrypted
    for key in keys:
        assert key.read_bytes().startswith(b"-----BEGIN ENCRYPTED PRIVATE KEY-----")
        assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert stat.S_IMODE((repo / ".pki/encrypted").stat().st_mode) == 0o700
    assert pki.plan_exit() == 0  # planning needs no passphrase
    out = tmp_path / "out"
    r = pki("export", "leaf", "--dir", str(out), expect=1)
    assert "TEST_KEY_PASSPHRASE" in r.stderr and not (out / "leaf-key.pem").exists()
    r = pki("export", "leaf", "--dir", str(out), env={"TEST_KEY_PASSPHRASE": "wrong"}, expect=1)
    assert "passphrase" in r.stderr and PASSPHRASE not in r.stderr
    pki.ok("export", "leaf", "--dir", str(out), env=with_pass)
    assert (out / "leaf-key.pem").read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")
    assert stat.S_IMODE((out / "leaf-key.pem").stat().st_mode) == 0o600
    assert spki_der(load_key(out / "leaf-key.pem")) == spki_der(load_cert(out / "leaf.pem"))
    assert inventory(repo)["leaf"]["key"]["backend"] == "vaulted"
    for _, _, content in git_objects(repo):
        assert PASSPHRASE.encode() not in content and not PRIVATE_KEY_MARKER.search(content)
    pki.apply("--replace", "leaf", env=with_pass)
    assert len(list((repo / ".pki/encrypted").iterdir())) == 3  # the replaced key is gone (2 and the audit key)
    pki("audit", "verify", expect=0)


# -- without committing ------------------------------------------------------------------------

def test_no_commit_and_commit_false_write_state_without_committing(project, pki):
    r = pki.apply("--no-commit")
    assert "not committed" in r.stdout
    assert head(project) is None and (project / "state/inventory.json").exists()
    assert pki.plan_exit() == 0
    pki("audit", "verify", expect=0)
    edit_toml(project, 'common_name = "client-1"', 'common_name = "client-2"')
    r = pki.apply()
    sha = head(project)
    assert sha and f"Committed {sha[:12]}." in r.stdout
    assert commit_message(project)[0] == "pki apply: 1 reissued"
    # the state the --no-commit run wrote was committed first, in a commit of its own
    assert git(project, "log", "-1", "--format=%s", "HEAD~1").strip() == \
        "pki apply: commit state written by `pki apply --no-commit`"
    assert "state/certs/root.pem" in git(project, "show", "--name-only", "--format=", "HEAD~1").split()
    assert git(project, "status", "--porcelain", "--", "state") == ""


def test_outside_git_apply_needs_commit_false(tmp_path, env):
    directory = tmp_path / "plain"
    write_project(directory, SMALL_PKI)
    pki = Pki(directory, env)
    r = pki("apply", "--auto-approve", expect=1)
    assert "git" in r.stderr and "--no-commit" in r.stderr
    assert not (directory / "state/inventory.json").exists() and not key_files(directory)
    write_project(directory, "[pki]\ncommit = false\n\n" + SMALL_PKI)
    pki.apply()
    assert (directory / "state/inventory.json").exists() and not (directory / ".git").exists()
    assert pki.plan_exit() == 0


def test_init_creates_a_project_once(tmp_path, env):
    directory = tmp_path / "fresh"
    directory.mkdir()
    (directory / ".gitignore").write_text("*.log")  # no trailing newline
    r = run_pki(None, "init", str(directory), env=env, expect=0)
    assert "wrote pki.toml" in r.stdout
    assert (directory / ".gitignore").read_text().splitlines()[0] == "*.log"
    assert ".pki/" in (directory / ".gitignore").read_text().splitlines()
    assert (directory / ".git").is_dir() and (directory / "state").is_dir()
    run_pki(directory, "validate", env=env, expect=0)
    r = run_pki(None, "init", str(directory), env=env, expect=1)
    assert "already exists" in r.stderr
    pki = Pki(directory, env)
    pki.apply()
    assert_consistent(directory, pki)


# -- state that diffs well (issue 12) ---------------------------------------------------------------

CERT_LABELS = ("Subject", "Issuer", "SANs", "Usages", "Not before", "Not after", "Serial", "SHA-256")


def test_certificate_files_start_with_what_they_are_and_every_reader_skips_it(applied_project, pki):
    inv = inventory(applied_project)
    for name in ("root", "inter", "server", "client"):
        data = (applied_project / f"state/certs/{name}.pem").read_bytes()
        text, pem = data.split(b"-----BEGIN CERTIFICATE-----")
        labels = [line.split(": ", 1)[0] for line in text.decode().splitlines()]
        assert tuple(labels) == CERT_LABELS, name
        cert = state_cert(applied_project, name)  # (Python's cryptography)
        fields = dict(line.split(": ", 1) for line in text.decode().splitlines())
        assert fields["Serial"] == format(cert.serial_number, "x") == inv[name]["serial"]
        assert fields["SHA-256"] == cert.fingerprint(hashes.SHA256()).hex() == inv[name]["sha256"]
        assert fields["Subject"] == cert.subject.rfc4514_string()
        out = openssl("x509", "-in", str(applied_project / f"state/certs/{name}.pem"), "-noout", "-serial").stdout
        assert out.strip().lower().endswith(fields["Serial"].lstrip("0"))
    server = dict(line.split(": ", 1) for line in
                  (applied_project / "state/certs/server.pem").read_text().split("-----BEGIN")[0].splitlines())
    assert server["SANs"] == "DNS:localhost, IP:127.0.0.1"
    assert server["Usages"].split(", ") in (["digital signature", "server auth", "client auth"],
                                            ["digital signature", "client auth", "server auth"])  # (as in the cert)
    openssl("verify", "-CAfile", str(applied_project / "state/certs/root.pem"), "-untrusted",
            str(applied_project / "state/certs/inter.pem"), str(applied_project / "state/certs/server.pem"))
    pki("audit", "verify", expect=0)
    assert pki.plan_exit() == 0


def test_a_one_san_change_is_a_one_line_diff_naming_the_san(project, pki):
    commit_all(project)
    pki.apply()
    edit_toml(project, 'hosts = ["localhost", "127.0.0.1"]', 'hosts = ["localhost", "api.internal", "127.0.0.1"]')
    pki.apply()
    inv_diff = git(project, "diff", "HEAD~1", "HEAD", "--", "state/inventory.json").splitlines()
    added = [line for line in inv_diff if line.startswith("+") and not line.startswith("+++")]
    removed = [line for line in inv_diff if line.startswith("-") and not line.startswith("---")]
    san = [line for line in added if "api.internal" in line]
    assert san == ['+          "api.internal",'], inv_diff  # the SAN on a line of its own, in the spec
    assert not any("api.internal" in line for line in removed)
    # every other changed line is one field: the new serial, fingerprint, validity, key digest...
    assert all(re.match(r'^[+-] *"[a-z_0-9]+": ', line) for line in added + removed if line not in san), inv_diff
    cert_diff = git(project, "diff", "HEAD~1", "HEAD", "--", "state/certs/server.pem").splitlines()
    assert "+SANs: DNS:localhost, DNS:api.internal, IP:127.0.0.1" in cert_diff
    assert "-SANs: DNS:localhost, IP:127.0.0.1" in cert_diff
    assert json.loads((project / "state/inventory.json").read_text())["objects"]["server"]["spec"]["hosts"] == [
        "localhost", "api.internal", "127.0.0.1"]


def test_the_inventory_records_each_objects_public_key(applied_project, pki):
    for name, rec in inventory(applied_project).items():
        cert = state_cert(applied_project, name)
        assert rec["public_key_sha256"] == hashlib.sha256(spki_der(cert)).hexdigest(), name
        key = load_key(applied_project / ".pki/keys" / rec["key"]["ref"])
        assert hashlib.sha256(spki_der(key)).hexdigest() == rec["public_key_sha256"], name


def test_state_of_an_earlier_version_converts_on_the_next_apply(project, pki):
    """Certificate files without text lines and an inventory of one object per line without public
    key digests (as earlier versions wrote them) are read as they are, and the next apply converts
    them all in its commit."""
    commit_all(project)
    pki.apply()
    path = project / "state/inventory.json"
    inv = json.loads(path.read_text())
    for name, obj in inv["objects"].items():
        obj.pop("public_key_sha256")
        cert = project / f"state/certs/{name}.pem"
        cert.write_bytes(b"-----BEGIN" + cert.read_bytes().split(b"-----BEGIN", 1)[1])
    lines = ['{"format_version": 1,', f'"audit_head": {json.dumps(inv["audit_head"], sort_keys=True)},', '"objects": {']
    names = sorted(inv["objects"])
    lines += [f'{json.dumps(n)}: {json.dumps(inv["objects"][n], sort_keys=True)}' + ("," if i < len(names) - 1 else "")
              for i, n in enumerate(names)]
    lines += ["},", '"revocations": [', "]}"]
    path.write_text("\n".join(lines) + "\n")
    git(project, "commit", "-q", "-am", "state as an earlier pkiascode wrote it")
    assert pki.plan_exit() == 0
    pki("audit", "verify", expect=0)

    edit_toml(project, 'common_name = "client-1"', 'common_name = "client-2"')
    pki.apply()
    changed = set(git(project, "show", "--name-only", "--format=", "HEAD").split())
    assert {f"state/certs/{n}.pem" for n in ("root", "inter", "server", "client")} <= changed
    inv = inventory(project)
    for name in ("root", "inter", "server", "client"):
        assert (project / f"state/certs/{name}.pem").read_text().startswith("Subject: "), name
        assert inv[name]["public_key_sha256"] == hashlib.sha256(spki_der(state_cert(project, name))).hexdigest()
    assert (project / "state/inventory.json").read_text().startswith("{\n  \"audit_head\"")
    assert_consistent(project, pki)


def test_text_lines_that_do_not_describe_the_certificate_are_drift(applied_project, pki):
    path = applied_project / "state/certs/server.pem"
    text = path.read_text()
    sha = inventory(applied_project)["server"]["sha256"]
    path.write_text(text.replace(f"SHA-256: {sha}", f"SHA-256: {'0' * 64}"))
    plan = pki.plan_json()
    assert [(c["action"], c["name"]) for c in plan["changes"]] == [("reissue", "server")]
    assert "text lines that do not describe its certificate" in " ".join(plan["changes"][0]["reasons"])
