"""Threat: a committed ``state/`` (a pull request, a compromised branch) or a local ``.pki/`` that
someone else can write steers what apply reads, writes, deletes and commits (issue 10: "object names
from state/inventory.json used as paths", "git fast-import command injection through a newline in
state_dir", "guard gaps": PKCS#12 and symbolic links in state/).

- every name in the inventory is a pki.toml name before it becomes a path;
- a state_dir with a newline commits nothing outside state/ (it is refused);
- the commit guard refuses a PKCS#12 file (raw or PEM-armoured), a DER key and any PEM block that
  is not a certificate or CRL, and a symbolic link, before anything is made;
- a link in state/ is never followed, reading or writing;
- ``.pki/`` must be the user's own and not writable by others; what pkiascode makes is 0700/0600
  under any umask.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.serialization import pkcs12

from helpers import (
    SMALL_PKI, Pki, assert_one_line, commit_all, edit_toml, git, head, inventory, key_files, key_ref, load_cert,
    load_key, new_repo, pki_command,
)


def _last_line(r) -> str:
    return assert_one_line(r.stderr.strip().splitlines()[-1])


# -- names from the inventory ---------------------------------------------------------------------

@pytest.mark.parametrize("hostile", ["../../.pki/keys/root", "../root", "x/../../y", "Root", "a\nb"])
def test_a_hostile_inventory_name_never_becomes_a_path(applied, hostile):
    """An object named with ``../`` in a committed inventory made apply delete the root CA's key."""
    repo, pki = applied
    keys_before = key_files(repo)
    path = repo / "state/inventory.json"
    inv = json.loads(path.read_text())
    obj = inv["objects"].pop("client")
    obj["name"] = hostile
    obj["key"]["ref"] = key_ref(repo, "root")  # what its removal would retire
    inv["objects"][hostile] = obj
    path.write_text(json.dumps(inv, indent=2, sort_keys=True) + "\n")
    git(repo, "commit", "-q", "-am", "a hostile inventory")
    for command in (("plan",), ("apply", "--auto-approve"), ("list",)):
        r = pki(*command, expect=1)
        line = _last_line(r)
        assert "state/inventory.json" in line and "not a pki.toml name" in line
    assert key_files(repo) == keys_before  # the root key among them


@pytest.mark.parametrize("field,value", [("issuer", "../root"), ("key", {"backend": "local", "ref": "../../x.pem"}),
                                         ("key", {"backend": "../local", "ref": "x.pem"}), ("serial", "xyz")])
def test_a_malformed_inventory_field_is_an_error_naming_the_file(applied, field, value):
    repo, pki = applied
    path = repo / "state/inventory.json"
    inv = json.loads(path.read_text())
    inv["objects"]["client"][field] = value
    path.write_text(json.dumps(inv, indent=2, sort_keys=True) + "\n")
    r = pki("plan", expect=1)
    assert "state/inventory.json" in _last_line(r)


# -- state_dir -------------------------------------------------------------------------------------

def test_a_newline_in_state_dir_commits_nothing_outside_state(tmp_path, env):
    """With git fast-import a newline in state_dir was a command: the commit changed other files."""
    repo = new_repo(tmp_path / "repo", SMALL_PKI, commit=True)
    (repo / "README").write_text("the project's own file\n")
    commit_all(repo, "readme")
    first = head(repo)
    edit_toml(repo, "[defaults]", '[pki]\nstate_dir = "state\\nD README\\nM 100644 inline README"\n\n[defaults]')
    pki = Pki(repo)
    r = pki("apply", "--auto-approve", expect=1)
    line = _last_line(r)
    assert "state_dir" in line
    assert head(repo) == first
    assert git(repo, "show", "HEAD:README") == "the project's own file\n"
    assert not (repo / ".pki/keys").exists() or key_files(repo) == set()


# -- the commit guard ------------------------------------------------------------------------------

def _p12(repo: Path, password: bytes | None) -> bytes:
    key = load_key(repo / ".pki/keys" / key_ref(repo, "server"))
    cert = load_cert(repo / "state/certs/server.pem")
    enc = serialization.BestAvailableEncryption(password) if password else serialization.NoEncryption()
    return pkcs12.serialize_key_and_certificates(b"server", key, cert, None, enc)


def _armoured(label: str, der: bytes) -> bytes:
    import base64

    b64 = base64.encodebytes(der).decode()
    return f"-----BEGIN {label}-----\n{b64}-----END {label}-----\n".encode()


@pytest.mark.parametrize("planted", ["p12", "p12-password", "p12-as-certificate", "p12-armoured", "der-key"])
def test_the_commit_guard_refuses_pkcs12_and_der_keys(applied, planted):
    repo, pki = applied
    first = head(repo)
    if planted == "der-key":
        key = load_key(repo / ".pki/keys" / key_ref(repo, "server"))
        data = key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
                                 serialization.NoEncryption())
    elif planted == "p12-as-certificate":  # a PKCS#12 file dressed as a certificate block
        data = _armoured("CERTIFICATE", _p12(repo, None))
    elif planted == "p12-armoured":
        data = _armoured("PKCS12", _p12(repo, b"secret"))
    else:
        data = _p12(repo, b"secret" if planted == "p12-password" else None)
    (repo / "state/certs/bundle.pem").write_bytes(data)
    edit_toml(repo, 'common_name = "client-1"', 'common_name = "client-2"')
    before = inventory(repo)
    r = pki("apply", "--auto-approve", expect=1)
    line = _last_line(r)
    assert "refusing to apply" in line and "state/certs/bundle.pem" in line and "nothing was changed" in line
    assert head(repo) == first and inventory(repo) == before
    assert "bundle.pem" not in git(repo, "log", "--all", "--name-only", "--format=")
    (repo / "state/certs/bundle.pem").unlink()
    pki.apply()
    assert head(repo) != first


def test_a_link_in_state_is_refused_by_the_commit_guard(applied, tmp_path):
    repo, pki = applied
    first = head(repo)
    secret = tmp_path / "secret.txt"
    secret.write_text("a file outside the repository\n")
    (repo / "state/crl/extra.crl").symlink_to(secret)
    edit_toml(repo, 'common_name = "client-1"', 'common_name = "client-2"')
    r = pki("apply", "--auto-approve", expect=1)
    line = _last_line(r)
    assert "state/crl/extra.crl" in line and "symbolic link" in line
    assert head(repo) == first
    assert "a file outside" not in git(repo, "log", "--all", "-p")


# -- links in state/ ------------------------------------------------------------------------------

def test_a_linked_certificate_file_is_not_read_through(applied, tmp_path):
    """state/certs/server.pem made a link to a file elsewhere: plan never reads the target."""
    repo, pki = applied
    target = tmp_path / "elsewhere.pem"
    target.write_bytes((repo / "state/certs/server.pem").read_bytes())  # the right content, even
    (repo / "state/certs/server.pem").unlink()
    (repo / "state/certs/server.pem").symlink_to(target)
    r = pki("plan", expect=1)
    assert "state/certs/server.pem" in _last_line(r) and "symbolic link" in _last_line(r)


def test_a_tracked_link_to_a_directory_outside_makes_apply_write_nothing_there(applied, tmp_path):
    """A committed state/crl that is a link: apply would have written the CRLs into its target."""
    repo, pki = applied
    outside = tmp_path / "outside"
    outside.mkdir()
    crl = repo / "state/crl"
    for f in crl.iterdir():
        f.unlink()
    crl.rmdir()
    crl.symlink_to(outside)
    git(repo, "add", "-A", "state")
    git(repo, "commit", "-q", "-m", "a link")
    first = head(repo)
    edit_toml(repo, 'common_name = "client-1"', 'common_name = "client-2"')
    r = pki("apply", "--auto-approve", expect=1)
    assert "state/crl" in _last_line(r) and "symbolic link" in _last_line(r)
    assert list(outside.iterdir()) == []
    assert head(repo) == first


# -- .pki/ ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("mode", [0o770, 0o707, 0o777])
def test_a_pki_directory_others_can_write_is_refused(applied, mode):
    repo, pki = applied
    (repo / ".pki").chmod(mode)
    edit_toml(repo, 'common_name = "client-1"', 'common_name = "client-2"')
    for command in (("plan",), ("apply", "--auto-approve")):
        r = pki(*command, expect=1)
        line = _last_line(r)
        assert ".pki" in line and "writable by group or others" in line and "chmod 700" in line
    (repo / ".pki").chmod(0o700)
    pki.apply()


def test_a_pki_directory_owned_by_another_user_is_refused(applied):
    repo, pki = applied
    if os.getuid() != 0:
        pytest.skip("changing a directory's owner needs root")
    os.chown(repo / ".pki", 65534, -1)
    try:
        r = pki("plan", expect=1)
        assert "owned by another user" in _last_line(r)
    finally:
        os.chown(repo / ".pki", 0, -1)


def test_what_pkiascode_makes_is_private_under_any_umask(tmp_path, env):
    repo = new_repo(tmp_path / "repo", SMALL_PKI, commit=True)
    script = 'umask 000; exec "$@"'
    subprocess.run(["sh", "-c", script, "sh", *pki_command(), "-C", str(repo), "apply", "--auto-approve"], env=env,
                   check=True, capture_output=True)
    Pki(repo).plan_exit()  # (remembers the no-op: .pki/cache)
    for path in [repo / ".pki", *(repo / ".pki").rglob("*"), *(repo / "state").rglob("*")]:
        mode = stat.S_IMODE(path.lstat().st_mode)
        if path.is_dir():
            assert mode == 0o700, (path, oct(mode))
        else:
            assert mode == 0o600, (path, oct(mode))
