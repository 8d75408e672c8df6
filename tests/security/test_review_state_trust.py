"""State is checked, not trusted (issue 12): `pki plan` compares every certificate file with the
inventory and fails naming the object; `pki export` never hands out a key that is not the
certificate's; `pki plan --base REF` takes only regular files with pkiascode's names from REF."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cryptography.hazmat.primitives import serialization

from helpers import assert_one_line, commit_all, git, spki_der, state_cert


def edit_inventory(repo: Path, edit) -> None:
    path = repo / "state/inventory.json"
    inv = json.loads(path.read_text())
    edit(inv["objects"])
    path.write_text(json.dumps(inv, indent=1, sort_keys=True) + "\n")


def test_a_key_reference_pointed_at_another_objects_key_fails_the_plan_and_export(applied, tmp_path):
    repo, pki = applied
    objects = json.loads((repo / "state/inventory.json").read_text())["objects"]
    client_ref = objects["client"]["key"]["ref"]
    edit_inventory(repo, lambda objs: objs["server"]["key"].update(ref=client_ref))

    r = pki("plan", expect=1)
    line = assert_one_line(r.stderr.strip())
    assert "certificate.server" in line and "certificate.client" in line and client_ref in line
    assert pki("plan", "--offline", expect=1).stderr.count("certificate.server") == 1  # offline checks too

    out = tmp_path / "out"
    r = pki("export", "server", "--dir", str(out), expect=1)
    line = assert_one_line(r.stderr.strip())
    # export checks state as plan does (and would also refuse a key that is not the certificate's)
    assert "certificate.server" in line and "a key belongs to one object" in line
    assert not (out / "server-key.pem").exists()
    # the check compares public keys: the key it refused is really another certificate's
    client_key = serialization.load_pem_private_key((repo / ".pki/keys" / client_ref).read_bytes(), None)
    assert spki_der(client_key.public_key()) == spki_der(state_cert(repo, "client").public_key())
    assert spki_der(client_key.public_key()) != spki_der(state_cert(repo, "server").public_key())

    git(repo, "checkout", "--", "state/inventory.json")
    assert pki.plan_exit() == 0
    pki.ok("export", "server", "--dir", str(out))
    key = serialization.load_pem_private_key((out / "server-key.pem").read_bytes(), None)
    assert spki_der(key.public_key()) == spki_der(state_cert(repo, "server").public_key())


def test_a_replaced_certificate_file_fails_the_plan_naming_the_object(applied):
    repo, pki = applied
    (repo / "state/certs/client.pem").write_bytes((repo / "state/certs/server.pem").read_bytes())
    r = pki("plan", expect=1)
    line = assert_one_line(r.stderr.strip())
    assert "certificate.client" in line and "state/certs/client.pem" in line
    assert "another certificate" in line
    assert pki("plan", "--format", "json", expect=1).stdout == ""
    git(repo, "checkout", "--", "state/certs/client.pem")
    assert pki.plan_exit() == 0


@pytest.mark.parametrize("field, value, says", [
    ("serial", "1234", "serial"),
    ("subject", "O=pkiascode tests, CN=evil", "subject"),
    ("issuer", "root", "issued by"),
])
def test_an_inventory_that_misdescribes_its_certificate_fails_the_plan(applied, field, value, says):
    repo, pki = applied
    edit_inventory(repo, lambda objs: objs["server"].update({field: value}))
    r = pki("plan", expect=1)
    line = assert_one_line(r.stderr.strip())
    assert "certificate.server" in line and says in line


def test_a_public_key_recorded_in_the_inventory_is_compared(applied):
    repo, pki = applied
    objects = json.loads((repo / "state/inventory.json").read_text())["objects"]
    if "public_key_sha256" not in objects["server"]:  # recorded once apply writes it; set it as it would be
        import hashlib

        for name in objects:
            digest = hashlib.sha256(spki_der(state_cert(repo, name).public_key())).hexdigest()
            edit_inventory(repo, lambda objs, n=name, d=digest: objs[n].update(public_key_sha256=d))
        assert pki.plan_exit() == 0
    edit_inventory(repo, lambda objs: objs["server"].update(public_key_sha256="0" * 64))
    line = assert_one_line(pki("plan", expect=1).stderr.strip())
    assert "certificate.server" in line and "public key" in line


def test_a_file_with_the_recorded_sha256_that_is_no_certificate_fails_the_plan(applied):
    """The inventory's SHA-256 made to match a file that is not a certificate: its other fields cannot
    be checked, so the plan fails rather than trust them."""
    import base64
    import hashlib

    repo, pki = applied
    der = b"\x30\x03\x02\x01\x01"  # DER, but not a certificate
    body = base64.encodebytes(der).decode().strip()
    (repo / "state/certs/server.pem").write_text(f"-----BEGIN CERTIFICATE-----\n{body}\n-----END CERTIFICATE-----\n")
    edit_inventory(repo, lambda objs: objs["server"].update(sha256=hashlib.sha256(der).hexdigest()))
    line = assert_one_line(pki("plan", expect=1).stderr.strip())
    assert "certificate.server" in line and "cannot be read as a certificate" in line


def _commit_state_with(repo: Path, make) -> str:
    """A branch 'evil' whose state/ has what ``make(repo)`` put there; back on main."""
    git(repo, "checkout", "-q", "-b", "evil")
    make(repo)
    commit_all(repo, "evil state")
    git(repo, "checkout", "-q", "main")
    return "evil"


@pytest.mark.parametrize("make, says", [
    (lambda r: (r / "state/certs/x.pem").symlink_to("/etc/passwd"), "not a regular file"),
    (lambda r: (r / "state/certs/sub").mkdir() or (r / "state/certs/sub/a.pem").write_text("x"),
     "not a file pkiascode writes"),
    (lambda r: (r / "state/notes.txt").write_text("x"), "not a file pkiascode writes"),
], ids=["symlink", "subdirectory", "other-name"])
def test_base_state_takes_only_regular_state_files(applied, make, says):
    repo, pki = applied
    ref = _commit_state_with(repo, make)
    line = assert_one_line(pki("plan", "--base", ref, expect=1).stderr.strip())
    assert f"--base {ref}" in line and says in line


def test_base_must_be_a_revision(applied):
    repo, pki = applied
    assert "--base --upload-pack=x" in pki("plan", "--base=--upload-pack=x", expect=1).stderr
    line = assert_one_line(pki("plan", "--base", "no-such-branch", expect=1).stderr.strip())
    assert "--base no-such-branch" in line
